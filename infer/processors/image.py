"""Images (files, bytes, PIL images, HWC uint8 arrays) into normalised NCHW/NHWC float tensors."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import PipelineError

__all__ = ["MAX_IMAGE_PIXELS", "ImageInput", "image_to_tensor", "is_single_image", "open_image"]

MAX_IMAGE_PIXELS = 100_000_000  # larger pictures are refused before they are decoded
_LAYOUTS = ("NCHW", "NHWC")
_CHANNELS = ("RGB", "BGR")
# stretch: the whole picture resized to the input's H x W; center-crop: the central
# crop_fraction of the shorter side (a square when the input is), then resized.
_RESIZES = ("stretch", "center-crop")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class ImageInput:
    """How a picture becomes a model input: resize to the input's H x W, scale, normalise, lay out."""

    input: str
    layout: str = "NCHW"
    channels: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "stretch"
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"

    def to_json(self) -> dict[str, Any]:
        """Return the config as JSON data (what from_toml reads back)."""
        return {**self.__dict__, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_toml(cls, data: Mapping[str, Any], where: str) -> ImageInput:
        """Return the config read from a recipe's [image_input] table."""
        try:
            config = cls(
                input=str(data["input"]),
                layout=str(data.get("layout", "NCHW")),
                channels=str(data.get("channels", "RGB")),
                scale=float(data.get("scale", 1.0 / 255.0)),
                mean=tuple(float(v) for v in data.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data.get("std", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
                resize=str(data.get("resize", "stretch")),
                crop_fraction=float(data.get("crop_fraction", 1.0)),
                interpolation=str(data.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{where}: [image_input] is malformed ({exc})") from None
        if config.layout not in _LAYOUTS or config.channels not in _CHANNELS:
            raise PipelineError(
                f"{where}: [image_input] layout must be one of {_LAYOUTS}, channels one of {_CHANNELS}"
            )
        if (
            config.resize not in _RESIZES
            or config.interpolation not in _INTERPOLATIONS
            or not 0.0 < config.crop_fraction <= 1.0
        ):
            raise PipelineError(
                f"{where}: [image_input] resize must be one of {_RESIZES}, interpolation one of "
                f"{_INTERPOLATIONS}, crop_fraction in (0, 1]"
            )
        if len(config.mean) != 3 or len(config.std) != 3 or 0.0 in config.std:
            raise PipelineError(
                f"{where}: [image_input] mean and std need 3 values each, std non-zero"
            )
        return config


def is_single_image(value: Any) -> bool:
    """Return whether value is one picture (a path, bytes, PIL image or array), not a list of them."""
    return isinstance(value, str | os.PathLike | bytes | bytearray | np.ndarray) or hasattr(
        value, "getpixel"
    )


def _name(image: Any) -> str:
    if isinstance(image, bytes | bytearray):
        return "<bytes>"
    if isinstance(image, np.ndarray):
        return "<array>"
    return str(image) if isinstance(image, str | os.PathLike) else "<image>"


def _to_rgb(picture: Any) -> Any:
    """Return the picture as 8-bit RGB: 16/32-bit and float greys scaled, not clipped; alpha dropped."""
    from PIL import Image

    if picture.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(picture, dtype=np.float64)
        # Full scale: 16-bit for I;16; for 32-bit ints and floats, the smallest of 1 (floats),
        # 8 and 16 bits that holds the largest value, else that value.
        peak = float(pixels.max()) if pixels.size else 0.0
        scales = ((1.0,) if picture.mode == "F" else ()) + (255.0, 65535.0)
        top = (
            65535.0
            if picture.mode.startswith("I;16")
            else next((scale for scale in scales if peak <= scale), peak)
        )
        grey = np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return picture.convert("RGB")


def open_image(image: Any) -> Any:
    """Return the picture as an 8-bit RGB PIL image, upright as its EXIF orientation says.

    PipelineError naming the file when it is missing, unreadable, empty or over MAX_IMAGE_PIXELS.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    name = _name(image)
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        ):
            raise PipelineError(
                f"image array: expected HxW or HxWxC (C 1, 3 or 4) uint8, got {image.dtype} {image.shape}"
            )
        if image.size == 0:
            raise PipelineError(f"image array: empty ({image.shape})")
        picture = Image.fromarray(
            image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        )
    elif isinstance(image, Image.Image):
        picture = image
    else:
        try:
            source = (
                io.BytesIO(bytes(image)) if isinstance(image, bytes | bytearray) else Path(image)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                picture = Image.open(source)
                if picture.width * picture.height > MAX_IMAGE_PIXELS:
                    raise PipelineError(
                        f"{name}: {picture.width}x{picture.height} pixels is over the limit of "
                        f"{MAX_IMAGE_PIXELS:,}"
                    )
                picture.load()
        except FileNotFoundError:
            raise PipelineError(f"{name}: no such image file") from None
        except IsADirectoryError:
            raise PipelineError(f"{name}: a directory, not an image file") from None
        except (
            UnidentifiedImageError,
            OSError,
            Image.DecompressionBombError,
            SyntaxError,
            ValueError,
        ) as exc:
            raise PipelineError(f"{name}: not a readable image ({exc})") from None
    if picture.width == 0 or picture.height == 0:
        raise PipelineError(f"{name}: empty image ({picture.width}x{picture.height})")
    try:
        picture = ImageOps.exif_transpose(picture)
    except (OSError, ValueError, SyntaxError) as exc:
        raise PipelineError(f"{name}: unreadable EXIF data ({exc})") from None
    return _to_rgb(picture)


def image_to_tensor(
    image: str | os.PathLike[str] | bytes | np.ndarray | Any,
    config: ImageInput,
    shape: Sequence[int | str],
) -> np.ndarray:
    """Return the image as a float32 batch of one, resized to the H x W of a static input shape."""
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise PipelineError(
            f"input {config.input!r}: an image needs a 4-d input with fixed channels, height and width, "
            f"got {list(shape)}; compile with --shape {config.input}=1,3,H,W"
        )
    if config.layout == "NCHW":
        channels, height, width = int(shape[1]), int(shape[2]), int(shape[3])
    else:
        height, width, channels = int(shape[1]), int(shape[2]), int(shape[3])
    if channels != 3:
        raise PipelineError(
            f"input {config.input!r}: expected 3 colour channels, the model has {channels}"
        )
    from PIL import Image

    picture = open_image(image)
    if config.resize == "center-crop":
        # As TensorFlow's and torchvision's evaluation crops: the crop keeps the input's aspect.
        scale = config.crop_fraction * min(picture.width / width, picture.height / height)
        crop_w, crop_h = max(1, int(width * scale)), max(1, int(height * scale))
        left, top = (picture.width - crop_w) // 2, (picture.height - crop_h) // 2
        picture = picture.crop((left, top, left + crop_w, top + crop_h))
    resample = getattr(Image.Resampling, config.interpolation.upper())
    picture = picture.resize((width, height), resample)
    pixels = np.asarray(picture, dtype=np.float32)
    if config.channels == "BGR":
        pixels = pixels[..., ::-1]
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    pixels = (pixels * np.float32(config.scale) - mean) / std
    if config.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], dtype=np.float32)
