"""Checking feeds against an input signature, with messages as good as ONNX Runtime's."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infer.errors import InputError
from infer.signature import TensorSpec, format_shape

__all__ = ["check_feeds"]


def _as_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if hasattr(value, "__array__") or isinstance(value, list | tuple | int | float | bool):
        try:
            return np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InputError(f"input {name!r}: cannot be read as an array ({exc})") from None
    raise InputError(
        f"input {name!r}: expected a numpy array of {spec.dtype}, got {type(value).__name__}"
    )


@functools.cache
def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, Any]) -> list[np.ndarray]:
    """Return the feeds as C-contiguous arrays in signature order; InputError naming what is wrong."""
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds must be a dict of input name to array, got {type(feeds).__name__}")
    valid = [s.name for s in specs]
    unknown = [n for n in feeds if n not in valid]
    if unknown:
        raise InputError(
            f"unknown input name(s) {', '.join(repr(n) for n in unknown)}; "
            f"the model's inputs are {', '.join(repr(n) for n in valid)}"
        )
    missing = [n for n in valid if n not in feeds]
    if missing:
        raise InputError(f"missing input(s): {', '.join(repr(n) for n in missing)}")
    arrays: list[np.ndarray] = []
    bound: dict[str, tuple[int, str]] = {}
    for spec in specs:
        array = _as_array(spec.name, feeds[spec.name], spec)
        if array.dtype != _dtype(spec.dtype):
            raise InputError(f"input {spec.name!r}: expected {spec.dtype}, got {array.dtype.name}")
        if array.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name!r}: expected rank {len(spec.shape)} {format_shape(spec.shape)}, "
                f"got rank {array.ndim} {format_shape(array.shape)}"
            )
        wrong = []
        for index, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(want, int):
                if want != got:
                    wrong.append(f"dim {index}: expected {want}, got {got}")
            elif want in bound and bound[want][0] != got:
                size, where = bound[want]
                wrong.append(f"dim {index} ({want!r}): expected {size} as in {where}, got {got}")
            else:
                bound.setdefault(want, (got, f"input {spec.name!r} dim {index}"))
        if wrong:
            raise InputError(
                f"input {spec.name!r}: shape {format_shape(array.shape)} does not match "
                f"{format_shape(spec.shape)}: " + "; ".join(wrong)
            )
        # np.ascontiguousarray would turn a 0-d array into 1-d
        arrays.append(array if array.flags.c_contiguous else array.copy(order="C"))
    return arrays
