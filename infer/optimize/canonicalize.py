"""Rewrites that let TVM's ConvertLayout keep a whole network in NHWC.

ConvertLayout knows most elementwise operators, but not `where`, nor a binary operator whose
constant operand has fewer dims than the other (a (1,) scale times an NCHW tensor): around
each such operator it transposes back to NCHW and forward again, two passes over the
activations. ppocr-det had 145 such transposes. This pass, run before ConvertLayout:
- turns `where(less(x, c), x, c)` into `minimum(x, c)` and `where(greater(x, c), x, c)` into
  `maximum(x, c)` (the clamps TVM's importer writes for Clip; equal for every number x; a NaN x
  stays NaN through minimum/maximum, as legalized in infer.optimize.nan, as in ONNX Runtime's
  Clip, where the `where` form gave c);
- gives a constant or weight operand of a binary operator the other operand's rank
  (leading dims of 1), which broadcasting leaves equal, and puts it second where the operator
  commutes (ConvertLayout takes the layout from the first operand);

spell_quantize writes quantize and dequantize with one scale and zero point for the whole tensor
(a QDQ model's activations) as the elementwise operators TVM legalizes them into: ConvertLayout
knows those (ResNet-18 quantized by ONNX Runtime had 4 transposes per convolution), and
infer.optimize.offload finds the dequantize before a convolution or matmul in this form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.relax_main import op_name, replace_main, weight_params

__all__ = ["canonicalize_for_layout", "spell_quantize"]

# The integer types quantize and dequantize are spelled out for, and their ranges.
_QUANTIZED = {"uint8": (0, 255), "int8": (-128, 127)}

_CLAMPS = {"relax.less": relax.op.minimum, "relax.greater": relax.op.maximum}
_BINARY = frozenset(
    f"relax.{name}"
    for name in (
        "add", "subtract", "multiply", "divide", "power", "maximum", "minimum",
        "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    )
)  # fmt: skip


_COMMUTATIVE = frozenset(
    f"relax.{name}" for name in ("add", "multiply", "maximum", "minimum", "equal", "not_equal")
)


def _fixed(expr: Any, weights: set[Any]) -> bool:
    """Return whether expr is a constant or a weight: known before the model runs."""
    return isinstance(expr, tvm.ir.GenericConst) or expr in weights


def _rank(expr: Any) -> int | None:
    info = expr.ty
    if isinstance(info, relax.TensorType) and not info.is_missing() and info.ndim >= 0:
        return int(info.ndim)
    return None


@mutator
class _Canonicalize(PyExprMutator):  # type: ignore[misc]
    def __init__(self, mod: Any, weights: set[Any]) -> None:
        super().__init__(mod)
        self.weights = weights

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        name = op_name(call)
        if name == "relax.where":
            return self._clamp(call)
        if name in _BINARY and len(call.args) == 2:
            return self._full_rank(self._constant_second(call, name))
        return call

    def _constant_second(self, call: Any, name: str) -> Any:
        # ConvertLayout takes a binary operator's layout from its first operand: a constant
        # there has none, and the whole operator falls back to NCHW.
        a, b = call.args
        if name in _COMMUTATIVE and _fixed(a, self.weights) and not _fixed(b, self.weights):
            return relax.Call(call.op, [b, a], call.attrs)
        return call

    def _clamp(self, call: Any) -> Any:
        condition, x, c = call.args
        if not isinstance(condition, relax.Var):
            return call
        compare = self.lookup_binding(condition)
        op = _CLAMPS.get(op_name(compare) or "")
        if op is None or not (compare.args[0].same_as(x) and compare.args[1].same_as(c)):
            return call
        clamp = op(x, c)
        return self._full_rank(self._constant_second(clamp, str(clamp.op.name)))

    def _full_rank(self, call: Any) -> Any:
        a, b = call.args
        ra, rb = _rank(self.builder_.normalize(a)), _rank(self.builder_.normalize(b))
        if ra is None or rb is None or ra == rb:
            return call
        low, high = (0, rb) if ra < rb else (1, ra)
        operand = call.args[low]
        if not _static(operand):
            return call
        shape = [int(d) for d in operand.ty.shape.values]
        target = [1] * (high - len(shape)) + shape
        if isinstance(operand, tvm.ir.GenericConst):
            value = operand.value.numpy().reshape(target)
            replaced = relax.const(value, str(value.dtype))
        elif operand in self.weights:
            replaced = relax.op.reshape(operand, target)  # lifted out of main with the weights
        else:
            return call
        args = [replaced, call.args[1]] if low == 0 else [call.args[0], replaced]
        return relax.Call(call.op, args, call.attrs)


@mutator
class _SpellQuantize(PyExprMutator):  # type: ignore[misc]
    def __init__(self, mod: Any, weights: set[Any]) -> None:
        super().__init__(mod)
        self.weights = weights

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        name = op_name(call)
        if name == "relax.quantize":
            return self._quantize(call)
        if name == "relax.dequantize":
            return self._dequantize(call)
        return call

    def _scalar(self, expr: Any, rank: int, dtype: str) -> Any:
        """Return a one-element constant or weight as a tensor of rank dims of 1 in dtype (a
        weight's reshape and cast are lifted out of main with it), else None."""
        if not (_fixed(expr, self.weights) and _static(expr)):
            return None
        if any(int(d) != 1 for d in expr.ty.shape.values):
            return None
        if isinstance(expr, tvm.ir.GenericConst):
            return relax.const(expr.value.numpy().astype(dtype).reshape([1] * rank), dtype)
        value = relax.op.reshape(expr, [1] * rank)
        return value if str(expr.ty.dtype) == dtype else relax.op.astype(value, dtype)

    def _quantize(self, call: Any) -> Any:
        # clip(round(x / scale) + zero point) cast, in float32: TVM's legalization, with the
        # clip as minimum and maximum (ConvertLayout does not know clip).
        x, scale, zero = call.args
        out = str(call.attrs.out_dtype)
        rank = _rank(x)
        if out not in _QUANTIZED or rank is None or str(x.ty.dtype) != "float32":
            return call
        scale, zero = self._scalar(scale, rank, "float32"), self._scalar(zero, rank, "float32")
        if scale is None or zero is None:
            return call
        low, high = (relax.const(np.full([1] * rank, v, "float32")) for v in _QUANTIZED[out])
        shifted = relax.op.add(relax.op.round(relax.op.divide(x, scale)), zero)
        return relax.op.astype(relax.op.maximum(relax.op.minimum(shifted, high), low), out)

    def _dequantize(self, call: Any) -> Any:
        # (x - zero point) in int32, times scale: TVM's legalization.
        x, scale, zero = call.args
        rank = _rank(x)
        if str(x.ty.dtype) not in _QUANTIZED or rank is None:
            return call
        if str(call.attrs.out_dtype) != "float32":
            return call
        scale, zero = self._scalar(scale, rank, "float32"), self._scalar(zero, rank, "int32")
        if scale is None or zero is None:
            return call
        centred = relax.op.subtract(relax.op.astype(x, "int32"), zero)
        return relax.op.multiply(relax.op.astype(centred, "float32"), scale)


def _static(expr: Any) -> bool:
    shape = expr.ty.shape
    return isinstance(shape, relax.ShapeExpr) and all(
        isinstance(d, tvm.tirx.IntImm) for d in shape.values
    )


def _rewrite_main(mod: Any, mutator_class: Any) -> Any:
    main = mod["main"]
    rewrite = mutator_class(mod, weight_params(main))
    return replace_main(mod, rewrite, relax.analysis.remove_all_unused(rewrite.visit_expr(main)))


def canonicalize_for_layout(mod: Any) -> Any:
    """Return mod with main's clamps as minimum/maximum and broadcast constants at full rank."""
    return _rewrite_main(mod, _Canonicalize)


def spell_quantize(mod: Any) -> Any:
    """Return mod with main's per-tensor quantize and dequantize as elementwise operators."""
    return _rewrite_main(mod, _SpellQuantize)
