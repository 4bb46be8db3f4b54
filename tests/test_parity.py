"""The comparison rule, checked against numpy written from its definition."""

from __future__ import annotations

import numpy as np
import pytest

from infer.errors import CompileError, InputError
from infer.parity import compare_outputs, random_feeds
from infer.signature import TensorSpec

F32 = TensorSpec("y", "float32", (4,))


def report(got: np.ndarray, want: np.ndarray, spec: TensorSpec = F32):  # type: ignore[no-untyped-def]
    return compare_outputs([spec], [got], [want], "ref", 0)


def test_within_tolerance_passes_and_errors_are_measured() -> None:
    want = np.array([1.0, -2.0, 100.0, 0.0], np.float32)
    got = want + np.array([1e-5, 0, 0.05, 5e-5], np.float32)
    (out,) = report(got, want).outputs
    assert out.ok
    assert out.max_abs == pytest.approx(0.05, rel=1e-3)
    assert out.max_rel == pytest.approx(
        5e-4, rel=1e-2
    )  # 0.05 / 100; the 0 reference is not counted


def test_out_of_tolerance_names_the_output() -> None:
    want = np.array([1.0, 1.0, 1.0, 1.0], np.float32)
    r = report(want + np.array([0, 0, 0.01, 0.02], np.float32), want)
    assert not r.ok and r.outputs[0].mismatches == 2
    with pytest.raises(
        CompileError,
        match=r"m: does not match ref: output 'y': 2/4 elements out of tolerance \(max abs error 0\.02",
    ):
        r.raise_for_mismatch("m")


def test_nan_and_inf_are_values() -> None:
    want = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    assert report(want.copy(), want).ok
    assert not report(np.array([0.0, np.inf, -np.inf, 1.0], np.float32), want).ok  # NaN hidden as 0
    assert not report(np.array([np.nan, -np.inf, -np.inf, 1.0], np.float32), want).ok  # sign of Inf
    assert not report(
        np.array([np.nan, np.inf, -np.inf, np.nan], np.float32), want
    ).ok  # NaN invented


def test_integers_and_bools_are_exact() -> None:
    spec = TensorSpec("i", "int64", (3,))
    assert report(np.array([1, 2, 3]), np.array([1, 2, 3]), spec).ok
    assert report(np.array([1, 2, 4]), np.array([1, 2, 3]), spec).outputs[0].mismatches == 1
    b = TensorSpec("b", "bool", (2,))
    assert not report(np.array([True, True]), np.array([True, False]), b).ok


def test_shape_or_dtype_mismatch_fails() -> None:
    want = np.zeros(4, np.float32)
    assert not report(np.zeros(5, np.float32), want).ok
    assert not report(np.zeros(4, np.float64), want).ok


def test_random_feeds_are_seeded_and_typed() -> None:
    specs = [
        TensorSpec("x", "float32", ("b", 3)),
        TensorSpec("i", "int64", (2,)),
        TensorSpec("m", "bool", ("b",)),
    ]
    a = random_feeds(specs, seed=3, dims={"b": 5})
    b = random_feeds(specs, seed=3, dims={"b": 5})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["x"].shape == (5, 3) and a["x"].dtype == np.float32
    assert a["i"].dtype == np.int64 and a["m"].dtype == np.bool_
    assert random_feeds(specs, seed=3)["x"].shape == (1, 3)
    with pytest.raises(InputError, match=r"input 'x' has symbolic dim\(s\) 'b'"):
        random_feeds(specs, default_dim=None)


def bf16_report(got: np.ndarray, want: np.ndarray, spec: TensorSpec):  # type: ignore[no-untyped-def]
    return compare_outputs([spec], [got], [want], "ref", 0, precision="bf16")


def test_bf16_bound_takes_bf16_noise_and_reports_cosine_and_top1() -> None:
    rng = np.random.default_rng(0)
    want = rng.standard_normal((4, 10)).astype(np.float32) * 5
    got = (want * (1 + rng.uniform(-(2**-8), 2**-8, want.shape))).astype(np.float32)
    spec = TensorSpec("logits", "float32", (4, 10))
    assert not report(got, want, spec).ok  # out of float32's tolerance
    (out,) = bf16_report(got, want, spec).outputs
    assert out.ok and out.top1 == 1.0
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    assert out.cosine == pytest.approx(g @ w / np.linalg.norm(g) / np.linalg.norm(w), abs=1e-12)
    assert out.atol == pytest.approx(0.10 * np.abs(want).max())
    flipped = want.copy()
    flipped[0] = -want[0]  # one row's argmax now elsewhere
    assert bf16_report(flipped, want, spec).outputs[0].top1 == pytest.approx(0.75)


def test_bf16_bound_refuses_a_lost_signal_and_says_so() -> None:
    want = np.linspace(-0.05, 0.05, 40, dtype=np.float32)  # errors past the 2^-8 floor
    got = np.zeros_like(want)  # the signal lost: a cancellation rounded away
    r = bf16_report(got, want, TensorSpec("y", "float32", (40,)))
    (out,) = r.outputs
    assert out.cosine == 0.0 and not out.ok and not r.ok
    with pytest.raises(
        CompileError,
        match=r"m: the bf16 build is too far from ref \(float32\).*cosine similarity 0\.000000, bound 0\.995.*precision fp32",
    ):
        r.raise_for_mismatch("m")
    assert r.to_json()["precision"] == "bf16" and "cosine" in r.to_json()["tolerance"]


def test_bf16_bound_accepts_errors_under_its_floor_and_keeps_integers_exact() -> None:
    want = np.full(8, 1e-3, np.float32)
    got = want + np.float32(2e-3)  # 200% off, but under one bf16 step at 1.0
    assert bf16_report(got, want, TensorSpec("p", "float32", (8,))).ok
    labels = TensorSpec("label", "int64", (3,))
    assert not bf16_report(np.array([1, 2, 4]), np.array([1, 2, 3]), labels).ok


def test_int8_bound_takes_flipped_pixels_of_a_map_but_not_a_lost_signal() -> None:
    # A sigmoid map whose edge pixels int8 moves across its threshold: most of the signal is
    # kept (cosine >= 0.95), so it passes; the same map with the signal gone does not.
    rng = np.random.default_rng(3)
    want = (rng.random((64, 64)) > 0.8).astype(np.float32)
    got = want.copy()
    got[rng.random((64, 64)) < 0.01] = 0.5  # 1% of the pixels half-way
    spec = TensorSpec("map", "float32", (64, 64))
    report = compare_outputs([spec], [got], [want], "ref", 0, precision="int8")
    assert report.ok and report.outputs[0].cosine > 0.95
    lost = compare_outputs([spec], [np.ones_like(want)], [want], "ref", 0, precision="int8")
    assert not lost.ok and lost.outputs[0].cosine < 0.95
    swapped = compare_outputs([spec], [want * -2], [want], "ref", 0, precision="int8")
    assert not swapped.ok and swapped.outputs[0].mismatches > 0
