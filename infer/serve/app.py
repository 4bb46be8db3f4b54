"""The HTTP server: KServe v2 REST routes for compiled models, pipeline routes, Prometheus metrics.

Models are the artifacts given at start-up (no route loads anything from a path a client
names). Each model has a ModelWorker (bounded queue, dynamic batching, one worker thread);
each pipeline one worker thread and the same bound. Errors are {"error": "..."} with the
status that says why: 400 bad input (Session's own messages), 404 unknown model or pipeline,
413 body too large, 503 queue full, 504 past the per-request timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from infer._version import __version__
from infer.artifact.manifest import MANIFEST_FILE
from infer.errors import InferError, InputError, PipelineError
from infer.pipelines.base import PIPELINE_FILE, jsonable, read_pipeline_config
from infer.runtime.feeds import check_feeds
from infer.runtime.session import Session
from infer.serve.batching import ModelWorker, Overloaded, batch_dim
from infer.serve.protocol import BINARY_HEADER, datatype_of, decode_request, encode_response

__all__ = ["ServeOptions", "Served", "create_app", "load_served", "require_serving"]

ARTIFACT_SUFFIX = ".infer"
RUNTIMES = ("infer", "onnxruntime")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ServeOptions:
    """The server's limits and batching."""

    max_batch: int = 1  # rows merged into one run; 1: no batching
    max_delay_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting per model or pipeline; more get 503
    timeout_s: float = 60.0  # per request, queueing included; past it 504
    max_body_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_body_bytes < 1:
            raise InputError("max_batch, max_queue and max_body_bytes must be >= 1")
        if self.max_delay_ms < 0 or self.timeout_s <= 0:
            raise InputError("max_delay_ms must be >= 0 and timeout_s > 0")


@dataclass
class Served:
    """What the server serves: sessions by model name, pipelines by name."""

    models: dict[str, Any]  # Session, or SessionOnOnnxRuntime
    pipelines: dict[str, Any]


def _name(path: Path) -> str:
    return path.name.removesuffix(ARTIFACT_SUFFIX) or path.name


def load_served(
    paths: Sequence[str | Path], threads: int | None = None, runtime: str = "infer"
) -> Served:
    """Load artifacts (a model route each; with a pipeline.json, a pipeline route too) and
    pipeline bundles (OCR, Whisper: a pipeline route) from paths. With runtime "onnxruntime",
    each artifact's source model runs on ONNX Runtime instead (to compare, behind the same
    server)."""
    from infer.config import default_num_threads
    from infer.pipelines import get_task, pipeline
    from infer.reference import SessionOnOnnxRuntime

    if runtime not in RUNTIMES:
        raise InputError(f"runtime {runtime!r}, expected one of {', '.join(RUNTIMES)}")
    served = Served({}, {})
    for given in paths:
        path = Path(given)
        name = _name(path)
        if name in served.models or name in served.pipelines:
            raise InputError(f"{path}: a second model named {name!r}; rename one directory")
        stored = read_pipeline_config(path) if path.is_dir() else None
        if (path / MANIFEST_FILE).is_file():
            session: Any = Session(path, threads=threads)
            if runtime == "onnxruntime":
                session = SessionOnOnnxRuntime(session, threads or default_num_threads())
            served.models[name] = session
            if stored is not None:
                task = get_task(stored["task"])
                served.pipelines[name] = task(session, task.make_config(None, stored))
        elif stored is not None:
            if runtime != "infer":
                raise InputError(f"{path}: a pipeline bundle is served by infer's runtime only")
            served.pipelines[name] = pipeline(stored["task"], model=str(path), threads=threads)
        else:
            raise InputError(
                f"{path}: not an artifact ({MANIFEST_FILE}) or a pipeline bundle ({PIPELINE_FILE})"
            )
    if not served.models and not served.pipelines:
        raise InputError("nothing to serve: give artifact or bundle directories")
    return served


class _Metrics:
    """Prometheus metrics in a registry of the app's own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "infer_requests", "Requests by route kind, model and status.",
            ["kind", "model", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "infer_request_seconds", "Request latency, queueing included.", ["kind", "model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch = Histogram(
            "infer_batch_requests", "Requests merged into each run.", ["model"],
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "infer_queue_seconds", "Time from arrival to the start of its run.", ["model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "infer_queue_depth", "Requests waiting.", ["model"], registry=self.registry
        )

    def observe_run(self, model: str, batch: int, waited: float) -> None:
        self.batch.labels(model).observe(batch)
        self.queue_wait.labels(model).observe(waited)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status(exc: BaseException) -> int:
    if isinstance(exc, _HttpError):
        return exc.status
    if isinstance(exc, Overloaded):
        return 503
    if isinstance(exc, TimeoutError):
        return 504
    if isinstance(exc, InputError | PipelineError):
        return 400
    return 500


async def _body(request: Any, limit: int) -> bytes:
    """Return the request body; 413 as soon as it passes limit bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, f"the body is over the limit of {limit} bytes ({declared} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _tensor_meta(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": datatype_of(spec.dtype),
        "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
    }


def require_serving() -> None:
    """InferError naming the extra to install when the server's libraries are missing."""
    import importlib

    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise InferError(f"infer serve needs {module}: pip install 'infer[serve]'") from None


