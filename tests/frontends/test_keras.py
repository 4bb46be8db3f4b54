"""The TensorFlow/Keras frontend against Keras itself: a model object, a .keras file, a SavedModel."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import ModelError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")


def _cnn() -> object:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3), name="image"),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="small_cnn",
    )
    # Give batch norm real statistics: one epoch on noise.
    x = np.random.default_rng(0).standard_normal((64, 32, 32, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 64)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 32, 32, 3)).astype(np.float32)


def test_keras_model_matches_keras_with_a_dynamic_batch(tmp_path: Path) -> None:
    model = _cnn()
    art = infer.compile(model, output=tmp_path / "cnn.infer")
    assert art.manifest.frontend is not None
    assert art.manifest.frontend["framework"] == "keras"
    assert art.manifest.parity is not None
    assert art.manifest.parity["framework"]["status"] == "passed"
    assert art.manifest.inputs[0].shape == ("batch", 32, 32, 3)
    assert [o.name for o in art.manifest.outputs] == ["output"]
    session = art.load(threads=2)
    assert session.placement()["tvm_node_share"] == 1.0
    for batch in (1, 6):
        x = _images(batch, batch)
        (got,) = session.run(None, {"image": x})
        want = np.asarray(model(x, training=False))
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_keras_file_and_saved_model_compile_from_the_cli(tmp_path: Path) -> None:
    model = _cnn()
    model.save(tmp_path / "cnn.keras")
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    x = _images(3, 7)
    want = np.asarray(model(x, training=False))
    for source in (tmp_path / "cnn.keras", tmp_path / "saved"):
        out = tmp_path / f"{source.stem}.infer"
        result = CliRunner().invoke(cli, ["-q", "compile", str(source), "-o", str(out)])
        assert result.exit_code == 0, result.output
        session = infer.load(out)
        assert session.manifest.frontend is not None
        (got,) = session.run(None, {"image": x})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_keras_file_with_a_lambda_layer_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match=r"lambda\.keras: Keras cannot load it"):
        infer.compile(tmp_path / "lambda.keras")
