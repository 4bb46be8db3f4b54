"""The reference set of issue 5, compiled by infer and timed against ONNX Runtime: a markdown table.

Models: ResNet-50 (the onnx wheel's, seeded weights), ResNet-18 and MobileNetV2 (the classic
architectures as transformers implements them, seeded random weights), EfficientNet-Lite0 (real
ImageNet weights), a BERT-base encoder at sequence 128 (seeded random weights), PP-OCRv4 det at
640x640 and Silero VAD (one 512-sample window per call). Each (model, threads) pair runs each
runtime in a process of its own (`infer bench`): same seeded inputs, warm-up, median of --repeat.

    python tools/bench_reference.py                      # default builds, threads 1 and 2
    python tools/bench_reference.py --only bert-base --threads 1 --repeat 50
    python tools/bench_reference.py --markdown docs/benchmarks.md --plot docs/benchmarks.png
    python tools/bench_reference.py --precision bf16     # bf16 builds against ORT's float32
    python tools/bench_reference.py --precision int8     # int8, calibrated on seeded inputs
    python tools/bench_reference.py --tune 64            # tuned builds (infer tune, <= 20 min each)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import onnx

import infer
from infer.api import reference_file
from infer.bench import (
    DEFAULT_REPEAT,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP,
    MIN_SECONDS,
    BenchCell,
    BenchRow,
    bench_row,
    markdown_table,
    plot_rows,
)
from infer.config import cache_dir
from infer.errors import ModelError
from infer.optimize.precision import PRECISIONS
from infer.progress import Progress

SEED = 0
# The bound on tuning a model of the reference set: 20 minutes on these 2 cores.
TUNE_BUDGET_S = 20 * 60
BERT_SEQUENCE = 128
IMAGE = 224


def _seeded_torch() -> object:
    from infer.frontends import require

    torch = require("pytorch")
    torch.manual_seed(SEED)
    return torch


def _export(model: object, example: tuple[object, ...], names: list[str]) -> onnx.ModelProto:
    from infer.frontends.pytorch import convert

    return convert(model, example_inputs=example, input_names=names).proto


def resnet18() -> onnx.ModelProto:
    """ResNet-18 (basic blocks 2-2-2-2, 11.7 M parameters), seeded random weights."""
    torch = _seeded_torch()
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], num_labels=1000
    )
    model = ResNetForImageClassification(config).eval()
    return _export(model, (torch.randn(1, 3, IMAGE, IMAGE),), ["pixel_values"])  # type: ignore[attr-defined]


def mobilenetv2() -> onnx.ModelProto:
    """MobileNetV2 1.0 (3.5 M parameters, symmetric padding as torchvision's), seeded random weights."""
    torch = _seeded_torch()
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    model = MobileNetV2ForImageClassification(
        MobileNetV2Config(num_labels=1000, tf_padding=False)
    ).eval()
    return _export(model, (torch.randn(1, 3, IMAGE, IMAGE),), ["pixel_values"])  # type: ignore[attr-defined]


def bert_base() -> onnx.ModelProto:
    """BERT-base encoder (12 layers, hidden 768, 12 heads), sequence 128, seeded random weights."""
    torch = _seeded_torch()
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(), add_pooling_layer=False).eval()
    ids = torch.randint(0, 30522, (1, BERT_SEQUENCE))  # type: ignore[attr-defined]
    mask = torch.ones(1, BERT_SEQUENCE, dtype=torch.int64)  # type: ignore[attr-defined]
    return _export(model, (ids, mask), ["input_ids", "attention_mask"])


# name -> a recipe name (pulled with pip) or a builder of the ONNX model
REFERENCE: dict[str, str | Callable[[], onnx.ModelProto]] = {
    "resnet50": "resnet50-light",
    "resnet18": resnet18,
    "mobilenetv2": mobilenetv2,
    "efficientnet-lite0": "efficientnet-lite0",
    "bert-base": bert_base,
    "ppocr-det": "ppocr-det",
    "silero-vad": "silero-vad",
}


