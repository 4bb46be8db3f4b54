"""OCR pre- and post-processing for PP-OCR models: detector input sizes, DB boxes, line crops,
classifier/recogniser tensors and CTC decoding.

The arithmetic follows PaddleOCR (Apache-2.0) as rapidocr-onnxruntime 1.4.4 packages it, so that
the same model gives the same lines: OpenCV for resizing, contours, rotated rectangles and
perspective crops, pyclipper for growing a shrunk text region back (the `ocr` extra). Images are
BGR uint8 HxWx3 arrays, as PP-OCR was trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.errors import PipelineError

__all__ = [
    "DbConfig",
    "TextBox",
    "crop_line",
    "ctc_decode",
    "db_boxes",
    "det_size",
    "det_tensor",
    "line_tensor",
    "reading_order",
    "scaled_to_32",
]

# Lines whose top edges differ by less than this many pixels count as one row (PaddleOCR's 10).
SAME_ROW_PX = 10
# A crop this much taller than wide is a vertical line: turned 90 degrees before recognition.
VERTICAL_RATIO = 1.5
# Detector boxes narrower or shorter than this (pixels, original image) are dropped.
MIN_BOX_SIDE = 3


def cv2_module() -> Any:
    """Return OpenCV, or a PipelineError saying which extra installs it."""
    try:
        import cv2
    except ImportError:
        raise PipelineError("ocr needs OpenCV and pyclipper: pip install 'infer[ocr]'") from None
    return cv2


@dataclass(frozen=True)
class DbConfig:
    """Differentiable-binarization post-processing (PaddleOCR's DBPostProcess settings)."""

    thresh: float = 0.3  # pixel probability that counts as text
    box_thresh: float = 0.5  # mean probability inside a box to keep it
    max_candidates: int = 1000
    unclip_ratio: float = 1.6  # how far a shrunk region grows back
    use_dilation: bool = True  # 2x2 dilation of the bitmap first
    min_size: int = 3


@dataclass(frozen=True)
class TextBox:
    """A detected line: four corners (x, y) clockwise from top-left, and the detector's score."""

    points: np.ndarray  # float32 [4, 2]
    score: float


def det_size(height: int, width: int, limit_side_len: int, limit_type: str) -> tuple[int, int]:
    """Return the detector's input (height, width) for an image: scaled so the shorter side is
    at least limit_side_len ("min") or the longer at most ("max"), then to multiples of 32."""
    if limit_type == "max":
        ratio = min(1.0, limit_side_len / max(height, width))
    elif limit_type == "min":
        ratio = max(1.0, limit_side_len / min(height, width))
    else:
        raise PipelineError(f"ocr: limit_type {limit_type!r}: expected 'min' or 'max'")
    h, w = scaled_to_32(height, width, ratio)
    return max(h, 32), max(w, 32)


def scaled_to_32(height: int, width: int, ratio: float) -> tuple[int, int]:
    """Return (height, width) times ratio, each rounded to a multiple of 32 (may be 0)."""
    return int(round(int(height * ratio) / 32) * 32), int(round(int(width * ratio) / 32) * 32)


def det_tensor(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return the detector input [1, 3, *size]: image resized to size (bilinear), scaled to
    [-1, 1] (mean and std 0.5)."""
    cv2 = cv2_module()
    h, w = size
    resized = cv2.resize(image, (w, h)).astype(np.float32)
    return np.ascontiguousarray(((resized / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None])


def _polygon_area_perimeter(points: np.ndarray) -> tuple[float, float]:
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    perimeter = float(np.hypot(np.roll(x, -1) - x, np.roll(y, -1) - y).sum())
    return area, perimeter


def _mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the minimum-area rectangle's corners (top-left, top-right, bottom-right,
    bottom-left by PaddleOCR's rule) and its shorter side."""
    cv2 = cv2_module()
    rect = cv2.minAreaRect(contour)
    points = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = (0, 1) if points[1][1] > points[0][1] else (1, 0)  # (top, bottom) of the left pair
    right = (2, 3) if points[3][1] > points[2][1] else (3, 2)
    box = np.array(
        [points[left[0]], points[right[0]], points[right[1]], points[left[1]]], np.float32
    )
    return box, float(min(rect[1]))


def _box_score(prob: np.ndarray, box: np.ndarray) -> float:
    """Return the mean probability inside box (PaddleOCR's "fast" score)."""
    cv2 = cv2_module()
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), np.uint8)
    shifted = box - np.array([xmin, ymin], np.float32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    import pyclipper

    area, perimeter = _polygon_area_perimeter(box)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    expanded = offset.Execute(area * ratio / perimeter)
    return np.array(expanded).reshape(-1, 1, 2)


def _clockwise(points: np.ndarray) -> np.ndarray:
    """Return the corners as top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], np.float32)


def db_boxes(prob: np.ndarray, image_size: tuple[int, int], config: DbConfig) -> list[TextBox]:
    """Return the text boxes in a detector probability map prob [H, W], in image coordinates
    (image_size is the original (height, width))."""
    cv2 = cv2_module()
    bitmap = (prob > config.thresh).astype(np.uint8)
    if config.use_dilation:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    height, width = prob.shape
    dest_h, dest_w = image_size
    boxes = []
    for contour in contours[: config.max_candidates]:
        points, side = _mini_box(contour)
        if side < config.min_size:
            continue
        score = _box_score(prob, points)
        if score < config.box_thresh:
            continue
        grown, side = _mini_box(_unclip(points, config.unclip_ratio).astype(np.float32))
        if side < config.min_size + 2:
            continue
        grown[:, 0] = np.clip(np.round(grown[:, 0] / width * dest_w), 0, dest_w)
        grown[:, 1] = np.clip(np.round(grown[:, 1] / height * dest_h), 0, dest_h)
        box = _clockwise(grown.astype(np.int32).astype(np.float32))
        box[:, 0] = np.clip(box[:, 0], 0, dest_w - 1).astype(np.int32)
        box[:, 1] = np.clip(box[:, 1], 0, dest_h - 1).astype(np.int32)
        if (
            int(np.linalg.norm(box[0] - box[1])) <= MIN_BOX_SIDE
            or int(np.linalg.norm(box[0] - box[3])) <= MIN_BOX_SIDE
        ):
            continue
        boxes.append(TextBox(box, score))
    return boxes


def reading_order(boxes: Sequence[TextBox]) -> list[TextBox]:
    """Return boxes top to bottom, and left to right within a row (top-left corners less
    than SAME_ROW_PX apart in y)."""
    ordered = sorted(boxes, key=lambda b: (float(b.points[0][1]), float(b.points[0][0])))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            a, b = ordered[j].points[0], ordered[j + 1].points[0]
            if abs(b[1] - a[1]) < SAME_ROW_PX and b[0] < a[0]:
                ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
            else:
                break
    return ordered


def crop_line(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Return the line inside the quadrilateral points, warped upright (bicubic, edges
    replicated); turned 90 degrees when much taller than wide."""
    cv2 = cv2_module()
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(points.astype(np.float32), target)
    crop = cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    if crop.shape[0] >= VERTICAL_RATIO * crop.shape[1]:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


def line_tensor(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return [3, height, width]: the crop resized to height (keeping its aspect, at most
    width wide), scaled to [-1, 1], zero-padded on the right."""
    cv2 = cv2_module()
    h, w = crop.shape[:2]
    resized_w = min(width, math.ceil(height * w / float(h)))
    resized = cv2.resize(crop, (max(resized_w, 1), height)).astype(np.float32)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, : resized.shape[1]] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def ctc_decode(probs: np.ndarray, characters: Sequence[str]) -> tuple[str, float]:
    """Return (text, score) of one line's CTC output probs [T, classes] by greedy decoding:
    repeats merged, blanks (class 0) dropped; score is the mean probability of the kept steps
    (0 for an empty line). characters[i] is the text of class i."""
    best = probs.argmax(axis=1)
    keep = np.ones(best.shape, bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != 0
    if not keep.any():
        return "", 0.0
    text = "".join(characters[i] for i in best[keep])
    return text, float(probs.max(axis=1)[keep].mean())
