"""TensorFlow / Keras: Keras models, `.keras` files and SavedModel directories.

Keras models go through Keras' own ONNX export (`model.export(format="onnx")`, which drives
tf2onnx with the patches Keras 3 needs; tf2onnx's `from_keras` fails on Keras 3 models). A
SavedModel directory's serving signature is wrapped in a tf.function and converted by tf2onnx.
A batch dim left unnamed by the exporters (`unk__N`) is called `batch`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from infer.errors import ModelError
from infer.frontends import Converted, error_line, package_version, quiet, require
from infer.graph.names import rename_values
from infer.graph.support import default_opset

__all__ = ["OPSET", "OPTIONS", "SAVED_MODEL_FILE", "convert", "is_saved_model"]

# The options of infer.compile this frontend takes.
OPTIONS = frozenset({"example_inputs"})

OPSET = 17  # tf2onnx's tested range ends at 18; Keras asks for 17 itself
SAVED_MODEL_FILE = "saved_model.pb"
BATCH_DIM = "batch"
_UNNAMED_PREFIX = "unk__"


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / SAVED_MODEL_FILE).is_file()


def _quiet() -> contextlib.AbstractContextManager[None]:
    """Keep TensorFlow's and tf2onnx's logs and warnings off the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return quiet("tensorflow", "tf2onnx", "absl")


def convert(model: Any, *, example_inputs: Any = None) -> Converted:
    """Return a Keras model, .keras file or SavedModel directory exported to ONNX."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet():
        tf = require("tensorflow")
        keras = require("keras")
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if is_saved_model(path):
            return _saved_model(tf, path)
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        try:
            with _quiet():
                # safe_mode refuses Lambda layers (they would run code from the file).
                model = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:
            raise ModelError(
                f"{path}: Keras cannot load it ({type(exc).__name__}: {exc})"
            ) from None
        name = path.stem
    else:
        name = getattr(model, "name", None) or type(model).__name__
    _call_once(model, example_inputs, name)  # Keras exports only models that have run
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            with _quiet():
                model.export(str(target), format="onnx", verbose=False)
        except Exception as exc:
            raise _export_error("Keras", name, exc) from None
        proto = onnx.load(target)
    _name_batch_dims(proto)
    _name_outputs(proto)
    proto.graph.name = name
    provenance = {
        "framework": "keras",
        "version": keras.__version__,
        "backend": f"tensorflow {tf.__version__}",
        "exporter": f"keras model.export(format='onnx'), tf2onnx {package_version('tf2onnx')}",
        "opset": default_opset(proto),
    }
    inputs = [i.name for i in proto.graph.input]

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = [feeds[n] for n in inputs]
        result = model(args[0] if len(args) == 1 else args, training=False)
        leaves = result if isinstance(result, list | tuple) else [result]
        return [np.asarray(leaf) for leaf in leaves]

    return Converted(proto, name, provenance, run)


def _call_once(model: Any, example_inputs: Any, name: str) -> None:
    """Run model once, on example_inputs or on zeros of its inputs' shapes (None dims as 1)."""
    if example_inputs is None:
        try:
            shapes = [tuple(d or 1 for d in t.shape) for t in model.inputs]
            dtypes = [str(getattr(t, "dtype", "float32")) for t in model.inputs]
        except (AttributeError, ValueError):
            raise ModelError(
                f"Keras {name}: its input shapes are unknown; give example_inputs=(array, ...)"
            ) from None
        example_inputs = [np.zeros(s, dtype=d) for s, d in zip(shapes, dtypes, strict=True)]
    if isinstance(example_inputs, list | tuple) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    try:
        with _quiet():
            model(example_inputs, training=False)
    except Exception as exc:
        raise ModelError(f"Keras {name}: cannot run it on the example inputs ({exc})") from None


def _saved_model(tf: Any, path: Path) -> Converted:
    import tf2onnx

    with _quiet():
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelError(
                f"{path}: not a loadable SavedModel ({type(exc).__name__}: {exc})"
            ) from None
        if "serving_default" not in loaded.signatures:
            raise ModelError(
                f"{path}: the SavedModel has no 'serving_default' signature "
                f"(it has {sorted(loaded.signatures)})"
            )
        signature = loaded.signatures["serving_default"]
        names = sorted(signature.structured_input_signature[1])
        specs = [signature.structured_input_signature[1][n] for n in names]

        @tf.autograph.experimental.do_not_convert  # type: ignore[untyped-decorator]
        def call(*args: Any) -> Any:
            return signature(**dict(zip(names, args, strict=True)))

        try:
            proto, _ = tf2onnx.convert.from_function(
                tf.function(call, input_signature=specs), input_signature=specs, opset=OPSET
            )
        except Exception as exc:
            raise _export_error("TensorFlow", path.name, exc) from None
    _name_batch_dims(proto)
    proto.graph.name = path.name
    outputs = [o.name for o in proto.graph.output]

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = signature(**{n: tf.constant(feeds[n]) for n in names})
        return [np.asarray(result[o]) for o in outputs]

    provenance = {
        "framework": "tensorflow",
        "version": tf.__version__,
        "exporter": f"tf2onnx {package_version('tf2onnx')} (SavedModel serving_default)",
        "opset": OPSET,
    }
    known = set(signature.structured_outputs) >= set(outputs)
    return Converted(proto, path.name, provenance, run if known else None)


def _name_batch_dims(proto: onnx.ModelProto) -> None:
    """Call the exporters' unnamed leading dims 'batch' (inputs and outputs alike)."""
    renamed: set[str] = set()
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param.startswith(_UNNAMED_PREFIX):
            renamed.add(dims[0].dim_param)
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = BATCH_DIM


def _name_outputs(proto: onnx.ModelProto) -> None:
    """Call outputs named after TensorFlow tensors ('Identity:0') output / output_<i>."""
    outputs = [o.name for o in proto.graph.output]
    if not any(":" in o for o in outputs):
        return
    fresh = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    taken = {v.name for v in [*proto.graph.input, *proto.graph.value_info]}
    if taken.isdisjoint(fresh):
        rename_values(proto.graph, dict(zip(outputs, fresh, strict=True)))


def _export_error(framework: str, name: str, error: BaseException) -> ModelError:
    return ModelError(f"{framework} {name}: cannot export it to ONNX: {error_line(error)}")
