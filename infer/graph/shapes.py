"""Input/output signatures of an ONNX graph, and user shape overrides applied to it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from infer.errors import ModelError
from infer.signature import Dim, TensorSpec

__all__ = [
    "ShapeOverrides",
    "anonymous_dim",
    "apply_shape_overrides",
    "dims_of",
    "graph_inputs",
    "graph_outputs",
    "inferred_types",
    "override_dims",
    "parse_shape_option",
]

ShapeOverrides = Mapping[str, Sequence[Dim]]

# A named dim in an override stays symbolic under that name (x=1,3,48,width).
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def override_dims(dims: Sequence[Any], what: str) -> tuple[Dim, ...]:
    """Return an override's dims as ints and names; ModelError for anything else."""
    out: list[Dim] = []
    for d in dims:
        if isinstance(d, str) and _DIM_NAME.fullmatch(d):
            out.append(d)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            out.append(int(d))
        else:
            raise ModelError(f"{what}: a dim is an integer or a name, got {d!r}")
    return tuple(out)


def _dtype_name(elem_type: int, what: str) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, ValueError, TypeError):
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise ModelError(f"{what}: element type {name} has no numpy dtype") from None


def _container(type_proto: onnx.TypeProto, what: str) -> tuple[str, onnx.TypeProto]:
    """Return (the containers around a value's tensors, outside in, the tensors' type)."""
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        inner, tensor = _container(type_proto.sequence_type.elem_type, what)
        return ("sequence" + (f"({inner})" if inner else "")), tensor
    if kind == "optional_type":
        inner, tensor = _container(type_proto.optional_type.elem_type, what)
        return ("optional" + (f"({inner})" if inner else "")), tensor
    if kind == "map_type":
        key = _dtype_name(type_proto.map_type.key_type, what)
        inner, tensor = _container(type_proto.map_type.value_type, what)
        return (f"map({key}" + (f", {inner}" if inner else "") + ")"), tensor
    if kind != "tensor_type":
        raise ModelError(f"{what}: type {kind or 'missing'} is not one infer reads")
    return "", type_proto


def _container_spec(value: onnx.ValueInfoProto, what: str) -> TensorSpec:
    container, tensor = _container(value.type, f"{what} {value.name!r}")
    elem = tensor.tensor_type.elem_type
    dtype = _dtype_name(elem, f"{what} {value.name!r}") if elem else ""
    dims: list[Dim] = []
    if tensor.tensor_type.HasField("shape"):
        for i, dim in enumerate(tensor.tensor_type.shape.dim):
            known = dim.HasField("dim_value") and dim.dim_value >= 0
            dims.append(int(dim.dim_value) if known else dim.dim_param or f"{value.name}_dim{i}")
    return TensorSpec(value.name, dtype, tuple(dims), container)


def _spec(value: onnx.ValueInfoProto, what: str) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        return _container_spec(value, what)
    tensor_type = value.type.tensor_type
    dtype = _dtype_name(tensor_type.elem_type, f"{what} {value.name!r}")
    if not tensor_type.HasField("shape"):
        raise ModelError(
            f"{what} {value.name!r} has unknown rank; give its shape with --shape {value.name}=d0,d1,..."
        )
    dims: list[Dim] = []
    for i, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif dim.dim_param and dim.dim_param.strip() not in _ANONYMOUS_DIM_NAMES:
            dims.append(dim.dim_param)
        else:
            dims.append(f"{value.name}_dim{i}")
    return TensorSpec(value.name, dtype, tuple(dims))


def graph_inputs(graph: onnx.GraphProto) -> list[TensorSpec]:
    """Return the graph's real inputs (those not backed by an initializer), in order."""
    initialized = {t.name for t in graph.initializer} | {
        s.values.name for s in graph.sparse_initializer
    }
    return [_spec(v, "input") for v in graph.input if v.name not in initialized]


def graph_outputs(graph: onnx.GraphProto) -> list[TensorSpec]:
    """Return the graph's outputs, in order."""
    return [_spec(v, "output") for v in graph.output]


