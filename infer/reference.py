"""ONNX Runtime as the reference: the same model, the same inputs, the same thread count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from infer.errors import CompileError
from infer.signature import TensorSpec

__all__ = ["ReferenceSession", "SessionOnOnnxRuntime"]


class ReferenceSession:
    """An onnxruntime.InferenceSession on the CPU with a fixed number of intra-op threads."""

    def __init__(self, model: onnx.ModelProto | str, threads: int) -> None:
        """model is a ModelProto or the path of an .onnx file (external data beside it)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.version = f"onnxruntime {ort.__version__}"
        try:
            self._session = ort.InferenceSession(
                model if isinstance(model, str) else model.SerializeToString(),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise CompileError(f"ONNX Runtime cannot load the model for reference: {exc}") from None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Return every output for feeds, as numpy arrays in ONNX output order."""
        try:
            outputs: list[Any] = self._session.run(None, dict(feeds))
        except Exception as exc:
            raise CompileError(f"ONNX Runtime failed on the reference run: {exc}") from None
        return [np.asarray(o) for o in outputs]


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
