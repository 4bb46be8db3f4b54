"""The embedded API: compile a model into an artifact, load it, check it against ONNX Runtime."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from infer.artifact.cache import CompileCache, cache_key
from infer.artifact.manifest import ORT_SEGMENT, TVM_SEGMENT, ArtifactManifest, sha256_file
from infer.artifact.store import build_atomically, write_file_atomically
from infer.build import BuildOptions, ImportFailure, build_artifact, tool_versions
from infer.config import available_cpus, cache_dir, default_num_threads
from infer.errors import (
    ArtifactError,
    CompileError,
    FallbackWarning,
    InferError,
    InputError,
    ModelError,
)
from infer.frontends import Converted, DynamicAxes, convert, framework_of
from infer.graph.cleanup import GRAPH_REVISION
from infer.graph.load import LoadedModel, load_model
from infer.graph.quantize import (
    CHECK_SAMPLES,
    Calibration,
    check_calibration,
    load_calibration,
    quantization_record,
    quantize_int8,
)
from infer.graph.shapes import apply_shape_overrides, graph_inputs
from infer.graph.support import iter_nodes
from infer.optimize.pipeline import PIPELINES
from infer.optimize.tuning import DEFAULT_TRIALS, TuningReport
from infer.parity import (
    DEFAULT_SEED,
    QUANTIZING_OPS,
    ParityReport,
    compare_outputs,
    random_feeds,
)
from infer.progress import Progress
from infer.reference import ReferenceFailed, ReferenceSession, SpecReference
from infer.runtime.onednn import CHOICES_FILE
from infer.runtime.session import Session
from infer.signature import TensorSpec
from infer.sources import ModelSource, resolve_model
from infer.target import parse_target

__all__ = ["Artifact", "Tuned", "check", "compile", "load", "load_onnx", "source_model", "tune"]


@dataclass(frozen=True)
class Artifact:
    """A compiled artifact directory and its manifest."""

    path: Path
    manifest: ArtifactManifest
    cache_hit: bool = False

    def load(self, threads: int | None = None) -> Session:
        """Return a Session on this artifact."""
        return Session(self.path, threads=threads)

    @property
    def parity(self) -> dict[str, Any] | None:
        """Return the parity result recorded in the manifest."""
        return self.manifest.parity


def load_onnx(model: ModelSource, progress: Progress | None = None) -> tuple[LoadedModel, Any]:
    """Return (the loaded, checked ONNX model, its recipe or None) for a path, name, bytes or proto."""
    ref = resolve_model(model, progress)
    if ref.kind == "artifact":
        raise ModelError(f"{ref.display}: is a compiled artifact; an ONNX model is needed here")
    loaded = load_model(ref.model)
    if ref.recipe is not None:
        loaded.source = loaded.name = ref.recipe.name
    return loaded, ref.recipe


def _parity(
    proto: onnx.ModelProto,
    artifact_dir: Path,
    threads: int,
    seed: int,
    dims: Mapping[str, int] | None,
    converted: Converted | None = None,
    samples: Sequence[Mapping[str, Any]] = (),
    measure: bool = False,
) -> tuple[ParityReport, ParityReport | None]:
    """Return the artifact's parity against ONNX Runtime, and against the framework when given:
    on seeded random feeds, or on the samples given (each output's results stacked). With
    measure, the run picks each library call's fastest kernel and writes the choices into the
    artifact (the caller hashes the file), so that the kernels checked are those that ship."""
    session = Session(artifact_dir, threads=threads)
    measuring = measure and session._measure_library_kernels()
    reference: ReferenceSession | SpecReference
    try:
        reference = ReferenceSession(proto, threads, spin=False)
        feeds, got, want = _reference_run(session, reference, seed, dims, samples)
    except ReferenceFailed as exc:
        reference = SpecReference(proto, why=str(exc))
        feeds, got, want = _reference_run(session, reference, seed, dims, samples)
    if measuring:
        session._write_library_choices()
    outputs = session.get_outputs()
    quantized = any(n.op_type in QUANTIZING_OPS for n in iter_nodes(proto.graph))
    precision = session.manifest.precision
    report = compare_outputs(outputs, got, want, reference.version, seed, quantized, precision)
    if converted is None or converted.reference is None:
        return report, None
    own = converted.reference(feeds)
    label = f"{converted.provenance['framework']} {converted.provenance['version']}"
    return report, compare_outputs(outputs, got, own, label, seed, precision=precision)


def _reference_run(
    session: Session,
    reference: ReferenceSession | SpecReference,
    seed: int,
    dims: Mapping[str, int] | None,
    samples: Sequence[Mapping[str, Any]],
) -> tuple[Mapping[str, Any], list[Any], list[Any]]:
    """Return (the feeds, ours, the reference's outputs): of the samples when given, stacked,
    else of seeded random feeds."""
    if samples:
        got, want = _run_samples(session, reference, samples)
        return samples[0], got, want
    feeds = random_feeds(session.get_inputs(), seed=seed, dims=dims)
    want = reference.run(feeds)  # first: feeds the model itself cannot take fail there
    return feeds, session.run(None, feeds), want


def _run_samples(
    session: Session,
    reference: ReferenceSession | SpecReference,
    samples: Sequence[Mapping[str, Any]],
) -> tuple[list[Any], list[Any]]:
    """Return (ours, the reference's) outputs of every sample, stacked along their first axis
    (a batch of classes gives its top-1 agreement per sample)."""
    import numpy as np

    theirs = [reference.run(dict(sample)) for sample in samples]
    ours = [session.run(None, dict(sample)) for sample in samples]
    if len(samples) == 1 or any(np.ndim(value) == 0 for value in ours[0]):
        return ours[0], theirs[0]  # scalars do not stack: the first sample only
    outputs = range(len(ours[0]))
    return (
        [np.concatenate([run[i] for run in ours]) for i in outputs],
        [np.concatenate([run[i] for run in theirs]) for i in outputs],
    )


def _check_other_batch(
    loaded: LoadedModel,
    specs: Sequence[TensorSpec],
    artifact_dir: Path,
    threads: int,
    seed: int,
    dims: Mapping[str, int] | None,
    samples: Sequence[Mapping[str, Any]],
    progress: Progress,
) -> dict[str, Any]:
    """Return the parity, at another batch, of a build whose main has a batch-1 variant (see
    optimize/specialize.py), specs its inputs: the first check ran one of its two functions,
    this runs the other.

    The feeds are the first check's with each batched input stacked twice (a batch of 1) or cut
    to its first item. Skipped, and said, when ONNX Runtime cannot run the model at that batch.
    """
    import numpy as np

    batched = {s.name for s in specs if s.is_tensor and s.shape and isinstance(s.shape[0], str)}
    if not batched:  # the batch is of a segment's intermediate tensor: feeds cannot set it
        return {"status": "skipped", "reason": "no input of the model has a symbolic first axis"}
    first = [dict(sample) for sample in samples] or [random_feeds(specs, seed=seed, dims=dims)]

    def rebatched(feeds: dict[str, Any]) -> dict[str, Any]:
        return {
            name: (np.concatenate([value, value]) if len(value) == 1 else value[:1])
            if name in batched
            else value
            for name, value in ((n, np.asarray(v)) for n, v in feeds.items())
        }

    feeds = [rebatched(sample) for sample in first]
    batch = len(next(v for n, v in feeds[0].items() if n in batched))
    try:
        report, _ = _parity(loaded.proto, artifact_dir, threads, seed, dims, None, feeds)
    except ReferenceFailed as exc:
        progress.log(f"parity at batch {batch} skipped: {exc}")
        return {"status": "skipped", "batch": batch, "reason": str(exc)}
    except InferError as exc:
        raise CompileError(
            f"{loaded.name}: the build runs at the checked batch but not at batch {batch}, "
            f"which ONNX Runtime runs: {exc}"
        ) from None
    report.raise_for_mismatch(f"{loaded.name} at batch {batch}")
    progress.log(f"parity ok at batch {batch} vs {report.reference} ({report.summary()})")
    return {"batch": batch, **report.to_json()}


def _build_with_fallback(
    loaded: LoadedModel,
    options: BuildOptions,
    staged: Path,
    progress: Progress,
    *,
    explicit: bool,
    fallback: bool,
) -> ArtifactManifest:
    """Build with the default pipeline, falling back (out loud) when it cannot compile the model."""
    while True:
        try:
            return build_artifact(loaded, options, staged, progress.stage, fallback=fallback)
        except CompileError as exc:
            next_pipeline = options.pipeline.fallback
            # Once lib.so is written this process may have it loaded, and a rebuild at the same
            # path would be served the old library by the dynamic loader: no fallback then.
            # Nor when the importer failed: that happens before any pipeline runs.
            imported = not isinstance(exc, ImportFailure)
            if explicit or next_pipeline is None or any(staged.iterdir()) or not imported:
                raise
            if options.precision != "fp32" and PIPELINES[next_pipeline].offload is None:
                raise  # the next pipeline cannot compute in the precision asked for
            warnings.warn(
                f"pipeline {options.pipeline.name} cannot compile {loaded.name} ({exc}); "
                f"compiling with {next_pipeline} instead",
                FallbackWarning,
                stacklevel=2,
            )
            options = dataclasses.replace(options, pipeline=PIPELINES[next_pipeline])


def _report_fallback(manifest: ArtifactManifest, name: str) -> None:
    """Say which nodes run on ONNX Runtime instead of TVM, when any do: never silently."""
    nodes, flops, ort_ops = manifest.placement_totals()
    if not nodes[ORT_SEGMENT]:
        return
    total_flops = flops[TVM_SEGMENT] + flops[ORT_SEGMENT]
    share = f", {flops[ORT_SEGMENT] / total_flops:.1%} of the FLOPs" if total_flops else ""
    listed = ", ".join(f"{op} x{n}" for op, n in sorted(ort_ops.items(), key=lambda kv: -kv[1]))
    segments = sum(1 for s in manifest.segments if s["kind"] == ORT_SEGMENT)
    message = (
        f"{name}: {nodes[ORT_SEGMENT]} of {nodes[TVM_SEGMENT] + nodes[ORT_SEGMENT]} nodes{share} "
        f"run on ONNX Runtime ({listed}) in {segments} segment(s); TVM compiles the rest. "
        "Use fallback=False (--no-fallback) to refuse instead"
    )
    warnings.warn(message, FallbackWarning, stacklevel=3)  # the CLI prints it as a warning


def compile(
    model: ModelSource | Any,
    *,
    example_inputs: Any = None,
    dynamic_axes: DynamicAxes | None = None,
    save_onnx: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    target: str | dict[str, Any] | None = "llvm",
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    output: str | os.PathLike[str] | None = None,
    check: bool = True,
    seed: int = DEFAULT_SEED,
    check_dims: Mapping[str, int] | None = None,
    threads: int | None = None,
    dump_ir: str | os.PathLike[str] | None = None,
    pipeline: str | None = None,
    fallback: bool = True,
    tuning: TuningChoice = None,
    precision: str = "fp32",
    calibration: str | os.PathLike[str] | Calibration | None = None,
    progress: Progress | None = None,
) -> Artifact:
    """Return the compiled artifact of model, checked against ONNX Runtime unless check=False.

    model is an .onnx path, a recipe name from models/, bytes or a ModelProto, or a framework's
    model (a torch.nn.Module or ExportedProgram traced on example_inputs, with dynamic_axes
    {input: {axis: name}}; a .pt2 file; a fitted scikit-learn estimator or pipeline, a .skops
    file, a pickle only with trust_pickle; a jit-able JAX function traced on example_inputs; a
    Keras model, .keras file or SavedModel directory): that is exported to ONNX first, the ONNX
    written to save_onnx when given, and the parity check runs the framework too. With output the
    artifact is written there (replacing an older artifact); without, it goes to the compile
    cache and is reused on the next call with the same model, shapes, target and versions.
    What TVM cannot take runs on ONNX Runtime, said in a FallbackWarning; with fallback=False
    that is an UnsupportedOpError (or CompileError) instead. tuning is the folder of a tuning
    database (see `tune`) whose schedules the compile applies; by default the one `tune` wrote
    for this model and target is used when it exists; False uses none. precision "bf16" runs
    the dense convolutions and matmuls on weights in bfloat16 (CPUs with AVX512-BF16 or AMX),
    about twice as fast; the check then holds it to ONNX Runtime's float32 within
    parity.PRECISION_BOUNDS (error share of each output's range, cosine similarity), refuses it
    past them, and reports the cosine and the top-1 agreement of class scores. precision "int8"
    (CPUs with VNNI) has ONNX Runtime's quantizer quantize the inputs of the model's Conv, Gemm
    and MatMul on weights, calibrated on calibration (an .npz of the model's inputs, one sample
    per row, or a list of feeds), and runs them in int8; the check then compares the first
    samples with the float model. A model already quantized (QDQ) runs its dequantized
    convolutions and matmuls in int8 whatever the precision.
    """
    progress = progress or Progress("quiet")
    threads = threads or default_num_threads()
    framework = framework_of(model)
    with progress.stage(f"export from {framework}") if framework else contextlib.nullcontext():
        converted = convert(
            model,
            example_inputs=example_inputs,
            dynamic_axes=dynamic_axes,
            trust_pickle=trust_pickle,
        )
    with progress.stage("load"):
        loaded, recipe = load_onnx(converted.proto if converted else model, progress)
    if converted is not None:
        loaded.name = converted.name
        loaded.source = f"<{framework} {converted.name}>"
    if save_onnx is not None:
        write_file_atomically(Path(save_onnx), loaded.proto.SerializeToString())
        progress.log(f"ONNX model written to {save_onnx}")
        if converted is not None:
            loaded.source = str(save_onnx)  # the manifest's source: `infer check` can find it
    shape_overrides = _shape_overrides(recipe, shapes)
    # The host's core count, not `threads`: a build serves every thread count (and cache key).
    spec = parse_target(target, num_cores=available_cpus())
    options = BuildOptions.make(
        spec, shape_overrides, Path(dump_ir) if dump_ir else None, pipeline, precision
    )
    samples: list[dict[str, Any]] = []
    if precision == "int8":
        samples = _calibration_samples(loaded, calibration, options.shape_overrides)
        options = dataclasses.replace(options, quantization=quantization_record(samples))
    elif calibration is not None:
        raise InputError(f"calibration inputs are for precision int8, not {precision}")
    with contextlib.ExitStack() as scope:
        database, digest = _tuning_snapshot(tuning, loaded, spec.to_json(), scope, progress)
        if database is not None:
            options = dataclasses.replace(options, tuning_database=database)
        return _compile_loaded(
            loaded, options, converted, progress, output=output, check=check, seed=seed,
            check_dims=check_dims, threads=threads, explicit=pipeline is not None,
            fallback=fallback, tuning_digest=digest, samples=samples,
        )  # fmt: skip
    raise AssertionError("unreachable")  # ExitStack may swallow exceptions, for mypy


TuningChoice = str | os.PathLike[str] | bool | None


def _calibration_samples(
    loaded: LoadedModel,
    calibration: str | os.PathLike[str] | Calibration | None,
    shape_overrides: Mapping[str, Sequence[int | str]],
) -> list[dict[str, Any]]:
    """Return the calibration samples of an int8 build, read from an .npz file or given, and
    checked against the model's inputs as compiled (infer.graph.quantize)."""
    compiled = apply_shape_overrides(loaded.proto, shape_overrides) if shape_overrides else None
    inputs = graph_inputs((compiled or loaded.proto).graph)
    if isinstance(calibration, str | os.PathLike):
        samples = load_calibration(calibration, inputs)
    else:
        samples = [dict(sample) for sample in calibration or []]
    return check_calibration(samples, inputs, loaded.name)


def _quantized(loaded: LoadedModel, samples: Calibration, progress: Progress) -> LoadedModel:
    """Return the model quantized to int8 by ONNX Runtime's quantizer, calibrated on samples."""
    with progress.stage(f"quantize to int8 on {len(samples)} calibration samples"):
        proto = quantize_int8(loaded.proto, samples, loaded.name)
    quantized = sum(node.op_type == "QuantizeLinear" for node in proto.graph.node)
    progress.log(f"int8: the inputs of the dense operators quantized ({quantized} tensors)")
    return LoadedModel(proto, loaded.source, loaded.sha256, loaded.name)


def _shape_overrides(
    recipe: Any, shapes: Mapping[str, Sequence[int | str]] | None
) -> dict[str, tuple[int | str, ...]]:
    """Return the recipe's input shapes, overridden by those given."""
    return {
        **(recipe.shapes if recipe else {}),
        **{k: tuple(v) for k, v in (shapes or {}).items()},
    }


def _tuning_snapshot(
    tuning: TuningChoice,
    loaded: LoadedModel,
    target: dict[str, Any],
    scope: contextlib.ExitStack,
    progress: Progress,
) -> tuple[Path | None, str | None]:
    """Return a snapshot of the tuning database to apply (None: none) and its digest."""
    from infer.optimize.tuning import snapshot_database

    if tuning is False:
        return None, None
    if tuning is None or tuning is True:
        folder = CompileCache(cache_dir()).tuning_dir(loaded.sha256, target)
        if not folder.is_dir():
            if tuning is True:
                raise InferError(
                    f"{loaded.name}: no tuning database for target {target.get('kind')}; "
                    f"run `infer tune` first (looked in {folder})"
                )
            return None, None
    else:
        folder = Path(tuning)
    copy = Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="infer-tuning-")))
    digest = snapshot_database(folder, copy)
    if digest is None:
        return None, None
    progress.log(f"tuning database {folder} ({digest[:12]})")
    return copy, digest


def _compile_loaded(
    loaded: LoadedModel,
    options: BuildOptions,
    converted: Converted | None,
    progress: Progress,
    *,
    output: str | os.PathLike[str] | None,
    check: bool,
    seed: int,
    check_dims: Mapping[str, int] | None,
    threads: int,
    explicit: bool,
    fallback: bool,
    tuning_digest: str | None,
    samples: Sequence[Mapping[str, Any]] = (),
) -> Artifact:
    """Build the loaded model with options (into output, or through the cache) and check it;
    an int8 build quantizes the model first, calibrated on samples, and its check runs the
    first of them (CHECK_SAMPLES) against the float model."""
    spec = options.target

    def build_into(staged: Path) -> None:
        built = loaded if options.quantization is None else _quantized(loaded, samples, progress)
        manifest = _build_with_fallback(
            built, options, staged, progress, explicit=explicit, fallback=fallback
        )
        _report_fallback(manifest, loaded.name)
        manifest.tuning_database = tuning_digest
        manifest.frontend = converted.provenance if converted else None
        manifest.model_source = (
            str(Path(loaded.source).resolve()) if Path(loaded.source).is_file() else loaded.source
        )
        if check and spec.kind == "cuda":
            progress.log("parity check skipped: target cuda needs a CUDA device to run (none here)")
            manifest.parity = {
                "status": "skipped",
                "reason": "no CUDA device on the compiling host",
            }
        elif check:
            stage = "check against ONNX Runtime" + (" and the framework" if converted else "")
            with progress.stage(stage):
                proto = loaded.proto  # as in source_model: the model as given
                first = samples[:CHECK_SAMPLES]
                report, own = _parity(
                    proto, staged, threads, seed, check_dims, converted, first, measure=True
                )
                if (staged / CHOICES_FILE).is_file():  # the kernels its run measured
                    manifest.files[CHOICES_FILE] = sha256_file(staged / CHOICES_FILE)
                    manifest.write(staged)  # the check at another batch runs them too
                manifest.parity = report.to_json()
                if own is not None:
                    manifest.parity["framework"] = own.to_json()
                for checked in (report, own):
                    if checked is not None:
                        checked.raise_for_mismatch(loaded.name)
            for checked in (report, own):
                if checked is not None:
                    progress.log(f"parity ok vs {checked.reference} ({checked.summary()})")
            if manifest.pipeline.get("batch_one_variants"):
                with progress.stage("check at another batch"):
                    manifest.parity["other_batch"] = _check_other_batch(
                        loaded, manifest.inputs, staged, threads, seed, check_dims, first, progress
                    )
        else:
            manifest.parity = {"status": "not checked", "reason": "--no-check"}
        manifest.write(staged)

    if output is not None:
        final = Path(output)
        build_atomically(final, build_into)
        return Artifact(final, ArtifactManifest.read(final), cache_hit=False)

    key = cache_key(
        {
            "model_sha256": loaded.sha256,
            "shape_overrides": {k: list(v) for k, v in sorted(options.shape_overrides.items())},
            "target": spec.to_json(),
            "pipeline": options.pipeline.to_json(),
            "graph_revision": GRAPH_REVISION,
            "tuning_database": tuning_digest,
            "precision": options.precision,
            "quantization": options.quantization,
            "check": check,
            "fallback": fallback,
            "versions": tool_versions(),
        }
    )
    cache = CompileCache(cache_dir())
    path, hit = cache.get_or_build(key, build_into)
    if hit:
        progress.log(f"cache hit: {path}")
    return Artifact(path, ArtifactManifest.read(path), cache_hit=hit)


@dataclass(frozen=True)
class Tuned:
    """What `tune` did: the tuning report, and the artifact compiled with its database."""

    report: TuningReport
    artifact: Artifact | None


def tune(
    model: ModelSource,
    *,
    trials: int = DEFAULT_TRIALS,
    time_budget: float | None = None,
    database: str | os.PathLike[str] | None = None,
    target: str | dict[str, Any] | None = "llvm",
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    threads: int | None = None,
    compile_after: bool = True,
    check: bool = True,
    progress: Progress | None = None,
) -> Tuned:
    """Tune the kernels TVM compiles for model (an .onnx path, a recipe name, bytes or a
    ModelProto) on this machine: `trials` MetaSchedule trials per kernel in all, the costliest
    kernels first, until time_budget seconds run out. Each kernel keeps whichever of the tuned
    schedule and infer's fixed one ran faster. The database goes to `database`, by default the
    cache's folder for this model and target, which later compiles apply by themselves; a re-run
    resumes and adds only the missing trials. With compile_after, the model is then compiled
    with the database (through the cache) and checked against ONNX Runtime.
    """
    from infer.build import tuning_kernels
    from infer.optimize.tuning import tune_modules

    progress = progress or Progress("quiet")
    threads = threads or default_num_threads()
    with progress.stage("load"):
        loaded, recipe = load_onnx(model, progress)
    shape_overrides = _shape_overrides(recipe, shapes)
    spec = parse_target(target, num_cores=available_cpus())
    if spec.kind != "llvm":
        raise InferError(
            f"tuning measures kernels on this machine: it needs a CPU (llvm) target, got {spec}"
        )
    options = BuildOptions.make(spec, shape_overrides)
    folder = (
        Path(database)
        if database is not None
        else CompileCache(cache_dir()).tuning_dir(loaded.sha256, spec.to_json())
    )
    kernels = tuning_kernels(loaded, options, progress.stage)
    with progress.stage(f"tune ({trials} trials per kernel, {threads} threads) into {folder}"):
        report = tune_modules(
            kernels,
            spec.tvm_target(),
            folder,
            trials=trials,
            time_budget_s=time_budget,
            threads=threads,
            report=progress.log,
            about={"model": loaded.name, "model_sha256": loaded.sha256, "target": str(spec)},
        )
    artifact = None
    if compile_after:
        artifact = compile(
            model, target=target, shapes=shapes, threads=threads, check=check, tuning=folder,
            progress=progress,
        )  # fmt: skip
    return Tuned(report, artifact)


def load(model: ModelSource, *, threads: int | None = None, **compile_options: Any) -> Session:
    """Return a Session: an artifact directory is loaded; an ONNX model is compiled (cached) first."""
    if isinstance(model, str | os.PathLike) and framework_of(model) is None:
        ref = resolve_model(model, compile_options.get("progress"))
        if ref.kind == "artifact":
            if compile_options:
                raise InferError(
                    f"{model}: is already compiled; compile options {sorted(compile_options)} do not apply"
                )
            return Session(Path(model), threads=threads)
    return compile(model, threads=threads, **compile_options).load(threads=threads)


def reference_file(artifact: str | os.PathLike[str]) -> str:
    """Return the path of the .onnx file the artifact was compiled from, checked against its
    manifest's hash; "" when it was not compiled from a file."""
    source_model(artifact)  # ArtifactError when the file is not the one compiled
    source = Path(ArtifactManifest.read(Path(artifact)).model_source)
    return str(source) if source.suffix == ".onnx" and source.is_file() else ""


def source_model(
    artifact: str | os.PathLike[str],
    model: ModelSource | None = None,
    progress: Progress | None = None,
) -> onnx.ModelProto:
    """Return the ONNX model an artifact was compiled from, as given (the reference's model).

    It is the model recorded in the manifest unless model is given; its sha256 must match.
    Shape overrides are not applied: they only narrow the signature, and ONNX Runtime 1.32
    crashes on some models with fixed shapes that it runs with symbolic ones (silero-vad's).
    """
    path = Path(artifact)
    manifest = ArtifactManifest.read(path)
    source = model if model is not None else manifest.model_source
    if not source:
        raise ArtifactError(f"{path}: the manifest records no source model; pass it with --model")
    try:
        loaded, _ = load_onnx(source, progress)
    except ModelError as exc:
        raise ModelError(f"{exc} (the source model of {path}; pass another with --model)") from None
    if loaded.sha256 != manifest.model_sha256:
        raise ArtifactError(
            f"{path}: field model.sha256 is {manifest.model_sha256[:16]}..., the model {loaded.source} "
            f"has {loaded.sha256[:16]}...; it was compiled from another model"
        )
    return loaded.proto


def check(
    artifact: str | os.PathLike[str],
    *,
    model: ModelSource | None = None,
    seed: int = DEFAULT_SEED,
    check_dims: Mapping[str, int] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ParityReport:
    """Return the parity report of an artifact against ONNX Runtime on its source model."""
    progress = progress or Progress("quiet")
    path = Path(artifact)
    manifest = ArtifactManifest.read(path)
    if manifest.target.get("kind") == "cuda":
        raise CompileError(
            f"{path}: target cuda; the check needs a CUDA device to run the artifact"
        )
    with progress.stage("load source model"):
        proto = source_model(path, model, progress)
    with progress.stage("check against ONNX Runtime"):
        report, _ = _parity(proto, path, threads or default_num_threads(), seed, check_dims)
        return report
