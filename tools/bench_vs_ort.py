"""Benchmark compiled models against ONNX Runtime at several thread counts.

Each (model, threads) pair runs in its own `infer run --compare-ort` process; inside it each
runtime gets its own block of runs (warm-up, then `--repeat` timed runs), so neither thread pool
competes with the other. Prints medians and the ratio infer/ONNX Runtime (below 1 = faster).

    python tools/bench_vs_ort.py ppocr-det resnet50-light --threads 1 2 --repeat 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def run_one(
    model: str, threads: int, repeat: int, warmup: int, extra: list[str]
) -> dict[str, object]:
    command = [
        sys.executable, "-m", "infer.cli", "--quiet", "run", model, "--random", "--compare-ort", "--json",
        "--threads", str(threads), "--repeat", str(repeat), "--warmup", str(warmup), *extra,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{model} at {threads} threads failed:\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model names, .onnx files or artifacts")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--extra", default="", help="more options for 'infer run', e.g. '--dim batch=1'"
    )
    args = parser.parse_args()
    print(f"{'model':<24} {'threads':>7} {'infer ms':>10} {'ORT ms':>10} {'ratio':>7}")
    for model in args.models:
        for threads in args.threads:
            r = run_one(model, threads, args.repeat, args.warmup, args.extra.split())
            ours, ort = r["infer"], r["onnxruntime"]
            assert isinstance(ours, dict) and isinstance(ort, dict)
            print(
                f"{model:<24} {threads:>7} {ours['median_ms']:>10.2f} {ort['median_ms']:>10.2f} "
                f"{r['ratio_vs_onnxruntime']:>6.2f}x",
                flush=True,
            )
    print(
        f"median of {args.repeat} runs after {args.warmup} warm-up; same inputs and thread count per row"
    )


if __name__ == "__main__":
    main()
