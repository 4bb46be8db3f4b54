"""exp, erf, tanh, sigmoid, GELU and softmax as TVM's polynomials: ONNX Runtime's values, NaN and
infinities included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import infer
from tests.conftest import save

EDGES = [-np.inf, -1000, -100, -88.5, -87, -10, -1, -1e-3, 0, 1e-3, 0.5, 1, 3, 10, 50, 88,
         np.inf, np.nan]  # fmt: skip


@pytest.mark.parametrize(
    ("op", "attrs"),
    [("Exp", {}), ("Erf", {}), ("Tanh", {}), ("Sigmoid", {}), ("Gelu", {}),
     ("Gelu", {"approximate": "tanh"}), ("Softmax", {"axis": -1})],
)  # fmt: skip
def test_fast_math_matches_onnxruntime(
    op: str, attrs: dict[str, str | int], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([np.array(EDGES), rng.standard_normal(46) * 6]).astype(np.float32)
    x = values.reshape(8, 8)
    if op == "Softmax":  # rows of finite values, one with a -inf (a masked position)
        x = np.nan_to_num(x, nan=0.0, posinf=80.0, neginf=-80.0)
        x[0, 3] = -np.inf
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    path = save(model, tmp_path)
    session = infer.compile(path, output=tmp_path / "a.infer", check=False).load(threads=1)
    (got,) = session.run(None, {"x": x})
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (want,) = reference.run(None, {"x": x})
    finite = np.isfinite(want)
    # atol: GELU's 1 + erf(x) cancels for x << 0 (absolute errors ~1.6e-7 in float32).
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=5e-7)
    # Where ONNX Runtime gives NaN or an infinity, so does the compiled model.
    np.testing.assert_array_equal(got[~finite], want[~finite])
