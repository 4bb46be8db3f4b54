from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from infer.graph.cleanup import clean
from infer.graph.partition import ONNXRUNTIME, TVM, node_key, partition
from tests import onnx_models


def test_a_model_tvm_takes_whole_is_one_segment() -> None:
    plan = partition(clean(onnx_models.mlp()))
    assert plan.single_tvm
    assert plan.node_counts()[ONNXRUNTIME] == 0


def test_an_op_tvm_lacks_gets_its_own_segment_with_typed_boundaries() -> None:
    plan = partition(onnx_models.lstm_between())
    assert [s.kind for s in plan.segments] == [TVM, ONNXRUNTIME, TVM]
    relu, lstm, add = plan.segments
    assert (relu.inputs, relu.outputs) == (["x"], ["r"])
    # Y is a graph output, Y_h feeds the Add; the weights travel with the LSTM.
    assert (lstm.inputs, lstm.outputs) == (["r"], ["Y", "Y_h"])
    assert {t.name for t in lstm.model.graph.initializer} == {"W", "R"}
    assert (add.inputs, add.outputs) == (["Y_h"], ["z"])
    y_h = add.model.graph.input[0].type.tensor_type
    assert y_h.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in y_h.shape.dim] == [1, 1, 4]
    assert plan.fallback_op_types() == {"LSTM": 1}
    assert "no converter for LSTM" in plan.reasons["Y"]
    for segment in plan.segments:
        onnx.checker.check_model(segment.model, full_check=True)


def test_forced_nodes_run_on_onnxruntime_with_the_reason() -> None:
    model = onnx_models.reduce_with_input_axes()
    plan = partition(model, {"y": "constant axes only"})
    # ONNX cannot infer the rank of a reduction over runtime axes: Neg follows it to ORT.
    assert [s.kind for s in plan.segments] == [TVM, ONNXRUNTIME]
    assert plan.segments[1].inputs == ["r", "axes"]
    assert plan.reasons == {
        "y": "constant axes only",
        "z": "input 'y' from ONNX Runtime has no known rank",
    }


def test_independent_branches_share_segments() -> None:
    # Two Relu branches and two Celu (TVM lacks it) branches: 2 segments, not 4.
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Celu", ["x"], ["b"]),
        helper.make_node("Relu", ["x"], ["c"]),
        helper.make_node("Celu", ["x"], ["d"]),
        helper.make_node("Sum", ["a", "c"], ["s1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("s1", "b", "d")],
    )
    plan = partition(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(s.kind, s.node_count) for s in plan.segments] == [(TVM, 3), (ONNXRUNTIME, 2)]


def test_subgraph_reads_of_outer_names_are_segment_inputs() -> None:
    then_graph = helper.make_graph(
        [helper.make_node("Celu", ["r"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(
        nodes,
        "if_graph",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = partition(model)
    assert [s.kind for s in plan.segments] == [TVM, ONNXRUNTIME]
    assert plan.segments[1].inputs == ["c", "r"]
    assert node_key(model.graph.node[1]) == "y"


def test_flops_count_multiply_adds_twice() -> None:
    plan = partition(clean(onnx_models.mlp(batch=4)))
    (segment,) = plan.segments
    # Gemm 4x16 @ 16x32 and 4x32 @ 32x10, each output element one op for ReLU, Softmax.
    assert segment.flops == 2 * 4 * 32 * 16 + 4 * 32 + 2 * 4 * 10 * 32 + 4 * 10
