"""Run-time shape inputs rebuilt from the graph inputs' symbolic dims: compiled by TVM alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.graph.symbolic import rebuild_shape_inputs


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ints(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def split_heads() -> onnx.ModelProto:
    """x[batch, seq, 8] -> Reshape to [batch, seq, 2, 4] with the target computed from Shape,
    then heads folded into the batch ([batch*2, seq, 4]) and positions added from Range(seq):
    how PyTorch exports `view` and `arange` on dynamic axes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes0"], ["b1"]),
        helper.make_node("Unsqueeze", ["t", "axes0"], ["t1"]),
        helper.make_node("Concat", ["b1", "t1", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
        helper.make_node("Mul", ["b1", "two"], ["bh"]),
        helper.make_node("Concat", ["bh", "t1", "four"], ["folded"], axis=0),
        helper.make_node("Reshape", ["yt", "folded"], ["z"]),
        helper.make_node("Range", ["zero", "t", "one"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pf", "axes1"], ["pf1"]),
        helper.make_node("Add", ["z", "pf1"], ["out"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch_heads", "seq", 4])],
        [
            _ints("zero", 0),
            _ints("one", 1),
            _ints("two", [2]),
            _ints("axes0", [0]),
            _ints("axes1", [1]),
            _ints("heads", [2, 4]),
            _ints("four", [4]),
        ],
    )


def test_shape_targets_and_range_are_rebuilt_from_input_dims() -> None:
    model = split_heads()
    rebuilt = rebuild_shape_inputs(model)
    assert rebuilt is not model
    producers = {o: n for n in rebuilt.graph.node for o in n.output}
    for node in rebuilt.graph.node:
        if node.op_type == "Reshape":
            target = producers[node.input[1]]
            assert target.op_type == "Concat"
            kinds = {producers[i].op_type for i in target.input}
            assert kinds <= {"Shape", "Constant"}, kinds
    assert "Range" not in {n.op_type for n in rebuilt.graph.node}


def test_rebuilt_model_compiles_on_tvm_alone_and_matches_onnxruntime(tmp_path: Path) -> None:
    model = split_heads()
    art = infer.compile(model, fallback=False, output=tmp_path / "m.infer", threads=1)
    session = art.load(threads=1)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 1), (3, 7), (2, 40)):
        x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
        (got,) = session.run(None, {"x": x})
        (want,) = reference.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_static_inputs_leave_the_model_as_it_is() -> None:
    # Only symbolic dims of graph inputs are trusted; with none, what is left is data-dependent.
    model = split_heads()
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, (2, 3, 8), strict=True):
        dim.dim_value = size
    assert rebuild_shape_inputs(model) is model


def test_a_data_dependent_target_is_left_alone() -> None:
    # Reshape(x, Cast(y)): the target is data, not shape arithmetic.
    model = _model(
        [
            helper.make_node("Cast", ["y"], ["target"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["x", "target"], ["z"]),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [],
    )
    rebuilt = rebuild_shape_inputs(model)
    reshape = next(n for n in rebuilt.graph.node if n.op_type == "Reshape")
    assert reshape.input[1] == "target"
