"""Narrow element types (float8, float4, int4, int2, float8e8m0) kept as one uint8 code each.

TVM 0.27 gets these types wrong (float8 NaN and saturation, the FNUZ types' exponent bias) or
reads past their buffers (the sub-byte types), and ONNX Runtime 1.32 runs few of them. So
before import every value of a narrow type becomes a uint8 tensor of its bit codes, one per
byte: the layout ml_dtypes gives the same arrays in numpy, so the session only reinterprets
feeds and outputs. Ops that move data (Reshape, Transpose, Gather, ...) work on the codes as
they are. The ops that compute with these types are spelt in float arithmetic:

- decoding is a lookup of the code in a table of the type's values;
- encoding a float counts the rounding thresholds below its magnitude: the midpoints between
  neighbouring values, a midpoint counted on reaching it when the code below is odd (ties to
  even), the midpoint past the largest value giving the type's overflow code (NaN or infinity
  as the type has), clipped to the largest value when saturating; sign and NaN are set apart.
  Exact for every input, as ml_dtypes (which the ONNX reference uses) rounds;
- integer types wrap like ml_dtypes' conversions (truncate, then modulo 2**bits);
- float8e8m0 counts powers of two, as the spec's round modes say.

A model where a narrow value meets any other op is left as it is; partitioning sends those
nodes to ONNX Runtime, with the reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from infer.graph.legalize import Emitter, NotLegalizable, node_attributes
from infer.graph.legalize_quant import quant_param
from infer.graph.shapes import element_types, inferred_types, known_dims
from infer.graph.support import default_opset

__all__ = ["NARROW_TYPES", "narrow_as_bytes"]

_T = onnx.TensorProto
# Element types stored as codes (their numpy names are signature.CODED_DTYPES).
NARROW_TYPES = frozenset(
    {
        _T.FLOAT8E4M3FN,
        _T.FLOAT8E4M3FNUZ,
        _T.FLOAT8E5M2,
        _T.FLOAT8E5M2FNUZ,
        _T.FLOAT8E8M0,
        _T.FLOAT4E2M1,
        _T.INT4,
        _T.UINT4,
        _T.INT2,
        _T.UINT2,
    }
)
_INTEGER_BITS: dict[int, int] = {_T.INT4: 4, _T.UINT4: 4, _T.INT2: 2, _T.UINT2: 2}
_INTEGER_RANGES: dict[int, tuple[int, int]] = {
    _T.INT4: (-8, 7),
    _T.UINT4: (0, 15),
    _T.INT2: (-2, 1),
    _T.UINT2: (0, 3),
}
_FLOATS = frozenset({_T.FLOAT, _T.FLOAT16, _T.BFLOAT16, _T.DOUBLE})
# Ops that only move elements: on codes they mean what they meant on values. (input indices
# that are data; the others are indices, shapes, conditions.)
_MOVES: dict[str, tuple[int, ...]] = {
    "Identity": (0,),
    "Reshape": (0,),
    "Flatten": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Transpose": (0,),
    "Concat": (),  # every input
    "Split": (0,),
    "Slice": (0,),
    "Gather": (0,),
    "GatherElements": (0,),
    "GatherND": (0,),
    "Expand": (0,),
    "Tile": (0,),
    "DepthToSpace": (0,),
    "SpaceToDepth": (0,),
    "Shape": (0,),
    "Size": (0,),
    "Where": (1, 2),
}
_E8M0_EXPONENT_BIAS = 127
_E8M0_NAN = 255


@dataclass(frozen=True)
class _Coding:
    """How one narrow float type's codes map to values."""

    values: np.ndarray  # float32, indexed by code (NaN where the code is NaN)
    midpoints: np.ndarray  # a magnitude's code is how many of these it passes...
    reached: np.ndarray  # ...passing a midpoint flagged here on reaching it (ties to even)
    largest: int  # the code of the largest finite value
    sign: int  # the sign bit, 0 for none
    nan: int  # the code a NaN becomes
    unsigned_zero: bool  # FNUZ: no negative zero, and the overflow code takes no sign


@functools.cache
def _dtype(elem_type: int) -> np.dtype[Any]:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _thresholds(points: np.ndarray, reached: np.ndarray, dtype: Any) -> np.ndarray:
    """Return points in dtype, those reached lowered to the next value under them: 'x > it'
    is then 'x >= point'. The points are exact in float32 and float64 alike."""
    exact = points.astype(dtype)
    return np.where(reached, np.nextafter(exact, dtype(-np.inf)), exact).astype(dtype)


