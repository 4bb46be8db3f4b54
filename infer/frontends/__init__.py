"""Frontends: a model in its own framework's form, exported to an `onnx.ModelProto`.

Each framework has one module here, imported only when a model of that framework is given
(frameworks are optional extras). A frontend returns a `Converted`: the ONNX model, where it
came from (recorded in the manifest) and the framework's own forward function, which the
parity check runs beside ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from infer.errors import ModelError

__all__ = [
    "Converted",
    "DynamicAxes",
    "convert",
    "error_line",
    "framework_of",
    "named_axes",
    "package_version",
    "quiet",
    "require",
]

# {input name: {axis: dim name}} or {input name: [axes]}, as torch.onnx.export takes them.
DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]
# Framework -> (module to import, pip extra that installs it).
EXTRAS = {
    "pytorch": ("torch", "torch"),
    "sklearn": ("sklearn", "sklearn"),
    "jax": ("jax", "jax"),
    "keras": ("keras", "tensorflow"),
    "tensorflow": ("tensorflow", "tensorflow"),
}
# File suffixes that name a framework's saved model.
SUFFIXES = {
    ".pt2": "pytorch",
    ".skops": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".joblib": "sklearn",
    ".keras": "keras",
}
# Framework -> the module of this package that exports its models.
_FRONTEND_MODULES = {
    "pytorch": "pytorch",
    "sklearn": "sklearn",
    "jax": "jax",
    "keras": "keras",
    "tensorflow": "keras",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_REASON_CHARS = 300  # an exporter's error, as quoted in ours
# A directory holding this file is a TensorFlow SavedModel.
SAVED_MODEL_FILE = "saved_model.pb"
# The top-level module of a model's class (or a base class) -> its framework.
_MODULES = {
    "torch": "pytorch",
    "sklearn": "sklearn",
    "jax": "jax",
    "jaxlib": "jax",
    "flax": "jax",
    "keras": "keras",
}


@dataclass
class Converted:
    """A framework model exported to ONNX."""

    proto: onnx.ModelProto
    name: str
    provenance: dict[str, Any]  # framework, version, exporter, opset
    # The framework's own forward on numpy feeds by input name: outputs in ONNX's order.
    reference: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | None = None


def require(framework: str) -> Any:
    """Return the framework's module; ModelError naming the extra to install when it is missing."""
    module, extra = EXTRAS[framework]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"this model needs {framework} ({exc.name or module} is not installed): "
            f"pip install 'infer[{extra}]'"
        ) from None


def named_axes(
    dynamic_axes: DynamicAxes | None, inputs: Sequence[str], label: str
) -> dict[str, dict[int, str]]:
    """Return dynamic_axes as {input: {axis: dim name}}, a list of axes named <input>_dim<axis>;
    ModelError (prefixed with label) when it names an input the model does not have."""
    axes = dict(dynamic_axes or {})
    unknown = sorted(set(axes) - set(inputs))
    if unknown:
        raise ModelError(
            f"{label}: dynamic_axes names input(s) {unknown}; the inputs are {list(inputs)}"
        )
    return {
        name: (
            {int(a): str(d) for a, d in spec.items()}
            if isinstance(spec, Mapping)
            else {int(a): f"{name}_dim{a}" for a in spec}
        )
        for name, spec in axes.items()
    }


def error_line(error: BaseException) -> str:
    """Return 'Type: first line' of an exporter's error, colour codes removed, cut short."""
    text = _ANSI.sub("", str(error)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(error).__name__)
    return f"{type(error).__name__}: {line}"[:MAX_REASON_CHARS]


@contextlib.contextmanager
def quiet(*logger_names: str) -> Iterator[None]:
    """Keep an exporter's progress lines, logs and warnings off the user's terminal (errors
    still raise); the named loggers are set to ERROR meanwhile."""
    loggers = [logging.getLogger(n) for n in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def package_version(distribution: str) -> str:
    """Return an installed distribution's version, 'unknown' when it has no metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def framework_of(model: Any) -> str | None:
    """Return the framework a model object or file belongs to, None for ONNX and artifacts."""
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if path.is_dir() and (path / SAVED_MODEL_FILE).is_file():
            return "tensorflow"
        return SUFFIXES.get(path.suffix.lower())
    if isinstance(model, onnx.ModelProto | bytes | bytearray):
        return None
    if isinstance(model, types.FunctionType | functools.partial):
        return "jax"  # a plain function: of the frameworks, only JAX traces those
    # A model's class may live in the user's own module: look at what it is built on.
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root in _MODULES and root in sys.modules:
            return _MODULES[root]
    return None


def convert(
    model: Any,
    *,
    example_inputs: Any = None,
    dynamic_axes: DynamicAxes | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    trust_pickle: bool = False,
) -> Converted | None:
    """Return model exported to ONNX, or None when model is ONNX already (or an artifact)."""
    framework = framework_of(model)
    if framework is None:
        if example_inputs is not None or dynamic_axes is not None:
            raise ModelError(
                "example_inputs and dynamic_axes apply to framework models (PyTorch ...), "
                "not to an ONNX model: give its shapes with shapes= / --shape"
            )
        return None
    given = {
        "example_inputs": example_inputs,
        "dynamic_axes": dynamic_axes,
        "input_names": input_names,
        "output_names": output_names,
        "trust_pickle": trust_pickle or None,
    }
    options = {k: v for k, v in given.items() if v is not None}
    frontend = importlib.import_module(f"infer.frontends.{_FRONTEND_MODULES[framework]}")
    unsupported = sorted(set(options) - frontend.OPTIONS)
    if unsupported:
        raise ModelError(f"{', '.join(unsupported)}: does not apply to {framework} models")
    converted: Converted = frontend.convert(model, **options)
    return converted
