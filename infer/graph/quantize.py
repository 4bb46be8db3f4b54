"""Static int8 quantization of a float model, calibrated on inputs the user gives.

ONNX Runtime's quantizer (onnxruntime.quantization.quantize_static) writes the QDQ model: a
QuantizeLinear/DequantizeLinear pair on the input of each Conv, Gemm and MatMul on weights,
uint8 with a scale and zero point from the calibration inputs' min and max, and the weights int8,
symmetric per output channel. Those operators' outputs and every other operator stay float32:
one rounding per dense operator's input, and nothing else to convert. infer.optimize.offload then
runs them in oneDNN's int8 kernels, the quantize fused by TVM into the operators before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from infer.errors import InputError, ModelError
from infer.signature import TensorSpec

__all__ = [
    "CHECK_SAMPLES",
    "QUANTIZED_OPS",
    "Calibration",
    "calibration_digest",
    "check_calibration",
    "load_calibration",
    "quantization_record",
    "quantize_int8",
]

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
SCHEME = "uint8 activations (min-max calibration), int8 weights symmetric per channel"
# The calibration samples the parity check runs (the model's own inputs: random ones would
# fall outside the calibrated ranges).
CHECK_SAMPLES = 8

Calibration = Sequence[Mapping[str, np.ndarray]]


def load_calibration(
    path: str | os.PathLike[str], inputs: Sequence[TensorSpec]
) -> list[dict[str, np.ndarray]]:
    """Return the samples of an .npz file whose arrays are named after the model's inputs: an
    array of an input's rank is one sample, one of a rank more holds a sample per row."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"calibration {path}: cannot read it as an .npz file ({exc})") from exc
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise InputError(
            f"calibration {path}: no array for input(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(arrays)) or 'none'})"
        )
    counts = set()
    for spec in inputs:
        rank, got = len(spec.shape), arrays[spec.name].ndim
        if got not in (rank, rank + 1):
            raise InputError(
                f"calibration {path}: array {spec.name!r} has {got} dims; expected {rank} (one "
                f"sample) or {rank + 1} (samples along the first axis)"
            )
        counts.add(1 if got == rank else len(arrays[spec.name]))
    if len(counts) != 1:
        raise InputError(f"calibration {path}: the inputs' sample counts differ ({sorted(counts)})")
    samples = counts.pop()
    return [
        {
            spec.name: arrays[spec.name] if arrays[spec.name].ndim == len(spec.shape)
            else arrays[spec.name][i]
            for spec in inputs
        }
        for i in range(samples)
    ]  # fmt: skip


def check_calibration(
    samples: Calibration, inputs: Sequence[TensorSpec], name: str
) -> list[dict[str, np.ndarray]]:
    """Return the samples with each input in the model's type; InputError naming what differs
    from inputs (the model's, as compiled)."""
    if not samples:
        raise InputError(
            f"{name}: precision int8 needs calibration inputs (an .npz of the model's inputs, "
            "or a list of feeds), to measure the ranges its activations take"
        )
    checked = []
    for index, sample in enumerate(samples):
        feed = {}
        for spec in inputs:
            if spec.name not in sample:
                raise InputError(f"{name}: calibration sample {index} has no input {spec.name!r}")
            value = np.asarray(sample[spec.name])
            want = np.dtype(spec.dtype)
            integers = {value.dtype.kind, want.kind} <= {"i", "u"}
            if value.dtype.kind != want.kind and not integers:
                raise InputError(
                    f"{name}: calibration sample {index}, input {spec.name!r}: expected "
                    f"{want}, got {value.dtype}"
                )
            fixed = [d if isinstance(d, int) else None for d in spec.shape]
            if value.ndim != len(fixed) or any(
                d is not None and d != got for d, got in zip(fixed, value.shape, strict=False)
            ):
                raise InputError(
                    f"{name}: calibration sample {index}, input {spec.name!r}: expected shape "
                    f"{list(spec.shape)}, got {list(value.shape)}"
                )
            feed[spec.name] = value.astype(want, copy=False)
        checked.append(feed)
    return checked


class _Advice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    """Drop the warnings the quantizer logs to the root logger, which would print them: advice
    to pre-process the model (symbolic shapes, folded batch norms), biases it leaves in float
    (PP-OCR det: 60 lines), its opset update. Only the dense operators' inputs are quantized
    here, and the parity check says what that costs."""
    root, advice = logging.getLogger(), _Advice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def _dense_nodes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Return a copy of proto with every top-level node named, and the names of its dense
    operators on weights: each Conv and Gemm, and the MatMuls whose second input is an
    initializer or a Constant (attention's products of activations stay float32; the
    quantizer's MatMulConstBOnly does not apply to QDQ models)."""
    named = onnx.ModelProto()
    named.CopyFrom(proto)
    taken = {node.name for node in named.graph.node if node.name}
    constants = {t.name for t in named.graph.initializer} | {
        out for node in named.graph.node if node.op_type == "Constant" for out in node.output
    }
    dense = []
    for index, node in enumerate(named.graph.node):
        if not node.name:
            node.name = next(
                name for n in itertools.count(index) if (name := f"{node.op_type}_{n}") not in taken
            )
            taken.add(node.name)
        if node.op_type == "MatMul" and (len(node.input) < 2 or node.input[1] not in constants):
            continue
        if node.op_type in QUANTIZED_OPS:
            dense.append(node.name)
    return named, dense


def calibration_digest(samples: Calibration) -> str:
    """Return the SHA-256 of the samples (names, types, shapes and bytes): part of cache keys."""
    digest = hashlib.sha256()
    for sample in samples:
        for key in sorted(sample):
            value = np.ascontiguousarray(sample[key])
            digest.update(f"{key}:{value.dtype}:{value.shape};".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def quantization_record(feeds: Calibration) -> dict[str, Any]:
    """Return what the manifest and the cache key record of an int8 build's quantization: the
    quantizer, its scheme and the calibration samples (checked ones)."""
    import onnxruntime

    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "scheme": SCHEME,
        "ops": list(QUANTIZED_OPS),
        "calibration_samples": len(feeds),
        "calibration_sha256": calibration_digest(feeds),
    }


def quantize_int8(proto: onnx.ModelProto, feeds: Calibration, name: str) -> onnx.ModelProto:
    """Return the QDQ model ONNX Runtime's static quantizer makes of a float model, calibrated
    on feeds (checked by check_calibration)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            feed = next(self.pending, None)
            return None if feed is None else dict(feed)

    named, dense = _dense_nodes(proto)
    if not dense:  # the quantizer would take an empty list for every node
        raise ModelError(
            f"{name}: precision int8 quantizes the inputs of Conv, Gemm and MatMul on weights, "
            "and the model has none"
        )
    with tempfile.TemporaryDirectory(prefix="infer-quantize-") as scratch, _quiet_advice():
        source, quantized = Path(scratch) / "float.onnx", Path(scratch) / "int8.onnx"
        onnx.save(named, str(source))
        try:
            quantize_static(
                source, quantized, _Reader(), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=dense,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                extra_options={"OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)},
            )  # fmt: skip
        except Exception as exc:  # the quantizer's errors are of every kind
            raise ModelError(f"{name}: ONNX Runtime's quantizer failed: {exc}") from exc
        return onnx.load(str(quantized))
