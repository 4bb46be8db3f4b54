"""MetaSchedule tuning of the kernels TVM generates, into a database that later compiles apply.

Convolutions and matmuls go to oneDNN (offload.py); what TVM compiles itself (the fused
elementwise, normalisation, pooling and layout kernels around them) gets infer's fixed schedule
(cpu_schedule.py). `tune` searches each of those kernels with MetaSchedule and also measures the
fixed schedule on the same runner; both go into the database as tuning records, so a compile
(`MetaScheduleApplyDatabase`) takes whichever ran faster, kernel by kernel.

The database is MetaSchedule's own JSON pair, plus a state file of infer's (trials done and the
two timings per kernel). Progress is saved after every round of trials: a killed run resumes
where it stopped, and the database is repaired (a line cut short by the kill is dropped) before
it is read. Compiles read a snapshot of it whose sha256 is part of the compile cache key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from infer.artifact.store import write_file_atomically
from infer.errors import CompileError, InferError
from infer.native_stderr import drop_tvm_log_noise

__all__ = [
    "DATABASE_FILES",
    "DEFAULT_TRIALS",
    "DatabaseInfo",
    "TaskResult",
    "TuningReport",
    "database_digest",
    "describe_database",
    "repair_database",
    "snapshot_database",
    "tune_modules",
]

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
DATABASE_FILES = (WORKLOAD_FILE, RECORD_FILE)
STATE_FILE = "infer-tuning.json"
LOCK_FILE = ".lock"
STATE_VERSION = 1
# Trials per kernel when none are asked for: a few minutes for a CNN on 2 cores.
DEFAULT_TRIALS = 64
# Trials per search round: progress is saved, shown and the time budget checked between rounds.
ROUND_TRIALS = 16
# Candidates the evolutionary search keeps per generation. MetaSchedule's 512 is sized for
# rounds of 64 trials; for rounds of 16, 128 halves the time of a ResNet-18 run (57 s -> 31 s
# at 16 trials per kernel) and found kernels as fast (within the timing noise).
POPULATION = 128
# A candidate that runs longer than this is a failed trial (a bad schedule can be very slow).
RUNNER_TIMEOUT_S = 120.0
# Every measurement, of a candidate or of infer's fixed schedule: the mean of `repeat` timings,
# each of `number` runs lasting at least min_repeat_ms together.
EVALUATOR = {"number": 3, "repeat": 3, "min_repeat_ms": 40, "enable_cpu_cache_flush": False}
_LOGGER = "tvm.s_tir.meta_schedule"


@dataclass
class TaskResult:
    """One kernel: how often the model calls it, and its time under each schedule (µs)."""

    key: str  # the structural hash of its TIR
    name: str
    weight: int
    default_us: float | None = None
    tuned_us: float | None = None
    trials: int = 0
    default_recorded: bool = False

    @property
    def chosen(self) -> str:
        """Which schedule a compile applies: 'tuned' or 'default' (infer's fixed one)."""
        if self.tuned_us is None:
            return "default"
        if self.default_us is None or self.tuned_us < self.default_us:
            return "tuned"
        return "default"

    @property
    def best_us(self) -> float | None:
        """The time of the chosen schedule."""
        times = [t for t in (self.default_us, self.tuned_us) if t is not None]
        return min(times) if times else None


@dataclass
class TuningReport:
    """What a tuning run did: every kernel, in the order they were tuned."""

    database: Path
    tasks: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0
    trials_run: int = 0
    out_of_time: bool = False

    def totals_us(self) -> tuple[float, float]:
        """The model's TVM kernel time per run (each kernel times its calls): fixed schedules
        only, and with the faster schedule of each kernel."""
        default = sum(t.weight * (t.default_us or 0.0) for t in self.tasks)
        best = sum(t.weight * (t.best_us or 0.0) for t in self.tasks)
        return default, best


@dataclass
class _State:
    """infer's side of a database: what was tuned (model, target) and each kernel's progress."""

    directory: Path
    about: dict[str, str]
    tasks: dict[str, TaskResult]

    @classmethod
    def read(cls, directory: Path, about: dict[str, str]) -> _State:
        path = directory / STATE_FILE
        if not path.is_file():
            return cls(directory, about, {})
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STATE_VERSION:
                return cls(directory, about, {})
            tasks = {k: TaskResult(**v) for k, v in data["tasks"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InferError(
                f"tuning database {directory}: {STATE_FILE} cannot be read ({exc}); "
                "remove the folder to start over"
            ) from None
        return cls(directory, {**data.get("about", {}), **about}, tasks)

    def save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "about": self.about,
            "tasks": {k: asdict(v) for k, v in self.tasks.items()},
        }
        write_file_atomically(self.directory / STATE_FILE, json.dumps(data, indent=1).encode())


@dataclass(frozen=True)
class DatabaseInfo:
    """A tuning database as `infer cache list` shows it."""

    path: Path
    about: dict[str, str]
    kernels: int
    tuned: int  # kernels whose tuned schedule beat the fixed one
    records: int
    size_bytes: int
    modified: float


def describe_database(directory: Path) -> DatabaseInfo:
    """Return what the database in directory holds (its state file may be missing or stale)."""
    try:
        state = _State.read(directory, {})
    except InferError:
        state = _State(directory, {}, {})
    records = directory / RECORD_FILE
    files = [f for f in directory.iterdir() if f.is_file()] if directory.is_dir() else []
    return DatabaseInfo(
        path=directory,
        about=state.about,
        kernels=len(state.tasks),
        tuned=sum(1 for t in state.tasks.values() if t.chosen == "tuned"),
        records=len(records.read_bytes().splitlines()) if records.is_file() else 0,
        size_bytes=sum(f.stat().st_size for f in files),
        modified=max((f.stat().st_mtime for f in files), default=0.0),
    )


def repair_database(directory: Path) -> int:
    """Drop the lines of the database that do not parse (a write cut short by a kill), and records
    of workloads that are not in it; return how many lines were dropped."""
    workloads = directory / WORKLOAD_FILE
    records = directory / RECORD_FILE
    dropped = 0
    kept_workloads = 0
    for path in (workloads, records):
        if not path.is_file():
            continue
        lines = path.read_bytes().split(b"\n")
        good: list[bytes] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if path is records and not (
                isinstance(value, list) and value and isinstance(value[0], int)
                and 0 <= value[0] < kept_workloads
            ):  # fmt: skip
                dropped += 1
                continue
            good.append(line)
        if path is workloads:
            kept_workloads = len(good)
        text = b"".join(line + b"\n" for line in good)
        if text != path.read_bytes():
            write_file_atomically(path, text)
    return dropped


def database_digest(directory: Path) -> str | None:
    """Return the sha256 of the database's records, or None when it holds none."""
    records = directory / RECORD_FILE
    if not records.is_file() or not records.stat().st_size:
        return None
    digest = hashlib.sha256()
    for name in DATABASE_FILES:
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def snapshot_database(directory: Path, into: Path) -> str | None:
    """Copy the database into `into` (a compile reads the copy while a tuning run may go on
    writing the original); return its digest, None when there is nothing to apply."""
    if not directory.is_dir():
        raise InferError(f"tuning database {directory}: no such folder")
    into.mkdir(parents=True, exist_ok=True)
    for name in DATABASE_FILES:
        if (directory / name).is_file():
            shutil.copyfile(directory / name, into / name)
        else:
            (into / name).write_bytes(b"")
    # The copy is repaired, never the original: a tuning run may be appending to it right now.
    repair_database(into)
    return database_digest(into)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Frame "file names" that are no file: inspect.getmodule scans all of sys.modules for each of
# them, and finds nothing. TVMScript calls inspect.stack() for every one of the ~250 tensor
# intrinsics MetaSchedule imports: 22 s on this machine. Recorded as belonging to no module (the
# scan's own answer) the import takes 2.5 s.
_PSEUDO_FILES = (
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    "<string>",
    "<ast>",
)


def _import_tensor_intrinsics() -> None:
    """Import what every MetaSchedule TuneContext imports, without the 20 s of frame scans."""
    import inspect

    for name in _PSEUDO_FILES:
        inspect.modulesbyfile.setdefault(name, "")
    import tvm.s_tir.tensor_intrin  # noqa: F401


def _builder(scratch: Path) -> Any:
    """A MetaSchedule builder that compiles candidates in this process: LocalBuilder's worker
    processes re-import TVM (~27 s of CPU each on 2 cores) for every batch."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    @derived_object
    class InProcessBuilder(PyBuilder):  # type: ignore[misc]
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    library = tvm.compile(mod, target=item.target)
                    path = Path(tempfile.mkdtemp(dir=scratch)) / "kernel.so"
                    library.export_library(str(path))
                    results.append(BuilderResult(str(path), None))
                except Exception as exc:  # a candidate that does not build is a failed trial
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return InProcessBuilder()


def _runner(threads: int) -> Any:
    """MetaSchedule's local runner: candidates run in a worker process (a crash is a failed
    trial), on `threads` threads of TVM's pool."""
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner

    from infer.config import apply_tvm_thread_environment

    apply_tvm_thread_environment()
    with _environment({"TVM_NUM_THREADS": str(threads)}):  # the worker starts here
        return LocalRunner(
            timeout_sec=RUNNER_TIMEOUT_S, evaluator_config=EvaluatorConfig(**EVALUATOR)
        )


def _structural_key(mod: Any) -> str:
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def _untunable(task_mod: Any) -> str | None:
    """Why MetaSchedule's runner cannot time a kernel, or None: it allocates the arguments from
    their shapes, and refuses symbolic ones."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    try:
        ArgInfo.from_entry_func(task_mod, remove_preproc=True)
    except TypeError:
        return "symbolic shapes"
    return None


def _extract(
    mods: list[Any], target: Any
) -> tuple[list[tuple[str, str, Any, int]], dict[str, list[str]]]:
    """Return (key, name, task module, calls) of every distinct kernel of mods not yet scheduled,
    and the names of those left out, by reason."""
    from tvm.s_tir import meta_schedule as ms

    found: dict[str, tuple[str, Any, int]] = {}
    left: dict[str, list[str]] = {}
    for mod in mods:
        for task in ms.relax_integration.extract_tasks(mod, target):
            task_mod = task.dispatched[0]
            if task_mod["main"].attrs and task_mod["main"].attrs.get("tirx.is_scheduled", False):
                continue
            reason = _untunable(task_mod)
            if reason is not None:
                left.setdefault(reason, []).append(task.task_name)
                continue
            key = _structural_key(task_mod)
            name, _, weight = found.get(key, (task.task_name, task_mod, 0))
            found[key] = (name, task_mod, weight + int(task.weight))
    return [(key, name, mod, weight) for key, (name, mod, weight) in found.items()], left


def _fixed_schedule(task_mod: Any, target: Any) -> Any:
    """Return the schedule infer's compile gives this kernel (the rules of lowering_pipeline, in
    order), or None when no rule takes it."""
    from infer.optimize.pipeline import schedule_rules

    func = task_mod["main"]
    with target:
        for rule in schedule_rules():
            sch = rule.apply(func, target, False)
            if sch is not None:
                return sch[0] if isinstance(sch, list) else sch
    return None


def _measure(
    schedule_mod: Any, task_mod: Any, target: Any, builder: Any, runner: Any
) -> float | None:
    """Return the mean run time in seconds of schedule_mod on the runner, None if it failed."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    [built] = builder.build([BuilderInput(schedule_mod, target)])
    if built.error_msg:
        return None
    args = ArgInfo.from_entry_func(task_mod, remove_preproc=True)
    [future] = runner.run([RunnerInput(built.artifact_path, "cpu", args)])
    result = future.result()
    if result.error_msg or not result.run_secs:
        return None
    secs = [float(s) for s in result.run_secs]
    return sum(secs) / len(secs)


