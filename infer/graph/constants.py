"""Constant propagation before TVM's importer: what is computable at compile time becomes a Constant.

TVM's importer wants axes, shapes, pads, k, sizes, scales and splits as constants, and cannot
take a `Shape` result into most ops. Exports compute those from `Shape` of tensors whose shape
is static, or from small integer initializers: folding them here lets the importer take the
node. Folded values are evaluated by onnx's reference implementation, the spec written in numpy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper

from infer.graph.shapes import dims_of, inferred_types

__all__ = ["fold_constants", "normalize_constant"]

# A folded output may be this large, or as large as its inputs together (no growth).
MAX_FOLDED_ELEMENTS = 1 << 16
# Non-floating initializers up to this size become Constant nodes (TVM treats them as constants).
MAX_CONSTANT_INITIALIZER_ELEMENTS = 1 << 10
MAX_ROUNDS = 4
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Ops whose value is not a function of their inputs.
_NOT_FOLDABLE = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
        "If",
        "Loop",
        "Scan",
        "SequenceMap",
    }
)
_FLOATING = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)
_VALUE_ATTRIBUTES = {
    "value_float": onnx.TensorProto.FLOAT,
    "value_floats": onnx.TensorProto.FLOAT,
    "value_int": onnx.TensorProto.INT64,
    "value_ints": onnx.TensorProto.INT64,
}


def normalize_constant(node: onnx.NodeProto) -> onnx.NodeProto:
    """Return Constant with value_float(s)/value_int(s) as the `value` tensor; other nodes as they are."""
    if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS:
        return node
    for attr in node.attribute:
        if attr.name in _VALUE_ATTRIBUTES:
            value = helper.get_attribute_value(attr)
            dims = [len(value)] if isinstance(value, list) else []
            tensor = helper.make_tensor(
                node.output[0], _VALUE_ATTRIBUTES[attr.name], dims, np.ravel(value).tolist()
            )
            return helper.make_node("Constant", [], list(node.output), name=node.name, value=tensor)
    return node


def _constant_node(name: str, array: np.ndarray, node_name: str) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=node_name, value=numpy_helper.from_array(array, name)
    )


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Size":
        return np.asarray(int(np.prod(shape)), dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return np.asarray(shape[slice(start, end)], dtype=np.int64)


def _evaluate(
    node: onnx.NodeProto, inputs: list[np.ndarray | None], opsets: list[onnx.OperatorSetIdProto]
) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if value is not None else "" for i, value in enumerate(inputs)]
    single = helper.make_node(
        node.op_type, names, [f"out{i}" for i in range(len(node.output))], domain=node.domain
    )
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single],
        "fold",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for n, v in zip(names, inputs, strict=True)
            if v is not None
        ],
        [helper.make_empty_tensor_value_info(o) for o in single.output],
    )
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets))
            feeds = {n: v for n, v in zip(names, inputs, strict=True) if v is not None}
            outputs = evaluator.run(None, feeds)
    except Exception:  # not foldable here: TVM (or ONNX Runtime) computes it at run time
        return None
    if not all(isinstance(o, np.ndarray) for o in outputs):
        return None
    return [np.asarray(o) for o in outputs]


def _output_size(
    node: onnx.NodeProto, inputs: list[np.ndarray | None], shapes: dict[str, tuple[int, ...]]
) -> int | None:
    """Return the element count node's outputs would have, when known before evaluating it.

    From inferred shapes, else worked out for the ops whose output can be far larger than their
    inputs (a 2-element shape input can ask for 2^40 elements); None when unknown.
    """
    if all(name in shapes for name in node.output if name):
        return sum(math.prod(shapes[name]) for name in node.output if name)
    values = [np.asarray(v) for v in inputs if v is not None]
    try:
        if node.op_type == "ConstantOfShape" and values:
            return math.prod(int(d) for d in values[0].ravel())
        if node.op_type == "Expand" and len(values) == 2:
            data, target = values[0].shape, [int(d) for d in values[1].ravel()]
            rank = max(len(data), len(target))
            padded = [1] * (rank - len(data)) + list(data)
            wanted = [1] * (rank - len(target)) + target
            return math.prod(max(a, b) for a, b in zip(padded, wanted, strict=True))
        if node.op_type == "Tile" and len(values) == 2:
            return values[0].size * math.prod(int(r) for r in values[1].ravel())
        if node.op_type == "Range" and len(values) == 3:
            start, limit, delta = (float(v.ravel()[0]) for v in values)
            return max(math.ceil((limit - start) / delta), 0) if delta else None
    except (ValueError, OverflowError, IndexError):
        return None
    return None


def _fold_once(model: onnx.ModelProto) -> int:
    """Fold what is computable in model (rewritten in place); return how many nodes folded."""
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for name, type_proto in inferred_types(model).items():
        dims = dims_of(type_proto)
        if dims is not None and all(d is not None for d in dims):
            shapes[name] = tuple(int(d) for d in dims if d is not None)
    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    folded = 0
    for original in graph.node:
        node = normalize_constant(original)
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type != onnx.TensorProto.STRING:
                known[node.output[0]] = numpy_helper.to_array(value)
            nodes.append(node)
            continue
        if node.op_type == "If" and node.domain in _DEFAULT_DOMAINS and node.input[0] in known:
            branch = "then_branch" if bool(np.ravel(known[node.input[0]])[0]) else "else_branch"
            body = next(a.g for a in node.attribute if a.name == branch)
            inlined, weights = _inline_branch(
                node, body, f"{node.name or node.output[0]}__{branch}"
            )
            nodes.extend(inlined)
            graph.initializer.extend(weights)
            folded += 1
            continue
        values: list[np.ndarray] | None = None
        foldable = (
            node.domain in _DEFAULT_DOMAINS
            and node.op_type not in _NOT_FOLDABLE
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        )  # fmt: skip
        if foldable and node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            values = [_shape_value(node, shapes[node.input[0]])]
        elif foldable and all(not name or name in known for name in node.input):
            inputs = [known[name] if name else None for name in node.input]
            budget = max(MAX_FOLDED_ELEMENTS, sum(v.size for v in inputs if v is not None))
            size = _output_size(node, inputs, shapes)
            if size is None or size <= budget:  # never evaluate what would be too large
                values = _evaluate(node, inputs, list(model.opset_import))
            if values is not None and sum(v.size for v in values) > budget:
                values = None
        if values is None or len(values) != len(node.output):
            nodes.append(node)
            continue
        folded += 1
        for index, (name, value) in enumerate(zip(node.output, values, strict=True)):
            if not name:
                continue
            known[name] = value
            nodes.append(_constant_node(name, value, f"{node.name or name}_folded{index}"))
    del graph.node[:]
    graph.node.extend(nodes)
    return folded


def _inline_branch(
    node: onnx.NodeProto, body: onnx.GraphProto, prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Return the nodes and weights of an If's taken branch, its own names made unique."""
    from infer.graph.names import rename_values

    defined = {t.name for t in body.initializer}
    for inner in body.node:
        defined.update(o for o in inner.output if o)
    mapping = {name: f"{prefix}/{name}" for name in defined}
    renamed = onnx.GraphProto()
    renamed.CopyFrom(body)
    rename_values(renamed, mapping)
    nodes = list(renamed.node)
    for declared, result in zip(node.output, renamed.output, strict=False):
        if declared:
            nodes.append(helper.make_node("Identity", [result.name], [declared]))
    return nodes, list(renamed.initializer)


