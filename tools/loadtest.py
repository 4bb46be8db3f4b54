"""Load test of `infer serve` on loopback: throughput and p50/p99 latency per concurrency, with
and without dynamic batching, against the same model on ONNX Runtime behind the same server
(`infer serve --runtime onnxruntime`), as ratios.

Each (runtime, batching) pair gets a server process of its own (`infer serve ARTIFACT --port P
--threads T`); a bounded async client (httpx, one connection per worker) keeps `concurrency`
requests in flight until --requests have been answered, after --warmup untimed ones. The
inputs are seeded random tensors of the model's signature (symbolic dims from --dim, else 1),
sent with the binary tensor extension. Client and server share this machine's cores: the
figures are for the whole loop, as a user on the same host sees them.

    python tools/loadtest.py model.infer --concurrency 1,8,32 --requests 400
    python tools/loadtest.py model.infer --max-batch 8 --max-delay-ms 2 --plot load.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from infer.artifact.manifest import ArtifactManifest
from infer.parity import random_feeds
from infer.serve.protocol import datatype_of

READY_TIMEOUT_S = 300


@dataclass
class LoadResult:
    runtime: str
    max_batch: int
    concurrency: int
    requests: int
    throughput: float  # requests per second
    p50_ms: float
    p99_ms: float
    errors: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _start_server(artifact: str, runtime: str, max_batch: int, args: Any) -> tuple[Any, str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "infer.cli", "serve", artifact, "--port", str(port),
        "--runtime", runtime, "--max-batch", str(max_batch),
        "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "1024",
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise SystemExit(f"infer serve exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("infer serve did not become ready")
        time.sleep(0.2)


def _request(artifact: str, dims: dict[str, int], seed: int) -> tuple[bytes, dict[str, str]]:
    """Return (body, headers) of one binary infer request: the parity check's seeded random
    inputs of the artifact's signature (symbolic dims from dims, else 1 for a batch)."""
    feeds = random_feeds(ArtifactManifest.read(Path(artifact)).inputs, seed, dims)
    tensors = [
        {
            "name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype.name),
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in feeds.items()
    ]  # fmt: skip
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(np.ascontiguousarray(a).tobytes() for a in feeds.values())
    return body, {"Inference-Header-Content-Length": str(len(header))}


async def _drive(
    url: str, model: str, body: bytes, headers: dict[str, str], concurrency: int, total: int,
    warmup: int,
) -> tuple[list[float], float, int]:  # fmt: skip
    """Keep concurrency requests in flight; return (latencies s, wall s, errors) of total."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            response = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            if response.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - started)

        async def worker(count: list[int]) -> None:
            nonlocal sent
            while sent < count[0]:
                sent += 1
                await one()

        await asyncio.gather(*(worker([warmup]) for _ in range(min(concurrency, warmup or 1))))
        latencies.clear()
        sent = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker([total]) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, wall, errors


def run(args: Any) -> list[LoadResult]:
    model = Path(args.artifact).name.removesuffix(".infer")
    results = []
    batches = [1] if args.max_batch <= 1 else [1, args.max_batch]
    for runtime in ("infer", "onnxruntime"):
        for max_batch in batches:
            process, url = _start_server(args.artifact, runtime, max_batch, args)
            try:
                body, headers = _request(args.artifact, args.dims, args.seed)
                for concurrency in args.concurrency:
                    latencies, wall, errors = asyncio.run(
                        _drive(url, model, body, headers, concurrency, args.requests, args.warmup)
                    )
                    ms = np.array(latencies) * 1e3
                    result = LoadResult(
                        runtime, max_batch, concurrency, len(latencies),
                        len(latencies) / wall, float(np.percentile(ms, 50)),
                        float(np.percentile(ms, 99)), errors,
                    )  # fmt: skip
                    results.append(result)
                    print(
                        f"{runtime:11} batch<={max_batch:<3} c={concurrency:<3} "
                        f"{result.throughput:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms  errors {errors}",
                        flush=True,
                    )
            finally:
                process.terminate()
                process.wait(30)
    return results


def _table(results: list[LoadResult]) -> str:
    ort = {(r.max_batch, r.concurrency): r for r in results if r.runtime == "onnxruntime"}
    lines = [
        "| batching | concurrency | infer req/s | p50 ms | p99 ms | ORT req/s | p50 ms | p99 ms "
        "| throughput infer/ORT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.runtime != "infer":
            continue
        o = ort.get((r.max_batch, r.concurrency))
        batching = "off" if r.max_batch == 1 else f"<= {r.max_batch}"
        other = f"{o.throughput:.1f} | {o.p50_ms:.2f} | {o.p99_ms:.2f}" if o else "- | - | -"
        ratio = f"{r.throughput / o.throughput:.2f}x" if o else "-"
        lines.append(
            f"| {batching} | {r.concurrency} | {r.throughput:.1f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {other} | {ratio} |"
        )
    return "\n".join(lines)


def _plot(results: list[LoadResult], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for runtime in ("infer", "onnxruntime"):
        for max_batch in sorted({r.max_batch for r in results}):
            rows = [r for r in results if r.runtime == runtime and r.max_batch == max_batch]
            label = f"{runtime}, batching {'off' if max_batch == 1 else f'<= {max_batch}'}"
            axis.plot(
                [r.concurrency for r in rows], [r.throughput for r in rows], "o-", label=label
            )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent requests")
    axis.set_ylabel("requests / s")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.dims = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    results = run(args)
    print()
    print(_table(results))
    print(
        f"\nthreads per server: {args.threads or 'default'}; client and server on this machine; "
        f"{args.requests} requests per row after {args.warmup} warm-up"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.plot:
        _plot(results, args.plot)


if __name__ == "__main__":
    main()
