"""DFT legalized into matrix products: compiled by TVM alone, against numpy's FFT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import infer


def _dft(shape: list[int], out: list[int], **attrs: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("DFT", ["x"], ["y"], **attrs)],
        "dft",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _run(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    art = infer.compile(model, fallback=False, check=False, output=tmp_path / "dft.infer")
    (y,) = art.load(threads=1).run(None, {"x": x})
    return y


@pytest.mark.parametrize("axis", [1, 2])
def test_real_forward_dft_along_an_axis(axis: int, tmp_path: Path) -> None:
    x = np.random.default_rng(axis).standard_normal((2, 12, 10, 1)).astype(np.float32)
    y = _run(_dft([2, 12, 10, 1], [2, 12, 10, 2], axis=axis), x, tmp_path)
    want = np.fft.fft(x[..., 0].astype(np.float64), axis=axis)
    np.testing.assert_allclose(y[..., 0], want.real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[..., 1], want.imag, rtol=1e-5, atol=1e-5)


def test_complex_inverse_dft(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16, 2)).astype(np.float32)
    y = _run(_dft([3, 16, 2], [3, 16, 2], axis=1, inverse=1), x, tmp_path)
    want = np.fft.ifft(x[..., 0] + 1j * x[..., 1], axis=1)
    np.testing.assert_allclose(y[..., 0], want.real, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[..., 1], want.imag, rtol=1e-5, atol=1e-6)


def test_onesided_dft_keeps_the_non_negative_frequencies(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((1, 20, 1)).astype(np.float32)
    y = _run(_dft([1, 20, 1], [1, 11, 2], axis=1, onesided=1), x, tmp_path)
    want = np.fft.rfft(x[..., 0].astype(np.float64), axis=1)
    assert y.shape == (1, 11, 2)
    np.testing.assert_allclose(y[..., 0], want.real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[..., 1], want.imag, rtol=1e-5, atol=1e-5)
