"""`infer batch` on a real local Ray (2 workers) over 50 real images: the Parquet results equal
the same pipeline run serially, and a broken file is reported with its path while the rest go
on."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import InputError
from infer.pipelines import get_task
from tests.conftest import pip_download, session_cache

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

SKIMAGE = "scikit-image==0.25.2"
IMAGES = 50


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 real pictures: scikit-image's sample photos (pip, the version pinned) and mirrored and
    cropped views of them, plus one file that is not an image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    wheel = zipfile.ZipFile(pip_download(SKIMAGE, root / "wheel"))
    photos = sorted(
        n for n in wheel.namelist()
        if n.startswith("skimage/data/") and n.endswith((".png", ".jpg"))
    )  # fmt: skip
    folder = root / "in"
    folder.mkdir()
    made = 0
    for variant in ("", "mirrored", "cropped"):
        for name in photos:
            if made == IMAGES:
                break
            picture = Image.open(io.BytesIO(wheel.read(name))).convert("RGB")
            if min(picture.size) < 64:
                continue
            if variant == "mirrored":
                picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            elif variant == "cropped":
                w, h = picture.size
                picture = picture.crop((w // 8, h // 8, w - w // 8, h - h // 8))
            picture.save(folder / f"{made:02d}-{variant or 'photo'}-{Path(name).stem}.png")
            made += 1
    assert made == IMAGES
    (folder / "zz-broken.png").write_bytes(b"this is not a picture")
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default image-classification pipeline (EfficientNet-Lite0) as an artifact."""
    with session_cache(tmp_path_factory):
        return get_task("image-classification").build(
            tmp_path_factory.mktemp("clf") / "clf.infer", None, config=None, threads=1,
            progress=None, compile_options={},
        )  # fmt: skip


def test_batch_on_local_ray_equals_the_pipeline_serially(
    classifier: Path, images: Path, tmp_path: Path
) -> None:
    from infer.batch import run_batch

    output = tmp_path / "results.parquet"
    summary = run_batch(classifier, images, output, workers=2, threads=1, options={"top_k": 3})
    rows = pq.read_table(output).to_pylist()
    assert summary.rows == len(rows) == IMAGES + 1
    broken = str(images / "zz-broken.png")
    assert [path for path, _ in summary.failed] == [broken]
    pipe: Any = infer.pipeline("image-classification", model=str(classifier), threads=1)
    by_path = {row["path"]: row for row in rows}
    assert sorted(by_path) == sorted(str(p) for p in images.iterdir())
    for path, row in by_path.items():
        if path == broken:
            assert row["result"] == "" and row["error"].startswith(f"{broken}: ")
            continue
        assert row["error"] == ""
        got, want = json.loads(row["result"]), pipe(path, top_k=3)
        assert [g["label"] for g in got] == [w["label"] for w in want]
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-6)


def test_batch_from_the_cli_and_what_it_refuses(
    classifier: Path, images: Path, tmp_path: Path
) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for picture in sorted(images.iterdir())[:3]:
        (few / picture.name).write_bytes(picture.read_bytes())
    output = tmp_path / "out.parquet"
    command = ["batch", str(classifier), str(few), "-o", str(output), "--workers", "1"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    assert "3 input(s), 0 failed" in result.output and output.is_file()
    from infer.batch import run_batch

    with pytest.raises(InputError, match=r"the output is a \.parquet file"):
        run_batch(classifier, few, tmp_path / "out.csv")
    with pytest.raises(InputError, match="not a pipeline"):
        run_batch(few, few, output)
    with pytest.raises(infer.PipelineError, match="takes no option beams"):
        run_batch(classifier, few, output, options={"beams": 2})
    with pytest.raises(InputError, match="no files to run"):
        empty = tmp_path / "empty"
        empty.mkdir()
        run_batch(classifier, empty, output)
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind
    assert not list(tmp_path.glob(".*.parts"))


def test_a_killed_batch_resumes_where_it_stopped_and_duplicates_nothing(
    classifier: Path, images: Path, tmp_path: Path
) -> None:
    output = tmp_path / "killed.parquet"
    parts = tmp_path / ".killed.parquet.parts"
    code = "from infer.cli import main; main()"
    command = [sys.executable, "-c", code, "batch", str(classifier), str(images), "-o", str(output)]
    # Its own session: SIGKILL reaches the local Ray it starts too, as a killed job's would.
    first = subprocess.Popen(
        [*command, "--workers", "1"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not list(parts.glob("part-*.parquet")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not output.exists()
    written = {
        p for f in parts.glob("part-*.parquet") for p in pq.read_table(f)["path"].to_pylist()
    }
    assert 0 < len(written) < IMAGES + 1

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (
        f"{IMAGES + 1} input(s) ({len(written)} done by an earlier run), 1 failed" in result.stdout
    )
    rows = pq.read_table(output).to_pylist()
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == IMAGES + 1
    assert set(paths) == {str(p) for p in images.iterdir()}
    assert all(row["result"] or row["path"].endswith("zz-broken.png") for row in rows)
    assert not parts.exists()
