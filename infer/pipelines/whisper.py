"""automatic-speech-recognition for Whisper-style encoder-decoder models, compiled by TVM.

A transformers Whisper directory becomes two compiled models:
- the encoder: log-mel features [1, n_mels, 3000] -> every decoder layer's cross-attention keys
  and values [layers, 1, heads, 1500, head_dim], computed once per 30 s window;
- one decoder step: a token id [1, 1] and the self-attention keys and values so far
  [layers, 1, heads, past, head_dim] (past symbolic, 0 at the start) -> logits and the keys and
  values with the token's appended. That is the KV cache; the prompt is fed a token at a time
  too, so that no step needs a causal mask.

Decoding is greedy, as transformers' WhisperForConditionalGeneration.generate does it without
timestamps: the prompt (start of transcript, the language given or detected from the first
step's logits, the task, no-timestamps), suppress_tokens at every step and
begin_suppress_tokens at the first, until the end of text or the length limit. Long audio needs
chunk_length_s: the chunks' texts are merged as transformers' pipeline merges them (the longest
common token sequence of neighbours, text split where the language changes). Not done here:
timestamps, beam search (transformers' pipeline defaults to 5 beams; pass num_beams=1 there to
compare), long-form sequential decoding, prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infer.artifact.manifest import MANIFEST_FILE
from infer.errors import PipelineError
from infer.pipelines.audio_features import front_end_config
from infer.pipelines.base import (
    CONFIG_FILE,
    PIPELINE_FILE,
    bundle_component,
    component_entry,
    read_json,
    read_pipeline_config,
    write_pipeline_json,
)
from infer.pipelines.speech_recognition import (
    SpeechRecognitionPipeline,
    audio_chunks,
    clean_up_spaces,
)
from infer.processors.audio import WHISPER_CHUNK_SECONDS, WHISPER_RATE, load_audio, whisper_log_mel
from infer.progress import Progress
from infer.runtime.session import Session

__all__ = ["WhisperModels", "WhisperPipeline", "is_whisper_dir", "merge_chunks", "onnx_path"]

ENCODER, DECODER = "encoder", "decoder"
FEATURES = "input_features"
DECODER_INPUTS = ["input_ids", "past_key", "past_value", "cross_key", "cross_value"]
# The decoder step's parity check: a token after three cached ones.
CHECK_DIMS = {"past": 3}
GENERATION_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
# transformers' ASR pipeline generates at most this many new tokens unless the model's
# generation config sets max_length or max_new_tokens.
DEFAULT_MAX_NEW_TOKENS = 256
_GENERATION_KEYS = (
    "decoder_start_token_id", "eos_token_id", "max_length", "max_new_tokens", "suppress_tokens",
    "begin_suppress_tokens", "lang_to_id", "task_to_id", "no_timestamps_token_id",
    "forced_decoder_ids", "is_multilingual", "language", "task",
)  # fmt: skip


def is_whisper_dir(path: Path) -> bool:
    """Return whether path is a transformers directory of a Whisper-style model."""
    config = path / CONFIG_FILE
    if not config.is_file():
        return False
    data = read_json(config)
    return isinstance(data, dict) and data.get("model_type") == "whisper"


def folder_config(folder: Path) -> dict[str, Any]:
    """Return the task config of a transformers Whisper directory (config.json,
    generation_config.json, preprocessor_config.json, tokenizer.json, tokenizer_config.json)."""
    model = read_json(folder / CONFIG_FILE)
    generation = read_json(folder / GENERATION_FILE) if (folder / GENERATION_FILE).is_file() else {}
    merged = {k: generation.get(k, model.get(k)) for k in _GENERATION_KEYS}
    front_end = front_end_config(folder)
    if front_end["features"] != "whisper":
        raise PipelineError(f"{folder}: a Whisper model with a {front_end['features']} front end")
    if not (folder / TOKENIZER_FILE).is_file():
        raise PipelineError(f"{folder}: no {TOKENIZER_FILE} (a fast tokenizer's file)")
    settings = (
        read_json(folder / "tokenizer_config.json")
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    return {
        "task": SpeechRecognitionPipeline.task,
        "kind": "whisper",
        "front_end": front_end,
        "generation": {k: v for k, v in merged.items() if v is not None},
        "max_target_positions": int(model.get("max_target_positions", 448)),
        "tokenizer": (folder / TOKENIZER_FILE).read_text(encoding="utf-8"),
        "clean_up_tokenization_spaces": bool(settings.get("clean_up_tokenization_spaces", False)),
    }


def _export(folder: Path) -> tuple[Any, Any, Any, Any]:
    """Return (encoder module, its example, decoder step module, its example) of a directory."""
    from infer.frontends import require

    torch = require("pytorch")
    from transformers import AutoModelForSpeechSeq2Seq

    try:
        whisper = AutoModelForSpeechSeq2Seq.from_pretrained(
            str(folder), local_files_only=True
        ).eval()
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{folder}: transformers cannot load it ({exc})") from None
    heads = int(whisper.config.decoder_attention_heads)
    decoder = whisper.model.decoder

    def split(y: Any, b: int, t: int) -> Any:  # [b, t, d] -> [b, heads, t, head_dim]
        return y.view(b, t, heads, y.shape[-1] // heads).transpose(1, 2)

    class Encoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = whisper.model.encoder
            self.layers = decoder.layers

        def forward(self, input_features: Any) -> Any:
            hidden = self.encoder(input_features=input_features).last_hidden_state
            b, s, _ = hidden.shape
            return {
                "cross_key": torch.stack(
                    [split(x.encoder_attn.k_proj(hidden), b, s) for x in self.layers]
                ),
                "cross_value": torch.stack(
                    [split(x.encoder_attn.v_proj(hidden), b, s) for x in self.layers]
                ),
            }

    class DecoderStep(torch.nn.Module):  # type: ignore[misc,name-defined]
        """WhisperDecoder's layers on a KV cache, step by step (pre-norm self-attention with a
        causal mask, cross-attention on the encoder's keys and values, feed-forward)."""

        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.proj_out = whisper.proj_out

        def forward(
            self, input_ids: Any, past_key: Any, past_value: Any, cross_key: Any, cross_value: Any
        ) -> Any:
            b, t = input_ids.shape  # t is 1: one token attends to all before it, no mask
            past = past_key.shape[3]
            position = self.decoder.embed_positions.weight[past : past + 1]
            x = self.decoder.embed_tokens(input_ids) + position
            d = x.shape[-1]

            def attend(q: Any, k: Any, v: Any) -> Any:
                out = torch.softmax(q @ k.transpose(2, 3), dim=-1) @ v
                return out.transpose(1, 2).reshape(b, t, d)

            keys, values = [], []
            for i, layer in enumerate(self.decoder.layers):
                attn = layer.self_attn
                y = layer.self_attn_layer_norm(x)
                k = torch.cat([past_key[i], split(attn.k_proj(y), b, t)], dim=2)
                v = torch.cat([past_value[i], split(attn.v_proj(y), b, t)], dim=2)
                keys.append(k)
                values.append(v)
                x = x + attn.out_proj(attend(split(attn.q_proj(y) * attn.scaling, b, t), k, v))
                cross = layer.encoder_attn
                y = layer.encoder_attn_layer_norm(x)
                q = split(cross.q_proj(y) * cross.scaling, b, t)
                x = x + cross.out_proj(attend(q, cross_key[i], cross_value[i]))
                x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
            return {
                "logits": self.proj_out(self.decoder.layer_norm(x)),
                "present_key": torch.stack(keys),
                "present_value": torch.stack(values),
            }

    generator = torch.Generator().manual_seed(0)
    config = whisper.config
    mels = int(config.num_mel_bins)
    frames = 2 * int(config.max_source_positions)
    features = torch.randn(1, mels, frames, generator=generator)
    layers, head_dim = len(decoder.layers), int(config.d_model) // heads
    cache = (layers, 1, heads, CHECK_DIMS["past"], head_dim)
    cross = (layers, 1, heads, int(config.max_source_positions), head_dim)
    step = (
        torch.randint(0, int(config.vocab_size), (1, 1), generator=generator),
        *(torch.randn(cache, generator=generator) for _ in range(2)),
        *(torch.randn(cross, generator=generator) for _ in range(2)),
    )
    return Encoder(), (features,), DecoderStep(), step


