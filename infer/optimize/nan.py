"""Legalizations that keep NaN where TVM's own lose it.

TVM legalizes relu as max(x, 0), clip as max(min(x, hi), lo), and maximum/minimum as tir
Max/Min, which LLVM lowers to a compare and select: a NaN operand loses the compare and the
other operand comes out. ONNX Runtime (and numpy) propagate NaN through Relu, Clip, Max, Min
and HardSigmoid, so a corrupt input gave a plausible answer instead of NaN. These lower the same
ops as selects that keep NaN, one compare per bound as before; integer ops keep TVM's own.

A select reads its operand more than once: each operand is bound to a variable first (a TIR
Let), so that an operand the schedule inlines (a concatenation of resized maps, say) is
computed once. Without, the clamp of a quantize (a minimum, then a maximum) evaluated PP-OCR
det's fused upsample-and-concatenate nine times per element: that kernel took 18.4 ms, 2.8 with
the operands bound (1 ms in the float32 build, which does not quantize there).

isnan is here too: the same answers as TVM's, as a test of the bits that vectorizes.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, te, tirx, topi

__all__ = ["NAN_PRESERVING"]


def _float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _let(value: Any, dtype: str, body: Any) -> Any:
    """Return body(v) with v bound to value (of dtype), evaluated once however often body
    reads it."""
    if isinstance(value, tirx.FloatImm | tirx.IntImm | tirx.Var):
        return body(value)
    var = tirx.Var("v", dtype)
    return tirx.Let(var, value, body(var))


def _relu(bb: Any, call: Any) -> Any:
    """x < 0 ? 0 : x (NaN < 0 is false: NaN stays)."""

    def compute(x: Any) -> Any:
        zero = tirx.const(0, x.dtype)

        def at(*i: Any) -> Any:
            return _let(x(*i), x.dtype, lambda v: tirx.Select(v < zero, zero, v))

        return te.compute(x.shape, at, "relu")

    return bb.call_te(compute, call.args[0], primfunc_name_hint="relu")


def _clip(bb: Any, call: Any) -> Any:
    """x < lo ? lo : (x > hi ? hi : x)."""
    if not _float(str(call.args[0].ty.dtype)):
        return bb.call_te(topi.clip, *call.args, primfunc_name_hint="clip")

    def compute(x: Any, low: Any, high: Any) -> Any:
        lo, hi = tirx.Cast(x.dtype, low), tirx.Cast(x.dtype, high)

        def at(*i: Any) -> Any:
            def clamp(v: Any) -> Any:
                return tirx.Select(v < lo, lo, tirx.Select(v > hi, hi, v))

            return _let(x(*i), x.dtype, clamp)

        return te.compute(x.shape, at, "clip")

    return bb.call_te(compute, *call.args, primfunc_name_hint="clip")


def _scalar(expr: Any) -> Any:
    """Return a 0-d constant as a tir constant (a simpler kernel), anything else as it is."""
    if isinstance(expr, tvm.ir.GenericConst) and expr.value.numpy().ndim == 0:
        value = expr.value.numpy()
        return tirx.const(value.item(), str(value.dtype))
    return expr


def _broadcast(greater: bool) -> Any:
    """maximum (greater) or minimum of two tensors with NumPy broadcasting, keeping NaN."""

    def legalize(bb: Any, call: Any) -> Any:
        out = call.ty
        if not _float(str(out.dtype)) or not isinstance(out.shape, relax.ShapeExpr):
            return bb.call_te(topi.maximum if greater else topi.minimum, *call.args)
        shape = list(out.shape.values)

        def compute(a: Any, b: Any) -> Any:
            def value(t: Any, index: tuple[Any, ...]) -> Any:
                if not isinstance(t, te.Tensor):
                    return tirx.Cast(out.dtype, t)
                skip = len(index) - len(t.shape)
                return t(
                    *(
                        0 if isinstance(d, tirx.IntImm) and int(d) == 1 else index[skip + k]
                        for k, d in enumerate(t.shape)
                    )
                )

            def pick(x: Any, y: Any) -> Any:
                wins = x > y if greater else x < y
                return tirx.Select(tirx.Or(wins, x != x), x, y)  # x NaN: x; y NaN: y

            def at(*index: Any) -> Any:
                dtype = out.dtype
                return _let(
                    value(a, index),
                    dtype,
                    lambda x: _let(value(b, index), dtype, lambda y: pick(x, y)),
                )

            return te.compute(shape, at, "maximum" if greater else "minimum")

        return bb.call_te(compute, _scalar(call.args[0]), _scalar(call.args[1]))

    return legalize


def _reduction(greater: bool) -> Any:
    """max (greater) or min over axes, from -inf (+inf) and keeping NaN. TVM's own starts
    from the largest finite value: a row of -inf (an attention row fully masked) came out as
    -3.4e38, so that a test for -inf failed and the row's NaN went on."""

    def legalize(bb: Any, call: Any) -> Any:
        x = call.args[0]
        dtype = str(x.ty.dtype)
        axis, keepdims = call.attrs.axis, bool(call.attrs.keepdims)
        if not _float(dtype) or x.ty.ndim < 0:
            reduce = topi.max if greater else topi.min
            axes = None if axis is None else [int(a) for a in axis]
            return bb.call_te(reduce, x, axes, keepdims)
        ndim = x.ty.ndim
        axes = sorted({int(a) % ndim for a in axis} if axis is not None else range(ndim))

        def combine(a: Any, b: Any) -> Any:
            wins = a > b if greater else a < b
            # a NaN: a; b NaN: b. isnan, not a != a: the simplifier folds that to false.
            return tirx.Select(tirx.Or(wins, tirx.isnan(a)), a, b)

        def identity(t: Any) -> Any:
            return tirx.const(float("-inf") if greater else float("inf"), t)

        reducer = te.comm_reducer(combine, identity, name="max" if greater else "min")

        def compute(data: Any) -> Any:
            over = [te.reduce_axis((0, data.shape[a]), name=f"k{a}") for a in axes]
            kept = [a for a in range(ndim) if a not in axes]
            shape = (
                [1 if a in axes else data.shape[a] for a in range(ndim)]
                if keepdims
                else [data.shape[a] for a in kept]
            )

            def at(*index: Any) -> Any:
                position = dict(zip(axes, over, strict=True))
                outer = iter(index if not keepdims else [index[a] for a in kept])
                full = [position[a] if a in position else next(outer) for a in range(ndim)]
                return reducer(data(*full), axis=over)

            return te.compute(shape, at, "max" if greater else "min")

        return bb.call_te(compute, x, primfunc_name_hint="max" if greater else "min")

    return legalize


