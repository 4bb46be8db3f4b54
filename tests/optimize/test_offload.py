"""Convolutions and matmuls handed to oneDNN: what moves, what stays, and the numbers (vs ORT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.cli import cli
from infer.errors import ArtifactError
from infer.optimize import offload
from infer.runtime import onednn
from tests import onnx_models
from tests.conftest import requires_int8

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


def attention_block(seq: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """x @ Wq, x @ Wk, softmax(q k^T) v, then Gemm + Relu: weight matmuls and batched ones."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)

    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("Add", ["q", "bq"], ["qb"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qb", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"]),
        helper.make_node("Add", ["bo", "o"], ["ob"]),
        helper.make_node("Relu", ["ob"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, hidden])],
        [init("wq", hidden, hidden), init("bq", hidden), init("wk", hidden, hidden),
         init("wo", hidden, hidden), init("bo", hidden)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def offload_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests' models are small: hand every operator over, whatever its size.
    monkeypatch.setattr(offload, "MIN_OFFLOAD_MACS", 1)


def compile_and_compare(
    model: onnx.ModelProto, tmp_path: Path, feeds: dict[str, np.ndarray]
) -> dict:
    artifact = infer.compile(model, output=tmp_path / "model.infer")
    session = infer.Session(artifact.path, threads=2)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = session.run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    offloaded: dict = artifact.manifest.pipeline["offload"]
    return offloaded


@pytest.mark.usefixtures("offload_everything")
def test_convolutions_with_bias_and_relu_run_on_onednn(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    summary = compile_and_compare(onnx_models.conv_net(batch=4), tmp_path, {"x": x})
    assert summary["library"] == "onednn" and summary["version"] == onednn.library_version()
    assert summary["conv2d"] == 2 and summary["matmul"] == 1
    assert summary["post_ops"] >= 3  # conv bias + relu, the classifier's bias
    shown = CliRunner().invoke(cli, ["--quiet", "inspect", str(tmp_path / "model.infer")])
    assert shown.exit_code == 0, shown.output
    assert f"library kernels: onednn {onednn.library_version()} (conv2d 2, matmul 1" in shown.output
    measured = shown.output.split("implementations measured fastest: ")[1].splitlines()[0]
    assert sum(int(part.rsplit(" ", 1)[1]) for part in measured.split(", ")) == 3


@pytest.mark.usefixtures("offload_everything")
def test_the_compile_measures_each_calls_kernel_and_the_session_runs_that_one(
    tmp_path: Path,
) -> None:
    artifact = infer.compile(onnx_models.conv_net(batch=4), output=tmp_path / "model.infer")
    assert onednn.CHOICES_FILE in artifact.manifest.files  # hashed: tampering is refused
    choices = onednn.read_choices(artifact.path / onednn.CHOICES_FILE)
    assert len(choices) == 3  # two convolutions and the classifier, at the parity run's shapes
    assert {c.split(" ")[0] for c in choices.values()} <= {"convolution", "matmul"}
    session = infer.Session(artifact.path, threads=2)
    x = np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(np.float32)
    session.run(None, {"x": x})
    ran = {
        onednn.choice_key(name, config, x_shape, w_shape): kernel.implementation
        for (name, config, x_shape, w_shape, *_), kernel in session._onednn.kernels.items()
    }
    assert ran == choices
    (artifact.path / onednn.CHOICES_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match="modified or damaged"):
        infer.Session(artifact.path)


@pytest.mark.usefixtures("offload_everything")
def test_attention_matmuls_with_a_dynamic_batch(tmp_path: Path) -> None:
    model = attention_block()
    artifact = infer.compile(model, output=tmp_path / "model.infer")
    summary = artifact.manifest.pipeline["offload"]
    assert summary["matmul"] == 5  # three on weights, two batched
    session = infer.Session(artifact.path, threads=1)
    reference = ort.InferenceSession(model.SerializeToString())
    for batch in (1, 3):  # one primitive per shape, packed weights shared
        x = np.random.default_rng(batch).standard_normal((batch, 16, 32)).astype(np.float32)
        (got,) = session.run(None, {"x": x})
        (want,) = reference.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_small_operators_stay_in_tvm(tmp_path: Path) -> None:
    # 16 x 32 and 32 x 10 multiply-adds per row: below MIN_OFFLOAD_MACS.
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    assert compile_and_compare(onnx_models.mlp(batch=1), tmp_path, {"input:0": x}) is None
    assert infer.Session(tmp_path / "model.infer")._onednn is None  # no library loaded to run it


@pytest.mark.usefixtures("offload_everything")
def test_a_transposed_convolution_runs_as_a_deconvolution(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "w", "b"], ["d"], strides=[2, 2]),
            helper.make_node("Sigmoid", ["d"], ["y"]),
        ],
        "deconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 20, 20])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    summary = compile_and_compare(model, tmp_path, {"x": x})
    assert summary["conv2d"] == 1 and summary["post_ops"] == 2  # bias and sigmoid folded in


