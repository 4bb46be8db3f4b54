"""Fuzzing models: mutations of real ONNX files, and a worker process that compiles each one.

Shared by tests/reliability/test_fuzz_models.py (hypothesis picks the cases, time-boxed) and
tools/fuzz.py (a longer seeded run). A case is (seed model, mutation, rng seed); the worker
compiles the mutant with `infer.compile` (parity check included) and runs it once, and reports
one of: compiled, refused (an InferError, with its message), error (any other exception: a bug),
crash (the worker died), timeout. The worker's peak RSS goes with every result.
"""

from __future__ import annotations

import importlib.resources
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models

COMPILED, REFUSED, ERROR, CRASH, TIMEOUT = "compiled", "refused", "error", "crash", "timeout"
# The tensor cap the worker compiles under (INFER_MAX_TENSOR_BYTES): a model may ask for tensors
# up to the cap, so the worker's memory is bounded by it; 4 GiB by default, lower here.
TENSOR_CAP_BYTES = 256 << 20
HUGE_DIMS = (0, -1, 2**31 - 1, 2**40, 2**62)
# Element counts that no memory holds: every size-amplifying op asked for one of these.
HUGE_TARGETS = ((2**20, 2**20), (2**40,), (1 << 16, 1 << 16, 1 << 16))
OP_TYPES = ("Relu", "Softmax", "Gemm", "Conv", "Reshape", "Loop", "NoSuchOp", "LSTM", "Concat")
OPSETS = (1, 6, 13, 30, 1000)

Mutation = Callable[[onnx.ModelProto, np.random.Generator], bytes]


def silero_vad() -> onnx.ModelProto:
    """Return the Silero VAD model the silero-vad wheel ships (LSTM and If inside)."""
    files = importlib.resources.files("silero_vad") / "data" / "silero_vad.onnx"
    return onnx.load_from_string(files.read_bytes())


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": lambda: onnx_models.mlp(batch="batch"),
    "conv_net": onnx_models.conv_net,
    "multi_io": onnx_models.multi_io,
    "lstm_between": onnx_models.lstm_between,
    "silero_vad": silero_vad,
}


def _pick(rng: np.random.Generator, items: Any) -> Any:
    items = list(items)
    return items[int(rng.integers(len(items)))]


