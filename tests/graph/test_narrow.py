"""Narrow types (float8, float4, int4, int2, float8e8m0) compiled as uint8 codes, against the
ONNX reference evaluator (which converts with ml_dtypes) and ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import infer
from infer.errors import UnsupportedOpError
from infer.graph.narrow import NARROW_TYPES, narrow_as_bytes

FLOAT8 = [
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2,
    TensorProto.FLOAT8E5M2FNUZ,
]
SMALL = [
    TensorProto.FLOAT4E2M1,
    TensorProto.INT4,
    TensorProto.UINT4,
    TensorProto.INT2,
    TensorProto.UINT2,
]


def hard_values(dtype: np.dtype) -> np.ndarray:
    """Return float32s that test rounding: every value of the type, the midpoints between
    neighbours and the floats either side of them, specials, and a spread of magnitudes."""
    count = 16 if dtype.itemsize == 1 and "float4" in dtype.name else 256
    values = np.arange(count, dtype=np.uint8).view(dtype).astype(np.float64)
    finite = np.unique(values[np.isfinite(values)])
    midpoints = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)
    beyond = np.float32(2 * finite[-1] - finite[-2])
    near = np.concatenate(
        [np.nextafter(midpoints, np.float32(np.inf)), np.nextafter(midpoints, np.float32(-np.inf))]
    )
    spread = np.random.default_rng(0).standard_normal(400) * np.repeat([1e-3, 0.3, 10, 1e4], 100)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, beyond, -beyond, (beyond + finite[-1]) / 2]
    return np.concatenate([finite, midpoints, near, spread, specials]).astype(np.float32)


def cast_model(source: int, targets: list[tuple[int, int]], n: int) -> onnx.ModelProto:
    """Return a model casting x to each (type, saturate) and each result back to float32."""
    nodes, outputs = [], []
    for i, (to, saturate) in enumerate(targets):
        attrs = {"saturate": saturate} if to in FLOAT8 else {}
        nodes.append(helper.make_node("Cast", ["x"], [f"q{i}"], to=to, **attrs))
        nodes.append(helper.make_node("Cast", [f"q{i}"], [f"f{i}"], to=TensorProto.FLOAT))
        outputs += [
            helper.make_tensor_value_info(f"q{i}", to, [n]),
            helper.make_tensor_value_info(f"f{i}", TensorProto.FLOAT, [n]),
        ]
    graph = helper.make_graph(
        nodes, "casts", [helper.make_tensor_value_info("x", source, [n])], outputs
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])


def assert_same_codes(got: np.ndarray, want: np.ndarray) -> None:
    """Codes equal, except that any NaN code matches any other (the spec leaves NaN's bits)."""
    assert got.dtype == want.dtype
    got_f, want_f = got.astype(np.float32), want.astype(np.float32)
    both_nan = np.isnan(got_f) & np.isnan(want_f)
    same = (got.view(np.uint8) == want.view(np.uint8)) | both_nan
    bad = np.flatnonzero(~same)
    assert not bad.size, (
        f"{want.dtype}: codes {got.view(np.uint8)[bad[:5]]}, expected {want.view(np.uint8)[bad[:5]]}"
    )


@pytest.mark.parametrize("source", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_casts_to_and_from_narrow_types_match_the_reference(tmp_path: Path, source: int) -> None:
    targets = [(t, s) for t in FLOAT8 for s in (1, 0)] + [(t, 1) for t in SMALL]
    x = np.concatenate(
        [hard_values(np.dtype(helper.tensor_dtype_to_np_dtype(t))) for t, _ in targets]
    )
    # Past float16's range (infinity there, also a case), and integers past 4 bits.
    x = np.concatenate([x, np.float32([1e6, -1e6, 70000, 17.0, -9.5, -20.0, 8.0])])
    with np.errstate(over="ignore"):
        x = x.astype(helper.tensor_dtype_to_np_dtype(source))
    model = cast_model(source, targets, x.size)
    session = infer.compile(model, output=tmp_path / "casts", check=False).load(threads=1)
    got = session.run(None, {"x": x})
    want = ReferenceEvaluator(model).run(None, {"x": x})
    for i in range(0, len(want), 2):
        assert_same_codes(got[i], want[i])
        np.testing.assert_array_equal(got[i + 1], want[i + 1])  # decoded, NaN equal to NaN
    assert session.placement()["onnxruntime_nodes"] == 0


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_float8e8m0_rounds_as_the_spec_says(tmp_path: Path, round_mode: str, saturate: int) -> None:
    powers = 2.0 ** np.arange(-127, 128)
    x = np.concatenate(
        [powers, powers * 1.5, powers * 1.25, powers * 1.75, [0, -0.0, -3.0, 2e-45, 3.5e38]]
    )
    with np.errstate(over="ignore"):  # 1.5 * 2**127 is past float32: infinity, also a case
        x32 = x.astype(np.float32)
        x = np.concatenate([x32, np.nextafter(x32, np.float32(np.inf)), [np.inf, np.nan]])
        x = x.astype(np.float32)
    cast = helper.make_node(
        "Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0, saturate=saturate, round_mode=round_mode
    )
    graph = helper.make_graph(
        [cast],
        "e8m0",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT8E8M0, [x.size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    session = infer.compile(model, output=tmp_path / "e8m0", check=False).load(threads=1)
    (got,) = session.run(None, {"x": x})
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def quantize_model(to: int, block_size: int) -> onnx.ModelProto:
    """Return x -> QuantizeLinear(to) -> DequantizeLinear, scale per axis 1 or per block."""
    scale_shape = [4, 3] if block_size else [6]
    zero_point = np.zeros(scale_shape, dtype=helper.tensor_dtype_to_np_dtype(to))
    if to in (TensorProto.INT4, TensorProto.UINT4, TensorProto.UINT8):
        zero_point[:] = np.arange(zero_point.size).reshape(scale_shape) % 3
    scale = np.linspace(0.05, 0.3, int(np.prod(scale_shape)), dtype=np.float32).reshape(scale_shape)
    attrs = {"axis": 1, "block_size": block_size} if block_size else {"axis": 1}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [
            helper.make_tensor_value_info("q", to, [4, 6]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6]),
        ],
        [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(zero_point, "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])


@pytest.mark.parametrize(
    ("to", "block_size"),
    [
        (TensorProto.INT4, 0),
        (TensorProto.UINT4, 2),
        (TensorProto.INT2, 0),
        (TensorProto.FLOAT8E4M3FN, 0),
        (TensorProto.FLOAT4E2M1, 2),
        (TensorProto.UINT8, 2),  # blocked: TVM's converter refuses blocks
    ],
)
def test_quantize_dequantize_to_narrow_and_blocked(
    tmp_path: Path, to: int, block_size: int
) -> None:
    model = quantize_model(to, block_size)
    x = (np.random.default_rng(1).standard_normal((4, 6)) * 2).astype(np.float32)
    session = infer.compile(model, output=tmp_path / "qdq", check=False, fallback=False).load(
        threads=1
    )
    got = session.run(None, {"x": x})
    want = ReferenceEvaluator(model).run(None, {"x": x})
    assert_same_codes(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_codes_move_through_data_ops_and_inputs_are_viewed(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "moves",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT8E5M2FNUZ, [3, 4])],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT8E5M2FNUZ, [12]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT16, [12]),
        ],
        [numpy_helper.from_array(np.array([12], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.float8_e5m2fnuz)
    session = infer.compile(model, output=tmp_path / "moves", check=False, fallback=False).load(
        threads=1
    )
    moved, y = session.run(None, {"x": x})
    assert moved.dtype == ml_dtypes.float8_e5m2fnuz
    np.testing.assert_array_equal(moved.view(np.uint8), x.T.reshape(-1).view(np.uint8))
    np.testing.assert_array_equal(y, x.T.reshape(-1).astype(np.float16))


def test_a_narrow_value_on_another_op_stays_and_is_named(tmp_path: Path) -> None:
    # Pad is not spelt on codes: the model is left as it is, and without fallback refused.
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        [numpy_helper.from_array(np.array([1, 1], np.int64), "pads")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert narrow_as_bytes(model) is model
    with pytest.raises(UnsupportedOpError, match="Pad x1"):
        infer.compile(model, output=tmp_path / "pad", check=False, fallback=False)


def test_every_narrow_type_has_a_numpy_name_the_session_knows() -> None:
    from infer.signature import CODED_DTYPES

    names = {np.dtype(helper.tensor_dtype_to_np_dtype(t)).name for t in NARROW_TYPES}
    assert names == CODED_DTYPES


def test_the_parity_check_falls_back_to_the_spec_when_onnx_runtime_cannot_run(
    tmp_path: Path,
) -> None:
    # ONNX Runtime 1.32 has no numpy type for int4 outputs: the check runs onnx's evaluator.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT4)],
        "int4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT4, [3, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    artifact = infer.compile(model, output=tmp_path / "int4")
    parity = artifact.manifest.parity
    assert parity is not None and parity["status"] == "passed"
    assert "reference evaluator" in parity["reference"] and "Int4" in parity["reference"]
