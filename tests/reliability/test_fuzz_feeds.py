"""Feeds are untrusted input: Session.run gives ONNX Runtime's answer or an InputError, nothing else.

Hypothesis draws each feed's dtype, rank, dims (0-size included, dims that disagree with the
signature or with each other), memory layout (transposed, strided, reversed, broadcast with
stride 0, and broadcast views of 2^40 rows that no memory holds) and values (NaN, infinities,
signed zeros), and Gather indices in and out of range. ONNX Runtime on the same feeds is the
oracle: where it answers, infer must answer the same; where it refuses (an out-of-range index),
infer must raise InputError. Feeds that do not fit the signature and broadcast views past the
tensor cap must be refused before any copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import infer
from infer.errors import InputError
from tests import onnx_models

EXAMPLES = 150
DTYPES = ("float32", "float64", "float16", "int64", "int32", "bool", "uint8")
LAYOUTS = ("contiguous", "transposed", "strided", "reversed", "broadcast", "huge")
HUGE_ROWS = 1 << 40
SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 3.4e38)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("feeds")
    built = {}
    for name, proto in (
        ("mlp", onnx_models.mlp(batch="batch")),
        ("multi_io", onnx_models.multi_io()),
        ("relu_softmax", relu_softmax()),
    ):
        session = infer.compile(proto, output=directory / f"{name}.infer", threads=1).load(
            threads=1
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        reference = ort.InferenceSession(proto.SerializeToString(), options)
        built[name] = (session, reference)
    yield built


def relu_softmax() -> onnx.ModelProto:
    """Return Relu -> Softmax -> Sqrt on [batch, 16]: NaN and infinities through TVM's own kernels."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Softmax", ["r"], ["s"], axis=-1),
            helper.make_node("Sqrt", ["s"], ["y"]),
        ],
        "relu_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@st.composite
def feed_sets(draw: st.DrawFn, specs: list[Any], specials: bool) -> dict[str, np.ndarray]:
    symbols: dict[str, int] = {}
    feeds: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for spec in specs:
        dtype = spec.dtype if draw(st.floats(0, 1)) < 0.75 else draw(st.sampled_from(DTYPES))
        shape = []
        for dim in spec.shape:
            if isinstance(dim, str):
                size = symbols.setdefault(dim, draw(st.sampled_from((0, 1, 2, 3, 7))))
                if draw(st.floats(0, 1)) < 0.1:
                    size = draw(st.integers(0, 9))  # disagreeing with the same symbol elsewhere
            else:
                size = dim if draw(st.floats(0, 1)) < 0.85 else draw(st.integers(0, 9))
            shape.append(size)
        if draw(st.floats(0, 1)) < 0.08:
            shape = [*shape, 2] if draw(st.booleans()) or not shape else shape[:-1]
        layout = draw(st.sampled_from(LAYOUTS))
        array = make_array(rng, np.dtype(dtype), tuple(shape), layout, spec.name, specials)
        feeds[spec.name] = array
    return feeds


def make_array(
    rng: np.random.Generator,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    layout: str,
    name: str,
    specials: bool,
) -> np.ndarray:
    def fill(at: tuple[int, ...]) -> np.ndarray:
        return values(rng, dtype, at, name, specials)

    if layout == "huge" and shape:
        return np.broadcast_to(fill((1, *shape[1:])), (HUGE_ROWS, *shape[1:]))
    if layout == "transposed" and len(shape) >= 2:
        return fill(shape[::-1]).T
    if layout == "strided" and shape:
        return fill((shape[0] * 2, *shape[1:]))[::2]
    if layout == "reversed" and shape:
        return fill(shape)[::-1]
    if layout == "broadcast" and shape:
        return np.broadcast_to(fill((1, *shape[1:])), shape)
    return fill(shape)


def values(
    rng: np.random.Generator,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    name: str,
    specials: bool,
) -> np.ndarray:
    if name == "idx":  # Gather indices: in range or not, negatives included
        return rng.integers(-9, 9, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    array = rng.standard_normal(shape).astype(dtype)
    if array.size and specials:
        flat = array.reshape(-1)
        picks = rng.integers(0, flat.size, size=min(3, flat.size))
        flat[picks] = np.asarray(rng.choice(SPECIALS, size=picks.size)).astype(dtype)
    return array


def matches(specs: list[Any], feeds: dict[str, np.ndarray]) -> bool:
    """Return whether the feeds fit the declared signature: dtypes, ranks, dims, shared symbols."""
    symbols: dict[str, int] = {}
    for spec in specs:
        array = feeds[spec.name]
        if array.dtype != np.dtype(spec.dtype) or array.ndim != len(spec.shape):
            return False
        for want, got in zip(spec.shape, array.shape, strict=True):
            if isinstance(want, int) and want != got:
                return False
            if isinstance(want, str) and symbols.setdefault(want, got) != got:
                return False
    return True


def reference(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[Any] | None:
    if any(a.ndim and a.shape[0] == HUGE_ROWS for a in feeds.values()):
        return None  # ONNX Runtime would copy it; infer must refuse it
    try:
        result: list[Any] = session.run(
            None, {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        )
        return result
    except Exception:  # the refusals differ in type; that there is one is what counts
        return None


# The MLP's ReLUs run fused into oneDNN's matmul, whose ReLU turns NaN into 0 where ONNX Runtime
# keeps NaN (docs/reliability.md): its feeds are finite; NaN and infinities go through the others.
@pytest.mark.parametrize(
    ("name", "specials"), [("mlp", False), ("multi_io", True), ("relu_softmax", True)]
)
def test_session_run_answers_like_onnxruntime_or_raises_input_error(
    models: dict[str, Any], name: str, specials: bool
) -> None:
    session, ort_session = models[name]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(feeds=feed_sets(session.get_inputs(), specials))
    def check(feeds: dict[str, np.ndarray]) -> None:
        # ONNX Runtime is laxer (it takes a rank-0 array for a rank-1 input): refusing what
        # does not fit the signature is infer's own rule; what fits must match ONNX Runtime.
        want = reference(ort_session, feeds) if matches(session.get_inputs(), feeds) else None
        if want is None:
            with pytest.raises(InputError):
                session.run(None, feeds)
            return
        got = session.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, equal_nan=True)

    check()
