from __future__ import annotations

import pytest

from infer.errors import ModelError
from infer.graph.shapes import (
    apply_shape_overrides,
    graph_inputs,
    graph_outputs,
    parse_shape_option,
)
from tests import onnx_models


def test_signature_keeps_symbolic_dims_as_strings() -> None:
    model = onnx_models.mlp(batch="batch")
    (spec,) = graph_inputs(model.graph)
    assert (spec.name, spec.dtype, spec.shape) == ("input:0", "float32", ("batch", 16))
    (out,) = graph_outputs(model.graph)
    assert out.shape == ("batch", 10)


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = onnx_models.conv_net()
    from onnx import helper

    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    assert [s.name for s in graph_inputs(model.graph)] == ["x"]


def test_override_sets_dims() -> None:
    model = apply_shape_overrides(onnx_models.mlp(batch="batch"), {"input:0": (3, 16)})
    assert graph_inputs(model.graph)[0].shape == (3, 16)


def test_override_of_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown input 'x'; the model's inputs are: 'input:0'"):
        apply_shape_overrides(onnx_models.mlp(), {"x": (1, 16)})


def test_override_with_the_wrong_rank() -> None:
    with pytest.raises(
        ModelError,
        match=r"input 'input:0': expected rank 2 \['batch', 16\], got rank 3 \[1, 16, 1\]",
    ):
        apply_shape_overrides(onnx_models.mlp(batch="batch"), {"input:0": (1, 16, 1)})


def test_override_cannot_change_a_fixed_dim() -> None:
    with pytest.raises(
        ModelError, match=r"input 'input:0': dim 1 is fixed at 16 in the model, got 15"
    ):
        apply_shape_overrides(onnx_models.mlp(batch="batch"), {"input:0": (1, 15)})


def test_override_dims_must_be_positive() -> None:
    with pytest.raises(ModelError, match=r"dims must be >= 1, got \[0, 16\]"):
        apply_shape_overrides(onnx_models.mlp(batch="batch"), {"input:0": (0, 16)})


def test_unknown_rank_input_asks_for_a_shape() -> None:
    model = onnx_models.mlp()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(
        ModelError, match=r"input 'input:0' has unknown rank; give its shape with --shape input:0="
    ):
        graph_inputs(model.graph)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x=1,3,224,224", ("x", (1, 3, 224, 224))), ("a=b=2", ("a=b", (2,))), ("s=", ("s", ()))],
)
def test_parse_shape_option(text: str, expected: tuple[str, tuple[int, ...]]) -> None:
    assert parse_shape_option(text) == expected


@pytest.mark.parametrize("text", ["x", "=1,2", "x=1,a-b", "x=1,2.5"])
def test_parse_shape_option_errors(text: str) -> None:
    with pytest.raises(ModelError, match=r"--shape"):
        parse_shape_option(text)