def create_app(served: Served, options: ServeOptions | None = None) -> Any:
    """Return the Starlette app serving served with options."""
    require_serving()
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    options = options or ServeOptions()
    metrics = _Metrics()
    workers: dict[str, ModelWorker] = {}
    for name, session in served.models.items():
        workers[name] = ModelWorker(
            name,
            partial(session.run, None),
            batch_dim(session.get_inputs(), session.get_outputs()) is not None,
            options.max_batch, options.max_delay_ms / 1e3, options.max_queue, metrics.observe_run,
        )  # fmt: skip
    pipeline_threads = {
        name: ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}") for name in served.pipelines
    }
    in_flight = dict.fromkeys(served.pipelines, 0)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        for worker in workers.values():
            worker.start()
        state["ready"] = True
        yield
        state["ready"] = False
        for worker in workers.values():
            await worker.stop()
        for executor in pipeline_threads.values():
            executor.shutdown(wait=True)

    def error(exc: BaseException) -> JSONResponse:
        message = str(exc) if not isinstance(exc, TimeoutError) else (
            f"no answer within the {options.timeout_s:g} s per-request timeout"
        )  # fmt: skip
        return JSONResponse({"error": message}, status_code=_status(exc))

    async def timed(kind: str, model: str, handle: Any) -> Response:
        started = time.perf_counter()
        try:
            response: Response = await asyncio.wait_for(handle(), options.timeout_s)
        except (InferError, _HttpError, TimeoutError) as exc:
            response = error(exc)
        except Exception as exc:  # a bug or a library's failure: said, and the server stays up
            response = JSONResponse(
                {"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
            )
        metrics.requests.labels(kind, model, str(response.status_code)).inc()
        metrics.latency.labels(kind, model).observe(time.perf_counter() - started)
        if model in workers:
            metrics.queue_depth.labels(model).set(workers[model].depth)
        return response

    def session_of(request: Request) -> tuple[str, Any]:
        name = request.path_params["name"]
        if name not in served.models:
            known = ", ".join(sorted(served.models)) or "none"
            raise _HttpError(404, f"no model named {name!r}; served: {known}")
        return name, served.models[name]

    async def live(_request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_request: Request) -> Response:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def server_metadata(_request: Request) -> Response:
        return JSONResponse(
            {"name": "infer", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def model_metadata(request: Request) -> Response:
        try:
            name, session = session_of(request)
        except _HttpError as exc:
            return error(exc)
        return JSONResponse(
            {
                "name": name,
                "versions": ["1"],
                "platform": getattr(
                    session, "platform", f"infer-{session.manifest.target.get('kind', 'llvm')}"
                ),
                "inputs": [_tensor_meta(s) for s in session.get_inputs()],
                "outputs": [_tensor_meta(s) for s in session.get_outputs()],
            }
        )

    async def model_ready(request: Request) -> Response:
        try:
            name, _ = session_of(request)
        except _HttpError as exc:
            return error(exc)
        return JSONResponse({"name": name, "ready": state["ready"]})

    async def model_infer(request: Request) -> Response:
        name = request.path_params["name"]

        async def handle() -> Response:
            _, session = session_of(request)
            body = await _body(request, options.max_body_bytes)
            decoded = decode_request(body, request.headers.get(BINARY_HEADER))
            specs = session.get_inputs()
            arrays = check_feeds(specs, decoded.inputs)
            feeds = {s.name: a for s, a in zip(specs, arrays, strict=True)}
            outputs = await workers[name].infer(feeds)
            names = [s.name for s in session.get_outputs()]
            if decoded.outputs is not None:
                unknown = [n for n in decoded.outputs if n not in names]
                if unknown:
                    raise InputError(f"unknown output(s) {unknown}; the model's are {names}")
                picked = [names.index(n) for n in decoded.outputs]
                names, outputs = [names[i] for i in picked], [outputs[i] for i in picked]
            data, json_length = encode_response(name, decoded, names, outputs)
            if json_length is None:
                return Response(data, media_type="application/json")
            return Response(
                data,
                media_type="application/octet-stream",
                headers={BINARY_HEADER: str(json_length)},
            )

        return await timed("model", name, handle)

    async def pipelines(_request: Request) -> Response:
        return JSONResponse({name: pipe.task for name, pipe in served.pipelines.items()})

    async def pipeline_run(request: Request) -> Response:
        name = request.path_params["name"]

        async def handle() -> Response:
            if name not in served.pipelines:
                known = ", ".join(sorted(served.pipelines)) or "none"
                raise _HttpError(404, f"no pipeline named {name!r}; served: {known}")
            pipe = served.pipelines[name]
            body = await _body(request, options.max_body_bytes)
            parameters: dict[str, Any] = {}
            for key, text in request.query_params.items():
                try:
                    parameters[key] = json.loads(text)
                except json.JSONDecodeError:
                    parameters[key] = text
            if type(pipe).input_kind == "text":
                try:
                    payload = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InputError(f"a text task takes JSON: {exc}") from None
                if not isinstance(payload, dict) or not isinstance(
                    payload.get("inputs"), str | list
                ):
                    raise InputError('a text task takes {"inputs": "text" or ["text", ...]}')
                item: Any = payload["inputs"]
                parameters.update(payload.get("parameters") or {})
            else:
                if not body:
                    raise InputError("the body is empty: send the file's bytes")
                item = body
            type(pipe).check_options(parameters)
            if in_flight[name] >= options.max_queue:
                raise Overloaded(
                    f"pipeline {name!r}: {options.max_queue} requests are already waiting"
                )
            in_flight[name] += 1
            try:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    pipeline_threads[name], lambda: pipe(item, **parameters)
                )
            finally:
                in_flight[name] -= 1
            return JSONResponse(jsonable(result))

        return await timed("pipeline", name, handle)

    async def metrics_route(_request: Request) -> Response:
        for name, worker in workers.items():
            metrics.queue_depth.labels(name).set(worker.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", model_infer, methods=["POST"]),
        Route("/v1/pipelines", pipelines),
        Route("/v1/pipelines/{name}", pipeline_run, methods=["POST"]),
        Route("/metrics", metrics_route),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
