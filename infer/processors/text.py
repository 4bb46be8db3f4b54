"""Text to encoder inputs with Hugging Face `tokenizers` (the Rust tokenizer, from tokenizer.json)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.errors import PipelineError

__all__ = ["INPUT_NAMES", "Encoded", "TextEncoder"]

# The inputs a BERT-family encoder takes, in transformers' order.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Encoded:
    """A padded batch: int64 [batch, sequence] arrays, and which texts were truncated."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    truncated: list[int]
    encodings: list[Any]  # tokenizers' Encoding per text: tokens, offsets, special tokens

    def feeds(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the arrays for the model inputs named (input_ids, attention_mask, token_type_ids)."""
        arrays = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
        unknown = [n for n in names if n not in arrays]
        if unknown:
            raise PipelineError(f"model inputs {unknown}: a text encoder takes {sorted(arrays)}")
        return {n: arrays[n] for n in names}


class TextEncoder:
    """tokenizer.json's tokenizer with truncation at max_length tokens (special tokens included)
    and padding to the longest text of each batch."""

    def __init__(self, tokenizer_json: str, max_length: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise PipelineError("text tasks need tokenizers: pip install 'infer[text]'") from None
        try:
            self.tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the Rust side raises plain Exceptions
            raise PipelineError(f"tokenizer.json: cannot be read ({exc})") from None
        if max_length < 2:
            raise PipelineError(f"max_length {max_length}: expected at least 2 tokens")
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length)  # the special tokens stay at the ends
        self.tokenizer.no_padding()
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else int(pad)

    def decode_tokens(self, tokens: Sequence[str]) -> str:
        """Return tokens joined as text by the tokenizer's decoder (WordPiece: '##' merged)."""
        decoder = self.tokenizer.decoder
        return str(decoder.decode(list(tokens))) if decoder is not None else " ".join(tokens)

    @property
    def continuing_subword_prefix(self) -> str | None:
        """Return the model's prefix of word-continuing tokens ('##'), None without one."""
        return getattr(self.tokenizer.model, "continuing_subword_prefix", None)

    @property
    def unk_id(self) -> int | None:
        token = getattr(self.tokenizer.model, "unk_token", None)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def __call__(self, texts: Sequence[Any], truncate: bool = True) -> Encoded:
        """Return texts tokenized, truncated at max_length (PipelineError with truncate=False
        when a text is longer) and padded to the longest."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise PipelineError(
                f"text item {bad[0]} is a {type(texts[bad[0]]).__name__}, expected a string"
            )
        encodings = self.tokenizer.encode_batch(list(texts))
        truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        if truncated and not truncate:
            raise PipelineError(
                f"text item {truncated[0]} is over max_length {self.max_length} tokens "
                "(truncation is off)"
            )
        length = max((len(e.ids) for e in encodings), default=0)
        shape = (len(encodings), length)
        ids = np.full(shape, self.pad_id, np.int64)
        mask = np.zeros(shape, np.int64)
        types = np.zeros(shape, np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = e.attention_mask
            types[row, :n] = e.type_ids
        return Encoded(ids, mask, types, truncated, encodings)
