"""Transcendental functions as polynomials that LLVM vectorizes, instead of scalar libm calls.

TVM lowers exp, erf and tanh to LLVM intrinsics that end as one call to libm per element
(`expf`, `erff`): in a quantized MiniLM-L3 those calls were 16% of the run time (perf), the
softmax exps and the GELUs not fused into a library matmul. TVM's own fast variants (topi's
fast_exp, fast_erf, fast_tanh and fast_softmax: range reduction and a polynomial, max relative
error ~1e-7 in float32, exp clamped to +-88.4 as float32's range is) compile to vector code.
TVM's FastMathTransform covers exp, erf, tanh and softmax; this pass adds sigmoid and the GELUs,
whose operators lower to the same intrinsics, and leaves every dtype but float32 alone.
Against ONNX Runtime: NaN and infinities come out the same (erf guarded for NaN); exp
overflows to infinity from 88.38 instead of 88.72, the top 0.4 of float32's exponent range.
"""

from __future__ import annotations

import math
from typing import Any

from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.relax_main import op_name

__all__ = ["fast_math"]

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def _gelu(x: Any) -> Any:
    return topi.multiply(
        topi.multiply(x, 0.5), topi.add(topi.fast_erf(topi.multiply(x, _SQRT_HALF)), 1.0)
    )


def _gelu_tanh(x: Any) -> Any:
    inner = topi.multiply(
        topi.add(x, topi.multiply(topi.multiply(topi.multiply(x, x), x), _GELU_TANH_CUBIC)),
        _SQRT_2_OVER_PI,
    )
    return topi.multiply(topi.multiply(x, 0.5), topi.add(topi.fast_tanh(inner), 1.0))


def _erf(x: Any) -> Any:
    # fast_erf clamps its input with min/max, which turns NaN into +-1.
    return topi.where(topi.isnan(x), x, topi.fast_erf(x))


def _sigmoid(x: Any) -> Any:
    return topi.divide(1.0, topi.add(topi.fast_exp(topi.negative(x)), 1.0))


_UNARY = {
    "relax.exp": topi.fast_exp,
    "relax.erf": _erf,
    "relax.tanh": topi.fast_tanh,
    "relax.sigmoid": _sigmoid,
    "relax.nn.gelu": _gelu,
    "relax.nn.gelu_tanh": _gelu_tanh,
}


@mutator
class _FastMath(PyExprMutator):  # type: ignore[misc]
    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        name = op_name(call)
        if name is None or not _float32(call):
            return call
        if name in _UNARY:
            return self.builder_.call_te(_UNARY[name], call.args[0])
        if name == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis))
        return call


def _float32(call: Any) -> bool:
    info = call.ty
    return isinstance(info, relax.TensorType) and str(info.dtype) == "float32"


def fast_math(mod: Any) -> Any:
    """Return mod with the float32 transcendental operators of its Relax functions as TVM's
    vectorizable polynomials."""
    rewrite = _FastMath(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewrite.builder_.update_func(gv, rewrite.visit_expr(func))
    return rewrite.builder_.get()