def parse_shape_option(text: str) -> tuple[str, tuple[Dim, ...]]:
    """Return (name, dims) parsed from 'name=d0,d1,...' as given to --shape (a dim given as a
    name stays symbolic)."""
    name, sep, dims_text = text.rpartition("=")
    if not sep or not name:
        raise ModelError(f"--shape {text!r}: expected NAME=d0,d1,... (e.g. x=1,3,224,224)")
    tokens = [d.strip() for d in dims_text.split(",")] if dims_text.strip() else []
    try:
        dims = [int(d) if d.lstrip("-").isdigit() else d for d in tokens]
        return name, override_dims(dims, f"--shape {text!r}")
    except ModelError:
        raise ModelError(
            f"--shape {text!r}: dims must be integers or names, got {dims_text!r}"
        ) from None


def apply_shape_overrides(model: onnx.ModelProto, overrides: ShapeOverrides) -> onnx.ModelProto:
    """Return a copy of model whose inputs have the given fixed shapes, checked against the graph.

    TVM's importer silently ignores unknown names, so every name and rank is checked here.
    """
    graph = model.graph
    by_name = {}
    initialized = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name not in initialized:
            by_name[value.name] = value
    for name, dims in overrides.items():
        if name not in by_name:
            valid = ", ".join(repr(n) for n in by_name) or "none"
            raise ModelError(
                f"shape override for unknown input {name!r}; the model's inputs are: {valid}"
            )
        dims = override_dims(dims, f"shape override for input {name!r}")
        bad = [d for d in dims if isinstance(d, int) and d < 1]
        if bad:
            raise ModelError(
                f"shape override for input {name!r}: dims must be >= 1, got {list(dims)}"
            )
        tensor_type = by_name[name].type.tensor_type
        if tensor_type.HasField("shape"):
            current = tensor_type.shape.dim
            if len(current) != len(dims):
                now = _spec(by_name[name], "input").shape
                raise ModelError(
                    f"shape override for input {name!r}: expected rank {len(current)} "
                    f"{list(now)}, got rank {len(dims)} {list(dims)}"
                )
            for i, (dim, new) in enumerate(zip(current, dims, strict=True)):
                if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != new:
                    raise ModelError(
                        f"shape override for input {name!r}: dim {i} is fixed at {dim.dim_value} "
                        f"in the model, got {new!r}"
                    )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name in overrides:
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for d in overrides[value.name]:
                if isinstance(d, str):
                    shape.dim.add().dim_param = d
                else:
                    shape.dim.add().dim_value = int(d)
        elif value.name in by_name and value.type.tensor_type.HasField("shape"):
            for i, dim in enumerate(value.type.tensor_type.shape.dim):
                if anonymous_dim(dim):
                    dim.dim_param = f"{value.name}_dim{i}"
    return out


# Names exporters give a dim of unknown size; as dim_param they would say "all these are equal".
_ANONYMOUS_DIM_NAMES = frozenset({"", "?", "-1", "None", "unk", "unknown"})


def anonymous_dim(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """True for a dim of unknown size that says nothing about others (no name, or a generic one)."""
    if dim.HasField("dim_value"):
        return dim.dim_value < 0
    return dim.dim_param.strip() in _ANONYMOUS_DIM_NAMES


def element_types(type_protos: dict[str, onnx.TypeProto]) -> dict[str, int]:
    """Return the element type of each tensor among type_protos (sequences and maps left out)."""
    return {k: v.tensor_type.elem_type for k, v in type_protos.items() if v.HasField("tensor_type")}


def known_dims(type_protos: dict[str, onnx.TypeProto]) -> dict[str, tuple[int | None, ...]]:
    """Return the dims (None where unknown) of each value of known rank among type_protos."""
    return {k: d for k, d in ((k, dims_of(v)) for k, v in type_protos.items()) if d is not None}


def inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Return the type ONNX shape inference gives every value, subgraphs included.

    Value names are unique across a model's graphs (ONNX's SSA rule). Inference with data
    propagation, so shapes computed from Shape are known; a model it rejects gives what the
    model declares.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is a help here, never a requirement
        inferred = model
    types: dict[str, onnx.TypeProto] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            types[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.WhichOneof("value") is not None:
                types[value.name] = value.type
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    collect(sub)

    collect(inferred.graph)
    return types


def dims_of(type_proto: onnx.TypeProto | None) -> tuple[int | None, ...] | None:
    """Return a tensor type's dims (None for each unknown one), None when its rank is unknown."""
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
