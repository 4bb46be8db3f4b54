"""Classic-ML ops (ai.onnx.ml) legalized into tensor ops: compiled by TVM alone, against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import infer

ML = "ai.onnx.ml"


def _model(node: onnx.NodeProto, inputs: list[Any], outputs: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ML, 3)]
    return helper.make_model(graph, opset_imports=opsets)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path: Path) -> None:
    art = infer.compile(model, fallback=False, output=tmp_path / "m.infer", threads=1)
    got = art.load(threads=1).run(None, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _x(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def test_tree_regressor_with_nan_routing_strict_compare_and_average(tmp_path: Path) -> None:
    # Two trees over 3 features, 2 targets; tree 0 sends NaN to its true branch at the root.
    nodes = {
        "nodes_treeids": [0, 0, 0, 0, 0, 1, 1, 1],
        "nodes_nodeids": [0, 1, 2, 3, 4, 0, 1, 2],
        "nodes_featureids": [0, 2, 0, 0, 0, 1, 0, 0],
        "nodes_values": [0.1, -0.5, 0.0, 0.0, 0.0, 0.3, 0.0, 0.0],
        "nodes_modes": [
            "BRANCH_LT",
            "BRANCH_LT",
            "LEAF",
            "LEAF",
            "LEAF",
            "BRANCH_LT",
            "LEAF",
            "LEAF",
        ],
        "nodes_truenodeids": [1, 3, 0, 0, 0, 1, 0, 0],
        "nodes_falsenodeids": [2, 4, 0, 0, 0, 2, 0, 0],
        "nodes_missing_value_tracks_true": [1, 0, 0, 0, 0, 0, 0, 0],
        "target_treeids": [0, 0, 0, 0, 1, 1, 1],
        "target_nodeids": [2, 3, 4, 4, 1, 2, 2],
        "target_ids": [0, 0, 0, 1, 0, 0, 1],
        "target_weights": [1.0, 2.0, 3.0, -1.0, 10.0, 20.0, 5.0],
    }
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain=ML, n_targets=2,
        aggregate_function="AVERAGE", base_values=[0.5, -0.5], **nodes,
    )  # fmt: skip
    model = _model(
        node,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 2])],
    )
    x = _x(64, 3)
    x[::7, 0] = np.nan
    x[1, :] = [0.1, 0.3, -0.5]  # exactly on each threshold
    _check(model, {"X": x}, tmp_path)


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer(norm: str, tmp_path: Path) -> None:
    node = helper.make_node("Normalizer", ["X"], ["Y"], domain=ML, norm=norm)
    model = _model(
        node,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 5])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 5])],
    )
    _check(model, {"X": _x(8, 5)}, tmp_path)


@pytest.mark.parametrize("post_transform", ["NONE", "LOGISTIC"])
def test_linear_classifier_with_one_score_for_two_classes(
    post_transform: str, tmp_path: Path
) -> None:
    node = helper.make_node(
        "LinearClassifier", ["X"], ["Y", "Z"], domain=ML, coefficients=[0.5, -1.0, 2.0],
        intercepts=[0.25], classlabels_ints=[3, 7], post_transform=post_transform,
    )  # fmt: skip
    model = _model(
        node,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("Y", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["n", 2]),
        ],
    )
    _check(model, {"X": _x(16, 3, seed=1)}, tmp_path)


def test_binarizer(tmp_path: Path) -> None:
    node = helper.make_node("Binarizer", ["X"], ["Y"], domain=ML, threshold=0.2)
    model = _model(
        node,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 6])],
    )
    _check(model, {"X": _x(4, 6)}, tmp_path)


def test_string_labels_stay_on_onnxruntime_with_the_reason() -> None:
    node = helper.make_node(
        "LinearClassifier", ["X"], ["Y", "Z"], domain=ML, coefficients=[1.0, -1.0, 0.5, 0.5],
        intercepts=[0.0, 0.1], classlabels_strings=["cat", "dog"],
    )  # fmt: skip
    model = _model(
        node,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 2])],
        [
            helper.make_tensor_value_info("Y", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["n", 2]),
        ],
    )
    with pytest.raises(infer.UnsupportedOpError, match=r"ai\.onnx\.ml::LinearClassifier"):
        infer.compile(model, fallback=False)
