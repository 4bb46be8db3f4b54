"""automatic-speech-recognition: speech to text with wav2vec2-style CTC models compiled by TVM.

The model comes as a transformers directory (config.json of a *ForCTC model, its weights,
preprocessor_config.json, vocab.json and tokenizer_config.json). It is exported with infer's
PyTorch frontend with batch and sample count symbolic, so that any length runs on one compiled
function. Audio is resampled to the model's rate and normalised per utterance (or per chunk),
the logits' argmax is decoded the CTC way (repeats merged, blanks dropped, the word delimiter
as a space), as transformers' Wav2Vec2CTCTokenizer does. Long audio is cut into chunks that
overlap by stride_length_s on each side, whose stride frames are dropped before the tokens are
joined: transformers' chunk_length_s / stride_length_s arithmetic, step for step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.pipelines.audio_features import front_end_config
from infer.pipelines.base import CONFIG_FILE, Pipeline, is_transformers_dir, read_json
from infer.processors.audio import load_audio, wav2vec2_normalize
from infer.progress import Progress
from infer.runtime.session import Session

__all__ = ["SpeechRecognitionPipeline", "audio_chunks", "clean_up_spaces", "ctc_decode"]

INPUT_NAME = "input_values"
# The parity check's batch and sample count (1 s at 16 kHz: the convolutions need a few hundred).
CHECK_DIMS = {"batch": 1, "samples": 16000}
# transformers' clean_up_tokenization: spaces before punctuation and contractions.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # fmt: skip


def ctc_decode(ids: np.ndarray, config: Mapping[str, Any]) -> str:
    """Return the text of CTC token ids: repeats merged, the blank (pad) token dropped, the
    word delimiter as a space, then stripped (and lower-cased, cleaned up as configured)."""
    vocab: list[str] = config["vocab"]
    tokens = [vocab[i] for i in ids.tolist()]
    merged = [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]
    delimiter = config.get("word_delimiter_token", "|")
    chars = [" " if t == delimiter else t for t in merged if t != config["pad_token"]]
    text = "".join(chars).strip()
    if config.get("do_lower_case"):
        text = text.lower()
    return clean_up_spaces(text) if config.get("clean_up_tokenization_spaces") else text


def clean_up_spaces(text: str) -> str:
    """Return text without the spaces before punctuation and contractions (transformers'
    clean_up_tokenization)."""
    for before, after in _CLEAN_UP:
        text = text.replace(before, after)
    return text


def audio_chunks(
    samples: np.ndarray, rate: int, align: int, chunk_length_s: float,
    stride_length_s: float | tuple[float, float] | None,
) -> Iterator[tuple[np.ndarray, int, int]]:  # fmt: skip
    """Yield (chunk, left stride, right stride) in samples: transformers' chunk_iter, with its
    chunk_length_s / stride_length_s (default chunk / 6 per side) rounded to align samples."""
    if stride_length_s is None:
        stride_length_s = chunk_length_s / 6
    left_s, right_s = (
        (stride_length_s, stride_length_s)
        if isinstance(stride_length_s, int | float)
        else stride_length_s
    )
    chunk_len = int(round(chunk_length_s * rate / align) * align)
    left = int(round(left_s * rate / align) * align)
    right = int(round(right_s * rate / align) * align)
    if chunk_len < left + right or chunk_len - left - right <= 0:
        raise PipelineError(
            f"automatic-speech-recognition: chunk_length_s {chunk_length_s} must exceed the "
            f"strides ({left_s} + {right_s} s)"
        )
    for start in range(0, len(samples), chunk_len - left - right):
        chunk = samples[start : start + chunk_len]
        is_last = start + chunk_len >= len(samples)
        chunk_left = 0 if start == 0 else left
        if len(chunk) > chunk_left:
            yield chunk, chunk_left, 0 if is_last else right
        if is_last:
            break


def _folder_config(folder: Path) -> dict[str, Any]:
    """Return the task config from a transformers CTC model directory."""
    model = read_json(folder / CONFIG_FILE)
    architectures = model.get("architectures") or []
    if any("ForConditionalGeneration" in a for a in architectures):
        raise PipelineError(
            f"{folder}: {architectures[0]} is an encoder-decoder model; this version of infer "
            "recognises speech with CTC models (wav2vec2, HuBERT, ...) and Whisper"
        )
    if not any(a.endswith("ForCTC") for a in architectures):
        raise PipelineError(f"{folder}: architectures {architectures}, expected a *ForCTC model")
    vocab = read_json(folder / "vocab.json")
    if not isinstance(vocab, dict) or not vocab:
        raise PipelineError(f"{folder / 'vocab.json'}: expected a token -> id object")
    added = folder / "added_tokens.json"
    if added.is_file():
        vocab = {**vocab, **read_json(added)}
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[int(index)] = token
    settings = (
        read_json(folder / "tokenizer_config.json")
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    front_end = front_end_config(folder)
    if front_end["features"] != "wav2vec2":
        raise PipelineError(f"{folder}: a CTC model with a {front_end['features']} front end")
    strides = model.get("conv_stride") or [1]
    return {
        "task": SpeechRecognitionPipeline.task,
        "kind": "ctc",
        "front_end": front_end,
        "vocab": tokens,
        "pad_token": str(settings.get("pad_token", "<pad>")),
        "word_delimiter_token": str(settings.get("word_delimiter_token", "|")),
        "do_lower_case": bool(settings.get("do_lower_case", False)),
        "clean_up_tokenization_spaces": bool(settings.get("clean_up_tokenization_spaces", False)),
        # Samples per output frame: transformers' inputs_to_logits_ratio.
        "inputs_to_logits_ratio": int(math.prod(int(s) for s in strides)),
    }


class SpeechRecognitionPipeline(Pipeline):
    """Text of speech: {"text": ...} per input.

    Config: the front end (sampling_rate, normalize), the CTC vocabulary and its special tokens,
    inputs_to_logits_ratio (samples per frame, for chunk strides).
    """

    task = "automatic-speech-recognition"
    default_model = ""
    description = "speech to text (wav2vec2-style CTC models and Whisper)"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        try:
            self.rate = int(config["front_end"]["sampling_rate"])
            self.normalize = bool(config["front_end"].get("normalize", True))
            self.vocab = [str(t) for t in config["vocab"]]
            self.align = int(config["inputs_to_logits_ratio"])
            str(config["pad_token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{self.task}: config: missing or malformed {exc}") from None
        inputs = [s.name for s in session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise PipelineError(
                f"{self.task}: the model's inputs are {inputs}, expected ['{INPUT_NAME}']"
            )
        classes = session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.vocab):
            raise PipelineError(
                f"{self.task}: the vocabulary has {len(self.vocab)} tokens, the model's logits "
                f"{classes}: they do not belong together"
            )

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
        """Return the pipeline on model: a CTC model (transformers directory, .onnx or artifact)
        or a Whisper model (transformers directory or bundle: infer.pipelines.whisper)."""
        if model is not None:
            from infer.pipelines.whisper import open_whisper

            whisper = open_whisper(Path(model), config, threads, progress, compile_options)
            if whisper is not None:
                return whisper
        return super().open(
            model, config=config, threads=threads, progress=progress,
            compile_options=compile_options,
        )  # fmt: skip

    @classmethod
    def build(
        cls,
        output: Path,
        model: Any,
        *,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
    ) -> Path:
        """Compile model into output: an artifact with pipeline.json for a CTC model, a bundle
        (encoder/, decoder/, pipeline.json) for a Whisper directory."""
        from infer.pipelines.whisper import WhisperPipeline, is_whisper_dir

        if model is not None and is_whisper_dir(Path(model)):
            return WhisperPipeline.build_bundle(
                output, Path(model), config, threads, progress, compile_options
            )
        return super().build(
            output, model, config=config, threads=threads, progress=progress,
            compile_options=compile_options,
        )  # fmt: skip

    @classmethod
    def _export(cls, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
        """Return (module, example inputs, compile options) for a transformers CTC directory."""
        from infer.frontends import require

        torch = require("pytorch")
        from transformers import AutoModelForCTC

        try:
            model = AutoModelForCTC.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{folder}: transformers cannot load it ({exc})") from None

        class Logits(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_values: Any) -> Any:
                return self.model(input_values=input_values).logits

        example = (
            torch.randn(1, CHECK_DIMS["samples"], generator=torch.Generator().manual_seed(0)),
        )
        options = {
            "dynamic_axes": {INPUT_NAME: {0: "batch", 1: "samples"}},
            "check_dims": CHECK_DIMS,
        }
        return Logits(), example, options

    @classmethod
    def _compile(
        cls, model: Any, config: dict[str, Any] | None, threads: int | None,
        progress: Progress | None, compile_options: Mapping[str, Any], output: Path | None = None,
    ) -> tuple[Any, dict[str, Any]] | None:  # fmt: skip
        """Return (artifact, task config) for a transformers directory; None for an artifact."""
        import infer

        if model is None:
            raise PipelineError(
                f"{cls.task} has no default model (no package ships a trained one): give a "
                "transformers directory of a CTC model (wav2vec2, HuBERT, ...) or an artifact"
            )
        path = Path(model)
        if not is_transformers_dir(path):
            return None
        task_config = cls.make_config(None, config) if config is not None else _folder_config(path)
        module, example, options = cls._export(path)
        given = {k: v for k, v in compile_options.items() if v != {} and v is not None}
        artifact = infer.compile(
            module, example_inputs=example, output=output, threads=threads, progress=progress,
            **{**options, **given},
        )  # fmt: skip
        return artifact, task_config

    def __call__(  # type: ignore[override]  # each task takes its own options
        self,
        audio: Any,
        sampling_rate: int | None = None,
        chunk_length_s: float = 0,
        stride_length_s: float | tuple[float, float] | None = None,
        language: str | None = None,
        task: str | None = None,
    ) -> Any:
        """Return {"text": ...} for one input, a list of them for a list of inputs (audio file
        paths, bytes, numpy arrays at sampling_rate, or (samples, rate) pairs). chunk_length_s
        cuts long audio into chunks overlapping by stride_length_s (default chunk / 6) per side.
        language and task are Whisper's (see WhisperPipeline)."""
        if language is not None or task is not None:
            raise PipelineError(
                f"{self.task}: language and task apply to Whisper models; a CTC model "
                "transcribes in the one language it was trained on"
            )
        single = not isinstance(audio, list)
        results = []
        for item in [audio] if single else audio:
            samples = load_audio(item, self.rate, sampling_rate).samples
            ids = self._token_ids(samples, chunk_length_s, stride_length_s)
            results.append({"text": ctc_decode(ids, self.config)})
        return results[0] if single else results

    def _logits_ids(self, samples: np.ndarray) -> np.ndarray:
        features = wav2vec2_normalize(samples) if self.normalize else samples
        (logits,) = self.session.run(None, {INPUT_NAME: features[None, :]})
        ids: np.ndarray = np.asarray(logits)[0].argmax(axis=-1)
        return ids

    def _token_ids(
        self, samples: np.ndarray, chunk_length_s: float,
        stride_length_s: float | tuple[float, float] | None,
    ) -> np.ndarray:  # fmt: skip
        if not chunk_length_s:
            return self._logits_ids(samples)
        pieces = []
        for chunk, left, right in audio_chunks(
            samples, self.rate, self.align, chunk_length_s, stride_length_s
        ):
            ids = self._logits_ids(chunk)
            # The strides in frames, as transformers' rescale_stride rounds them.
            frames = round(len(chunk) / self.align)
            drop_left = round(left / len(chunk) * frames)
            drop_right = round(right / len(chunk) * frames)
            pieces.append(ids[drop_left : frames - drop_right])
        return np.concatenate(pieces)
