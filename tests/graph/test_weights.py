from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from infer.graph.weights import calibrate_batch_norm, seeded_random_weights


def constant_weight_model() -> onnx.ModelProto:
    shape = numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "w_shape")
    vshape = numpy_helper.from_array(np.array([4], np.int64), "v_shape")
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.02])
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"], value=value),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
    ]
    for name in ("s", "b", "m", "v"):
        nodes.append(helper.make_node("ConstantOfShape", ["v_shape"], [name], value=value))
    nodes.append(helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
        [shape, vshape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_constant_weights_become_seeded_random_initializers() -> None:
    a = seeded_random_weights(constant_weight_model(), seed=1)
    b = seeded_random_weights(constant_weight_model(), seed=1)
    assert not [n for n in a.graph.node if n.op_type == "ConstantOfShape"]
    weights = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    assert set(weights) == {"w", "s", "b", "m", "v"}
    assert weights["w"].shape == (4, 3, 3, 3) and np.std(weights["w"]) > 0.1
    assert all(0.5 <= weights[k].min() and weights[k].max() <= 1.5 for k in "sbmv")
    for t, u in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))
    onnx.checker.check_model(a, full_check=True)


def test_batch_norm_statistics_match_their_input() -> None:
    model = calibrate_batch_norm(seeded_random_weights(constant_weight_model(), seed=1), seed=0)
    stats = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.ValueInfoProto(name="c"))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _, c = ort.InferenceSession(probe.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(stats["m"], c.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["v"], c.var(axis=(0, 2, 3)) + 1e-3, rtol=1e-3)