def onnx_path(save_onnx: str | Path, name: str) -> Path:
    """Return where save_onnx puts the encoder's or decoder's ONNX: model.onnx gives
    model-encoder.onnx and model-decoder.onnx."""
    path = Path(save_onnx)
    return path.with_name(f"{path.stem}-{name}{path.suffix or '.onnx'}")


class WhisperModels:
    """The encoder and decoder sessions, from a bundle's directories or compiled artifacts."""

    def __init__(self, encoder: Session, decoder: Session) -> None:
        self.encoder = encoder
        self.decoder = decoder
        inputs = [s.name for s in decoder.get_inputs()]
        if [s.name for s in encoder.get_inputs()] != [FEATURES] or inputs != DECODER_INPUTS:
            raise PipelineError(
                f"automatic-speech-recognition: a Whisper bundle's encoder takes ['{FEATURES}'] "
                f"and its decoder {DECODER_INPUTS}; got {inputs}"
            )
        self.cache_shape = [d if isinstance(d, int) else 0 for d in decoder.get_inputs()[1].shape]


def _compile_models(
    folder: Path, threads: int | None, progress: Progress | None,
    compile_options: Mapping[str, Any], output: Path | None,
) -> WhisperModels:  # fmt: skip
    import infer

    own = [
        k
        for k in ("shapes", "check_dims", "dynamic_axes", "example_inputs")
        if compile_options.get(k)
    ]
    if own:
        raise PipelineError(f"automatic-speech-recognition: Whisper sets {', '.join(own)} itself")
    options = {k: v for k, v in compile_options.items() if v != {} and v is not None}
    save_onnx = options.pop("save_onnx", None)
    encoder, features, decoder, step = _export(folder)
    sessions = []
    for name, module, example, extra in (
        (ENCODER, encoder, features, {}),
        (DECODER, decoder, step, {
            "dynamic_axes": {"past_key": {3: "past"}, "past_value": {3: "past"}},
            "check_dims": CHECK_DIMS,
        }),
    ):  # fmt: skip
        if progress is not None:
            progress.log(f"whisper: {name}")
        artifact = infer.compile(
            module, example_inputs=example, threads=threads, progress=progress,
            output=None if output is None else output / name,
            save_onnx=None if save_onnx is None else onnx_path(save_onnx, name),
            **{**options, **extra},
        )  # fmt: skip
        sessions.append(artifact.load(threads=threads))
    return WhisperModels(*sessions)


