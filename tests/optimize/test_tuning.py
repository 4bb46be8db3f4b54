"""MetaSchedule tuning: the database, its reuse by compiles, resuming, repair, the per-kernel choice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import infer
from infer.errors import InferError
from infer.optimize.tuning import (
    RECORD_FILE,
    STATE_FILE,
    WORKLOAD_FILE,
    database_digest,
    repair_database,
)
from tests import onnx_models
from tests.conftest import save

TRIALS = 4
# One round per kernel: the run is killed once the first kernel's round is saved.
KILLED_TRIALS = 8


@pytest.fixture(scope="module")
def tuned(module_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, infer.Tuned]:
    """conv_net tuned into the cache's database (4 trials per kernel), then compiled with it."""
    path = save(onnx_models.conv_net(), tmp_path_factory.mktemp("tune"), "convnet.onnx")
    return path, infer.tune(str(path), trials=TRIALS, threads=1)


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(ref.run(None, {"x": x})[0])


def test_tune_measures_both_schedules_of_every_kernel(tuned: tuple[Path, infer.Tuned]) -> None:
    _, result = tuned
    report = result.report
    names = {t.name for t in report.tasks}
    assert any("pool" in n for n in names), names  # the max-pool kernel TVM compiles
    assert 0 < report.trials_run <= TRIALS * len(report.tasks)
    for task in report.tasks:
        assert task.trials == TRIALS
        assert task.default_us is not None and task.default_us >= 0
        assert task.tuned_us is not None and task.tuned_us > 0
        chosen = task.tuned_us if task.chosen == "tuned" else task.default_us
        assert chosen == task.best_us == min(task.tuned_us, task.default_us)
    default, best = report.totals_us()
    assert best <= default
    state = json.loads((report.database / STATE_FILE).read_text())
    assert {t["key"] for t in state["tasks"].values()} == {t.key for t in report.tasks}


def test_compile_after_tuning_applies_the_database(tuned: tuple[Path, infer.Tuned]) -> None:
    path, result = tuned
    artifact = result.artifact
    assert artifact is not None
    manifest = artifact.manifest
    assert manifest.tuning_database == database_digest(result.report.database)
    # Every tuned kernel's schedule comes from the database: the tuned one or the fixed one,
    # whichever was recorded faster.
    assert manifest.pipeline["tuned_kernels"] == len(result.report.tasks)
    assert artifact.parity is not None and artifact.parity["status"] == "passed"
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = artifact.load(threads=1).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _reference(path, x), rtol=1e-4, atol=1e-5)
    from click.testing import CliRunner

    from infer.cli import cli

    shown = CliRunner().invoke(cli, ["inspect", str(artifact.path)])
    assert shown.exit_code == 0, shown.output
    assert (
        f"tuned: {len(result.report.tasks)} kernels scheduled from tuning database" in shown.output
    )


