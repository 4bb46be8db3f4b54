"""Index bounds: no compiled gather reads outside its table.

TVM's `take` (ONNX Gather, embeddings) defaults to mode "fast", which loads whatever address an
index gives: an out-of-range token id fed to an embedding table crashed the process
(SIGSEGV), where ONNX Runtime reports an error. Every `take` here is rewritten to mode "clip"
(after the importer's negative-index normalisation, an index beyond the table reads its last
row): one min/max per index, and no run reads outside its buffers whatever the input.
"""

from __future__ import annotations

from typing import Any

from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.relax_main import op_name, replace_main

__all__ = ["clip_take_indices"]

SAFE_MODE = "clip"


@mutator
class _ClipTake(PyExprMutator):  # type: ignore[misc]
    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        if op_name(call) != "relax.take" or str(call.attrs.mode) != "fast":
            return call
        axis = call.attrs.axis
        return relax.op.take(
            call.args[0], call.args[1], None if axis is None else int(axis), SAFE_MODE
        )


def clip_take_indices(mod: Any) -> Any:
    """Return mod with every `take` of main in mode "clip" instead of "fast"."""
    rewrite = _ClipTake(mod)
    return replace_main(mod, rewrite, rewrite.visit_expr(mod["main"]))
