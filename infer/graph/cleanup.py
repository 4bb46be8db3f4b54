"""ONNX-level clean-ups before TVM's importer: what it mishandles, and what costs a pass at run time."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from infer.graph.support import iter_nodes

__all__ = [
    "clean",
    "constant_initializers",
    "constants_to_initializers",
    "conv_end_slice_to_padding",
    "dropout_to_identity",
    "fold_conv_affine",
    "gelu_from_erf",
    "join_gemm_pairs",
    "split_to_slices",
    "sum_to_add",
]

# IR version 4 is the first where an initializer need not be listed as a graph input.
IR_VERSION_INITIALIZERS_NOT_INPUTS = 4


def constant_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where initializers are constants: not graph inputs, and dropped when unused.

    Models of IR version 3 list every initializer as an input too; TVM's importer then binds
    those twice. Like ONNX Runtime when no feed overrides them, infer treats them as constants.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    used = {name for node in iter_nodes(graph) for name in node.input} | {
        o.name for o in graph.output
    }
    initializers = [t for t in graph.initializer if t.name in used]
    names = {t.name for t in initializers} | {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.extend(inputs)
    out.ir_version = max(out.ir_version, IR_VERSION_INITIALIZERS_NOT_INPUTS)
    return out


def sum_to_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where each variadic Sum is a chain of Adds.

    TVM imports Sum as broadcast_to + stack (a 5-d copy for 4-d inputs) + sum, which costs a copy
    of every input and blocks layout conversion; Add broadcasts the same way (numpy rules).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(out.graph.node):
        if node.op_type != "Sum" or node.domain not in ("", "ai.onnx") or not node.input:
            nodes.append(node)
            continue
        inputs = list(node.input)
        if len(inputs) == 1:
            nodes.append(
                onnx.helper.make_node("Identity", inputs, list(node.output), name=node.name)
            )
            continue
        acc = inputs[0]
        for step, operand in enumerate(inputs[1:], start=1):
            last = step == len(inputs) - 1
            target = node.output[0] if last else f"{node.output[0]}__sum{index}_{step}"
            nodes.append(
                onnx.helper.make_node(
                    "Add", [acc, operand], [target], name=f"{node.name}__add{step}"
                )
            )
            acc = target
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


# Constant nodes at least this large hold weights; smaller ones (shapes, axes, scales) stay
# constants, which TVM's importer needs to see as such.
MIN_WEIGHT_ELEMENTS = 16
_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16
)  # fmt: skip


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where large floating-point Constant nodes of the main graph are initializers.

    Exports that store weights as Constant nodes (PaddlePaddle's) would otherwise compile them
    into the library as embedded constants; as initializers they become the artifact's weights.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        value = _constant_value(node)
        if value is not None:
            count = 1
            for d in value.dims:
                count *= d
            floating = value.data_type in _FLOAT_TYPES
            if floating and count >= MIN_WEIGHT_ELEMENTS:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def dropout_to_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where inference-mode Dropouts whose mask nobody reads are Identity.

    At inference Dropout passes its input through; TVM imports it as a (data, mask) tuple,
    which blocks layout conversion. One with a training_mode input, or a mask in use, stays.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = {name for node in iter_nodes(out.graph) for name in node.input} | {
        o.name for o in out.graph.output
    }
    for i, node in enumerate(out.graph.node):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx") or len(node.input) > 2:
            continue
        if len(node.output) > 1 and node.output[1] and node.output[1] in used:
            continue
        out.graph.node[i].CopyFrom(
            onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        )
    return out


def fold_conv_affine(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where the per-channel affine ops after a Conv are folded into its weights.

    conv(x, W) * s + t = conv(x, W * s) + (b * s + t) when s and t vary only along the output
    channels. Such a chain is any run of inference BatchNormalization (s = scale / sqrt(var +
    eps), t = beta - mean * s) and Mul/Add by constants (PaddlePaddle's re-parameterised MobileOne
    blocks export a scale and shift after every convolution). Only a Conv whose output nothing
    else reads, with constant weights (and bias), is folded, and each op only while its output is
    read once; every op folded is one pass over the activations saved.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values = _constant_tensors(graph)
    readers = _reader_counts(graph)
    consumers = _consumers(graph)
    removed: set[int] = set()
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if conv.input[1] not in values or (has_bias and conv.input[2] not in values):
            continue
        weight = numpy_helper.to_array(values[conv.input[1]])
        if weight.dtype.kind != "f":
            continue
        channels, rank = weight.shape[0], weight.ndim
        scale = np.ones(channels, np.float64)
        shift = np.zeros(channels, np.float64)
        if has_bias:
            shift = numpy_helper.to_array(values[conv.input[2]]).astype(np.float64)
        output = conv.output[0]
        while readers.get(output, 0) == 1 and (user := consumers.get(output)) is not None:
            affine = _affine(user, output, values, channels, rank)
            if affine is None:
                break
            scale, shift = scale * affine[0], shift * affine[0] + affine[1]
            removed.add(id(user))
            output = user.output[0]
        if output == conv.output[0]:
            continue
        new_w = numpy_helper.from_array(
            (weight * scale.reshape(-1, *[1] * (rank - 1))).astype(weight.dtype),
            f"{output}__folded_w",
        )
        new_b = numpy_helper.from_array(shift.astype(weight.dtype), f"{output}__folded_b")
        graph.initializer.extend([new_w, new_b])
        del conv.input[1:]
        conv.input.extend([new_w.name, new_b.name])
        conv.output[0] = output
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return out


def conv_end_slice_to_padding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where a Slice that drops the last k outputs of a stride-1 Conv along a
    spatial axis is folded into the Conv's end padding (that pad minus k): the same values.

    wav2vec2's and HuBERT's positional convolution pads kernel // 2 on both sides, then drops
    the last frame. TVM's importer cannot prove that slice as long as the sequence when the
    length is symbolic (it clamps the slice's end with min/max), the residual Add after it
    lost its shape, and the whole model went to ONNX Runtime.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values = _constant_tensors(graph)
    readers = _reader_counts(graph)
    consumers = _consumers(graph)
    removed: set[str] = set()
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
            continue
        slice_ = consumers.get(conv.output[0])
        if readers.get(conv.output[0]) != 1 or slice_ is None or slice_.op_type != "Slice":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        kernel = attrs.get("kernel_shape")
        if kernel is None and conv.input[1] in values:
            kernel = list(values[conv.input[1]].dims[2:])
        if not kernel or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        spatial = len(kernel)
        parts = [*slice_.input[1:], "", ""][:4]  # starts, ends, axes, steps
        if any(p and p not in values for p in parts) or not parts[2]:
            continue
        starts, ends, axes, steps = (
            numpy_helper.to_array(values[p]).reshape(-1).tolist() if p else None for p in parts
        )
        assert starts is not None and ends is not None and axes is not None
        if len(axes) != 1 or starts != [0] or ends[0] >= 0 or steps not in (None, [1]):
            continue
        axis = axes[0] % (spatial + 2) - 2
        strides = attrs.get("strides", [1] * spatial)
        pads = list(attrs.get("pads", [0] * 2 * spatial))
        if axis < 0 or strides[axis] != 1 or pads[spatial + axis] < -ends[0]:
            continue
        pads[spatial + axis] += ends[0]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, onnx.helper.make_attribute("pads", pads)])
        conv.output[0] = slice_.output[0]
        removed.add(slice_.output[0])
    nodes = [n for n in graph.node if not (n.op_type == "Slice" and n.output[0] in removed)]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _affine(
    node: onnx.NodeProto,
    produced: str,
    values: dict[str, onnx.TensorProto],
    channels: int,
    rank: int,
) -> tuple[np.ndarray | float, np.ndarray | float] | None:
    """Return (s, t) with node(y) = y * s + t per output channel for the conv output produced,
    None when node is not such an op."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "BatchNormalization":
        names = list(node.input[1:5])
        if node.input[0] != produced or len(node.output) != 1 or len(names) != 4:
            return None
        if not all(name in values for name in names):
            return None
        scale, beta, mean, var = (
            numpy_helper.to_array(values[name]).astype(np.float64) for name in names
        )
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        s = scale / np.sqrt(var + eps)
        return s, beta - mean * s
    if node.op_type not in ("Mul", "Add"):
        return None
    other = node.input[1] if node.input[0] == produced else node.input[0]
    per_channel = _per_channel(values.get(other), channels, rank)
    if other == produced or per_channel is None:
        return None
    return (per_channel, 0.0) if node.op_type == "Mul" else (1.0, per_channel)


