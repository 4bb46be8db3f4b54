"""Index inputs: which model inputs are indices into a dim, checked by Session.run before a run.

ONNX says an out-of-range index to Gather, GatherElements, GatherND, ScatterElements or ScatterND
is an error, and ONNX Runtime raises one. Compiled code clips indices instead (so that nothing
reads or writes outside a buffer, infer.optimize.bounds), which would turn a bad token id into
a plausible answer. Where the indices are a model input as given, the artifact records the dims
they index, and `Session.run` refuses an out-of-range feed with InputError naming the node.
"""

from __future__ import annotations

from typing import Any

import onnx

from infer.graph.shapes import dims_of

__all__ = ["index_checks"]

# Op type -> whether it indexes along `axis` (True) or along the data's leading dims (False).
_INDEXING_OPS = {
    "Gather": True,
    "GatherElements": True,
    "ScatterElements": True,
    "GatherND": False,
    "ScatterND": False,
}


def _dim(type_proto: onnx.TypeProto | None, index: int) -> int | str | None:
    """Return dim index of a tensor type: its size, its symbol, or None when unknown."""
    if type_proto is None or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = type_proto.tensor_type.shape.dim
    if not -len(dims) <= index < len(dims):
        return None
    dim = dims[index]
    if dim.HasField("dim_value") and dim.dim_value >= 0:
        return int(dim.dim_value)
    return dim.dim_param or None


def index_checks(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> list[dict[str, Any]]:
    """Return, per indexing node whose indices are a model input, the dims those indices index.

    types are the model's inferred value types (infer.graph.shapes.inferred_types).

    Each entry: input, op, node, and extents (one per index column: a size, or the symbol of a
    model input's dim). Nodes whose indexed dims are unknown at compile time are left out.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name for v in graph.input if v.name not in initializers}
    symbols = {
        d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim if d.dim_param
    }
    checks: list[dict[str, Any]] = []
    for node in graph.node:
        if node.op_type not in _INDEXING_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 2 or node.input[1] not in inputs:
            continue
        data = types.get(node.input[0])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if _INDEXING_OPS[node.op_type]:
            extents = [_dim(data, int(attrs.get("axis", 0)))]
        else:
            depth = dims_of(types.get(node.input[1]))
            batch = int(attrs.get("batch_dims", 0))
            if not depth or depth[-1] is None:
                continue
            extents = [_dim(data, batch + j) for j in range(int(depth[-1]))]
        if any(e is None or (isinstance(e, str) and e not in symbols) for e in extents):
            continue
        checks.append(
            {
                "input": node.input[1],
                "op": node.op_type,
                "node": node.name or node.output[0],
                "extents": extents,
            }
        )
    return checks
