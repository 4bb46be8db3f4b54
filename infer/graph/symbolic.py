"""Shape tensors computed at run time, rebuilt in the one form TVM's importer keeps symbolic.

Exporters compute the target of a Reshape or Expand from `Shape` through Gather, Slice,
Squeeze, Concat, arithmetic... (PyTorch's `view(b, s, h, d)` on a dynamic batch and sequence).
TVM's importer follows `Shape` as a symbolic ShapeExpr through a few of those ops and turns the
value into an opaque tensor at the first one it cannot follow; Reshape and Expand then refuse it.

ONNX Runtime's symbolic shape inference (sympy) works out every such target as dims of the
graph's inputs. Each computed target is rebuilt here as `Concat` of `Shape(x, start=k,
end=k+1)` slices of a tensor that has the dim and int64 constants (plus one -1 in a Reshape):
a form the importer keeps as a ShapeExpr end to end. The old shape arithmetic is left dead.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from infer.graph.support import default_opset

__all__ = ["SHAPE_CONSUMERS", "rebuild_shape_inputs"]

_log = logging.getLogger(__name__)

# op type -> index of the input holding a shape (ConstantOfShape's only input).
SHAPE_CONSUMERS = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0}
_DEFAULT_DOMAINS = ("", "ai.onnx")
SHAPE_START_END_OPSET = 15  # Shape's start/end attributes
SLICE_INPUTS_OPSET = 10  # Slice taking starts/ends as inputs
CUMSUM_OPSET = 11
MAX_SCALAR_ELEMENTS = 64  # initializers read for their values (Range's start and delta)

Dim = int | str


def rebuild_shape_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return model with run-time shape inputs of Reshape/Expand/ConstantOfShape rebuilt.

    A target is rebuilt when every dim of the consumer's inferred output is a number or a
    symbolic dim of a graph input (a Reshape may leave one dim to -1); otherwise, or when the
    symbolic inference fails, the node is left as it is. Returns the model itself when nothing
    needs rebuilding.
    """
    graph = model.graph
    constant = _constant_values(graph)
    todo = [
        i
        for i, node in enumerate(graph.node)
        if node.domain in _DEFAULT_DOMAINS
        and (
            (
                node.op_type in SHAPE_CONSUMERS
                and len(node.input) > SHAPE_CONSUMERS[node.op_type]
                and node.input[SHAPE_CONSUMERS[node.op_type]] not in constant
                # rebuilt by an earlier pass: again would add its nodes a second time
                and node.input[SHAPE_CONSUMERS[node.op_type]] != _rebuilt_name(node)
            )
            or (
                node.op_type == "Range"
                and node.input[1] not in constant
                and node.input[0] in constant
                and node.input[2] in constant
            )
        )
    ]
    opset = default_opset(model)
    if not todo or opset < SLICE_INPUTS_OPSET or not _has_dynamic_input(graph):
        return model  # with static inputs, whatever folding left is data-dependent
    dims = _symbolic_dims(model)
    if dims is None:
        return model

    # A symbolic dim of a graph input -> (input, axis). Only these are trusted: the dims the
    # inference makes up for data-dependent sizes can be wrong (seen on RotaryEmbedding).
    sources: dict[Dim, tuple[str, int]] = {}
    for value in graph.input:
        for axis, dim in enumerate(dims.get(value.name) or ()):
            if isinstance(dim, str):
                sources.setdefault(dim, (value.name, axis))
    if not sources:
        return model
    # A dim derived from them (a frame count computed from a sample count) -> the first value
    # computed with it: read from there, a target has the very expression TVM gave that value,
    # where the graph's own arithmetic gives another that TVM cannot prove equal.
    derived: dict[Dim, tuple[int, tuple[str, int]]] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            for axis, dim in enumerate(dims.get(name) or ()):
                if isinstance(dim, str) and dim not in sources:
                    derived.setdefault(dim, (index, (name, axis)))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    wanted = set(todo)
    for index, node in enumerate(out.graph.node):
        known = {**sources, **{d: where for d, (at, where) in derived.items() if at < index}}
        if index in wanted and node.op_type == "Range":
            nodes.extend(_range(node, opset, dims, known, constant))
            continue
        if index in wanted:
            rebuilt = _rebuild(node, opset, dims, known, _rebuilt_name(node))
            if rebuilt is not None:
                extra, shape = rebuilt
                nodes.extend(extra)
                node.input[SHAPE_CONSUMERS[node.op_type]] = shape
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _rebuilt_name(node: onnx.NodeProto) -> str:
    """Return the name of the shape value rebuilt for node (and the prefix of its nodes)."""
    return f"{node.output[0]}__shape"


def _has_dynamic_input(graph: onnx.GraphProto) -> bool:
    """Return whether a graph input has a dim of no fixed size (checked before the inference)."""
    weights = {t.name for t in graph.initializer}
    return any(
        not d.HasField("dim_value")
        for v in graph.input
        if v.name not in weights
        for d in v.type.tensor_type.shape.dim
    )


