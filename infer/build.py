"""Import → check ops → optimize → tvm.compile → export: an ONNX model into an artifact directory."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from infer.artifact.manifest import (
    FALLBACK_DIR,
    LIBRARY_FILE,
    PARAMS_FILE,
    TVM_SEGMENT_DIR,
    ArtifactManifest,
)
from infer.artifact.store import write_refusal
from infer.config import Limits, apply_tvm_thread_environment
from infer.errors import ArtifactError, CompileError, FallbackWarning, UnsupportedOpError
from infer.graph.cleanup import clean
from infer.graph.indices import index_checks
from infer.graph.limits import check_node_count, check_tensor_sizes
from infer.graph.load import LoadedModel
from infer.graph.names import sanitize_value_names
from infer.graph.partition import TVM, Partition, node_key, partition
from infer.graph.shapes import (
    ShapeOverrides,
    apply_shape_overrides,
    graph_inputs,
    graph_outputs,
    inferred_types,
    override_dims,
)
from infer.graph.support import check_supported
from infer.native_stderr import drop_tvm_log_noise
from infer.optimize.pipeline import (
    PIPELINES,
    Pipeline,
    legalize_to_tir,
    lowering_pipeline,
    pipeline_for,
    run_pipeline,
)
from infer.signature import Dim
from infer.target import TargetSpec

__all__ = [
    "BuildOptions",
    "ImportFailure",
    "Stage",
    "build_artifact",
    "prepare_model",
    "tool_versions",
]

# The function LiftTransformParams adds: original weights in, the weights main takes out.
TRANSFORM_PARAMS = "main_transform_params"

# Distinct reasons for a fallback segment kept in the manifest.
MAX_REASONS = 5

Stage = Callable[[str], Any]
"""A progress callback: called with a stage name, returns a context manager timing that stage."""


@dataclass(frozen=True)
class BuildOptions:
    """What to build: target, shape overrides, pass pipeline, and where to dump IR."""

    target: TargetSpec
    shape_overrides: dict[str, tuple[Dim, ...]]
    pipeline: Pipeline
    dump_ir: Path | None = None
    # A snapshot of a tuning database (optimize/tuning.py) whose schedules the compile applies.
    tuning_database: Path | None = None
    # What the library's heavy operators compute in (optimize/precision.py's PRECISIONS).
    precision: str = "fp32"
    # How an int8 build's model was quantized (infer.graph.quantize), for the manifest.
    quantization: dict[str, Any] | None = None

    @classmethod
    def make(
        cls,
        target: TargetSpec,
        shape_overrides: ShapeOverrides | None = None,
        dump_ir: Path | None = None,
        pipeline: str | None = None,
        precision: str = "fp32",
    ) -> BuildOptions:
        """Return options with the named pipeline, or the default one for the target;
        CompileError when they cannot compute in precision."""
        shapes = {
            k: override_dims(v, f"shape override for input {k!r}")
            for k, v in (shape_overrides or {}).items()
        }
        if pipeline is None:
            chosen = pipeline_for(target.kind)
        elif pipeline in PIPELINES and PIPELINES[pipeline].target_kind == target.kind:
            chosen = PIPELINES[pipeline]
        else:
            valid = ", ".join(n for n, p in PIPELINES.items() if p.target_kind == target.kind)
            raise CompileError(
                f"pipeline {pipeline!r} does not exist for target {target.kind}; valid: {valid}"
            )
        from infer.optimize.precision import check_precision

        check_precision(precision, target, chosen.offload)
        return cls(target, shapes, chosen, dump_ir, precision=precision)


def tool_versions() -> dict[str, str]:
    """Return the versions that an artifact depends on."""
    import onnxruntime
    import tvm

    from infer._version import __version__

    return {
        "infer": __version__,
        "tvm": tvm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def prepare_model(model: LoadedModel, options: BuildOptions) -> onnx.ModelProto:
    """Return the model with shape overrides applied, every input of known rank."""
    proto = apply_shape_overrides(model.proto, options.shape_overrides)
    graph_inputs(proto.graph)  # every input must have a known rank
    return proto


class ImportFailure(CompileError):
    """TVM's importer failed; node_key names the top-level node it failed on, when known."""

    def __init__(self, message: str, node_key: str | None) -> None:
        super().__init__(message)
        self.node_key = node_key


