"""Audio in: files (wav, flac, ogg... through libsndfile) or arrays, as mono float32 at a model's rate.

Decoding is soundfile's (libsndfile), resampling soxr's (the SoX resampler, "HQ" quality);
nothing here is written by hand but the down-mix (the mean of the channels) and the integer
scaling (int16 / 32768, as soundfile reads PCM as float). Audio that cannot be decoded, that
is empty, or that holds NaN or infinities is a PipelineError naming its source.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import PipelineError

__all__ = [
    "Audio",
    "load_audio",
    "mel_filters",
    "power_spectrogram",
    "resample",
    "wav2vec2_normalize",
    "whisper_log_mel",
]

RESAMPLE_QUALITY = "HQ"
# Integer samples as float in [-1, 1): what soundfile gives for PCM files.
_INT_SCALE = {
    np.dtype(np.int8): 2.0**7,
    np.dtype(np.int16): 2.0**15,
    np.dtype(np.int32): 2.0**31,
}


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples at rate, and where they came from (for messages)."""

    samples: np.ndarray
    rate: int
    source: str

    @property
    def seconds(self) -> float:
        """Return the duration in seconds."""
        return len(self.samples) / self.rate


def _require(module: str, extra: str = "audio") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(f"audio input needs {module} (pip install 'infer[{extra}]')") from None


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Return mono float32 samples converted from rate to target Hz with soxr."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    soxr = _require("soxr")
    out: np.ndarray = soxr.resample(samples.astype(np.float32), rate, target, RESAMPLE_QUALITY)
    return out.astype(np.float32, copy=False)


def _as_float(samples: np.ndarray, source: str) -> np.ndarray:
    if samples.dtype in _INT_SCALE:
        return (samples.astype(np.float32) / np.float32(_INT_SCALE[samples.dtype])).astype(
            np.float32
        )
    if samples.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    raise PipelineError(f"{source}: samples of dtype {samples.dtype}, expected integer or float")


def _mono(samples: np.ndarray, source: str) -> np.ndarray:
    """Return samples as one channel: [n] as is, [n, channels] averaged (soundfile's layout)."""
    if samples.ndim == 1:
        return samples
    if samples.ndim == 2:
        # soundfile gives [frames, channels]; an array given as [channels, frames] (torch's
        # and librosa's layout) is recognised by having far fewer rows than columns.
        frames_last = samples.shape[0] < samples.shape[1] and samples.shape[0] <= 8
        mono: np.ndarray = samples.mean(axis=0 if frames_last else 1)
        return mono
    raise PipelineError(f"{source}: audio of shape {samples.shape}, expected [n] or [n, channels]")


def _decode(data: Any, source: str) -> tuple[np.ndarray, int]:
    soundfile = _require("soundfile")
    try:
        samples, rate = soundfile.read(data, dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as exc:
        raise PipelineError(f"{source}: not an audio file libsndfile can read ({exc})") from None
    return samples, int(rate)


def load_audio(item: Any, rate: int, sampling_rate: int | None = None) -> Audio:
    """Return item as mono float32 samples at rate Hz.

    item: a path (str or PathLike) to an audio file, its bytes, a numpy array of samples
    (sampling_rate required unless it is already rate) or a (samples, sampling_rate) pair.
    """
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], np.ndarray):
        item, sampling_rate = item
    if isinstance(item, np.ndarray):
        source = f"audio array {tuple(item.shape)}"
        samples = _mono(_as_float(item, source), source)
        given = rate if sampling_rate is None else int(sampling_rate)
    elif isinstance(item, (bytes, bytearray)):
        source = f"audio bytes ({len(item)} bytes)"
        raw, given = _decode(io.BytesIO(bytes(item)), source)
        samples = _mono(raw, source)
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        source = str(path)
        if not path.is_file():
            raise PipelineError(f"{source}: no such audio file")
        raw, given = _decode(str(path), source)
        samples = _mono(raw, source)
    else:
        raise PipelineError(
            f"audio input is a {type(item).__name__}; expected a file path, bytes, a numpy "
            "array or a (samples, sampling_rate) pair"
        )
    if given <= 0:
        raise PipelineError(f"{source}: sampling rate {given}, expected a positive number of Hz")
    if samples.size == 0:
        raise PipelineError(f"{source}: no samples (empty audio)")
    if not np.all(np.isfinite(samples)):
        raise PipelineError(f"{source}: samples hold NaN or infinity")
    return Audio(resample(samples, given, rate), rate, source)