@functools.cache
def _coding(elem_type: int) -> _Coding:
    dtype = _dtype(elem_type)
    count = 16 if elem_type == _T.FLOAT4E2M1 else 256
    codes = np.arange(count, dtype=np.uint8)
    values = codes.view(dtype).astype(np.float64)
    positive = [
        int(c)
        for c in codes
        if np.isfinite(values[c]) and values[c] >= 0 and not np.signbit(values[c])
    ]
    if positive != list(range(len(positive))):
        raise AssertionError(f"{dtype.name}: positive codes are not 0..n-1")
    finite = values[: len(positive)]
    beyond = 2 * finite[-1] - finite[-2]  # where the next value would be: the overflow code's
    midpoints = (np.append(finite, beyond)[:-1] + np.append(finite, beyond)[1:]) / 2
    reached = np.arange(len(midpoints)) % 2 == 1  # the code below is odd: ties round up
    return _Coding(
        values=values.astype(np.float32),
        midpoints=midpoints,
        reached=reached,
        largest=len(positive) - 1,
        sign=count >> 1,
        nan=int(np.array(np.nan, np.float32).astype(dtype).view(np.uint8)),
        unsigned_zero=dtype.name.endswith("fnuz"),
    )


def _decode(g: Emitter, codes: str, elem_type: int) -> str:
    """Return the float32 values of codes (uint8) of a narrow type."""
    if elem_type in _INTEGER_BITS:
        table = np.arange(2 ** _INTEGER_BITS[elem_type], dtype=np.uint8).view(_dtype(elem_type))
        values = table.astype(np.float32)
    elif elem_type == _T.FLOAT8E8M0:
        values = np.arange(256, dtype=np.uint8).view(_dtype(elem_type)).astype(np.float32)
    else:
        values = _coding(elem_type).values
    if len(values) < 256:  # codes past the table would read out of bounds
        codes = g.op("BitwiseAnd", codes, g.const(len(values) - 1, np.uint8))
    index = g.op("Cast", codes, to=_T.INT32)
    return str(g.op("Gather", g.const(values, np.float32), index))


def _count_above(g: Emitter, magnitude: str, thresholds: np.ndarray) -> str:
    """Return, per element (int32), how many thresholds magnitude exceeds."""
    over = g.op("Greater", g.unsqueeze(magnitude, [-1]), g.const(thresholds, thresholds.dtype))
    counted = g.op("Cast", over, to=_T.INT32)
    return str(g.op("ReduceSum", counted, g.const([-1]), keepdims=0))


def _is_negative(g: Emitter, x: str, dtype: Any) -> str:
    """Return x's sign bit: x < 0, or x is -0 (1/x is -inf)."""
    zero = g.const(0, dtype)
    reciprocal = g.op("Div", g.const(1, dtype), x)
    negative_zero = g.op("And", g.op("Equal", x, zero), g.op("Less", reciprocal, zero))
    return str(g.op("Or", g.op("Less", x, zero), negative_zero))


def _encode_float(g: Emitter, x: str, elem_type: int, saturate: bool) -> str:
    """Return the codes (int32) of float32/64 x rounded to a narrow float type."""
    coding = _coding(elem_type)
    dtype = np.float64 if g.types.get(x) == _T.DOUBLE else np.float32
    thresholds = _thresholds(coding.midpoints, coding.reached, dtype)
    count = _count_above(g, g.op("Abs", x), thresholds)
    if saturate or elem_type == _T.FLOAT4E2M1:  # float4 has no infinity or NaN: it saturates
        count = g.op("Min", count, g.const(coding.largest, np.int32))
    signed = g.op("Add", count, g.const(coding.sign, np.int32))
    negative = _is_negative(g, x, dtype)
    if coding.unsigned_zero:  # no -0, and the overflow code is NaN, unsigned
        in_range = g.op(
            "And",
            g.op("Greater", count, g.const(0, np.int32)),
            g.op("LessOrEqual", count, g.const(coding.largest, np.int32)),
        )
        negative = g.op("And", negative, in_range)
    code = g.op("Where", negative, signed, count)
    return str(g.op("Where", g.op("IsNaN", x), g.const(coding.nan, np.int32), code))


