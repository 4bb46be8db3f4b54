"""Named compile pipelines: Relax passes before lowering, then TVM's lowering with our scheduling."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infer.errors import CompileError, FallbackWarning

__all__ = [
    "PIPELINES",
    "Pipeline",
    "legalize_to_tir",
    "lowering_pipeline",
    "pipeline_for",
    "run_pipeline",
    "schedule_rules",
]

# Kept in step with infer.optimize.cpu_schedule.SCHEDULE_REVISION (which imports TVM).
SCHEDULE_REVISION = 16
# Bumped when infer.optimize.offload changes what it hands to the library, or an offloaded build
# what it holds (7: the kernel choices; 9: MIN_PARALLEL_MACS 256 K -> 128 K; 10: bf16 calls
# measured in f32 too); part of cache keys.
OFFLOAD_REVISION = 10
# Bumped when infer.optimize.winograd changes what it builds (2: the padding read in the input
# transform, symbolic height and width); part of cache keys.
WINOGRAD_REVISION = 2


@dataclass(frozen=True)
class Pipeline:
    """A named list of Relax passes, and how TIR is scheduled when tvm.compile lowers the module.

    schedule: "parallel-vectorize" (infer's default CPU schedule for every PrimFunc) or
    "tvm-default" (whatever tvm.compile does for the target: dlight rules on CUDA).
    """

    name: str
    target_kind: str
    passes: tuple[str, ...]
    schedule: str
    # Layouts for ConvertLayout, e.g. {"relax.nn.conv2d": ("NHWC", "HWIO")}.
    layouts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Lift weight-only computations (layout permutes, folded constants) out of main; the build
    # runs them once and ships their results as the artifact's weights.
    lift_params: bool = False
    # The pipeline to retry with when this one cannot compile a model (said out loud).
    fallback: str | None = None
    # The kernel library heavy operators are handed to ("onednn"), see offload.py.
    offload: str | None = None
    # exp, erf, tanh, sigmoid, softmax and GELU left to TVM as vectorizable polynomials
    # (infer.optimize.fast_math) instead of scalar calls to libm.
    fast_math: bool = False
    # A model with a symbolic batch also gets main compiled for batch 1, with a static memory
    # plan, chosen per call (infer.optimize.specialize).
    batch_one: bool = False
    # 3x3 stride-1 float32 convolutions as Winograd F(4x4, 3x3), their products in the kernel
    # library (infer.optimize.winograd); only with offload, and with lift_params (which takes
    # the weights' transform out of main).
    winograd: bool = False
    # How Relax's VM runs main: "bytecode" (an interpreter walks its instructions) or "compiled"
    # (TVM generates main itself as host code that calls the kernels). Compiled drops the
    # interpreter's ~50 ns an instruction: Silero VAD's window, 66 instructions, 20.7 -> 17.1 µs.
    # CUDA builds keep bytecode: compiled ones build here, but no GPU here can run them.
    vm_exec_mode: str = "bytecode"

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in manifests and cache keys."""
        return {
            "name": self.name,
            "passes": list(self.passes),
            "layouts": {op: list(layout) for op, layout in self.layouts},
            "lift_params": self.lift_params,
            "schedule": self.schedule,
            "schedule_revision": SCHEDULE_REVISION if self.schedule == "parallel-vectorize" else 0,
            "offload": self.offload,
            "offload_revision": OFFLOAD_REVISION if self.offload else 0,
            "take_mode": "clip",  # infer.optimize.bounds
            "fast_math": self.fast_math,
            "batch_one": self.batch_one,
            "winograd_revision": WINOGRAD_REVISION if self.winograd else 0,
            "vm_exec_mode": self.vm_exec_mode,
        }


def _pass(name: str) -> Callable[[], Any]:
    def make() -> Any:
        from tvm import relax

        return getattr(relax.transform, name)()

    return make


# The pass names are those of tvm.relax.transform; each is applied in order.
# DeadCodeElimination is left out: it rejects graphs with unused inputs (light ResNet-50).
_PRE_PASSES = ("DecomposeOpsForInference", "CanonicalizeBindings", "EliminateCommonSubexpr")
# NHWC activations with HWIO weights put output channels innermost: every convolution's output
# vector is contiguous and a weight vector is reused across a row of output pixels.
# conv2d_transpose stays NCHW (TVM cannot legalize it in NHWC); transposes go around it.
# 1-d convolutions go NWC too: oneDNN runs NCW ones as im2col GEMMs (gemm:jit), NWC ones with
# brgconv; Silero VAD's STFT convolution took 32 µs NCW and 7 NWC, a window 172 -> 107 µs.
_CONV1D = "relax.nn.conv1d"
_CPU_LAYOUTS = (
    ("relax.nn.conv2d", ("NHWC", "HWIO")),
    (_CONV1D, ("NWC", "WIO")),
    ("relax.nn.conv2d_transpose", ("NCHW", "IOHW")),
)
_CPU_DEFAULT = Pipeline(
    "cpu-default",
    "llvm",
    _PRE_PASSES,
    "parallel-vectorize",
    _CPU_LAYOUTS,
    lift_params=True,
    fallback="cpu-nchw",
    offload="onednn",
    fast_math=True,
    batch_one=True,
    winograd=True,
    vm_exec_mode="compiled",
)
PIPELINES: dict[str, Pipeline] = {
    "cpu-default": _CPU_DEFAULT,
    # The default without Winograd: every convolution direct, as oneDNN computes it.
    "cpu-direct": replace(_CPU_DEFAULT, name="cpu-direct", winograd=False),
    # The same schedule on the model's own layouts, for graphs ConvertLayout cannot rewrite.
    "cpu-nchw": Pipeline(
        "cpu-nchw",
        "llvm",
        _PRE_PASSES,
        "parallel-vectorize",
        lift_params=True,
        fallback="cpu-naive",
        offload="onednn",
        fast_math=True,
        batch_one=True,
        vm_exec_mode="compiled",
    ),
    # TVM's own CPU lowering, which schedules nothing: for comparison and as a fallback.
    "cpu-naive": Pipeline("cpu-naive", "llvm", _PRE_PASSES, "tvm-default"),
    "cuda-default": Pipeline("cuda-default", "cuda", _PRE_PASSES, "tvm-default"),
}


def pipeline_for(target_kind: str) -> Pipeline:
    """Return the default pipeline for a target kind ('llvm' or 'cuda')."""
    return PIPELINES["cuda-default" if target_kind == "cuda" else "cpu-default"]


def run_pipeline(
    mod: Any,
    pipeline: Pipeline,
    target: Any,
    dump_dir: Path | None = None,
    offloaded: dict[str, int] | None = None,
    precision: str = "fp32",
) -> Any:
    """Return mod after every pass of pipeline, writing the IR after each into dump_dir if given;
    the operators handed to a kernel library are counted into offloaded; those on weights
    compute in precision (see offload.py)."""
    import tvm

    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / "00-import.py").write_text(mod.script())
    from tvm import relax

    from infer.optimize.bounds import clip_take_indices

    bounds = tvm.transform.module_pass(
        lambda m, _ctx: clip_take_indices(m), opt_level=0, name="ClipTakeIndices"
    )
    steps: list[tuple[str, Any]] = [("ClipTakeIndices", bounds)]
    steps += [(name, _pass(name)()) for name in pipeline.passes]
    layouts = {op: list(layout) for op, layout in pipeline.layouts}
    if layouts or pipeline.offload:  # quantized models: for ConvertLayout and int8 kernels
        from infer.optimize.canonicalize import spell_quantize

        spell = tvm.transform.module_pass(
            lambda m, _ctx: spell_quantize(m), opt_level=0, name="SpellQuantize"
        )
        steps.append(("SpellQuantize", spell))
    # Only where there is something to convert: ConvertLayout itself fails on some graphs
    # without convolutions (SIGFPE on a 0-d minimum, std::bad_alloc on silero-vad).
    if layouts and _calls_any(mod, set(layouts)):
        from infer.optimize.canonicalize import canonicalize_for_layout

        canonicalize = tvm.transform.module_pass(
            lambda m, _ctx: canonicalize_for_layout(m), opt_level=0, name="CanonicalizeForLayout"
        )
        steps.append(("CanonicalizeForLayout", canonicalize))
        convert = tvm.transform.module_pass(
            lambda m, _ctx: _convert_layout(m, layouts), opt_level=0, name="ConvertLayout"
        )
        steps.append(("ConvertLayout", convert))
    onednn = pipeline.offload == "onednn" and _onednn_ready()
    counts = offloaded if offloaded is not None else {}
    from infer.optimize.precision import has_int8_dot_products

    int8 = onednn and has_int8_dot_products(target)
    if onednn and pipeline.winograd and precision == "fp32":
        from infer.optimize.cpu_schedule import vector_bits
        from infer.optimize.winograd import winograd_convolutions

        bits = vector_bits(target)
        winograd = tvm.transform.module_pass(
            lambda m, _ctx: winograd_convolutions(m, counts, bits, int8),
            opt_level=0,
            name="Winograd",
        )
        steps.append(("Winograd", winograd))
    if pipeline.lift_params:
        steps.append(("LiftTransformParams", relax.transform.LiftTransformParams()))
    if onednn:
        from infer.optimize.offload import offload_to_onednn

        threads = int(target.attrs.get("num-cores", 1) or 1)

        offload = tvm.transform.module_pass(
            lambda m, _ctx: offload_to_onednn(m, counts, precision, int8, threads),
            opt_level=0,
            name="OffloadToOnednn",
        )
        steps.append(("OffloadToOnednn", offload))
    elif precision != "fp32":
        raise CompileError(
            f"precision {precision}: runs in oneDNN's kernels, which pipeline {pipeline.name} "
            "does not call here (is oneDNN installed?)"
        )
    if pipeline.fast_math:
        from infer.optimize.fast_math import fast_math

        polynomials = tvm.transform.module_pass(
            lambda m, _ctx: fast_math(m), opt_level=0, name="FastMath"
        )
        steps.append(("FastMath", polynomials))
    with target, tvm.transform.PassContext(opt_level=3):
        for index, (name, step) in enumerate(steps, start=1):
            mod = step(mod)
            if dump_dir is not None:
                (dump_dir / f"{index:02d}-{name}.py").write_text(mod.script())
    return mod


