"""Run the ONNX backend node tests through infer's own compile path, next to ONNX Runtime.

Each case is compiled with `infer.compile` twice over: TVM only (`fallback=False`, what the
compiler covers by itself) and with ONNX Runtime segments for what TVM cannot take
(`fallback=True`, what a user gets by default); ONNX Runtime alone on the same case gives the
reference column. Cases run one at a time in long-lived worker processes: a case that crashes
or hangs a worker is recorded as `crash` / `timeout` and the worker is replaced. Outputs are
compared like onnx's backend runner (shape and dtype must match, NaN equals NaN, rtol 1e-3,
atol 1e-5 unless the case asks for looser).

    python tools/conformance.py                    # the whole suite, a table + CSV
    python tools/conformance.py --filter 'lstm|gru' --jobs 2
    python tools/conformance.py --check-floor      # exit 1 when a pass count drops below the floor

The cases ship with the onnx wheel as Python code; they are written out once to
`<infer cache>/conformance/onnx-<version>/`.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import multiprocessing as mp
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

FLOOR_FILE = Path(__file__).with_name("conformance_floor.json")
MODES = ("onnxruntime", "native", "fallback")
PASS = "pass"
RTOL = 1e-3
ATOL = 1e-5
DEFAULT_TIMEOUT_S = 120.0
DETAIL_CHARS = 300


def cases_dir() -> Path:
    import onnx

    from infer.config import cache_dir

    return cache_dir() / "conformance" / f"onnx-{onnx.__version__}"


def export_cases(directory: Path) -> list[str]:
    """Write every node test case (model.onnx + data.pkl) under directory once; return the names."""
    done = directory / "complete.json"
    if done.is_file():
        names: list[str] = json.loads(done.read_text())
        return names
    from onnx.backend.test.loader import load_model_tests

    print(f"writing the ONNX node test cases to {directory} (once)", file=sys.stderr)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent))  # same filesystem: os.replace works
    for case in cases:
        case_dir = staging / case.name
        case_dir.mkdir()
        (case_dir / "model.onnx").write_bytes(case.model.SerializeToString())
        with open(case_dir / "data.pkl", "wb") as f:
            pickle.dump({"data_sets": case.data_sets, "rtol": case.rtol, "atol": case.atol}, f)
    names = sorted(case.name for case in cases)
    (staging / "complete.json").write_text(json.dumps(names))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(staging, directory)
    return names


def assert_similar(want: list[Any], got: list[Any], rtol: float, atol: float) -> None:
    """Raise AssertionError unless got matches want the way onnx's backend runner compares."""
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} outputs, expected {len(want)}")
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if isinstance(w, list | tuple):
            if not isinstance(g, list | tuple):
                raise AssertionError(f"output {i}: a tensor, expected a sequence")
            assert_similar(list(w), list(g), rtol, atol)
            continue
        if w is None or g is None:
            if (w is None) != (g is None):
                raise AssertionError(f"output {i}: {g!r}, expected {w!r}")
            continue
        g = np.asarray(g)
        w = np.asarray(w)
        if g.shape != w.shape:
            raise AssertionError(f"output {i}: shape {g.shape}, expected {w.shape}")
        if w.dtype == object:
            np.testing.assert_array_equal(g, w)
            continue
        if g.dtype != w.dtype:
            raise AssertionError(f"output {i}: dtype {g.dtype}, expected {w.dtype}")
        if w.dtype.name == "bfloat16":
            g, w, rtol = g.astype(np.float32), w.astype(np.float32), max(rtol, 2**-6)
        elif w.dtype.kind == "V" or w.dtype.name.startswith(
            ("float8", "float4", "int4", "uint4", "int2", "uint2")
        ):
            g, w = g.astype(np.float32), w.astype(np.float32)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {i}")


