"""voice-activity-detection against silero-vad's own get_speech_timestamps (its ONNX model on
ONNX Runtime), on real speech and on signals built here."""

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
from infer.processors.audio import load_audio, resample
from tests.conftest import session_cache

RATE = 16000
WINDOW_S = 512 / RATE  # one model window: 32 ms


@pytest.fixture(scope="session")
def vad(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with session_cache(tmp_path_factory):
        return infer.pipeline("voice-activity-detection", threads=1)


@pytest.fixture(scope="session")
def silero() -> Any:
    """silero-vad's get_speech_timestamps with its ONNX model, in seconds."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad(onnx=True)

    def timestamps(samples: np.ndarray, **options: Any) -> list[dict[str, float]]:
        found = get_speech_timestamps(torch.from_numpy(samples), model, **options)
        return [{k: v / RATE for k, v in s.items()} for s in found]

    return timestamps


def _read(path: Path) -> np.ndarray:
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == RATE
    return np.asarray(samples)


def _assert_close(got: list[dict[str, float]], want: list[dict[str, float]], within: float) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert abs(g["start"] - w["start"]) <= within and abs(g["end"] - w["end"]) <= within, (g, w)


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(6 * RATE) / RATE
    # A tone with harmonics and a slow tremolo (music-like), and a chirp.
    music = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((220, 440, 660, 880), 1))
    music = music * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)) * 0.2
    chirp = 0.3 * np.sin(2 * np.pi * (100 + 400 * t) * t)
    return {
        "silence": np.zeros(3 * RATE),
        "noise": 0.1 * rng.standard_normal(4 * RATE),
        "music": music,
        "chirp": chirp,
    }


def test_segments_equal_silero_on_real_speech(vad: Any, speech: Path, silero: Any) -> None:
    samples = _read(speech)
    want = silero(samples)
    assert len(want) >= 3  # real speech, several phrases
    got = vad(str(speech))
    _assert_close(got, want, within=0.001)  # the same windows: equal to the millisecond
    # The options mean what silero's do: a 2 s limit cuts the phrases the same way.
    _assert_close(
        vad(samples, max_speech_duration_s=2, min_silence_duration_ms=50),
        silero(samples, max_speech_duration_s=2, min_silence_duration_ms=50),
        within=0.001,
    )


@pytest.mark.parametrize("name", ["silence", "noise", "music", "chirp"])
def test_segments_equal_silero_on_built_signals(
    name: str, vad: Any, speech: Path, silero: Any
) -> None:
    signal = _signals()[name].astype(np.float32)
    # Speech after the signal, so that every case has something to find.
    samples = np.concatenate([signal, _read(speech)]).astype(np.float32)
    _assert_close(vad(samples, sampling_rate=RATE), silero(samples), within=WINDOW_S)
    _assert_close(vad(signal), silero(signal), within=WINDOW_S)


def test_other_rates_channels_and_sample_types(vad: Any, speech: Path, tmp_path: Path) -> None:
    import soundfile

    samples = _read(speech)
    want = vad(samples)
    # Stereo int16 (the two channels averaged), as bytes and as a file.
    stereo = np.stack([samples, samples], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(str(path), stereo, RATE, subtype="PCM_16")
    _assert_close(vad(path.read_bytes()), want, within=WINDOW_S)
    pcm = (np.clip(samples, -1, 1 - 2**-15) * 32768).astype(np.int16)
    _assert_close(vad((pcm, RATE)), want, within=WINDOW_S)
    # 8 and 48 kHz are resampled to the model's 16 kHz: the same speech, found again.
    for rate in (8000, 48000):
        flac = tmp_path / f"speech-{rate}.flac"
        soundfile.write(str(flac), resample(samples, RATE, rate), rate)
        _assert_close(vad(str(flac)), want, within=2 * WINDOW_S)


def test_resampling_keeps_a_sine(tmp_path: Path) -> None:
    t48 = np.arange(48000) / 48000
    t16 = np.arange(16000) / 16000
    for freq in (100.0, 440.0, 3000.0, 7000.0):
        got = load_audio((np.sin(2 * np.pi * freq * t48).astype(np.float32), 48000), RATE)
        want = np.sin(2 * np.pi * freq * t16)
        # Away from the edges (the resampler's filter sees zeros beyond them).
        np.testing.assert_allclose(got.samples[400:-400], want[400:-400], atol=2e-3)
        assert got.rate == RATE and got.samples.dtype == np.float32


def test_bad_audio_is_named(vad: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    with pytest.raises(PipelineError, match=r"empty\.wav: not an audio file"):
        vad(str(empty))
    with pytest.raises(PipelineError, match=r"notes\.wav: not an audio file"):
        vad(str(text))
    with pytest.raises(PipelineError, match=r"missing\.wav: no such audio file"):
        vad(str(tmp_path / "missing.wav"))
    with pytest.raises(PipelineError, match=r"audio array \(0,\): no samples"):
        vad(np.zeros(0, np.float32))
    nan = np.zeros(RATE, np.float32)
    nan[100] = np.nan
    with pytest.raises(PipelineError, match="NaN or infinity"):
        vad(nan)
    with pytest.raises(PipelineError, match=r"unknown option\(s\) \['threshhold'\]"):
        vad(nan, threshhold=0.3)


def test_run_from_the_cli(vad: Any, speech: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with session_cache(tmp_path_factory):
        result = CliRunner().invoke(
            cli, ["run", "--task", "voice-activity-detection", "--json", str(speech)]
        )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["result"] == vad(str(speech))


def test_bench_times_three_runtimes_that_agree(
    vad: Any, speech: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from infer.bench import bench_task, plot_task_results

    with session_cache(tmp_path_factory):
        results = bench_task("voice-activity-detection", [str(speech)], 1, repeat=1, warmup=1)
    assert [r.runtime for r in results] == ["infer", "onnxruntime", "silero-vad"]
    # Each runtime found the segments the pipeline finds, over the same 10 s of audio.
    assert {r.lines for r in results} == {len(vad(str(speech)))}
    for r in results:
        assert r.audio_seconds == pytest.approx(9.96, abs=0.01)
        assert r.real_time_factor is not None and 0 < r.real_time_factor < 1
    plot_task_results("voice-activity-detection", results, tmp_path / "vad.png")  # --plot
    assert (tmp_path / "vad.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
