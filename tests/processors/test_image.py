"""Image pre-processing, checked against values computed by hand from the recipe's formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infer.errors import PipelineError
from infer.processors.image import ImageInput, image_to_tensor, open_image

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


CROP = ImageInput(
    input="x", resize="center-crop", crop_fraction=0.875, interpolation="bicubic",
    scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
)  # fmt: skip


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_center_crop_of_exactly_the_input_size_is_the_central_pixels() -> None:
    # 256 * 0.875 = 224: the crop is the central 224 x 224, and no resize happens.
    pixels = _noise(256, 256)
    x = image_to_tensor(pixels, CROP, (1, 3, 224, 224))
    want = (pixels[16:240, 16:240].astype(np.float32) - 127.0) / 128.0
    np.testing.assert_array_equal(x[0], want.transpose(2, 0, 1))


def test_center_crop_box_of_a_landscape_picture() -> None:
    # Shorter side 300: crop int(0.875 * 300) = 262 square, at ((400 - 262) // 2, (300 - 262) // 2).
    pixels = _noise(300, 400)
    x = image_to_tensor(pixels, CROP, (1, 3, 224, 224))
    box = Image.fromarray(pixels).crop((69, 19, 69 + 262, 19 + 262))
    want = np.asarray(box.resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    np.testing.assert_array_equal(x[0], ((want - 127.0) / 128.0).transpose(2, 0, 1))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 20 wide x 10 high with its left half red; orientation 6 = rotate 90 degrees clockwise.
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=100)
    upright = open_image(tmp_path / "r.jpg")
    assert upright.size == (10, 20)
    top, bottom = np.asarray(upright)[2, 5], np.asarray(upright)[17, 5]
    assert top[0] > 200 and bottom[0] < 50  # the red half is now on top


def test_grey_rgba_and_16_bit_pictures_become_8_bit_rgb(tmp_path: Path) -> None:
    grey16 = np.full((4, 4), 257 * 100, np.uint16)  # 100 / 255 of full scale, not clipped to 255
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "g16.png")), 100)
    # 32-bit ints holding 16-bit data, and floats in [0, 1], scale the same way.
    as_int = Image.fromarray(np.full((2, 2), 257 * 100, np.int32))
    assert as_int.mode == "I" and np.asarray(open_image(as_int))[0, 0].tolist() == [100] * 3
    as_float = Image.fromarray(np.full((2, 2), 0.5, np.float32))
    assert as_float.mode == "F" and np.asarray(open_image(as_float))[0, 0].tolist() == [128] * 3
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 200
    assert np.asarray(open_image(rgba))[0, 0].tolist() == [0, 0, 200]
    assert np.asarray(open_image(np.full((3, 3), 7, np.uint8)))[0, 0].tolist() == [7, 7, 7]


def test_empty_and_oversized_pictures_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PipelineError, match=r"image array: empty \(\(0, 5, 3\)\)"):
        open_image(np.zeros((0, 5, 3), np.uint8))
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr("infer.processors.image.MAX_IMAGE_PIXELS", 4999)
    with pytest.raises(PipelineError, match=r"big\.png: 100x50 pixels is over the limit of 4,999"):
        open_image(tmp_path / "big.png")
    with pytest.raises(PipelineError, match=r"<bytes>: not a readable image"):
        open_image(b"not an image")
