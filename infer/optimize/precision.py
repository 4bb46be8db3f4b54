"""The precision a build computes its heavy operators in: float32 by default; bf16, which
optimize/offload.py hands to oneDNN's bf16 kernels (the rest of the graph stays float32); or
int8, where ONNX Runtime's quantizer first writes the model's dense operators in QDQ form
(infer.graph.quantize) and oneDNN's int8 kernels run them. parity.py checks both against a
float32 reference within PRECISION_BOUNDS."""

from __future__ import annotations

from typing import Any

from infer.errors import CompileError

__all__ = [
    "BF16_CPU_FEATURES",
    "INT8_CPU_FEATURES",
    "PRECISIONS",
    "check_precision",
    "has_int8_dot_products",
]

# What a build may compute its dense convolutions and matmuls on weights in; fp32 is the default.
PRECISIONS = ("fp32", "bf16", "int8")
# CPU flags (/proc/cpuinfo names) with bf16 dot products: without one, oneDNN 3.2 has no bf16
# kernel worth running (it emulates, or refuses on AVX2).
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
_LLVM_BF16_FEATURES = ("avx512bf16", "amx-bf16")
# CPU flags with 8-bit dot products (VNNI): without them oneDNN multiplies uint8 by int8 with
# vpmaddubsw, whose int16 sums saturate on weights that use all 8 bits.
INT8_CPU_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")
_LLVM_INT8_FEATURES = ("avx512vnni", "avxvnni", "amx-int8")
_NEEDS = {
    "bf16": (_LLVM_BF16_FEATURES, BF16_CPU_FEATURES, "bf16"),
    "int8": (_LLVM_INT8_FEATURES, INT8_CPU_FEATURES, "8-bit"),
}


def _has_any(target: Any, features: tuple[str, ...]) -> bool:
    from tvm.target import codegen

    return any(codegen.target_has_features(f, target) for f in features)


def has_int8_dot_products(target: Any) -> bool:
    """Return whether a TVM target's CPU has VNNI (where the int8 kernels are exact)."""
    return str(target.kind.name) == "llvm" and _has_any(target, _LLVM_INT8_FEATURES)


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
    llvm_features, cpu_flags, what = _NEEDS[precision]
    if not _has_any(target.tvm_target(), llvm_features):
        raise CompileError(
            f"precision {precision}: target {target} has no {what} dot-product instructions "
            f"(needs one of {', '.join(cpu_flags)}; e.g. -mcpu=znver4 or sapphirerapids); "
            "build fp32 instead"
        )
