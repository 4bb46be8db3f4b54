"""The Pipeline base: preprocess -> Session.run -> postprocess, and its pipeline.json."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from infer.artifact.manifest import ArtifactManifest, sha256_file
from infer.errors import PipelineError
from infer.runtime.session import Session

__all__ = ["PIPELINE_FILE", "Pipeline", "read_pipeline_config", "write_pipeline_config"]

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = 1


class Pipeline:
    """A task on a compiled model: inputs in the task's terms in, the task's JSON-able results out.

    Subclasses set task, default_model and implement from_config (the config is what
    pipeline.json holds) and __call__.
    """

    task: ClassVar[str]
    default_model: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        self.session = session
        self.config = dict(config)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, model={self.session.manifest.model_name!r})"
        )

    @classmethod
    def config_from_recipe(cls, recipe: Any) -> dict[str, Any]:
        """Return the pipeline config that a model recipe implies (PipelineError if it has none)."""
        raise NotImplementedError

    def __call__(self, inputs: Any, **options: Any) -> Any:
        raise NotImplementedError


def read_pipeline_config(artifact: Path) -> dict[str, Any] | None:
    """Return the artifact's pipeline.json (None when it has none); PipelineError if malformed."""
    path = artifact / PIPELINE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), str):
        raise PipelineError(f"{path}: expected an object with a 'task' field")
    if data.get("format") != PIPELINE_FORMAT:
        raise PipelineError(
            f"{path}: format {data.get('format')!r}, this version of infer reads {PIPELINE_FORMAT}"
        )
    return data


def write_pipeline_config(artifact: Path, config: Mapping[str, Any]) -> None:
    """Write pipeline.json into the artifact and record its sha256 in the manifest.

    Every other file is checked against the manifest first (ArtifactError when one changed),
    so that recording the new file never vouches for a damaged one.
    """
    manifest = ArtifactManifest.read(artifact)
    manifest.files.pop(PIPELINE_FILE, None)
    manifest.verify_files(artifact)
    staged = artifact / (PIPELINE_FILE + ".tmp")
    staged.write_text(
        json.dumps({"format": PIPELINE_FORMAT, **config}, indent=2) + "\n", encoding="utf-8"
    )
    os.replace(staged, artifact / PIPELINE_FILE)
    manifest.files[PIPELINE_FILE] = sha256_file(artifact / PIPELINE_FILE)
    manifest.write(artifact)
