"""Legalized recurrent ops against ONNX Runtime's own LSTM/GRU/RNN kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from infer.graph.legalize import NOT_LEGALIZED, legalize

SEQ, BATCH, INPUT, HIDDEN = 4, 2, 3, 5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op: str, *, direction: str = "forward", layout: int = 0, with_state: bool = True,
                    with_lens: bool = False, peepholes: bool = False, seq: int = SEQ,
                    **attrs: Any) -> onnx.ModelProto:  # fmt: skip
    rng = np.random.default_rng(5)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    inits = [init("W", dirs, gates * HIDDEN, INPUT), init("R", dirs, gates * HIDDEN, HIDDEN)]
    inits.append(init("B", dirs, 2 * gates * HIDDEN))
    inputs = ["x", "W", "R", "B", "lens" if with_lens else ""]
    state_shape = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    graph_inputs = [
        helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [BATCH, seq, INPUT] if layout else [seq, BATCH, INPUT]
        )
    ]
    if with_lens:
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [BATCH]))
    if with_state:
        inputs.append("h0")
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        if op == "LSTM":
            inputs.append("c0")
            graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state_shape))
    if peepholes:
        while len(inputs) < 7:
            inputs.append("")
        inputs.append("P")
        inits.append(init("P", dirs, 3 * HIDDEN))
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outputs, hidden_size=HIDDEN, direction=direction,
                            layout=layout, **attrs)  # fmt: skip
    graph = helper.make_graph(
        [node], "rnn", graph_inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    feeds: dict[str, np.ndarray] = {}
    seq = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "lens":
            feeds["lens"] = np.array([seq, max(seq - 2, 0)], dtype=np.int32)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


CASES = [
    ("LSTM", {}),
    ("LSTM", {"direction": "reverse", "with_state": False}),
    ("LSTM", {"direction": "bidirectional", "layout": 1}),
    ("LSTM", {"peepholes": True, "clip": 0.7}),
    ("LSTM", {"with_lens": True}),
    ("GRU", {}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}),
    ("GRU", {"layout": 1}),
    ("GRU", {"with_lens": True, "with_state": False}),
    ("RNN", {}),
    ("RNN", {"activations": ["Relu", "Tanh"], "direction": "bidirectional"}),
    ("RNN", {"activations": ["HardSigmoid"], "activation_alpha": [0.3], "activation_beta": [0.4]}),
    # One step: the input and recurrent products become one (GRU keeps two).
    ("LSTM", {"seq": 1}),
    ("LSTM", {"seq": 1, "direction": "bidirectional", "peepholes": True}),
    ("LSTM", {"seq": 1, "with_lens": True, "with_state": False}),
    ("RNN", {"seq": 1, "direction": "reverse"}),
    ("GRU", {"seq": 1}),
]


@pytest.mark.parametrize(("op", "options"), CASES, ids=[f"{o}-{sorted(k)}" for o, k in CASES])
def test_unrolled_recurrence_matches_onnxruntime(op: str, options: dict[str, Any]) -> None:
    model = recurrent_model(op, **options)
    legal = legalize(model)
    assert op not in {n.op_type for n in legal.graph.node}
    feeds = feeds_for(model)
    if options.get("layout"):  # ONNX Runtime has no batch-first layout: onnx's spec in numpy
        want = ReferenceEvaluator(model).run(None, feeds)
    else:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        want = session.run(None, feeds)
    got = ReferenceEvaluator(legal).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    directions = 2 if options.get("direction") == "bidirectional" else 1
    products = sum(n.op_type == "MatMul" for n in legal.graph.node)
    steps = options.get("seq", SEQ)
    per_direction = 1 if steps == 1 and op != "GRU" else 1 + steps * (1 + (op == "GRU"))
    assert products == directions * per_direction


def test_a_dynamic_sequence_length_is_left_with_the_reason() -> None:
    model = recurrent_model("GRU")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "seq"
    legal = legalize(model)
    (node,) = legal.graph.node
    assert node.op_type == "GRU"
    assert node.doc_string == NOT_LEGALIZED + "the sequence length is not static"


def test_function_ops_expand_into_their_bodies() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    nodes = [
        helper.make_node("Celu", ["x"], ["c"], alpha=0.5),
        helper.make_node("LayerNormalization", ["c", "scale"], ["y", "mean", "inv_std"], axis=-1),
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "mean", "inv_std")
    ]
    scale = numpy_helper.from_array(np.linspace(0.5, 1.5, 4, dtype=np.float32), "scale")
    graph = helper.make_graph(nodes, "functions", [x], outputs, [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    legal = legalize(model)
    ops = {n.op_type for n in legal.graph.node}
    assert "Celu" not in ops and "LayerNormalization" not in ops
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for g, w in zip(
        ReferenceEvaluator(legal).run(None, feeds), session.run(None, feeds), strict=True
    ):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("opset", "bounds"),
    [(6, {"min": 0.0}), (13, (-0.5, 0.75)), (13, (0.0, None)), (13, (None, 0.25))],
)
def test_clip_with_constant_bounds_becomes_relu_or_where(opset: int, bounds: Any) -> None:
    inits, inputs, attrs = [], ["x"], {}
    if isinstance(bounds, dict):
        attrs = bounds
    else:
        for name, value in zip(("lo", "hi"), bounds, strict=True):
            if value is not None:
                inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
            inputs.append(name if value is not None else "")
    graph = helper.make_graph(
        [helper.make_node("Clip", inputs, ["y"], **attrs)],
        "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    rewritten = legalize(model)
    assert "Clip" not in {n.op_type for n in rewritten.graph.node}
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (got,) = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(got, want)