def _convert_layout(mod: Any, layouts: dict[str, list[str]]) -> Any:
    """Return mod through ConvertLayout; where it fails with 1-d convolutions converted too
    (std::bad_alloc on silero-vad-lstm), with the other operators' layouts only."""
    from tvm import relax

    try:
        return relax.transform.ConvertLayout(layouts)(mod)
    except Exception:
        narrower = {op: layout for op, layout in layouts.items() if op != _CONV1D}
        if len(narrower) == len(layouts):
            raise
        if not _calls_any(mod, set(narrower)):
            return mod
        return relax.transform.ConvertLayout(narrower)(mod)


def _onednn_ready() -> bool:
    """Register the oneDNN kernels (the build runs the module it compiles); say so when the
    library is missing and everything stays in TVM."""
    from infer.runtime import onednn

    if not onednn.available():
        warnings.warn(
            f"oneDNN cannot be loaded (pip install {onednn.LIBRARY}): convolutions and matmuls "
            "compile with TVM's own schedule, which is slower",
            FallbackWarning,
            stacklevel=3,
        )
        return False
    onednn.register()
    return True


def _calls_any(mod: Any, op_names: set[str]) -> bool:
    """Return whether any Relax function of mod calls one of the named operators."""
    from tvm import relax

    found: list[bool] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in op_names:
            found.append(True)

    for function in mod.functions.values():
        if isinstance(function, relax.Function):
            relax.analysis.post_order_visit(function, visit)
    return bool(found)


