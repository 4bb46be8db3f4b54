"""Text tasks' common ground: the tokenizer in the config, and models given as a transformers
directory (config.json + weights + tokenizer.json) or an .onnx file with tokenizer.json (and
config.json for labels) beside it.

A transformers directory is exported with infer's PyTorch frontend (transformers' Auto classes
load it from disk only, safetensors or torch's weights_only loader) and compiled into the cache
with batch and sequence symbolic; its config.json gives the labels and the problem type.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from infer.errors import PipelineError
from infer.pipelines.base import CONFIG_FILE, Pipeline, is_transformers_dir, read_json
from infer.processors.text import INPUT_NAMES, TextEncoder
from infer.progress import Progress
from infer.runtime.session import Session

__all__ = ["TextPipeline", "example_inputs"]

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MAX_LENGTH = 512
# The parity check's batch and sequence for a symbolic encoder.
CHECK_DIMS = {"batch": 2, "sequence": 16}


def example_inputs(torch: Any) -> dict[str, Any]:
    """Return the inputs an encoder is traced on: a padded second row, or transformers' mask
    code is traced for all-ones masks and the exported graph ignores the mask."""
    ids = torch.ones(2, 16, dtype=torch.int64)
    mask = ids.clone()
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


class TextPipeline(Pipeline):
    """A task on a text encoder. Config: tokenizer (tokenizer.json's text), max_length, and
    what the task adds (labels, pooling...)."""

    input_kind = "text"
    # transformers' Auto class of the task's head (AutoModel: the bare encoder).
    auto_class: ClassVar[str] = "AutoModel"

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        super().__init__(session, config)
        try:
            self.encoder = TextEncoder(
                str(config["tokenizer"]), int(config.get("max_length", DEFAULT_MAX_LENGTH))
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{self.task}: config: missing or malformed {exc}") from None
        self.input_names = [s.name for s in session.get_inputs()]
        self.encoder([""]).feeds(self.input_names)  # PipelineError for an input it cannot feed
        declared = config.get("vocab_size")
        if declared is not None and self.encoder.vocab_size > int(declared):
            raise PipelineError(
                f"{self.task}: the tokenizer has {self.encoder.vocab_size} tokens, the model's "
                f"embedding table {declared} rows: they do not belong together"
            )

    @staticmethod
    def texts(texts: Any) -> tuple[bool, list[str]]:
        """Return (one text given?, the texts); PipelineError naming a non-string item."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise PipelineError(
                f"text item {bad[0]} is a {type(items[bad[0]]).__name__}, expected a string"
            )
        return single, items

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], tokenizer: str) -> dict[str, Any]:
        """Return the task config from a transformers config.json's content and tokenizer.json."""
        return {
            "task": cls.task,
            "tokenizer": tokenizer,
            "max_length": int(model_config.get("max_position_embeddings", DEFAULT_MAX_LENGTH)),
            "vocab_size": int(model_config["vocab_size"]) if "vocab_size" in model_config else None,
        }

    @classmethod
    def config_from_recipe(cls, recipe: Any) -> dict[str, Any]:
        """Return the config of a recipe shipping tokenizer.json (and config.json) as [files],
        with its [text_input] settings (max_length, pooling...) over config.json's."""
        from infer.registry import pulled_file

        if TOKENIZER_FILE not in recipe.files:
            raise PipelineError(f"{cls.task}: model {recipe.name!r} ships no {TOKENIZER_FILE}")
        tokenizer = pulled_file(recipe, TOKENIZER_FILE).read_text(encoding="utf-8")
        has_config = CONFIG_FILE in recipe.files
        model_config = read_json(pulled_file(recipe, CONFIG_FILE)) if has_config else {}
        return {**cls.from_model_config(model_config, tokenizer), **recipe.text_input}

    @classmethod
    def _folder_config(cls, folder: Path, config: dict[str, Any] | None) -> dict[str, Any]:
        """Return the config from a model folder's tokenizer.json and config.json."""
        if config is not None:
            return cls.make_config(None, config)
        if not (folder / TOKENIZER_FILE).is_file():
            raise PipelineError(
                f"{folder}: no {TOKENIZER_FILE} (a fast tokenizer's file) for task {cls.task}"
            )
        tokenizer = (folder / TOKENIZER_FILE).read_text(encoding="utf-8")
        model_config = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
        return cls.from_model_config(model_config, tokenizer)

    @classmethod
    def _export(cls, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
        """Return (module, example inputs, compile options) for a transformers directory."""
        import inspect

        from infer.frontends import require

        torch = require("pytorch")
        import transformers

        auto = getattr(transformers, cls.auto_class)
        try:
            model = auto.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{folder}: transformers cannot load it ({exc})") from None
        names = [n for n in INPUT_NAMES if n in inspect.signature(model.forward).parameters]

        class Head(torch.nn.Module):  # type: ignore[misc,name-defined]
            """The model's first output (logits or hidden states) from named inputs."""

            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]

        class TypedHead(Head):
            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:  # type: ignore[override]
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                )
                return out[0]

        if names[:2] != ["input_ids", "attention_mask"]:
            raise PipelineError(
                f"{folder}: the model's forward takes {names}, not input_ids and attention_mask"
            )

        example = tuple(example_inputs(torch)[n] for n in names)
        options = {
            "dynamic_axes": {n: {0: "batch", 1: "sequence"} for n in names},
            "check_dims": CHECK_DIMS,
        }
        return (TypedHead() if "token_type_ids" in names else Head()), example, options

    @classmethod
    def _compile(
        cls,
        model: Any,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
        output: Path | None = None,
    ) -> tuple[Any, dict[str, Any]] | None:
        """Return (artifact, task config) for a transformers directory or an .onnx file with
        its tokenizer beside it; None for what the base class opens (recipes, artifacts)."""
        import infer

        if model is None and not cls.default_model:
            raise PipelineError(
                f"{cls.task} has no default model: give one (a transformers directory, an .onnx "
                "file with tokenizer.json beside it, or an artifact)"
            )
        path = Path(model) if model is not None else None
        # Empty per-model options from the command line leave the export's own in place.
        given = {k: v for k, v in compile_options.items() if v != {} and v is not None}
        if path is not None and is_transformers_dir(path):
            task_config = cls._folder_config(path, config)
            module, example, options = cls._export(path)
            artifact = infer.compile(
                module, example_inputs=example, output=output, threads=threads,
                progress=progress, **{**options, **given},
            )  # fmt: skip
            return artifact, task_config
        if path is not None and path.suffix == ".onnx" and path.is_file():
            task_config = cls._folder_config(path.parent, config)
            artifact = infer.compile(
                path, output=output, threads=threads, progress=progress, **given
            )
            return artifact, task_config
        return None
