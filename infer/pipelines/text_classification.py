"""text-classification: labels of texts, as transformers' TextClassificationPipeline gives them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.pipelines.image_classification import sigmoid, softmax
from infer.pipelines.text import TextPipeline
from infer.runtime.session import Session

__all__ = ["TextClassificationPipeline", "labels_of"]

DEFAULT_BATCH_SIZE = 32
FUNCTIONS = ("softmax", "sigmoid", "none")


def labels_of(model_config: Mapping[str, Any]) -> list[str]:
    """Return config.json's id2label as a list in index order (LABEL_i where a gap is)."""
    id2label = {int(k): str(v) for k, v in (model_config.get("id2label") or {}).items()}
    count = max(id2label, default=-1) + 1
    return [id2label.get(i, f"LABEL_{i}") for i in range(count)]


class TextClassificationPipeline(TextPipeline):
    """[{"label", "score"}] per text, best first: top_k of them (1 by default; None for all).

    Config: labels (index order), function_to_apply (softmax for single-label problems, sigmoid
    for multi-label ones or a single output, as transformers decides from config.json).
    """

    task = "text-classification"
    default_model = ""  # no default: the user's model
    description = "labels of a text (sentiment, topic...), any BERT-family classifier"
    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        self.labels = [str(v) for v in config.get("labels", [])]
        self.function = str(config.get("function_to_apply", "softmax"))
        if self.function not in FUNCTIONS:
            raise PipelineError(
                f"{self.task}: function_to_apply {self.function!r}: expected one of {FUNCTIONS}"
            )

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], tokenizer: str) -> dict[str, Any]:
        labels = labels_of(model_config)
        multi = model_config.get("problem_type") == "multi_label_classification"
        function = "sigmoid" if multi or len(labels) == 1 else "softmax"
        return {
            **super().from_model_config(model_config, tokenizer),
            "labels": labels,
            "function_to_apply": function,
        }

    def __call__(  # type: ignore[override]  # each task takes its own options
        self, texts: Any, top_k: int | None = 1, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Any:
        """Return [{"label", "score"}] for one text, a list of those for a list of texts."""
        if batch_size < 1 or (top_k is not None and top_k < 1):
            raise PipelineError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}")
        single, items = self.texts(texts)
        results = []
        for start in range(0, len(items), batch_size):
            encoded = self.encoder(items[start : start + batch_size])
            logits = self.session.run(None, encoded.feeds(self.input_names))[0]
            results += [self._top(row, top_k) for row in logits]
        return results[0] if single else results

    def _top(self, logits: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        if self.function == "softmax":
            scores = softmax(logits)
        elif self.function == "sigmoid":
            scores = sigmoid(logits)
        else:
            scores = logits.astype(np.float64)
        order = np.argsort(-scores, kind="stable")[: top_k or len(scores)]
        return [
            {
                "label": self.labels[i] if i < len(self.labels) else f"LABEL_{i}",
                "score": float(scores[i]),
            }
            for i in order
        ]
