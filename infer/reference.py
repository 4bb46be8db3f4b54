"""ONNX Runtime as the reference: the same model, the same inputs, the same thread count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from infer.errors import CompileError
from infer.signature import TensorSpec, numpy_dtype

__all__ = ["ReferenceFailed", "ReferenceSession", "SessionOnOnnxRuntime", "SpecReference"]

# ONNX Runtime's type names of the narrow types it hands back as uint8 codes.
_ORT_CODED = {
    "tensor(float8e4m3fn)": "float8_e4m3fn",
    "tensor(float8e4m3fnuz)": "float8_e4m3fnuz",
    "tensor(float8e5m2)": "float8_e5m2",
    "tensor(float8e5m2fnuz)": "float8_e5m2fnuz",
}


class ReferenceFailed(CompileError):
    """The reference runtime cannot load or run the model."""


class ReferenceSession:
    """An onnxruntime.InferenceSession on the CPU with a fixed number of intra-op threads."""

    def __init__(self, model: onnx.ModelProto | str, threads: int, *, spin: bool = True) -> None:
        """model is a ModelProto or the path of an .onnx file (external data beside it). Without
        spin, its threads sleep as soon as a run ends instead of ONNX Runtime's default busy
        wait (a compile times kernels right after its reference run)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 4  # its errors come back as exceptions, which we report
        self.version = f"onnxruntime {ort.__version__}"
        try:
            self._session = ort.InferenceSession(
                model if isinstance(model, str) else model.SerializeToString(),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise ReferenceFailed(
                f"ONNX Runtime cannot load the model for reference: {exc}"
            ) from None
        self._views = [
            numpy_dtype(_ORT_CODED[o.type]) if o.type in _ORT_CODED else None
            for o in self._session.get_outputs()
        ]

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """Return every output for feeds in ONNX output order (tensors as numpy arrays)."""
        try:
            outputs: list[Any] = self._session.run(None, dict(feeds))
        except Exception as exc:
            raise ReferenceFailed(f"ONNX Runtime failed on the reference run: {exc}") from None
        return [_output(o, v) for o, v in zip(outputs, self._views, strict=True)]


class SpecReference:
    """The ONNX reference evaluator (numpy written from the spec): the reference for models
    ONNX Runtime cannot run (int4 outputs, float8 FNUZ arithmetic), named in the report."""

    def __init__(self, model: onnx.ModelProto, why: str) -> None:
        from onnx.reference import ReferenceEvaluator

        self.version = f"the onnx {onnx.__version__} reference evaluator ({why})"
        try:
            self._evaluator = ReferenceEvaluator(model)
        except Exception as exc:
            raise ReferenceFailed(f"{why}; nor can onnx's reference evaluator: {exc}") from None
        self._why = why

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """Return every output for feeds in ONNX output order (tensors as numpy arrays)."""
        try:
            outputs = self._evaluator.run(None, dict(feeds))
        except Exception as exc:
            raise ReferenceFailed(
                f"{self._why}; nor can onnx's reference evaluator: {type(exc).__name__}: {exc}"
            ) from None
        return [_output(o) for o in outputs]


def _output(value: Any, view: np.dtype[Any] | None = None) -> Any:
    """Return an output with tensors as arrays (narrow types viewed as such); sequences, maps
    and absent optionals as they come (lists, dicts, None)."""
    if isinstance(value, list | dict) or value is None:
        return value
    array = np.asarray(value)
    return array if view is None else array.view(view)


class SessionOnOnnxRuntime:
    """ONNX Runtime on an artifact's source model (or model), with the artifact's signature:
    what a pipeline or the server needs of a Session, so that the same code runs around it."""

    platform = "onnxruntime"

    def __init__(self, session: Any, threads: int, model: str | None = None) -> None:
        from infer.api import reference_file, source_model

        self.manifest = session.manifest
        self.path = session.path
        self._inputs, self._outputs = session.get_inputs(), session.get_outputs()
        self._reference = ReferenceSession(
            model or reference_file(session.path) or source_model(session.path), threads
        )

    def get_inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def run(self, _names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._reference.run(feeds)
