"""The parity check: a compiled artifact against ONNX Runtime on seeded random inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.config import Limits, limit_variable
from infer.errors import CompileError, InputError
from infer.signature import TensorSpec, concrete_shape, format_bytes

__all__ = [
    "DEFAULT_SEED",
    "TOLERANCES",
    "OutputParity",
    "ParityReport",
    "compare_outputs",
    "random_feeds",
]

DEFAULT_SEED = 0
# (atol, rtol) per output dtype: |got - want| <= atol + rtol * |want| elementwise.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-4, 1e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}
EXACT = (0.0, 0.0)
# Ops that round computed values to 8 bits: a float difference far below the tolerance can
# move a value across a rounding boundary, one quantization step (1/255 of the range) away,
# and downstream outputs move by that much. Models with them get a wider absolute tolerance.
QUANTIZING_OPS = frozenset(
    {"DynamicQuantizeLinear", "QuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
     "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat",
     "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}
)  # fmt: skip
# ... as this share of the output's largest magnitude: a few steps at 8 bits.
QUANTIZED_ATOL_SHARE = 0.02
# Symbolic dims without a value in the check get this size.
DEFAULT_SYMBOLIC_DIM = 1
# A symbolic dim never seen first in a shape (a length, a height) gets this size by default:
# a size of 1 there is a degenerate case (1x1 images, one-token texts) no model is made for.
DEFAULT_INNER_SYMBOLIC_DIM = 32
# Integer inputs are drawn from [0, RANDOM_INT_HIGH): they are often indices (Gather), and must
# stay in bounds even of a dim of size 2.
RANDOM_INT_HIGH = 2


def random_feeds(
    specs: Sequence[TensorSpec],
    seed: int = DEFAULT_SEED,
    dims: Mapping[str, int] | None = None,
    default_dim: int | None = DEFAULT_SYMBOLIC_DIM,
) -> dict[str, np.ndarray]:
    """Return seeded random inputs: floats ~ N(0, 1), ints in [0, RANDOM_INT_HIGH), fair bools.

    Symbolic dims take their size from dims, else default_dim when first in some shape (a
    batch) and DEFAULT_INNER_SYMBOLIC_DIM otherwise; with default_dim None, InputError.
    """
    rng = np.random.default_rng(seed)
    cap = Limits.current().max_tensor_bytes
    feeds: dict[str, np.ndarray] = {}
    sizes = dict(dims or {})
    if default_dim is not None:
        leading = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
        for spec in specs:
            for d in spec.shape:
                if isinstance(d, str) and d not in sizes:
                    sizes[d] = default_dim if d in leading else DEFAULT_INNER_SYMBOLIC_DIM
    for spec in specs:
        shape = concrete_shape(spec, sizes, default=default_dim)
        if shape is None:
            symbolic = [d for d in spec.shape if isinstance(d, str) and d not in (dims or {})]
            raise InputError(
                f"input {spec.name!r} has symbolic dim(s) {', '.join(map(repr, symbolic))}; "
                f"give sizes with --shape {spec.name}=d0,d1,... or --dim NAME=SIZE"
            )
        dtype = np.dtype(spec.dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > cap:
            raise InputError(
                f"input {spec.name!r}: a random {list(shape)} {dtype.name} input would be "
                f"{format_bytes(nbytes)}, over the limit of {format_bytes(cap)} per tensor "
                f"(give smaller sizes with --dim NAME=SIZE, or raise "
                f"{limit_variable('tensor_bytes')})"
            )
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, RANDOM_INT_HIGH, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise InputError(
                f"input {spec.name!r}: cannot make random values of dtype {spec.dtype}"
            )
    return feeds


@dataclass(frozen=True)
class OutputParity:
    """How one output compares with ONNX Runtime's."""

    name: str
    dtype: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    mismatches: int
    size: int

    @property
    def ok(self) -> bool:
        """Return True when every element is within tolerance."""
        return self.mismatches == 0

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in the manifest."""
        return self.__dict__.copy()


@dataclass(frozen=True)
class ParityReport:
    """The parity check's result for every output."""

    reference: str
    seed: int
    outputs: list[OutputParity]
    quantized: bool = False

    @property
    def ok(self) -> bool:
        """Return True when every output matches."""
        return all(o.ok for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in the manifest."""
        return {
            "status": "passed" if self.ok else "failed",
            "reference": self.reference,
            "seed": self.seed,
            "tolerance": "|got - want| <= atol + rtol * |want|; NaN matches NaN, Inf its own sign"
            + (
                f"; quantized model: float atol at least {QUANTIZED_ATOL_SHARE:.0%} of the "
                "output's largest magnitude (one flipped 8-bit rounding moves it ~0.4%)"
                if self.quantized
                else ""
            ),
            "outputs": [o.to_json() for o in self.outputs],
        }

    def raise_for_mismatch(self, model: str) -> None:
        """Raise CompileError naming every output out of tolerance and its errors."""
        bad = [o for o in self.outputs if not o.ok]
        if bad:
            parts = [
                f"output {o.name!r}: {o.mismatches}/{o.size} elements out of tolerance "
                f"(max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}; atol {o.atol:g}, rtol {o.rtol:g})"
                for o in bad
            ]
            raise CompileError(f"{model}: does not match {self.reference}: " + "; ".join(parts))


def _compare(name: str, got: np.ndarray, want: np.ndarray, quantized: bool) -> OutputParity:
    dtype = want.dtype.name
    atol, rtol = TOLERANCES.get(dtype, EXACT)
    if quantized and want.dtype.kind == "f" and want.size:
        finite = want[np.isfinite(want)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        atol = max(atol, QUANTIZED_ATOL_SHARE * largest)
    if got.shape != want.shape or got.dtype != want.dtype:
        return OutputParity(
            name, dtype, float("inf"), float("inf"), atol, rtol, max(want.size, 1), want.size
        )
    if want.dtype.kind not in "fc":
        mismatches = int(np.count_nonzero(got != want))
        diff = (
            np.abs(got.astype(np.float64) - want.astype(np.float64)) if want.size else np.zeros(0)
        )
        max_abs = float(diff.max()) if diff.size else 0.0
        return OutputParity(
            name,
            dtype,
            max_abs,
            0.0 if max_abs == 0 else float("inf"),
            atol,
            rtol,
            mismatches,
            want.size,
        )
    g, w = got.astype(np.float64), want.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    inf_g, inf_w = np.isinf(g), np.isinf(w)
    special_bad = (nan_g != nan_w) | ((inf_g | inf_w) & (g != w) & ~(nan_g & nan_w))
    finite = ~(nan_g | nan_w | inf_g | inf_w)
    diff = np.abs(np.where(finite, g, 0.0) - np.where(finite, w, 0.0))
    bound = atol + rtol * np.abs(np.where(finite, w, 0.0))
    mismatches = int(np.count_nonzero((diff > bound) | special_bad))
    # Relative error only where the reference is above atol: near zero it says nothing.
    significant = finite & (np.abs(w) > max(atol, np.finfo(np.float64).tiny))
    rel = diff[significant] / np.abs(w[significant])
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    if np.any(special_bad):
        max_abs = max_rel = float("inf")
    return OutputParity(name, dtype, max_abs, max_rel, atol, rtol, mismatches, want.size)


def compare_outputs(
    specs: Sequence[TensorSpec],
    got: Sequence[np.ndarray],
    want: Sequence[np.ndarray],
    reference: str,
    seed: int,
    quantized: bool = False,
) -> ParityReport:
    """Return the parity report of got (ours) against want (the reference), output by output;
    quantized widens the float tolerance (see QUANTIZING_OPS)."""
    compared = [_compare(s.name, g, w, quantized) for s, g, w in zip(specs, got, want, strict=True)]
    return ParityReport(reference, seed, compared, quantized)