def _encode_e8m0(g: Emitter, x: str, saturate: bool, round_mode: str) -> str:
    """Return the codes (int32) of x as float8e8m0: the float32 exponent of |x|, rounded."""
    x32 = x if g.types.get(x) == _T.FLOAT else str(g.op("Cast", x, to=_T.FLOAT))
    # The point past which the code is at least k, for k = 1..255 (255 is NaN: no saturation).
    powers = 2.0 ** (np.arange(1, _E8M0_NAN + 1) - _E8M0_EXPONENT_BIAS)
    if round_mode == "up":  # any fraction rounds up; a subnormal's exponent field is 0
        points, reached = np.append(0.0, powers[:-1]), np.zeros(len(powers), bool)
    elif round_mode == "down":
        points, reached = powers[:-1], np.ones(len(powers) - 1, bool)
    elif round_mode == "nearest":  # from a half up; subnormals only past the half
        points = np.append(powers[0] / 2, 0.75 * powers[1:])
        reached = np.arange(len(points)) > 0
    else:
        raise NotLegalizable(f"round_mode {round_mode!r}")
    count = _count_above(g, g.op("Abs", x32), _thresholds(points, reached, np.float32))
    if saturate:
        count = g.op("Min", count, g.const(_E8M0_NAN - 1, np.int32))
    special = g.op("Or", g.op("IsNaN", x32), g.op("IsInf", x32))
    return str(g.op("Where", special, g.const(_E8M0_NAN, np.int32), count))


def _encode_integer(g: Emitter, x: str, elem_type: int) -> str:
    """Return the codes (int32) of x as a 2- or 4-bit integer: truncated, modulo 2**bits."""
    source = g.types.get(x)
    if source in _FLOATS:
        special = g.op("Or", g.op("IsNaN", x), g.op("IsInf", x))
        x = g.op("Where", special, g.const(0, helper.tensor_dtype_to_np_dtype(source)), x)
    wide = g.op("Cast", x, to=_T.INT64)
    wrapped = g.op("Mod", wide, g.const(2 ** _INTEGER_BITS[elem_type], np.int64))
    return str(g.op("Cast", wrapped, to=_T.INT32))


def _encode(
    g: Emitter, x: str, elem_type: int, *, saturate: bool = True, round_mode: str = "up"
) -> str:
    """Return x (any numeric type, not narrow) as uint8 codes of a narrow type."""
    source = g.types.get(x)
    if elem_type in _INTEGER_BITS:
        code = _encode_integer(g, x, elem_type)
    else:
        if source not in (_T.FLOAT, _T.DOUBLE):
            x = g.op("Cast", x, to=_T.FLOAT)
            g.types[x] = _T.FLOAT
        if elem_type == _T.FLOAT8E8M0:
            code = _encode_e8m0(g, x, saturate, round_mode)
        else:
            code = _encode_float(g, x, elem_type, saturate)
    return str(g.op("Cast", code, to=_T.UINT8))


def _cast(
    g: Emitter, x: str, source: int, to: int, saturate: int = 1, round_mode: str = "up"
) -> str:
    """Return x (codes when source is narrow) cast to `to` (codes when narrow)."""
    if source in NARROW_TYPES:
        if to in NARROW_TYPES and to == source:
            return str(g.op("Identity", x))
        x = _decode(g, x, source)
        g.types[x] = _T.FLOAT
        if to not in NARROW_TYPES:
            return x if to == _T.FLOAT else str(g.op("Cast", x, to=to))
    g.types.setdefault(x, source)
    return _encode(g, x, to, saturate=bool(saturate), round_mode=round_mode)


def _dequantize(
    g: Emitter, node: onnx.NodeProto, types: dict[str, int], attrs: dict[str, Any]
) -> list[str]:
    x, scale, zero = [*node.input, "", ""][:3]
    source = types[x]
    shape = g.shapes.get(x)
    if shape is None:
        raise NotLegalizable("DequantizeLinear of unknown rank")
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    value = _decode(g, x, source)
    if zero:
        zero_value = _decode(g, zero, source) if types.get(zero) in NARROW_TYPES else zero
        value = g.op("Sub", value, quant_param(g, zero_value, zero, shape, axis, block))
    scale32 = g.op("Cast", scale, to=_T.FLOAT)
    value = g.op("Mul", value, quant_param(g, scale32, scale, shape, axis, block))
    to = int(attrs.get("output_dtype", 0)) or types.get(scale, _T.FLOAT)
    return [value if to == _T.FLOAT else str(g.op("Cast", value, to=to))]


