"""Quantized models: QLinearConv / QLinearMatMul from ONNX Runtime's own quantizer, on TVM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import infer
from tests import onnx_models


class _Images(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._batches = iter(
            [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@pytest.mark.filterwarnings("default::infer.errors.FallbackWarning")  # its com.microsoft ops
def test_a_model_from_onnxruntimes_quantizer_runs_its_qlinear_ops_on_tvm(tmp_path: Path) -> None:
    source = tmp_path / "float.onnx"
    onnx.save(onnx_models.conv_net(), source)
    quantized = tmp_path / "int8.onnx"
    quantize_static(
        str(source), str(quantized), _Images(), quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
        reduce_range=True,  # 7-bit weights, as ORT advises on AVX2 hosts (see below)
    )  # fmt: skip
    ops = {n.op_type for n in onnx.load(quantized).graph.node}
    assert "QLinearConv" in ops
    art = infer.compile(quantized, output=tmp_path / "int8.infer", threads=1)
    session = art.load(threads=1)
    placement = session.placement()
    print(f"ORT-quantized conv net: {placement}")
    assert "QLinearConv" not in placement["onnxruntime_op_types"]
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (got,) = session.run(None, {"x": x})
    (want,) = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    # Requantization rounds half to even in both; a float32 sum may land on the other side
    # of a half: at most one quantization step apart.
    step = float(np.abs(want).max()) / 100
    np.testing.assert_allclose(got, want, atol=step)


def test_qlinearconv_is_exact_where_onnxruntime_saturates_on_avx2(tmp_path: Path) -> None:
    """Full-range int8 weights against uint8 activations: ONNX Runtime's u8s8 kernel on AVX2
    (no VNNI) saturates pairwise int16 sums; the legalization computes what the spec says,
    checked here against exact integer arithmetic in numpy."""
    rng = np.random.default_rng(0)
    channels = 4
    w = rng.integers(-127, 128, (channels, 3, 3, 3)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, channels).astype(np.float32)
    bias = rng.integers(-1000, 1000, channels).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
        numpy_helper.from_array(np.array(100, np.uint8), "yz"),
        numpy_helper.from_array(bias, "b"),
    ]
    node = helper.make_node(
        "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1, 1, 1, 1]
    )
    graph = helper.make_graph(
        [node],
        "qconv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, channels, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    art = infer.compile(model, fallback=False, check=False, output=tmp_path / "q.infer")
    x = rng.integers(0, 256, (1, 3, 8, 8)).astype(np.uint8)
    (got,) = art.load(threads=1).run(None, {"x": x})
    padded = np.pad(x.astype(np.int64) - 128, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded[0], (3, 3), axis=(1, 2))  # c,8,8,3,3
    acc = np.einsum("cijkl,mckl->mij", windows, w.astype(np.int64)) + bias[:, None, None]
    scaled = acc * (0.02 * w_scale.astype(np.float64)[:, None, None]) / 0.05
    want = np.clip(np.round(scaled) + 100, 0, 255).astype(np.uint8)[None]
    np.testing.assert_array_equal(got, want)


def _encoder_block(rng: np.random.Generator) -> onnx.ModelProto:
    """x [batch, seq, 64] -> MatMul 64x128 + bias -> Gelu -> MatMul 128x64: a transformer's
    feed-forward block, what ONNX Runtime's dynamic quantization turns into MatMulInteger."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Gelu", ["hb"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 128)) / 8).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(128).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((128, 64)) / 8).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 64])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("weight_type", [QuantType.QInt8, QuantType.QUInt8])
def test_dynamically_quantized_matmuls_run_as_float_matmuls(
    weight_type: QuantType, tmp_path: Path
) -> None:
    from onnxruntime.quantization import quantize_dynamic

    from infer.graph.legalize_quant import float_matmul_integer

    source = tmp_path / "float.onnx"
    onnx.save(_encoder_block(np.random.default_rng(0)), source)
    quantized = tmp_path / "int8.onnx"
    quantize_dynamic(str(source), str(quantized), weight_type=weight_type, reduce_range=True)
    model = onnx.load(quantized)
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 2
    rewritten = float_matmul_integer(model)
    assert "MatMulInteger" not in {n.op_type for n in rewritten.graph.node}
    x = np.random.default_rng(1).standard_normal((2, 7, 64)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"x": x})[0])

    want = run(model)
    # The integer products are exact in float32 at these sizes: the rewrite alone changes
    # nothing beyond float rounding of the same arithmetic.
    np.testing.assert_allclose(run(rewritten), want, rtol=1e-5, atol=1e-5)
    session = infer.compile(quantized, output=tmp_path / "int8.infer", threads=1).load(threads=1)
    assert session.placement()["onnxruntime_op_types"] == {}
    (got,) = session.run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
