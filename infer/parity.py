"""The parity check: a compiled artifact against ONNX Runtime on seeded random inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.config import Limits, limit_variable
from infer.errors import CompileError, InputError
from infer.signature import (
    CODED_DTYPES,
    TensorSpec,
    concrete_shape,
    format_bytes,
    numpy_dtype,
    split_container,
)

__all__ = [
    "DEFAULT_SEED",
    "PRECISION_BOUNDS",
    "TOLERANCES",
    "OutputParity",
    "ParityReport",
    "PrecisionBound",
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


@dataclass(frozen=True)
class PrecisionBound:
    """How far a reduced-precision build may be from the float32 reference, per float output:
    every element within error_share of the output's largest magnitude (or within atol_floor),
    and the cosine similarity at least min_cosine unless every error is within atol_floor.
    Integer and bool outputs stay exact."""

    min_cosine: float
    error_share: float
    atol_floor: float

    def describe(self) -> str:
        return (
            f"|got - want| <= max({self.error_share:.0%} of the output's largest magnitude, "
            f"{self.atol_floor:g}) + rtol * |want|, and cosine similarity >= {self.min_cosine:g} "
            f"unless every error is under {self.atol_floor:g}"
        )


# The bounds refuse a broken build (errors the size of the signal, e.g. a difference of nearly
# equal products lost to rounding), not bf16's own noise, which the report gives. bf16 keeps 8
# bits of mantissa; measured on seeded random inputs of the reference set (3 seeds each):
# cosine >= 0.99990 on ResNet-18, EfficientNet-Lite0, BERT-base and Silero VAD, 0.99905-0.99987
# on ResNet-50's softmax with errors of up to 5.4% of its largest probability (its random
# weights give large logits); PP-OCR det on noise gives a near-empty map (largest value
# 0.004) whose tiny errors (<= 0.0017) have a cosine of 0.90, hence the floor: one bf16 step at
# 1.0.
# int8 rounds each dense operator's input to 256 levels: measured on its calibration samples,
# cosine 0.99992 on ResNet-18 (8 random inputs, top-1 agreement 100%), but 0.9776 on PP-OCR
# det's map of its real sample page, where 0.85% of the pixels (text edges, a sigmoid near its
# threshold) moved by more than a quarter of the map's range. So int8 bounds the cosine, and
# each element only by the output's largest magnitude: what a broken build exceeds.
PRECISION_BOUNDS: dict[str, PrecisionBound] = {
    "bf16": PrecisionBound(0.995, 0.10, 2.0**-8),
    "int8": PrecisionBound(0.95, 1.0, 2.0**-6),
}
# Symbolic dims without a value in the check get this size.
DEFAULT_SYMBOLIC_DIM = 1
# A symbolic dim never seen first in a shape (a length, a height) gets this size by default:
# a size of 1 there is a degenerate case (1x1 images, one-token texts) no model is made for.
DEFAULT_INNER_SYMBOLIC_DIM = 32
# Integer inputs are drawn from [0, RANDOM_INT_HIGH): they are often indices (Gather), and must
# stay in bounds even of a dim of size 2.
RANDOM_INT_HIGH = 2
# Sequence inputs get this many random tensors.
RANDOM_SEQUENCE_LENGTH = 2


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
    feeds: dict[str, np.ndarray] = {}
    sizes = dict(dims or {})
    if default_dim is not None:
        leading = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
        for spec in specs:
            for d in spec.shape:
                if isinstance(d, str) and d not in sizes:
                    sizes[d] = default_dim if d in leading else DEFAULT_INNER_SYMBOLIC_DIM
    for spec in specs:
        if not spec.is_tensor:
            feeds[spec.name] = _random_contained(spec, spec.container, sizes, default_dim, rng)
            continue
        shape = concrete_shape(spec, sizes, default=default_dim)
        if shape is None:
            symbolic = [d for d in spec.shape if isinstance(d, str) and d not in (dims or {})]
            raise InputError(
                f"input {spec.name!r} has symbolic dim(s) {', '.join(map(repr, symbolic))}; "
                f"give sizes with --shape {spec.name}=d0,d1,... or --dim NAME=SIZE"
            )
        feeds[spec.name] = _random_tensor(spec, shape, rng)
    return feeds


def _random_tensor(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    """Return one random tensor of spec's dtype and shape; InputError past the size cap."""
    dtype = numpy_dtype(spec.dtype)
    cap = Limits.current().max_tensor_bytes
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > cap:
        raise InputError(
            f"input {spec.name!r}: a random {list(shape)} {dtype.name} input would be "
            f"{format_bytes(nbytes)}, over the limit of {format_bytes(cap)} per tensor "
            f"(give smaller sizes with --dim NAME=SIZE, or raise "
            f"{limit_variable('tensor_bytes')})"
        )
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, RANDOM_INT_HIGH, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if spec.dtype in CODED_DTYPES:  # float8, int4, ...: N(0, 1) rounded to the type
        return rng.standard_normal(shape).astype(dtype)
    raise InputError(f"input {spec.name!r}: cannot make random values of dtype {spec.dtype}")