def _failing_node(exc: BaseException) -> Any:
    """Return the top-level ONNX node TVM's importer was converting when exc was raised."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_construct_nodes" and "node" in frame.f_locals:
            return frame.f_locals["node"]  # the outermost graph's frame comes first
        tb = tb.tb_next
    return None


def _import(proto: onnx.ModelProto, name: str) -> tuple[Any, list[Any]]:
    """Return TVM's import of a cleaned model (Relax module, weights); ImportFailure names the node."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    renamed: dict[str, str] = {}
    prepared = sanitize_value_names(proto, renamed)
    printed = io.StringIO()  # the importer prints the failing op to stdout
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")  # the importer re-runs the checker and warns on shapes
            mod = from_onnx(prepared, keep_params_in_input=True)
    except Exception as exc:
        node = _failing_node(exc)
        match = re.search(r"Error converting operator (\w+)", printed.getvalue())
        if node is not None:
            where = f" on op {node.op_type} (node {node.name or node_key(node)!r})"
        else:
            where = f" on op {match.group(1)}" if match else ""
        symbolic = [s for s in graph_inputs(proto.graph) if not s.is_static]
        hint = ""
        if symbolic:
            listed = ", ".join(f"{s.name} {list(s.shape)}" for s in symbolic)
            hint = f"; inputs with symbolic dims: {listed} - fixing them with --shape may help"
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ImportFailure(
            f"{name}: TVM's ONNX importer failed{where}: {type(exc).__name__}: {message}{hint}",
            renamed.get(node_key(node), node_key(node)) if node is not None else None,
        ) from None
    mod, params = relax.frontend.detach_params(mod)
    return mod, list(params.get("main", []))


@dataclass
class _Compiled:
    """A TVM segment imported, optimized and compiled, held in memory until export."""

    mod: Any
    params: list[Any]
    executable: Any
    # Operators handed to a kernel library, by kind (see optimize/offload.py).
    offloaded: dict[str, int]
    # Kernels whose schedule came from the tuning database.
    tuned_kernels: int = 0
    # 1 when main also got a batch-1 variant (see optimize/specialize.py).
    batch_one: int = 0


def _optimize(
    proto: onnx.ModelProto, name: str, options: BuildOptions, stage: Stage
) -> tuple[Any, list[Any], dict[str, int]]:
    """Return the segment imported and through the pass pipeline, its weights, and the
    operators handed to a kernel library."""
    with stage("import"):
        mod, params = _import(proto, name)
    target = options.target.tvm_target()
    offloaded: dict[str, int] = {}
    with stage("optimize"):
        try:
            mod = run_pipeline(
                mod, options.pipeline, target, options.dump_ir, offloaded, options.precision
            )
        except Exception as exc:
            raise CompileError(
                f"{name}: pass pipeline {options.pipeline.name!r} failed: {exc}"
            ) from None
    return mod, params, offloaded


def _compile_tvm(
    proto: onnx.ModelProto, name: str, options: BuildOptions, stage: Stage
) -> _Compiled:
    mod, params, offloaded = _optimize(proto, name, options, stage)
    target = options.target.tvm_target()
    counts: dict[str, int] = {}
    lowering = lowering_pipeline(options.pipeline, target, options.tuning_database, counts)
    quiet = drop_tvm_log_noise() if options.tuning_database else contextlib.nullcontext()
    with stage(f"compile ({options.target})"), quiet:
        try:
            ex = _compile(mod, target, options, name, lowering)
        except CompileError as exc:
            if not counts.get("batch_one"):
                raise
            # The model compiles without the batch-1 variant (optimize/specialize.py): say so.
            warnings.warn(
                f"{name}: compiled without its batch-1 variant, which failed: {exc}",
                FallbackWarning,
                stacklevel=2,
            )
            counts.clear()
            plain = dataclasses.replace(options.pipeline, batch_one=False)
            lowering = lowering_pipeline(plain, target, options.tuning_database, counts)
            ex = _compile(mod, target, options, name, lowering)
    return _Compiled(
        mod, params, ex, offloaded, counts.get("tuned_kernels", 0), counts.get("batch_one", 0)
    )


def _checked_and_legalized(
    model: LoadedModel, options: BuildOptions, stage: Stage
) -> tuple[onnx.ModelProto, dict[str, Any], onnx.ModelProto]:
    """Return the model with shape overrides, its inferred value types, and the model after
    clean-ups and legalization; each checked against the size caps before it goes further."""
    limits = Limits.current()
    with stage("check ops"):
        proto = prepare_model(model, options)
        types = inferred_types(proto)  # one shape inference for the size cap and index checks
        # Before anything is folded or run: no value known to be past the size cap.
        check_tensor_sizes(proto, types, limits, model.name)
    with stage("legalize"):
        cleaned = clean(proto)
        check_node_count(cleaned, limits, model.name, " after legalization")
    return proto, types, cleaned