def model_source(name: str, progress: Progress) -> str:
    """Return what infer.compile takes for the reference model: a recipe name or an .onnx path."""
    source = REFERENCE[name]
    if isinstance(source, str):
        return source
    path = cache_dir() / "bench-models" / f"{name}.onnx"
    if not path.is_file():
        with progress.stage(f"build {name}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            staged = path.with_suffix(".partial")
            onnx.save(source(), staged)
            staged.replace(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(REFERENCE), default=list(REFERENCE))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS)
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS,
        help="processes per runtime and cell, alternating; the ratio is their ratios' median",
    )  # fmt: skip
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    parser.add_argument("--plot", type=Path, default=None, help="a bar chart of the ratios (PNG)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--tune", type=int, default=None, metavar="TRIALS",
        help="tune each model first (infer tune, TRIALS trials per kernel) and time that build",
    )  # fmt: skip
    parser.add_argument(
        "--tune-budget", type=float, default=TUNE_BUDGET_S, metavar="SECONDS",
        help=f"tuning time per model at most (default {TUNE_BUDGET_S:g}: the issue's bound)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.tune is not None and args.precision != "fp32":
        parser.error("--tune times float32 builds: tuning schedules TVM's float32 kernels")
    progress = Progress("auto")
    rows: list[BenchRow] = []
    for name in args.only:
        source = model_source(name, progress)
        try:
            if args.tune is not None:
                with progress.stage(f"tune {name}"):
                    tuned = infer.tune(
                        source, trials=args.tune, time_budget=args.tune_budget,
                        threads=max(args.threads), progress=progress,
                    )  # fmt: skip
                assert tuned.artifact is not None  # compile_after
                artifact = tuned.artifact.path
            else:
                with progress.stage(f"compile {name}"):
                    artifact = infer.compile(
                        source, precision=args.precision, progress=progress,
                        calibration=calibration(source) if args.precision == "int8" else None,
                    ).path  # fmt: skip
        except ModelError as exc:  # int8 of a model without dense operators on weights
            progress.log(f"{name}: skipped in {args.precision}: {exc}")
            continue
        for threads in args.threads:
            cell = BenchCell(
                name, artifact, threads, 1, repeat=args.repeat, warmup=args.warmup,
                min_seconds=args.min_seconds, reference=reference_file(artifact),
            )  # fmt: skip
            rows.append(bench_row(cell, args.rounds, progress))
            progress.log(f"{name}, threads {threads}: {rows[-1].ratio_text()}")
    if not rows:
        sys.exit("nothing was timed")
    ort = rows[0].results["onnxruntime"].version
    builds = "Default builds" if args.precision == "fp32" else f"{args.precision} builds"
    tuning = "no tuning"
    if args.tune is not None:
        builds = "Tuned builds"
        tuning = (
            f"infer tune: {args.tune} trials per kernel, at most {args.tune_budget:g} s per "
            f"model, at {max(args.threads)} threads"
        )
    header = (
        f"{builds} ({tuning}), batch 1, {infer.__version__} vs {ort}, on "
        f"{platform.processor() or platform.machine()} ({_cpu_name()}). Median (p90) of at least "
        f"{args.repeat} runs and {args.min_seconds:g} s after {args.warmup} warm-up; each runtime "
        "in a process of its own (infer's with TVM's runtime library only), over "
        f"{args.rounds} alternating round(s): ms are the median of the rounds' medians; ratio = "
        "infer / ONNX Runtime, the median (range) of the rounds' ratios (below 1: infer is faster)"
        + ("." if args.precision == "fp32" else ", ONNX Runtime in float32.")
    )
    text = f"{header}\n\n{markdown_table(rows)}\n\n{roofline_table(rows, args.precision)}\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.plot:
        plot_rows(rows, args.plot)


CALIBRATION_SAMPLES = 8


def calibration(source: str) -> list[dict[str, object]]:
    """Return the inputs to calibrate an int8 build on: a recipe's real sample image, as
    `infer run --sample` feeds it (a detector's map on noise is near empty, and its check
    meaningless), else seeded random inputs (seeds other than the timed input's), which is what
    the reference set's random-weight models have for data."""
    from infer.api import load_onnx
    from infer.graph.shapes import apply_shape_overrides, graph_inputs
    from infer.parity import random_feeds
    from infer.processors.image import image_to_tensor
    from infer.registry import pull_sample

    loaded, recipe = load_onnx(source)
    proto = apply_shape_overrides(loaded.proto, recipe.shapes) if recipe else loaded.proto
    specs = graph_inputs(proto.graph)
    if recipe and recipe.image_input and recipe.sample and len(specs) == 1:
        image = pull_sample(recipe)
        return [{specs[0].name: image_to_tensor(image, recipe.image_input, specs[0].shape)}]
    return [dict(random_feeds(specs, seed=SEED + 1 + i)) for i in range(CALIBRATION_SAMPLES)]


# The GEMM that measures the ceiling: (n x n) @ (n x n), weights packed once, as the models run.
CEILING_GEMM = 1024
CEILING_RUNS = 10


def gemm_ceiling(precision: str, threads: int) -> float:
    """Return the multiply-adds per second oneDNN reaches on one large GEMM at precision and
    threads: what this CPU can give a compute-bound model (the best of CEILING_RUNS: a shared
    machine's noise only slows a run down; the median read 69.6 GFLOP/s at 1 thread on a Zen 3
    where ResNet-18 ran at 84)."""
    import time

    import numpy as np
    import tvm

    from infer.runtime import onednn

    onednn.register()
    matmul = tvm.get_global_func(onednn.MATMUL)
    n = CEILING_GEMM
    rng = np.random.default_rng(SEED)
    x, w = (tvm.runtime.tensor(rng.standard_normal((n, n), dtype=np.float32)) for _ in "xw")
    # int8 reads a uint8 source with its scale and zero point.
    quant = []
    if precision == "int8":
        x = tvm.runtime.tensor(rng.integers(0, 256, (n, n)).astype(np.uint8))
        quant = [tvm.runtime.tensor(np.array(v, dtype)) for v, dtype in ((0.1, "f4"), (3, "i4"))]
    out = tvm.runtime.tensor(np.zeros((n, n), np.float32))
    config = json.dumps({"weights": True, "post_ops": [], "precision": precision})
    times = []
    with onednn.active(onednn.OnednnState(threads)):
        for run in range(CEILING_RUNS + 2):  # two warm-up runs: packing, first touch
            started = time.perf_counter()
            matmul(x, w, *quant, config, out)
            if run >= 2:
                times.append(time.perf_counter() - started)
    return float(n**3 / min(times))


def model_flops(artifact: Path) -> int:
    """Return the floating-point operations of one batch-1 run of artifact's source model
    (multiply-adds count two; infer.graph.partition.node_flops); 0 for a model with control
    flow, whose branches and loop bodies node_flops does not see into."""
    from infer.api import source_model
    from infer.artifact.manifest import ArtifactManifest
    from infer.bench import cell_dims
    from infer.graph.partition import node_flops
    from infer.graph.shapes import apply_shape_overrides, inferred_types

    specs = ArtifactManifest.read(artifact).inputs
    dims = cell_dims(specs, 1, {})
    shapes = {
        s.name: tuple(dims.get(d, d) if isinstance(d, str) else d for d in s.shape) for s in specs
    }
    proto = apply_shape_overrides(source_model(artifact), shapes)
    if any(node.op_type in ("If", "Loop", "Scan") for node in proto.graph.node):
        return 0
    types = inferred_types(proto)
    return sum(node_flops(node, types) for node in proto.graph.node)


def roofline_table(rows: list[BenchRow], precision: str) -> str:
    """Return a markdown table: each model's FLOPs, the rate infer and ONNX Runtime reach, and
    infer's share of the GEMM ceiling at the same threads and precision."""
    ceilings: dict[tuple[str, int], float] = {}
    flops: dict[Path, int] = {}
    lines = [
        f"Roofline: the ceiling is one {CEILING_GEMM}^3 oneDNN GEMM in {precision} at the same "
        "threads; a multiply-add counts two FLOPs, a convolution those of its direct form "
        "(infer computes 3x3 ones as Winograd F(4x4, 3x3), with a quarter of the "
        "multiplications: its share can pass 100%).",
        "",
        "| model | threads | GFLOP | infer GFLOP/s | ONNX Runtime GFLOP/s | ceiling GFLOP/s | infer share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cell = row.cell
        if cell.artifact not in flops:
            flops[cell.artifact] = model_flops(cell.artifact)
        key = (precision, cell.threads)
        if key not in ceilings:
            ceilings[key] = 2 * gemm_ceiling(precision, cell.threads)
        work = flops[cell.artifact]
        if not work:  # control flow (Silero VAD's If): no count, no rate
            lines.append(f"| {cell.label} | {cell.threads} | - | - | - | - | - |")
            continue
        rates = {
            name: work / (result.latency.median_ms / 1e3) for name, result in row.results.items()
        }
        ours, theirs = rates["infer"], rates["onnxruntime"]
        lines.append(
            f"| {cell.label} | {cell.threads} | {work / 1e9:.2f} | {ours / 1e9:.1f} | "
            f"{theirs / 1e9:.1f} | {ceilings[key] / 1e9:.1f} | {ours / ceilings[key]:.0%} |"
        )
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
