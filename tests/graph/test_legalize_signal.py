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


def _stft_reference(
    signal: np.ndarray, step: int, window: np.ndarray, onesided: bool
) -> np.ndarray:
    """The spec's STFT in numpy: windowed frames every step samples, each one's DFT."""
    length = len(window)
    count = (signal.shape[1] - length) // step + 1
    frames = np.stack([signal[:, t * step : t * step + length, 0] for t in range(count)], axis=1)
    spectrum = np.fft.fft(frames.astype(np.float64) * window, axis=-1)
    if onesided:
        spectrum = spectrum[..., : length // 2 + 1]
    return np.stack([spectrum.real, spectrum.imag], axis=-1)


@pytest.mark.parametrize(("windowed", "onesided"), [(True, 1), (False, 1), (True, 0)])
def test_stft_as_a_strided_convolution(windowed: bool, onesided: int, tmp_path: Path) -> None:
    # Whisper's framing: 400-sample Hann windows every 160 samples, batch symbolic.
    step, length = 160, 400
    inputs = ["signal", "step", "window" if windowed else "", "" if windowed else "length"]
    nodes = [helper.make_node("STFT", inputs, ["y"], onesided=onesided)]
    if windowed:
        nodes.insert(0, helper.make_node("HannWindow", ["size"], ["window"], periodic=1))
    graph = helper.make_graph(
        nodes,
        "stft",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["batch", 4000, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "frames", "bins", 2])],
        [helper.make_tensor("step", TensorProto.INT64, [], [step]),
         helper.make_tensor("size", TensorProto.INT64, [], [length]),
         helper.make_tensor("length", TensorProto.INT64, [], [length])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    signal = np.random.default_rng(0).standard_normal((2, 4000, 1)).astype(np.float32)
    art = infer.compile(model, fallback=False, check=False, output=tmp_path / "stft.infer")
    session = art.load(threads=1)
    assert session.placement()["onnxruntime_op_types"] == {}
    (got,) = session.run(None, {"signal": signal})
    window = (
        0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length) if windowed else np.ones(length)
    )
    want = _stft_reference(signal, step, window, bool(onesided))
    assert got.shape == want.shape == (2, 23, length // 2 + 1 if onesided else length, 2)
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
