"""Loop and Scan unrolled over a static trip count: compiled by TVM alone, against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path: Path) -> None:
    art = infer.compile(model, fallback=False, output=tmp_path / "m.infer", threads=1)
    got = art.load(threads=1).run(None, feeds)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for g, w in zip(got, reference.run(None, feeds), strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _scan_model(reverse: int) -> onnx.ModelProto:
    """A running sum and a running max over the rows of x (state: [4]); scan outputs stacked."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["sum_in", "row"], ["sum_out"]),
            helper.make_node("Max", ["max_in", "row"], ["max_out"]),
            helper.make_node("Mul", ["sum_out", "row"], ["scan_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])
            for n in ("sum_in", "max_in", "row")
        ],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])
            for n in ("sum_out", "max_out", "scan_out")
        ],
    )
    node = helper.make_node(
        "Scan", ["s0", "m0", "x"], ["s", "m", "ys"], num_scan_inputs=1, body=body,
        scan_input_directions=[reverse], scan_output_directions=[reverse],
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "scan",
        [
            helper.make_tensor_value_info("s0", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("m0", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("ys", TensorProto.FLOAT, [6, 4]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("reverse", [0, 1])
def test_scan_with_two_states_and_a_scan_output(reverse: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(reverse)
    feeds = {
        "s0": np.zeros(4, np.float32),
        "m0": np.full(4, -np.inf, np.float32),
        "x": rng.standard_normal((6, 4)).astype(np.float32),
    }
    _check(_scan_model(reverse), feeds, tmp_path)


def test_loop_with_a_constant_trip_count_reads_the_outer_scope(tmp_path: Path) -> None:
    # acc = acc * decay + x * i, for i in 0..4; every step's acc is also a scan output.
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "fi"], ["xi"]),
            helper.make_node("Mul", ["acc_in", "decay"], ["kept"]),
            helper.make_node("Add", ["kept", "xi"], ["acc_out"]),
            helper.make_node("Identity", ["acc_out"], ["step"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("step", TensorProto.FLOAT, [3]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "acc0"], ["acc", "steps"], body=body)],
        "loop",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("acc0", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("steps", TensorProto.FLOAT, [5, 3]),
        ],
        [
            numpy_helper.from_array(np.array(5, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "go"),
            numpy_helper.from_array(np.array(0.5, np.float32), "decay"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.array([1.0, -2.0, 0.5], np.float32), "acc0": np.ones(3, np.float32)}
    _check(model, feeds, tmp_path)


def test_a_loop_that_decides_its_own_exit_stays_on_onnxruntime() -> None:
    body = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["acc_in"], ["total"], keepdims=0),
            helper.make_node("Less", ["total", "limit"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "acc_in"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "acc0"], ["acc"], body=body)],
        "loop",
        [helper.make_tensor_value_info("acc0", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, [3])],
        [
            numpy_helper.from_array(np.array(10, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "go"),
            numpy_helper.from_array(np.array(100.0, np.float32), "limit"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(infer.UnsupportedOpError, match="Loop"):
        infer.compile(model, fallback=False)
