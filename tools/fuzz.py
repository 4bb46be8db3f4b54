"""Fuzz the model loader and compiler for longer than the test suite does.

Every case is a real model (the tests' small models and the Silero VAD files the silero-vad wheel
ships) with one mutation applied under a fresh seed: flipped bytes, truncation, dims of 0/-1/2^40,
wrong attribute types, cycles, dangling inputs, duplicate names, huge Expand/ConstantOfShape/Tile/
Range targets, unknown ops and opsets, dropped nodes, wrong data lengths, external data leaving the
folder. Each case is compiled (parity check included) and run in a worker process; the outcome is
`compiled`, `refused` (a named InferError), or a failure: `error` (another exception), `crash`
(the worker died) or `timeout`.

    python tools/fuzz.py --minutes 10             # a table per mutation, exit 1 on any failure
    python tools/fuzz.py --cases 500 --seed 7 --csv fuzz.csv
"""

from __future__ import annotations

import argparse
import collections
import csv
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzzing import (
    COMPILED,
    CRASH,
    ERROR,
    MUTATIONS,
    REFUSED,
    SEEDS,
    TIMEOUT,
    Worker,
    mutant,
)

KINDS = (COMPILED, REFUSED, ERROR, CRASH, TIMEOUT)
CASE_TIMEOUT_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="stop after this long")
    parser.add_argument("--cases", type=int, default=0, help="stop after this many (0: no limit)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="first rng seed")
    parser.add_argument("--csv", type=Path, help="write one row per case")
    args = parser.parse_args()

    pairs = itertools.cycle(itertools.product(sorted(SEEDS), sorted(MUTATIONS)))
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    worker = Worker()
    started = time.monotonic()
    peak = 0
    try:
        for index in itertools.count():
            if args.cases and index >= args.cases:
                break
            if time.monotonic() - started > args.minutes * 60:
                break
            seed_model, mutation = next(pairs)
            seed = args.seed + index
            outcome = worker.run(mutant(seed_model, mutation, seed), CASE_TIMEOUT_S)
            counts[mutation][outcome.kind] += 1
            peak = max(peak, outcome.peak_rss_bytes)
            rows.append(
                {
                    "model": seed_model,
                    "mutation": mutation,
                    "seed": seed,
                    "outcome": outcome.kind,
                    "seconds": round(outcome.seconds, 3),
                    "detail": outcome.detail[:300],
                }
            )
            if outcome.kind not in (COMPILED, REFUSED):
                failures.append(f"{seed_model} / {mutation} / seed {seed}: {outcome.detail}")
            if (index + 1) % 100 == 0:
                print(f"  {index + 1} cases, {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        worker.close()

    total = collections.Counter[str]()
    print(f"| mutation | cases | {' | '.join(KINDS)} |")
    print("|---|---:|" + "---:|" * len(KINDS))
    for mutation in sorted(counts):
        row = counts[mutation]
        total.update(row)
        cells = " | ".join(str(row[k]) for k in KINDS)
        print(f"| {mutation} | {sum(row.values())} | {cells} |")
    cells = " | ".join(str(total[k]) for k in KINDS)
    print(f"| **all** | {sum(total.values())} | {cells} |")
    print(
        f"\n{sum(total.values())} cases in {time.monotonic() - started:.0f} s from seed "
        f"{args.seed}; worker peak RSS {peak / (1 << 20):.0f} MiB"
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
            writer.writeheader()
            writer.writerows(rows)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