class WhisperPipeline(SpeechRecognitionPipeline):
    """Text of speech with a Whisper-style model: {"text": ...} per input.

    Config: front_end (n_mels), generation (generation_config.json's token ids, suppressions,
    lengths, languages and tasks), max_target_positions, tokenizer (tokenizer.json's text),
    clean_up_tokenization_spaces.
    """

    def __init__(self, models: WhisperModels, config: Mapping[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.models = models
        self.session = models.decoder
        self.config = dict(config)
        self.rate = WHISPER_RATE
        try:
            generation = config["generation"]
            self.n_mels = int(config["front_end"].get("n_mels", 80))
            self.start = int(generation["decoder_start_token_id"])
            eos = generation["eos_token_id"]
            self.eos = {int(e) for e in (eos if isinstance(eos, list) else [eos])}
            self.max_positions = int(config["max_target_positions"])
            self.suppress = [int(t) for t in generation.get("suppress_tokens") or []]
            self.begin_suppress = [int(t) for t in generation.get("begin_suppress_tokens") or []]
            self.lang_to_id = {
                str(k): int(v) for k, v in (generation.get("lang_to_id") or {}).items()
            }
            self.task_to_id = {
                str(k): int(v) for k, v in (generation.get("task_to_id") or {}).items()
            }
            tokenizer = str(config["tokenizer"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PipelineError(f"{self.task}: config: missing or malformed {exc}") from None
        try:
            self.tokenizer = Tokenizer.from_str(tokenizer)
        except Exception as exc:  # tokenizers raises its own untyped errors
            raise PipelineError(f"{self.task}: config: tokenizer: {exc}") from None
        self.generation = dict(generation)
        self.special = {
            token.content: i
            for i, token in self.tokenizer.get_added_tokens_decoder().items()
            if token.special
        }
        self.special_ids = set(self.special.values())
        no_timestamps = generation.get(
            "no_timestamps_token_id", self.special.get("<|notimestamps|>")
        )
        self.no_timestamps = None if no_timestamps is None else int(no_timestamps)
        self.timestamp_begin = self.no_timestamps + 1 if self.no_timestamps is not None else 1 << 62
        vocab = models.decoder.get_outputs()[0].shape[-1]
        if isinstance(vocab, int) and vocab < self.tokenizer.get_vocab_size():
            raise PipelineError(
                f"{self.task}: the tokenizer has {self.tokenizer.get_vocab_size()} tokens, the "
                f"model's logits {vocab}: they do not belong together"
            )
        ids = [self.start, *self.eos, *self.suppress, *self.begin_suppress]
        ids += [*self.lang_to_id.values(), *self.task_to_id.values()]
        outside = sorted(i for i in ids if isinstance(vocab, int) and not 0 <= i < vocab)
        if outside:
            raise PipelineError(
                f"{self.task}: config: generation token ids {outside} are outside the model's "
                f"{vocab} logits"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, kind='whisper')"

    # -- opening and building ------------------------------------------------------------
    @classmethod
    def from_folder(
        cls, folder: Path, config: dict[str, Any] | None, threads: int | None,
        progress: Progress | None, compile_options: Mapping[str, Any],
    ) -> WhisperPipeline:  # fmt: skip
        """Return the pipeline on a transformers Whisper directory, compiled into the cache."""
        task_config = cls.make_config(None, config) if config is not None else folder_config(folder)
        return cls(_compile_models(folder, threads, progress, compile_options, None), task_config)

    @classmethod
    def from_bundle(
        cls, bundle: Path, stored: Mapping[str, Any], config: dict[str, Any] | None,
        threads: int | None,
    ) -> WhisperPipeline:  # fmt: skip
        """Return the pipeline on a bundle that build_bundle wrote."""
        components = stored.get("components")
        if not isinstance(components, dict) or set(components) != {ENCODER, DECODER}:
            raise PipelineError(
                f"{bundle / PIPELINE_FILE}: components encoder and decoder expected"
            )
        sessions = [
            Session(bundle_component(bundle, components[key], key), threads=threads)
            for key in (ENCODER, DECODER)
        ]
        return cls(WhisperModels(*sessions), cls.make_config(None, config or stored))

    @classmethod
    def build_bundle(
        cls, output: Path, folder: Path, config: dict[str, Any] | None, threads: int | None,
        progress: Progress | None, compile_options: Mapping[str, Any],
    ) -> Path:  # fmt: skip
        """Compile a Whisper directory into a bundle at output (encoder/, decoder/ and
        pipeline.json with their manifests' sha256); return output."""
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise PipelineError(f"{output}: exists and is not an empty directory")
        task_config = cls.make_config(None, config) if config is not None else folder_config(folder)
        models = _compile_models(folder, threads, progress, compile_options, output)
        cls(models, task_config)  # PipelineError before pipeline.json is written
        components = {key: component_entry(output, key) for key in (ENCODER, DECODER)}
        write_pipeline_json(output / PIPELINE_FILE, {**task_config, "components": components})
        return output

    # -- running -------------------------------------------------------------------------
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
        paths, bytes, numpy arrays at sampling_rate, or (samples, rate) pairs). Audio over 30 s
        needs chunk_length_s (at most 30). language ("en", "<|en|>") and task ("transcribe",
        "translate") override the model's; a multilingual model detects the language."""
        single = not isinstance(audio, list)
        results = []
        for item in [audio] if single else audio:
            samples = load_audio(item, WHISPER_RATE, sampling_rate).samples
            if chunk_length_s:
                if chunk_length_s > WHISPER_CHUNK_SECONDS:
                    raise PipelineError(
                        f"{self.task}: chunk_length_s {chunk_length_s}: Whisper reads at most "
                        f"{WHISPER_CHUNK_SECONDS} s at a time"
                    )
                spans = audio_chunks(samples, WHISPER_RATE, 1, chunk_length_s, stride_length_s)
                outputs = [self.token_ids(chunk, language, task) for chunk, _, _ in spans]
            elif len(samples) > WHISPER_RATE * WHISPER_CHUNK_SECONDS:
                raise PipelineError(
                    f"{self.task}: {len(samples) / WHISPER_RATE:.1f} s of audio; Whisper reads 30 s "
                    "at a time: pass chunk_length_s (e.g. 30) to transcribe longer audio in chunks"
                )
            else:
                outputs = [self.token_ids(samples, language, task)]
            results.append({"text": self.text(outputs)})
        return results[0] if single else results

    def token_ids(self, samples: np.ndarray, language: str | None, task: str | None) -> list[int]:
        """Return the generated token ids (prompt included) of at most 30 s of samples."""
        features = whisper_log_mel(samples, self.n_mels)[None]
        cross_key, cross_value = self.models.encoder.run(None, {FEATURES: features})
        empty = np.zeros(self.models.cache_shape, np.float32)
        cache = {"past_key": empty, "past_value": empty}

        def step(ids: Sequence[int]) -> np.ndarray:
            """Feed ids a token at a time; return the scores of the next token."""
            for token in ids:
                feeds = {"input_ids": np.array([[token]], np.int64), **cache}
                logits, cache["past_key"], cache["past_value"] = self.models.decoder.run(
                    None, {**feeds, "cross_key": cross_key, "cross_value": cross_value}
                )
            scores: np.ndarray = np.array(logits[0, -1], np.float32)
            return scores

        prompt, scores = self._prompt(step, language, task)
        tokens = list(prompt)
        limit = self._max_length(len(prompt))
        while len(tokens) < limit:
            scores[self.suppress] = -np.inf
            if len(tokens) == len(prompt):
                scores[self.begin_suppress] = -np.inf
            token = int(np.argmax(scores))
            tokens.append(token)
            if token in self.eos or len(tokens) >= limit:
                break
            scores = step([token])
        return tokens

    def _prompt(
        self, step: Any, language: str | None, task: str | None
    ) -> tuple[list[int], np.ndarray]:
        """Return the prompt (transformers' _retrieve_init_tokens) and the scores after it,
        feeding the decoder as it goes: language detection reads the first step's logits."""
        generation = self.generation
        language = language if language is not None else generation.get("language")
        task = task if task is not None else generation.get("task")
        init: list[int | None] = [self.start]
        if language is None and task is None:
            forced = sorted(generation.get("forced_decoder_ids") or [], key=lambda p: p[0])
            for position, (index, token) in enumerate(forced, start=1):
                if index != position:
                    break
                init.append(None if token is None else int(token))
        if language is not None:
            if generation.get("is_multilingual") is False:
                raise PipelineError(f"{self.task}: an English-only model takes no language")
            language_id: int | None = self._language_id(language)
        elif self.lang_to_id and (len(init) <= 1 or init[1] is None):
            language_id = -1  # detected below
        else:
            language_id = None
        if language_id is not None:
            if len(init) > 1:
                init[1] = language_id
            else:
                init.append(language_id)
        if task is not None:
            if task not in self.task_to_id:
                raise PipelineError(
                    f"{self.task}: task {task!r}, expected one of {sorted(self.task_to_id)}"
                )
            task_ids = set(self.task_to_id.values())
            if any(t in task_ids for t in init):
                init = [self.task_to_id[task] if t in task_ids else t for t in init]
            else:
                init.append(self.task_to_id[task])
        elif language is not None and self.task_to_id:
            if not any(t in self.task_to_id.values() for t in init):
                init.append(self.task_to_id["transcribe"])
        if self.no_timestamps is not None and init[-1] != self.no_timestamps:
            init.append(self.no_timestamps)
        prompt = [t for t in init if t is not None]
        if language_id == -1:
            scores = step(prompt[:1])
            languages = list(self.lang_to_id.values())
            prompt[1] = languages[int(np.argmax(scores[languages]))]
            return prompt, step(prompt[1:])
        return prompt, step(prompt)

    def _language_id(self, language: str) -> int:
        token = language if language.startswith("<|") else f"<|{language.lower()}|>"
        if token not in self.lang_to_id:
            known = ", ".join(sorted(t[2:-2] for t in self.lang_to_id))
            raise PipelineError(f"{self.task}: language {language!r}; this model knows {known}")
        return self.lang_to_id[token]

    def _max_length(self, prompt: int) -> int:
        """Return the length (prompt included) at which generation stops, as transformers'
        _set_max_new_tokens_and_length and its ASR pipeline's default max_new_tokens set it."""
        new = self.generation.get("max_new_tokens")
        if new is None and self.generation.get("max_length") is not None:
            initial = min(self.max_positions // 2 - 1, prompt)
            return min(int(self.generation["max_length"]) + initial, self.max_positions)
        return min(prompt + int(new or DEFAULT_MAX_NEW_TOKENS), self.max_positions)

    def text(self, outputs: Sequence[Sequence[int]]) -> str:
        """Return the text of chunks' token ids: transformers' _decode_asr without timestamps
        (text tokens of neighbouring chunks merged, a new piece where the language changes)."""
        pieces: list[list[int]] = []
        groups: list[list[list[int]]] = [[]]
        last_language = None
        for tokens in outputs:
            current: list[int] = []
            for token in tokens:
                if token in self.special_ids:
                    name = self.tokenizer.id_to_token(token)
                    if name in self.lang_to_id:
                        if last_language and name != last_language:
                            groups[-1].append(current)
                            groups.append([])
                            current = []
                        last_language = name
                elif token < self.timestamp_begin:
                    current.append(token)
            if current:
                groups[-1].append(current)
        for group in groups:
            if group:
                pieces.append(merge_chunks(group))
        text = "".join(self.tokenizer.decode(p, skip_special_tokens=False) for p in pieces)
        return clean_up_spaces(text) if self.config.get("clean_up_tokenization_spaces") else text


def merge_chunks(sequences: Sequence[Sequence[int]]) -> list[int]:
    """Return one token sequence from overlapping chunks' sequences: transformers'
    _find_longest_common_sequence (the best-matching overlap of each neighbour, split at its
    middle, favouring long perfect matches)."""
    left = list(sequences[0])
    total: list[int] = []
    for right in sequences[1:]:
        right = list(right)
        best, bounds = 0.0, (len(left), len(left), 0, 0)
        for i in range(1, len(left) + len(right)):
            left_start, left_stop = (
                max(0, len(left) - i),
                min(len(left), len(left) + len(right) - i),
            )
            right_start, right_stop = max(0, i - len(left)), min(len(right), i)
            matches = int(
                np.sum(
                    np.array(left[left_start:left_stop]) == np.array(right[right_start:right_stop])
                )
            )
            matching = matches / i + i / 10000.0
            if matches > 1 and matching > best:
                best, bounds = matching, (left_start, left_stop, right_start, right_stop)
        left_start, left_stop, right_start, right_stop = bounds
        total.extend(left[: (left_stop + left_start) // 2])
        left = right[(right_stop + right_start) // 2 :]
    total.extend(left)
    return total


def open_whisper(
    model: Path, config: dict[str, Any] | None, threads: int | None,
    progress: Progress | None, compile_options: Mapping[str, Any],
) -> WhisperPipeline | None:  # fmt: skip
    """Return the Whisper pipeline on a transformers directory or a Whisper bundle; None for
    anything else."""
    if model.is_dir() and not (model / MANIFEST_FILE).exists():
        if is_whisper_dir(model):
            return WhisperPipeline.from_folder(model, config, threads, progress, compile_options)
        stored = read_pipeline_config(model)
        if stored is not None and stored.get("kind") == "whisper":
            if stored["task"] != WhisperPipeline.task:
                raise PipelineError(f"{model}: built for task {stored['task']!r}")
            return WhisperPipeline.from_bundle(model, stored, config, threads)
    return None
