"""Cases TVM's converters computed against the spec, compiled and compared with ONNX Runtime
(and numpy where ONNX Runtime's own rounding differs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.graph.half import half_ops_in_float


def single_op(
    op: str,
    inputs: list[tuple[str, int, list[int]]],
    output: tuple[int, list[int] | None],
    opset: int,
    initializers: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    **attrs: Any,
) -> onnx.ModelProto:
    names = [name for name, _, _ in inputs] + [t.name for t in initializers]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)],
        op.lower(),
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info("y", *output)],
        list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compiled_and_ort(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path: Path
) -> tuple[Any, Any]:
    session = infer.compile(model, output=tmp_path / "a", check=False, fallback=False).load(
        threads=1
    )
    (got,) = session.run(None, feeds)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    return got, want


@pytest.mark.parametrize("attrs", [{"detect_negative": 0}, {"detect_positive": 0}])
def test_isinf_detects_only_the_signs_asked(tmp_path: Path, attrs: dict[str, int]) -> None:
    x = np.array([-1.7, np.nan, np.inf, -3.6, -np.inf, np.inf], np.float32)
    model = single_op(
        "IsInf", [("x", TensorProto.FLOAT, [6])], (TensorProto.BOOL, [6]), 20, **attrs
    )
    got, want = compiled_and_ort(model, {"x": x}, tmp_path)
    np.testing.assert_array_equal(got, want)


def test_space_to_depth_in_crd_mode(tmp_path: Path) -> None:
    x = np.arange(48, dtype=np.float32).reshape(1, 2, 4, 6)
    model = single_op(
        "SpaceToDepth",
        [("x", TensorProto.FLOAT, [1, 2, 4, 6])],
        (TensorProto.FLOAT, [1, 8, 2, 3]),
        28,
        blocksize=2,
        mode="CRD",
    )
    got, want = compiled_and_ort(model, {"x": x}, tmp_path)
    np.testing.assert_array_equal(got, want)


def test_expand_to_a_shape_fed_at_run_time_keeps_the_inputs_dims_where_it_says_one(
    tmp_path: Path,
) -> None:
    model = single_op(
        "Expand",
        [("x", TensorProto.FLOAT, [3, 1]), ("shape", TensorProto.INT64, [3])],
        (TensorProto.FLOAT, [2, 3, 6]),
        13,
    )
    feeds = {"x": np.array([[1.0], [2.0], [3.0]], np.float32), "shape": np.array([2, 1, 6])}
    got, want = compiled_and_ort(model, feeds, tmp_path)
    assert got.shape == want.shape == (2, 3, 6)
    np.testing.assert_array_equal(got, want)


def test_conv_transpose_output_shape_sets_the_padding(tmp_path: Path) -> None:
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32), "w"
    )
    model = single_op(
        "ConvTranspose",
        [("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        (TensorProto.FLOAT, [1, 2, 10, 8]),
        17,
        [w],
        output_shape=[10, 8],
        strides=[3, 2],
    )
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    got, want = compiled_and_ort(model, {"x": x}, tmp_path)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16])
def test_shifts_past_the_width_shift_every_bit_out(
    tmp_path: Path, direction: str, dtype: Any
) -> None:
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    bits = np.dtype(dtype).itemsize * 8
    x = np.array([-8, 4, -1, 5, 7][:5], dtype=np.int64).astype(dtype)
    y = np.array([bits, bits + 1, 3 * bits, 1, 0], dtype=np.int64)
    if np.dtype(dtype).kind == "i":
        y[3] = -1
    model = single_op(
        "BitShift", [("x", kind, [5]), ("shift", kind, [5])], (kind, [5]), 28, direction=direction
    )
    got, want = compiled_and_ort(model, {"x": x, "shift": y.astype(dtype)}, tmp_path)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_mod_signs_zeros_and_infinities(tmp_path: Path, dtype: Any) -> None:
    a = np.array(
        [
            0.0,
            -0.0,
            0.0,
            -0.0,
            -3.0,
            3.0,
            -1.0,
            1.0,
            np.inf,
            -np.inf,
            1.0,
            1.0,
            np.nan,
            1.0,
            5.5,
            -5.5,
        ],
        dtype,
    )
    b = np.array(
        [
            -2.0,
            2.0,
            2.0,
            -2.0,
            np.inf,
            np.inf,
            -np.inf,
            -np.inf,
            2.0,
            2.0,
            0.0,
            -0.0,
            2.0,
            np.nan,
            -2.0,
            2.0,
        ],
        dtype,
    )
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = single_op("Mod", [("a", kind, [16]), ("b", kind, [16])], (kind, [16]), 28, fmod=0)
    got, want = compiled_and_ort(model, {"a": a, "b": b}, tmp_path)
    np.testing.assert_array_equal(got, want)
    with np.errstate(invalid="ignore"):
        numpy_mod = np.mod(a, b)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(numpy_mod))  # -0 as numpy


def test_elu_in_float16(tmp_path: Path) -> None:
    x = np.linspace(-3, 3, 12, dtype=np.float16)
    model = single_op(
        "Elu", [("x", TensorProto.FLOAT16, [12])], (TensorProto.FLOAT16, [12]), 13, alpha=0.7
    )
    got, want = compiled_and_ort(model, {"x": x}, tmp_path)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3)


def test_half_matmul_and_softmax_round_once_as_onnx_runtime(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["ab"]),
        helper.make_node("Softmax", ["ab"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "half",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT16, [16, 64]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT16, [64, 32]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [16, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in half_ops_in_float(model).graph.node].count("Cast") == 5
    rng = np.random.default_rng(0)
    feeds = {
        "a": (rng.standard_normal((16, 64)) * 0.3).astype(np.float16),
        "b": (rng.standard_normal((64, 32)) * 0.3).astype(np.float16),
    }
    session = infer.compile(model, output=tmp_path / "a", check=False).load(threads=1)
    (got,) = session.run(None, feeds)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    # float32 all through, rounded once: within one half ulp of ONNX Runtime everywhere
    np.testing.assert_allclose(
        got.astype(np.float32), want.astype(np.float32), rtol=2**-10, atol=2**-24
    )


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 1)])
def test_cumsum_along_an_axis_fed_at_run_time(tmp_path: Path, exclusive: int, reverse: int) -> None:
    model = single_op(
        "CumSum",
        [("x", TensorProto.FLOAT, [2, 3, 4]), ("axis", TensorProto.INT32, [])],
        (TensorProto.FLOAT, [2, 3, 4]),
        14,
        exclusive=exclusive,
        reverse=reverse,
    )
    session = infer.compile(model, output=tmp_path / "a", check=False, fallback=False).load(
        threads=1
    )
    reference = ort.InferenceSession(model.SerializeToString())
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    for axis in (0, 1, 2, -1, -3):
        feeds = {"x": x, "axis": np.array(axis, np.int32)}
        (got,) = session.run(None, feeds)
        (want,) = reference.run(None, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