def _per_channel(tensor: onnx.TensorProto | None, channels: int, rank: int) -> np.ndarray | None:
    """Return a constant as one float64 value per output channel of a conv whose output has
    rank dims (N, C, spatial...), None when it varies along any other axis."""
    if tensor is None:
        return None
    array = numpy_helper.to_array(tensor)
    if array.dtype.kind != "f" or array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (channels,)).copy()


# The contrib op that gelu_from_erf writes: ONNX Runtime runs it, TVM's importer converts it to
# relax.nn.gelu (which infer hands to oneDNN as a post-op of the matmul before it).
GELU = ("com.microsoft", "Gelu")
_SQRT2 = float(np.sqrt(2.0))


def gelu_from_erf(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where each exact GELU written out with Erf is one Gelu node.

    Exporters below opset 20 write gelu(x) = x * 0.5 * (1 + erf(x / sqrt(2))) as five nodes
    (Div or Mul by 1/sqrt(2), Erf, Add 1, and two Muls in any order); TVM then computes erf with
    a scalar libm call per element, in a pass of its own. Only chains whose intermediate values
    nothing else reads are fused.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values = _constant_tensors(graph)
    readers = _reader_counts(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumer = _consumers(graph)

    def scalar(name: str) -> float | None:
        if name not in values:
            return None
        array = numpy_helper.to_array(values[name])
        return float(array.reshape(())) if array.size == 1 and array.dtype.kind == "f" else None

    def other(node: onnx.NodeProto, name: str) -> str | None:
        # The other operand of a binary node that reads name once.
        if len(node.input) != 2 or list(node.input).count(name) != 1:
            return None
        return str(node.input[1] if node.input[0] == name else node.input[0])

    def sole(name: str, op: str) -> onnx.NodeProto | None:
        node = consumer.get(name)
        if node is None or readers.get(name) != 1 or node.op_type != op:
            return None
        return node if node.domain in ("", "ai.onnx") else None

    removed: set[int] = set()
    gelu_at: dict[int, onnx.NodeProto] = {}  # id of a chain's last node -> the Gelu in its place
    for erf in graph.node:
        if erf.op_type != "Erf" or erf.domain not in ("", "ai.onnx"):
            continue
        scaled = producer.get(erf.input[0])
        if scaled is None or readers.get(erf.input[0]) != 1 or len(scaled.input) != 2:
            continue
        x, c = scaled.input
        factor = scalar(c)
        if factor is None or not (
            (scaled.op_type == "Div" and np.isclose(factor, _SQRT2, rtol=1e-5))
            or (scaled.op_type == "Mul" and np.isclose(factor, 1 / _SQRT2, rtol=1e-5))
        ):
            continue
        plus = sole(erf.output[0], "Add")
        if plus is None or scalar(other(plus, erf.output[0]) or "") != 1.0:
            continue
        first = sole(plus.output[0], "Mul")
        if first is None:
            continue
        with_x = other(first, plus.output[0])
        if with_x == x:  # x * (1 + erf) then * 0.5
            last = sole(first.output[0], "Mul")
            ok = last is not None and scalar(other(last, first.output[0]) or "") == 0.5
        elif scalar(with_x or "") == 0.5:  # 0.5 * (1 + erf) then * x
            last = sole(first.output[0], "Mul")
            ok = last is not None and other(last, first.output[0]) == x
        else:  # (x * 0.5) * (1 + erf)
            half = producer.get(with_x or "")
            last, first = first, half
            ok = (
                half is not None
                and half.op_type == "Mul"
                and readers.get(half.output[0]) == 1
                and scalar(other(half, x) or "") == 0.5
            )
        if not ok or last is None or first is None:
            continue
        removed |= {id(n) for n in (scaled, erf, plus, first)}
        gelu = onnx.helper.make_node(
            GELU[1],
            [x],
            [last.output[0]],
            name=f"{erf.name or last.output[0]}__gelu",
            domain=GELU[0],
        )
        gelu_at[id(last)] = gelu
    if not gelu_at:
        return model
    kept = [gelu_at.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    if not any(o.domain == GELU[0] for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(GELU[0], 1))
    return out


# Bumped whenever the clean-ups, legalizations or foldings change the graph they hand to TVM
# (part of compile cache keys, so that caches do not serve artifacts of older rewrites).
GRAPH_REVISION = 4


def square_pow(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where each float Pow by a constant 2 is a Mul of its input by itself, in
    subgraphs too.

    TVM lowers Pow to one powf call per element: Silero VAD's spectrum magnitude (re^2 + im^2,
    its exponent an initializer) spent 7% of a window there. x * x is the correctly rounded
    square powf returns, NaN and infinities alike.
    """
    constants = _constant_tensors(model.graph, subgraphs=True)

    def is_two(name: str) -> bool:
        tensor = constants.get(name)
        if tensor is None or tensor.data_type not in _FLOAT_TYPES:
            return False
        value = numpy_helper.to_array(tensor)
        return bool(value.size == 1 and float(value.reshape(-1)[0]) == 2.0)

    candidates = {
        i: n.input[0] for i, n in enumerate(iter_nodes(model.graph))
        if n.op_type == "Pow" and n.domain in ("", "ai.onnx") and len(n.input) == 2 and is_two(n.input[1])
    }  # fmt: skip
    if not candidates:
        return model
    from infer.graph.shapes import element_types, inferred_types

    types = element_types(inferred_types(model))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, node in enumerate(iter_nodes(out.graph)):
        if index in candidates and types.get(candidates[index]) in _FLOAT_TYPES:
            node.CopyFrom(
                onnx.helper.make_node("Mul", [node.input[0]] * 2, list(node.output), name=node.name)
            )
    return out


def join_gemm_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where an Add of two Gemms on constant weights is one Gemm:
    a @ W1 + c1 + b @ W2 + c2 = [a, b] @ [W1; W2] + (c1 + c2).

    An LSTM cell exported as its two linear layers (Silero VAD: the input's and the state's
    products, 128 -> 512 each) then makes one library call where it made two, with the same
    weight bytes. Joined only when the Add is the only reader of each Gemm, both have alpha 1
    and an untransposed A, their weights the same output width, and a and b the same rows
    (shape inference: equal sizes or the same named dim; an Add that broadcasts rows is left).
    """
    graph = model.graph
    values = _constant_tensors(graph)
    readers = _reader_counts(graph)
    producers = {o: n for n in graph.node for o in n.output}

    def joinable(name: str) -> onnx.NodeProto | None:
        node: onnx.NodeProto | None = producers.get(name)
        if node is None or node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        constant_c = len(node.input) < 3 or not node.input[2] or node.input[2] in values
        if (
            readers.get(name) != 1
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("transA", 0)
            or node.input[1] not in values
            or not constant_c
            or values[node.input[1]].data_type not in _FLOAT_TYPES
        ):
            return None
        return node

    pairs = []
    for add in graph.node:
        if add.op_type == "Add" and add.domain in ("", "ai.onnx") and len(add.input) == 2:
            first, second = (joinable(n) for n in add.input)
            if first is not None and second is not None and first is not second:
                pairs.append((add, first, second))
    if not pairs:
        return model
    from infer.graph.shapes import inferred_types

    types = inferred_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    removed: set[str] = set()
    for add, first, second in pairs:
        weights, biases = [], []
        for gemm in (first, second):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
            w = numpy_helper.to_array(values[gemm.input[1]])
            weights.append(w.T if attrs.get("transB", 0) else w)
            if len(gemm.input) > 2 and gemm.input[2]:
                biases.append(numpy_helper.to_array(values[gemm.input[2]]) * attrs.get("beta", 1.0))
        rows = [types.get(gemm.input[0]) for gemm in (first, second)]
        if (
            weights[0].ndim != 2
            or weights[1].ndim != 2
            or weights[0].shape[1] != weights[1].shape[1]
            or weights[0].dtype != weights[1].dtype
            or not _same_rows(rows[0], rows[1])
        ):
            continue
        name = add.output[0]
        joined_w = numpy_helper.from_array(np.concatenate(weights), f"{name}__joined_w")
        inputs = [f"{name}__joined_x", joined_w.name]
        out.graph.initializer.append(joined_w)
        if biases:
            bias = sum(biases[1:], biases[0]).astype(weights[0].dtype)
            out.graph.initializer.append(numpy_helper.from_array(bias, f"{name}__joined_b"))
            inputs.append(f"{name}__joined_b")
        replaced[name] = [
            onnx.helper.make_node("Concat", [first.input[0], second.input[0]], [inputs[0]], axis=1),
            onnx.helper.make_node("Gemm", inputs, [name], name=add.name),
        ]
        removed |= {first.output[0], second.output[0]}
    if not replaced:
        return model
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.output and node.output[0] in removed:
            continue
        nodes.extend(replaced.get(node.output[0], [node]) if node.op_type == "Add" else [node])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [v for v in out.graph.value_info if v.name not in removed]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out


# Readers TVM fuses a strided_slice into (elementwise ops and layout moves): a Split read only
# by these is worth a Slice per part.
_SLICE_FUSING_OPS = frozenset(
    {
        "Abs", "Add", "Cast", "Clip", "Div", "Erf", "Exp", "HardSigmoid", "LeakyRelu", "Log",
        "Mul", "Neg", "Pow", "Reciprocal", "Relu", "Reshape", "Sigmoid", "Softplus", "Sqrt",
        "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
    }
)  # fmt: skip
# Slice takes starts, ends and axes as inputs from this opset on.
_SLICE_INPUTS_OPSET = 10


def split_to_slices(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where a Split whose parts are read only by elementwise ops and layout
    moves is one Slice per part.

    TVM imports Split as one kernel writing every part (a tuple, which no kernel fuses with);
    a Slice fuses into the kernel of its reader. Silero VAD's LSTM cell: the four gates are
    read straight from the product, one kernel and four tensors fewer a window. Left alone:
    a part that is a graph output or is read by another op or a subgraph, and parts whose
    sizes are not static.
    """
    from infer.graph.support import default_opset

    graph = model.graph
    splits = [n for n in graph.node if n.op_type == "Split" and n.domain in ("", "ai.onnx")]
    if not splits or default_opset(model) < _SLICE_INPUTS_OPSET:
        return model
    from infer.graph.shapes import inferred_types

    values = _constant_tensors(graph)
    readers = _reader_counts(graph)
    fusing: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in _SLICE_FUSING_OPS and node.domain in ("", "ai.onnx"):
            for name in node.input:
                fusing[name] = fusing.get(name, 0) + 1
    candidates = [
        split
        for split in splits
        if all(p and readers.get(p, 0) == fusing.get(p, 0) > 0 for p in split.output)
    ]
    if not candidates:
        return model
    types = inferred_types(model)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    initializers: list[onnx.TensorProto] = []
    for split in candidates:
        parts = list(split.output)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in split.attribute}
        sizes = _split_sizes(split, attrs, values, types.get(split.input[0]))
        if sizes is None or len(sizes) != len(parts):
            continue
        axis = int(attrs.get("axis", 0))
        slices, start = [], 0
        for part, size in zip(parts, sizes, strict=True):
            bounds = {"starts": start, "ends": start + size, "axes": axis}
            tensors = [
                numpy_helper.from_array(np.array([v], np.int64), f"{part}__slice_{k}")
                for k, v in bounds.items()
            ]
            initializers.extend(tensors)
            slices.append(
                onnx.helper.make_node(
                    "Slice", [split.input[0], *(t.name for t in tensors)], [part], name=part
                )
            )
            start += size
        replaced[parts[0]] = slices
    if not replaced:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        is_split = node.op_type == "Split" and node.output and node.output[0] in replaced
        nodes.extend(replaced[node.output[0]] if is_split else [node])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(initializers)
    return out


def _split_sizes(
    split: onnx.NodeProto,
    attrs: dict[str, Any],
    values: dict[str, onnx.TensorProto],
    data: onnx.TypeProto | None,
) -> list[int] | None:
    """Return the sizes of a Split's parts along its axis (attrs: its attributes), None when
    they are not static."""
    if len(split.input) > 1 and split.input[1]:
        given = values.get(split.input[1])
        return None if given is None else [int(v) for v in numpy_helper.to_array(given)]
    if "split" in attrs:  # before opset 13
        return [int(v) for v in attrs["split"]]
    if data is None or not data.HasField("tensor_type"):
        return None
    dims = data.tensor_type.shape.dim
    axis = int(attrs.get("axis", 0))
    if not -len(dims) <= axis < len(dims) or not dims[axis].HasField("dim_value"):
        return None
    total, count = dims[axis].dim_value, int(attrs.get("num_outputs", len(split.output)))
    if total % count == 0:
        return [total // count] * count
    if "num_outputs" not in attrs:
        return None
    chunk = -(-total // count)  # opset 18: equal parts of ceil(total / n), the last smaller
    sizes = [min(chunk, total - i * chunk) for i in range(count)]
    return sizes if all(s > 0 for s in sizes) else None


def _same_rows(first: onnx.TypeProto | None, second: onnx.TypeProto | None) -> bool:
    """True when two matrices' types say they have the same number of rows (equal sizes, or
    the same dim name that is not one of the anonymous ones)."""
    dims = []
    for t in (first, second):
        if t is None or not t.HasField("tensor_type") or len(t.tensor_type.shape.dim) != 2:
            return False
        dims.append(t.tensor_type.shape.dim[0])
    a, b = dims
    if a.HasField("dim_value") and b.HasField("dim_value"):
        return bool(a.dim_value == b.dim_value > 0)
    from infer.graph.shapes import anonymous_dim

    named = a.HasField("dim_param") and not anonymous_dim(a)
    return named and bool(a.dim_param == b.dim_param)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """Return the tensor a Constant node with a `value` attribute outputs, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    return next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)


def _constant_tensors(
    graph: onnx.GraphProto, subgraphs: bool = False
) -> dict[str, onnx.TensorProto]:
    """Return the graph's initializers and Constant-node values by name (exporters store small
    parameters, such as PaddlePaddle's BN statistics, as Constant nodes), with subgraphs'
    Constant nodes too if asked (names are unique across a model's graphs)."""
    values = {t.name: t for t in graph.initializer}
    for node in iter_nodes(graph) if subgraphs else graph.node:
        value = _constant_value(node)
        if value is not None:
            values.setdefault(node.output[0], value)
    return values


def _consumers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Return the (last) node of the graph that reads each value."""
    return {name: node for node in graph.node for name in node.input}


def _reader_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """Return how many node inputs (in subgraphs too) and graph outputs read each value."""
    readers: dict[str, int] = {}
    for node in iter_nodes(graph):
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for name in (o.name for o in graph.output):
        readers[name] = readers.get(name, 0) + 1
    return readers


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the model with every clean-up above applied; value names are kept."""
    from infer.graph.constants import fold_constants
    from infer.graph.half import half_ops_in_float
    from infer.graph.legalize import legalize
    from infer.graph.legalize_quant import float_matmul_integer
    from infer.graph.narrow import narrow_as_bytes
    from infer.graph.symbolic import rebuild_shape_inputs

    # Folding first gives legalization static shapes; again after, for what it adds (zeros).
    # Shape inputs still computed at run time are rebuilt before legalization (which rewrites
    # some shape arithmetic into forms the symbolic inference does not follow) and after it
    # (for what function bodies add); folding drops the arithmetic they leave dead.
    # Narrow types first: folding and legalization then see uint8 codes and float arithmetic.
    narrowed = narrow_as_bytes(constant_initializers(model))
    folded = fold_constants(float_matmul_integer(narrowed))
    cleaned = fold_constants(half_ops_in_float(legalize(rebuild_shape_inputs(folded))))
    rebuilt = rebuild_shape_inputs(cleaned)
    if rebuilt is not cleaned:
        cleaned = fold_constants(rebuilt)
    cleaned = constants_to_initializers(cleaned)
    cleaned = conv_end_slice_to_padding(cleaned)
    cleaned = square_pow(sum_to_add(cleaned))
    cleaned = gelu_from_erf(fold_conv_affine(dropout_to_identity(cleaned)))
    return split_to_slices(join_gemm_pairs(cleaned))