def tune_modules(
    mods: list[Any],
    target: Any,
    directory: Path,
    *,
    trials: int,
    time_budget_s: float | None,
    threads: int,
    report: Callable[[str], None],
    about: dict[str, str] | None = None,
    seed: int = 0,
) -> TuningReport:
    """Tune every kernel of mods (Relax modules after TIR legalization and fusion) into the
    database in directory: `trials` MetaSchedule trials per kernel in all (a re-run adds only
    the missing ones), the most expensive kernels first, until time_budget_s runs out. about
    (model name, target) is kept in the state file for `infer cache list`."""
    if trials < 1:
        raise InferError(f"--trials must be at least 1, got {trials}")
    try:
        import xgboost  # noqa: F401  (MetaSchedule's cost model)
    except ImportError:
        raise InferError("tuning needs xgboost: pip install 'infer[tune]'") from None
    started = time.perf_counter()
    deadline = None if time_budget_s is None else started + time_budget_s
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InferError(f"tuning database {directory}: another tuning run is writing it") from None
    try:
        state = _State.read(directory, about or {})
        return _tune_locked(mods, target, state, trials, deadline, threads, report, seed, started)
    finally:
        lock.release()


def _tune_locked(
    mods: list[Any], target: Any, state: _State, trials: int, deadline: float | None,
    threads: int, report: Callable[[str], None], seed: int, started: float,
) -> TuningReport:  # fmt: skip
    from tvm.s_tir import meta_schedule as ms

    directory = state.directory
    _import_tensor_intrinsics()
    dropped = repair_database(directory)
    if dropped:
        report(f"database repaired: {dropped} unreadable line(s) dropped (an interrupted run)")
    found, left = _extract(mods, target)
    for reason, names in left.items():
        distinct = sorted(set(names))
        hint = "; fix the inputs' dims with --shape" if reason == "symbolic shapes" else ""
        report(
            f"{len(names)} kernel(s) with {reason} keep the fixed schedule "
            f"({', '.join(distinct[:4])}{', ...' if len(distinct) > 4 else ''}){hint}"
        )
    if not found:
        report("nothing to tune: TVM compiles no kernel of static shape left unscheduled")
        return TuningReport(directory, seconds=time.perf_counter() - started)
    logging.getLogger(_LOGGER).setLevel(logging.WARNING)
    database = ms.database.JSONDatabase(work_dir=str(directory))
    result = TuningReport(directory)
    with tempfile.TemporaryDirectory(prefix="infer-tune-") as scratch:
        builder = _builder(Path(scratch))
        runner = _runner(threads)
        tasks: list[tuple[TaskResult, Any]] = []
        for key, name, task_mod, weight in found:
            task = state.tasks.get(key) or TaskResult(key, name, weight)
            task.weight = weight
            state.tasks[key] = task
            if task.default_us is None:
                fixed = _fixed_schedule(task_mod, target)
                secs = (
                    _measure(fixed.mod, task_mod, target, builder, runner)
                    if fixed is not None
                    else None
                )
                task.default_us = None if secs is None else secs * 1e6
            tasks.append((task, task_mod))
        state.save()
        # The kernels that cost the model most first: a time budget goes where it pays.
        tasks.sort(key=lambda tm: -(tm[0].weight * (tm[0].default_us or 0.0)))
        logs = Path(scratch) / "logs"
        for index, (task, task_mod) in enumerate(tasks, start=1):
            label = f"[{index}/{len(tasks)}] {task.name} (x{task.weight})"
            if task.default_us is None:
                # The runner fills the arguments with random values: random integers used as
                # indices read out of bounds (BERT's embedding gather_nd crashed every trial).
                report(f"{label}: not tuned, it fails on the runner's random inputs")
                result.tasks.append(task)
                continue
            while task.trials < trials:
                if deadline is not None and time.perf_counter() >= deadline:
                    result.out_of_time = True
                    break
                count = min(ROUND_TRIALS, trials - task.trials)
                before = len(database)
                # A seed per round: the same one would propose the same candidates again.
                try:
                    _tune_round(
                        ms, task_mod, target, database, builder, runner, logs, count, threads,
                        seed + task.trials,
                    )  # fmt: skip
                except CompileError as exc:
                    # MetaSchedule cannot search some kernels (TIR with Let bindings, such as
                    # NaN-preserving Relu fused after an add: "Do not have a default for
                    # prim.Let"). The kernel keeps the fixed schedule; the others are still tuned.
                    report(f"{label}: not tuned, {exc}; it keeps the fixed schedule")
                    task.trials = trials
                    state.save()
                    break
                measured = len(database) - before
                # Fewer new candidates than asked for: the search has run out of schedules it
                # has not measured yet (small kernels have few), so the kernel is done.
                task.trials = task.trials + measured if measured == count else trials
                result.trials_run += measured
                best = _best_seconds(database, task_mod)
                task.tuned_us = None if best is None else best * 1e6
                state.save()
                report(f"{label}: {task.trials}/{trials} trials, {_times(task)}")
            if task.tuned_us is not None and task.chosen == "default" and not task.default_recorded:
                _record_fixed(database, task_mod, target, task)
                state.save()
            result.tasks.append(task)
            if result.out_of_time:
                report(f"time budget used up: {len(tasks) - index} kernel(s) left for a later run")
                result.tasks.extend(t for t, _ in tasks[index:])
                break
    result.seconds = time.perf_counter() - started
    return result


