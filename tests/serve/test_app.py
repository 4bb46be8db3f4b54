"""The HTTP server, running for real (uvicorn on a free loopback port) and called with httpx:
KServe v2 metadata and infer against Session.run, the binary extension, batching without
cross-talk, the limits and their status codes, a pipeline route on Silero VAD, /metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.pipelines import get_task
from infer.serve import ServeOptions, create_app, load_served
from tests import onnx_models
from tests.conftest import session_cache

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve app with uvicorn on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _slow_model(layers: int = 24, width: int = 512) -> Any:
    """x [batch, width] through `layers` square matmuls: tens of ms a run at 256 rows."""
    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"h{i}"]))
        name = f"h{i}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, speech: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    with session_cache(tmp_path_factory):
        paths = {
            "mlp": infer.compile(onnx_models.mlp(batch="batch"), output=root / "mlp.infer").path,
            "multi": infer.compile(onnx_models.multi_io(), output=root / "multi.infer").path,
            "slow": infer.compile(_slow_model(), output=root / "slow.infer").path,
        }
        infer_vad = get_task("voice-activity-detection").build(
            root / "vad.infer", None, config=None, threads=None, progress=None, compile_options={}
        )
    return {**paths, "vad": infer_vad}


@pytest.fixture(scope="module")
def served(artifacts: dict[str, Path]) -> Any:
    return load_served([str(p) for p in artifacts.values()], threads=1)


@pytest.fixture(scope="module")
def url(served: Any) -> Iterator[str]:
    options = ServeOptions(max_batch=8, max_delay_ms=20, max_queue=64)
    with running(create_app(served, options)) as base:
        yield base


def _tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    return {
        "name": name, "shape": list(array.shape), "datatype": datatype,
        "data": array.reshape(-1).tolist(),
    }  # fmt: skip


def test_metadata_and_health(url: str) -> None:
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    server = httpx.get(f"{url}/v2").json()
    assert server["name"] == "infer" and "binary_tensor_data" in server["extensions"]
    meta = httpx.get(f"{url}/v2/models/mlp").json()
    assert meta["inputs"] == [{"name": "input:0", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]
    multi = httpx.get(f"{url}/v2/models/multi").json()
    assert [i["datatype"] for i in multi["inputs"]] == ["FP32", "INT64", "BOOL"]
    assert httpx.get(f"{url}/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
    assert httpx.get(f"{url}/v1/pipelines").json() == {"vad": "voice-activity-detection"}


def test_infer_equals_session_run(url: str, served: Any) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    (want,) = served.models["mlp"].run(None, {"input:0": x})
    body = {"id": "r1", "inputs": [_tensor("input:0", x)]}
    response = httpx.post(f"{url}/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "r1" and result["model_name"] == "mlp"
    (out,) = result["outputs"]
    assert out["name"] == "probs" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(3, 10), want)
    # Several dtypes in and out, and only the outputs asked for.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4)).astype(np.float32)
    idx, mask = np.array([3, 0], np.int64), rng.random((4, 4)) < 0.5
    body = {
        "inputs": [_tensor("a", a), _tensor("idx", idx, "INT64"), _tensor("mask", mask, "BOOL")],
        "outputs": [{"name": "count"}, {"name": "inverted"}],
    }
    result = httpx.post(f"{url}/v2/models/multi/infer", json=body).json()
    want_all = dict(zip(["gathered", "count", "masked", "inverted"], served.models["multi"].run(
        None, {"a": a, "idx": idx, "mask": mask}), strict=True))  # fmt: skip
    count, inverted = result["outputs"]
    assert (count["datatype"], count["shape"], count["data"]) == ("INT64", [], [int(mask.sum())])
    assert inverted["datatype"] == "BOOL"
    np.testing.assert_array_equal(np.array(inverted["data"]).reshape(4, 4), want_all["inverted"])


def test_binary_tensor_data_both_ways(url: str, served: Any) -> None:
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    request = {
        "inputs": [
            {"name": "input:0", "shape": [2, 16], "datatype": "FP32",
             "parameters": {"binary_data_size": x.nbytes}},
        ],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
    }  # fmt: skip
    header = json.dumps(request).encode()
    response = httpx.post(
        f"{url}/v2/models/mlp/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:length])
    (out,) = meta["outputs"]
    assert out["parameters"]["binary_data_size"] == 2 * 10 * 4
    got = np.frombuffer(response.content[length:], np.float32).reshape(2, 10)
    np.testing.assert_array_equal(got, served.models["mlp"].run(None, {"input:0": x})[0])


def test_concurrent_requests_are_batched_without_cross_talk(url: str, served: Any) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(24)]

    async def send_all() -> list[Any]:
        async with httpx.AsyncClient(base_url=url) as client:
            requests = [
                client.post("/v2/models/mlp/infer", json={"inputs": [_tensor("input:0", x)]})
                for x in inputs
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(send_all())
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        (out,) = response.json()["outputs"]
        got = np.array(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(
            got, served.models["mlp"].run(None, {"input:0": x})[0], atol=1e-6
        )
    metrics = httpx.get(f"{url}/metrics").text
    runs = _metric(metrics, 'infer_batch_requests_count{model="mlp"}')
    alone = _metric(metrics, 'infer_batch_requests_bucket{le="1.0",model="mlp"}')
    assert runs >= 24 and alone < runs  # some runs merged several requests


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"inputs": [{"name": "input:0", "shape": [1, 16], "datatype": "FP64",
                                 "data": [0.5] * 16}]}).encode(), 400,
         "input 'input:0': expected float32, got float64"),
        (json.dumps({"inputs": [{"name": "input:0", "shape": [1, 15], "datatype": "FP32",
                                 "data": [0.5] * 15}]}).encode(), 400, "input 'input:0'"),
        (json.dumps({"inputs": [{"name": "input:0", "shape": [2, 16], "datatype": "FP32",
                                 "data": [0.5] * 16}]}).encode(), 400,
         "data has 16 values, shape [2, 16] needs 32"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                 "data": [1.0]}]}).encode(), 400, "unknown input name(s) 'x'"),
    ],
    ids=["malformed-json", "wrong-datatype", "wrong-shape", "short-data", "unknown-input"],
)  # fmt: skip
def test_bad_requests_are_400_with_the_reason(
    url: str, body: bytes, status: int, message: str
) -> None:
    response = httpx.post(f"{url}/v2/models/mlp/infer", content=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_unknown_model_oversized_body_and_the_server_stays_up(served: Any) -> None:
    options = ServeOptions(max_body_bytes=1024)
    with running(create_app(served, options)) as base:
        response = httpx.post(f"{base}/v2/models/nope/infer", json={"inputs": []})
        assert response.status_code == 404
        assert response.json()["error"] == "no model named 'nope'; served: mlp, multi, slow, vad"
        big = {"inputs": [_tensor("input:0", np.zeros((64, 16), np.float32))]}
        response = httpx.post(f"{base}/v2/models/mlp/infer", json=big)
        assert response.status_code == 413
        assert response.json()["error"] == "the body is over the limit of 1024 bytes (4170 bytes)"
        # Sent in chunks, without a length: cut off as it passes the limit.
        chunks = (json.dumps(big).encode()[i : i + 512] for i in range(0, 4170, 512))
        response = httpx.post(f"{base}/v2/models/mlp/infer", content=chunks)
        assert response.status_code == 413
        assert response.json()["error"] == "the body is over the limit of 1024 bytes"
        small = {"inputs": [_tensor("input:0", np.zeros((1, 16), np.float32))]}
        assert httpx.post(f"{base}/v2/models/mlp/infer", json=small).status_code == 200


FLOOD = 24  # 12 times the queue


def test_a_flood_past_the_queue_gets_503_and_the_rest_right_answers(served: Any) -> None:
    options = ServeOptions(max_batch=1, max_queue=2)
    x = np.random.default_rng(4).standard_normal((256, 512)).astype(np.float32)
    (want,) = served.models["slow"].run(None, {"x": x})
    body = {"inputs": [_tensor("x", x)], "parameters": {"binary_data_output": True}}

    async def flood() -> list[Any]:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/slow/infer", json=body) for _ in range(FLOOD))
            )

    with running(create_app(served, options)) as base:
        responses = asyncio.run(flood())
        statuses = sorted(r.status_code for r in responses)
        assert 503 in statuses and 200 in statuses and set(statuses) == {200, 503}
        for response in responses:
            if response.status_code == 503:
                assert "2 requests are already waiting" in response.json()["error"]
                continue
            length = int(response.headers["Inference-Header-Content-Length"])
            got = np.frombuffer(response.content[length:], np.float32).reshape(want.shape)
            np.testing.assert_array_equal(got, want)
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert _metric(metrics, 'infer_requests_total{kind="model",model="slow",status="503"}') >= 1


def test_a_request_past_its_timeout_is_504(served: Any) -> None:
    options = ServeOptions(timeout_s=0.001)
    x = np.zeros((256, 512), np.float32)
    with running(create_app(served, options)) as base:
        response = httpx.post(f"{base}/v2/models/slow/infer", json={"inputs": [_tensor("x", x)]})
        assert response.status_code == 504 and "per-request timeout" in response.json()["error"]


def test_pipeline_route_equals_the_pipeline(url: str, served: Any, speech: Path) -> None:
    vad = served.pipelines["vad"]
    audio = speech.read_bytes()
    response = httpx.post(f"{url}/v1/pipelines/vad", content=audio)
    assert response.status_code == 200, response.text
    assert response.json() == vad(str(speech))
    response = httpx.post(f"{url}/v1/pipelines/vad?threshold=0.8", content=audio)
    assert response.json() == vad(str(speech), threshold=0.8)
    response = httpx.post(f"{url}/v1/pipelines/vad?beams=3", content=audio)
    assert response.status_code == 400 and "takes no option beams" in response.json()["error"]
    response = httpx.post(f"{url}/v1/pipelines/vad", content=b"not audio at all")
    assert response.status_code == 400 and "audio" in response.json()["error"]
    response = httpx.post(f"{url}/v1/pipelines/ocr", content=audio)
    assert response.status_code == 404 and "served: vad" in response.json()["error"]


def test_infer_serve_from_the_command_line(artifacts: dict[str, Path]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "infer.cli",
        "serve",
        str(artifacts["mlp"]),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "infer serve did not come up"
            time.sleep(0.2)
        x = np.ones((1, 16), np.float32)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/mlp/infer",
            json={"inputs": [_tensor("input:0", x)]},
        )
        assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 10]
    finally:
        process.terminate()
        process.wait(30)


def test_the_same_server_on_onnx_runtime(artifacts: dict[str, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    model = onnx_models.mlp(batch="batch")
    source = tmp_path / "mlp.onnx"
    source.write_bytes(model.SerializeToString())
    artifact = infer.compile(source, output=tmp_path / "mlp.infer").path
    served = load_served([artifact], threads=1, runtime="onnxruntime")
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    (want,) = ort.InferenceSession(str(source)).run(None, {"input:0": x})
    with running(create_app(served)) as base:
        assert httpx.get(f"{base}/v2/models/mlp").json()["platform"] == "onnxruntime"
        body = {"inputs": [_tensor("input:0", x)]}
        (out,) = httpx.post(f"{base}/v2/models/mlp/infer", json=body).json()["outputs"]
        np.testing.assert_allclose(
            np.array(out["data"], np.float32).reshape(2, 10), want, atol=1e-6
        )
    with pytest.raises(infer.InputError, match="runtime 'tensorrt', expected one of infer, onnx"):
        load_served([artifact], runtime="tensorrt")


def test_a_missing_server_library_names_the_extra(artifacts: dict[str, Path]) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from infer.cli import main; sys.argv = ['infer', 'serve', sys.argv[1]]; main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(artifacts["mlp"])], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "infer serve needs starlette: pip install 'infer[serve]'" in result.stderr