# The bits of a float32 without its sign, and those of +infinity: a NaN's are greater.
_F32_MAGNITUDE, _F32_INFINITY = 0x7FFFFFFF, 0x7F800000


def _isnan(bb: Any, call: Any) -> Any:
    """isnan of float32 as a test of its bits. TVM's isnan kept a where(isnan(softmax), 0,
    softmax) (PyTorch's attention) from being vectorized: 53 µs over (1, 12, 128, 128) alone
    against 20 for a multiply, and it doubled the fused softmax's time. x != x would not do:
    the simplifier folds it to false."""
    x = call.args[0]
    if str(x.ty.dtype) != "float32":
        return bb.call_te(topi.isnan, x, primfunc_name_hint="isnan")

    def compute(data: Any) -> Any:
        def at(*i: Any) -> Any:
            bits = tirx.reinterpret("int32", data(*i)) & tirx.const(_F32_MAGNITUDE, "int32")
            return bits > tirx.const(_F32_INFINITY, "int32")

        return te.compute(data.shape, at, "isnan")

    return bb.call_te(compute, x, primfunc_name_hint="isnan")


# Passed to LegalizeOps as its customize_legalize_map.
NAN_PRESERVING = {
    "relax.nn.relu": _relu,
    "relax.clip": _clip,
    "relax.maximum": _broadcast(greater=True),
    "relax.minimum": _broadcast(greater=False),
    "relax.max": _reduction(greater=True),
    "relax.min": _reduction(greater=False),
    "relax.isnan": _isnan,
}
