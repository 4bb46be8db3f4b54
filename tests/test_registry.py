"""Recipes and pulls: real wheels fetched with pip, sha256 checked, real models compiled."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import infer
from infer.errors import ModelError
from infer.registry import ModelRecipe, get_recipe, list_recipes, pull, recipe_labels


def test_recipes_are_complete() -> None:
    recipes = {r.name: r for r in list_recipes()}
    assert {"ppocr-det", "resnet50-light"} <= set(recipes)
    det = recipes["ppocr-det"]
    assert det.requirement == "rapidocr-onnxruntime==1.4.4" and det.license == "Apache-2.0"
    assert len(det.source.sha256) == 64 and det.shapes == {"x": (1, 3, 640, 640)}
    assert det.sample is not None and det.sample.path == "skimage/data/page.png"
    assert det.image_input is not None and det.image_input.channels == "BGR"


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(
        ModelError,
        match=r"unknown model 'nope'; known models: all-minilm-l6-v2, efficientnet-lite0, paraphrase-minilm-l3-v2, ppocr-cls, ppocr-det, ppocr-det-any, ppocr-rec, resnet50-light, silero-vad",
    ):
        get_recipe("nope")


def test_recipe_errors_name_the_field() -> None:
    with pytest.raises(ModelError, match=r"recipe x.toml: missing field 'license'"):
        ModelRecipe.from_toml({"name": "x", "source": {}}, "x.toml")
    data = {
        "name": "x",
        "license": "MIT",
        "transforms": ["magic"],
        "source": {"package": "p", "version": "1", "path": "a", "sha256": "0"},
    }
    with pytest.raises(ModelError, match=r"unknown transform\(s\) \['magic'\]"):
        ModelRecipe.from_toml(data, "x.toml")


def test_a_wrong_sha256_is_refused(tmp_path: Path) -> None:
    det = get_recipe("ppocr-det")
    recipe = dataclasses.replace(
        det, name="ppocr-tampered", source=dataclasses.replace(det.source, sha256="0" * 64)
    )
    with pytest.raises(
        ModelError,
        match=r"ch_PP-OCRv4_det_infer\.onnx in rapidocr_onnxruntime-1\.4\.4-py3-none-any\.whl has sha256 d2a7.* the recipe says 0000",
    ):
        pull(recipe)


def test_a_path_missing_from_the_wheel_is_named() -> None:
    det = get_recipe("ppocr-det")
    missing = dataclasses.replace(det.source, path="rapidocr_onnxruntime/models/none.onnx")
    recipe = dataclasses.replace(det, name="ppocr-missing", source=missing)
    with pytest.raises(ModelError, match=r"has no file 'rapidocr_onnxruntime/models/none\.onnx'"):
        pull(recipe)


def test_ppocr_det_compiles_and_matches_onnxruntime_on_an_image_like_input(
    ppocr_det_path: Path, tmp_path: Path
) -> None:
    art = infer.compile(
        ppocr_det_path, shapes={"x": (1, 3, 320, 448)}, output=tmp_path / "det.infer"
    )
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    sess = art.load(threads=2)
    # A smooth synthetic "page": dark strokes on a light background, normalised as PP-OCR does.
    yy, xx = np.mgrid[0:320, 0:448]
    page = np.where((yy // 20) % 3 == 0, (np.sin(xx / 3.0) > 0) * 0.8, 1.0).astype(np.float32)
    x = np.stack([(page - m) / s for m, s in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))])[
        None
    ].astype(np.float32)
    (got,) = sess.run(None, {"x": x})
    (want,) = ort.InferenceSession(str(ppocr_det_path)).run(None, {"x": x})
    assert got.shape == (1, 1, 320, 448)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_resnet50_light_pull_gives_random_weights_that_do_not_saturate(tmp_path: Path) -> None:
    path = pull(get_recipe("resnet50-light"))
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (probs,) = ort.InferenceSession(str(path)).run(None, {"gpu_0/data_0": x})
    assert probs.shape == (1, 1000)
    assert 0.0 < probs.max() < 0.99  # not one-hot: a comparison of probabilities means something
    assert np.isclose(probs.sum(), 1.0, atol=1e-4)


def test_an_export_step_names_a_module_and_its_code_wheel() -> None:
    recipe = get_recipe("efficientnet-lite0")
    assert recipe.export is not None and recipe.export.builder == "efficientnet_lite"
    assert recipe.export.code is not None
    assert recipe.export.code.requirement == "efficientnet-lite-pytorch==0.1.0"
    assert len(recipe_labels(recipe)) == 1000 and recipe_labels(recipe)[281] == "tabby, tabby cat"
    data = {
        "name": "x",
        "license": "MIT",
        "source": {"package": "p", "version": "1", "path": "w.pth", "sha256": "0"},
        "export": {"builder": "../evil"},
    }
    with pytest.raises(ModelError, match=r"\[export\] builder '\.\./evil' is not a module name"):
        ModelRecipe.from_toml(data, "x.toml")
    with pytest.raises(ModelError, match=r"recipe x\.toml: missing field 'builder'"):
        ModelRecipe.from_toml({**data, "export": {}}, "x.toml")
