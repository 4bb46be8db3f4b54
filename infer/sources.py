"""What the user named as a model: a recipe name, an .onnx file, bytes, a ModelProto or an artifact."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from infer.artifact.manifest import MANIFEST_FILE
from infer.errors import ModelError
from infer.progress import Progress
from infer.registry import ModelRecipe, get_recipe, list_recipes, pull, pulled_path

__all__ = ["ModelRef", "ModelSource", "resolve_model"]

ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: an ONNX model (file or in memory) or a compiled artifact directory."""

    kind: str  # "onnx" or "artifact"
    model: ModelSource
    display: str
    recipe: ModelRecipe | None = None


def resolve_model(
    model: ModelSource, progress: Progress | None = None, *, pull_missing: bool = True
) -> ModelRef:
    """Return what model names; a recipe name is pulled into the cache if it is not there yet."""
    if isinstance(model, onnx.ModelProto | bytes | bytearray):
        return ModelRef("onnx", model, "<in-memory model>")
    path = Path(model)
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file():
            return ModelRef("artifact", path, str(path))
        raise ModelError(f"{path}: a directory without {MANIFEST_FILE}, so not an artifact")
    if path.is_file():
        # A pulled model keeps its recipe (shapes, image input) when named by its path.
        pulled = {pulled_path(r).resolve(): r for r in list_recipes()}
        return ModelRef("onnx", path, str(path), pulled.get(path.resolve()))
    name = str(model)
    if os.sep not in name and not name.endswith(".onnx"):
        known = {r.name for r in list_recipes()}
        if name in known:
            recipe = get_recipe(name)
            log = progress.log if progress is not None else (lambda _m: None)
            if pull_missing:
                return ModelRef("onnx", pull(recipe, log=log), name, recipe)
        raise ModelError(
            f"{name!r}: no such file, and not a known model ({', '.join(sorted(known))})"
        )
    raise ModelError(f"{name}: no such file")
