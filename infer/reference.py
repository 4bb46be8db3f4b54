"""ONNX Runtime as the reference: the same model, the same inputs, the same thread count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from infer.errors import CompileError

__all__ = ["ReferenceSession"]


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