def _times(task: TaskResult) -> str:
    def us(value: float | None) -> str:
        return "failed" if value is None else f"{value:.1f} µs"

    return f"best {us(task.tuned_us)} (fixed schedule {us(task.default_us)})"


def _tune_round(
    ms: Any, task_mod: Any, target: Any, database: Any, builder: Any, runner: Any,
    logs: Path, count: int, threads: int, seed: int,
) -> None:  # fmt: skip
    """Run `count` MetaSchedule trials on one kernel; the records go into database."""
    # MetaSchedule rebuilds its loggers from the names of its logger's handlers (dictConfig),
    # and fails on a handler without one (some hosts add such, pytest's logging among them);
    # its configuration would drop that handler anyway.
    scheduler = logging.getLogger(_LOGGER)
    for handler in [h for h in scheduler.handlers if h.get_name() is None]:
        scheduler.removeHandler(handler)
    context = ms.TuneContext(
        mod=task_mod,
        target=target,
        space_generator="post-order-apply",
        search_strategy=ms.search_strategy.EvolutionarySearch(population_size=POPULATION),
        task_name="kernel",
        logger=ms.logging.get_loggers_from_work_dir(str(logs), ["kernel"])[0],
        rand_state=seed,
        num_threads=threads,
    ).clone()
    logging.getLogger(_LOGGER).setLevel(logging.WARNING)  # get_loggers resets the console level
    try:
        with drop_tvm_log_noise():
            ms.tune_tasks(
                tasks=[context],
                task_weights=[1.0],
                work_dir=str(logs),
                max_trials_global=count,
                max_trials_per_task=count,
                num_trials_per_iter=count,
                builder=builder,
                runner=runner,
                database=database,
                cost_model="xgb",
            )
    except Exception as exc:
        raise CompileError(f"tuning failed: {type(exc).__name__}: {exc}") from None


def _best_seconds(database: Any, task_mod: Any) -> float | None:
    if not database.has_workload(task_mod):
        return None
    top = database.get_top_k(database.commit_workload(task_mod), 1)
    if not top or not top[0].run_secs:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return sum(secs) / len(secs)


def _record_fixed(database: Any, task_mod: Any, target: Any, task: TaskResult) -> None:
    """Put infer's fixed schedule into the database with its measured time: it beat the search."""
    from tvm.s_tir import meta_schedule as ms

    fixed = _fixed_schedule(task_mod, target)
    if fixed is None or task.default_us is None:
        return
    seconds = task.default_us / 1e6
    database.commit_tuning_record(
        ms.database.TuningRecord(
            fixed.trace,
            database.commit_workload(task_mod),
            [seconds] * int(EVALUATOR["repeat"]),
            target,
            ms.arg_info.ArgInfo.from_prim_func(task_mod["main"]),
        )
    )
    task.default_recorded = True