def _random_contained(
    spec: TensorSpec,
    container: str,
    sizes: Mapping[str, int],
    default_dim: int | None,
    rng: np.random.Generator,
) -> Any:
    """Return a random sequence (RANDOM_SEQUENCE_LENGTH tensors) or optional (present) feed."""
    head, inner = split_container(container)
    if head == "sequence":
        return [
            _random_contained(spec, inner, sizes, default_dim, rng)
            for _ in range(RANDOM_SEQUENCE_LENGTH)
        ]
    if head == "optional":
        return _random_contained(spec, inner, sizes, default_dim, rng)
    shape = concrete_shape(spec, sizes, default=default_dim)
    if head == "map" or not spec.dtype or shape is None or not spec.shape:
        raise InputError(
            f"input {spec.name!r} ({spec.container}): cannot make random values of it; "
            "give the inputs"
        )
    return _random_tensor(spec, shape, rng)


def _leaves(value: Any) -> list[np.ndarray]:
    """Return the tensors of an output, a sequence's, optional's or map's in order."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, Mapping):
        return [np.asarray([value[k] for k in sorted(value)])]
    return [np.asarray(value)]


def _flattened(got: Any, want: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Return a container output's tensors and the reference's, each raveled into one array;
    None when their structure differs (count, shapes or dtypes)."""
    ours, theirs = _leaves(got), _leaves(want)
    if [(a.shape, a.dtype) for a in ours] != [(a.shape, a.dtype) for a in theirs]:
        return None
    if not ours:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([a.ravel() for a in ours]), np.concatenate([a.ravel() for a in theirs])


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
    # Reduced-precision builds only: the cosine similarity with the reference and its bound,
    # and for class scores (batch, classes) the share of rows whose top-1 class agrees.
    cosine: float | None = None
    min_cosine: float | None = None
    top1: float | None = None

    @property
    def ok(self) -> bool:
        """Return True when every element is within tolerance (and the cosine within bound)."""
        if self.min_cosine is not None and not (self.cosine or 0.0) >= self.min_cosine:
            return False
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
    precision: str = "fp32"

    @property
    def ok(self) -> bool:
        """Return True when every output matches."""
        return all(o.ok for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in the manifest."""
        tolerance = "|got - want| <= atol + rtol * |want|; NaN matches NaN, Inf its own sign"
        if self.quantized:
            tolerance += (
                f"; quantized model: float atol at least {QUANTIZED_ATOL_SHARE:.0%} of the "
                "output's largest magnitude (one flipped 8-bit rounding moves it ~0.4%)"
            )
        if self.precision in PRECISION_BOUNDS:
            tolerance += (
                f"; {self.precision} build against a float32 reference: "
                f"{PRECISION_BOUNDS[self.precision].describe()}"
            )
        return {
            "status": "passed" if self.ok else "failed",
            "reference": self.reference,
            "seed": self.seed,
            "precision": self.precision,
            "tolerance": tolerance,
            "outputs": [o.to_json() for o in self.outputs],
        }

    def summary(self) -> str:
        """Return one line: outputs compared, the largest error, and for a reduced precision
        the lowest cosine similarity and the top-1 agreement of class scores."""
        worst = max((o.max_abs for o in self.outputs), default=0.0)
        text = f"{len(self.outputs)} outputs, max abs error {worst:.3g}"
        cosines = [o.cosine for o in self.outputs if o.cosine is not None]
        if cosines:
            text += f", {self.precision}: lowest cosine similarity {min(cosines):.6f}"
        top1 = [o.top1 for o in self.outputs if o.top1 is not None]
        if top1:
            text += f", top-1 agreement {min(top1):.0%}"
        return text

    def raise_for_mismatch(self, model: str) -> None:
        """Raise CompileError naming every output out of tolerance and its errors."""
        bad = [o for o in self.outputs if not o.ok]
        if bad:
            parts = [
                f"output {o.name!r}: {o.mismatches}/{o.size} elements out of tolerance "
                f"(max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}; atol {o.atol:g}, rtol {o.rtol:g}"
                + (
                    f"; cosine similarity {o.cosine:.6f}, bound {o.min_cosine:g}"
                    if o.min_cosine is not None
                    else ""
                )
                + ")"
                for o in bad
            ]
            what = f"{model}: does not match {self.reference}"
            if self.precision != "fp32":
                what = f"{model}: the {self.precision} build is too far from {self.reference} (float32)"
                parts.append("build with precision fp32, or check=False to accept it")
            raise CompileError(f"{what}: " + "; ".join(parts))


def _largest(want: np.ndarray) -> float:
    finite = want[np.isfinite(want)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def _compare(
    name: str, got: np.ndarray, want: np.ndarray, quantized: bool, precision: str = "fp32"
) -> OutputParity:
    dtype = want.dtype.name
    atol, rtol = TOLERANCES.get(dtype, EXACT)
    if dtype in CODED_DTYPES and got.dtype == want.dtype:  # compared as values, NaN equal
        got, want = got.astype(np.float32), want.astype(np.float32)
    if quantized and want.dtype.kind == "f" and want.size:
        atol = max(atol, QUANTIZED_ATOL_SHARE * _largest(want))
    reduced = PRECISION_BOUNDS.get(precision) if want.dtype.kind == "f" else None
    if reduced is not None and want.size:
        atol = max(atol, reduced.error_share * _largest(want), reduced.atol_floor)
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
    if reduced is None:
        return OutputParity(name, dtype, max_abs, max_rel, atol, rtol, mismatches, want.size)
    return OutputParity(
        name, dtype, max_abs, max_rel, atol, rtol, mismatches, want.size,
        cosine=_cosine(np.where(finite, g, 0.0), np.where(finite, w, 0.0)),
        min_cosine=reduced.min_cosine if max_abs > reduced.atol_floor else None,
        top1=_top1_agreement(g, w),
    )  # fmt: skip


def _cosine(got: np.ndarray, want: np.ndarray) -> float:
    """Return the cosine similarity of two arrays as vectors: 1.0 when both are zero, 0.0 when
    only one is."""
    norms = float(np.linalg.norm(got)) * float(np.linalg.norm(want))
    if norms == 0.0:
        return 1.0 if not got.any() and not want.any() else 0.0
    return float(np.dot(got.ravel(), want.ravel()) / norms)


def _top1_agreement(got: np.ndarray, want: np.ndarray) -> float | None:
    """Return the share of rows whose argmax agrees, for outputs shaped like class scores
    (batch, classes >= 2); else None."""
    if got.ndim != 2 or got.shape[-1] < 2 or got.size == 0:
        return None
    return float(np.mean(np.argmax(got, axis=-1) == np.argmax(want, axis=-1)))


def compare_outputs(
    specs: Sequence[TensorSpec],
    got: Sequence[np.ndarray],
    want: Sequence[np.ndarray],
    reference: str,
    seed: int,
    quantized: bool = False,
    precision: str = "fp32",
) -> ParityReport:
    """Return the parity report of got (ours) against want (the reference), output by output;
    quantized widens the float tolerance (see QUANTIZING_OPS), a reduced precision applies its
    PRECISION_BOUNDS."""
    compared = []
    for s, g, w in zip(specs, got, want, strict=True):
        if not s.is_tensor:
            pair = _flattened(g, w)
            if pair is None:  # a different count or shape of tensors: nothing compares
                inf = float("inf")
                compared.append(OutputParity(s.name, s.container, inf, inf, 0.0, 0.0, 1, 1))
                continue
            g, w = pair
        compared.append(_compare(s.name, g, w, quantized, precision))
    return ParityReport(reference, seed, compared, quantized, precision)
