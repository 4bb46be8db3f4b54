"""Import clean-ups, each checked by running the model before and after in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from infer.graph.cleanup import (
    constant_initializers,
    constants_to_initializers,
    conv_end_slice_to_padding,
    fold_conv_affine,
    gelu_from_erf,
    join_gemm_pairs,
    split_to_slices,
    square_pow,
    sum_to_add,
)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def test_sum_becomes_a_chain_of_adds_with_broadcasting() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Sum", ["a", "b", "c"], ["s"], name="s3"),
            helper.make_node("Sum", ["a"], ["t"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 1]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = sum_to_add(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Add", "Add", "Identity"]
    onnx.checker.check_model(rewritten, full_check=True)
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.random((2, 3), np.float32),
        "b": rng.random(3, np.float32),
        "c": rng.random((2, 1), np.float32),
    }
    for got, want in zip(run(rewritten, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_large_float_constants_become_initializers_small_ones_stay() -> None:
    weight = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(4, 8), "unused")
    shape = numpy_helper.from_array(np.array([8, 4], np.int64), "unused")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("Constant", [], ["shape"], value=shape),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Reshape", ["y", "shape"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = constants_to_initializers(model)
    assert [t.name for t in rewritten.graph.initializer] == ["w"]
    assert [n.op_type for n in rewritten.graph.node] == ["Constant", "MatMul", "Reshape"]
    x = np.random.default_rng(1).random((4, 4), np.float32)
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


def test_initializers_listed_as_inputs_become_constants_and_unused_ones_go() -> None:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    dead = numpy_helper.from_array(np.ones(3, np.float32), "dead")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("dead", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [w, dead],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    rewritten = constant_initializers(model)
    assert [v.name for v in rewritten.graph.input] == ["x"]
    assert [t.name for t in rewritten.graph.initializer] == ["w"]
    assert rewritten.ir_version >= 4


def test_dropout_without_a_used_mask_becomes_identity() -> None:
    from infer.graph.cleanup import dropout_to_identity

    graph = helper.make_graph(
        [
            helper.make_node("Dropout", ["x"], ["d", "unused_mask"]),
            helper.make_node("Dropout", ["d"], ["e", "mask"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rewritten = dropout_to_identity(model)
    assert [n.op_type for n in rewritten.graph.node] == [
        "Identity",
        "Dropout",
    ]  # the second's mask is read
    x = np.random.default_rng(2).random((2, 3), np.float32)
    for got, want in zip(run(rewritten, {"x": x}), run(model, {"x": x}), strict=True):
        np.testing.assert_array_equal(got, want)


def test_batch_norm_after_conv_is_folded_into_its_weights() -> None:
    from tests import onnx_models

    model = onnx_models.conv_net(batch=2)  # Conv (with bias) -> BatchNormalization -> Relu ...
    folded = fold_conv_affine(model)
    assert "BatchNormalization" not in [n.op_type for n in folded.graph.node]
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(
        run(folded, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-5
    )


def test_batch_norm_whose_conv_output_is_read_elsewhere_stays() -> None:
    from tests import onnx_models

    model = onnx_models.conv_net(batch=1)
    conv_out = model.graph.node[0].output[0]
    model.graph.output.append(helper.make_tensor_value_info(conv_out, TensorProto.FLOAT, None))
    assert "BatchNormalization" in [n.op_type for n in fold_conv_affine(model).graph.node]


def test_per_channel_scale_and_shift_after_a_conv_fold_into_its_weights() -> None:
    rng = np.random.default_rng(0)
    const = helper.make_tensor("shift", TensorProto.FLOAT, [1, 6, 1, 1], rng.standard_normal(6))
    nodes = [
        helper.make_node("Constant", [], ["shift_c"], value=const),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["scale", "c"], ["m"]),  # the constant first, as Paddle writes it
        helper.make_node("Add", ["m", "shift_c"], ["a"]),
        helper.make_node("Mul", ["a", "spatial"], ["y"]),  # varies along W: stays
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
            numpy_helper.from_array(rng.standard_normal((6, 1, 1)).astype(np.float32), "scale"),
            numpy_helper.from_array(
                rng.standard_normal((1, 1, 1, 8)).astype(np.float32), "spatial"
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded = fold_conv_affine(model)
    assert [n.op_type for n in folded.graph.node if n.op_type != "Constant"] == ["Conv", "Mul"]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (got,) = ort.InferenceSession(folded.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _erf_gelu(order: str, div: float = float(np.sqrt(2.0)), tap: bool = False) -> onnx.ModelProto:
    """x * 0.5 * (1 + erf(x / div)) in one of the orders exporters write, then Tanh."""
    scaled = helper.make_node("Div", ["x", "c_div"], ["d"])
    nodes = [
        scaled,
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["c_one", "e"], ["a"]),
    ]
    if order == "x_first":  # (x * (1 + erf)) * 0.5
        nodes += [
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "c_half"], ["g"]),
        ]
    elif order == "half_first":  # x * (0.5 * (1 + erf)), as torch's exporter writes it
        nodes += [
            helper.make_node("Mul", ["c_half", "a"], ["m"]),
            helper.make_node("Mul", ["x", "m"], ["g"]),
        ]
    else:  # (x * 0.5) * (1 + erf)
        nodes += [
            helper.make_node("Mul", ["x", "c_half"], ["m"]),
            helper.make_node("Mul", ["m", "a"], ["g"]),
        ]
    nodes.append(helper.make_node("Tanh", ["g"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])]
    if tap:  # erf's output is read elsewhere too: nothing may be fused
        outputs.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 5]))
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])], outputs,
        [numpy_helper.from_array(np.array(v, np.float32), n)
         for n, v in (("c_div", div), ("c_one", 1.0), ("c_half", 0.5))],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gelu_written_with_erf_becomes_one_gelu_node() -> None:
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32) * 3
    for order in ("x_first", "half_first", "half_of_x"):
        model = _erf_gelu(order)
        fused = gelu_from_erf(model)
        assert [(n.domain, n.op_type) for n in fused.graph.node] == [
            ("com.microsoft", "Gelu"), ("", "Tanh")
        ], order  # fmt: skip
        np.testing.assert_allclose(run(fused, {"x": x})[0], run(model, {"x": x})[0], atol=1e-6)


def test_near_misses_of_gelu_stay_as_written() -> None:
    for model in (_erf_gelu("x_first", tap=True), _erf_gelu("x_first", div=float(np.sqrt(3.0)))):
        assert gelu_from_erf(model) is model


def _conv_then_slice(end: int, strides: int = 1) -> onnx.ModelProto:
    """wav2vec2's positional convolution: pad kernel // 2 on both sides, drop the last frame."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[8, 8], group=4, strides=[strides]),
        helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pos_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, None])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 2, 16)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([0], np.int64), "starts"),
            numpy_helper.from_array(np.array([end], np.int64), "ends"),
            numpy_helper.from_array(np.array([2], np.int64), "axes"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_slice_dropping_a_convs_last_frames_becomes_end_padding() -> None:
    x = np.random.default_rng(1).standard_normal((1, 8, 50)).astype(np.float32)
    for end in (-1, -3):
        model = _conv_then_slice(end)
        folded = conv_end_slice_to_padding(model)
        assert [n.op_type for n in folded.graph.node] == ["Conv"]
        conv = folded.graph.node[0]
        pads = next(helper.get_attribute_value(a) for a in conv.attribute if a.name == "pads")
        assert pads == [8, 8 + end]
        np.testing.assert_allclose(
            run(folded, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6, atol=1e-6
        )
    # Strided, or more dropped than padded: left as written.
    for model in (_conv_then_slice(-1, strides=2), _conv_then_slice(-9)):
        assert [n.op_type for n in conv_end_slice_to_padding(model).graph.node] == ["Conv", "Slice"]


def test_a_float_pow_by_two_becomes_a_product_in_subgraphs_too() -> None:
    # Silero VAD's exponent is an initializer of the main graph read in an If branch; a Constant
    # node is what other exporters write. An integer Pow and a cube stay.
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    branch = helper.make_graph(
        [helper.make_node("Pow", ["x", "two"], ["sq_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("sq_then", TensorProto.FLOAT, [2, 3])],
    )
    other = helper.make_graph(
        [helper.make_node("Pow", ["x", "three"], ["cube"])],
        "else",
        [],
        [helper.make_tensor_value_info("cube", TensorProto.FLOAT, [2, 3])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two_node"], value=two),
            helper.make_node("Pow", ["x", "two_node"], ["sq"]),
            helper.make_node("Pow", ["n", "two_node"], ["n_sq"]),
            helper.make_node("If", ["flag"], ["branch"], then_branch=branch, else_branch=other),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [2, 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info(name, elem, [2, 3])
            for name, elem in (
                ("sq", TensorProto.FLOAT),
                ("n_sq", TensorProto.INT64),
                ("branch", TensorProto.FLOAT),
            )
        ],
        [two, helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = square_pow(model)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Constant", "Mul", "Pow", "If"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in out.graph.node[3].attribute}
    assert branches == {"then_branch": ["Mul"], "else_branch": ["Pow"]}
    x = np.array([[np.nan, np.inf, -np.inf], [-3.5, 1e20, 1.7]], np.float32)
    feeds = {"x": x, "n": np.arange(6, dtype=np.int64).reshape(2, 3) - 3}
    for flag in (True, False):
        feeds["flag"] = np.array(flag)
        want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
        got = ort.InferenceSession(out.SerializeToString()).run(None, feeds)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def _two_gemms(rows: tuple[int | str, int | str], *, read_twice: bool = False) -> onnx.ModelProto:
    """x @ W1^T + c1 (transB, beta 0.5) plus h @ W2 (no bias): an exported LSTM cell's gates."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "c1"),
        numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "c1"], ["gx"], transB=1, beta=0.5),
        helper.make_node("Gemm", ["h", "W2"], ["gh"]),
        helper.make_node("Add", ["gx", "gh"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])]
    if read_twice:
        outputs.append(helper.make_tensor_value_info("gh", TensorProto.FLOAT, [None, 8]))
    graph = helper.make_graph(
        nodes, "cell",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows[0], 3]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [rows[1], 5]),
        ],
        outputs, inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gemm_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Gemm" for n in model.graph.node)


def test_an_add_of_two_gemms_on_weights_becomes_one_gemm() -> None:
    rng = np.random.default_rng(6)
    for rows, size in (((2, 2), 2), (("batch", "batch"), 3)):
        model = _two_gemms(rows)
        model.graph.value_info.append(
            helper.make_tensor_value_info("gx", TensorProto.FLOAT, [None, 8])
        )
        joined = join_gemm_pairs(model)
        assert _gemm_count(joined) == 1
        assert not joined.graph.value_info  # no type left for a value no node makes
        onnx.checker.check_model(joined, full_check=True)
        feeds = {
            "x": rng.standard_normal((size, 3)).astype(np.float32),
            "h": rng.standard_normal((size, 5)).astype(np.float32),
        }
        np.testing.assert_allclose(
            run(joined, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5
        )


def test_gemms_with_other_readers_or_rows_the_add_broadcasts_stay_two() -> None:
    for model in (
        _two_gemms((1, 4)),  # [1, 8] + [4, 8] broadcasts: a concatenation could not
        _two_gemms(("a", "b")),  # rows that may differ
        _two_gemms((2, 2), read_twice=True),  # gh is an output too
    ):
        assert _gemm_count(join_gemm_pairs(model)) == 2


def _gates(
    opset: int, how: str, *, dim: int | str = 10, reader: str = "Sigmoid", output: bool = False
) -> onnx.ModelProto:
    """x [2, dim] split on axis 1 in three parts (as `how` gives the sizes), read by reader,
    Tanh and Mul: an exported recurrent cell's gates."""
    inits, inputs, attrs = [], ["x"], {}
    if how == "input":  # opset 13 on: the sizes as an input
        inits.append(numpy_helper.from_array(np.array([2, 5, 3], np.int64), "sizes"))
        inputs.append("sizes")
    elif how == "attribute":  # before opset 13
        attrs["split"] = [2, 5, 3]
    elif how == "num_outputs":  # opset 18: ceil(10 / 3) = 4, 4, then 2
        attrs["num_outputs"] = 3
    # how == "equal": no sizes; the dim divided evenly among the outputs
    nodes = [
        helper.make_node("Split", inputs, ["p0", "p1", "p2"], axis=1, **attrs),
        helper.make_node(reader, ["p0"], ["a"]),
        helper.make_node("Tanh", ["p1"], ["b"]),
        helper.make_node("Mul", ["p2", "p2"], ["c"]),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, None]) for n in "abc"]
    if output:
        outputs.append(helper.make_tensor_value_info("p1", TensorProto.FLOAT, [2, None]))
    graph = helper.make_graph(
        nodes, "gates", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, dim])],
        outputs, inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _op_count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def test_a_split_read_by_elementwise_ops_becomes_one_slice_per_part() -> None:
    rng = np.random.default_rng(7)
    for opset, how, dim in (
        (18, "num_outputs", 10),
        (13, "input", 10),
        (11, "attribute", 10),
        (13, "equal", 9),
    ):
        model = _gates(opset, how, dim=dim)
        sliced = split_to_slices(model)
        assert (_op_count(sliced, "Split"), _op_count(sliced, "Slice")) == (0, 3), how
        onnx.checker.check_model(sliced, full_check=True)
        feeds = {"x": rng.standard_normal((2, dim)).astype(np.float32)}
        for got, want in zip(run(sliced, feeds), run(model, feeds), strict=True):
            np.testing.assert_array_equal(got, want)


def test_splits_with_other_readers_or_sizes_not_static_stay() -> None:
    for model in (
        _gates(18, "num_outputs", output=True),  # a part is a graph output
        _gates(13, "input", reader="Softmax"),  # a reader TVM does not fuse a slice into
        _gates(18, "num_outputs", dim="n"),  # the dim is not known
        _gates(13, "equal", dim=10),  # 10 does not divide by 3 without num_outputs
    ):
        assert _op_count(split_to_slices(model), "Split") == 1
    model = _gates(13, "input")  # sizes computed at run time
    model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("sizes", TensorProto.INT64, [3]))
    assert _op_count(split_to_slices(model), "Split") == 1
