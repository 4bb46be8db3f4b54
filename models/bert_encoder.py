"""A BERT-family encoder (transformers' BertModel) from a safetensors file, exported to ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from infer.errors import ModelError

CONFIG_FILE = "config.json"  # the transformers config, a [files] entry of the recipe
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
# Weights a sentence-transformers checkpoint carries that the encoder does not use.
UNUSED = ("pooler.", "embeddings.position_ids")


def build_module(weights: Path) -> Any:
    """Return transformers' BertModel (no pooler) with the safetensors weights, in eval mode;
    its config is the config.json beside the weights."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config_path = weights.parent / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"{weights.name}: no {CONFIG_FILE} beside it (a [files] entry)")
    config = BertConfig(**json.loads(config_path.read_text(encoding="utf-8")))
    model = BertModel(config, add_pooling_layer=False)
    state = {k.removeprefix("bert."): v for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith(UNUSED)]
    if missing or unexpected:
        raise ModelError(
            f"{weights.name} does not fit a BertModel of its config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval()


def export(weights: Path, code: Path | None) -> onnx.ModelProto:
    """Return the encoder exported to ONNX: int64 input_ids, attention_mask, token_type_ids
    [batch, sequence] -> float32 last_hidden_state [batch, sequence, hidden]."""
    from infer.frontends import require
    from infer.frontends.pytorch import convert

    torch = require("pytorch")
    encoder = build_module(weights)

    class Encoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    from infer.pipelines.text import example_inputs

    example = example_inputs(torch)
    converted = convert(
        Encoder(),
        example_inputs=tuple(example[n] for n in INPUT_NAMES),
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES},
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
    )
    return converted.proto
