"""Tasks on compiled models: `infer.pipeline(task, model=...)` and the task registry."""

from __future__ import annotations

import os
from typing import Any

from infer.errors import PipelineError
from infer.pipelines.audio_features import AudioFeaturesPipeline
from infer.pipelines.base import (
    PIPELINE_FILE,
    Pipeline,
    write_pipeline_config,
)
from infer.pipelines.feature_extraction import FeatureExtractionPipeline
from infer.pipelines.image_classification import ImageClassificationPipeline
from infer.pipelines.ocr import OcrPipeline
from infer.pipelines.speech_recognition import SpeechRecognitionPipeline
from infer.pipelines.text_classification import TextClassificationPipeline
from infer.pipelines.token_classification import TokenClassificationPipeline
from infer.pipelines.voice_activity import VoiceActivityPipeline
from infer.progress import Progress

__all__ = [
    "PIPELINE_FILE",
    "TASKS",
    "Pipeline",
    "get_task",
    "pipeline",
    "write_pipeline_config",
]

TASKS: dict[str, type[Pipeline]] = {
    cls.task: cls
    for cls in (
        ImageClassificationPipeline,
        OcrPipeline,
        FeatureExtractionPipeline,
        TextClassificationPipeline,
        TokenClassificationPipeline,
        VoiceActivityPipeline,
        AudioFeaturesPipeline,
        SpeechRecognitionPipeline,
    )
}


def get_task(task: str) -> type[Pipeline]:
    """Return the pipeline class of task; PipelineError listing the valid tasks otherwise."""
    if task not in TASKS:
        raise PipelineError(f"unknown task {task!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task]


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
    task's default model (an OCR bundle or None for ocr); config overrides what the artifact
    or recipe says."""
    return get_task(task).open(
        model, config=config, threads=threads, progress=progress, compile_options=compile_options
    )
