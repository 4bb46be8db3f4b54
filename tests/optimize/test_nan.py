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