def _symbolic_dims(model: onnx.ModelProto) -> dict[str, list[Dim | None]] | None:
    """Return each value's dims from ONNX Runtime's symbolic inference (None: it failed)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as exc:  # the tool raises what sympy and its handlers raise
        _log.debug("symbolic shape inference failed: %s", exc)
        return None
    if inferred is None:
        return None
    result: dict[str, list[Dim | None]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        result[value.name] = [
            int(d.dim_value) if d.HasField("dim_value") else (d.dim_param if d.dim_param else None)
            for d in tensor_type.shape.dim
        ]
    return result


def _rebuild(
    node: onnx.NodeProto,
    opset: int,
    dims: dict[str, list[Dim | None]],
    sources: dict[Dim, tuple[str, int]],
    prefix: str,
) -> tuple[list[onnx.NodeProto], str] | None:
    """Return (new nodes, name of the rebuilt shape) for node's shape input, or None."""
    target = dims.get(node.output[0])
    if target is None or any(d is None for d in target):
        return None
    data = dims.get(node.input[0]) if node.op_type != "ConstantOfShape" else None
    parts: list[int | tuple[str, int]] = []
    free = 0
    for i, dim in enumerate(target):
        if isinstance(dim, int):
            if dim == 0 and node.op_type == "Reshape":
                return None  # 0 means "copy" unless allowzero: not worth the case
            parts.append(dim)
        elif dim in sources:
            # Even where broadcasting would keep the input's dim (a 1 would do): TVM's Expand
            # takes a constant target only for inputs of static shape.
            parts.append(sources[dim])
        elif node.op_type == "Expand" and data is not None and _aligned(data, target, i) == dim:
            parts.append(1)  # broadcasting keeps the input's dim
        elif node.op_type == "Reshape" and free == 0:
            parts.append(-1)
            free += 1
        else:
            return None
    new: list[onnx.NodeProto] = []
    pieces: list[str] = []
    pending: list[int] = []

    def flush() -> None:
        if pending:
            name = f"{prefix}_c{len(new)}"
            new.append(_constant(name, np.asarray(pending, dtype=np.int64)))
            pieces.append(name)
            pending.clear()

    for part in parts:
        if isinstance(part, int):
            pending.append(part)
            continue
        flush()
        name = f"{prefix}_s{len(new)}"
        new.extend(_dim_of(part, name, opset))
        pieces.append(name)
    flush()
    if len(pieces) == 1:
        return new, pieces[0]
    new.append(helper.make_node("Concat", pieces, [prefix], name=prefix, axis=0))
    return new, prefix


def _aligned(data: list[Dim | None], target: list[Dim | None], i: int) -> Dim | None:
    """Return data's dim that broadcasting lines up with target's dim i (right-aligned)."""
    j = i - (len(target) - len(data))
    return data[j] if j >= 0 else None


def _range(
    node: onnx.NodeProto,
    opset: int,
    dims: dict[str, list[Dim | None]],
    sources: dict[Dim, tuple[str, int]],
    constant: dict[str, np.ndarray],
) -> list[onnx.NodeProto]:
    """Return Range(start, n, delta) as start + delta * exclusive CumSum of n ones, or [node].

    TVM imports a Range with a run-time limit as a tensor of a fresh length that it cannot
    relate to the dim it came from (a Concat with the batch dim then loses its shape); filled
    from `Shape(x, k, k+1)`, the result keeps x's symbolic dim.
    """
    target = dims.get(node.output[0])
    start, delta = constant[node.input[0]], constant[node.input[2]]
    if (
        opset < CUMSUM_OPSET
        or target is None
        or len(target) != 1
        or target[0] not in sources
        or start.size != 1
        or delta.size != 1
    ):
        return [node]
    prefix = f"{node.output[0]}__range"
    length = sources[target[0]]
    ones, steps = f"{prefix}_ones", f"{prefix}_steps"
    dtype = start.dtype
    new = [
        *_dim_of(length, f"{prefix}_n", opset),
        helper.make_node(
            "ConstantOfShape",
            [f"{prefix}_n"],
            [ones],
            name=ones,
            value=numpy_helper.from_array(np.ones(1, dtype=dtype)),
        ),
        _constant(f"{prefix}_axis", np.asarray(0, dtype=np.int64)),
        helper.make_node("CumSum", [ones, f"{prefix}_axis"], [steps], name=steps, exclusive=1),
    ]
    value = steps
    if delta.reshape(()).item() != 1:
        new.append(_constant(f"{prefix}_delta", delta.reshape(())))
        new.append(helper.make_node("Mul", [value, f"{prefix}_delta"], [f"{prefix}_scaled"]))
        value = f"{prefix}_scaled"
    new.append(_constant(f"{prefix}_start", start.reshape(())))
    new.append(helper.make_node("Add", [value, f"{prefix}_start"], [node.output[0]], name=prefix))
    return new


def _dim_of(source: tuple[str, int], name: str, opset: int) -> list[onnx.NodeProto]:
    """Return nodes computing [size of tensor's dim axis] as a 1-D int64 tensor called name."""
    tensor, axis = source
    if opset >= SHAPE_START_END_OPSET:
        return [helper.make_node("Shape", [tensor], [name], name=name, start=axis, end=axis + 1)]
    start, end = f"{name}_start", f"{name}_end"
    return [
        helper.make_node("Shape", [tensor], [f"{name}_all"], name=f"{name}_all"),
        _constant(start, np.asarray([axis], dtype=np.int64)),
        _constant(end, np.asarray([axis + 1], dtype=np.int64)),
        helper.make_node("Slice", [f"{name}_all", start, end], [name], name=name),
    ]


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value))


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Return the values of graph's initializers and Constant nodes holding a tensor."""
    values = {
        t.name: numpy_helper.to_array(t)
        for t in graph.initializer
        if int(np.prod(t.dims)) <= MAX_SCALAR_ELEMENTS
    }
    for node in graph.node:
        tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.output and tensor is not None:
            values[node.output[0]] = numpy_helper.to_array(tensor)
    return values