@pytest.mark.usefixtures("offload_everything")
def test_one_dimensional_convolutions_run_on_onednn(tmp_path: Path) -> None:
    # Silero VAD's shape: a strided 1-d convolution (its STFT), then conv + bias + Relu ones.
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)

    nodes = [
        helper.make_node("Conv", ["x", "basis"], ["spec"], strides=[16]),
        helper.make_node("Conv", ["spec", "w1", "b1"], ["c1"], pads=[1, 1], strides=[2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[2, 0], dilations=[2], group=2),
    ]
    graph = helper.make_graph(
        nodes,
        "conv1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 3])],
        [init("basis", 12, 1, 32), init("w1", 6, 12, 3), init("b1", 6), init("w2", 8, 3, 3),
         init("b2", 8)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    x = rng.standard_normal((1, 1, 160)).astype(np.float32)
    summary = compile_and_compare(model, tmp_path, {"x": x})
    assert summary["conv2d"] == 3 and summary["post_ops"] == 3  # two biases, one Relu


@pytest.mark.usefixtures("offload_everything")
def test_weight_matmuls_both_ways(tmp_path: Path) -> None:
    # 16 -> 32 runs as a 1x1 convolution (K <= N), 32 -> 10 as oneDNN's matmul (K > N).
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    summary = compile_and_compare(onnx_models.mlp(batch="batch"), tmp_path, {"input:0": x})
    assert summary["matmul"] == 2 and summary["post_ops"] == 3  # two biases, one Relu


@pytest.mark.usefixtures("offload_everything")
def test_a_gelu_written_with_erf_folds_into_the_matmul_before_it(tmp_path: Path) -> None:
    # BERT's feed-forward as torch exports it below opset 20: MatMul, Add bias, then
    # x * (0.5 * (1 + erf(x / sqrt 2))) -- one Gelu after clean-up, a oneDNN post-op here.
    rng = np.random.default_rng(0)
    consts = {"c_div": np.sqrt(2.0), "c_one": 1.0, "c_half": 0.5}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h0"]),
        helper.make_node("Add", ["h0", "b"], ["h"]),
        helper.make_node("Div", ["h", "c_div"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "c_one"], ["a"]),
        helper.make_node("Mul", ["c_half", "a"], ["m"]),
        helper.make_node("Mul", ["h", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32])],
        [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b"),
         *(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts.items())],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    summary = compile_and_compare(model, tmp_path, {"x": x})
    assert summary["matmul"] == 1 and summary["post_ops"] == 2  # the bias and the GELU
    assert infer.Session(tmp_path / "model.infer").manifest.segments == []  # all on TVM


@pytest.mark.usefixtures("offload_everything")
def test_relu6_after_a_convolution_is_one_post_op_chain(tmp_path: Path) -> None:
    # Clip(0, 6) becomes Relu + minimum with a (1, 1, 1, 1) bound that ConvertLayout transposes:
    # both fold into the convolution, and no TVM kernel is left between the two convolutions.
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Clip", ["c1", "lo", "hi"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"]),
        ],
        "relu6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32) * 4
    summary = compile_and_compare(model, tmp_path, {"x": x})
    assert summary["conv2d"] == 2 and summary["post_ops"] == 2  # relu, then clip at 6


@pytest.mark.usefixtures("offload_everything")
def test_a_query_row_against_keys_of_every_length(tmp_path: Path) -> None:
    # A decoder's step: one query row, keys growing by a row per step. The query's shape stays
    # the same and the keys' buffer comes back at one address: the primitive made for one
    # length was reused for the next, and read the wrong number of keys.
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 4, 1, 16]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 4, "past", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 1, "past"])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    artifact = infer.compile(model, output=tmp_path / "step.infer", check_dims={"past": 3})
    assert artifact.manifest.pipeline["offload"]["matmul"] == 1
    session = infer.Session(artifact.path, threads=1)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 1, 16)).astype(np.float32)
    for past in (1, 2, 3, 5, 8, 3, 17, 2):
        k = rng.standard_normal((1, 4, past, 16)).astype(np.float32)
        for _ in range(3):
            (got,) = session.run(None, {"q": q, "k": k})
            np.testing.assert_allclose(got, q @ k.transpose(0, 1, 3, 2), rtol=1e-5, atol=1e-5)


