"""bf16 builds: which operators compute in bf16 (against numpy on bf16-rounded operands), the
parity bound that refuses a build losing its signal, and the targets that cannot build bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.cli import cli
from infer.errors import CompileError
from infer.runtime import onednn
from tests import onnx_models
from tests.conftest import requires_bf16, save, to_bf16
from tests.optimize.test_offload import attention_block, offload_everything  # noqa: F401

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@requires_bf16
@pytest.mark.usefixtures("offload_everything")
def test_weight_matmuls_compute_in_bf16_and_attention_stays_float32(tmp_path: Path) -> None:
    model = attention_block()
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = np.random.default_rng(1).standard_normal((2, 16, 32)).astype(np.float32)
    artifact = infer.compile(model, output=tmp_path / "bf16", precision="bf16")
    got = infer.Session(artifact.path, threads=1).run(None, {"x": x})[0]

    # The model in numpy: the matmuls on weights on bf16-rounded operands, the rest in float32.
    def on_weights(a: np.ndarray, w: str) -> np.ndarray:
        return to_bf16(a).astype(np.float64) @ to_bf16(weights[w]).astype(np.float64)

    q = on_weights(x, "wq") + weights["bq"]
    k = on_weights(x, "wk")
    context = softmax(q @ k.transpose(0, 2, 1)) @ x
    want = np.maximum(on_weights(context.astype(np.float32), "wo") + weights["bo"], 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    offloaded = artifact.manifest.pipeline["offload"]
    assert offloaded["matmul"] == 5 and offloaded["bf16"] == 3  # not the two batched ones
    assert artifact.manifest.precision == "bf16"
    parity = artifact.parity
    assert parity is not None and parity["status"] == "passed" and parity["precision"] == "bf16"
    assert 0.995 < parity["outputs"][0]["cosine"] < 1.0


def cancelling_matmuls(rows: int = 64, width: int = 64) -> onnx.ModelProto:
    """y = x @ w1 - x @ w0, with w1 = w0 (1 + 2^-10): in bf16 both weights round to w0."""
    rng = np.random.default_rng(2)
    w0 = to_bf16(rng.standard_normal((width, width)).astype(np.float32))
    w1 = (w0 * np.float32(1 + 2**-10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]),
         helper.make_node("MatMul", ["x", "w0"], ["b"]),
         helper.make_node("Sub", ["a", "b"], ["y"])],
        "cancel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, width])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@requires_bf16
def test_a_bf16_build_that_loses_the_signal_is_refused(tmp_path: Path) -> None:
    model = cancelling_matmuls()
    assert infer.compile(model, output=tmp_path / "fp32").parity["status"] == "passed"
    with pytest.raises(CompileError, match=r"the bf16 build is too far from onnxruntime"):
        infer.compile(model, output=tmp_path / "bf16", precision="bf16")
    assert not (tmp_path / "bf16").exists()  # nothing half-written
    unchecked = infer.compile(model, output=tmp_path / "bf16", precision="bf16", check=False)
    assert unchecked.manifest.pipeline["offload"]["bf16"] == 2


@requires_bf16
def test_bf16_and_fp32_builds_are_cached_apart(mlp_path: Path) -> None:
    fp32 = infer.compile(mlp_path)
    bf16 = infer.compile(mlp_path, precision="bf16")
    assert bf16.path != fp32.path and fp32.manifest.precision == "fp32"
    again = infer.compile(mlp_path, precision="bf16")
    assert again.cache_hit and again.path == bf16.path


def test_targets_and_pipelines_without_bf16_are_refused(tmp_path: Path) -> None:
    path = save(onnx_models.mlp(), tmp_path)
    with pytest.raises(CompileError, match=r"target llvm -mcpu=znver3 has no bf16 .*avx512_bf16"):
        infer.compile(path, target="llvm -mcpu=znver3", precision="bf16")
    with pytest.raises(CompileError, match=r"pipeline does not call them"):
        infer.compile(path, pipeline="cpu-naive", precision="bf16")
    with pytest.raises(CompileError, match=r"precision: expected one of fp32, bf16, got 'fp16'"):
        infer.compile(path, precision="fp16")
    result = CliRunner().invoke(
        cli, ["compile", str(path), "--precision", "bf16", "--target", "llvm -mcpu=znver3"]
    )
    assert result.exit_code == 2 and "error: precision bf16: target llvm" in result.output