def flip_bytes(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = bytearray(model.SerializeToString())
    for _ in range(int(rng.integers(1, 17))):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return bytes(data)


def truncate(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = model.SerializeToString()
    return data[: int(rng.integers(len(data)))]


def huge_dim(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    if values and rng.random() < 0.7:
        value = _pick(rng, values)
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dim = dims[int(rng.integers(len(dims)))]
            dim.Clear()
            dim.dim_value = _pick(rng, HUGE_DIMS)
    elif graph.initializer:
        tensor = _pick(rng, graph.initializer)
        if tensor.dims:
            tensor.dims[int(rng.integers(len(tensor.dims)))] = _pick(rng, HUGE_DIMS)
    return model.SerializeToString()


def attribute_type(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    nodes = [n for n in model.graph.node if n.attribute]
    if nodes:
        attr = _pick(rng, _pick(rng, nodes).attribute)
        kinds = [k for k in onnx.AttributeProto.AttributeType.values() if k != attr.type]
        attr.type = _pick(rng, kinds)
        if rng.random() < 0.5:
            attr.ClearField("ints")
            attr.s = b"\xff" * int(rng.integers(0, 4))
    return model.SerializeToString()


def cycle(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    nodes = model.graph.node
    i = int(rng.integers(len(nodes)))
    j = int(rng.integers(i, len(nodes)))
    if nodes[i].input:
        nodes[i].input[int(rng.integers(len(nodes[i].input)))] = nodes[j].output[0]
    return model.SerializeToString()


def dangling_input(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    node = _pick(rng, model.graph.node)
    if node.input:
        node.input[int(rng.integers(len(node.input)))] = "no_such_value"
    else:
        node.input.append("no_such_value")
    return model.SerializeToString()


def duplicate_name(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    graph = model.graph
    if len(graph.node) > 1 and rng.random() < 0.6:
        i, j = sorted(rng.choice(len(graph.node), 2, replace=False).tolist())
        graph.node[j].output[0] = graph.node[i].output[0]
    elif graph.initializer:
        copy = graph.initializer.add()
        copy.CopyFrom(_pick(rng, graph.initializer))
        copy.dims.append(1)
    else:
        graph.input.append(graph.input[0])
    return model.SerializeToString()


def huge_target(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """Add an Expand, ConstantOfShape, Tile or Range asked for a tensor no memory holds."""
    graph = model.graph
    target = np.asarray(_pick(rng, HUGE_TARGETS), dtype=np.int64)
    op = _pick(rng, ("Expand", "ConstantOfShape", "Tile", "Range"))
    consts = []
    if op == "Expand":
        consts.append(numpy_helper.from_array(np.ones((1,), np.float32), "fz_data"))
        consts.append(numpy_helper.from_array(target, "fz_shape"))
        node = helper.make_node("Expand", ["fz_data", "fz_shape"], ["fz_out"])
    elif op == "ConstantOfShape":
        consts.append(numpy_helper.from_array(target, "fz_shape"))
        node = helper.make_node("ConstantOfShape", ["fz_shape"], ["fz_out"])
    elif op == "Tile":
        consts.append(numpy_helper.from_array(np.ones((2,) * target.size, np.float32), "fz_data"))
        consts.append(numpy_helper.from_array(target, "fz_shape"))
        node = helper.make_node("Tile", ["fz_data", "fz_shape"], ["fz_out"])
    else:
        consts.append(numpy_helper.from_array(np.asarray(0, np.int64), "fz_start"))
        consts.append(numpy_helper.from_array(np.asarray(int(target.prod()), np.int64), "fz_end"))
        consts.append(numpy_helper.from_array(np.asarray(1, np.int64), "fz_step"))
        node = helper.make_node("Range", ["fz_start", "fz_end", "fz_step"], ["fz_out"])
    graph.initializer.extend(consts)
    graph.node.append(node)
    out_type = TensorProto.INT64 if op == "Range" else TensorProto.FLOAT
    rank = 1 if op == "Range" else target.size
    dims = [f"fz{i}" for i in range(rank)]
    graph.output.append(helper.make_tensor_value_info("fz_out", out_type, dims))
    return model.SerializeToString()


def op_type(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    node = _pick(rng, model.graph.node)
    node.op_type = _pick(rng, OP_TYPES)
    if rng.random() < 0.2:
        node.domain = "com.example.unknown"
    return model.SerializeToString()


def opset(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = _pick(rng, OPSETS)
    return model.SerializeToString()


def drop_node(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    del model.graph.node[int(rng.integers(len(model.graph.node)))]
    return model.SerializeToString()


def raw_data(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    tensors = [t for t in model.graph.initializer if t.raw_data]
    if tensors:
        tensor = _pick(rng, tensors)
        cut = int(rng.integers(len(tensor.raw_data)))
        tensor.raw_data = tensor.raw_data[:cut] if rng.random() < 0.5 else tensor.raw_data * 2
    return model.SerializeToString()


def external_data(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """Point a weight at a file outside the model's folder (refused: bytes have no folder)."""
    tensors = list(model.graph.initializer)
    if tensors:
        tensor = _pick(rng, tensors)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        location = _pick(rng, ("/etc/passwd", "../../etc/passwd", "weights.bin"))
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
    return model.SerializeToString()


MUTATIONS: dict[str, Mutation] = {
    f.__name__: f
    for f in (
        flip_bytes,
        truncate,
        huge_dim,
        attribute_type,
        cycle,
        dangling_input,
        duplicate_name,
        huge_target,
        op_type,
        opset,
        drop_node,
        raw_data,
        external_data,
    )
}


def mutant(seed_model: str, mutation: str, seed: int) -> bytes:
    """Return the bytes of one case: the seed model with the mutation applied under this seed."""
    return MUTATIONS[mutation](SEEDS[seed_model](), np.random.default_rng(seed))


@dataclass(frozen=True)
class Outcome:
    """How one case ended, and the worker's peak RSS so far."""

    kind: str
    detail: str
    peak_rss_bytes: int
    seconds: float


def attempt(data: bytes, work: Path) -> tuple[str, str]:
    """Compile and run one model; return (outcome kind, detail). Runs inside the worker."""
    import infer
    from infer.parity import random_feeds

    output = work / "case.infer"
    try:
        artifact = infer.compile(data, output=output, threads=1)
        session = artifact.load(threads=1)
        session.run(None, random_feeds(session.get_inputs(), seed=0))
        return COMPILED, ""
    except infer.InferError as exc:
        if output.exists() and not (output / "manifest.json").is_file():
            return ERROR, f"a half-written artifact was left at {output}"
        return REFUSED, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    except Exception as exc:
        return ERROR, f"{type(exc).__name__}: {exc} {traceback.format_exc()[-600:]}"
    finally:
        shutil.rmtree(output, ignore_errors=True)


def _peak_rss_bytes() -> int:
    """Return this process's peak RSS since it was executed (VmHWM).

    Not ru_maxrss: Linux carries that over execve, so a worker spawned from a large pytest
    process would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _worker(conn: Connection) -> None:
    os.environ["TVM_NUM_THREADS"] = "1"
    os.environ["INFER_MAX_TENSOR_BYTES"] = str(TENSOR_CAP_BYTES)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="infer-fuzz-") as work:
        os.environ["INFER_CACHE_DIR"] = str(Path(work) / "cache")  # never the user's cache
        while (data := conn.recv()) is not None:
            started = time.perf_counter()
            kind, detail = attempt(data, Path(work))
            peak = _peak_rss_bytes()
            conn.send(Outcome(kind, detail, peak, time.perf_counter() - started))


class Worker:
    """One spawned process that compiles cases; replaced after a crash or a timeout."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._process = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def run(self, data: bytes, timeout: float) -> Outcome:
        """Return how the case ended; a dead or stuck worker is reported and replaced."""
        started = time.perf_counter()
        if not self._process.is_alive():
            self._start()
        self._conn.send(data)
        if self._conn.poll(timeout):
            try:
                outcome: Outcome = self._conn.recv()
                return outcome
            except (EOFError, OSError):
                pass
            self._process.join(5)
            kind, detail = CRASH, f"worker died (exit code {self._process.exitcode})"
        else:
            self._process.kill()
            self._process.join()
            kind, detail = TIMEOUT, f"over {timeout:.0f} s"
        self._start()
        return Outcome(kind, detail, 0, time.perf_counter() - started)

    def close(self) -> None:
        """Stop the worker."""
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
