"""image-classification: pictures in, the top-k labels with scores out (as transformers' pipeline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.pipelines.base import Pipeline
from infer.processors.image import ImageInput, image_to_tensor, is_single_image
from infer.runtime.session import Session

__all__ = ["ImageClassificationPipeline"]

DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 8
FUNCTIONS = ("softmax", "sigmoid", "none")


def softmax(x: np.ndarray) -> np.ndarray:
    """Return the softmax over the last axis, computed in float64."""
    shifted = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    result: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return result


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Return the logistic function, computed in float64."""
    result: np.ndarray = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    return result


class ImageClassificationPipeline(Pipeline):
    """Top-k ImageNet-style labels of pictures: [{"label": ..., "score": ...}, ...] per picture.

    Config: image_input (how a picture becomes the input tensor), labels (class names in index
    order; LABEL_i when absent), function_to_apply (softmax, sigmoid or none on the output).
    """

    task = "image-classification"
    default_model = "efficientnet-lite0"
    description = "top-k labels of a photo"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        if "image_input" not in config:
            raise PipelineError(
                f"{self.task}: the config has no image_input (how a picture becomes the input)"
            )
        self.image_input = ImageInput.from_toml(config["image_input"], f"{self.task} config")
        specs = {s.name: s for s in session.get_inputs()}
        if self.image_input.input not in specs:
            raise PipelineError(
                f"{self.task}: image_input.input is {self.image_input.input!r}; the model's inputs are {sorted(specs)}"
            )
        self.input_spec = specs[self.image_input.input]
        if len(specs) != 1:
            raise PipelineError(
                f"{self.task}: the model has inputs {sorted(specs)}; a classifier takes one image input"
            )
        outputs = session.get_outputs()
        self.output_index = 0
        self.labels = [str(v) for v in config.get("labels", [])]
        self.function = str(config.get("function_to_apply", "softmax"))
        if self.function not in FUNCTIONS:
            raise PipelineError(
                f"{self.task}: function_to_apply {self.function!r}: expected one of {FUNCTIONS}"
            )
        classes = outputs[0].shape[-1] if outputs[0].shape else None
        if self.labels and isinstance(classes, int) and classes != len(self.labels):
            raise PipelineError(
                f"{self.task}: {len(self.labels)} labels for a model with {classes} classes"
            )
        self.batched = bool(self.input_spec.shape) and isinstance(self.input_spec.shape[0], str)

    @classmethod
    def config_from_recipe(cls, recipe: Any) -> dict[str, Any]:
        from infer.registry import recipe_labels

        if recipe.image_input is None:
            raise PipelineError(
                f"{cls.task}: model {recipe.name!r} has no [image_input] in its recipe"
            )
        return {
            "task": cls.task,
            "image_input": recipe.image_input.to_json(),
            "labels": recipe_labels(recipe),
            "function_to_apply": "softmax",
        }

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"LABEL_{index}"

    def __call__(  # type: ignore[override]  # each task takes its own options
        self, images: Any, top_k: int = DEFAULT_TOP_K, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Any:
        """Return [{"label", "score"}] (best first) for one picture, a list of those for a list."""
        if top_k < 1 or batch_size < 1:
            raise PipelineError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}")
        single = is_single_image(images)
        pictures: Sequence[Any] = [images] if single else list(images)
        tensors = [image_to_tensor(p, self.image_input, self.input_spec.shape) for p in pictures]
        step = batch_size if self.batched else 1
        scores = []
        for start in range(0, len(tensors), step):
            batch = np.concatenate(tensors[start : start + step])
            logits = self.session.run(None, {self.image_input.input: batch})[self.output_index]
            scores.append(logits.reshape(logits.shape[0], -1))
        results = [self._top(row, top_k) for row in np.concatenate(scores)] if scores else []
        return results[0] if single else results

    def _top(self, logits: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        if self.function == "softmax":
            probs = softmax(logits)
        elif self.function == "sigmoid":
            probs = sigmoid(logits)
        else:
            probs = logits.astype(np.float64)
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [{"label": self._label(int(i)), "score": float(probs[i])} for i in order]
