"""What infer's Relax rewrites of `main` share: operator names, its weight parameters, and
putting the rewritten function back."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

__all__ = ["input_params", "op_name", "replace_main", "weight_params"]


def op_name(expr: Any) -> str | None:
    """Return the operator a call applies ('relax.add'), None for anything else."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def input_params(main: Any) -> list[Any]:
    """Return main's model inputs: its first `num_input` parameters, all of them without it."""
    if main.attrs and "num_input" in main.attrs:
        return list(main.params[: int(main.attrs["num_input"])])
    return list(main.params)


def weight_params(main: Any) -> set[Any]:
    """Return main's weight parameters: those after its `num_input` model inputs."""
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else 0
    return set(main.params[num_input:])


def replace_main(mod: Any, rewrite: Any, main: Any) -> Any:
    """Return mod with main replaced, through the builder of the mutator that rewrote it."""
    rewrite.builder_.update_func(mod.get_global_var("main"), main)
    return rewrite.builder_.get()
