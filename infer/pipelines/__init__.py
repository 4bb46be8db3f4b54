"""Tasks on compiled models: `infer.pipeline(task, model=...)` and the task registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from infer.errors import PipelineError
from infer.pipelines.base import (
    PIPELINE_FILE,
    Pipeline,
    read_pipeline_config,
    write_pipeline_config,
)
from infer.pipelines.image_classification import ImageClassificationPipeline
from infer.progress import Progress

__all__ = [
    "PIPELINE_FILE",
    "TASKS",
    "Pipeline",
    "get_task",
    "pipeline",
    "pipeline_config",
    "write_pipeline_config",
]

TASKS: dict[str, type[Pipeline]] = {cls.task: cls for cls in (ImageClassificationPipeline,)}


def get_task(task: str) -> type[Pipeline]:
    """Return the pipeline class of task; PipelineError listing the valid tasks otherwise."""
    if task not in TASKS:
        raise PipelineError(f"unknown task {task!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def pipeline_config(
    task: str, recipe: Any = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return the task's config: the one given, else what the model's recipe implies."""
    cls = get_task(task)
    if config is not None:
        if config.get("task", task) != task:
            raise PipelineError(f"the config is for task {config['task']!r}, not {task!r}")
        return {**config, "task": task}
    if recipe is None:
        raise PipelineError(
            f"{task}: this model has no recipe and no pipeline.json; give its pre/post-processing "
            "config (config= in Python, --config FILE.json on the command line)"
        )
    return cls.config_from_recipe(recipe)


def pipeline(
    task: str,
    model: str | os.PathLike[str] | None = None,
    *,
    config: dict[str, Any] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    **compile_options: Any,
) -> Pipeline:
    """Return the task's pipeline on model: an artifact (its pipeline.json gives the config), a
    recipe name or an .onnx file (compiled into the cache on first use). Without model, the
    task's default model; config overrides what the artifact or recipe says."""
    import infer
    from infer.runtime.session import Session
    from infer.sources import resolve_model

    cls = get_task(task)
    ref = resolve_model(model if model is not None else cls.default_model, progress)
    if ref.kind == "artifact":
        path = Path(ref.model)  # type: ignore[arg-type]
        session = Session(path, threads=threads)  # verifies every file, pipeline.json too
        stored = read_pipeline_config(path)
        if config is None and stored is not None and stored["task"] != task:
            raise PipelineError(f"{path}: built for task {stored['task']!r}, not {task!r}")
        return cls(session, pipeline_config(task, ref.recipe, config or stored))
    artifact = infer.compile(ref.model, threads=threads, progress=progress, **compile_options)
    return cls(artifact.load(threads=threads), pipeline_config(task, ref.recipe, config))
