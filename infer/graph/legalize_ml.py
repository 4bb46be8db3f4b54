"""Legalization of the classic-ML ops (domain ai.onnx.ml) that scikit-learn's converter emits.

TVM's importer has none of them. One function per op, as in legalize.py; the semantics follow
onnx's reference implementation (onnx.reference.ops.aionnxml), which mirrors ONNX Runtime's
kernels, and the tests compare against ONNX Runtime. String class labels stay on ONNX Runtime
(TVM has no strings).

Tree ensembles use the tree-traversal strategy (Hummingbird's TreeTrav): every tree walks one
level per step for the whole batch at once (Gather of the node's feature, threshold and
children, GatherElements of the input, Where), unrolled to the deepest tree's depth; the leaf
reached indexes a [nodes, classes] weight table. Memory is linear in the number of nodes, unlike
the GEMM strategy's [internal nodes x leaves] matrices, so it holds for forests of any size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from infer.graph.legalize import Emitter, NotLegalizable

__all__ = ["ML_DOMAIN", "ML_LEGALIZATIONS", "TREE_STRATEGY"]

ML_DOMAIN = "ai.onnx.ml"
TREE_STRATEGY = "tree traversal (one Gather step per level, unrolled to the deepest tree)"
# Deeper trees are left to ONNX Runtime: the unrolled walk grows with depth.
MAX_TREE_DEPTH = 64
_COMPARE = {
    "BRANCH_LEQ": "LessOrEqual",
    "BRANCH_LT": "Less",
    "BRANCH_GTE": "GreaterOrEqual",
    "BRANCH_GT": "Greater",
    "BRANCH_EQ": "Equal",
}
_POST_TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX")


def _float(g: Emitter, x: str) -> str:
    """Return x as float32 (the ML ops compute in float unless given double)."""
    if g.types.get(x, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT:
        return x
    return str(g.op("Cast", x, to=onnx.TensorProto.FLOAT))


def _floats(g: Emitter, values: Sequence[float]) -> str:
    return g.const(np.asarray(values, dtype=np.float32), np.float32)


def _axis_op(g: Emitter, op_type: str, x: str, axis: int, keepdims: int = 1) -> str:
    """Reduce x along axis (the axes are an input from opset 18, 13 for ReduceSum)."""
    since = 13 if op_type == "ReduceSum" else 18
    if g.opset >= since:
        return str(g.op(op_type, x, g.const([axis]), keepdims=keepdims))
    return str(g.op(op_type, x, axes=[axis], keepdims=keepdims))


def _post_transform(g: Emitter, scores: str, post_transform: str) -> str:
    if post_transform not in _POST_TRANSFORMS:
        raise NotLegalizable(f"post_transform {post_transform}")
    if post_transform == "LOGISTIC":
        return str(g.op("Sigmoid", scores))
    if post_transform == "SOFTMAX":
        return str(g.op("Softmax", scores, axis=-1 if g.opset >= 13 else 1))
    return scores


def _labels(g: Emitter, scores: str, classlabels: Sequence[int]) -> str:
    """Return the label of each row's highest score (the first one on ties)."""
    best = g.op("ArgMax", scores, axis=1, keepdims=0)
    return str(g.op("Gather", g.const(np.asarray(classlabels, dtype=np.int64)), best, axis=0))


def Scaler(
    g: Emitter, X: str, *, offset: Sequence[float] = (), scale: Sequence[float] = ()
) -> list[str]:
    """Return [(X - offset) * scale]."""
    y = _float(g, X)
    if offset:
        y = str(g.op("Sub", y, _floats(g, offset)))
    if scale:
        y = str(g.op("Mul", y, _floats(g, scale)))
    return [y]


def Binarizer(g: Emitter, X: str, *, threshold: float = 0.0) -> list[str]:
    """Return [1 where X > threshold else 0], in X's type."""
    kind = g.types.get(X)
    if kind is None:
        raise NotLegalizable("the input's type is not known")
    threshold_value = g.const(
        np.asarray(threshold, dtype=onnx.helper.tensor_dtype_to_np_dtype(kind)), None
    )
    return [str(g.op("Cast", g.op("Greater", X, threshold_value), to=kind))]


