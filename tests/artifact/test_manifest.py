"""Artifacts are verified before their library is opened, and refused for another host or TVM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import infer
from infer.errors import ArtifactError
from tests import onnx_models
from tests.conftest import save


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("arts")
    a = infer.compile(
        save(onnx_models.mlp(), directory, "a.onnx"), output=directory / "a.infer"
    ).path
    b = infer.compile(
        save(onnx_models.conv_net(), directory, "b.onnx"), output=directory / "b.infer"
    ).path
    return a, b


@pytest.fixture
def artifact(artifacts: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "copy.infer"
    shutil.copytree(artifacts[0], copy)
    return copy


def edit_manifest(path: Path, edit: object) -> None:
    data = json.loads((path / "manifest.json").read_text())
    edit(data)  # type: ignore[operator]
    (path / "manifest.json").write_text(json.dumps(data))


def test_manifest_records_what_was_built(artifact: Path) -> None:
    data = json.loads((artifact / "manifest.json").read_text())
    assert data["format"] == "infer-artifact" and data["format_version"] == 2
    assert set(data["files"]) == {"lib.so", "params.safetensors"}
    assert data["segments"] == []  # the whole model on TVM
    assert data["target"]["kind"] == "llvm" and data["target"]["options"]["mcpu"]
    assert {"infer", "tvm", "onnx", "onnxruntime"} <= set(data["versions"])
    assert data["parity"]["status"] == "passed" and data["parity"]["reference"].startswith(
        "onnxruntime"
    )
    assert data["inputs"] == [{"name": "input:0", "dtype": "float32", "shape": [2, 16]}]
    assert len(data["model"]["sha256"]) == 64


def test_a_tampered_library_is_refused_before_it_is_opened(artifact: Path) -> None:
    lib = artifact / "lib.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(
        ArtifactError,
        match=r"file 'lib\.so' has sha256 .* the manifest says .*\(modified or damaged\)",
    ):
        infer.load(artifact)


def test_truncated_params_are_refused(artifact: Path) -> None:
    params = artifact / "params.safetensors"
    params.write_bytes(params.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"file 'params\.safetensors' has sha256"):
        infer.load(artifact)


def test_a_library_swapped_in_from_another_artifact_is_refused(
    artifacts: tuple[Path, Path], artifact: Path
) -> None:
    shutil.copy(artifacts[1] / "lib.so", artifact / "lib.so")
    with pytest.raises(ArtifactError, match=r"file 'lib\.so' has sha256"):
        infer.load(artifact)


def test_an_unlisted_library_is_refused(artifact: Path) -> None:
    shutil.copy(artifact / "lib.so", artifact / "extra.so")
    with pytest.raises(ArtifactError, match=r"library files not listed in the manifest: extra\.so"):
        infer.load(artifact)


def test_a_missing_file_is_refused(artifact: Path) -> None:
    (artifact / "params.safetensors").unlink()
    with pytest.raises(
        ArtifactError, match=r"file 'params\.safetensors' listed in the manifest is missing"
    ):
        infer.load(artifact)


def test_a_manifest_from_another_tvm_version_is_refused(artifact: Path) -> None:
    import tvm

    edit_manifest(artifact, lambda d: d["versions"].update(tvm="0.19.0"))
    with pytest.raises(
        ArtifactError,
        match=rf"field versions\.tvm is '0\.19\.0', this host has TVM '{tvm.__version__}'",
    ):
        infer.load(artifact)


def test_an_artifact_for_missing_cpu_features_is_refused(artifact: Path) -> None:
    edit_manifest(artifact, lambda d: d["target"].update(cpu_features=["avx2", "amx_tile"]))
    with pytest.raises(
        ArtifactError,
        match=r"field target\.cpu_features needs amx_tile, which this host's CPU lacks",
    ):
        infer.load(artifact)


def test_another_format_version_is_refused(artifact: Path) -> None:
    edit_manifest(artifact, lambda d: d.update(format_version=99))
    with pytest.raises(
        ArtifactError, match=r"field 'format_version' is 99, this infer reads \(1, 2\)"
    ):
        infer.load(artifact)


def test_a_manifest_listing_a_file_outside_is_refused(artifact: Path) -> None:
    edit_manifest(artifact, lambda d: d["files"].update({"../escape": "0" * 64}))
    with pytest.raises(ArtifactError, match=r"manifest file '\.\./escape' is outside the artifact"):
        infer.load(artifact)


@pytest.mark.parametrize(
    "content", ["", "{not json", "[]", '{"format": "infer-artifact", "format_version": 1}']
)
def test_malformed_manifests(artifact: Path, content: str) -> None:
    (artifact / "manifest.json").write_text(content)
    with pytest.raises(ArtifactError, match=r"manifest\.json"):
        infer.load(artifact)


def test_the_intact_copy_still_runs(artifact: Path) -> None:
    (out,) = infer.load(artifact).run(None, {"input:0": np.zeros((2, 16), np.float32)})
    np.testing.assert_allclose(out.sum(axis=1), [1.0, 1.0], rtol=1e-5)
