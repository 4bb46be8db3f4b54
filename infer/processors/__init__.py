"""Pre-processing of raw inputs (images, text, audio) into model tensors."""

from infer.processors.image import ImageInput, image_to_tensor

__all__ = ["ImageInput", "image_to_tensor"]
