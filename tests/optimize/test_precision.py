"""bf16 and int8 builds: which operators compute in bf16 (against numpy on bf16-rounded operands),
the parity bound that refuses a build losing its signal, int8 builds calibrated on the user's
inputs (against ONNX Runtime on the quantized model), and the targets that cannot build them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.cli import cli
from infer.errors import CompileError
from infer.runtime import onednn
from tests import onnx_models
from tests.conftest import requires_bf16, requires_int8, save, to_bf16
from tests.optimize.test_offload import attention_block, offload_everything  # noqa: F401

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


@pytest.fixture
def bf16_kernels_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # The compile keeps a bf16 call in f32 where f32 times faster (onednn.F32_MARGIN): these
    # tests check bf16's own numbers, whatever the timing.
    monkeypatch.setattr(onednn, "F32_MARGIN", math.inf)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@requires_bf16
@pytest.mark.usefixtures("offload_everything", "bf16_kernels_kept")
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
@pytest.mark.usefixtures("bf16_kernels_kept")
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


def framed_transform(length: int = 640, window: int = 256, hop: int = 128) -> onnx.ModelProto:
    """Silero VAD's STFT as it exports it: a convolution of the one-channel signal with 2 x 129
    basis vectors, window wide, hop apart."""
    basis = np.random.default_rng(3).standard_normal((258, 1, window)).astype(np.float32)
    frames = (length - window) // hop + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "basis"], ["y"], strides=[hop])],
        "stft",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 258, frames])],
        [numpy_helper.from_array(basis, "basis")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@requires_bf16
def test_a_bf16_call_that_runs_faster_in_float32_is_kept_in_float32(tmp_path: Path) -> None:
    model = framed_transform()  # 264 K multiply-adds: a bf16 call by its size
    artifact = infer.compile(model, output=tmp_path / "stft", precision="bf16")
    assert artifact.manifest.pipeline["offload"]["bf16"] == 1
    (choice,) = onednn.read_choices(artifact.path / onednn.CHOICES_FILE).values()
    # oneDNN's bf16 kernels pair input channels; with one, f32 took 5.4 µs and bf16 12.3.
    assert choice.startswith(f"convolution{onednn.F32_KIND} "), choice
    x = np.random.default_rng(4).standard_normal((1, 1, 640)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = infer.Session(artifact.path, threads=1).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # bf16 is 0.12 off here


def test_targets_and_pipelines_without_bf16_are_refused(tmp_path: Path) -> None:
    path = save(onnx_models.mlp(), tmp_path)
    with pytest.raises(CompileError, match=r"target llvm -mcpu=znver3 has no bf16 .*avx512_bf16"):
        infer.compile(path, target="llvm -mcpu=znver3", precision="bf16")
    with pytest.raises(CompileError, match=r"pipeline does not call them"):
        infer.compile(path, pipeline="cpu-naive", precision="bf16")
    with pytest.raises(
        CompileError, match=r"precision: expected one of fp32, bf16, int8, got 'fp16'"
    ):
        infer.compile(path, precision="fp16")
    result = CliRunner().invoke(
        cli, ["compile", str(path), "--precision", "bf16", "--target", "llvm -mcpu=znver3"]
    )
    assert result.exit_code == 2 and "error: precision bf16: target llvm" in result.output


def calibration(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


@requires_int8
@pytest.mark.usefixtures("offload_everything")
def test_an_int8_build_runs_the_quantized_model_and_is_checked_against_float32(
    tmp_path: Path,
) -> None:
    from infer.graph.quantize import quantize_int8

    model = onnx_models.conv_net()
    samples = calibration(16)
    artifact = infer.compile(model, output=tmp_path / "int8", precision="int8", calibration=samples)
    manifest = artifact.manifest
    assert manifest.precision == "int8" and manifest.pipeline["offload"]["int8"] == 3
    assert manifest.pipeline["quantization"]["calibration_samples"] == 16
    (output,) = manifest.parity["outputs"]
    assert manifest.parity["status"] == "passed" and output["cosine"] > 0.99
    assert output["size"] == 8 * 5  # the first 8 calibration samples, stacked
    # ONNX Runtime on the QDQ model the quantizer wrote: the same dequantized values, computed
    # in float32; int8 products accumulate exactly, so only rounding differs.
    qdq = quantize_int8(model, samples, "convnet")
    reference = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    session = infer.Session(artifact.path, threads=1)
    for feed in calibration(4, seed=1):
        (got,) = session.run(None, feed)
        np.testing.assert_allclose(got, reference.run(None, feed)[0], rtol=1e-4, atol=1e-4)


@requires_int8
@pytest.mark.usefixtures("offload_everything")
def test_int8_quantizes_the_matmuls_on_weights_and_leaves_attention_float32(
    tmp_path: Path,
) -> None:
    from infer.graph.quantize import quantize_int8

    model = attention_block()
    rng = np.random.default_rng(4)
    samples = [{"x": rng.standard_normal((2, 16, 32)).astype(np.float32)} for _ in range(8)]
    artifact = infer.compile(model, output=tmp_path / "int8", precision="int8", calibration=samples)
    offloaded = artifact.manifest.pipeline["offload"]
    assert offloaded["matmul"] == 5 and offloaded["int8"] == 3  # the batched two stay f32
    qdq = quantize_int8(model, samples, "attention")
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) == 2  # x, the context
    reference = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 16, 32)).astype(np.float32)
    (got,) = infer.Session(artifact.path, threads=1).run(None, {"x": x})
    np.testing.assert_allclose(got, reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


@requires_int8
def test_int8_builds_are_cached_by_their_calibration(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    first = infer.compile(path, precision="int8", calibration=calibration(4))
    again = infer.compile(path, precision="int8", calibration=calibration(4))
    other = infer.compile(path, precision="int8", calibration=calibration(4, seed=2))
    assert again.cache_hit and again.path == first.path
    assert other.path != first.path and infer.compile(path).path not in (first.path, other.path)


@requires_int8
def test_the_cli_takes_calibration_inputs_and_names_what_is_missing(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    np.savez(tmp_path / "cal.npz", x=np.stack([s["x"] for s in calibration(6)]))
    runner = CliRunner()
    args = ["--quiet", "compile", str(path), "-o", str(tmp_path / "out")]
    result = runner.invoke(
        cli, [*args, "--precision", "int8", "--calibration", str(tmp_path / "cal.npz")]
    )
    assert result.exit_code == 0, result.output
    assert "Please consider" not in result.output  # the quantizer's advice is not ours to give
    shown = runner.invoke(cli, ["--quiet", "inspect", str(tmp_path / "out")])
    assert "precision: int8" in shown.output, shown.output
    assert "calibrated on 6 samples" in shown.output, shown.output
    missing = runner.invoke(cli, [*args[:3], "--precision", "int8"])
    assert missing.exit_code != 0 and "precision int8 needs calibration inputs" in missing.output
    stray = runner.invoke(cli, [*args[:3], "--calibration", str(tmp_path / "cal.npz")])
    assert stray.exit_code != 0 and "calibration inputs are for precision int8" in stray.output


def test_targets_without_vnni_are_refused_int8(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    with pytest.raises(CompileError, match=r"-mcpu=haswell has no 8-bit .*avx512_vnni"):
        infer.compile(path, target="llvm -mcpu=haswell", precision="int8")