def tuning_kernels(model: LoadedModel, options: BuildOptions, stage: Stage) -> list[Any]:
    """Return each TVM segment of model as the compile would lower it: fused TIR kernels, before
    scheduling, without the weight transforms that run once at build (what tuning searches).

    A segment the importer or the pipeline rejects is left out: the compile moves it to ONNX
    Runtime or to another pipeline, where these kernels do not exist.
    """
    import tvm

    _, _, cleaned = _checked_and_legalized(model, options, stage)
    with stage("partition"):
        plan = partition(cleaned, {})
    protos = [cleaned] if plan.single_tvm else [s.model for s in plan.segments if s.kind == TVM]
    target = options.target.tvm_target()
    kernels = []
    for index, segment in enumerate(protos):
        try:
            mod, _, _ = _optimize(segment, f"{model.name} segment {index}", options, stage)
        except CompileError:
            continue
        main = tvm.IRModule(
            {gv: f for gv, f in mod.functions_items() if gv.name_hint != TRANSFORM_PARAMS}
        )
        with target, tvm.transform.PassContext(opt_level=3):
            kernels.append(tvm.transform.Sequential(legalize_to_tir(target))(main))
    return kernels


def _export_tvm(compiled: _Compiled, directory: Path, name: str, stage: Stage) -> list[str]:
    """Write lib.so and params.safetensors into directory; return the weight names main takes."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    with stage("export"):
        directory.mkdir(parents=True, exist_ok=True)
        try:
            with drop_tvm_log_noise():
                compiled.executable.export_library(str(directory / LIBRARY_FILE))
        except Exception as exc:
            refused = write_refusal(str(exc))
            if refused is not None:  # the disk, not the model: no other pipeline would do better
                raise ArtifactError(f"{name}: cannot write {LIBRARY_FILE}: {refused}") from None
            raise CompileError(f"{name}: exporting {LIBRARY_FILE} failed: {exc}") from None
    params = compiled.params
    if any(gv.name_hint == TRANSFORM_PARAMS for gv in compiled.mod.get_global_vars()):
        with stage("transform weights"):
            params = _transform_params(directory / LIBRARY_FILE, params, name)
    from infer.optimize.relax_main import input_params

    main = compiled.mod["main"]
    param_names = [str(p.name) for p in main.params[len(input_params(main)) :]]
    if len(set(param_names)) != len(param_names):
        param_names = [f"p{i}:{n}" for i, n in enumerate(param_names)]
    if len(param_names) != len(params):
        raise CompileError(
            f"{name}: main takes {len(param_names)} weights, the build has {len(params)}"
        )
    try:
        save_file(
            {n: p.numpy() for n, p in zip(param_names, params, strict=True)},
            str(directory / PARAMS_FILE),
        )
    except SafetensorError as exc:  # an I/O error: the OS's refusal is in its text
        raise ArtifactError(
            f"{name}: cannot write {PARAMS_FILE}: {write_refusal(str(exc)) or exc}"
        ) from None
    return param_names


def _plan(
    cleaned: onnx.ModelProto,
    name: str,
    options: BuildOptions,
    stage: Stage,
    fallback: bool,
) -> tuple[Partition | None, list[_Compiled | None]]:
    """Return the partition (None: the whole model on TVM) and each segment compiled for TVM.

    cleaned is the model after clean-ups and legalization.
    With fallback, a node TVM's importer rejects moves to ONNX Runtime and the model is
    partitioned again; so does a segment TVM cannot compile once no other pipeline is left.
    """
    if not fallback:
        return None, [_compile_tvm(cleaned, name, options, stage)]
    forced: dict[str, str] = {}
    while True:
        with stage("partition"):
            plan = partition(cleaned, forced)
        index = 0
        try:
            if plan.single_tvm:  # the whole model, inputs TVM never reads included
                return plan, [_compile_tvm(cleaned, name, options, stage)]
            compiled: list[_Compiled | None] = []
            for index, segment in enumerate(plan.segments):
                if segment.kind != TVM:
                    compiled.append(None)
                    continue
                label = f"{name} segment {index}"
                compiled.append(_compile_tvm(segment.model, label, options, stage))
            return plan, compiled
        except CompileError as exc:
            keys = set(plan.segments[index].node_keys) if plan.segments else set()
            node = getattr(exc, "node_key", None)
            reason = str(exc).split(": ", 1)[-1]  # without the model name
            before = len(forced)
            if node in keys:
                forced[node] = reason
            elif isinstance(exc, ImportFailure) or options.pipeline.fallback is None:
                forced.update(dict.fromkeys(keys, reason))
            else:
                raise  # another pipeline may compile it: the caller retries with that one
            if len(forced) == before:  # nothing left to move to ONNX Runtime
                raise


def build_artifact(
    model: LoadedModel,
    options: BuildOptions,
    out_dir: Path,
    stage: Stage,
    *,
    fallback: bool = True,
) -> ArtifactManifest:
    """Compile model into out_dir (lib.so, params.safetensors, manifest.json without parity).

    With fallback, what TVM cannot take runs on ONNX Runtime: the artifact then holds one
    directory per TVM segment and one .onnx file per ONNX Runtime segment, listed in the
    manifest in execution order.
    """
    apply_tvm_thread_environment()
    started = time.perf_counter()
    proto, types, cleaned = _checked_and_legalized(model, options, stage)
    if not fallback:
        check_supported(cleaned, name=model.name)  # every op without a converter, at once
        refused = partition(cleaned).fallback_ops()  # and those TVM is known to get wrong
        if refused:
            raise UnsupportedOpError(refused, model=model.name)
    plan, compiled = _plan(cleaned, model.name, options, stage, fallback)
    segments: list[dict[str, Any]] = []
    root_params: list[str] = []
    if plan is None or plan.single_tvm:
        assert compiled[0] is not None
        root_params = _export_tvm(compiled[0], out_dir, model.name, stage)
    else:
        for index, (segment, built) in enumerate(zip(plan.segments, compiled, strict=True)):
            entry: dict[str, Any] = {
                "kind": segment.kind,
                "inputs": segment.inputs,
                "outputs": segment.outputs,
                "nodes": segment.node_count,
                "op_types": segment.op_types,
                "flops": segment.flops,
            }
            if built is not None:
                entry["dir"] = f"{TVM_SEGMENT_DIR}{index}"
                entry["params"] = _export_tvm(
                    built, out_dir / entry["dir"], f"{model.name} segment {index}", stage
                )
                entry["output_dtypes"] = segment.output_dtypes()
            else:
                entry["file"] = f"{FALLBACK_DIR}/{index}.onnx"
                (out_dir / FALLBACK_DIR).mkdir(parents=True, exist_ok=True)
                onnx.save(segment.model, str(out_dir / entry["file"]))
                entry["reasons"] = sorted(
                    {plan.reasons[k] for k in segment.node_keys if k in plan.reasons}
                )[:MAX_REASONS]
            segments.append(entry)
    manifest = ArtifactManifest(
        model_name=model.name,
        model_sha256=model.sha256,
        inputs=graph_inputs(proto.graph),
        outputs=graph_outputs(proto.graph),
        target=options.target.to_json(),
        versions=tool_versions(),
        pipeline={
            **options.pipeline.to_json(),
            "offload": _offload_summary(compiled),
            "precision": options.precision,
            **({"quantization": options.quantization} if options.quantization else {}),
            "tuned_kernels": sum(c.tuned_kernels for c in compiled if c is not None),
            "batch_one_variants": sum(c.batch_one for c in compiled if c is not None),
        },
        params=root_params,
        segments=segments,
        node_count=sum(1 for n in cleaned.graph.node if n.op_type != "Constant"),
        index_checks=index_checks(proto, types),
        shape_overrides={k: list(v) for k, v in options.shape_overrides.items()},
        compile_seconds=round(time.perf_counter() - started, 3),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    manifest.hash_files(out_dir)
    manifest.write(out_dir)
    return manifest


def _offload_summary(compiled: list[_Compiled | None]) -> dict[str, Any] | None:
    """Return what the manifest says about library calls: the library, its version, the counts;
    None when everything runs as TVM code (the loader then needs no library)."""
    counts: dict[str, int] = {}
    for built in compiled:
        for key, count in (built.offloaded if built is not None else {}).items():
            counts[key] = counts.get(key, 0) + count
    if not counts:
        return None
    from infer.runtime import onednn

    return {
        "library": "onednn",
        "version": onednn.library_version(),
        **dict(sorted(counts.items())),
    }


def _transform_params(library: Path, params: list[Any], name: str) -> list[Any]:
    """Return the weights main takes: the lifted weight transforms run once, here, on the CPU.

    They run from the exported library: running the in-memory executable would JIT the whole
    module a second time.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    try:
        with drop_tvm_log_noise():
            vm = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        return list(vm[TRANSFORM_PARAMS](params))
    except Exception as exc:
        raise CompileError(f"{name}: transforming the weights failed: {exc}") from None


def _compile(mod: Any, target: Any, options: BuildOptions, name: str, relax_pipeline: Any) -> Any:
    import tvm

    spec = options.target
    previous = None
    if spec.kind == "cuda":
        from infer.cuda_toolchain import ensure_cuda_codegen

        previous = ensure_cuda_codegen(spec.cuda_archs)
    try:
        with target:
            return tvm.relax.build(
                mod,
                target,
                relax_pipeline=relax_pipeline,
                exec_mode=options.pipeline.vm_exec_mode,
            )
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(
            f"{name}: tvm.compile for {spec} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        if previous is not None:
            import tvm_ffi

            tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)
