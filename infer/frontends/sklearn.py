"""scikit-learn: estimators and pipelines converted by skl2onnx; `.skops` files; pickles on trust.

Classifiers are converted without ZipMap, so probabilities come out as a plain [N, classes]
array beside the labels. The classic-ML ops skl2onnx emits (Scaler, LinearClassifier,
TreeEnsemble*, ...) are legalized into tensor ops for TVM by infer/graph/legalize_ml.py.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import ModelError
from infer.frontends import Converted, error_line, require
from infer.graph.legalize_ml import TREE_STRATEGY
from infer.graph.names import rename_values

__all__ = ["ML_OPSET", "OPSET", "OPTIONS", "PICKLE_SUFFIXES", "SKOPS_SUFFIX", "convert"]

# The options of infer.compile this frontend takes.
OPTIONS = frozenset({"example_inputs", "input_names", "trust_pickle"})

OPSET = 17
ML_OPSET = 3  # TreeEnsemble* with nodes_* attributes, which legalize_ml.py reads
SKOPS_SUFFIX = ".skops"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
TRUSTED_PREFIX = "sklearn."
BATCH_DIM = "batch"  # rows: the first dim of every input and output


def load_file(path: Path, *, trust_pickle: bool = False) -> Any:
    """Return the estimator saved in path: .skops by its safe loader, pickles only on trust."""
    require("sklearn")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == SKOPS_SUFFIX:
        import skops.io

        try:
            # scikit-learn's own classes (its Tree, its loss objects) are trusted like its
            # estimators; any other type runs code nobody here vouched for.
            untrusted = skops.io.get_untrusted_types(file=path)
            foreign = [t for t in untrusted if not t.startswith(TRUSTED_PREFIX)]
            if foreign and not trust_pickle:
                raise ModelError(
                    f"{path}: holds types skops does not trust ({', '.join(foreign)}); "
                    "loading them runs their code: pass --trust-pickle if you trust the file"
                )
            return skops.io.load(path, trusted=untrusted or None)
        except ModelError:
            raise
        except Exception as exc:  # skops raises many kinds on a damaged archive
            raise ModelError(f"{path}: not a readable .skops file ({exc})") from None
    if not trust_pickle:
        raise ModelError(
            f"{path}: a pickle runs arbitrary code when loaded; save the model with skops "
            "(skops.io.dump) or pass --trust-pickle (trust_pickle=True) if you trust the file"
        )
    try:
        if suffix == ".joblib":
            import joblib

            return joblib.load(path)
        with open(path, "rb") as f:
            return pickle.load(f)  # the user said they trust it
    except Exception as exc:
        raise ModelError(f"{path}: cannot unpickle it ({type(exc).__name__}: {exc})") from None


def convert(
    model: Any,
    *,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    trust_pickle: bool = False,
) -> Converted:
    """Return a fitted scikit-learn estimator (or a saved one) converted to ONNX by skl2onnx."""
    sklearn = require("sklearn")
    from sklearn.base import is_classifier

    name = type(model).__name__
    if isinstance(model, str | Path):
        name = Path(model).stem
        model = load_file(Path(model), trust_pickle=trust_pickle)
    example = _example(model, example_inputs, name)
    import skl2onnx

    try:
        proto = skl2onnx.to_onnx(
            model,
            example[:1],
            options={"zipmap": False} if is_classifier(model) else None,
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    except Exception as exc:  # skl2onnx raises RuntimeError, MissingShapeCalculator, ...
        raise ModelError(
            f"scikit-learn {name}: skl2onnx cannot convert it: {error_line(exc)}"
        ) from None
    if input_names:
        rename_values(proto.graph, {proto.graph.input[0].name: input_names[0]})
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    proto.graph.name = name
    provenance = {
        "framework": "sklearn",
        "version": sklearn.__version__,
        "exporter": f"skl2onnx {skl2onnx.__version__}",
        "opset": OPSET,
        "ml_opset": ML_OPSET,
    }
    if any(n.op_type.startswith("TreeEnsemble") for n in proto.graph.node):
        provenance["trees"] = TREE_STRATEGY
    outputs = [o.name for o in proto.graph.output]
    reference = _reference(model, proto.graph.input[0].name, outputs)
    return Converted(proto, name, provenance, reference)


def _example(model: Any, example_inputs: Any, name: str) -> np.ndarray:
    if example_inputs is None:
        features = getattr(model, "n_features_in_", None)
        if features is None:
            raise ModelError(
                f"scikit-learn {name}: give example_inputs=X[:1] (the input's dtype and width)"
            )
        return np.zeros((1, int(features)), dtype=np.float32)
    if isinstance(example_inputs, Mapping):
        raise ModelError(f"scikit-learn {name}: example_inputs is one array (X), not a dict")
    if isinstance(example_inputs, list | tuple):
        if len(example_inputs) != 1:
            raise ModelError(f"scikit-learn {name}: example_inputs is one array (X)")
        example_inputs = example_inputs[0]
    array = np.asarray(example_inputs)
    if array.ndim != 2:
        raise ModelError(f"scikit-learn {name}: example_inputs must be 2-D (rows, features)")
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _reference(model: Any, input_name: str, outputs: list[str]) -> Any:
    """Return the estimator's own predictions in the ONNX outputs' order, or None."""
    classifier = hasattr(model, "predict_proba") and len(outputs) == 2
    if not classifier and len(outputs) != 1:
        return None
    if classifier and np.asarray(getattr(model, "classes_", [0])).dtype.kind not in "iu":
        return None  # string labels: nothing numeric to line up

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[input_name]
        if classifier:
            labels = np.asarray(model.predict(x), np.int64)
            return [labels, np.asarray(model.predict_proba(x), np.float32)]
        prediction = np.asarray(model.predict(x), np.float32)
        return [prediction.reshape(len(x), -1)]

    return run
