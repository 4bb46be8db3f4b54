"""The JAX frontend against JAX itself: jit-able functions with parameters closed over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import infer
from infer.errors import ModelError

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def _mlp() -> object:
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {
        "w1": jax.random.normal(k1, (30, 64)) * 0.1,
        "b1": jnp.linspace(-0.1, 0.1, 64),
        "w2": jax.random.normal(k2, (64, 3)) * 0.1,
        "b2": jnp.zeros(3),
    }

    @jax.jit
    def mlp(x: object) -> object:
        h = jax.nn.gelu(x @ params["w1"] + params["b1"])
        return jax.nn.softmax(h @ params["w2"] + params["b2"], axis=-1)

    return mlp


def test_jitted_mlp_with_dynamic_batch_matches_jax(tmp_path: Path) -> None:
    mlp = _mlp()
    x = np.random.default_rng(0).standard_normal((4, 30)).astype(np.float32)
    art = infer.compile(
        mlp, example_inputs=(x,), dynamic_axes={"x": {0: "batch"}}, output=tmp_path / "mlp"
    )
    assert art.manifest.frontend is not None
    assert art.manifest.frontend["framework"] == "jax"
    assert art.manifest.frontend["exporter"].startswith("jax2onnx")
    assert art.manifest.parity is not None
    assert art.manifest.parity["framework"]["status"] == "passed"
    assert art.manifest.inputs[0].shape == ("batch", 30)
    session = art.load(threads=2)
    assert session.placement()["tvm_node_share"] == 1.0
    for batch in (1, 9):
        xs = np.random.default_rng(batch).standard_normal((batch, 30)).astype(np.float32)
        (got,) = session.run(None, {"x": xs})
        want = np.asarray(mlp(xs))
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_two_inputs_share_a_named_dim(tmp_path: Path) -> None:
    table = jax.random.normal(jax.random.PRNGKey(1), (50, 8))

    def pooled(ids: object, weights: object) -> object:
        return (table[ids] * weights[..., None]).sum(axis=1)

    ids = np.random.default_rng(0).integers(0, 50, (2, 5)).astype(np.int32)
    weights = np.random.default_rng(1).random((2, 5)).astype(np.float32)
    axes = {"ids": {0: "batch"}, "weights": {0: "batch"}}
    art = infer.compile(
        pooled, example_inputs=(ids, weights), dynamic_axes=axes, output=tmp_path / "p"
    )
    assert [s.shape for s in art.manifest.inputs] == [("batch", 5), ("batch", 5)]
    session = art.load()
    ids3 = np.random.default_rng(2).integers(0, 50, (3, 5)).astype(np.int32)
    weights3 = np.random.default_rng(3).random((3, 5)).astype(np.float32)
    (got,) = session.run(None, {"ids": ids3, "weights": weights3})
    np.testing.assert_allclose(got, np.asarray(pooled(ids3, weights3)), rtol=1e-5, atol=1e-6)


def test_missing_example_inputs_and_unknown_axes_are_model_errors() -> None:
    with pytest.raises(ModelError, match="give example_inputs"):
        infer.compile(_mlp())
    x = np.zeros((1, 30), np.float32)
    with pytest.raises(ModelError, match=r"dynamic_axes names input\(s\) \['y'\]"):
        infer.compile(_mlp(), example_inputs=(x,), dynamic_axes={"y": [0]})
