"""Loading and running compiled artifacts; imports tvm.runtime, never the compiler."""

from infer.runtime.session import Session

__all__ = ["Session"]
