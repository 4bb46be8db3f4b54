"""automatic-speech-recognition against transformers' pipeline, on a small random-weight
wav2vec2 CTC model built here (no package ships a trained one) and real speech."""

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
from tests.conftest import speech_samples

RATE = 16000
CHARS = "abcdefghijklmnopqrstuvwxyz'"
# <pad> is CTC's blank, | the word delimiter.
VOCAB = {
    "<pad>": 0,
    "<s>": 1,
    "</s>": 2,
    "<unk>": 3,
    "|": 4,
    **{c: i + 5 for i, c in enumerate(CHARS)},
}


def _build_wav2vec2(folder: Path) -> Path:
    """A 2-layer wav2vec2 CTC model with seeded random weights, its tokenizer and extractor.
    The blank and the delimiter get a head start, so that decoding merges, drops and spaces."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|").save_pretrained(
        str(folder)
    )
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(
        str(folder)
    )
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(32, 32, 32), conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        pad_token_id=0,
    )  # fmt: skip
    model = Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
        model.lm_head.bias[VOCAB["<pad>"]] += 1.5
        model.lm_head.bias[VOCAB["|"]] += 1.0
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wav2vec2(tmp_path_factory.mktemp("asr") / "wav2vec2")


@pytest.fixture(scope="module")
def asr(model_dir: Path, module_cache: Path) -> Any:
    return infer.pipeline("automatic-speech-recognition", model=str(model_dir), threads=1)


@pytest.mark.parametrize(
    "options",
    [{}, {"chunk_length_s": 3.0}, {"chunk_length_s": 2.0, "stride_length_s": (0.5, 0.25)}],
    ids=["whole", "chunked", "chunked-uneven-strides"],
)
def test_text_equals_transformers_pipeline(
    options: dict[str, Any], asr: Any, model_dir: Path, speech: Path
) -> None:
    from transformers import pipeline

    reference = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")
    samples = speech_samples(speech)
    want = reference(samples.copy(), **options)["text"]
    got = asr(samples, **options)["text"]
    assert got == want
    assert " " in got and len(got) > 20  # words, merged repeats and dropped blanks decoded


def test_token_ids_equal_pytorch_at_any_length(asr: Any, model_dir: Path, speech: Path) -> None:
    import torch
    from transformers import Wav2Vec2ForCTC

    # Every node on TVM: the sample count stays symbolic through the whole graph.
    assert asr.session.placement()["onnxruntime_op_types"] == {}
    model = Wav2Vec2ForCTC.from_pretrained(str(model_dir)).eval()
    samples = speech_samples(speech)
    for length in (400, 12345, len(samples)):  # one compiled function for every length
        features = (samples[:length] - samples[:length].mean()) / np.sqrt(
            samples[:length].var() + 1e-7
        )
        with torch.no_grad():
            logits = model(torch.from_numpy(features[None].astype(np.float32))).logits
        np.testing.assert_array_equal(
            asr._logits_ids(samples[:length]), logits[0].argmax(-1).numpy()
        )


def test_an_artifact_from_the_cli(asr: Any, model_dir: Path, speech: Path, tmp_path: Path) -> None:
    out = tmp_path / "asr.infer"
    task = ["--task", "automatic-speech-recognition"]
    result = CliRunner().invoke(cli, ["compile", *task, str(model_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["run", *task, "--model", str(out), "--json", str(speech)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["result"] == asr(str(speech))


def test_bad_models_and_inputs_are_named(asr: Any, tmp_path: Path) -> None:
    seq2seq = tmp_path / "s2t"  # what save_pretrained writes: the config names the class
    seq2seq.mkdir()
    (seq2seq / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Speech2TextForConditionalGeneration"],
                "model_type": "speech_to_text",
            }
        )
    )
    with pytest.raises(PipelineError, match=r"encoder-decoder model.*CTC models .* and Whisper"):
        infer.pipeline("automatic-speech-recognition", model=str(seq2seq))
    with pytest.raises(PipelineError, match="no default model"):
        infer.pipeline("automatic-speech-recognition")
    with pytest.raises(PipelineError, match="no samples"):
        asr(np.zeros(0, np.float32))
    with pytest.raises(PipelineError, match="must exceed the strides"):
        asr(np.zeros(RATE, np.float32), chunk_length_s=1.0, stride_length_s=0.5)


# 90 s; test_whisper.py's twin runs bench_task's three runtimes in the default suite.
@pytest.mark.slow
def test_bench_times_three_runtimes_that_agree(asr: Any, model_dir: Path, speech: Path) -> None:
    from infer.bench import bench_task

    results = bench_task(
        "automatic-speech-recognition", [str(speech)], 1, model=str(model_dir), repeat=1
    )
    assert [r.runtime for r in results] == ["infer", "onnxruntime", "pytorch"]
    # The same text length from each: the same model, decoded the same way.
    assert {r.lines for r in results} == {len(asr(str(speech))["text"])}
    assert all(r.real_time_factor is not None and r.real_time_factor > 0 for r in results)