def _quantize(
    g: Emitter, node: onnx.NodeProto, types: dict[str, int], attrs: dict[str, Any]
) -> list[str]:
    x, scale, zero = [*node.input, "", ""][:3]
    to = int(attrs.get("output_dtype", 0)) or types.get(zero, 0)
    shape = g.shapes.get(x)
    if shape is None or to not in NARROW_TYPES:
        raise NotLegalizable("QuantizeLinear of unknown rank or output type")
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    x32 = g.op("Cast", x, to=_T.FLOAT)
    scale32 = g.op("Cast", scale, to=_T.FLOAT)
    scaled = g.op("Div", x32, quant_param(g, scale32, scale, shape, axis, block))
    zero_value = None
    if zero:
        zero_value = _decode(g, zero, to)
        zero_value = quant_param(g, zero_value, zero, shape, axis, block)
    if to in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[to]
        rounded = g.op("Round", scaled)
        if zero_value:
            rounded = g.op("Add", rounded, zero_value)
        clipped = g.op("Clip", rounded, g.const(low, np.float32), g.const(high, np.float32))
        g.types[clipped] = _T.FLOAT
        return [_encode(g, clipped, to)]
    if zero_value:  # float8 zero points are 0 by the spec; added all the same
        scaled = g.op("Add", scaled, zero_value)
    g.types[scaled] = _T.FLOAT
    return [_encode(g, scaled, to, saturate=bool(attrs.get("saturate", 1)))]


def _rewrite(g: Emitter, node: onnx.NodeProto, types: dict[str, int]) -> list[str] | None:
    """Return the outputs of node spelt on codes, None when node stays (it moves codes)."""
    attrs = node_attributes(node)
    if node.op_type in ("Cast", "CastLike"):
        to = attrs["to"] if node.op_type == "Cast" else types.get(node.input[1], 0)
        source = types.get(node.input[0], 0)
        if not to or not source:
            raise NotLegalizable(f"{node.op_type} of unknown type")
        saturate, mode = attrs.get("saturate", 1), attrs.get("round_mode", "up")
        return [_cast(g, node.input[0], source, to, saturate, mode)]
    if node.op_type == "DequantizeLinear":
        return _dequantize(g, node, types, attrs)
    if node.op_type == "QuantizeLinear":
        return _quantize(g, node, types, attrs)
    data = _MOVES.get(node.op_type)
    if data is None:
        raise NotLegalizable(f"{node.op_type} on a narrow type")
    narrow_inputs = [i for i, name in enumerate(node.input) if types.get(name) in NARROW_TYPES]
    if data and any(i not in data for i in narrow_inputs):
        raise NotLegalizable(f"{node.op_type} with a narrow index or shape input")
    return None


def _touches_narrow(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    return any(types.get(n) in NARROW_TYPES for n in [*node.input, *node.output])


def _as_codes(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(np.ascontiguousarray(array).view(np.uint8), tensor.name)


def _retype(values: Any) -> None:
    for value in values:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.elem_type in NARROW_TYPES:
            tensor_type.elem_type = _T.UINT8


def narrow_as_bytes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the model with its narrow-typed values as uint8 codes (see the module's doc);
    the model itself when it has none, or when one meets an op not spelt here."""
    type_protos = inferred_types(model)
    types = element_types(type_protos)
    for tensor in model.graph.initializer:
        types[tensor.name] = tensor.data_type
    graph = model.graph
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    for name, node in constants.items():
        if node.attribute and node.attribute[0].name == "value":
            types[name] = node.attribute[0].t.data_type
    if not any(t in NARROW_TYPES for t in types.values()):
        return model
    if any(
        _touches_narrow(n, types) and any(a.HasField("g") or a.graphs for a in n.attribute)
        for n in graph.node
    ):
        return model  # narrow values inside subgraphs: left to partitioning
    shapes = known_dims(type_protos)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    opset = default_opset(model, missing=1)
    nodes: list[onnx.NodeProto] = []
    try:
        for index, node in enumerate(graph.node):
            if node.op_type == "Constant" or not _touches_narrow(node, types):
                nodes.append(node)
                continue
            g = Emitter(f"narrow{index}_{node.op_type.lower()}", opset, shapes, {}, dict(types))
            outputs = _rewrite(g, node, types)
            if outputs is None:
                nodes.append(node)
                continue
            nodes.extend(g.named(node.output, outputs))
    except NotLegalizable:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    for node in out.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            if node.attribute[0].t.data_type in NARROW_TYPES:
                node.attribute[0].t.CopyFrom(_as_codes(node.attribute[0].t))
    for i, tensor in enumerate(out.graph.initializer):
        if tensor.data_type in NARROW_TYPES:
            out.graph.initializer[i].CopyFrom(_as_codes(tensor))
    _retype(out.graph.input)
    _retype(out.graph.output)
    _retype(out.graph.value_info)
    return out
