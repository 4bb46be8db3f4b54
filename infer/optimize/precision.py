"""The precision a build computes its heavy operators in: float32 by default, or bf16, which
optimize/offload.py hands to oneDNN's bf16 kernels (the rest of the graph stays float32), and
parity.py checks against a float32 reference within PRECISION_BOUNDS."""

from __future__ import annotations

from typing import Any

from infer.errors import CompileError

__all__ = ["BF16_CPU_FEATURES", "PRECISIONS", "check_precision"]

# What a build may compute its dense convolutions and matmuls on weights in; fp32 is the default.
PRECISIONS = ("fp32", "bf16")
# CPU flags (/proc/cpuinfo names) with bf16 dot products: without one, oneDNN 3.2 has no bf16
# kernel worth running (it emulates, or refuses on AVX2).
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
_LLVM_BF16_FEATURES = ("avx512bf16", "amx-bf16")


def check_precision(precision: str, target: Any, offload: str | None) -> None:
    """Raise CompileError unless a build for target (a TargetSpec) with this kernel-library
    offload can compute in precision."""
    if precision not in PRECISIONS:
        raise CompileError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    if target.kind != "llvm" or offload != "onednn":
        raise CompileError(
            f"precision {precision}: runs in oneDNN's CPU kernels; target {target} with this "
            "pipeline does not call them (use the default CPU pipeline)"
        )
    from tvm.target import codegen

    tvm_target = target.tvm_target()
    if not any(codegen.target_has_features(f, tvm_target) for f in _LLVM_BF16_FEATURES):
        raise CompileError(
            f"precision {precision}: target {target} has no bf16 dot-product instructions "
            f"(needs one of {', '.join(BF16_CPU_FEATURES)}; e.g. -mcpu=znver4 or "
            "sapphirerapids); build fp32 instead"
        )
