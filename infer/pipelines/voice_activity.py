"""voice-activity-detection: speech segments of audio, with Silero VAD compiled by TVM.

The model is streaming: each call takes one window of 512 samples at 16 kHz behind the last
64 samples of the previous one (its context), and the recurrent state the previous call
returned. The window probabilities become segments with silero-vad's own rules
(`get_speech_timestamps_from_probs` of silero-vad 6.2.3, ported line for line): a segment opens
at a probability >= threshold, closes after min_silence_duration_ms below neg_threshold
(threshold - 0.15), is dropped under min_speech_duration_ms, is cut at the longest silence
when it passes max_speech_duration_s, and is padded by speech_pad_ms on each side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.pipelines.base import Pipeline
from infer.processors.audio import Audio, load_audio
from infer.runtime.session import Session

__all__ = ["VoiceActivityPipeline", "speech_segments"]

# silero-vad's defaults (get_speech_timestamps), in the same units.
DEFAULTS: dict[str, Any] = {
    "threshold": 0.5,
    "neg_threshold": None,  # threshold - 0.15, at least 0.01
    "min_speech_duration_ms": 250,
    "max_speech_duration_s": None,  # no limit (silero's float('inf'); JSON has none)
    "min_silence_duration_ms": 100,
    "speech_pad_ms": 30,
    "min_silence_at_max_speech_ms": 98,
    "use_max_poss_sil_at_max_speech": True,
}
# The Silero model's stream: 16 kHz, 512-sample windows, 64 samples of context.
SILERO_STREAM = {"sampling_rate": 16000, "window": 512, "context": 64}
# Decimal places of the seconds returned (1 ms).
SECONDS_DECIMALS = 3


class VoiceActivityPipeline(Pipeline):
    """Speech segments of audio: [{"start": s, "end": s}, ...] in seconds per input.

    Config: sampling_rate, window, context (the model's stream), the input/output names
    (audio, state, probability, next state), and silero-vad's segmentation options (DEFAULTS),
    which a call may override: vad("a.wav", threshold=0.6).
    """

    task = "voice-activity-detection"
    keyword_options = tuple(DEFAULTS)
    default_model = "silero-vad"
    description = "speech segments (start/end seconds) of audio"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        try:
            self.rate = int(config["sampling_rate"])
            self.window = int(config["window"])
            self.context = int(config["context"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{self.task}: config: missing or malformed {exc}") from None
        inputs = {s.name: s for s in session.get_inputs()}
        outputs = [s.name for s in session.get_outputs()]
        names = {
            "audio_input": "input", "state_input": "state",
            "probability_output": "output", "state_output": "stateN",
        }  # fmt: skip
        self.names = {k: str(config.get(k, v)) for k, v in names.items()}
        missing = [
            n
            for key, n in self.names.items()
            if n not in (inputs if key.endswith("input") else outputs)
        ]
        if missing:
            raise PipelineError(
                f"{self.task}: the model has inputs {sorted(inputs)} and outputs {outputs}, not "
                f"{missing} (set audio_input, state_input, probability_output, state_output)"
            )
        state = inputs[self.names["state_input"]].shape
        if not all(isinstance(d, int) for d in state):
            raise PipelineError(f"{self.task}: the state input needs a fixed shape, got {state}")
        self.state_shape = tuple(int(d) for d in state)
        self.output_index = {n: outputs.index(n) for n in outputs}
        self.options = {k: config.get(k, v) for k, v in DEFAULTS.items()}
        self.probabilities: list[np.ndarray] = []

    @classmethod
    def config_from_recipe(cls, recipe: Any) -> dict[str, Any]:
        if not recipe.name.startswith("silero-vad"):
            raise PipelineError(f"{cls.task}: no stream settings for model {recipe.name!r}")
        return {"task": cls.task, **SILERO_STREAM, **DEFAULTS}

    def window_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Return the speech probability of each window of samples (at the model's rate), the
        last window padded with zeros; the state and context carried from window to window."""
        state = np.zeros(self.state_shape, np.float32)
        context = np.zeros(self.context, np.float32)
        count = math.ceil(len(samples) / self.window)
        padded = np.zeros(count * self.window, np.float32)
        padded[: len(samples)] = samples
        probs = np.empty(count, np.float32)
        audio, state_in = self.names["audio_input"], self.names["state_input"]
        prob_at = self.output_index[self.names["probability_output"]]
        state_at = self.output_index[self.names["state_output"]]
        for i in range(count):
            chunk = padded[i * self.window : (i + 1) * self.window]
            frame = np.concatenate([context, chunk])[None, :]
            outputs = self.session.run(None, {audio: frame, state_in: state})
            probs[i] = float(np.asarray(outputs[prob_at]).reshape(-1)[0])
            state = np.asarray(outputs[state_at], np.float32)
            context = frame[0, -self.context :]
        return probs

    def __call__(  # type: ignore[override]  # each task takes its own options
        self, audio: Any, sampling_rate: int | None = None, **options: Any
    ) -> Any:
        """Return the speech segments of one input (a list of {"start", "end"} in seconds), or
        a list of such lists for a list of inputs. Inputs: audio file paths, bytes, numpy arrays
        (at sampling_rate, the model's by default) or (samples, rate) pairs."""
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise PipelineError(
                f"{self.task}: unknown option(s) {unknown}; known: {sorted(DEFAULTS)}"
            )
        settings = {**self.options, **options}
        single = not isinstance(audio, list)
        items = [audio] if single else audio
        self.probabilities = []
        results = []
        for item in items:
            loaded: Audio = load_audio(item, self.rate, sampling_rate)
            probs = self.window_probabilities(loaded.samples)
            self.probabilities.append(probs)
            segments = speech_segments(
                probs, self.rate, self.window, len(loaded.samples), **settings
            )
            results.append(
                [
                    {"start": round(s / self.rate, SECONDS_DECIMALS),
                     "end": round(e / self.rate, SECONDS_DECIMALS)}
                    for s, e in segments
                ]
            )  # fmt: skip
        return results[0] if single else results


def speech_segments(
    probs: np.ndarray,
    rate: int,
    window: int,
    length: int,
    *,
    threshold: float,
    neg_threshold: float | None,
    min_speech_duration_ms: float,
    max_speech_duration_s: float | None,
    min_silence_duration_ms: float,
    speech_pad_ms: float,
    min_silence_at_max_speech_ms: float,
    use_max_poss_sil_at_max_speech: bool,
) -> list[tuple[int, int]]:
    """Return (start, end) sample pairs from window probabilities: silero-vad 6.2.3's
    get_speech_timestamps_from_probs, line for line (length: the audio's samples)."""
    max_speech_s = math.inf if max_speech_duration_s is None else float(max_speech_duration_s)
    min_speech_samples = rate * min_speech_duration_ms / 1000
    speech_pad_samples = rate * speech_pad_ms / 1000
    max_speech_samples = rate * max_speech_s - window - 2 * speech_pad_samples
    min_silence_samples = rate * min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = rate * min_silence_at_max_speech_ms / 1000
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)

    triggered = False
    speeches: list[dict[str, int]] = []
    current: dict[str, int] = {}
    temp_end = 0  # a potential end (some silence is tolerated)
    prev_end = next_start = 0  # potential limits for a cut at the maximum length
    possible_ends: list[tuple[int, int]] = []

    for i, prob in enumerate(probs.tolist()):
        cur = window * i
        if prob >= threshold and temp_end:
            silence = cur - temp_end
            if silence > min_silence_samples_at_max_speech:
                possible_ends.append((temp_end, silence))
            temp_end = 0
            if next_start < prev_end:
                next_start = cur
        if prob >= threshold and not triggered:
            triggered = True
            current["start"] = cur
            continue
        if triggered and cur - current["start"] > max_speech_samples:
            if use_max_poss_sil_at_max_speech and possible_ends:
                prev_end, duration = max(possible_ends, key=lambda x: x[1])
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                next_start = prev_end + duration
                if next_start < prev_end + cur:
                    current["start"] = next_start
                else:
                    triggered = False
                prev_end = next_start = temp_end = 0
                possible_ends = []
            elif prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
                possible_ends = []
            else:
                current["end"] = cur
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                possible_ends = []
                continue
        if prob < neg_threshold and triggered:
            if not temp_end:
                temp_end = cur
            silence_now = cur - temp_end
            if (
                not use_max_poss_sil_at_max_speech
                and silence_now > min_silence_samples_at_max_speech
            ):
                prev_end = temp_end
            if silence_now < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
            possible_ends = []
            continue

    if current and length - current["start"] > min_speech_samples:
        current["end"] = length
        speeches.append(current)

    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - speech_pad_samples))
        if i != len(speeches) - 1:
            silence = speeches[i + 1]["start"] - speech["end"]
            if silence < 2 * speech_pad_samples:
                speech["end"] += int(silence // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - silence // 2))
            else:
                speech["end"] = int(min(length, speech["end"] + speech_pad_samples))
                speeches[i + 1]["start"] = int(
                    max(0, speeches[i + 1]["start"] - speech_pad_samples)
                )
        else:
            speech["end"] = int(min(length, speech["end"] + speech_pad_samples))
    return [(s["start"], s["end"]) for s in speeches]
