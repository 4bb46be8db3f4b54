"""Index bounds: no compiled gather reads, and no compiled scatter writes, outside its buffer.

TVM's `take` (ONNX Gather, embeddings) defaults to mode "fast", which loads whatever address an
index gives: an out-of-range token id fed to an embedding table crashed the process
(SIGSEGV), where ONNX Runtime reports an error. Every `take` here is rewritten to mode "clip"
(after the importer's negative-index normalisation, an index beyond the table reads its last
row): one min/max per index, and no run reads outside its buffers whatever the input.

`scatter_elements`, `scatter_nd`, `gather_elements` and `gather_nd` have no mode: an index of
1e6 fed to ScatterElements wrote past the output and crashed the process. Their indices are
normalised (negative ones count from the end) and clipped into the dims they index, the same
rule as `take`. Where indices come straight from a model input, `Session.run` checks them first
and refuses an out-of-range one with InputError (infer.runtime.feeds), as ONNX Runtime would.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.relax_main import op_name, replace_main

__all__ = ["clip_take_indices"]

SAFE_MODE = "clip"


# Ops indexing their first argument along one axis, and those indexing its leading dims (ND).
_AXIS_INDEXED = ("relax.scatter_elements", "relax.gather_elements")
_ND_INDEXED = ("relax.scatter_nd", "relax.gather_nd")


def _extents(data: Any, dims: list[int], dtype: str) -> Any:
    """Return a 1-d tensor of data's sizes along dims, in dtype (symbolic sizes included)."""
    shape = data.ty.shape.values
    return relax.op.astype(
        relax.op.shape_to_tensor(relax.ShapeExpr([shape[d] for d in dims])), dtype
    )


def _clipped(indices: Any, extents: Any) -> Any:
    """Return indices with negatives counted from the end, then clipped into [0, extent - 1]."""
    dtype = str(indices.ty.dtype)
    zero, one = relax.const(0, dtype), relax.const(1, dtype)
    counted = relax.op.where(relax.op.less(indices, zero), relax.op.add(indices, extents), indices)
    return relax.op.maximum(relax.op.minimum(counted, relax.op.subtract(extents, one)), zero)


@mutator
class _ClipTake(PyExprMutator):  # type: ignore[misc]
    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        name = op_name(call)
        if name == "relax.take" and str(call.attrs.mode) == "fast":
            axis = call.attrs.axis
            return relax.op.take(
                call.args[0], call.args[1], None if axis is None else int(axis), SAFE_MODE
            )
        if name not in _AXIS_INDEXED + _ND_INDEXED:
            return call
        data, indices = call.args[0], call.args[1]
        data_info, index_info = data.ty, indices.ty
        shaped = (
            isinstance(info, relax.TensorType) and isinstance(info.shape, relax.ShapeExpr)
            for info in (data_info, index_info)
        )
        if not all(shaped):
            return call  # shape unknown: left as imported
        dtype = str(index_info.dtype)
        if name in _AXIS_INDEXED:
            axis = int(call.attrs.axis) % int(data_info.ndim)
            extents = _extents(data, [axis], dtype)
        else:
            batch = int(call.attrs.batch_dims) if name == "relax.gather_nd" else 0
            depth = index_info.shape.values[-1]
            if not isinstance(depth, tirx.IntImm):
                return call
            extents = _extents(data, list(range(batch, batch + int(depth))), dtype)
        safe = self.builder_.emit(_clipped(indices, extents))
        return relax.Call(call.op, [data, safe, *call.args[2:]], call.attrs)


def clip_take_indices(mod: Any) -> Any:
    """Return mod with every `take` of main in mode "clip", every scatter/gather's indices clipped."""
    rewrite = _ClipTake(mod)
    return replace_main(mod, rewrite, rewrite.visit_expr(mod["main"]))
