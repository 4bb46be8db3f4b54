"""automatic-speech-recognition with a Whisper-style model against transformers' own pipeline and
generate (greedy), on a small random-weight Whisper built here with a byte-level BPE tokenizer
(no package ships a trained Whisper) and real speech."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import PipelineError
from infer.pipelines.whisper import WhisperPipeline, merge_chunks
from tests.conftest import speech_samples

RATE = 16000
SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|fr|>", "<|translate|>",
    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]  # fmt: skip
MERGES = [("t", "h"), ("Ġ", "t"), ("e", "r"), ("i", "n"), ("Ġ", "a")]
MAX_LENGTH = 24  # new tokens per 30 s window


def _build_whisper(folder: Path) -> Path:
    """A 2+2-layer Whisper with seeded random weights, a byte-level BPE tokenizer (256 bytes, a few
    merges, Whisper's special tokens), a generation config with languages, tasks, suppressed
    tokens and begin-suppressed tokens, and Whisper's feature extractor."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tokenizer = WhisperTokenizerFast(vocab=vocab, merges=MERGES)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    eos = ids["<|endoftext|>"]
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_target_positions=64,
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=eos, pad_token_id=eos,
        bos_token_id=eos, suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=eos, pad_token_id=eos,
        max_length=MAX_LENGTH, is_multilingual=True, no_timestamps_token_id=ids["<|notimestamps|>"],
        lang_to_id={t: ids[t] for t in ("<|en|>", "<|de|>", "<|fr|>")},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        suppress_tokens=[5, 7], begin_suppress_tokens=[eos, 32],
    )  # fmt: skip
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_whisper(tmp_path_factory.mktemp("asr") / "whisper")


@pytest.fixture(scope="module")
def asr(model_dir: Path, module_cache: Path) -> Any:
    return infer.pipeline("automatic-speech-recognition", model=str(model_dir), threads=1)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"language": "de"},
        {"language": "fr", "task": "translate"},
        {"chunk_length_s": 4.0},
        {"chunk_length_s": 3.0, "stride_length_s": (1.0, 0.5)},
    ],
    ids=["detected-language", "german", "translate", "chunked", "chunked-uneven-strides"],
)
def test_text_equals_transformers_pipeline(
    options: dict[str, Any], asr: Any, reference: Any, speech: Path
) -> None:
    chunking = {k: v for k, v in options.items() if "length" in k}
    generation = {k: v for k, v in options.items() if "length" not in k}
    samples = speech_samples(speech)
    want = reference(samples.copy(), **chunking, generate_kwargs={"num_beams": 1, **generation})[
        "text"
    ]
    assert asr(samples, **options) == {"text": want}
    assert want.strip()  # tokens were decoded, not only special ones


def test_token_ids_equal_greedy_generate(asr: Any, model_dir: Path, speech: Path) -> None:
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    # Every node of both models on TVM; one decoder step for every cache length.
    for session in (asr.models.encoder, asr.models.decoder):
        assert session.placement()["onnxruntime_op_types"] == {}
    model = WhisperForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir))
    samples = speech_samples(speech)
    for length, language in ((RATE * 2, None), (len(samples), "en")):
        features = extractor(samples[:length], sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            want = model.generate(features.input_features, num_beams=1, language=language)
        got = asr.token_ids(samples[:length], language, None)
        prompt = len(got) - want.shape[1]
        assert got[prompt:] == want[0].tolist()
        assert len(got) == MAX_LENGTH + prompt  # the random model never ends: the limit did
    # Generation stops at the end token: make the model's favourite token the end.
    favourite = max(set(got[prompt:]), key=got[prompt:].count)
    config = {**asr.config, "generation": {**asr.config["generation"], "eos_token_id": favourite}}
    ending = WhisperPipeline(asr.models, config)
    with torch.no_grad():
        want = model.generate(
            features.input_features, num_beams=1, language="en", eos_token_id=favourite
        )
    got = ending.token_ids(samples, "en", None)
    # generate leaves the end token out of what it returns.
    assert got[-1] == favourite and got[prompt:-1] == want[0].tolist()
    assert len(got) < MAX_LENGTH + prompt


def test_merge_chunks_equals_transformers() -> None:
    from transformers.models.whisper.tokenization_whisper import _find_longest_common_sequence

    rng = np.random.default_rng(0)
    text = rng.integers(0, 50, 60).tolist()
    cases = [
        [text[:25], text[18:45], text[40:]],  # clean overlaps
        [text[:25], [*text[20:30], 99, *text[31:45]], text[44:]],  # a disagreement in one
        [text[:10], rng.integers(0, 50, 12).tolist()],  # no overlap at all
        [[1, 2], [3]],
    ]
    for sequences in cases:
        assert merge_chunks(sequences) == _find_longest_common_sequence(sequences)


def test_a_bundle_from_the_cli_and_its_integrity(
    asr: Any, model_dir: Path, speech: Path, tmp_path: Path
) -> None:
    out = tmp_path / "whisper.infer"
    task = ["--task", "automatic-speech-recognition"]
    result = CliRunner().invoke(cli, ["compile", *task, str(model_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["decoder", "encoder", "pipeline.json"]
    run = ["run", *task, "--model", str(out), "--json", str(speech)]
    result = CliRunner().invoke(cli, run)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["result"] == asr(str(speech))
    options = ["--option", "language=de", "--option", "chunk_length_s=4"]
    result = CliRunner().invoke(cli, [*run, *options])
    assert result.exit_code == 0, result.output
    want = asr(str(speech), language="de", chunk_length_s=4)
    assert json.loads(result.stdout)[0]["result"] == want
    result = CliRunner().invoke(cli, [*run, "--option", "beams=5"])
    assert (
        result.exit_code == 2 and "takes no option beams; it takes sampling_rate" in result.output
    )
    # A component swapped (here: the encoder's manifest rewritten) is refused.
    manifest = out / "encoder" / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    with pytest.raises(PipelineError, match=r"encoder/manifest.json does not match"):
        infer.pipeline("automatic-speech-recognition", model=str(out))


def test_bad_models_and_inputs_are_named(asr: Any, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"60\.0 s of audio.*pass chunk_length_s"):
        asr(np.zeros(RATE * 60, np.float32))
    with pytest.raises(PipelineError, match="at most 30 s"):
        asr(np.zeros(RATE, np.float32), chunk_length_s=40)
    with pytest.raises(PipelineError, match="language 'xx'; this model knows de, en, fr"):
        asr(np.zeros(RATE, np.float32), language="xx")
    with pytest.raises(PipelineError, match="task 'summarize'"):
        asr(np.zeros(RATE, np.float32), task="summarize")
    with pytest.raises(PipelineError, match="no samples"):
        asr(np.zeros(0, np.float32))
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(model_dir, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(PipelineError, match=r"no-tokenizer: no tokenizer\.json"):
        infer.pipeline("automatic-speech-recognition", model=str(broken))


def test_bench_times_three_runtimes_that_agree(asr: Any, model_dir: Path, speech: Path) -> None:
    from infer.bench import bench_task

    results = bench_task(
        "automatic-speech-recognition", [str(speech)], 1, model=str(model_dir), repeat=1
    )
    assert [r.runtime for r in results] == ["infer", "onnxruntime", "pytorch"]
    # The same text length from each: the same model, decoded the same way.
    assert {r.lines for r in results} == {len(asr(str(speech))["text"])}
    assert all(r.real_time_factor is not None and r.real_time_factor > 0 for r in results)
