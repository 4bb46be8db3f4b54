"""Checking feeds against an input signature, with messages as good as ONNX Runtime's."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infer.config import Limits, limit_variable
from infer.errors import InputError
from infer.signature import TensorSpec, format_bytes, format_shape, numpy_dtype, split_container

__all__ = ["FeedChecker", "check_feeds", "check_indices"]


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
    return numpy_dtype(name)


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, Any]) -> list[Any]:
    """Return the feeds as C-contiguous arrays in signature order (sequences as lists of them);
    InputError naming what is wrong."""
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
    arrays: list[Any] = []
    bound: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if not spec.is_tensor:
            arrays.append(_contained(spec, feeds[spec.name], spec.container, spec.name))
            continue
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
        if array.flags.c_contiguous:
            arrays.append(array)
            continue
        # A view (broadcast, strided) can describe far more than any memory holds. The cap is
        # read only here: contiguous feeds, the common case, pay nothing for it.
        cap = Limits.current().max_tensor_bytes
        if array.nbytes > cap:
            raise InputError(
                f"input {spec.name!r}: a non-contiguous {format_shape(array.shape)} "
                f"{array.dtype.name} view would be copied into {format_bytes(array.nbytes)}, over "
                f"the limit of {format_bytes(cap)} per tensor "
                f"(raise it with {limit_variable('tensor_bytes')})"
            )
        # np.ascontiguousarray would turn a 0-d array into 1-d
        arrays.append(array.copy(order="C"))
    return arrays


class FeedChecker:
    """check_feeds for one signature, remembering the dtypes and shapes it last accepted: feeds
    laid out as the previous run's (the same names, C-contiguous arrays of the same dtypes and
    shapes) pass without the checks, which cost ~3 µs of a small model's run."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self._names = [s.name for s in self.specs]
        self._tensors_only = all(s.is_tensor for s in self.specs)
        self._accepted: list[tuple[np.dtype[Any], tuple[int, ...]]] | None = None

    def __call__(self, feeds: Mapping[str, Any]) -> list[Any]:
        accepted = self._accepted
        if accepted is not None and type(feeds) is dict and len(feeds) == len(self._names):
            arrays = [feeds.get(n) for n in self._names]
            for a, (dtype, shape) in zip(arrays, accepted, strict=True):  # a loop: 2x all()'s speed
                if not (
                    type(a) is np.ndarray
                    and a.dtype is dtype
                    and a.shape == shape
                    and a.flags.c_contiguous
                ):
                    break
            else:
                return arrays
        arrays = check_feeds(self.specs, feeds)
        if self._tensors_only and all(type(a) is np.ndarray for a in arrays):
            self._accepted = [(a.dtype, a.shape) for a in arrays]
        return arrays


def _contained(spec: TensorSpec, value: Any, container: str, where: str) -> Any:
    """Return a sequence, optional or map feed as ONNX Runtime takes it (lists of arrays);
    InputError naming the element that does not fit."""
    head, inner = split_container(container)
    if head == "optional":
        return None if value is None else _contained(spec, value, inner, where)
    if head == "map":
        if not isinstance(value, Mapping):
            raise InputError(f"input {where!r}: expected a dict, got {type(value).__name__}")
        return dict(value)
    if head == "sequence":
        if not isinstance(value, list | tuple):
            raise InputError(
                f"input {where!r}: expected a list (an ONNX sequence), got {type(value).__name__}"
            )
        return [_contained(spec, v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    array = _as_array(where, value, spec)
    if spec.dtype and array.dtype != _dtype(spec.dtype):
        raise InputError(f"input {where!r}: expected {spec.dtype}, got {array.dtype.name}")
    return np.ascontiguousarray(array)


def check_indices(
    checks: Sequence[Mapping[str, Any]], specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]
) -> None:
    """InputError when a feed that indexes a dim (a manifest index check) holds an index out of range.

    Valid indices into a dim of size n are -n..n-1, as ONNX says for Gather and Scatter.
    """
    if not checks:
        return
    by_name = {spec.name: (spec, array) for spec, array in zip(specs, arrays, strict=True)}
    symbols = {
        dim: size
        for spec, array in by_name.values()
        if spec.is_tensor
        for dim, size in zip(spec.shape, array.shape, strict=True)
        if isinstance(dim, str)
    }
    for check in checks:
        spec, array = by_name[check["input"]]
        if not array.size:
            continue
        extents = [e if isinstance(e, int) else symbols.get(e) for e in check["extents"]]
        columns = [array] if len(extents) == 1 else [array[..., j] for j in range(len(extents))]
        for extent, column in zip(extents, columns, strict=False):
            if extent is None:
                continue
            low, high = int(column.min()), int(column.max())
            bad = low if low < -extent else high if high >= extent else None
            if bad is not None:
                raise InputError(
                    f"input {spec.name!r}: index {bad} is out of range for {check['op']} node "
                    f"{check['node']!r}, which indexes a dim of size {extent} "
                    + (f"(valid: {-extent}..{extent - 1})" if extent else "(no index is valid)")
                )
