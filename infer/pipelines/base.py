"""The Pipeline base: preprocess -> Session.run -> postprocess, and its pipeline.json."""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from infer.artifact.manifest import MANIFEST_FILE, ArtifactManifest, sha256_file
from infer.errors import PipelineError
from infer.progress import Progress
from infer.runtime.session import Session

__all__ = [
    "BUNDLE_COMPONENT",
    "CONFIG_FILE",
    "PIPELINE_FILE",
    "Pipeline",
    "bundle_component",
    "component_entry",
    "is_transformers_dir",
    "jsonable",
    "read_json",
    "read_pipeline_config",
    "write_pipeline_config",
    "write_pipeline_json",
]

PIPELINE_FILE = "pipeline.json"
CONFIG_FILE = "config.json"  # a transformers model directory's
PIPELINE_FORMAT = 1
# A bundle's component directories (det, det-640x640, encoder, ...): nothing else is opened.
BUNDLE_COMPONENT = re.compile(r"[a-z]+(-[0-9]+x[0-9]+)?")


class Pipeline:
    """A task on a compiled model: inputs in the task's terms in, the task's JSON-able results out.

    Subclasses set task, default_model and implement from_config (the config is what
    pipeline.json holds) and __call__.
    """

    task: ClassVar[str]
    default_model: ClassVar[str]
    description: ClassVar[str]
    # The recipes the task's default runs, when more than default_model.
    component_models: ClassVar[tuple[str, ...]] = ()
    # What `infer run --task` passes: "file" paths, or the "text" itself.
    input_kind: ClassVar[str] = "file"
    # Whether default_model names a recipe (audio-features names a numpy front end).
    runs_recipe: ClassVar[bool] = True
    # The options a call takes through **options (check_options reads the named ones itself).
    keyword_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        self.session = session
        self.config = dict(config)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, model={self.session.manifest.model_name!r})"
        )

    @classmethod
    def open(
        cls,
        model: Any,
        *,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
    ) -> Pipeline:
        """Return the pipeline on model: an artifact (its pipeline.json gives the config), a
        recipe name or an .onnx file (compiled into the cache on first use); None for the
        task's default. config overrides what the artifact or recipe says."""
        import infer
        from infer.sources import resolve_model

        compiled = cls._compile(model, config, threads, progress, compile_options)
        if compiled is not None:
            artifact, task_config = compiled
            return cls(artifact.load(threads=threads), task_config)
        ref = resolve_model(model if model is not None else cls.default_model, progress)
        if ref.kind == "artifact":
            path = Path(ref.model)  # type: ignore[arg-type]
            session = Session(path, threads=threads)  # verifies every file, pipeline.json too
            stored = read_pipeline_config(path)
            if config is None and stored is not None and stored["task"] != cls.task:
                raise PipelineError(f"{path}: built for task {stored['task']!r}, not {cls.task!r}")
            return cls(session, cls.make_config(ref.recipe, config or stored))
        artifact = infer.compile(ref.model, threads=threads, progress=progress, **compile_options)
        return cls(artifact.load(threads=threads), cls.make_config(ref.recipe, config))

    @classmethod
    def build(
        cls,
        output: Path,
        model: Any,
        *,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
    ) -> Path:
        """Compile model (None: the task's default) into the artifact directory output, with
        the pipeline.json that `infer.pipeline(task, model=output)` reads; return output."""
        import infer
        from infer.sources import resolve_model

        compiled = cls._compile(model, config, threads, progress, compile_options, output)
        if compiled is not None:
            artifact, task_config = compiled
            cls(artifact.load(threads=threads), task_config)  # PipelineError before it is written
            write_pipeline_config(artifact.path, task_config)
            path: Path = artifact.path
            return path
        ref = resolve_model(model if model is not None else cls.default_model, progress)
        task_config = cls.make_config(ref.recipe if config is None else None, config)
        artifact = infer.compile(
            ref.model, output=output, threads=threads, progress=progress, **compile_options
        )
        write_pipeline_config(artifact.path, task_config)
        return artifact.path

    @classmethod
    def _compile(
        cls, model: Any, config: dict[str, Any] | None, threads: int | None,
        progress: Progress | None, compile_options: Mapping[str, Any], output: Path | None = None,
    ) -> tuple[Any, dict[str, Any]] | None:  # fmt: skip
        """Return (artifact, task config) for a model the task compiles its own way (a
        transformers directory); None for what open and build take (recipes, .onnx, artifacts)."""
        return None

    @classmethod
    def make_config(cls, recipe: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return the task's config: the one given, else what the model's recipe implies."""
        if config is not None:
            if config.get("task", cls.task) != cls.task:
                raise PipelineError(f"the config is for task {config['task']!r}, not {cls.task!r}")
            return {**config, "task": cls.task}
        if recipe is None:
            raise PipelineError(
                f"{cls.task}: this model has no recipe and no pipeline.json; give its pre/post-"
                "processing config (config= in Python, --config FILE.json on the command line)"
            )
        return cls.config_from_recipe(recipe)

    @classmethod
    def config_from_recipe(cls, recipe: Any) -> dict[str, Any]:
        """Return the pipeline config that a model recipe implies (PipelineError if it has none)."""
        raise NotImplementedError

    def __call__(self, inputs: Any, **options: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def call_options(cls) -> list[str]:
        """Return the options the task's call takes: its keywords after self and the inputs,
        and what its **options take."""
        parameters = list(inspect.signature(cls.__call__).parameters.values())[2:]
        takes = [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        return takes + list(cls.keyword_options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """PipelineError naming the options that the task's call does not take."""
        takes = cls.call_options()
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise PipelineError(
                f"{cls.task} takes no option {', '.join(unknown)}; it takes "
                f"{', '.join(takes) or 'none'}"
            )


def read_json(path: Path) -> Any:
    """Return the content of a JSON file; PipelineError naming it when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not a readable JSON file ({exc})") from None


def is_transformers_dir(path: Path) -> bool:
    """Return whether path is a transformers model directory (config.json, no manifest)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file() and not (path / MANIFEST_FILE).exists()


def write_pipeline_json(path: Path, config: Mapping[str, Any]) -> None:
    """Write config as a pipeline.json at path (with its format), replacing it in one step."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(
        json.dumps({"format": PIPELINE_FORMAT, **config}, indent=2) + "\n", encoding="utf-8"
    )
    os.replace(staged, path)


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
    write_pipeline_json(artifact / PIPELINE_FILE, config)
    manifest.files[PIPELINE_FILE] = sha256_file(artifact / PIPELINE_FILE)
    manifest.write(artifact)


def component_entry(bundle: Path, name: str) -> dict[str, str]:
    """Return pipeline.json's entry of the bundle's component directory name (its manifest's
    sha256, so that a component swapped from another bundle is refused)."""
    return {"dir": name, "sha256": sha256_file(bundle / name / MANIFEST_FILE)}


def bundle_component(bundle: Path, entry: Any, what: str) -> Path:
    """Return a bundle component's directory after checking its manifest's sha256."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dir"), str):
        raise PipelineError(f"{bundle / PIPELINE_FILE}: component {what}: expected dir and sha256")
    name = str(entry["dir"])
    if not BUNDLE_COMPONENT.fullmatch(name):
        raise PipelineError(f"{bundle / PIPELINE_FILE}: component dir {name!r} is not allowed")
    path = bundle / name
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        raise PipelineError(f"{bundle}: component {name}/ has no {MANIFEST_FILE}")
    if sha256_file(manifest) != entry.get("sha256"):
        raise PipelineError(
            f"{bundle}: {name}/{MANIFEST_FILE} does not match the sha256 in {PIPELINE_FILE} "
            "(changed, or swapped from another bundle)"
        )
    return path


def jsonable(value: Any) -> Any:
    """Return a pipeline's result with numpy arrays and scalars as lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
