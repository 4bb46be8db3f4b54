from __future__ import annotations

from pathlib import Path

import pytest

import infer
from infer.errors import UnsupportedOpError
from infer.graph.support import find_unsupported, supported_op_types
from tests import onnx_models
from tests.conftest import save


def test_supported_table_comes_from_the_importer() -> None:
    ops = supported_op_types()
    assert {"Conv", "MatMul", "Gemm", "If", "Constant"} <= ops
    assert "LSTM" not in ops  # the importer lacks it (the coverage work legalizes it)


def test_every_unsupported_op_is_listed_at_once(tmp_path: Path) -> None:
    from onnx import helper

    model = onnx_models.with_op("LpNormalization", count=3)
    model.graph.node.append(
        helper.make_node("FusedGelu", ["o2"], ["g"], name="fusedgelu_0", domain="com.example")
    )
    model.graph.output[0].name = "g"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    found = find_unsupported(model)
    assert [(u.domain, u.op_type, u.count) for u in found] == [
        ("", "LpNormalization", 3),
        ("com.example", "FusedGelu", 1),
    ]
    assert found[0].node_names == ("lpnormalization_0", "lpnormalization_1", "lpnormalization_2")
    path = save(model, tmp_path)
    with pytest.raises(UnsupportedOpError) as info:
        infer.compile(path, output=tmp_path / "x.infer", check=False, fallback=False)
    message = str(info.value)
    assert "2 unsupported op type(s)" in message
    assert (
        "LpNormalization x3 (nodes 'lpnormalization_0', 'lpnormalization_1', 'lpnormalization_2')"
        in message
    )
    assert "com.example::FusedGelu x1 (nodes 'fusedgelu_0')" in message
    assert not (tmp_path / "x.infer").exists()


def test_ops_inside_subgraphs_are_checked() -> None:
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Celu", ["x"], ["h"], name="inner")],
        "then",
        [],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 3])],
    )
    model = onnx_models.with_op("Relu")
    model.graph.node.append(
        helper.make_node("If", ["c"], ["z"], then_branch=body, else_branch=body)
    )
    assert [u.op_type for u in find_unsupported(model)] == ["Celu"]
