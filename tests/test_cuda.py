"""CUDA: compiled and exported here without a GPU, device code precompiled by nvcc into the .so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import infer
from infer.cuda_toolchain import nvcc_path
from tests import onnx_models
from tests.conftest import save

FATBIN_MAGIC = (0xBA55ED50).to_bytes(4, "little")

needs_nvcc = pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed")


def has_cuda_device() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)


@needs_nvcc
def test_cuda_compile_and_export_embed_a_fatbin_not_source(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    art = infer.compile(path, target="cuda -arch=sm_80,sm_86", output=tmp_path / "c.infer")
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["target"]["kind"] == "cuda"
    assert manifest["target"]["cuda_archs"] == ["sm_80", "sm_86"]
    assert manifest["parity"]["status"] == "skipped"
    library = (art.path / "lib.so").read_bytes()
    assert FATBIN_MAGIC in library
    assert b"__global__" not in library and b'extern "C"' not in library  # no CUDA source for NVRTC


@needs_nvcc
def test_names_that_are_not_c_identifiers_compile_for_cuda(tmp_path: Path) -> None:
    path = save(onnx_models.mlp(), tmp_path)  # 'input:0', 'fc1/W'
    art = infer.compile(path, target="cuda", output=tmp_path / "m.infer")
    assert [s.name for s in art.manifest.inputs] == ["input:0"]


@needs_nvcc
@pytest.mark.skipif(has_cuda_device(), reason="this host has a CUDA device")
def test_loading_a_cuda_artifact_without_a_device_is_refused(tmp_path: Path) -> None:
    art = infer.compile(
        save(onnx_models.mlp(), tmp_path), target="cuda", output=tmp_path / "m.infer"
    )
    with pytest.raises(
        infer.ArtifactError, match=r"field target\.kind is 'cuda', and this host has no CUDA device"
    ):
        art.load()


@pytest.mark.gpu
@needs_nvcc
def test_cuda_artifact_matches_onnxruntime_on_a_gpu(tmp_path: Path) -> None:
    import onnxruntime as ort

    if not has_cuda_device():
        pytest.skip("no CUDA device")
    path = save(onnx_models.conv_net(), tmp_path)
    sess = infer.compile(path, target="cuda", output=tmp_path / "c.infer").load()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-3, atol=1e-4)


def test_bad_cuda_arch_is_named() -> None:
    with pytest.raises(
        infer.CompileError, match=r"target cuda: arch 'ampere' is not of the form sm_XX"
    ):
        infer.compile(onnx_models.mlp(), target="cuda -arch=ampere")
