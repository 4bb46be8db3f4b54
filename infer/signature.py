"""Tensor signatures (name, dtype, shape with symbolic dims) shared by artifact and runtime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CODED_DTYPES", "Dim", "TensorSpec", "concrete_shape", "numpy_dtype", "split_container"]

Dim = int | str
"""A dimension: a fixed size, or the name of a symbolic one ("batch")."""

# The narrow types (ml_dtypes' names) a compiled model holds as one uint8 code per element
# (infer/graph/narrow.py): the session views such feeds and outputs as uint8 and back.
CODED_DTYPES = frozenset(
    {
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn",
        "int4",
        "uint4",
        "int2",
        "uint2",
    }
)


def numpy_dtype(name: str) -> np.dtype[Any]:
    """Return the numpy dtype of a spec's dtype name, ml_dtypes' (bfloat16, float8, ...) too."""
    if name in CODED_DTYPES or name == "bfloat16":
        import ml_dtypes  # noqa: F401  (registers its types' names with numpy)
    return np.dtype(name)


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of one model input or output.

    A sequence, optional or map value (run on ONNX Runtime) says so in container, from the
    outside in ("sequence", "optional(sequence)", "sequence(map(int64))"); dtype and shape are
    then its tensors' (dtype "" when ONNX leaves it open, shape () when the rank is unknown).
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    container: str = ""

    @property
    def is_static(self) -> bool:
        """Return True when every dim is a fixed size."""
        return all(isinstance(d, int) for d in self.shape)

    @property
    def is_tensor(self) -> bool:
        """Return True for a plain tensor (not a sequence, optional or map)."""
        return not self.container

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in the manifest."""
        data = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        return {**data, "container": self.container} if self.container else data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        """Return the spec read back from its manifest JSON form."""
        shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
        container = str(data.get("container", ""))
        return cls(str(data["name"]), str(data["dtype"]), shape, container)

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        tensor = f"{self.dtype}[{dims}]"
        return (
            f"{self.name}: {self.container}<{tensor}>"
            if self.container
            else f"{self.name}: {tensor}"
        )


def split_container(container: str) -> tuple[str, str]:
    """Return a container's outermost kind and what it holds: "optional(sequence)" gives
    ("optional", "sequence"), "map(int64, sequence)" ("map", "int64, sequence"), a tensor ("", "")."""
    head, _, rest = container.partition("(")
    return head, rest[:-1] if rest else ""


def concrete_shape(
    spec: TensorSpec, dims: Mapping[str, int], default: int | None = None
) -> tuple[int, ...] | None:
    """Return spec's shape with symbolic dims filled from dims (or default); None if one is left."""
    out: list[int] = []
    for d in spec.shape:
        if isinstance(d, int):
            out.append(d)
        elif d in dims:
            out.append(dims[d])
        elif default is not None:
            out.append(default)
        else:
            return None
    return tuple(out)


def format_shape(shape: Sequence[Dim]) -> str:
    """Return a shape as '(1, 3, batch)'."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def format_bytes(n: int) -> str:
    """Return n bytes in the largest binary unit that keeps it at least 1 (1.5 GiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
