"""infer: ONNX models compiled by Apache TVM, checked against ONNX Runtime, run from Python.

art = infer.compile("model.onnx", shapes={"x": (1, 3, 224, 224)}, output="model.infer")
sess = infer.load("model.infer", threads=2)
outputs = sess.run(None, {"x": x})
clf = infer.pipeline("image-classification")     # the task's default model, compiled on first use
clf("photo.jpg")                                  # [{"label": ..., "score": ...}, ...]
"""

from infer import _torch_shield  # noqa: F401 - first: installs its finder before TVM is imported
from infer._version import __version__
from infer.api import Artifact, Tuned, check, compile, load, tune
from infer.errors import (
    ArtifactError,
    CompileError,
    FallbackWarning,
    InferError,
    InputError,
    ModelError,
    PipelineError,
    UnsupportedOpError,
)
from infer.pipelines import Pipeline, pipeline
from infer.runtime.session import Session
from infer.signature import TensorSpec

__all__ = [
    "Artifact",
    "ArtifactError",
    "CompileError",
    "FallbackWarning",
    "InferError",
    "InputError",
    "ModelError",
    "Pipeline",
    "PipelineError",
    "Session",
    "TensorSpec",
    "Tuned",
    "UnsupportedOpError",
    "__version__",
    "check",
    "compile",
    "load",
    "pipeline",
    "tune",
]
