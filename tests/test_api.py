"""Small models compiled end to end and compared with ONNX Runtime on fresh inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import infer
from tests import onnx_models
from tests.conftest import save


def ort_run(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def test_mlp_dynamic_batch_matches_onnxruntime(mlp_path: Path, tmp_path: Path) -> None:
    art = infer.compile(mlp_path, output=tmp_path / "mlp.infer")
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    sess = infer.load(tmp_path / "mlp.infer", threads=1)
    assert [(s.name, s.dtype, s.shape) for s in sess.get_inputs()] == [
        ("input:0", "float32", ("batch", 16))
    ]
    assert [(s.name, s.shape) for s in sess.get_outputs()] == [("probs", ("batch", 10))]
    rng = np.random.default_rng(7)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        (got,) = sess.run(None, {"input:0": x})
        (want,) = ort_run(mlp_path, {"input:0": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_conv_net_matches_onnxruntime(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(batch=2), tmp_path)
    sess = infer.compile(path, output=tmp_path / "conv.infer").load(threads=2)
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (got,) = sess.run(None, {"x": x})
    (want,) = ort_run(path, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_int64_and_bool_inputs_and_outputs(tmp_path: Path) -> None:
    path = save(onnx_models.multi_io(), tmp_path)
    sess = infer.compile(path, output=tmp_path / "m.infer", check_dims={"N": 5, "K": 3}).load()
    rng = np.random.default_rng(4)
    feeds = {
        "a": rng.standard_normal((5, 4)).astype(np.float32),
        "idx": np.array([4, 0, 2], dtype=np.int64),
        "mask": rng.random((5, 4)) < 0.5,
    }
    got = sess.run(None, feeds)
    want = ort_run(path, feeds)
    assert [g.dtype for g in got] == [np.float32, np.int64, np.float32, np.bool_]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    # a subset of outputs, in the order asked
    count, gathered = sess.run(["count", "gathered"], feeds)
    np.testing.assert_array_equal(count, want[1])
    np.testing.assert_array_equal(gathered, want[0])


def test_zero_d_and_non_contiguous_inputs(tmp_path: Path) -> None:
    path = save(onnx_models.scalar_add(), tmp_path)
    sess = infer.compile(path, output=tmp_path / "s.infer").load()
    x = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert not x.flags["C_CONTIGUOUS"]
    s = np.array(2.5, dtype=np.float32)
    (got,) = sess.run(None, {"x": x, "s": s})
    np.testing.assert_array_equal(got, x + 2.5)
    wide = np.zeros((3, 8), dtype=np.float32)
    wide[:, ::2] = np.arange(12, dtype=np.float32).reshape(3, 4)
    strided = wide[:, ::2]
    assert not strided.flags["C_CONTIGUOUS"]
    (got,) = sess.run(None, {"x": strided, "s": s})
    np.testing.assert_array_equal(got, strided + 2.5)


def test_shape_override_freezes_a_dynamic_dim(mlp_path: Path, tmp_path: Path) -> None:
    art = infer.compile(mlp_path, shapes={"input:0": (4, 16)}, output=tmp_path / "a.infer")
    assert art.manifest.inputs[0].shape == (4, 16)
    assert art.manifest.shape_overrides == {"input:0": [4, 16]}
    sess = art.load()
    with pytest.raises(infer.InputError, match=r"dim 0: expected 4, got 2"):
        sess.run(None, {"input:0": np.zeros((2, 16), np.float32)})


def test_compile_from_bytes_and_proto_into_the_cache() -> None:
    model = onnx_models.mlp(batch=2)
    first = infer.compile(model.SerializeToString())
    second = infer.compile(model)
    assert not first.cache_hit and second.cache_hit
    assert first.path == second.path


def test_load_compiles_an_onnx_path(mlp_path: Path) -> None:
    sess = infer.load(mlp_path, threads=1)
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(
        sess.run(None, {"input:0": x})[0], ort_run(mlp_path, {"input:0": x})[0], rtol=1e-5
    )


def test_parity_failure_is_a_compile_error_naming_the_output(
    mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the reference disagree: ONNX Runtime sees a model whose last op differs.
    import infer.api as api
    from infer.parity import TOLERANCES

    monkeypatch.setitem(
        TOLERANCES, "float32", (-1.0, 0.0)
    )  # nothing can be within a negative tolerance
    with pytest.raises(
        infer.CompileError, match=r"output 'probs': 20/20 elements out of tolerance"
    ):
        api.compile(mlp_path, output=tmp_path / "bad.infer", check_dims={"batch": 2})
    assert not (tmp_path / "bad.infer").exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_a_model_the_default_pipeline_cannot_compile_falls_back_out_loud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from infer.optimize import pipeline as pipelines

    # A layout ConvertLayout rejects stands for a graph the default pipeline cannot rewrite.
    broken = dataclasses.replace(
        pipelines.PIPELINES["cpu-default"], layouts=(("relax.nn.conv2d", ("NCHW", "XYZW")),)
    )
    monkeypatch.setitem(pipelines.PIPELINES, "cpu-default", broken)
    path = save(onnx_models.conv_net(), tmp_path)
    with pytest.warns(
        infer.FallbackWarning,
        match=r"pipeline cpu-default cannot compile model .*compiling with cpu-nchw instead",
    ):
        art = infer.compile(path, output=tmp_path / "f.infer")
    assert art.manifest.pipeline["name"] == "cpu-nchw"
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    with pytest.raises(infer.CompileError, match=r"pass pipeline 'cpu-default' failed"):
        infer.compile(
            path, output=tmp_path / "g.infer", pipeline="cpu-default"
        )  # asked for: no fallback
