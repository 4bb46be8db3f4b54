"""feature-extraction: sentence embeddings from a BERT-family encoder (sentence-transformers style).

Texts are tokenized by `tokenizers` from the model's tokenizer.json (kept in the config, so an
artifact's pipeline.json carries it, hashed with it), truncated at max_length tokens (said in
the result's `truncated` attribute and a warning, never silently), padded to the longest text
of each batch, run on the compiled encoder with symbolic batch and sequence dims, then pooled
over the attention mask (mean, or the [CLS] vector) and L2-normalised as the model card says.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from infer.errors import InferWarning, PipelineError
from infer.pipelines.text import TextPipeline
from infer.runtime.session import Session

__all__ = ["FeatureExtractionPipeline", "pool"]

DEFAULT_BATCH_SIZE = 32
POOLING = ("mean", "cls")


class FeatureExtractionPipeline(TextPipeline):
    """Sentence embeddings: numpy float32 [hidden] for one text, [n, hidden] for a list.

    Config: tokenizer (tokenizer.json's text), max_length, pooling (mean or cls), normalize.
    """

    task = "feature-extraction"
    default_model = "all-minilm-l6-v2"
    description = "sentence embeddings (mean-pooled, L2-normalised)"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        self.pooling = str(config.get("pooling", "mean"))
        self.normalize = bool(config.get("normalize", True))
        if self.pooling not in POOLING:
            raise PipelineError(f"{self.task}: pooling {self.pooling!r}: expected one of {POOLING}")
        self.truncated: list[int] = []

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], tokenizer: str) -> dict[str, Any]:
        return {**super().from_model_config(model_config, tokenizer), "pooling": "mean"}

    def __call__(  # type: ignore[override]  # each task takes its own options
        self, texts: Any, batch_size: int = DEFAULT_BATCH_SIZE, truncate: bool = True
    ) -> np.ndarray:
        """Return the embedding of one text ([hidden]) or of a list of texts ([n, hidden])."""
        if batch_size < 1:
            raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
        single, items = self.texts(texts)
        # Similar lengths batched together pad less; results go back in the given order.
        lengths = [len(t) for t in items]
        order = np.argsort(lengths, kind="stable")
        rows: list[np.ndarray] = [np.empty(0, np.float32)] * len(items)
        self.truncated = []
        for start in range(0, len(items), batch_size):
            chosen = order[start : start + batch_size]
            encoded = self.encoder([items[i] for i in chosen], truncate=truncate)
            self.truncated += [int(chosen[i]) for i in encoded.truncated]
            hidden = self.session.run(None, encoded.feeds(self.input_names))[0]
            for i, vector in zip(
                chosen,
                pool(hidden, encoded.attention_mask, self.pooling, self.normalize),
                strict=True,
            ):
                rows[int(i)] = vector
        if self.truncated:
            warnings.warn(
                f"{self.task}: {len(self.truncated)} text(s) cut at {self.encoder.max_length} "
                f"tokens (items {sorted(self.truncated)[:5]})",
                InferWarning,
                stacklevel=2,
            )
        if not items:
            return np.zeros((0, 0), np.float32)
        out = np.stack(rows)
        return out[0] if single else out


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """Return sentence vectors from hidden [batch, sequence, dim]: the mean over the attention
    mask (or the [CLS] row), L2-normalised when normalize; float32."""
    if pooling == "cls":
        pooled = hidden[:, 0].astype(np.float64)
    else:
        weights = mask[..., None].astype(np.float64)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)
