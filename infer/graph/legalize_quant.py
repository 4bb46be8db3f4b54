"""Legalization of the integer ops of quantized models (QLinear*, ConvInteger, MatMulInteger) into
float ops.

Dequantize, compute in floating point, requantize: the strategy ONNX Runtime's own QDQ
reference follows, and the only one TVM 0.27's importer leaves open (it has no converter for
these ops). Dequantized products are exact in float32 as long as a dot product's sum stays
below 2**24 (uint8 x uint8 sums over up to 256 terms); ConvInteger, whose int32 output must be
exact, computes in float64. Requantization rounds half to even and saturates, as the spec says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from infer.graph.legalize import Emitter, NotLegalizable

__all__ = ["QUANT_LEGALIZATIONS", "float_matmul_integer", "quant_param"]

ROUND_OPSET = 11  # Round, and Clip's bounds as inputs
_INT_RANGES: dict[int, tuple[int, int]] = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
}
# Blocked quantization's integer types, and their ranges.
_BLOCKED_RANGES: dict[int, tuple[int, int]] = {
    **_INT_RANGES,
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
}
_FLOAT = onnx.TensorProto.FLOAT
_DOUBLE = onnx.TensorProto.DOUBLE


def _cast(g: Emitter, x: str, to: int) -> str:
    return x if g.types.get(x) == to else str(g.op("Cast", x, to=to))


def _per_axis(g: Emitter, value: str, rank: int, axis: int) -> str:
    """Return a scalar or 1-D per-channel value shaped to broadcast along axis of a rank-`rank`
    tensor (its shape may be unknown here: initializers are not in the inferred shapes)."""
    shape = [1] * rank
    shape[axis] = -1
    return str(g.op("Reshape", value, g.const(shape)))


def quant_param(
    g: Emitter,
    value: str,
    source: str,
    x_shape: tuple[int | None, ...],
    axis: int,
    block_size: int,
) -> str:
    """Return a scale or zero point (value, of the shape of the graph's source) shaped to
    broadcast against x: per tensor, per axis, or per block of block_size along axis (repeated,
    then cut to x's length)."""
    rank = len(x_shape)
    axis = axis % rank if rank else 0
    value_shape = g.shapes.get(source, ())
    if value_shape is None or len(value_shape) == 0:
        return value
    if block_size:
        length = x_shape[axis]
        if length is None or any(d is None for d in value_shape):
            raise NotLegalizable("a blocked scale of unknown size")
        repeated = g.op("Unsqueeze", value, g.const([axis + 1]))
        tiles = [1] * (rank + 1)
        tiles[axis + 1] = block_size
        tiled = g.op("Tile", repeated, g.const(tiles))
        merged_shape = [int(d or 0) for d in value_shape]
        merged_shape[axis] *= block_size
        merged = g.op("Reshape", tiled, g.const(merged_shape))
        return str(g.op("Slice", merged, g.const([0]), g.const([length]), g.const([axis])))
    if len(value_shape) == 1 and rank > 1:
        return _per_axis(g, value, rank, axis)
    return value


def DequantizeLinear(
    g: Emitter,
    x: str,
    x_scale: str,
    x_zero_point: str = "",
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
) -> list[str]:
    """Return [(x - zero point) * scale] for a blocked scale (TVM's converter refuses blocks)."""
    shape = g.shapes.get(x)
    if not block_size or shape is None or g.types.get(x) not in _BLOCKED_RANGES:
        raise NotLegalizable("TVM's converter takes it")
    value = g.op("Cast", x, to=onnx.TensorProto.INT32)
    if x_zero_point:
        zero = g.op("Cast", x_zero_point, to=onnx.TensorProto.INT32)
        value = g.op("Sub", value, quant_param(g, zero, x_zero_point, shape, axis, block_size))
    scale32 = _cast(g, x_scale, _FLOAT)
    scaled = g.op(
        "Mul",
        g.op("Cast", value, to=_FLOAT),
        quant_param(g, scale32, x_scale, shape, axis, block_size),
    )
    to = output_dtype or g.types.get(x_scale, _FLOAT)
    return [scaled if to == _FLOAT else str(g.op("Cast", scaled, to=to))]


def QuantizeLinear(
    g: Emitter,
    x: str,
    y_scale: str,
    y_zero_point: str = "",
    *,
    axis: int = 1,
    block_size: int = 0,
    saturate: int = 1,
    output_dtype: int = 0,
    precision: int = 0,
) -> list[str]:
    """Return [x / scale rounded half to even, plus zero point, saturated] for a blocked scale."""
    del saturate, precision  # saturate is for float8; precision only says how to divide
    to = output_dtype or (g.types.get(y_zero_point) if y_zero_point else onnx.TensorProto.UINT8)
    shape = g.shapes.get(x)
    if not block_size or shape is None or to not in _BLOCKED_RANGES:
        raise NotLegalizable("TVM's converter takes it")
    scale32 = _cast(g, y_scale, _FLOAT)
    scaled = g.op(
        "Round",
        g.op("Div", _cast(g, x, _FLOAT), quant_param(g, scale32, y_scale, shape, axis, block_size)),
    )
    if y_zero_point:
        zero = _cast(g, y_zero_point, _FLOAT)
        scaled = g.op("Add", scaled, quant_param(g, zero, y_zero_point, shape, axis, block_size))
    low, high = _BLOCKED_RANGES[to]
    clipped = g.op("Clip", scaled, g.const(low, np.float32), g.const(high, np.float32))
    return [str(g.op("Cast", clipped, to=to))]


def _dequantize(
    g: Emitter, x: str, scale: str | None, zero: str | None, axis: int, to: int = _FLOAT
) -> str:
    """Return (x - zero) * scale in type to, zero and scale per axis; either may be absent."""
    rank = len(g.shapes.get(x, ()))
    if not rank:
        raise NotLegalizable("an input of unknown rank")
    if g.types.get(x) not in _INT_RANGES:
        raise NotLegalizable("only 8-bit integer inputs")
    value = _cast(g, x, to)
    if zero:
        value = str(g.op("Sub", value, _per_axis(g, _cast(g, zero, to), rank, axis)))
    if scale:
        value = str(g.op("Mul", value, _per_axis(g, _cast(g, scale, to), rank, axis)))
    return value


def _quantize(g: Emitter, x: str, scale: str, zero: str) -> str:
    kind = g.types.get(zero)
    if kind is None or kind not in _INT_RANGES:
        raise NotLegalizable("only 8-bit integer outputs")
    if g.opset < ROUND_OPSET:
        raise NotLegalizable(f"opset {g.opset} has no Round")
    low, high = _INT_RANGES[kind]
    scaled = g.op("Round", g.op("Div", x, _cast(g, scale, _FLOAT)))
    shifted = g.op("Add", scaled, _cast(g, zero, _FLOAT))
    clipped = g.op("Clip", shifted, g.const(low, np.float32), g.const(high, np.float32))
    return str(g.op("Cast", clipped, to=kind))


def QLinearMatMul(
    g: Emitter,
    a: str,
    a_scale: str,
    a_zero_point: str,
    b: str,
    b_scale: str,
    b_zero_point: str,
    y_scale: str,
    y_zero_point: str,
) -> list[str]:
    """Return [quantize(dequantize(a) @ dequantize(b))]; b's scale may be per column."""
    rank_b = len(g.shapes.get(b, ()))
    product = g.op(
        "MatMul",
        _dequantize(g, a, a_scale, a_zero_point, -1),
        _dequantize(g, b, b_scale, b_zero_point, rank_b - 1 if rank_b else -1),
    )
    return [_quantize(g, str(product), y_scale, y_zero_point)]


def QLinearConv(
    g: Emitter,
    x: str,
    x_scale: str,
    x_zero_point: str,
    w: str,
    w_scale: str,
    w_zero_point: str,
    y_scale: str,
    y_zero_point: str,
    B: str = "",
    **attrs: Any,
) -> list[str]:
    """Return [quantize(Conv(dequantize(x), dequantize(w)) + B * x_scale * w_scale)]."""
    inputs = [
        _dequantize(g, x, x_scale, x_zero_point, 1),
        _dequantize(g, w, w_scale, w_zero_point, 0),
    ]
    if B:
        scale = g.op("Mul", _cast(g, x_scale, _FLOAT), _cast(g, w_scale, _FLOAT))
        inputs.append(str(g.op("Mul", _cast(g, B, _FLOAT), scale)))
    y = g.op("Conv", *inputs, **attrs)
    return [_quantize(g, str(y), y_scale, y_zero_point)]


def ConvInteger(
    g: Emitter, x: str, w: str, x_zero_point: str = "", w_zero_point: str = "", **attrs: Any
) -> list[str]:
    """Return [int32 Conv(x - x_zero_point, w - w_zero_point)], computed exactly in float64."""
    xs = _dequantize(g, x, None, x_zero_point or None, 1, _DOUBLE)
    ws = _dequantize(g, w, None, w_zero_point or None, 0, _DOUBLE)
    return [str(g.op("Cast", g.op("Conv", xs, ws, **attrs), to=onnx.TensorProto.INT32))]


def float_matmul_integer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where each MatMulInteger of activations by a weight matrix, whose int32
    product is only cast to float (ONNX Runtime's dynamic quantization writes that), is a float32
    MatMul by the weights minus their zero point, folded here: a library matmul with packed
    weights instead of TVM's integer loop nest, which ran a quantized MiniLM-L3 at 15x ONNX
    Runtime's time, and no int32 round trip (TVM's importer casts float to int32 with wrapping,
    five more passes over the product).

    Each uint8 x int8 product is exact in float32, and so is the sum while below 2**24, which
    a dot product of activations and weights rarely approaches; beyond, float32 rounds at the
    8th digit, far below the precision of the scale that multiplies it next.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    # The Casts now computed by a MatMul, by their output: an Identity of the product.
    replaced: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in replaced:
            nodes.append(replaced[node.output[0]])
            continue
        rewrite = _float_matmul(node, weights, readers, outputs)
        if rewrite is None:
            nodes.append(node)
            continue
        prologue, weight, casts = rewrite
        graph.initializer.append(weight)
        nodes.extend(prologue)
        for cast in casts:
            replaced[cast.output[0]] = onnx.helper.make_node(
                "Identity", [prologue[-1].output[0]], [cast.output[0]]
            )
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _float_matmul(
    node: onnx.NodeProto,
    weights: dict[str, onnx.TensorProto],
    readers: dict[str, list[onnx.NodeProto]],
    outputs: set[str],
) -> tuple[list[onnx.NodeProto], onnx.TensorProto, list[onnx.NodeProto]] | None:
    """Return (nodes computing the float product, its weight, the Casts it replaces) for a
    MatMulInteger float_matmul_integer rewrites, else None."""
    if node.op_type != "MatMulInteger" or node.domain not in ("", "ai.onnx"):
        return None
    a, b, a_zero, b_zero = [*node.input, "", ""][:4]
    product = node.output[0]
    casts = readers.get(product, [])
    if (
        b not in weights
        or len(weights[b].dims) != 2
        or product in outputs
        or not casts
        or any(
            c.op_type != "Cast" or onnx.helper.get_attribute_value(c.attribute[0]) != _FLOAT
            for c in casts
        )
    ):
        return None
    b_value = numpy_helper.to_array(weights[b]).astype(np.float32)
    if b_zero:
        if b_zero not in weights:
            return None
        b_value = b_value - numpy_helper.to_array(weights[b_zero]).astype(np.float32)
    if a_zero and (a_zero in weights and numpy_helper.to_array(weights[a_zero]).size != 1):
        return None  # a zero point per row
    name = f"{product}__float"
    nodes = [onnx.helper.make_node("Cast", [a], [f"{name}_a"], to=_FLOAT)]
    a_float = nodes[-1].output[0]
    if a_zero:
        nodes.append(onnx.helper.make_node("Cast", [a_zero], [f"{name}_a_zero"], to=_FLOAT))
        nodes.append(onnx.helper.make_node("Sub", [a_float, f"{name}_a_zero"], [f"{name}_a_sub"]))
        a_float = nodes[-1].output[0]
    nodes.append(onnx.helper.make_node("MatMul", [a_float, f"{name}_b"], [name]))
    return nodes, numpy_helper.from_array(b_value, f"{name}_b"), casts


QUANT_LEGALIZATIONS: dict[str, Callable[..., list[str]]] = {
    "DequantizeLinear": DequantizeLinear,
    "QuantizeLinear": QuantizeLinear,
    "ConvInteger": ConvInteger,
    "QLinearConv": QLinearConv,
    "QLinearMatMul": QLinearMatMul,
}
