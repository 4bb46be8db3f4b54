"""A batch-1 copy of main beside the general one, and main choosing between them per call.

With a symbolic batch, TVM's memory planner (StaticPlanBlockMemory) cannot share storage
between tensors of unknown sizes: every intermediate tensor gets a buffer of its own from the
VM's pool. The run's working set then outgrows the caches, and memory-bound layers read cold
data (EfficientNet-Lite0's 112x112x96 depthwise convolution: 61 µs hot, 243 µs in the model).
With the batch bound to 1, the plan is static: tensors whose lifetimes do not overlap share
storage, and the model runs ~8% faster (EfficientNet-Lite0: 10.3-12.8 -> 9.6-10.2 ms at 1
thread). The kernels stay shared: only the Relax function is copied, so the compile barely grows.

This runs in the lowering pipeline after the kernels are fused and scheduled, before the memory
is planned.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, tirx
from tvm.relax.utils import copy_with_new_vars

from infer.optimize.relax_main import input_params

__all__ = ["ANY_BATCH", "BATCH_ONE", "batch_dim", "specialize_batch_one"]

# The functions main dispatches to (their names in the compiled library).
BATCH_ONE = "main_batch_one"
ANY_BATCH = "main_any_batch"


def batch_dim(function: Any) -> Any | None:
    """Return the one symbolic dim of function's inputs, when it is their batch: the first axis
    of every input that has it, and no other dim of any input symbolic; else None.

    Only then does binding it make every input's shape static (and the memory plan with it).
    """
    found: set[Any] = set()
    for param in input_params(function):
        info = param.ty
        if not isinstance(info, relax.TensorType):
            if isinstance(info, relax.ShapeType | relax.TupleType):
                return None  # shapes and tuples of tensors: not a plain batched input
            continue
        if not isinstance(info.shape, relax.ShapeExpr):
            return None  # rank or shape unknown
        for axis, dim in enumerate(info.shape.values):
            if isinstance(dim, tirx.IntImm):
                continue
            if axis != 0 or not isinstance(dim, tirx.Var):
                return None
            found.add(dim)
    return next(iter(found)) if len(found) == 1 else None


def specialize_batch_one(mod: Any, counts: dict[str, int] | None = None) -> Any:
    """Return mod with main split in two when its inputs share a symbolic batch: BATCH_ONE (the
    batch bound to 1) and ANY_BATCH (main as it was), and main calling the first when the batch
    is 1, else the second; counts["batch_one"] is incremented (before the split is made, so
    that a compile failing after it knows to retry without). Otherwise mod as it was."""
    main_gv = next((gv for gv in mod.get_global_vars() if gv.name_hint == "main"), None)
    if main_gv is None or not isinstance(mod[main_gv], relax.Function):
        return mod
    main = mod[main_gv]
    batch = batch_dim(main)
    if batch is None:
        return mod
    if counts is not None:  # counted first: a compile failing from here is retried without
        counts["batch_one"] = counts.get("batch_one", 0) + 1
    builder = relax.BlockBuilder(mod)
    one = copy_with_new_vars(main).with_attr("global_symbol", BATCH_ONE)
    one = relax.transform.BindSymbolicVars({batch_dim(one): 1})(tvm.IRModule({BATCH_ONE: one}))
    one_gv = builder.add_func(one[BATCH_ONE], BATCH_ONE)
    any_gv = builder.add_func(
        copy_with_new_vars(main).with_attr("global_symbol", ANY_BATCH), ANY_BATCH
    )
    params = list(main.params)
    choose = relax.If(
        tirx.EQ(batch, tirx.const(1, "int64")),
        relax.Call(one_gv, params),
        relax.Call(any_gv, params),
    )
    body = relax.SeqExpr([], choose)
    dispatch = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs)
    builder.update_func(main_gv, builder.normalize(dispatch))
    return builder.get()
