"""text- and token-classification on small random BERT models built here with transformers:
our outputs against transformers.pipeline on the same weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import PipelineError
from tests.conftest import session_cache

WORDS = ["ada", "love", "##lace", "lived", "in", "london", "paris", "the", "film", "was",
         "great", "terrible", "un", "##believ", "##able", ",", ".", "-", "and", "##s"]  # fmt: skip
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = [
    "Ada Lovelace lived in London",
    "the film was unbelievable, terrible and great.",
    "Paris-London films",
    "zzz qqq",  # unknown words
    "",
]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _wordpiece() -> Any:
    """A BERT WordPiece tokenizer (lower-casing, '##' pieces, [CLS] ... [SEP]) on WORDS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )  # fmt: skip
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _model_dir(root: Path, head: str, labels: list[str], seed: int) -> Path:
    import torch
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_wordpiece(), unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip
    config = transformers.BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=48, max_position_embeddings=64,
        id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).eval()
    out = root / head
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bert")
    return {
        "text-classification": _model_dir(
            root, "BertForSequenceClassification", ["negative", "neutral", "positive"], 0
        ),
        "token-classification": _model_dir(root, "BertForTokenClassification", NER_LABELS, 1),
    }


def _reference(task: str, path: Path) -> Any:
    import transformers

    return transformers.pipeline(task, model=str(path), tokenizer=str(path), device="cpu")


def _same(ours: Any, theirs: Any) -> None:
    """Equal labels, spans and words; scores within 1e-4."""
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            if key == "score":
                assert abs(ours[key] - float(value)) < 1e-4
            else:
                assert ours[key] == (value.item() if hasattr(value, "item") else value), key
        return
    assert isinstance(ours, list) and len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        _same(a, b)


def test_text_classification_equals_transformers(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = models["text-classification"]
    with session_cache(tmp_path_factory):
        clf = infer.pipeline("text-classification", path, threads=1)
    reference = _reference("text-classification", path)
    for text in TEXTS:
        _same(clf(text), reference(text))
        _same(clf(text, top_k=None), reference(text, top_k=None))
    _same(clf(TEXTS, top_k=2), reference(TEXTS, top_k=2))
    assert clf.function == "softmax" and clf.labels == ["negative", "neutral", "positive"]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max", "average"])
def test_token_classification_equals_transformers(
    models: dict[str, Path], strategy: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = models["token-classification"]
    with session_cache(tmp_path_factory):
        ner = infer.pipeline("token-classification", path, threads=1)
    reference = _reference("token-classification", path)
    found = 0
    for text in TEXTS:
        ours = ner(text, aggregation_strategy=strategy)
        _same(ours, reference(text, aggregation_strategy=strategy))
        found += len(ours)
    assert found > 0  # the random tagger labels something, so grouping is exercised


def test_artifact_and_cli(
    models: dict[str, Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = models["token-classification"]
    out = tmp_path / "ner.infer"
    with session_cache(tmp_path_factory):
        result = CliRunner().invoke(
            cli, ["compile", "--task", "token-classification", str(path), "-o", str(out)]
        )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "pipeline.json").read_text())["labels"] == NER_LABELS
    result = CliRunner().invoke(
        cli, ["run", "--task", "token-classification", "--model", str(out), "--json", TEXTS[0]]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[") :])
    ner = infer.pipeline("token-classification", out)
    assert rows[0]["result"] == ner(TEXTS[0])


def test_bad_models_and_inputs(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="has no default model"):
        infer.pipeline("text-classification")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PipelineError, match=r"no tokenizer\.json"):
        infer.pipeline("text-classification", bare)
    clf = infer.pipeline("text-classification", models["text-classification"], threads=1)
    with pytest.raises(PipelineError, match="text item 1 is a bytes"):
        clf(["fine", b"bytes"])
    mismatched = {**clf.config, "vocab_size": 10}
    with pytest.raises(PipelineError, match="do not belong together"):
        type(clf)(clf.session, mismatched)
    assert np.isclose(sum(r["score"] for r in clf("great", top_k=None)), 1.0)
    # The texts really are WordPiece-tokenized (not all [UNK]).
    assert clf.encoder(["Ada Lovelace"]).input_ids.tolist() == [[2, 5, 6, 7, 3]]
