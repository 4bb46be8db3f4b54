"""Choosing and renaming a model's outputs (a recipe's [outputs])."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from infer.graph.names import select_outputs
from tests import onnx_models


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_kept_outputs_are_renamed_in_the_given_order() -> None:
    model = onnx_models.multi_io()
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "idx": np.array([2, 0], np.int64),
        "mask": rng.random((3, 4)) > 0.5,
    }
    kept = select_outputs(model, {"masked": "first", "gathered": "gathered"})
    onnx.checker.check_model(kept)
    want, got = _run(model, feeds), _run(kept, feeds)
    assert list(got) == ["first", "gathered"]
    np.testing.assert_array_equal(got["first"], want["masked"])
    np.testing.assert_array_equal(got["gathered"], want["gathered"])
    assert model.graph.output[0].name == "gathered"  # the input is left alone


def test_a_missing_output_or_a_taken_name_is_named() -> None:
    model = onnx_models.multi_io()
    with pytest.raises(ValueError, match=r"no output\(s\) \['logits'\]"):
        select_outputs(model, {"logits": "y"})
    with pytest.raises(ValueError, match=r"\['mask'\] already name values"):
        select_outputs(model, {"masked": "mask"})
