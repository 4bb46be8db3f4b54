"""`infer batch`: a pipeline over many inputs on Ray Data, results to one Parquet file.

The inputs are the files under a directory (images, audio: their bytes) or a Parquet file or
directory (a "text" column for text tasks, else "bytes" with an optional "path"). An actor pool
of `workers` runs the pipeline, each actor loading the artifact once. A failing item becomes a
row with its error and path; the others go on. Ray is local unless an address is given (an
existing cluster: the artifact's path must then be readable by its workers). The output is
written to a temporary file beside it and renamed into place: there is never a half-written
results file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import InferError, InputError
from infer.pipelines.base import jsonable
from infer.progress import Progress

__all__ = ["BatchSummary", "run_batch"]

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


def _dataset(ray: Any, source: Path, text: bool) -> Any:
    """Return the Ray dataset of the inputs at source."""
    if source.suffix == ".parquet" or (source.is_dir() and any(source.glob("*.parquet"))):
        dataset = ray.data.read_parquet(str(source))
        column = "text" if text else "bytes"
        if column not in dataset.columns():
            raise InputError(
                f"{source}: Parquet columns {dataset.columns()}; this task reads {column!r}"
            )
        return dataset
    if not source.is_dir():
        raise InputError(f"{source}: expected a directory of files or Parquet")
    if text:
        raise InputError(f"{source}: a text task reads Parquet with a 'text' column")
    return ray.data.read_binary_files(_source_files(source), include_paths=True)


def _write(rows: Iterator[Mapping[str, Any]], output: Path, on_row: Callable[[int], None]) -> int:
    """Write rows to output (Parquet) through a temporary file; return the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in RESULT_COLUMNS])
    staged = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with pq.ParquetWriter(str(staged), schema) as writer:
            for batch in rows:
                table = pa.table({c: list(batch[c]) for c in RESULT_COLUMNS}, schema=schema)
                writer.write_table(table)
                count += table.num_rows
                on_row(table.num_rows)
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    return count


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
        dataset = _dataset(ray, source_path, task.input_kind == "text")
        total = dataset.count()
        results = dataset.map_batches(
            _PipelineActor,
            fn_constructor_kwargs={
                "task": task.task, "model": str(model_path.resolve()), "threads": threads,
                "options": dict(options or {}),
            },
            batch_size=BATCH_ROWS, compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads, batch_format="numpy",
        )  # fmt: skip
        summary = BatchSummary(output_path)
        done = [0]

        def on_row(rows: int) -> None:
            done[0] += rows
            progress.log(f"batch: {done[0]}/{total}")

        def batches() -> Iterator[Mapping[str, Any]]:
            for batch in results.iter_batches(batch_format="numpy", batch_size=None):
                for path, error in zip(batch["path"], batch["error"], strict=True):
                    if error:
                        summary.failed.append((str(path), str(error)))
                yield batch

        summary.rows = _write(batches(), output_path, on_row)
    finally:
        if started_here:
            ray.shutdown()
    return summary
