"""Constant propagation: what it folds, what it leaves, and that values do not change."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from infer.graph.constants import MAX_FOLDED_ELEMENTS, fold_constants, normalize_constant


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: Sequence[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_shape_computed_from_a_static_shape_becomes_a_constant() -> None:
    # Reshape(x, Concat(Shape(x)[0:1], [-1])): what exports emit for flatten.
    model = _model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "axes"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        ],
    )
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Constant", "Reshape"]
    assert numpy_helper.to_array(folded.graph.node[0].attribute[0].t).tolist() == [2, -1]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    (got,) = ReferenceEvaluator(folded).run(None, {"x": x})
    np.testing.assert_array_equal(got, want)


def test_large_results_random_ops_and_runtime_shapes_stay() -> None:
    big = MAX_FOLDED_ELEMENTS * 4
    model = _model(
        [
            helper.make_node("ConstantOfShape", ["big_shape"], ["zeros"]),
            helper.make_node("RandomNormal", [], ["noise"], shape=[2]),
            helper.make_node("Shape", ["x"], ["s"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("zeros", TensorProto.FLOAT, [big]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
        ],
        [numpy_helper.from_array(np.array([big], np.int64), "big_shape")],
    )
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node if n.op_type != "Constant"] == [
        "ConstantOfShape",
        "RandomNormal",
        "Shape",
    ]


def test_if_on_a_constant_condition_is_inlined() -> None:
    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node(op, ["x"], ["t"])],
            op,
            [],
            [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])],
        )

    model = _model(
        [
            helper.make_node("Constant", [], ["rate"], value_int=16000),
            helper.make_node("Equal", ["rate", "k16"], ["cond"]),
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=branch("Neg"), else_branch=branch("Abs")
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array(16000, np.int64), "k16")],
    )
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Neg", "Identity"]
    x = np.array([1.0, -2.0, 3.0], np.float32)
    (got,) = ReferenceEvaluator(folded).run(None, {"x": x})
    np.testing.assert_array_equal(got, -x)


def test_constant_value_attributes_become_tensors() -> None:
    node = normalize_constant(helper.make_node("Constant", [], ["c"], value_ints=[1, 2]))
    (attr,) = node.attribute
    assert attr.name == "value" and numpy_helper.to_array(attr.t).tolist() == [1, 2]
    node = normalize_constant(helper.make_node("Constant", [], ["c"], value_float=0.5))
    assert numpy_helper.to_array(node.attribute[0].t).dtype == np.float32


def test_a_constant_graph_output_is_a_weight_behind_identity() -> None:
    model = _model(
        [helper.make_node("Constant", [], ["y"], value_floats=[1.0, 2.0])],
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Identity"]
    assert [t.name for t in folded.graph.initializer] == ["y__value"]


def test_an_input_that_can_only_be_empty_is_read_as_a_constant() -> None:
    model = _model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [0]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
    )
    folded = fold_constants(model)
    assert [i.name for i in folded.graph.input] == ["x", "axes"]  # the signature stays
    reduce = next(n for n in folded.graph.node if n.op_type == "ReduceSum")
    assert reduce.input[1] == "axes__empty"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    feeds = {"x": x, "axes": np.zeros(0, np.int64)}
    (got,) = ReferenceEvaluator(folded).run(None, feeds)
    np.testing.assert_array_equal(got, [[15.0]])
