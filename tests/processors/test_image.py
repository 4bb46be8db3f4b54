"""Image pre-processing, checked against values computed by hand from the recipe's formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infer.errors import PipelineError
from infer.processors.image import ImageInput, image_to_tensor

BGR_HALF = ImageInput(input="x", channels="BGR", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_uniform_colour_becomes_the_formula_value_in_bgr_nchw(tmp_path: Path) -> None:
    Image.new("RGB", (50, 30), (255, 0, 51)).save(tmp_path / "c.png")
    x = image_to_tensor(tmp_path / "c.png", BGR_HALF, (1, 3, 64, 32))
    assert x.shape == (1, 3, 64, 32) and x.dtype == np.float32
    expected = [(51 / 255 - 0.5) / 0.5, -1.0, 1.0]  # B, G, R
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(x[0, channel], value, rtol=1e-6, atol=1e-6)


def test_nhwc_rgb_and_array_inputs() -> None:
    pixels = np.zeros((10, 12, 3), np.uint8)
    pixels[..., 1] = 255
    config = ImageInput(input="img", layout="NHWC", mean=(0, 0, 0), std=(1, 1, 1))
    x = image_to_tensor(pixels, config, (1, 10, 12, 3))
    assert x.shape == (1, 10, 12, 3)
    np.testing.assert_array_equal(x[0, 0, 0], [0.0, 1.0, 0.0])


def test_corrupt_and_missing_images_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(PipelineError, match=r"bad\.png: not a readable image"):
        image_to_tensor(tmp_path / "bad.png", BGR_HALF, (1, 3, 8, 8))
    with pytest.raises(PipelineError, match=r"none\.png: no such image file"):
        image_to_tensor(tmp_path / "none.png", BGR_HALF, (1, 3, 8, 8))


def test_symbolic_sizes_ask_for_a_shape() -> None:
    with pytest.raises(
        PipelineError,
        match=r"input 'x': an image needs a 4-d input .* compile with --shape x=1,3,H,W",
    ):
        image_to_tensor(np.zeros((4, 4, 3), np.uint8), BGR_HALF, ("batch", 3, "h", "w"))
