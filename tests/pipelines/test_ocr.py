"""ocr on the real PP-OCRv4 models against rapidocr-onnxruntime's own pipeline, on real pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import PipelineError
from infer.pipelines.ocr import OcrPipeline
from tests.conftest import session_cache, wheel_files

SKIMAGE = "scikit-image==0.25.2"
PAGES = {  # path in the wheel: sha256
    "skimage/data/page.png": "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
    "skimage/data/text.png": "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
}
RENDERED_LINES = ["The quick brown fox jumps", "over the lazy dog 1234", "Compiled by TVM, checked"]
MAX_CER = 0.05  # character error rate allowed on the rendered page


def _cer(got: str, want: str) -> float:
    """Return the Levenshtein distance between got and want over len(want)."""
    row = list(range(len(want) + 1))
    for i, a in enumerate(got, 1):
        prev, row[0] = row[0], i
        for j, b in enumerate(want, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (a != b))
    return row[-1] / max(len(want), 1)


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """scikit-image's page.png and text.png (pip), and a page rendered here from known text."""
    from PIL import Image, ImageDraw, ImageFont

    root = tmp_path_factory.mktemp("pages")
    paths = wheel_files(SKIMAGE, PAGES, root)
    page = Image.new("RGB", (900, 320), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=44)
    for i, line in enumerate(RENDERED_LINES):
        draw.text((30, 30 + 95 * i), line, fill="black", font=font)
    paths.append(root / "rendered.png")
    page.save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def ocr(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The default ocr pipeline (PP-OCRv4 det + cls + rec, pulled and compiled)."""
    with session_cache(tmp_path_factory):
        return infer.pipeline("ocr", threads=1)


@pytest.fixture(scope="session")
def rapidocr() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)


def _same_lines(ours: list[dict[str, Any]], theirs: Any) -> None:
    theirs = theirs or []
    assert [r["text"] for r in ours] == [t[1] for t in theirs]
    for r, (box, _text, score) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(r["box"], box, atol=1.0)
        assert abs(r["score"] - score) < 1e-3


def _equal_lines(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Two builds' lines: the same texts and boxes, scores equal to float rounding (each compile
    runs oneDNN's calls on the implementations it measured fastest, which may differ)."""
    assert [(r["text"], r["box"]) for r in got] == [(r["text"], r["box"]) for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-5)


def test_lines_equal_rapidocr(ocr: Any, rapidocr: Any, pages: list[Path]) -> None:
    results = ocr(pages)
    assert len(results) == len(pages)
    for page, ours in zip(pages, results, strict=True):
        _same_lines(ours, rapidocr(str(page))[0])
    assert [r["text"] for r in results[0]][:2] == [
        "Region-basedsegmentation",
        "Let us first determine markers of the coins and the",
    ]
    assert set(ocr.timings) == {"pre", "det", "cls", "rec", "post"}


def test_rendered_page_reads_back(ocr: Any, pages: list[Path]) -> None:
    lines = ocr(pages[2])
    assert len(lines) == len(RENDERED_LINES)
    for line, want in zip(lines, RENDERED_LINES, strict=True):
        assert _cer(line["text"], want) <= MAX_CER, (line["text"], want)
        xs = [p[0] for p in line["box"]]
        assert min(xs) < 60 and max(xs) > 300


def test_inputs_in_every_form(ocr: Any, rapidocr: Any, pages: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    want = ocr(pages[0])
    picture = Image.open(pages[0])
    for given in (str(pages[0]), pages[0].read_bytes(), picture, np.asarray(picture)):
        assert [r["text"] for r in ocr(given)] == [r["text"] for r in want]
    # Upside down: the direction classifier turns lines back, as in rapidocr.
    flipped = tmp_path / "flipped.png"
    picture.rotate(180).save(flipped)
    _same_lines(ocr(flipped), rapidocr(str(flipped))[0])


def test_blank_picture_has_no_lines(ocr: Any) -> None:
    assert ocr(np.full((200, 300, 3), 255, np.uint8)) == []


def test_bad_inputs(ocr: Any, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"missing\.png"):
        ocr(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(PipelineError, match=r"corrupt\.png"):
        ocr(corrupt)
    with pytest.raises(PipelineError, match="multiples of 32"):
        OcrPipeline(
            ocr.models, {**ocr.config, "det": {**ocr.config["det"], "fixed_sizes": [[700, 736]]}}
        )
    with pytest.raises(PipelineError, match="characters"):
        OcrPipeline(ocr.models, {**ocr.config, "characters": ocr.config["characters"][:-5]})


def test_fixed_size_detector_gives_the_same_lines(
    ocr: Any, pages: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """page.png's detector input is 736x1472: a fixed-size detector for it, same lines."""
    config = {**ocr.config, "det": {**ocr.config["det"], "fixed_sizes": [[736, 1472]]}}
    with session_cache(tmp_path_factory):
        fixed = infer.pipeline("ocr", config=config, threads=1)
        _equal_lines(fixed(pages[0]), ocr(pages[0]))
    assert "det-736x1472" in fixed.models.found


def test_bundle_from_the_cli(
    ocr: Any, pages: list[Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bundle = tmp_path / "ocr.infer"
    with session_cache(tmp_path_factory):
        result = CliRunner().invoke(
            cli, ["compile", "--task", "ocr", "-o", str(bundle), "--no-check", "--threads", "1"]
        )
    assert result.exit_code == 0, result.output
    assert {p.name for p in bundle.iterdir()} == {"det", "cls", "rec", "pipeline.json"}
    result = CliRunner().invoke(
        cli, ["run", "--task", "ocr", "--model", str(bundle), "--json", str(pages[0])]
    )
    assert result.exit_code == 0, result.output
    ran = json.loads(result.output[result.output.index("[") :])
    _equal_lines(ran[0]["result"], ocr(pages[0]))

    # A component changed after the build is refused, naming it.
    manifest = bundle / "rec" / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")
    with pytest.raises(PipelineError, match=r"rec/manifest\.json"):
        infer.pipeline("ocr", bundle)
    stored = json.loads((bundle / "pipeline.json").read_text())
    stored["components"]["rec"]["dir"] = "../rec"
    (bundle / "pipeline.json").write_text(json.dumps(stored))
    with pytest.raises(PipelineError, match="not allowed"):
        infer.pipeline("ocr", bundle)
    with pytest.raises(PipelineError, match="not an OCR bundle"):
        infer.pipeline("ocr", tmp_path)