# Whisper's front end (openai/whisper audio.py; transformers' WhisperFeatureExtractor).
WHISPER_RATE = 16000
WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_CHUNK_SECONDS = 30
WHISPER_MEL_BINS = (80, 128)
LOG_MEL_FLOOR = 1e-10
LOG_MEL_DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum
# wav2vec2's per-utterance normalisation (Wav2Vec2FeatureExtractor, do_normalize).
WAV2VEC2_EPSILON = 1e-7


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, Whisper's): linear below 1 kHz, log above."""
    hz = np.asarray(hz, np.float64)
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) * 27.0 / np.log(6.4)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    hz[log_region] = 1000.0 * np.exp(np.log(6.4) * (mel[log_region] - 15.0) / 27.0)
    return hz


def mel_filters(
    rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Return [1 + n_fft // 2, n_mels] triangular filters on Slaney's mel scale, each scaled to
    unit area (Slaney's norm): the filters of Whisper's mel_filters.npz (librosa's)."""
    fmax = rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, rate // 2, 1 + n_fft // 2)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([fmin]))[0], _hz_to_mel(np.array([fmax]))[0], n_mels + 2)
    )
    widths = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None, :]
    return filters


def power_spectrogram(samples: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Return |STFT|^2 [1 + n_fft // 2, frames] with a periodic Hann window, frames centred
    (the signal reflect-padded by n_fft // 2 on both sides), computed in float64."""
    pad = n_fft // 2
    if len(samples) <= pad:
        raise PipelineError(f"{len(samples)} samples: too short for a {n_fft}-point STFT")
    padded = np.pad(samples.astype(np.float64), pad, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.fft.rfft(frames * window, axis=-1)
    power: np.ndarray = (spectrum.real**2 + spectrum.imag**2).T
    return power


def whisper_log_mel(samples: np.ndarray, n_mels: int = 80, pad_to_chunk: bool = True) -> np.ndarray:
    """Return Whisper's log-mel features [n_mels, frames] (float32) of 16 kHz samples: padded
    with zeros (or cut) to 30 s, 3000 frames, unless pad_to_chunk is False."""
    if n_mels not in WHISPER_MEL_BINS:
        raise PipelineError(f"Whisper log-mel has {WHISPER_MEL_BINS} bins, not {n_mels}")
    if pad_to_chunk:
        length = WHISPER_RATE * WHISPER_CHUNK_SECONDS
        fitted = np.zeros(length, np.float32)
        fitted[: min(length, len(samples))] = samples[:length]
        samples = fitted
    power = power_spectrogram(samples, WHISPER_N_FFT, WHISPER_HOP)
    mel = mel_filters(WHISPER_RATE, WHISPER_N_FFT, n_mels).T @ power
    log_spec = np.log10(np.maximum(mel, LOG_MEL_FLOOR))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - LOG_MEL_DYNAMIC_RANGE)
    features: np.ndarray = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return features


def wav2vec2_normalize(samples: np.ndarray) -> np.ndarray:
    """Return samples with zero mean and unit variance (wav2vec2's feature extractor)."""
    x = samples.astype(np.float64)
    normalized: np.ndarray = ((x - x.mean()) / np.sqrt(x.var() + WAV2VEC2_EPSILON)).astype(
        np.float32
    )
    return normalized
