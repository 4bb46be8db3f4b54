"""Frontends: a model in its own framework's form, exported to an `onnx.ModelProto`.

Each framework has one module here, imported only when a model of that framework is given
(frameworks are optional extras). A frontend returns a `Converted`: the ONNX model, where it
came from (recorded in the manifest) and the framework's own forward function, which the
parity check runs beside ONNX Runtime.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from infer.errors import ModelError

__all__ = [
    "Converted",
    "DynamicAxes",
    "convert",
    "framework_of",
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
    provenance: dict[str, Any]  # framework, version, exporter, opset, notes
    # The framework's own forward on numpy feeds by input name: outputs in ONNX's order.
    reference: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | None = None
    notes: list[str] = field(default_factory=list)


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