def Normalizer(g: Emitter, X: str, *, norm: str = "MAX") -> list[str]:
    """Return [X divided row-wise by its max (of the values, not their magnitudes: ONNX
    Runtime's kernel), L1 or L2 norm]; a row whose divisor is 0 stays as it is, as there."""
    x = _float(g, X)
    if norm == "MAX":
        div = _axis_op(g, "ReduceMax", x, 1)
    elif norm == "L1":
        div = _axis_op(g, "ReduceSum", str(g.op("Abs", x)), 1)
    elif norm == "L2":
        div = str(g.op("Sqrt", _axis_op(g, "ReduceSum", str(g.op("Mul", x, x)), 1)))
    else:
        raise NotLegalizable(f"norm {norm}")
    zero = g.op("Equal", div, _floats(g, [0.0]))
    return [str(g.op("Div", x, g.op("Where", zero, _floats(g, [1.0]), div)))]


def ArrayFeatureExtractor(g: Emitter, X: str, Y: str) -> list[str]:
    """Return [X's last-axis entries at the indices Y (flattened)]; a vector X gives one row."""
    rank = len(g.shapes.get(X, ()))
    if not rank:
        raise NotLegalizable("the input's rank is not known")
    flat = g.op("Reshape", Y, g.const([-1]))
    taken = str(g.op("Gather", X, flat, axis=rank - 1))
    return [g.unsqueeze(taken, [0]) if rank == 1 else taken]


def LinearRegressor(
    g: Emitter,
    X: str,
    *,
    coefficients: Sequence[float],
    intercepts: Sequence[float] = (),
    targets: int = 1,
    post_transform: str = "NONE",
) -> list[str]:
    """Return [X @ coefficients^T + intercepts]."""
    if post_transform != "NONE":
        raise NotLegalizable(f"post_transform {post_transform}")
    weights = np.asarray(coefficients, dtype=np.float32).reshape(targets, -1).T
    y = str(g.op("MatMul", _float(g, X), g.const(weights, np.float32)))
    if intercepts:
        y = str(g.op("Add", y, _floats(g, intercepts)))
    return [y]


def LinearClassifier(
    g: Emitter,
    X: str,
    *,
    coefficients: Sequence[float],
    intercepts: Sequence[float] = (),
    classlabels_ints: Sequence[int] = (),
    classlabels_strings: Sequence[str] = (),
    multi_class: int = 0,
    post_transform: str = "NONE",
) -> list[str]:
    """Return [labels, scores] of a linear model: X @ coefficients^T + intercepts, transformed."""
    del multi_class  # unused by the reference and ONNX Runtime alike
    if classlabels_strings:
        raise NotLegalizable("string class labels")
    rows = len(intercepts) if intercepts else None
    features = g.dim(X, 1)
    if rows is None:
        if features is None:
            raise NotLegalizable("the number of features is not known")
        rows = len(coefficients) // features
    weights = np.asarray(coefficients, dtype=np.float32).reshape(rows, -1).T
    scores = str(g.op("MatMul", _float(g, X), g.const(weights, np.float32)))
    if intercepts:
        scores = str(g.op("Add", scores, _floats(g, intercepts)))
    classes = list(classlabels_ints)
    if rows == 1 and len(classes) == 2:
        # One score for two classes, as ONNX Runtime does it: scores [1 - p, p] of the
        # transformed score p, the label the second class where the raw score is above 0.
        if post_transform not in ("NONE", "LOGISTIC"):
            raise NotLegalizable(f"post_transform {post_transform} with one score for two classes")
        positive = g.op("Greater", g.op("Reshape", scores, g.const([-1])), _floats(g, [0.0]))
        labels = g.op("Where", positive, g.const([classes[1]]), g.const([classes[0]]))
        p = _post_transform(g, scores, post_transform)
        pair = g.op("Concat", g.op("Sub", _floats(g, [1.0]), p), p, axis=1)
        return [str(labels), str(pair)]
    scores = _post_transform(g, scores, post_transform)
    if rows > 1:
        return [_labels(g, scores, classes or list(range(rows))), scores]
    threshold = 0.0 if post_transform == "NONE" else 0.5
    hit = g.op("GreaterOrEqual", scores, _floats(g, [threshold]))
    positive = g.const(np.asarray([classes[0] if classes else 1], dtype=np.int64))
    flat = g.op("Reshape", g.op("Where", hit, positive, g.const([0])), g.const([-1]))
    return [str(flat), scores]