def _normalize(value: Any) -> Any:
    """Return a case's input or output as numpy (the loader keeps some as TensorProto or scalars)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, onnx.SequenceProto):
        return [_normalize(v) for v in numpy_helper.to_list(value)]
    if isinstance(value, onnx.OptionalProto):
        return _normalize(numpy_helper.to_optional(value))
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def _run_case(case_dir: Path, mode: str) -> tuple[str, str, dict[str, Any]]:
    """Return (status, detail, facts) of one case in one mode. Runs inside a worker."""
    import onnx

    with open(case_dir / "data.pkl", "rb") as f:
        data = pickle.load(f)
    rtol = max(float(data["rtol"]), RTOL)
    atol = max(float(data["atol"]), ATOL)
    model = onnx.load(str(case_dir / "model.onnx"))
    initializers = {t.name for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    facts: dict[str, Any] = {}
    if mode == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(case_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            return "compile-error", _short(exc), facts
        runner = lambda feeds: session.run(None, feeds)  # noqa: E731
    else:
        import infer
        from infer.errors import UnsupportedOpError

        work = Path(tempfile.mkdtemp(prefix="infer-conformance-"))
        try:
            artifact = infer.compile(
                case_dir / "model.onnx",
                output=work / "artifact",
                check=False,
                fallback=mode == "fallback",
            )
            session_ = artifact.load(threads=1)
        except UnsupportedOpError as exc:
            return "unsupported", _short(exc), facts
        except Exception as exc:
            return "compile-error", _short(exc), facts
        finally:
            shutil.rmtree(work, ignore_errors=True)
        facts = session_.placement()
        runner = lambda feeds: session_.run(None, feeds)  # noqa: E731
    for inputs, outputs in data["data_sets"]:
        inputs, outputs = _normalize(list(inputs)), _normalize(list(outputs))
        feeds = dict(zip(input_names, inputs, strict=False))
        try:
            with np.errstate(all="ignore"):
                got = runner(feeds)
        except Exception as exc:
            return "run-error", _short(exc), facts
        try:
            assert_similar(list(outputs), list(got), rtol, atol)
        except AssertionError as exc:
            return "mismatch", _short(exc), facts
    return PASS, "", facts


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:DETAIL_CHARS]


def _worker(conn: Connection) -> None:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    # TVM and ONNX Runtime log from native code; the results travel over the pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    while True:
        job = conn.recv()
        if job is None:
            return
        case_dir, mode = job
        started = time.perf_counter()
        try:
            result = _run_case(Path(case_dir), mode)
        except Exception as exc:  # a bug of the runner itself: reported, not swallowed
            result = ("runner-error", _short(exc) + " " + traceback.format_exc()[-200:], {})
        result[2]["seconds"] = round(time.perf_counter() - started, 3)
        conn.send(result)


@dataclass
class _Slot:
    process: Any
    conn: Connection
    job: tuple[str, str] | None = None
    started: float = 0.0


def _spawn(ctx: Any) -> _Slot:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_worker, args=(child,), daemon=True)
    process.start()
    child.close()
    return _Slot(process, parent)


def run_all(
    directory: Path, names: list[str], modes: list[str], jobs: int, timeout: float
) -> dict[str, dict[str, tuple[str, str, dict[str, Any]]]]:
    """Run every (case, mode) in worker processes; return results[name][mode]."""
    ctx = mp.get_context("spawn")
    queue = collections.deque((name, mode) for name in names for mode in modes)
    results: dict[str, dict[str, tuple[str, str, dict[str, Any]]]] = collections.defaultdict(dict)
    slots = [_spawn(ctx) for _ in range(jobs)]
    total, done, started = len(queue), 0, time.monotonic()

    def finish(slot: _Slot, result: tuple[str, str, dict[str, Any]]) -> None:
        nonlocal done
        assert slot.job is not None
        name, mode = slot.job
        results[name][mode] = result
        slot.job = None
        done += 1
        if done % 50 == 0 or done == total:
            print(
                f"  {done}/{total} runs, {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        # Native passes carry over: with nothing to fall back on, fallback builds the same thing.
        if mode == "native" and result[0] == PASS and (name, "fallback") in queue:
            queue.remove((name, "fallback"))
            results[name]["fallback"] = (PASS, "same build as native", result[2])
            done += 1

    while queue or any(s.job for s in slots):
        for slot in slots:
            if slot.job is None and queue:
                name, mode = queue.popleft()
                slot.job, slot.started = (name, mode), time.monotonic()
                slot.conn.send((str(directory / name), mode))
        ready = mp.connection.wait([s.conn for s in slots if s.job], timeout=1.0)
        for i, slot in enumerate(slots):
            if slot.job is None:
                continue
            if slot.conn in ready:
                try:
                    finish(slot, slot.conn.recv())
                    continue
                except (EOFError, OSError):
                    pass
                slot.process.join(1)
                finish(slot, ("crash", f"worker died (exit code {slot.process.exitcode})", {}))
                slots[i] = _spawn(ctx)
            elif time.monotonic() - slot.started > timeout:
                slot.process.kill()
                slot.process.join()
                finish(slot, ("timeout", f"over {timeout:.0f} s", {}))
                slots[i] = _spawn(ctx)
    for slot in slots:
        slot.conn.send(None)
        slot.process.join(5)
    return results


def op_types(directory: Path, name: str) -> list[str]:
    import onnx

    model = onnx.load(str(directory / name / "model.onnx"), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--filter", default="", help="regular expression on case names")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--csv", type=Path, default=Path("conformance.csv"))
    parser.add_argument("--check-floor", action="store_true", help=f"fail below {FLOOR_FILE.name}")
    parser.add_argument(
        "--write-floor", action="store_true", help="record these counts as the floor"
    )
    args = parser.parse_args()

    directory = cases_dir()
    names = [n for n in export_cases(directory) if re.search(args.filter, n)]
    modes = [m for m in MODES if m in args.modes]
    print(f"{len(names)} cases x {modes}, {args.jobs} workers", file=sys.stderr)
    started = time.monotonic()
    results = run_all(directory, names, modes, args.jobs, args.timeout)
    seconds = time.monotonic() - started

    ops_of = {name: op_types(directory, name) for name in names}
    with open(args.csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "case",
                "op_types",
                *(f"{m}_{c}" for m in modes for c in ("status", "detail")),
                "tvm_share",
                "seconds",
            ]
        )
        for name in names:
            row: list[Any] = [name, " ".join(ops_of[name])]
            for mode in modes:
                status, detail, _ = results[name][mode]
                row += [status, detail]
            facts = results[name].get("fallback", ("", "", {}))[2]
            row.append(facts.get("tvm_node_share", ""))
            row.append(sum(results[name][m][2].get("seconds", 0.0) for m in modes))
            writer.writerow(row)

    counts = {m: collections.Counter(results[n][m][0] for n in names) for m in modes}
    statuses = sorted({s for c in counts.values() for s in c}, key=lambda s: (s != PASS, s))
    print(f"\n{len(names)} ONNX node test cases, {seconds:.0f} s with {args.jobs} workers")
    print(f"{'status':<16}" + "".join(f"{m:>13}" for m in modes))
    for status in statuses:
        print(f"{status:<16}" + "".join(f"{counts[m][status]:>13}" for m in modes))
    failing: collections.Counter[str] = collections.Counter()
    mode = modes[-1]
    for name in names:
        if results[name][mode][0] != PASS:
            for op in ops_of[name]:
                failing[op] += 1
    if failing:
        print(f"\nop types of the cases failing in mode {mode} (cases):")
        print(", ".join(f"{op} {n}" for op, n in failing.most_common()))
    print(f"\nper-case results: {args.csv}")

    passes = {m: counts[m][PASS] for m in modes}
    if args.write_floor:
        FLOOR_FILE.write_text(json.dumps({"cases": len(names), "passes": passes}, indent=2) + "\n")
        print(f"floor written to {FLOOR_FILE}")
    if args.check_floor:
        floor = json.loads(FLOOR_FILE.read_text())["passes"]
        low = {m: (passes[m], floor[m]) for m in modes if m in floor and passes[m] < floor[m]}
        if low:
            listed = ", ".join(f"{m} {got} < floor {want}" for m, (got, want) in low.items())
            raise SystemExit(f"conformance below the floor: {listed}")
        print("conformance at or above the floor: " + ", ".join(f"{m} {passes[m]}" for m in modes))


if __name__ == "__main__":
    main()
