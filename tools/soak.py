"""Long runs: does memory stay flat over thousands of runs and hundreds of input shapes?

For each model (an .onnx path, a recipe name or an artifact): compile it (into the cache) in
one process, then in a fresh process load it, warm up, and run it `--runs` times on seeded random
inputs, sampling the resident set size (RSS) every `--every` runs: the RSS is what a process
serving the model holds, nothing of the compiler's. Reported per model: RSS after warm-up and at the end, growth in
percent, and the least-squares slope in KiB per 1,000 runs. With `--shapes N` the symbolic dims
(`--dim NAME`, default every symbolic dim) cycle through 1..N instead, so every run after the
first N repeats a shape: growth past the first cycle is a leak, not a cache filling.

    python tools/soak.py --reference --runs 3000   # the 7 models of tools/bench_reference.py
    python tools/soak.py resnet50-light efficientnet-lite0 --runs 3000
    python tools/soak.py model.onnx --shapes 200 --dim batch --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_WARMUP = 50


def rss_bytes() -> int:
    """Return this process's resident set size now (from /proc, as the kernel counts it)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def soak(
    model: str, runs: int, every: int, shapes: int, dims: list[str], threads: int
) -> dict[str, Any]:
    """Run one model; return its RSS samples and the figures above."""
    import infer
    from infer.parity import random_feeds

    session = infer.load(model, threads=threads)
    symbolic = sorted({d for s in session.get_inputs() for d in s.shape if isinstance(d, str)})
    cycled = [d for d in symbolic if not dims or d in dims]

    def feeds(index: int) -> dict[str, np.ndarray]:
        size = index % shapes + 1 if shapes else 1
        return random_feeds(
            session.get_inputs(),
            seed=index % 7,
            dims={d: size if d in cycled else 1 for d in symbolic},
        )

    cache = [feeds(i) for i in range(min(shapes or 1, runs))]
    for i in range(DEFAULT_WARMUP if not shapes else shapes):
        session.run(None, cache[i % len(cache)])
    samples: list[tuple[int, int]] = [(0, rss_bytes())]
    started = time.perf_counter()
    for i in range(1, runs + 1):
        session.run(None, cache[i % len(cache)])
        if i % every == 0:
            samples.append((i, rss_bytes()))
    seconds = time.perf_counter() - started
    x = np.asarray([s[0] for s in samples], np.float64)
    y = np.asarray([s[1] for s in samples], np.float64)
    slope = float(np.polyfit(x, y, 1)[0]) if len(samples) > 2 else 0.0
    return {
        "model": model,
        "runs": runs,
        "shapes": shapes,
        "cycled_dims": cycled,
        "threads": threads,
        "seconds": round(seconds, 1),
        "rss_after_warmup_mib": round(y[0] / 2**20, 1),
        "rss_end_mib": round(y[-1] / 2**20, 1),
        "rss_max_mib": round(y.max() / 2**20, 1),
        "growth_percent": round(100 * (y.max() - y[0]) / y[0], 2),
        "slope_kib_per_1000_runs": round(slope * 1000 / 1024, 1),
        "samples": samples,
    }


def _compile(model: str) -> None:
    import infer

    if not Path(model).is_dir():
        infer.compile(model)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*")
    parser.add_argument(
        "--reference", action="store_true", help="soak the benchmark's reference set"
    )
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--every", type=int, default=50, help="sample RSS every this many runs")
    parser.add_argument("--shapes", type=int, default=0, help="cycle symbolic dims over 1..N")
    parser.add_argument("--dim", action="append", default=[], help="the symbolic dims to cycle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every model's figures and samples")
    args = parser.parse_args()

    models = list(args.models)
    if args.reference:
        from bench_reference import REFERENCE, model_source  # tools/ is this script's path

        from infer.progress import Progress

        models += [model_source(name, Progress("auto")) for name in REFERENCE]
    if not models:
        parser.error("give models, or --reference")
    context = multiprocessing.get_context("spawn")
    results = []
    print(
        "| model | runs | shapes | RSS after warm-up MiB | max MiB | growth % | KiB / 1000 runs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model in models:
        with context.Pool(1) as pool:  # compiled in a process of its own
            pool.apply(_compile, (model,))
        with context.Pool(1) as pool:
            r = pool.apply(
                soak, (model, args.runs, args.every, args.shapes, args.dim, args.threads)
            )
        results.append(r)
        print(
            f"| {model} | {r['runs']} | {r['shapes'] or 1} | {r['rss_after_warmup_mib']} | "
            f"{r['rss_max_mib']} | {r['growth_percent']} | {r['slope_kib_per_1000_runs']} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