class _Forest:
    """A tree ensemble's node arrays, indexed globally across its trees."""

    def __init__(
        self,
        treeids: Sequence[int],
        nodeids: Sequence[int],
        modes: Sequence[str | bytes],
        featureids: Sequence[int],
        values: Sequence[float],
        truenodeids: Sequence[int],
        falsenodeids: Sequence[int],
        missing_tracks_true: Sequence[int],
    ):
        self.modes = [m.decode() if isinstance(m, bytes) else m for m in modes]
        self.index = {(t, n): i for i, (t, n) in enumerate(zip(treeids, nodeids, strict=True))}
        self.trees = sorted(set(treeids))
        first: dict[int, int] = {}
        for i, t in enumerate(treeids):
            first.setdefault(t, i)
        self.roots = [first[t] for t in self.trees]
        size = len(treeids)
        self.true = np.arange(size, dtype=np.int64)  # leaves point at themselves
        self.false = np.arange(size, dtype=np.int64)
        for i, (t, mode) in enumerate(zip(treeids, self.modes, strict=True)):
            if mode == "LEAF":
                continue
            try:
                self.true[i] = self.index[t, truenodeids[i]]
                self.false[i] = self.index[t, falsenodeids[i]]
            except KeyError:
                raise NotLegalizable(f"tree {t}: a branch names a node it does not have") from None
        self.features = np.asarray(featureids, dtype=np.int64)
        self.thresholds = np.asarray(values, dtype=np.float32)
        self.tracks_true = np.asarray(missing_tracks_true or [0] * size, dtype=bool)
        branch_modes = {m for m in self.modes if m != "LEAF"}
        if len(branch_modes) > 1 or not branch_modes <= set(_COMPARE):
            raise NotLegalizable(f"branch modes {sorted(branch_modes)}")
        self.compare = _COMPARE[branch_modes.pop()] if branch_modes else "LessOrEqual"
        self.depth = self._depth()

    def _depth(self) -> int:
        deepest = 0
        frontier = list(self.roots)
        while frontier and any(self.modes[i] != "LEAF" for i in frontier):
            deepest += 1
            if deepest > MAX_TREE_DEPTH:
                raise NotLegalizable(f"a tree deeper than {MAX_TREE_DEPTH} levels")
            frontier = [
                c
                for i in frontier
                if self.modes[i] != "LEAF"
                for c in (self.true[i], self.false[i])
            ]
        return deepest

    def weights(
        self,
        treeids: Sequence[int],
        nodeids: Sequence[int],
        ids: Sequence[int],
        weights: Sequence[float],
        width: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the [nodes, width] table of leaf weights (summed where a leaf votes twice),
        and which of its entries have a weight at all."""
        table = np.zeros((len(self.modes), width), dtype=np.float32)
        weighted = np.zeros((len(self.modes), width), dtype=bool)
        for t, n, k, w in zip(treeids, nodeids, ids, weights, strict=True):
            if (t, n) not in self.index or not 0 <= k < width:
                raise NotLegalizable(f"a weight for node ({t}, {n}) or column {k} out of range")
            table[self.index[t, n], k] += w
            weighted[self.index[t, n], k] = True
        return table, weighted

    def voted(self, weighted: np.ndarray) -> np.ndarray | None:
        """Return [nodes, width] 1.0 where a leaf has a weight for a column; None when all do."""
        leaves = np.asarray([m == "LEAF" for m in self.modes])
        return None if weighted[leaves].all() else weighted.astype(np.float32)

    def walk(self, g: Emitter, X: str) -> str:
        """Return [N, trees]: the index of the leaf each row reaches in each tree."""
        x = _float(g, X)
        batch = (
            g.op("Shape", x, start=0, end=1)
            if g.opset >= 15
            else g.slice(g.op("Shape", x), 0, 1, 0)
        )
        trees = g.const([len(self.roots)])
        index = str(
            g.op(
                "Expand",
                g.const(np.asarray(self.roots, dtype=np.int64)),
                g.op("Concat", batch, trees, axis=0),
            )
        )
        features, thresholds = g.const(self.features), g.const(self.thresholds, np.float32)
        true, false = g.const(self.true), g.const(self.false)
        tracks = g.const(self.tracks_true, np.bool_) if self.tracks_true.any() else None
        for _ in range(self.depth):
            value = g.op("GatherElements", x, g.op("Gather", features, index, axis=0), axis=1)
            go_true = g.op(self.compare, value, g.op("Gather", thresholds, index, axis=0))
            if tracks is not None:
                missing = g.op("And", g.op("IsNaN", value), g.op("Gather", tracks, index, axis=0))
                go_true = g.op("Or", go_true, missing)
            index = str(
                g.op(
                    "Where",
                    go_true,
                    g.op("Gather", true, index, axis=0),
                    g.op("Gather", false, index, axis=0),
                )
            )
        return index

    def total(self, g: Emitter, index: str, table: np.ndarray, reduce: str = "ReduceSum") -> str:
        """Return [N, width]: table's rows at the leaves reached, reduced over the trees."""
        leaves = g.op("Gather", g.const(table, np.float32), index, axis=0)  # [N, trees, width]
        return _axis_op(g, reduce, str(leaves), 1, keepdims=0)


def _forest(attrs: dict[str, Any]) -> _Forest:
    for name in (
        "nodes_values_as_tensor",
        "base_values_as_tensor",
        "class_weights_as_tensor",
        "target_weights_as_tensor",
    ):
        if attrs.get(name) is not None:
            raise NotLegalizable(f"{name} (double thresholds or weights)")
    return _Forest(
        attrs["nodes_treeids"],
        attrs["nodes_nodeids"],
        attrs["nodes_modes"],
        attrs["nodes_featureids"],
        attrs["nodes_values"],
        attrs["nodes_truenodeids"],
        attrs["nodes_falsenodeids"],
        attrs.get("nodes_missing_value_tracks_true") or [],
    )


def TreeEnsembleRegressor(g: Emitter, X: str, **attrs: Any) -> list[str]:
    """Return [per-target sums (or averages) of the leaves reached, plus base values]; like
    ONNX Runtime, a target no reached leaf votes for is 0, without its base value."""
    if attrs.get("post_transform", "NONE") != "NONE":
        raise NotLegalizable(f"post_transform {attrs['post_transform']}")
    aggregate = attrs.get("aggregate_function", "SUM")
    if aggregate not in ("SUM", "AVERAGE"):
        raise NotLegalizable(f"aggregate_function {aggregate}")
    forest = _forest(attrs)
    width = int(attrs.get("n_targets", 1))
    table, weighted = forest.weights(
        attrs["target_treeids"],
        attrs["target_nodeids"],
        attrs["target_ids"],
        attrs["target_weights"],
        width,
    )
    if aggregate == "AVERAGE":
        table /= len(forest.roots)
    index = forest.walk(g, X)
    y = forest.total(g, index, table)
    base = attrs.get("base_values")
    if base:
        y = str(g.op("Add", y, _floats(g, base)))
    voted = forest.voted(weighted)
    if voted is not None:
        hit = g.op("Greater", forest.total(g, index, voted, "ReduceMax"), _floats(g, [0.0]))
        y = str(g.op("Where", hit, y, _floats(g, [0.0])))
    return [y]


def TreeEnsembleClassifier(g: Emitter, X: str, **attrs: Any) -> list[str]:
    """Return [labels, scores]: per-class sums of the leaves reached, plus base values, with
    the binary case's [1 - s, s] or [-s, s] and the post-transform, as the reference does."""
    if attrs.get("classlabels_strings"):
        raise NotLegalizable("string class labels")
    classes = list(attrs.get("classlabels_int64s") or [])
    if len(classes) < 2:
        raise NotLegalizable("fewer than two class labels")
    post_transform = str(attrs.get("post_transform", "NONE"))
    forest = _forest(attrs)
    class_ids = list(attrs["class_ids"])
    table, _ = forest.weights(
        attrs["class_treeids"],
        attrs["class_nodeids"],
        class_ids,
        attrs["class_weights"],
        len(classes),
    )
    scores = forest.total(g, forest.walk(g, X), table)
    base = attrs.get("base_values")
    if base:
        scores = str(g.op("Add", scores, _floats(g, base)))
    if len(set(class_ids)) == 1:  # binary: column 0 holds the score of the second class
        if len(classes) != 2:
            raise NotLegalizable("one scored class among more than two labels")
        s = g.slice(scores, 0, 1, 1)
        if post_transform in ("NONE", "PROBIT"):
            other = g.op("Sub", _floats(g, [1.0]), s)
        else:
            other = g.op("Neg", s)
        scores = str(g.op("Concat", other, s, axis=1))
    scores = _post_transform(g, scores, post_transform)
    return [_labels(g, scores, classes), scores]


ML_LEGALIZATIONS: dict[str, Callable[..., list[str]]] = {
    "ArrayFeatureExtractor": ArrayFeatureExtractor,
    "Binarizer": Binarizer,
    "LinearClassifier": LinearClassifier,
    "LinearRegressor": LinearRegressor,
    "Normalizer": Normalizer,
    "Scaler": Scaler,
    "TreeEnsembleClassifier": TreeEnsembleClassifier,
    "TreeEnsembleRegressor": TreeEnsembleRegressor,
}
