"""What infer's Relax rewrites of `main` share: operator names, its weight parameters, and
putting the rewritten function back."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

__all__ = ["Bindings", "input_params", "op_name", "replace_main", "weight_params"]


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


class Bindings:
    """The bindings of a function's body: values[var] for every plain binding (not match_cast),
    in order, and who reads each var."""

    def __init__(self, func: Any) -> None:
        self.values: dict[Any, Any] = {}
        self.order: list[Any] = []
        self.uses: dict[Any, int] = {}
        self.users: dict[Any, Any] = {}  # var -> the (last) plain binding that reads it
        for block in func.body.blocks:
            for binding in block.bindings:
                plain = isinstance(binding, relax.VarBinding)
                if plain:
                    self.values[binding.var] = binding.value
                    self.order.append(binding.var)
                for var in relax.analysis.free_vars(binding.value):
                    self.uses[var] = self.uses.get(var, 0) + 1
                    if plain:
                        self.users[var] = binding.var
        for var in relax.analysis.free_vars(func.body.body):
            self.uses[var] = self.uses.get(var, 0) + 1

    def sole_user(self, var: Any) -> Any:
        """Return the one binding that reads var, when var is read once and is not a function
        output; else None."""
        if self.uses.get(var) != 1 or not isinstance(var, relax.DataflowVar):
            return None
        return self.users.get(var)