def quantized_by_onnxruntime(model: onnx.ModelProto, tmp_path: Path, x: np.ndarray) -> Path:
    """Return the QDQ model ONNX Runtime's static quantizer makes of model, calibrated on x:
    uint8 activations, int8 weights symmetric per channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Samples(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.samples = iter([{"x": sample[None]} for sample in x])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.samples, None)

    source, quantized = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, source)
    quantize_static(
        source, quantized, Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return quantized


@requires_int8
@pytest.mark.usefixtures("offload_everything")
def test_a_quantized_model_computes_its_convolutions_and_matmuls_in_int8(tmp_path: Path) -> None:
    # ONNX Runtime quantizes the network; its dequantized convolutions and Gemm read the 8-bit
    # tensors in oneDNN's int8 kernels, and the output equals ONNX Runtime's on the QDQ model
    # but for rounding at a quantization step's edge.
    rng = np.random.default_rng(3)
    images = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    path = quantized_by_onnxruntime(onnx_models.conv_net(batch=1), tmp_path, images[:8])
    artifact = infer.compile(str(path), output=tmp_path / "model.infer")
    assert artifact.manifest.pipeline["offload"]["int8"] == 3
    session = infer.Session(artifact.path, threads=1)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"x": i[None]})[0] for i in images[8:]])
    want = np.concatenate([reference.run(None, {"x": i[None]})[0] for i in images[8:]])
    step = float(np.diff(np.unique(want)).min())  # the output's quantization step
    assert np.abs(got - want).max() <= 1.01 * step
    assert np.mean(np.abs(got - want) < 1e-6) > 0.9


def inverted_residual(hw: int, stride: int, dw_bias: bool = True) -> onnx.ModelProto:
    """A MobileNetV2 block's first half and its projection: 1x1 16 -> 96, ReLU6, 3x3 depthwise
    (stride), ReLU6, 1x1 96 -> 24."""
    rng = np.random.default_rng(2)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("w1", 96, 16, 1, 1), init("b1", 96), init("w2", 96, 1, 3, 3), init("b2", 96),
             init("w3", 24, 96, 1, 1), numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node(
            "Conv",
            ["r1", "w2", *(["b2"] if dw_bias else [])],
            ["c2"],
            group=96,
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        ),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["y"]),
    ]
    out = (hw - 1) // stride + 1
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, out, out])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dw_bias", [True, False])
def test_a_depthwise_convolution_runs_inside_the_1x1_before_it(
    tmp_path: Path, dw_bias: bool
) -> None:
    # MobileNetV2's 112x112 block, where oneDNN has a kernel for both (at one and two threads).
    assert onednn.depthwise_fusable([1, 112, 112, 16], 96, 2, 1)
    x = np.random.default_rng(3).standard_normal((1, 16, 112, 112)).astype(np.float32)
    summary = compile_and_compare(inverted_residual(112, 2, dw_bias), tmp_path, {"x": x})
    assert summary["conv2d"] == 2 and summary["depthwise_fused"] == 1
    # Each convolution's bias and ReLU6 (relu, then clip at 6), the depthwise one's bias if any.
    assert summary["post_ops"] == 5 + dw_bias
    choices = onednn.read_choices(tmp_path / "model.infer" / onednn.CHOICES_FILE)
    fused = [v for k, v in choices.items() if '"dw"' in k]
    assert len(fused) == 1 and not fused[0].split(" ")[1].startswith("ref")


def test_a_depthwise_convolution_oneDNN_cannot_fuse_stays_a_call_of_its_own(
    tmp_path: Path,
) -> None:
    # At 28x28 oneDNN offers only its reference composition of the two: no fusion.
    assert not onednn.depthwise_fusable([1, 28, 28, 16], 96, 1, 1)
    x = np.random.default_rng(4).standard_normal((1, 16, 28, 28)).astype(np.float32)
    summary = compile_and_compare(inverted_residual(28, 1), tmp_path, {"x": x})
    assert summary["conv2d"] == 3 and "depthwise_fused" not in summary


def test_operators_from_min_parallel_macs_run_on_every_thread(tmp_path: Path) -> None:
    # (1, 256) x (256, 256) is 64 K multiply-adds, under MIN_PARALLEL_MACS: one thread;
    # (1, 256) x (256, 512) is 128 K, at it: all the session's threads.
    assert 256 * 256 < offload.MIN_PARALLEL_MACS <= 256 * 512
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"]),
            helper.make_node("MatMul", ["h", "b"], ["y"]),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
        [
            numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "a"),
            numpy_helper.from_array(rng.standard_normal((256, 512)).astype(np.float32) / 16, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 256)).astype(np.float32)
    assert compile_and_compare(model, tmp_path, {"x": x})["matmul"] == 2
    calls = onednn.read_choices(tmp_path / "model.infer" / onednn.CHOICES_FILE)
    # A call's key: the function, the shapes of its source and weights, then its config.
    single = {}
    for key in calls:
        found = re.fullmatch(re.escape(onednn.MATMUL) + r" \[1, 256\] \[256, (\d+)\] (\{.*\})", key)
        assert found is not None, key
        single[int(found[1])] = json.loads(found[2])["single_thread"]
    assert single == {256: True, 512: False}
