"""Legalization of cases TVM 0.27's converters import but compute against the spec.

Each was found by tools/conformance.py giving other numbers than ONNX Runtime and the spec's
reference: an attribute the converter ignores (IsInf's detect_*, SpaceToDepth's mode,
ConvTranspose's output_shape), a shape of ones it takes literally (Expand), an edge the
generated code leaves to the hardware (shifts past the width, float Mod's signs and
infinities), a type it builds wrongly (Elu's constants), or an input it needs constant when
the output's shape does not depend on it (CumSum's axis). The rewrite keeps the op where it can and spells out only the case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from infer.graph.legalize import Emitter, NotLegalizable

__all__ = ["SEMANTIC_LEGALIZATIONS"]

_FLOATS = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)


def IsInf(g: Emitter, X: str, *, detect_negative: int = 1, detect_positive: int = 1) -> list[str]:
    """Return [IsInf(X) limited to the signs asked] (TVM's converter ignores detect_*)."""
    if detect_negative and detect_positive:
        raise NotLegalizable("TVM's converter takes it")
    infinite = g.op("IsInf", X)
    if not detect_negative and not detect_positive:
        return [str(g.op("And", infinite, g.op("Not", infinite)))]
    dtype = helper.tensor_dtype_to_np_dtype(g.types.get(X, onnx.TensorProto.FLOAT))
    side = "Greater" if detect_positive else "Less"
    return [str(g.op("And", infinite, g.op(side, X, g.const(0, dtype))))]


def SpaceToDepth(g: Emitter, input: str, *, blocksize: int, mode: str = "DCR") -> list[str]:
    """Return [SpaceToDepth in CRD mode] as Reshape/Transpose (TVM's converter ignores mode)."""
    if mode != "CRD":
        raise NotLegalizable("TVM's converter takes it")
    shape = g.shapes.get(input)
    if shape is None or len(shape) != 4 or any(d is None for d in shape):
        raise NotLegalizable("SpaceToDepth CRD of an input of unknown shape")
    n, c, h, w = (int(d or 0) for d in shape)
    b = blocksize
    split = g.op("Reshape", input, g.const([n, c, h // b, b, w // b, b]))
    moved = g.op("Transpose", split, perm=[0, 1, 3, 5, 2, 4])
    return [str(g.op("Reshape", moved, g.const([n, c * b * b, h // b, w // b])))]


def Expand(g: Emitter, input: str, shape: str) -> list[str]:
    """Return [Expand to the broadcast of input's shape and shape]: a 1 in shape keeps the
    input's dim (TVM's converter of a shape fed at run time takes the 1 literally). Shapes
    computed in the graph stay: TVM follows them symbolically."""
    if shape not in g.inputs:
        raise NotLegalizable("TVM's converter takes it")
    rank, length = g.shapes.get(input), g.shapes.get(shape)
    if rank is None or length is None or len(length) != 1 or length[0] is None:
        raise NotLegalizable("Expand to a shape of unknown length")
    if length[0] < len(rank):
        raise NotLegalizable("Expand to a shape shorter than the input's rank")
    own = g.op("Shape", input)
    if length[0] > len(rank):  # the input's shape, ones in front, as broadcasting aligns
        ones = g.const([1] * (length[0] - len(rank)))
        own = g.op("Concat", ones, own, axis=0)
    target = g.op("Where", g.op("Equal", shape, g.const(1)), own, shape)
    return [str(g.op("Expand", input, target))]


def ConvTranspose(
    g: Emitter,
    X: str,
    W: str,
    B: str = "",
    *,
    output_shape: Sequence[int] = (),
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] = (),
    group: int = 1,
    kernel_shape: Sequence[int] = (),
    output_padding: Sequence[int] = (),
    pads: Sequence[int] = (),
    strides: Sequence[int] = (),
) -> list[str]:
    """Return [ConvTranspose with output_shape turned into pads and output_padding], as the
    spec computes them (TVM's converter ignores output_shape)."""
    x_shape, w_shape = g.shapes.get(X), g.shapes.get(W)
    if not output_shape:
        raise NotLegalizable("TVM's converter takes it")
    if x_shape is None or w_shape is None or any(d is None for d in [*x_shape[2:], *w_shape[2:]]):
        raise NotLegalizable("ConvTranspose output_shape with inputs of unknown shape")
    spatial = len(x_shape) - 2
    sizes = [int(d or 0) for d in x_shape[2:]]
    kernel = list(kernel_shape) or [int(d or 0) for d in w_shape[2:]]
    dilations = list(dilations) or [1] * spatial
    strides = list(strides) or [1] * spatial
    extra = list(output_padding) or [0] * spatial
    target = list(output_shape)[-spatial:]
    begins, ends = [], []
    for i in range(spatial):
        natural = strides[i] * (sizes[i] - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1
        total = natural - target[i]
        if auto_pad == "SAME_UPPER":
            begin, end = total // 2, total - total // 2
        else:
            begin, end = total - total // 2, total // 2
        if begin < 0:
            raise NotLegalizable("output_shape past what output padding reaches")
        if end < 0:  # a larger output: the extra rows come out of output_padding
            extra[i] -= end
            end = 0
        begins.append(begin)
        ends.append(end)
    inputs = [X, W, B] if B else [X, W]
    transposed = g.op(
        "ConvTranspose",
        *inputs,
        dilations=dilations,
        group=group,
        kernel_shape=kernel,
        output_padding=extra,
        pads=begins + ends,
        strides=strides,
    )
    return [str(transposed)]


_SHIFT_BITS: dict[int, int] = {
    onnx.TensorProto.UINT8: 8,
    onnx.TensorProto.UINT16: 16,
    onnx.TensorProto.UINT32: 32,
    onnx.TensorProto.UINT64: 64,
    onnx.TensorProto.INT8: 8,
    onnx.TensorProto.INT16: 16,
    onnx.TensorProto.INT32: 32,
    onnx.TensorProto.INT64: 64,
}


def BitShift(g: Emitter, X: str, Y: str, *, direction: str) -> list[str]:
    """Return [X shifted by Y; where Y is negative or past the width, every bit shifted out:
    0, or -1 for a negative X shifted right] (as ONNX Runtime; the machine's shift is
    undefined there)."""
    kind = g.types.get(X)
    if kind not in _SHIFT_BITS:
        raise NotLegalizable("a shift of unknown type")
    dtype = helper.tensor_dtype_to_np_dtype(kind)
    shifted = g.op("BitShift", X, Y, direction=direction)
    past = g.op("GreaterOrEqual", Y, g.const(_SHIFT_BITS[kind], dtype))
    out = g.const(0, dtype)
    if np.dtype(dtype).kind == "i":
        past = g.op("Or", past, g.op("Less", Y, g.const(0, dtype)))
        if direction == "RIGHT":  # the sign bit fills the word
            out = g.op("Where", g.op("Less", X, out), g.const(-1, dtype), out)
    return [str(g.op("Where", past, out, shifted))]


def Mod(g: Emitter, A: str, B: str, *, fmod: int = 0) -> list[str]:
    """Return [A mod B with B's sign] for floats, from C's fmod: numpy's rules for -0, infinite
    divisors and NaN (TVM's floor-mod formula gets those wrong)."""
    kind = g.types.get(A)
    if fmod or kind not in _FLOATS:
        raise NotLegalizable("TVM's converter takes it")
    dtype = helper.tensor_dtype_to_np_dtype(kind)
    zero = g.const(0, dtype)
    rest = g.op("Mod", A, B, fmod=1)
    b_negative = g.op("Less", B, zero)
    other_sign = g.op("Xor", g.op("Less", rest, zero), b_negative)
    wrap = g.op("And", g.op("Not", g.op("Equal", rest, zero)), other_sign)
    moved = g.op("Where", wrap, g.op("Add", rest, B), rest)
    signed_zero = g.op("Where", b_negative, g.const(-0.0, dtype), zero)
    return [str(g.op("Where", g.op("Equal", moved, zero), signed_zero, moved))]


def Elu(g: Emitter, X: str, *, alpha: float = 1.0) -> list[str]:
    """Return [X > 0 ? X : alpha * (exp(X) - 1)] in X's type (TVM's converter builds the
    constants in float32, and its import of a float16 Elu fails)."""
    kind = g.types.get(X)
    if kind == onnx.TensorProto.FLOAT or kind not in _FLOATS:
        raise NotLegalizable("TVM's converter takes it")
    dtype = helper.tensor_dtype_to_np_dtype(kind)
    below = g.op("Mul", g.const(alpha, dtype), g.op("Sub", g.op("Exp", X), g.const(1, dtype)))
    return [str(g.op("Where", g.op("Greater", X, g.const(0, dtype)), X, below))]


def CumSum(g: Emitter, x: str, axis: str, *, exclusive: int = 0, reverse: int = 0) -> list[str]:
    """Return [the cumulative sum along an axis fed at run time]: the sum along each axis,
    the one asked selected (TVM's converter needs the axis constant). Costs one sum per axis."""
    if axis in g.constants:
        raise NotLegalizable("TVM's converter takes it")
    shape = g.shapes.get(x)
    if not shape:
        raise NotLegalizable("CumSum of unknown rank")
    rank = len(shape)
    kind = g.types.get(axis, onnx.TensorProto.INT64)
    dtype = helper.tensor_dtype_to_np_dtype(kind)
    # -rank..rank-1 to 0..rank-1, then compared as a scalar
    which = g.op("Mod", g.op("Add", axis, g.const(rank, dtype)), g.const(rank, dtype))
    which = g.op("Reshape", which, g.const([], np.int64))
    result = None
    for a in reversed(range(rank)):
        summed = g.op("CumSum", x, g.const(a, dtype), exclusive=exclusive, reverse=reverse)
        if result is None:
            result = summed
            continue
        result = g.op("Where", g.op("Equal", which, g.const(a, dtype)), summed, result)
    return [str(result)]


SEMANTIC_LEGALIZATIONS: dict[str, Callable[..., list[str]]] = {
    "CumSum": CumSum,
    "Elu": Elu,
    "BitShift": BitShift,
    "ConvTranspose": ConvTranspose,
    "Expand": Expand,
    "IsInf": IsInf,
    "Mod": Mod,
    "SpaceToDepth": SpaceToDepth,
}
