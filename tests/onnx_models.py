"""Small ONNX models built with onnx.helper for the tests (no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def mlp(
    batch: int | str = 2, features: int = 16, hidden: int = 32, classes: int = 10
) -> onnx.ModelProto:
    """Return Gemm-ReLU-Gemm-Softmax; names with '/' and ':' like real exports."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["input:0", "fc1/W", "fc1/b"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "fc2/W", "fc2/b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits = [
        _init(rng, "fc1/W", (hidden, features)),
        _init(rng, "fc1/b", (hidden,)),
        _init(rng, "fc2/W", (classes, hidden)),
        _init(rng, "fc2/b", (classes,)),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    return _model(graph)


def conv_net(batch: int | str = 1) -> onnx.ModelProto:
    """Return Conv-BN-ReLU-MaxPool-Conv-GlobalAveragePool-Flatten-Gemm on 3x16x16 images."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = [
        _init(rng, "w1", (8, 3, 3, 3)),
        _init(rng, "b1", (8,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_s"),
        _init(rng, "bn_b", (8,)),
        _init(rng, "bn_m", (8,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_v"),
        _init(rng, "w2", (16, 8, 3, 3)),
        _init(rng, "fc_w", (5, 16)),
        _init(rng, "fc_b", (5,)),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        inits,
    )
    return _model(graph)


def multi_io() -> onnx.ModelProto:
    """Return a model with float, int64 and bool inputs and three outputs of those dtypes.

    Inputs: a float32 [N, 4], idx int64 [K] (indices into a's rows), mask bool [N, 4].
    Outputs: gathered float32 [K, 4], count int64 [] (true elements of mask), masked float32 [N, 4].
    """
    nodes = [
        helper.make_node("Gather", ["a", "idx"], ["gathered"], axis=0),
        helper.make_node("Cast", ["mask"], ["mask_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask_i"], ["count"], keepdims=0),
        helper.make_node(
            "Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))
        ),
        helper.make_node("Where", ["mask", "a", "zero"], ["masked"]),
        helper.make_node("Not", ["mask"], ["inverted"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["K"]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("gathered", TensorProto.FLOAT, ["K", 4]),
            helper.make_tensor_value_info("count", TensorProto.INT64, []),
            helper.make_tensor_value_info("masked", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("inverted", TensorProto.BOOL, ["N", 4]),
        ],
    )
    return _model(graph)


def scalar_add() -> onnx.ModelProto:
    """Return y = x + s with a 0-d input s."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "s"], ["y"])],
        "scalar_add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
    )
    return _model(graph)


def with_op(op_type: str, domain: str = "", count: int = 1) -> onnx.ModelProto:
    """Return Relu followed by count nodes of an arbitrary op (for unsupported-op errors)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    previous = "r"
    for i in range(count):
        nodes.append(
            helper.make_node(
                op_type, [previous], [f"o{i}"], name=f"{op_type.lower()}_{i}", domain=domain
            )
        )
        previous = f"o{i}"
    graph = helper.make_graph(
        nodes,
        "with_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [2, 3])],
    )
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def lstm_between(seq: int = 5, hidden: int = 4) -> onnx.ModelProto:
    """Return Relu -> LSTM -> Add: an op TVM's importer lacks between two it has."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node(
                "LSTM", ["r", "W", "R"], ["Y", "Y_h"], hidden_size=hidden, name="lstm"
            ),
            helper.make_node("Add", ["Y_h", "Y_h"], ["z"]),
        ],
        "lstm_between",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, 1, 3])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1, hidden]),
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [seq, 1, 1, hidden]),
        ],
        [_init(rng, "W", (1, 4 * hidden, 3)), _init(rng, "R", (1, 4 * hidden, hidden))],
    )
    return _model(graph)


def reduce_with_input_axes() -> onnx.ModelProto:
    """Return Relu -> ReduceSum whose axes are a graph input (TVM's importer wants constants)."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=1, name="reduce"),
            helper.make_node("Neg", ["y"], ["z"]),
        ],
        "reduce_with_input_axes",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a", "b", "c"])],
    )
    return _model(graph)


def lp_norm_between() -> onnx.ModelProto:
    """Return Neg -> LpNormalization -> Add: an op TVM lacks and infer cannot rewrite, between two."""
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["r"]),
            helper.make_node("LpNormalization", ["r"], ["c"], axis=-1, p=2, name="lpnorm"),
            helper.make_node("Add", ["c", "c"], ["z"]),
        ],
        "lp_norm_between",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 3]),
        ],
    )
    return _model(graph)
