"""`infer batch`: a pipeline over many inputs on Ray Data, results to one Parquet file.

The inputs are the files under a directory (images, audio: their bytes) or a Parquet file or
directory (a "text" column for text tasks, else "bytes" with an optional "path"). An actor pool
of `workers` runs the pipeline, each actor loading the artifact once. A failing item becomes a
row with its error and path; the others go on. Ray is local unless an address is given (an
existing cluster: the artifact's path must then be readable by its workers).

A run can be killed at any point and started again: results are written as they come, each
batch to a part file (written whole, then renamed) in `.<output>.parts/` beside the output,
with a job.json naming the model, source and options. A re-run of the same job skips the inputs
its parts already hold (by path; Parquet without a "path" column starts over), runs the rest,
and only then writes the output from all parts (a temporary file renamed into place) and
removes the parts: never a half-written results file, never an input twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infer.artifact.store import write_file_atomically
from infer.errors import InferError, InputError
from infer.pipelines.base import jsonable
from infer.progress import Progress

__all__ = ["BatchSummary", "run_batch"]

JOB_FILE = "job.json"
PART_PREFIX = "part-"
# Rows handed to an actor at a time.
BATCH_ROWS = 8
# The local Ray object store: results are small, inputs stream through.
LOCAL_OBJECT_STORE_BYTES = 256 << 20
RESULT_COLUMNS = ("path", "result", "error")


@dataclass
class BatchSummary:
    """What a batch run did."""

    output: Path
    rows: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    resumed: int = 0  # inputs a killed earlier run had done


class _PipelineActor:
    """A Ray actor: the pipeline loaded once, run on each row of the batches it is given."""

    def __init__(self, task: str, model: str, threads: int, options: Mapping[str, Any]) -> None:
        import infer

        self.pipe = infer.pipeline(task, model=model, threads=threads)
        self.options = dict(options)
        self.text = type(self.pipe).input_kind == "text"

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
        items = batch["text"] if self.text else batch["bytes"]
        paths = batch["path"] if "path" in batch else [""] * len(items)
        out: dict[str, list[str]] = {c: [] for c in RESULT_COLUMNS}
        for path, item in zip(paths, items, strict=True):
            value = str(item) if self.text else bytes(item)
            try:
                result, error = json.dumps(jsonable(self.pipe(value, **self.options))), ""
            except InferError as exc:
                result, error = "", f"{path}: {exc}" if path else str(exc)
            out["path"].append(str(path))
            out["result"].append(result)
            out["error"].append(error)
        return out


def _source_files(source: Path) -> list[str]:
    files = sorted(str(p) for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"{source}: no files to run")
    return files


def _dataset(ray: Any, source: Path, text: bool, done: set[str]) -> tuple[Any, int, int]:
    """Return (the Ray dataset of the inputs at source not in done, its rows, rows skipped)."""
    if source.suffix == ".parquet" or (source.is_dir() and any(source.glob("*.parquet"))):
        dataset = ray.data.read_parquet(str(source))
        column = "text" if text else "bytes"
        if column not in dataset.columns():
            raise InputError(
                f"{source}: Parquet columns {dataset.columns()}; this task reads {column!r}"
            )
        total = dataset.count()
        if done and "path" in dataset.columns():
            dataset = dataset.filter(lambda row: row["path"] not in done)
            remaining = dataset.count()
            return dataset, remaining, total - remaining
        return dataset, total, 0
    if not source.is_dir():
        raise InputError(f"{source}: expected a directory of files or Parquet")
    if text:
        raise InputError(f"{source}: a text task reads Parquet with a 'text' column")
    files = _source_files(source)
    remaining_files = [f for f in files if f not in done]
    if not remaining_files:
        return None, 0, len(files)
    dataset = ray.data.read_binary_files(remaining_files, include_paths=True)
    return dataset, len(remaining_files), len(files) - len(remaining_files)


class _Parts:
    """The part files of one job beside its output: what is done, and the next part to write."""

    def __init__(self, output: Path, job: dict[str, Any], progress: Progress) -> None:
        import pyarrow as pa

        self.schema = pa.schema([(c, pa.string()) for c in RESULT_COLUMNS])
        self.directory = output.with_name(f".{output.name}.parts")
        self.output = output
        job_file = self.directory / JOB_FILE
        if self.directory.is_dir():
            try:
                same = json.loads(job_file.read_text(encoding="utf-8")) == job
            except (OSError, ValueError):
                same = False
            if not same:
                progress.log(f"{self.directory}: parts of another job (or damaged): starting over")
                shutil.rmtree(self.directory)
        self.directory.mkdir(exist_ok=True)
        if not job_file.is_file():
            write_file_atomically(job_file, json.dumps(job).encode())
        self.files = sorted(self.directory.glob(f"{PART_PREFIX}*.parquet"))

    def done_paths(self) -> set[str]:
        """Return the paths of the inputs the parts already hold."""
        import pyarrow.parquet as pq

        return {
            p for f in self.files for p in pq.read_table(f, columns=["path"])["path"].to_pylist()
        }

    def write(self, batch: Mapping[str, Any]) -> int:
        """Write one batch of results as the next part, whole or not at all; return its rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: list(batch[c]) for c in RESULT_COLUMNS}, schema=self.schema)
        path = self.directory / f"{PART_PREFIX}{len(self.files):06d}.parquet"
        staged = path.with_name(f".{path.name}.tmp")
        try:
            pq.write_table(table, str(staged))
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        self.files.append(path)
        return int(table.num_rows)

    def discard_if_empty(self) -> None:
        """Remove the parts folder when no part was written (nothing to resume from)."""
        if not self.files:
            shutil.rmtree(self.directory, ignore_errors=True)

    def finish(self, summary: BatchSummary) -> None:
        """Write the output from every part (through a temporary file) and remove the parts;
        count its rows and failures into summary."""
        import pyarrow.parquet as pq

        staged = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        try:
            with pq.ParquetWriter(str(staged), self.schema) as writer:
                for part in self.files:
                    table = pq.read_table(part, schema=self.schema)
                    writer.write_table(table)
                    summary.rows += table.num_rows
                    for row in table.to_pylist():
                        if row["error"]:
                            summary.failed.append((row["path"], row["error"]))
            os.replace(staged, self.output)
        finally:
            staged.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def run_batch(
    model: str | Path,
    source: str | Path,
    output: str | Path,
    *,
    workers: int = 2,
    threads: int = 1,
    address: str | None = None,
    options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> BatchSummary:
    """Run the pipeline of model (an artifact with pipeline.json, or a bundle) on every input at
    source with `workers` actors of `threads` threads; write path, result (JSON) and error per
    input to output (.parquet). Local Ray unless address names a cluster."""
    from infer.pipelines import get_task
    from infer.pipelines.base import read_pipeline_config

    progress = progress or Progress("quiet")
    model_path, source_path, output_path = Path(model), Path(source), Path(output)
    stored = read_pipeline_config(model_path) if model_path.is_dir() else None
    if stored is None:
        raise InputError(
            f"{model_path}: not a pipeline (an artifact with pipeline.json, or a bundle): make "
            "one with `infer compile --task TASK ... -o DIR`"
        )
    task = get_task(stored["task"])
    task.check_options(options or {})
    if output_path.suffix != ".parquet":
        raise InputError(f"{output_path}: the output is a .parquet file")
    if not output_path.parent.is_dir():
        raise InputError(f"{output_path.parent}: no such directory")
    if workers < 1 or threads < 1:
        raise InputError("workers and threads must be >= 1")

    try:
        import pyarrow  # noqa: F401  # the output's writer
        import ray
    except ImportError as exc:
        raise InferError(f"infer batch needs {exc.name}: pip install 'infer[batch]'") from None

    job = {
        "model": str(model_path.resolve()),
        "pipeline": stored,
        "source": str(source_path.resolve()),
        "options": jsonable(dict(options or {})),
    }
    parts = _Parts(output_path, job, progress)
    done = parts.done_paths()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            # The actors hold workers x threads CPUs; reading the inputs needs one more.
            kwargs.update(
                num_cpus=workers * threads + 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES
            )
        ray.init(address=address, **kwargs)
    try:
        summary = BatchSummary(output_path)
        dataset, total, skipped = _dataset(ray, source_path, task.input_kind == "text", done)
        summary.resumed = skipped
        if skipped:
            progress.log(f"batch: resuming, {skipped} input(s) already done in {parts.directory}")
        if dataset is None:  # every input done: only the output is left to write
            parts.finish(summary)
            return summary
        results = dataset.map_batches(
            _PipelineActor,
            fn_constructor_kwargs={
                "task": task.task, "model": str(model_path.resolve()), "threads": threads,
                "options": dict(options or {}),
            },
            batch_size=BATCH_ROWS, compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads, batch_format="numpy",
        )  # fmt: skip
        count = 0
        for batch in results.iter_batches(batch_format="numpy", batch_size=None):
            count += parts.write(batch)
            progress.log(f"batch: {count}/{total}")
        parts.finish(summary)
    except BaseException:
        parts.discard_if_empty()  # refused inputs leave nothing behind; done work stays
        raise
    finally:
        if started_here:
            ray.shutdown()
    return summary
