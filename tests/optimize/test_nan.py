"""NaN and infinities through ops whose TVM legalization lost NaN: the same as ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import infer
from tests.conftest import save

X = np.array([[np.nan, 7.0, -1.0, np.inf], [-np.inf, -0.0, 0.5, np.nan]], np.float32)


@pytest.mark.parametrize(
    ("op", "attrs"),
    [("Relu", {}), ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}), ("LeakyRelu", {"alpha": 0.1})],
)
def test_nan_stays_nan_as_in_onnxruntime(tmp_path: Path, op: str, attrs: dict[str, float]) -> None:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer", check=False).load()
    (got,) = session.run(None, {"x": X})
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": X})
    np.testing.assert_array_equal(got, want)  # NaN where ONNX Runtime has NaN, nowhere else


def test_max_and_min_reductions_start_from_infinity_and_keep_nan(tmp_path: Path) -> None:
    # TVM's reductions started from the largest finite float: a row of -inf (an attention row
    # fully masked) came out as -3.4e38, and a test for -inf downstream failed.
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["high"], axes=[1], keepdims=0),
        helper.make_node("ReduceMin", ["x"], ["low"], axes=[0], keepdims=1),
        helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "reduce",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [
            helper.make_tensor_value_info("high", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("low", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("top", TensorProto.FLOAT, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer", check=False).load()
    x = np.array(
        [[-np.inf] * 4, [np.inf, np.inf, 2.0, np.inf], [1.0, np.nan, -3.0, 0.5]], np.float32
    )
    high, low, top = session.run(None, {"x": x})
    # numpy as the spec's reference (ONNX Runtime drops NaN in reductions)
    np.testing.assert_array_equal(high, np.max(x, axis=1))
    np.testing.assert_array_equal(low, np.min(x, axis=0, keepdims=True))
    np.testing.assert_array_equal(top, np.max(x))


@pytest.mark.parametrize(("onnx_type", "dtype"), [(TensorProto.FLOAT, np.float32),
                                                  (TensorProto.DOUBLE, np.float64)])  # fmt: skip
def test_isnan_finds_every_nan_and_nothing_else(
    tmp_path: Path, onnx_type: int, dtype: type
) -> None:
    # float32's isnan is a test of the bits (nan.py): quiet and signalling NaNs of either sign
    # and any payload are NaN; infinities, zeros, subnormals and the largest floats are not.
    nodes = [
        helper.make_node("IsNaN", ["x"], ["nan"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["zero"],
            value=helper.make_tensor("v", onnx_type, [1], [0.0]),
        ),
        helper.make_node("Where", ["nan", "zero", "x"], ["clean"]),
    ]
    graph = helper.make_graph(
        nodes,
        "isnan",
        [helper.make_tensor_value_info("x", onnx_type, ["n", 64])],
        [
            helper.make_tensor_value_info("nan", TensorProto.BOOL, ["n", 64]),
            helper.make_tensor_value_info("clean", onnx_type, ["n", 64]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer", check=False).load()
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(dtype)
    info = np.finfo(dtype)
    special = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.max, -info.max,
               info.smallest_subnormal, -info.smallest_subnormal, info.tiny]  # fmt: skip
    x[0, : len(special)] = special
    bits = x.view(np.uint32 if dtype == np.float32 else np.uint64)
    exponent = 0x7F800000 if dtype == np.float32 else 0x7FF0000000000000
    bits[1, :4] = [exponent | 1, exponent | 0x12345, (1 << (bits.itemsize * 8 - 1)) | exponent | 7,
                   exponent | (exponent >> 1)]  # fmt: skip  # signalling, payloads, sign
    nan, clean = session.run(None, {"x": x})
    np.testing.assert_array_equal(nan, np.isnan(x))
    np.testing.assert_array_equal(clean, np.where(np.isnan(x), 0, x))