def _small_initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where small non-floating initializers are Constant nodes at the front."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inputs = {v.name for v in graph.input}
    moved = [
        t
        for t in graph.initializer
        if t.data_type not in _FLOATING
        and t.data_type != onnx.TensorProto.STRING
        and t.name not in inputs
        and int(np.prod(t.dims)) <= MAX_CONSTANT_INITIALIZER_ELEMENTS
    ]
    if not moved:
        return out
    names = {t.name for t in moved}
    kept = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    constants = [
        helper.make_node("Constant", [], [t.name], name=f"{t.name}_constant", value=t)
        for t in moved
    ]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _empty_inputs_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where nodes read an empty constant for each input of a static 0-size shape.

    Such an input can only ever hold the empty tensor (exports pass "no axes" that way); the
    input stays in the signature, its readers get the constant.
    """
    empty: dict[str, str] = {}
    constants: list[onnx.NodeProto] = []
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim if value.type.HasField("tensor_type") else []
        if dims and all(d.HasField("dim_value") for d in dims) and 0 in [d.dim_value for d in dims]:
            try:
                dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            except (KeyError, ValueError):
                continue
            name = f"{value.name}__empty"
            array = np.zeros([d.dim_value for d in dims], dtype=dtype)
            constants.append(_constant_node(name, array, name))
            empty[value.name] = name
    if not empty:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in empty:
                node.input[i] = empty[name]
    nodes = constants + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where every node computable at compile time is a Constant, dead ones dropped.

    Shape and Size of statically shaped tensors fold to their value; a node whose inputs are
    all constants folds when its result is no larger than its inputs (or than a small bound).
    """
    out = _small_initializers_to_constants(_empty_inputs_to_constants(model))  # a copy
    for _ in range(MAX_ROUNDS):
        if not _fold_once(out):
            break
    return _constant_outputs_as_weights(_drop_dead(out))


def _constant_outputs_as_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the model where a graph output made by a Constant node is Identity of a weight.

    A constant compiled into the library would be returned as the library's own buffer, which
    a caller could write into; a weight output is detected at run time and copied.
    """
    outputs = {o.name for o in model.graph.output}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.output[0] in outputs and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = f"{node.output[0]}__value"
            model.graph.initializer.append(tensor)
            nodes.append(helper.make_node("Identity", [tensor.name], [node.output[0]]))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _drop_dead(model: onnx.ModelProto) -> onnx.ModelProto:
    from infer.graph.partition import subgraph_refs

    graph = model.graph
    live = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output if o):
            kept.append(node)
            live.update(i for i in node.input if i)
            live.update(subgraph_refs(node))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return model