def legalize_to_tir(target: Any) -> list[Any]:
    """Return the passes that turn the optimized Relax module into fused TIR kernels (TVM's CPU
    legalization with NaN-preserving operators): the kernels that get scheduled, or tuned."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from infer.optimize.nan import NAN_PRESERVING

    return [
        *cpu_generic.library_dispatch_passes(target),
        relax.transform.LegalizeOps(customize_legalize_map=NAN_PRESERVING),
        *cpu_generic.legalize_passes(target)[1:],  # its LegalizeOps without ours
    ]


def schedule_rules() -> list[Any]:
    """Return the dlight rules that schedule every kernel no database scheduled, first that
    applies wins (tuning times the same rules as the fixed schedule a tuned one must beat)."""
    from tvm.s_tir import dlight

    from infer.optimize.cpu_schedule import ParallelVectorize, RowReduction

    return [dlight.cpu.GEMV(), RowReduction(), ParallelVectorize()]


def lowering_pipeline(
    pipeline: Pipeline,
    target: Any,
    database: Path | None = None,
    counts: dict[str, int] | None = None,
) -> Any:
    """Return the relax_pipeline for tvm.compile: TVM's CPU lowering with our schedule rule
    inserted; kernels found in the tuning database (a folder, see tuning.py) take its schedule
    instead. Into counts go "tuned_kernels" (those scheduled from the database) and "batch_one"
    (1 when main got a batch-1 variant)."""
    if pipeline.schedule == "tvm-default":
        return "default"
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight

    counted = counts if counts is not None else {}

    def count_tuned(mod: Any, _ctx: Any) -> Any:
        counted["tuned_kernels"] = counted.get("tuned_kernels", 0) + sum(
            1
            for func in mod.functions.values()
            if isinstance(func, tvm.tirx.PrimFunc)
            and func.attrs is not None
            and func.attrs.get("tirx.is_scheduled", False)
        )
        return mod

    def batch_one(mod: Any, _ctx: Any) -> Any:
        from infer.optimize.specialize import specialize_batch_one

        return specialize_batch_one(mod, counted)

    @tvm.transform.module_pass(opt_level=0)  # type: ignore[untyped-decorator]
    def lower(mod: Any, _ctx: Any) -> Any:
        with target:
            passes = legalize_to_tir(target)
            if database is not None:
                passes += [
                    relax.transform.MetaScheduleApplyDatabase(str(database)),
                    tvm.transform.module_pass(count_tuned, opt_level=0, name="CountTuned"),
                ]
            passes.append(dlight.ApplyDefaultSchedule(*schedule_rules()))
            if pipeline.batch_one:  # after fusion: both functions call the same kernels
                passes.append(tvm.transform.module_pass(batch_one, opt_level=0, name="BatchOne"))
            passes += [
                *cpu_generic.dataflow_lower_passes(target),
                *cpu_generic.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return lower
