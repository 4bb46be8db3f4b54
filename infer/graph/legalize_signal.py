"""Legalization of the signal ops: DFT as matrix products with the DFT's cosine and sine tables,
STFT as a strided convolution with them.

TVM 0.27's importer has no DFT. For a static signal length the transform is two small matrix
products (real and imaginary parts), computed in float64 so that the result matches numpy's FFT
to float32 precision, then cast back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from infer.graph.legalize import Emitter, NotLegalizable

__all__ = ["SIGNAL_LEGALIZATIONS"]

_DOUBLE = onnx.TensorProto.DOUBLE
AXIS_INPUT_OPSET = 20  # DFT's axis became an input (default -2) in opset 20


def _tables(length: int, bins: int, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return [length, bins] cos and sin of 2*pi*k*n/length (n rows, k columns)."""
    n = np.arange(length, dtype=np.float64)[:, None]
    k = np.arange(bins, dtype=np.float64)[None, :]
    angle = 2.0 * np.pi * n * k / length
    return np.cos(angle), (np.sin(angle) if inverse else -np.sin(angle))


def DFT(
    g: Emitter,
    input: str,
    dft_length: str = "",
    axis_input: str = "",
    *,
    axis: int | None = None,
    inverse: int = 0,
    onesided: int = 0,
) -> list[str]:
    """Return [the DFT of input along axis] for a static signal length, as two matmuls."""
    shape = g.shapes.get(input)
    if shape is None or any(d is None for d in shape):
        raise NotLegalizable("the input's shape is not static")
    rank = len(shape)
    if g.opset >= AXIS_INPUT_OPSET:
        value = g.constants.get(axis_input) if axis_input else np.asarray(-2)
        if value is None:
            raise NotLegalizable("the axis is given at run time")
        signal_axis = int(np.asarray(value).reshape(())) % rank
    else:
        signal_axis = (1 if axis is None else axis) % (rank - 1)
    if dft_length:
        raise NotLegalizable("dft_length given")  # padding and truncation: not built yet
    if inverse and onesided:
        raise NotLegalizable("an inverse one-sided DFT")
    if shape[-1] not in (1, 2) or signal_axis == rank - 1:
        raise NotLegalizable("the last dim must be 1 (real) or 2 (complex)")
    length = int(shape[signal_axis])  # type: ignore[arg-type]
    bins = length // 2 + 1 if onesided else length
    kind = g.types.get(input, onnx.TensorProto.FLOAT)
    # The signal axis goes last-but-one... then last, for the matmul: [..., 2] -> parts [..., L].
    perm = [a for a in range(rank - 1) if a != signal_axis] + [signal_axis]
    x = g.op("Cast", input, to=_DOUBLE)
    real = g.op("Transpose", g.take(str(x), 0, rank - 1), perm=perm)
    cos, sin = _tables(length, bins, bool(inverse))
    cos_c, sin_c = g.const(cos, np.float64), g.const(sin, np.float64)
    y_real = g.op("MatMul", real, cos_c)
    y_imag = g.op("MatMul", real, sin_c)
    if shape[-1] == 2:
        imag = g.op("Transpose", g.take(str(x), 1, rank - 1), perm=perm)
        y_real = g.op("Sub", y_real, g.op("MatMul", imag, sin_c))
        y_imag = g.op("Add", y_imag, g.op("MatMul", imag, cos_c))
    if inverse:
        scale = g.const(np.asarray(1.0 / length), np.float64)
        y_real, y_imag = g.op("Mul", y_real, scale), g.op("Mul", y_imag, scale)
    back = list(np.argsort(perm))
    stacked = g.op(
        "Concat",
        g.unsqueeze(str(g.op("Transpose", y_real, perm=back)), [rank - 1]),
        g.unsqueeze(str(g.op("Transpose", y_imag, perm=back)), [rank - 1]),
        axis=rank - 1,
    )
    return [str(g.op("Cast", stacked, to=kind))]


def STFT(
    g: Emitter,
    signal: str,
    frame_step: str,
    window: str = "",
    frame_length: str = "",
    *,
    onesided: int = 1,
) -> list[str]:
    """Return [the short-time Fourier transform of a real signal] as one strided convolution:
    each output channel is a window-weighted cosine or sine of one frequency bin, so that one
    Conv (a library kernel) computes every frame's DFT. [batch, length, 1] ->
    [batch, frames, bins, 2]."""
    shape = g.shapes.get(signal)
    if shape is None or len(shape) != 3 or shape[2] != 1:
        raise NotLegalizable("only a real signal [batch, length, 1]")
    step = g.constants.get(frame_step)
    if step is None:
        raise NotLegalizable("frame_step is given at run time")
    if frame_length:
        length_value = g.constants.get(frame_length)
        if length_value is None:
            raise NotLegalizable("frame_length is given at run time")
        length = int(np.asarray(length_value).reshape(()))
    elif window and g.shapes.get(window) and g.shapes[window][0] is not None:
        length = int(g.shapes[window][0])  # type: ignore[arg-type]
    else:
        raise NotLegalizable("neither frame_length nor a window of known length")
    bins = length // 2 + 1 if onesided else length
    cos, sin = _tables(length, bins, inverse=False)
    kind = g.types.get(signal, onnx.TensorProto.FLOAT)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(kind)
    # [2 * bins, 1, length]: the real parts' kernels, then the imaginary parts'.
    kernels = g.const(np.concatenate([cos.T, sin.T])[:, None, :].astype(dtype), dtype)
    if window:
        shaped = g.op("Reshape", window, g.const([1, 1, length]))
        kernels = str(g.op("Mul", kernels, g.op("Cast", shaped, to=kind)))
    frames = g.op(
        "Conv",
        g.op("Transpose", signal, perm=[0, 2, 1]),
        kernels,
        strides=[int(np.asarray(step).reshape(()))],
    )  # [batch, 2 * bins, frames]
    parts = g.op("Reshape", frames, g.const([0, 2, bins, -1]))
    return [str(g.op("Transpose", parts, perm=[0, 3, 2, 1]))]


SIGNAL_LEGALIZATIONS: dict[str, Callable[..., list[str]]] = {"DFT": DFT, "STFT": STFT}
