"""Import → check ops → optimize → tvm.compile → export: an ONNX model into an artifact directory."""

from __future__ import annotations

import contextlib
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

from infer.artifact.manifest import LIBRARY_FILE, PARAMS_FILE, ArtifactManifest
from infer.config import apply_tvm_thread_environment
from infer.errors import CompileError
from infer.graph.cleanup import for_import
from infer.graph.load import LoadedModel
from infer.graph.shapes import ShapeOverrides, apply_shape_overrides, graph_inputs, graph_outputs
from infer.graph.support import check_supported
from infer.native_stderr import drop_tvm_scope_warnings
from infer.optimize.pipeline import (
    PIPELINES,
    Pipeline,
    lowering_pipeline,
    pipeline_for,
    run_pipeline,
)
from infer.target import TargetSpec

__all__ = ["BuildOptions", "Stage", "build_artifact", "prepare_model", "tool_versions"]

# The function LiftTransformParams adds: original weights in, the weights main takes out.
TRANSFORM_PARAMS = "main_transform_params"

Stage = Callable[[str], Any]
"""A progress callback: called with a stage name, returns a context manager timing that stage."""


@dataclass(frozen=True)
class BuildOptions:
    """What to build: target, shape overrides, pass pipeline, and where to dump IR."""

    target: TargetSpec
    shape_overrides: dict[str, tuple[int, ...]]
    pipeline: Pipeline
    dump_ir: Path | None = None

    @classmethod
    def make(
        cls,
        target: TargetSpec,
        shape_overrides: ShapeOverrides | None = None,
        dump_ir: Path | None = None,
        pipeline: str | None = None,
    ) -> BuildOptions:
        """Return options with the named pipeline, or the default one for the target."""
        shapes = {k: tuple(int(d) for d in v) for k, v in (shape_overrides or {}).items()}
        if pipeline is None:
            chosen = pipeline_for(target.kind)
        elif pipeline in PIPELINES and PIPELINES[pipeline].target_kind == target.kind:
            chosen = PIPELINES[pipeline]
        else:
            valid = ", ".join(n for n, p in PIPELINES.items() if p.target_kind == target.kind)
            raise CompileError(
                f"pipeline {pipeline!r} does not exist for target {target.kind}; valid: {valid}"
            )
        return cls(target, shapes, chosen, dump_ir)


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
    """Return the model with shape overrides applied, checked for ops the importer lacks."""
    proto = apply_shape_overrides(model.proto, options.shape_overrides)
    graph_inputs(proto.graph)  # every input must have a known rank
    check_supported(proto, name=model.name)
    return proto


def _import(proto: onnx.ModelProto, name: str) -> tuple[Any, list[Any]]:
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    clean = for_import(proto)
    printed = io.StringIO()  # the importer prints the failing op to stdout
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")  # the importer re-runs the checker and warns on shapes
            mod = from_onnx(clean, keep_params_in_input=True)
    except Exception as exc:
        match = re.search(r"Error converting operator (\w+)", printed.getvalue())
        where = f" on op {match.group(1)}" if match else ""
        symbolic = [s for s in graph_inputs(proto.graph) if not s.is_static]
        hint = ""
        if symbolic:
            listed = ", ".join(f"{s.name} {list(s.shape)}" for s in symbolic)
            hint = f"; inputs with symbolic dims: {listed} - fixing them with --shape may help"
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise CompileError(
            f"{name}: TVM's ONNX importer failed{where}: {type(exc).__name__}: {message}{hint}"
        ) from None
    mod, params = relax.frontend.detach_params(mod)
    return mod, list(params.get("main", []))


def build_artifact(
    model: LoadedModel, options: BuildOptions, out_dir: Path, stage: Stage
) -> ArtifactManifest:
    """Compile model into out_dir (lib.so, params.safetensors, manifest.json without parity)."""
    from safetensors.numpy import save_file

    apply_tvm_thread_environment()
    started = time.perf_counter()
    with stage("check ops"):
        proto = prepare_model(model, options)
    with stage("import"):
        mod, params = _import(proto, model.name)
    target = options.target.tvm_target()
    with stage("optimize"):
        try:
            mod = run_pipeline(mod, options.pipeline, target, options.dump_ir)
        except Exception as exc:
            raise CompileError(
                f"{model.name}: pass pipeline {options.pipeline.name!r} failed: {exc}"
            ) from None
    with stage(f"compile ({options.target})"):
        ex = _compile(
            mod, target, options.target, model.name, lowering_pipeline(options.pipeline, target)
        )
    with stage("export"):
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with drop_tvm_scope_warnings():
                ex.export_library(str(out_dir / LIBRARY_FILE))
        except Exception as exc:
            raise CompileError(f"{model.name}: exporting {LIBRARY_FILE} failed: {exc}") from None
    if any(gv.name_hint == TRANSFORM_PARAMS for gv in mod.get_global_vars()):
        with stage("transform weights"):
            params = _transform_params(out_dir / LIBRARY_FILE, params, model.name)
    main = mod["main"]
    num_input = int(main.attrs["num_input"])
    param_names = [str(p.name) for p in main.params[num_input:]]
    if len(set(param_names)) != len(param_names):
        param_names = [f"p{i}:{n}" for i, n in enumerate(param_names)]
    if len(param_names) != len(params):
        raise CompileError(
            f"{model.name}: main takes {len(param_names)} weights, the build has {len(params)}"
        )
    save_file(
        {n: p.numpy() for n, p in zip(param_names, params, strict=True)}, str(out_dir / PARAMS_FILE)
    )
    manifest = ArtifactManifest(
        model_name=model.name,
        model_sha256=model.sha256,
        inputs=graph_inputs(proto.graph),
        outputs=graph_outputs(proto.graph),
        target=options.target.to_json(),
        versions=tool_versions(),
        pipeline=options.pipeline.to_json(),
        params=param_names,
        shape_overrides={k: list(v) for k, v in options.shape_overrides.items()},
        compile_seconds=round(time.perf_counter() - started, 3),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    manifest.hash_files(out_dir)
    manifest.write(out_dir)
    return manifest


def _transform_params(library: Path, params: list[Any], name: str) -> list[Any]:
    """Return the weights main takes: the lifted weight transforms run once, here, on the CPU.

    They run from the exported library: running the in-memory executable would JIT the whole
    module a second time.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    try:
        with drop_tvm_scope_warnings():
            vm = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        return list(vm[TRANSFORM_PARAMS](params))
    except Exception as exc:
        raise CompileError(f"{name}: transforming the weights failed: {exc}") from None


def _compile(mod: Any, target: Any, spec: TargetSpec, name: str, relax_pipeline: Any) -> Any:
    import tvm

    previous = None
    if spec.kind == "cuda":
        from infer.cuda_toolchain import ensure_cuda_codegen

        previous = ensure_cuda_codegen(spec.cuda_archs)
    try:
        with target:
            return tvm.compile(mod, target, relax_pipeline=relax_pipeline)
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
