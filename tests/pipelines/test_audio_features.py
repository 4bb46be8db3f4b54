"""audio-features against transformers' feature extractors on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import PipelineError
from infer.processors.audio import mel_filters

RATE = 16000


def _samples(path: Path) -> np.ndarray:
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == RATE
    return np.asarray(samples)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_log_mel_equals_transformers(n_mels: int, speech: Path) -> None:
    from transformers import WhisperFeatureExtractor
    from transformers.audio_utils import mel_filter_bank

    reference = WhisperFeatureExtractor(feature_size=n_mels)
    want_filters = mel_filter_bank(
        num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=RATE, norm="slaney", mel_scale="slaney",
    )  # fmt: skip
    np.testing.assert_allclose(mel_filters(RATE, 400, n_mels), want_filters, atol=1e-12)
    name = "whisper-log-mel" if n_mels == 80 else "whisper-log-mel-128"
    features = infer.pipeline("audio-features", model=name)
    samples = _samples(speech)
    # 10 s (padded to Whisper's 30 s), and 40 s (cut to 30 s).
    for audio in (samples, np.tile(samples, 4)):
        want = reference(audio, sampling_rate=RATE, return_tensors="np").input_features[0]
        got = features(audio)
        assert got.shape == want.shape == (n_mels, 3000) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_wav2vec2_normalisation_and_a_model_directory(speech: Path, tmp_path: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    samples = _samples(speech)
    reference = Wav2Vec2FeatureExtractor(do_normalize=True)
    want = reference(samples, sampling_rate=RATE, return_tensors="np").input_values[0]
    np.testing.assert_allclose(
        infer.pipeline("audio-features", model="wav2vec2")(samples), want, atol=1e-5
    )
    # A transformers directory: its preprocessor_config.json chooses the front end.
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(tmp_path))
    assert infer.pipeline("audio-features", model=str(tmp_path))(str(speech)).shape == (128, 3000)
    with pytest.raises(PipelineError, match="neither a front end"):
        infer.pipeline("audio-features", model="mfcc")


def test_features_from_the_cli(speech: Path, tmp_path: Path) -> None:
    out = tmp_path / "mel.npy"
    result = CliRunner().invoke(
        cli, ["run", "--task", "audio-features", str(speech), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), infer.pipeline("audio-features")(str(speech)))
    result = CliRunner().invoke(cli, ["run", "--task", "audio-features", str(speech)])
    assert result.exit_code != 0 and "write them with -o" in result.output
