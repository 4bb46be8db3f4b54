"""Named Relax pass pipelines run before tvm.compile, with an IR dump after each pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PIPELINES", "Pipeline", "pipeline_for", "run_pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """A named list of Relax passes; tvm.compile's own lowering pipeline runs after them."""

    name: str
    passes: tuple[str, ...]


def _pass(name: str) -> Callable[[], Any]:
    def make() -> Any:
        from tvm import relax

        return getattr(relax.transform, name)()

    return make


# The pass names are those of tvm.relax.transform; each is applied in order.
# DeadCodeElimination is left out: it rejects graphs with unused inputs (light ResNet-50).
PIPELINES: dict[str, Pipeline] = {
    "cpu-default": Pipeline(
        "cpu-default",
        ("DecomposeOpsForInference", "CanonicalizeBindings", "EliminateCommonSubexpr"),
    ),
    "cuda-default": Pipeline(
        "cuda-default",
        ("DecomposeOpsForInference", "CanonicalizeBindings", "EliminateCommonSubexpr"),
    ),
}


def pipeline_for(target_kind: str) -> Pipeline:
    """Return the default pipeline for a target kind ('llvm' or 'cuda')."""
    return PIPELINES["cuda-default" if target_kind == "cuda" else "cpu-default"]


def run_pipeline(mod: Any, pipeline: Pipeline, target: Any, dump_dir: Path | None = None) -> Any:
    """Return mod after every pass of pipeline, writing the IR after each into dump_dir if given."""
    import tvm

    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / "00-import.py").write_text(mod.script())
    with target, tvm.transform.PassContext(opt_level=3):
        for index, name in enumerate(pipeline.passes, start=1):
            mod = _pass(name)()(mod)
            if dump_dir is not None:
                (dump_dir / f"{index:02d}-{name}.py").write_text(mod.script())
    return mod
