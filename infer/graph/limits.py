"""Compile-time resource caps: a model is untrusted input, so its size is bounded before work.

Three caps, each with a default and an environment override (infer.config.Limits):
- nodes: every node of the model, subgraphs included, before and after legalization (which
  unrolls loops);
- constant bytes: the largest initializer or tensor attribute, from its declared dims, checked
  before any external data is read;
- tensor bytes: the largest value whose shape is known at compile time (ONNX shape inference),
  checked before constants are folded or anything runs, and the largest feed `Session.run`
  would have to copy.
"""

from __future__ import annotations

import math

import onnx

from infer.config import Limits, limit_variable
from infer.errors import ModelError
from infer.graph.support import iter_nodes
from infer.signature import format_bytes

__all__ = ["check_constant", "check_node_count", "check_tensor_sizes", "tensor_nbytes"]

# Bits per element of the ONNX types numpy has no fixed-size dtype for.
_SUB_BYTE_BITS = {
    onnx.TensorProto.INT4: 4,
    onnx.TensorProto.UINT4: 4,
    onnx.TensorProto.FLOAT4E2M1: 4,
    **{
        int(getattr(onnx.TensorProto, name)): 2
        for name in ("INT2", "UINT2")
        if hasattr(onnx.TensorProto, name)
    },
}


def tensor_nbytes(elem_type: int, dims: list[int] | tuple[int, ...]) -> int | None:
    """Return the bytes of a tensor of this ONNX type and these dims; None for strings/unknown types."""
    count = math.prod(dims)
    if elem_type in _SUB_BYTE_BITS:
        return (count * _SUB_BYTE_BITS[elem_type] + 7) // 8
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    return None if elem_type == onnx.TensorProto.STRING else count * itemsize


def _override(name: str) -> str:
    return f"raise it with {limit_variable(name)}"


def check_node_count(model: onnx.ModelProto, limits: Limits, source: str, when: str = "") -> None:
    """ModelError when the model has more nodes (subgraphs included) than limits allow."""
    count = 0
    for _ in iter_nodes(model.graph):
        count += 1
        if count > limits.max_nodes:
            raise ModelError(
                f"{source}: more than {limits.max_nodes:,} nodes{when}, the limit "
                f"({_override('nodes')})"
            )


def check_constant(tensor: onnx.TensorProto, limits: Limits, source: str) -> None:
    """ModelError for a constant whose declared dims are negative or whose size is past the limit."""
    name = tensor.name or "<unnamed>"
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"{source}: tensor {name!r} has a negative dim {list(tensor.dims)}")
    nbytes = tensor_nbytes(tensor.data_type, list(tensor.dims))
    if nbytes is not None and nbytes > limits.max_constant_bytes:
        raise ModelError(
            f"{source}: tensor {name!r} of dims {list(tensor.dims)} is {format_bytes(nbytes)}, "
            f"over the limit of {format_bytes(limits.max_constant_bytes)} per constant "
            f"({_override('constant_bytes')})"
        )


def check_tensor_sizes(
    model: onnx.ModelProto, types: dict[str, onnx.TypeProto], limits: Limits, source: str
) -> None:
    """ModelError naming the first value (and the node making it) whose known size is past the limit."""
    producers = {out: node for node in iter_nodes(model.graph) for out in node.output}
    for name, type_proto in types.items():
        if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
            continue
        shape = type_proto.tensor_type.shape.dim
        # A symbolic dim counts as 1: the least the tensor can be once the model runs.
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else 1 for d in shape]
        symbolic = any(not d.HasField("dim_value") or d.dim_value < 0 for d in shape)
        nbytes = tensor_nbytes(type_proto.tensor_type.elem_type, dims)
        if nbytes is None or nbytes <= limits.max_tensor_bytes:
            continue
        node = producers.get(name)
        made = f" (output of {node.op_type} node {node.name!r})" if node is not None else ""
        shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in shape]
        least = "at least " if symbolic else ""
        raise ModelError(
            f"{source}: tensor {name!r}{made} of shape {shown} would be {least}"
            f"{format_bytes(nbytes)}, over the limit of {format_bytes(limits.max_tensor_bytes)} "
            f"per tensor ({_override('tensor_bytes')})"
        )
