"""The compile cache: content keys, hits, concurrent compiles, killed compiles, verify and prune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import infer
from infer.artifact.cache import CompileCache
from infer.errors import ArtifactError
from tests import onnx_models
from tests.conftest import save

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "INFER_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_second_compile_is_a_hit_and_changes_make_new_keys(
    tmp_path: Path, isolated_cache: Path
) -> None:
    path = save(onnx_models.mlp(batch="batch"), tmp_path)
    first = infer.compile(path)
    again = infer.compile(path)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert first.path == again.path and first.path.parent == isolated_cache / "artifacts"
    other_shape = infer.compile(path, shapes={"input:0": (4, 16)})
    assert other_shape.path != first.path
    no_check = infer.compile(path, check=False)
    assert no_check.path != first.path


def test_concurrent_compiles_of_one_key_build_once(tmp_path: Path, isolated_cache: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    code = (
        "import json, infer\n"
        f"a = infer.compile({str(path)!r})\n"
        "print(json.dumps({'hit': a.cache_hit, 'path': str(a.path)}))\n"
    )
    procs = [run_python(code, isolated_cache) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["hit"] for r in results) == [False, True, True, True]
    assert len({r["path"] for r in results}) == 1
    assert len(list((isolated_cache / "artifacts").iterdir())) == 1


def test_a_killed_compile_leaves_no_entry_that_looks_complete(
    tmp_path: Path, isolated_cache: Path
) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    marker = tmp_path / "writing-manifest"
    code = (
        "import pathlib, time, infer\n"
        "from infer.artifact import manifest\n"
        "original = manifest.ArtifactManifest.write\n"
        "def slow_write(self, directory):\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(600)\n"
        "manifest.ArtifactManifest.write = slow_write\n"
        f"infer.compile({str(path)!r})\n"
    )
    proc = run_python(code, isolated_cache)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = CompileCache(isolated_cache)
    entries = list(cache.entries())
    assert entries and all(not e.ok for e in entries)
    assert all("incomplete" in (e.problem or "") for e in entries)
    art = infer.compile(path)  # the next compile does not trust the leftovers
    assert not art.cache_hit and art.load().run(
        None, {"x": __import__("numpy").zeros((1, 3, 16, 16), "float32")}
    )
    removed = cache.prune()
    assert [e.key for e in removed] == [e.key for e in entries]
    assert [e.ok for e in cache.entries()] == [True]


def test_verify_finds_and_prune_removes_damaged_entries(
    tmp_path: Path, isolated_cache: Path
) -> None:
    good = infer.compile(save(onnx_models.mlp(), tmp_path, "a.onnx"))
    bad = infer.compile(save(onnx_models.conv_net(), tmp_path, "b.onnx"))
    # Replace, never rewrite in place: this process has the library mapped since its parity check.
    (bad.path / "lib.so.new").write_bytes(b"not a library")
    os.replace(bad.path / "lib.so.new", bad.path / "lib.so")
    cache = CompileCache(isolated_cache)
    states = {e.path: e.ok for e in cache.verify()}
    assert states == {good.path: True, bad.path: False}
    removed = cache.prune()
    assert [e.path for e in removed] == [bad.path]
    assert not bad.path.exists() and good.path.exists()
    cache.prune(everything=True)
    assert list(cache.entries()) == []


def test_a_cache_writable_by_others_is_not_trusted(tmp_path: Path, isolated_cache: Path) -> None:
    path = save(onnx_models.mlp(), tmp_path)
    infer.compile(path)
    os.chmod(isolated_cache / "artifacts", 0o777)
    try:
        with pytest.raises(
            ArtifactError, match=r"cache directory .*artifacts is writable by group or others"
        ):
            infer.compile(path)
    finally:
        os.chmod(isolated_cache / "artifacts", 0o700)


def test_one_cache_entry_serves_every_thread_count(tmp_path: Path) -> None:
    path = save(onnx_models.mlp(), tmp_path)
    one = infer.compile(path, threads=1)
    two = infer.compile(path, threads=2)
    assert two.cache_hit and one.path == two.path
