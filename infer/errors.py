"""The exception tree of infer.

    InferError
    ├── ModelError           malformed, unsafe or unreadable model
    ├── UnsupportedOpError   ops the compiler cannot take (all of them, at once)
    ├── CompileError         import, compile or parity check failed
    ├── ArtifactError        hash, version, target or format mismatch of an artifact
    ├── InputError           a feed's name, dtype or shape is wrong
    └── PipelineError        pre/post-processing failed

    InferWarning (a UserWarning)
    └── FallbackWarning      a slower path was taken, and why

Every message names what was wrong (the input, op, file or field) and, where it applies,
the expected and the actual value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ArtifactError",
    "CompileError",
    "FallbackWarning",
    "InferError",
    "InferWarning",
    "InputError",
    "ModelError",
    "PipelineError",
    "UnsupportedOp",
    "UnsupportedOpError",
]


class InferError(Exception):
    """Base class of every error infer raises on purpose."""


class InferWarning(UserWarning):
    """Base class of infer's own warnings (the test suite turns them into errors)."""


class FallbackWarning(InferWarning):
    """A slower path was taken because the default one cannot handle this model."""


class ModelError(InferError):
    """The model is malformed, unsafe (external data leaving its folder) or unreadable."""


@dataclass(frozen=True)
class UnsupportedOp:
    """One op type the compiler cannot import, with where it occurs."""

    op_type: str
    domain: str
    count: int
    node_names: tuple[str, ...]

    def describe(self) -> str:
        """Return one line: op type (domain), count and the first node names."""
        qualified = (
            self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}::{self.op_type}"
        )
        names = ", ".join(repr(n) for n in self.node_names)
        more = "" if self.count <= len(self.node_names) else ", ..."
        return f"{qualified} x{self.count} (nodes {names}{more})"


class UnsupportedOpError(InferError):
    """The model uses ops the compiler cannot import; lists every one of them."""

    def __init__(self, ops: Sequence[UnsupportedOp], model: str = "model") -> None:
        self.ops = tuple(ops)
        lines = "; ".join(op.describe() for op in self.ops)
        super().__init__(f"{model} uses {len(self.ops)} unsupported op type(s): {lines}")


class CompileError(InferError):
    """Import, compilation, export or the parity check against ONNX Runtime failed."""


class ArtifactError(InferError):
    """An artifact is damaged, tampered with, or built for another machine or version."""


class InputError(InferError):
    """A feed given to Session.run has a wrong name, dtype or shape."""


class PipelineError(InferError):
    """Pre- or post-processing of a pipeline failed."""
