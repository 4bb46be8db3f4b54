"""audio-features: the inputs speech models expect, from audio files or arrays, in numpy.

Whisper's log-mel spectrogram (80 or 128 bins, 30 s windows) and wav2vec2's per-utterance
normalisation, as transformers' feature extractors compute them (infer.processors.audio). No
model runs: the "model" names the front end, or is a transformers model directory whose
preprocessor_config.json says which one and how it is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.pipelines.base import Pipeline, read_json
from infer.processors.audio import (
    WHISPER_MEL_BINS,
    WHISPER_RATE,
    load_audio,
    wav2vec2_normalize,
    whisper_log_mel,
)
from infer.progress import Progress

__all__ = ["AudioFeaturesPipeline", "front_end_config"]

PREPROCESSOR_FILE = "preprocessor_config.json"
# Front ends by name: what --model takes besides a transformers directory.
FRONT_ENDS: dict[str, dict[str, Any]] = {
    "whisper-log-mel": {"features": "whisper", "n_mels": 80},
    "whisper-log-mel-128": {"features": "whisper", "n_mels": 128},
    "wav2vec2": {"features": "wav2vec2", "sampling_rate": 16000, "normalize": True},
}
# transformers' feature extractor classes, and the front end each is.
_EXTRACTORS = {"WhisperFeatureExtractor": "whisper", "Wav2Vec2FeatureExtractor": "wav2vec2"}


def front_end_config(folder: Path) -> dict[str, Any]:
    """Return the front end a transformers model directory's preprocessor_config.json describes."""
    path = folder / PREPROCESSOR_FILE
    data = read_json(path)
    kind = _EXTRACTORS.get(str(data.get("feature_extractor_type")))
    if kind == "whisper":
        return {"features": "whisper", "n_mels": int(data.get("feature_size", 80))}
    if kind == "wav2vec2":
        return {
            "features": "wav2vec2",
            "sampling_rate": int(data.get("sampling_rate", 16000)),
            "normalize": bool(data.get("do_normalize", True)),
        }
    raise PipelineError(
        f"{path}: feature extractor {data.get('feature_extractor_type')!r}; known: {sorted(_EXTRACTORS)}"
    )


class AudioFeaturesPipeline(Pipeline):
    """Features of audio: float32 [n_mels, 3000] (Whisper) or [samples] (wav2vec2) per input.

    Config: features ("whisper" or "wav2vec2"), n_mels (Whisper), sampling_rate and normalize
    (wav2vec2).
    """

    task = "audio-features"
    default_model = "whisper-log-mel"
    runs_recipe = False
    description = "Whisper log-mel or wav2vec2 input features of audio (numpy)"

    def __init__(self, config: Mapping[str, Any]) -> None:  # no session: nothing is compiled
        self.config = dict(config)
        self.features = str(config.get("features"))
        if self.features == "whisper":
            self.rate = WHISPER_RATE
            self.n_mels = int(config.get("n_mels", 80))
            if self.n_mels not in WHISPER_MEL_BINS:
                raise PipelineError(
                    f"{self.task}: n_mels {self.n_mels}, expected one of {WHISPER_MEL_BINS}"
                )
        elif self.features == "wav2vec2":
            self.rate = int(config.get("sampling_rate", 16000))
            self.normalize = bool(config.get("normalize", True))
        else:
            raise PipelineError(
                f"{self.task}: features {self.features!r}, expected 'whisper' or 'wav2vec2'"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, features={self.features!r})"

    @classmethod
    def open(
        cls,
        model: Any,
        *,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
    ) -> Pipeline:
        if config is not None:
            return cls(config)
        name = cls.default_model if model is None else str(model)
        if name in FRONT_ENDS:
            return cls(FRONT_ENDS[name])
        if Path(name).is_dir():
            return cls(front_end_config(Path(name)))
        raise PipelineError(
            f"{cls.task}: model {name!r} is neither a front end ({', '.join(FRONT_ENDS)}) nor a "
            f"transformers directory with a {PREPROCESSOR_FILE}"
        )

    @classmethod
    def build(cls, output: Path, model: Any, **_options: Any) -> Path:
        raise PipelineError(f"{cls.task} runs in numpy: there is no model to compile")

    def __call__(self, audio: Any, sampling_rate: int | None = None) -> Any:  # type: ignore[override]
        """Return the features of one input, or a list of them for a list of inputs (audio
        file paths, bytes, numpy arrays at sampling_rate, or (samples, rate) pairs)."""
        single = not isinstance(audio, list)
        results = [self._features(item, sampling_rate) for item in ([audio] if single else audio)]
        return results[0] if single else results

    def _features(self, item: Any, sampling_rate: int | None) -> np.ndarray:
        samples = load_audio(item, self.rate, sampling_rate).samples
        if self.features == "whisper":
            return whisper_log_mel(samples, self.n_mels)
        return wav2vec2_normalize(samples) if self.normalize else samples
