"""The scikit-learn frontend against scikit-learn itself, on the data sets it ships.

Pipelines (scaler + estimator) are converted by skl2onnx, their classic-ML ops legalized into
tensor ops, compiled by TVM alone (fallback=False) and compared with the pipeline's own
predict / predict_proba: labels identical, probabilities and values within float32 rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import ModelError

sklearn = pytest.importorskip("sklearn")
from sklearn.cluster import DBSCAN  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402

CLASSIFIERS = {
    "random-forest": lambda: RandomForestClassifier(n_estimators=25, max_depth=8, random_state=0),
    "gradient-boosting": lambda: GradientBoostingClassifier(n_estimators=25, random_state=0),
    "logistic-regression": lambda: LogisticRegression(max_iter=5000),
    "mlp": lambda: MLPClassifier(hidden_layer_sizes=(32,), max_iter=800, random_state=0),
}


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    loader = {"iris": load_iris, "breast-cancer": load_breast_cancer}[name]
    X, y = loader(return_X_y=True)
    return X.astype(np.float32), y


def _compile(model: Any, X: np.ndarray, tmp_path: Path) -> infer.Session:
    art = infer.compile(
        model,
        example_inputs=X[:1],
        fallback=False,
        output=tmp_path / "m.infer",
        save_onnx=tmp_path / "m.onnx",
    )
    assert art.manifest.frontend is not None and art.manifest.frontend["framework"] == "sklearn"
    assert art.manifest.parity is not None
    assert art.manifest.parity["framework"]["status"] == "passed"
    session = art.load(threads=2)
    assert session.placement()["tvm_node_share"] == 1.0
    return session


@pytest.mark.parametrize("data", ["iris", "breast-cancer"])  # 3 classes, 2 classes
@pytest.mark.parametrize("estimator", sorted(CLASSIFIERS))
def test_classifier_pipeline_matches_scikit_learn(
    data: str, estimator: str, tmp_path: Path
) -> None:
    X, y = _data(data)
    pipeline = make_pipeline(StandardScaler(), CLASSIFIERS[estimator]()).fit(X, y)
    session = _compile(pipeline, X, tmp_path)
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    labels, probabilities = session.run(None, {"X": X})
    reference = ort.InferenceSession(tmp_path / "m.onnx", providers=["CPUExecutionProvider"])
    ort_labels, ort_probabilities = reference.run(None, {"X": X})
    np.testing.assert_array_equal(labels, ort_labels)
    np.testing.assert_allclose(probabilities, ort_probabilities, rtol=1e-4, atol=1e-6)
    # skl2onnx stores tree thresholds as float32 (scikit-learn keeps float64): a row whose
    # feature lies between the two takes the other branch, in ONNX Runtime as here. Apart
    # from such rows (at most 2% of them), the pipeline's own answers come out.
    want = pipeline.predict_proba(X)
    ours_off = set(np.flatnonzero(np.abs(probabilities - want).max(axis=1) > 1e-4))
    ort_off = set(np.flatnonzero(np.abs(ort_probabilities - want).max(axis=1) > 1e-4))
    assert ours_off <= ort_off and len(ort_off) <= 0.02 * len(X), (ours_off, ort_off)
    same = [i for i in range(len(X)) if i not in ort_off]
    np.testing.assert_array_equal(labels[same], pipeline.predict(X)[same])


@pytest.mark.parametrize("regressor", [LinearRegression, GradientBoostingRegressor])
def test_regressor_pipeline_matches_scikit_learn(regressor: Any, tmp_path: Path) -> None:
    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    pipeline = make_pipeline(MinMaxScaler(), regressor()).fit(X, y)
    session = _compile(pipeline, X, tmp_path)
    (values,) = session.run(None, {"X": X})
    np.testing.assert_allclose(values.ravel(), pipeline.predict(X), rtol=1e-4, atol=1e-3)


def test_tree_strategy_is_recorded_and_shown(tmp_path: Path) -> None:
    X, y = _data("iris")
    pipeline = make_pipeline(StandardScaler(), CLASSIFIERS["random-forest"]()).fit(X, y)
    art = infer.compile(pipeline, example_inputs=X[:1], output=tmp_path / "rf.infer")
    assert art.manifest.frontend is not None
    assert art.manifest.frontend["trees"].startswith("tree traversal")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "rf.infer")])
    assert "trees: tree traversal" in result.output


def test_skops_file_compiles_and_pickles_need_trust(tmp_path: Path) -> None:
    import joblib
    import skops.io

    X, y = _data("iris")
    pipeline = make_pipeline(StandardScaler(), CLASSIFIERS["gradient-boosting"]()).fit(X, y)
    skops.io.dump(pipeline, tmp_path / "model.skops")
    joblib.dump(pipeline, tmp_path / "model.joblib")
    ok = CliRunner().invoke(
        cli, ["-q", "compile", str(tmp_path / "model.skops"), "-o", str(tmp_path / "a")]
    )
    assert ok.exit_code == 0, ok.output
    (labels, _) = infer.load(tmp_path / "a").run(None, {"X": X})
    np.testing.assert_array_equal(labels, pipeline.predict(X))

    refused = CliRunner().invoke(
        cli, ["-q", "compile", str(tmp_path / "model.joblib"), "-o", str(tmp_path / "b")]
    )
    assert refused.exit_code == 2
    assert "a pickle runs arbitrary code when loaded" in refused.output
    assert not (tmp_path / "b").exists()
    trusted = CliRunner().invoke(
        cli,
        [
            "-q",
            "compile",
            str(tmp_path / "model.joblib"),
            "-o",
            str(tmp_path / "b"),
            "--trust-pickle",
        ],
    )
    assert trusted.exit_code == 0, trusted.output


def test_an_estimator_skl2onnx_cannot_convert_is_a_model_error() -> None:
    X, _ = _data("iris")
    with pytest.raises(ModelError, match=r"scikit-learn DBSCAN: skl2onnx cannot convert it"):
        infer.compile(DBSCAN().fit(X), example_inputs=X[:1])
