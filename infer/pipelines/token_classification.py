"""token-classification: entities in texts, grouped as transformers' TokenClassificationPipeline
groups them (aggregation_strategy none / simple / first / max / average, BIO and IOB2 tags)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.pipelines.image_classification import softmax
from infer.pipelines.text import TextPipeline
from infer.pipelines.text_classification import labels_of
from infer.runtime.session import Session

__all__ = ["TokenClassificationPipeline"]

STRATEGIES = ("none", "simple", "first", "max", "average")
DEFAULT_BATCH_SIZE = 32


class TokenClassificationPipeline(TextPipeline):
    """Entities per text: with aggregation_strategy "none", one dict per token ({"entity",
    "score", "index", "word", "start", "end"}); otherwise groups ({"entity_group", "score",
    "word", "start", "end"}). Tokens labelled with an ignore label ("O") are left out.

    Config: labels (index order).
    """

    task = "token-classification"
    default_model = ""  # no default: the user's model
    description = "entities in a text (names, places...), any BERT-family tagger"
    auto_class = "AutoModelForTokenClassification"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        self.labels = [str(v) for v in config.get("labels", [])]

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], tokenizer: str) -> dict[str, Any]:
        return {
            **super().from_model_config(model_config, tokenizer),
            "labels": labels_of(model_config),
        }

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"LABEL_{index}"

    def __call__(  # type: ignore[override]  # each task takes its own options
        self,
        texts: Any,
        aggregation_strategy: str = "none",
        ignore_labels: Sequence[str] = ("O",),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Any:
        """Return the entities of one text, or a list of those for a list of texts."""
        if aggregation_strategy not in STRATEGIES:
            raise PipelineError(
                f"aggregation_strategy {aggregation_strategy!r}: expected one of {STRATEGIES}"
            )
        if batch_size < 1:
            raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
        single, items = self.texts(texts)
        results = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            encoded = self.encoder(chunk)
            logits = self.session.run(None, encoded.feeds(self.input_names))[0]
            for text, encoding, row in zip(chunk, encoded.encodings, logits, strict=True):
                tokens = self._tokens(text, encoding, softmax(row[: len(encoding.ids)]))
                entities = self._aggregate(tokens, aggregation_strategy)
                results.append(
                    [
                        e
                        for e in entities
                        if e.get("entity", e.get("entity_group")) not in ignore_labels
                    ]
                )
        return results[0] if single else results

    def _tokens(self, text: str, encoding: Any, scores: np.ndarray) -> list[dict[str, Any]]:
        """Return one dict per non-special token: word, scores, start, end, index, is_subword."""
        prefix = self.encoder.continuing_subword_prefix
        unk = self.encoder.unk_id
        out = []
        for index, (token, token_id, (start, end), special) in enumerate(
            zip(
                encoding.tokens,
                encoding.ids,
                encoding.offsets,
                encoding.special_tokens_mask,
                strict=True,
            )
        ):
            if special:
                continue
            word_ref = text[start:end]
            if prefix:
                is_subword = len(token) != len(word_ref)
            else:  # transformers' heuristic for tokenizers that do not mark word pieces
                is_subword = start > 0 and " " not in text[start - 1 : start + 1]
            if token_id == unk:
                token, is_subword = word_ref, False
            out.append(
                {"word": token, "scores": scores[index], "start": start, "end": end,
                 "index": index, "is_subword": is_subword}
            )  # fmt: skip
        return out

    def _aggregate(self, tokens: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        if strategy in ("none", "simple"):
            entities = []
            for t in tokens:
                best = int(t["scores"].argmax())
                entities.append(
                    {"entity": self._label(best), "score": float(t["scores"][best]),
                     "index": t["index"], "word": t["word"], "start": t["start"], "end": t["end"]}
                )  # fmt: skip
            if strategy == "none":
                return entities
        else:
            entities = self._words(tokens, strategy)
        return self._groups(entities)

    def _words(self, tokens: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        """Return one entity per word: its tokens agree on the label (first / max / average)."""
        words: list[list[dict[str, Any]]] = []
        for t in tokens:
            if words and t["is_subword"]:
                words[-1].append(t)
            else:
                words.append([t])
        out = []
        for group in words:
            if strategy == "first":
                scores = group[0]["scores"]
            elif strategy == "max":
                scores = max(group, key=lambda t: t["scores"].max())["scores"]
            else:
                scores = np.nanmean(np.stack([t["scores"] for t in group]), axis=0)
            best = int(scores.argmax())
            out.append(
                {"entity": self._label(best), "score": float(scores[best]),
                 "word": self.encoder.decode_tokens([t["word"] for t in group]),
                 "start": group[0]["start"], "end": group[-1]["end"]}
            )  # fmt: skip
        return out

    @staticmethod
    def _tag(label: str) -> tuple[str, str]:
        """Return (B or I, entity type): labels without a B-/I- prefix continue (I)."""
        if label.startswith(("B-", "I-")):
            return label[0], label[2:]
        return "I", label

    def _groups(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return adjacent entities of one type merged (a B- tag starts a new one)."""
        groups: list[list[dict[str, Any]]] = []
        for e in entities:
            bi, tag = self._tag(e["entity"])
            if groups and bi != "B" and self._tag(groups[-1][-1]["entity"])[1] == tag:
                groups[-1].append(e)
            else:
                groups.append([e])
        return [
            {"entity_group": g[0]["entity"].split("-", 1)[-1],
             "score": float(np.nanmean([e["score"] for e in g])),
             "word": self.encoder.decode_tokens([e["word"] for e in g]),
             "start": g[0]["start"], "end": g[-1]["end"]}
            for g in groups
        ]  # fmt: skip
