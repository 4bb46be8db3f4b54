"""The named pass pipelines: layout conversion only where there is a convolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import infer
from tests import onnx_models
from tests.conftest import save


def _steps(dump: Path) -> list[str]:
    return sorted(p.stem.split("-", 1)[1] for p in dump.glob("*.py") if not p.stem.startswith("00"))


def test_convolutions_are_converted_to_nhwc(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    infer.compile(path, output=tmp_path / "a.infer", dump_ir=tmp_path / "ir", check=False)
    assert "ConvertLayout" in _steps(tmp_path / "ir")
    assert "R.nn.conv2d(" in (tmp_path / "ir" / "04-ConvertLayout.py").read_text()


def test_a_graph_without_convolutions_skips_layout_conversion(tmp_path: Path) -> None:
    # TVM's ConvertLayout dies of SIGFPE on this one (a 0-d minimum with a constant).
    graph = helper.make_graph(
        [helper.make_node("Min", ["x", "c"], ["y"])],
        "min0d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "c")],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)
    art = infer.compile(path, output=tmp_path / "a.infer", dump_ir=tmp_path / "ir")
    assert art.manifest.pipeline["name"] == "cpu-default"
    assert "ConvertLayout" not in _steps(tmp_path / "ir")
    session = art.load(threads=1)
    for value in (-3.0, 2.0):
        (got,) = session.run(None, {"x": np.array(value, np.float32)})
        assert got == min(value, 0.0)
