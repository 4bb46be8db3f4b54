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

__all__ = ["ImageInput", "image_to_tensor"]

MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs (PIL warns at ~89M by default)
_LAYOUTS = ("NCHW", "NHWC")
_CHANNELS = ("RGB", "BGR")


@dataclass(frozen=True)
class ImageInput:
    """How a picture becomes a model input: resize to the input's H x W, scale, normalise, lay out."""

    input: str
    layout: str = "NCHW"
    channels: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{where}: [image_input] is malformed ({exc})") from None
        if config.layout not in _LAYOUTS or config.channels not in _CHANNELS:
            raise PipelineError(
                f"{where}: [image_input] layout must be one of {_LAYOUTS}, channels one of {_CHANNELS}"
            )
        if len(config.mean) != 3 or len(config.std) != 3 or 0.0 in config.std:
            raise PipelineError(
                f"{where}: [image_input] mean and std need 3 values each, std non-zero"
            )
        return config


def _open(image: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise PipelineError(
                f"image array: expected HxW or HxWxC uint8, got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image)
    name = "<bytes>" if isinstance(image, bytes | bytearray) else str(image)
    try:
        source = io.BytesIO(bytes(image)) if isinstance(image, bytes | bytearray) else Path(image)
        picture = Image.open(source)
        picture.load()
        return picture
    except FileNotFoundError:
        raise PipelineError(f"{name}: no such image file") from None
    except (
        UnidentifiedImageError,
        OSError,
        Image.DecompressionBombError,
        SyntaxError,
        ValueError,
    ) as exc:
        raise PipelineError(f"{name}: not a readable image ({exc})") from None


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

    picture = _open(image).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(picture, dtype=np.float32)
    if config.channels == "BGR":
        pixels = pixels[..., ::-1]
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    pixels = (pixels * np.float32(config.scale) - mean) / std
    if config.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], dtype=np.float32)
