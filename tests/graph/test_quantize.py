"""Calibration inputs for int8 builds: reading them, and the errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from infer.errors import InputError
from infer.graph.quantize import (
    calibration_digest,
    check_calibration,
    load_calibration,
    quantization_record,
    quantize_int8,
)
from infer.graph.shapes import graph_inputs
from infer.signature import TensorSpec
from tests import onnx_models

X = TensorSpec("x", "float32", (1, 3, 16, 16))
IDS = TensorSpec("ids", "int64", ("batch", 8))


def test_an_array_of_one_more_dim_holds_a_sample_per_row(tmp_path: Path) -> None:
    x, ids = np.zeros((5, 1, 3, 16, 16), np.float32), np.arange(5 * 2 * 8).reshape(5, 2, 8)
    np.savez(tmp_path / "cal.npz", x=x, ids=ids)
    samples = load_calibration(tmp_path / "cal.npz", [X, IDS])
    assert len(samples) == 5
    assert samples[3]["x"].shape == (1, 3, 16, 16) and (samples[3]["ids"] == ids[3]).all()


def test_an_array_of_the_input_rank_is_one_sample(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=np.ones((1, 3, 16, 16), np.float32))
    (sample,) = load_calibration(tmp_path / "cal.npz", [X])
    assert sample["x"].shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((1, 3, 16, 16))}, r"no array for input\(s\) x \(it has y\)"),
        ({"x": np.zeros((3, 16, 16))}, r"array 'x' has 3 dims; expected 4 \(one sample\) or 5"),
        (
            {"x": np.zeros((2, 1, 3, 16, 16)), "ids": np.zeros((3, 1, 8), np.int64)},
            r"the inputs' sample counts differ \(\[2, 3\]\)",
        ),
    ],
)
def test_calibration_files_that_do_not_fit_the_model_are_named(
    tmp_path: Path, arrays: dict, message: str
) -> None:
    np.savez(tmp_path / "cal.npz", **arrays)
    inputs = [X, IDS] if "ids" in arrays else [X]
    with pytest.raises(InputError, match=message):
        load_calibration(tmp_path / "cal.npz", inputs)


def test_a_file_that_is_not_npz_is_named(tmp_path: Path) -> None:
    (tmp_path / "cal.npz").write_text("not numpy")
    with pytest.raises(InputError, match=r"calibration .*cal.npz: cannot read it as an .npz"):
        load_calibration(tmp_path / "cal.npz", [X])


def test_samples_of_the_wrong_type_or_none_at_all_are_refused() -> None:
    model = onnx_models.conv_net()
    inputs = graph_inputs(model.graph)
    with pytest.raises(InputError, match=r"precision int8 needs calibration inputs"):
        check_calibration([], inputs, "convnet")
    wrong = [{"x": np.zeros((1, 3, 16, 16), np.int64)}]
    with pytest.raises(InputError, match=r"sample 0, input 'x': expected float32, got int64"):
        check_calibration(wrong, inputs, "convnet")
    small = [{"x": np.zeros((1, 3, 16, 16), np.float32)}, {"x": np.zeros((1, 3, 8, 8), np.float32)}]
    with pytest.raises(
        InputError,
        match=r"sample 1, input 'x': expected shape \[1, 3, 16, 16\], got \[1, 3, 8, 8\]",
    ):
        check_calibration(small, inputs, "convnet")


def test_quantize_puts_qdq_on_the_dense_operators_inputs_only() -> None:
    model = onnx_models.conv_net()
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    checked = check_calibration(samples, graph_inputs(model.graph), "convnet")
    quantized = quantize_int8(model, checked, "convnet")
    onnx.checker.check_model(quantized)
    consumers = {name: node.op_type for node in quantized.graph.node for name in node.input if name}
    dequantized = [n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    # Each dequantized tensor feeds a Conv or Gemm: their inputs, weights and biases.
    assert {consumers[name] for name in dequantized} == {"Conv", "Gemm"}
    # Conv 1 and the Gemm: input, weights and bias; Conv 2 (no bias): input and weights.
    assert len(dequantized) == 8
    info = quantization_record(checked)
    assert info["calibration_samples"] == 4
    assert info["calibration_sha256"] == calibration_digest(checked)
    assert calibration_digest(checked[:3]) != info["calibration_sha256"]
