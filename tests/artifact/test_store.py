"""Writing artifacts: a write the filesystem refuses is a named error, and leaves nothing behind."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import infer
from infer.artifact.store import write_file_atomically
from infer.errors import ArtifactError
from tests import onnx_models
from tests.conftest import save

# Past this many bytes a file write of the compile fails, as on a full disk: above lib.so and
# the manifest, below the 2 MB of weights.
FILE_SIZE_LIMIT = 1 << 20


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_compile_whose_weights_cannot_be_written_names_them_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    model = save(onnx_models.mlp(batch=1, features=512, hidden=1024), tmp_path)
    out = tmp_path / "out" / "mlp.infer"
    out.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "infer.cli", "compile", str(model), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 2, result.stderr
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "cannot write params.safetensors: File too large" in last, last
    assert "internal error" not in last
    assert list(out.parent.iterdir()) == []  # no artifact, no staging folder


def test_an_unwritable_path_is_a_named_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "state.json"
    with pytest.raises(ArtifactError, match=f"{target}: cannot write it: {blocker} is a file"):
        write_file_atomically(target, b"{}")
    write_file_atomically(tmp_path / "state.json", b"{}")
    assert (tmp_path / "state.json").read_bytes() == b"{}"
    assert set(os.listdir(tmp_path)) == {"a-file", "state.json"}  # no temporary file left


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """Yield a folder on its own 2 MB filesystem (a tmpfs; skipped where mount is not allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_build_where_the_disk_is_nearly_full_is_refused_before_it_writes(
    small_filesystem: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save(onnx_models.conv_net(), tmp_path)
    out = small_filesystem / "conv.infer"
    with pytest.raises(ArtifactError, match=rf"only 2\.\d MB free in {small_filesystem}, a build"):
        infer.compile(model, output=out)
    monkeypatch.setenv("INFER_CACHE_DIR", str(small_filesystem / "cache"))
    with pytest.raises(ArtifactError, match=r"cache/artifacts, a build needs 64 MB there"):
        infer.compile(model)
    assert not (small_filesystem / "conv.infer").exists()
    assert list((small_filesystem / "cache" / "artifacts").iterdir()) == []
