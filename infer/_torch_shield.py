"""Keep TVM's own modules from importing PyTorch when nothing else has (installed on import).

tvm_ffi and tvm.relax import torch on their first import, whenever it is installed, to convert
torch tensors in FFI calls; infer passes numpy arrays and DLPack tensors only. On this machine
(torch 2.13, CPU) that import cost 1.4-1.7 s and ~200 MiB in every process that loads an
artifact: Silero VAD's `import infer` + load + first run took 2.6 s and peaked at 418 MiB, and
0.97 s and 222 MiB with this finder.

The finder below answers only imports of torch made from TVM's modules, with ImportError,
which they expect when torch is missing. Once torch is imported by anyone else (a user's code,
infer's PyTorch frontend), Python finds it in sys.modules and never asks the finder again.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from typing import Any

__all__ = ["install"]

_TVM_PACKAGES = ("tvm_ffi", "tvm")


class _TorchFromTvm(MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name != "torch":
            return None
        frame = sys._getframe(1)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not module.startswith(("importlib", "_frozen_importlib")):
                if module.split(".", 1)[0] in _TVM_PACKAGES:
                    raise ModuleNotFoundError(
                        "torch is not imported for TVM by infer", name="torch"
                    )
                return None  # imported by someone else: the other finders look for it
            frame = frame.f_back  # type: ignore[assignment]
        return None


def install() -> None:
    """Put the finder first on sys.meta_path, once; nothing to do when torch is imported."""
    if "torch" in sys.modules or any(isinstance(f, _TorchFromTvm) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchFromTvm())


install()
