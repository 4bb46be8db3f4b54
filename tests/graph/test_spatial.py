"""The symbolic-size rewrites against ONNX Runtime on the original graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from infer.graph.shapes import parse_shape_option
from infer.graph.spatial import input_blocks, nearest_upsample_as_depth_to_space, to_blocks


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _upsample_model() -> onnx.ModelProto:
    """x -> Resize(nearest, x2, asymmetric, floor) -> + Conv(x) upsampled: a tiny FPN step."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node(
            "Resize",
            ["c", "", "scales"],
            ["y"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [scales, weight],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_upsample_as_depth_to_space_equals_resize() -> None:
    model = _upsample_model()
    rewritten = nearest_upsample_as_depth_to_space(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Tile", "DepthToSpace"]
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, {"x": x}), _run(model, {"x": x}))


def test_input_blocks_feeds_the_same_picture() -> None:
    model = _upsample_model()
    blocked = input_blocks(model)
    dims = blocked.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 3 * 32 * 32, "h", "w"]
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 96)).astype(np.float32)
    np.testing.assert_array_equal(_run(blocked, {"x": to_blocks(x)}), _run(model, {"x": x}))


def test_shape_override_keeps_named_dims_symbolic() -> None:
    assert parse_shape_option("x=1,3,48,width") == ("x", (1, 3, 48, "width"))
