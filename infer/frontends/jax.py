"""JAX: jit-able functions (parameters closed over) and Flax modules, exported by jax2onnx.

A function is traced on example_inputs; dims named in dynamic_axes stay symbolic in the ONNX
model (jax2onnx's shape specs with names).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infer.errors import ModelError
from infer.frontends import (
    Converted,
    DynamicAxes,
    error_line,
    named_axes,
    package_version,
    quiet,
    require,
)

__all__ = ["OPSET", "OPTIONS", "convert"]

# The options of infer.compile this frontend takes.
OPTIONS = frozenset({"example_inputs", "dynamic_axes", "input_names", "output_names"})

OPSET = 23  # jax2onnx's own default, what its plugins are tested at; TVM imports it


def convert(
    model: Any,
    *,
    example_inputs: Any = None,
    dynamic_axes: DynamicAxes | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Converted:
    """Return a JAX function traced on example_inputs, exported to ONNX by jax2onnx."""
    jax = require("jax")
    name = getattr(model, "__name__", type(model).__name__)
    if example_inputs is None:
        raise ModelError(
            f"JAX {name}: give example_inputs=(array, ...): the function is traced on them"
        )
    if isinstance(example_inputs, Mapping):
        raise ModelError(f"JAX {name}: example_inputs are positional arrays, not a dict")
    if not isinstance(example_inputs, list | tuple):
        example_inputs = (example_inputs,)
    arrays = [np.asarray(a) for a in example_inputs]
    names = list(input_names) if input_names else _input_names(model, len(arrays))
    named = named_axes(dynamic_axes, names, f"JAX {name}")
    dim_names = sorted({d for spec in named.values() for d in spec.values()})
    # One scope for every symbol, so that a dim named twice is the same dim.
    symbols = (
        dict(zip(dim_names, jax.export.symbolic_shape(", ".join(dim_names)), strict=True))
        if dim_names
        else {}
    )
    specs = [
        jax.ShapeDtypeStruct(
            tuple(
                symbols[named[n][i]] if i in named.get(n, {}) else d for i, d in enumerate(a.shape)
            ),
            a.dtype,
        )
        for n, a in zip(names, arrays, strict=True)
    ]
    import jax2onnx

    try:
        with quiet("jax2onnx"):
            proto = jax2onnx.to_onnx(
                model,
                specs,
                model_name=name,
                opset=OPSET,
                input_names=names,
                output_names=list(output_names) if output_names else None,
            )
    except Exception as exc:  # jax2onnx raises NotImplementedError, ValueError, ...
        raise ModelError(f"JAX {name}: jax2onnx cannot export it: {error_line(exc)}") from None
    provenance = {
        "framework": "jax",
        "version": jax.__version__,
        "exporter": f"jax2onnx {package_version('jax2onnx')}",
        "opset": OPSET,
    }
    return Converted(proto, name, provenance, _reference(jax, model, names))


def _input_names(fn: Any, count: int) -> list[str]:
    try:
        parameters = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    if len(parameters) >= count:
        return parameters[:count]
    return [f"input_{i}" for i in range(count)]


def _reference(jax: Any, fn: Any, names: list[str]) -> Any:
    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = fn(*(feeds[n] for n in names))
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(result)]

    return run
