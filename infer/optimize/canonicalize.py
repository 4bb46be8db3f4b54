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
  commutes (ConvertLayout takes the layout from the first operand).
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.relax_main import op_name, replace_main, weight_params

__all__ = ["canonicalize_for_layout"]

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
        if name in _COMMUTATIVE and self._fixed(a) and not self._fixed(b):
            return relax.Call(call.op, [b, a], call.attrs)
        return call

    def _fixed(self, expr: Any) -> bool:
        return isinstance(expr, tvm.ir.GenericConst) or expr in self.weights

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


def _static(expr: Any) -> bool:
    shape = expr.ty.shape
    return isinstance(shape, relax.ShapeExpr) and all(
        isinstance(d, tvm.tirx.IntImm) for d in shape.values
    )


def canonicalize_for_layout(mod: Any) -> Any:
    """Return mod with main's clamps as minimum/maximum and broadcast constants at full rank."""
    main = mod["main"]
    rewrite = _Canonicalize(mod, weight_params(main))
    return replace_main(mod, rewrite, relax.analysis.remove_all_unused(rewrite.visit_expr(main)))