def test_later_compiles_find_the_database_through_the_cache(
    tuned: tuple[Path, infer.Tuned], module_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFER_CACHE_DIR", str(module_cache))  # where `tuned` put it
    path, result = tuned
    assert result.artifact is not None
    again = infer.compile(str(path))  # no tuning argument: the model's database by default
    assert again.cache_hit and again.path == result.artifact.path
    from click.testing import CliRunner

    from infer.cli import cli

    listed = CliRunner().invoke(cli, ["cache", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    key = result.report.database.name[:16]
    row = next((line for line in listed.output.splitlines() if key in line), "")
    assert "convnet" in row and "llvm" in row, listed.output
    assert f" {len(result.report.tasks)} " in row  # kernels
    untuned = infer.compile(str(path), tuning=False)
    assert untuned.path != again.path
    assert untuned.manifest.tuning_database is None
    assert untuned.manifest.pipeline["tuned_kernels"] == 0


def test_rerun_adds_only_missing_trials(
    tuned: tuple[Path, infer.Tuned], module_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFER_CACHE_DIR", str(module_cache))
    path, result = tuned
    again = infer.tune(str(path), trials=TRIALS, threads=1, compile_after=False)
    assert again.report.trials_run == 0
    assert [t.key for t in again.report.tasks] == [t.key for t in result.report.tasks]
    assert again.artifact is None


def test_time_budget_stops_between_rounds(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    db = tmp_path / "db"
    result = infer.tune(
        str(path), trials=TRIALS, time_budget=1e-9, database=db, compile_after=False
    )
    assert result.report.out_of_time and result.report.trials_run == 0
    # The fixed schedules were timed; the database applies nothing yet.
    assert all(t.default_us is not None for t in result.report.tasks)
    assert database_digest(db) is None
    artifact = infer.compile(str(path), tuning=db)
    assert artifact.manifest.tuning_database is None


def test_repair_drops_cut_lines_and_orphan_records(tmp_path: Path) -> None:
    workloads = ['["1a", "AA=="]', '["2b", "BB=="]', '["3c", "CC']  # the last one cut short
    records = ["[0, {}]", "[1, {}]", "[2, {}]", '[0, {"a"', "[1, {}]"]
    (tmp_path / WORKLOAD_FILE).write_text("\n".join(workloads) + "\n")
    (tmp_path / RECORD_FILE).write_text("\n".join(records))
    assert repair_database(tmp_path) == 3
    assert (tmp_path / WORKLOAD_FILE).read_text() == "\n".join(workloads[:2]) + "\n"
    assert (tmp_path / RECORD_FILE).read_text() == "[0, {}]\n[1, {}]\n[1, {}]\n"
    assert repair_database(tmp_path) == 0


def test_refusals(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(InferError, match=r"CPU \(llvm\) target"):
        infer.tune(str(mlp_path), target="cuda -arch=sm_80")
    with pytest.raises(InferError, match="no such folder"):
        infer.compile(str(mlp_path), tuning=tmp_path / "missing")
    with pytest.raises(InferError, match="no tuning database"):
        infer.compile(str(mlp_path), tuning=True)
    with pytest.raises(InferError, match="trials must be at least 1"):
        infer.tune(str(mlp_path), trials=0, database=tmp_path / "db")


def test_a_second_run_on_one_database_is_refused(tmp_path: Path, mlp_path: Path) -> None:
    from filelock import FileLock

    db = tmp_path / "db"
    db.mkdir()
    with FileLock(str(db / ".lock")), pytest.raises(InferError, match="another tuning run"):
        infer.tune(str(mlp_path), trials=1, database=db, compile_after=False)


def test_cli_time_budget_is_checked(mlp_path: Path) -> None:
    from click.testing import CliRunner

    from infer.cli import cli

    result = CliRunner().invoke(cli, ["tune", str(mlp_path), "--time-budget", "soon"])
    assert result.exit_code == 2
    assert "--time-budget 'soon'" in result.output


def test_a_killed_run_leaves_a_readable_database_and_resumes(tmp_path: Path) -> None:
    from tvm.s_tir import meta_schedule as ms

    path = save(onnx_models.conv_net(), tmp_path)
    db = tmp_path / "db"
    command = [
        sys.executable, "-c", "from infer.cli import main; main()", "tune", str(path),
        "--trials", str(KILLED_TRIALS), "--db", str(db), "--threads", "1", "--no-compile",
    ]  # fmt: skip
    # Its own session: SIGKILL reaches the runner's worker process too.
    first = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not any(t["trials"] for t in _state(db).values()):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = sum(t["trials"] for t in _state(db).values())
    assert 0 < done < KILLED_TRIALS * len(_state(db))
    with (db / RECORD_FILE).open("a") as handle:
        handle.write('[0, [["a trace cut')  # as a kill in the middle of a write leaves it
    # The kill itself may have cut a line of either file too (the fragment then joins it).
    lines = {f: (db / f).read_text().splitlines() for f in (WORKLOAD_FILE, RECORD_FILE)}
    kept = [line for line in lines[RECORD_FILE] if _parses(line)]
    cut = sum(not _parses(line) for f in lines for line in lines[f] if line.strip())
    assert cut >= 1
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"database repaired: {cut} unreadable line(s) dropped" in result.stderr
    match = re.search(r"(\d+) trials this run", result.stdout)
    assert match, result.stdout
    assert 0 < int(match[1]) <= KILLED_TRIALS * len(_state(db)) - done  # only the missing ones
    assert all(t["trials"] == KILLED_TRIALS for t in _state(db).values())
    # MetaSchedule reads the database back, the first run's records included.
    records = (db / RECORD_FILE).read_text().splitlines()
    assert records[: len(kept)] == kept
    assert len(ms.database.JSONDatabase(work_dir=str(db))) == len(records)
    artifact = infer.compile(str(path), tuning=db)
    assert artifact.manifest.pipeline["tuned_kernels"] == len(_state(db))
    assert artifact.parity is not None and artifact.parity["status"] == "passed"


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _state(db: Path) -> dict[str, dict[str, Any]]:
    path = db / STATE_FILE
    if not path.is_file():
        return {}
    tasks: dict[str, dict[str, Any]] = json.loads(path.read_text())["tasks"]
    return tasks


def test_kernels_of_symbolic_shape_keep_the_fixed_schedule(tmp_path: Path, mlp_path: Path) -> None:
    from infer.progress import Progress

    messages: list[str] = []

    class Recorded(Progress):
        def log(self, message: str) -> None:
            messages.append(message)

    progress = Recorded("quiet")
    result = infer.tune(
        str(mlp_path), database=tmp_path / "db", compile_after=False, progress=progress
    )
    assert result.report.tasks == [] and result.report.trials_run == 0
    assert any("with symbolic shapes keep the fixed schedule" in m for m in messages), messages
    assert any("--shape" in m for m in messages)


def test_a_compile_reads_a_repaired_copy_and_leaves_the_database_alone(
    tuned: tuple[Path, infer.Tuned], tmp_path: Path
) -> None:
    import shutil

    path, result = tuned
    db = tmp_path / "db"
    shutil.copytree(result.report.database, db)
    with (db / RECORD_FILE).open("a") as handle:
        handle.write('[0, [["a record being written')  # as a running tune leaves it mid-append
    before = (db / RECORD_FILE).read_bytes()
    artifact = infer.compile(str(path), tuning=db)
    assert (db / RECORD_FILE).read_bytes() == before
    assert artifact.manifest.tuning_database == database_digest(result.report.database)
    assert artifact.manifest.pipeline["tuned_kernels"] == len(result.report.tasks)


def test_a_kernel_metaschedule_cannot_search_keeps_the_fixed_schedule(tmp_path: Path) -> None:
    # Relu after a layout change fuses into a kernel with a Let binding (NaN-preserving max),
    # which MetaSchedule's search rejects ("Do not have a default for prim.Let"). The tuning
    # goes on without it, and the compile after it is checked like any other.
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "relu_between_layouts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64, 1, 32])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = save(model, tmp_path)
    result = infer.tune(str(path), trials=2, threads=1, database=tmp_path / "db")
    (task,) = result.report.tasks
    assert (task.tuned_us, task.chosen) == (None, "default")
    assert result.artifact is not None
    assert result.artifact.manifest.parity["status"] == "passed"
    x = np.random.default_rng(0).standard_normal((4, 64, 32), dtype=np.float32)
    (got,) = result.artifact.load(threads=1).run(None, {"x": x})
    np.testing.assert_array_equal(got, _reference(path, x))
