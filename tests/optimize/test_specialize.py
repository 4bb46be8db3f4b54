"""A batch-1 variant of main beside the general one: which models get it, and both against ONNX
Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import infer
from infer.optimize.specialize import ANY_BATCH, BATCH_ONE, batch_dim
from tests import onnx_models
from tests.conftest import save
from tests.optimize.test_cpu_schedule import optimized_module


def _function(*shapes: tuple[object, ...]) -> relax.Function:
    builder = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(shape, "float32")) for i, shape in enumerate(shapes)
    ]
    with builder.function("main", params):
        builder.emit_func_output(params[0])
    return builder.get()["main"]


def _lowered(model: Any) -> dict[str, str]:
    """Return the script of each Relax function of model after the default CPU lowering (what
    the VM's code is generated from)."""
    from infer.optimize.pipeline import lowering_pipeline

    mod, options, target = optimized_module("cpu-default", model)
    mod = lowering_pipeline(options.pipeline, target)(mod)
    return {
        gv.name_hint: f.script() for gv, f in mod.functions_items() if isinstance(f, relax.Function)
    }


def test_only_a_batch_shared_by_every_input_is_specialized() -> None:
    n, m = tvm.tirx.Var("n", "int64"), tvm.tirx.Var("m", "int64")
    assert batch_dim(_function((n, 3), (n, 4, 5))).same_as(n)
    assert batch_dim(_function((n, 3), (7,))).same_as(n)  # an input without the batch
    assert batch_dim(_function((1, 3))) is None  # static
    assert batch_dim(_function((n, m))) is None  # batch and sequence: the plan stays symbolic
    assert batch_dim(_function((3, n))) is None  # not the first axis
    assert batch_dim(_function((n, 3), (m, 3))) is None  # two batches


def test_a_symbolic_batch_runs_batch_one_on_its_own_variant(tmp_path: Path) -> None:
    model = onnx_models.conv_net(batch="N")
    art = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer")
    assert art.manifest.pipeline["batch_one_variants"] == 1
    other = art.manifest.parity["other_batch"]
    assert (other["batch"], other["status"]) == (2, "passed")
    # main calls one or the other; the batch-1 one shares storage between tensors.
    functions = _lowered(model)
    assert f" = {BATCH_ONE}(" in functions["main"]
    assert f" = {ANY_BATCH}(" in functions["main"]
    storage = "R.vm.alloc_storage("
    assert functions[BATCH_ONE].count(storage) < functions[ANY_BATCH].count(storage)
    reference = ort.InferenceSession(model.SerializeToString())
    session = art.load(threads=2)
    for batch in (1, 2, 3, 1):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16), np.float32)
        (got,) = session.run(None, {"x": x})
        (want,) = reference.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_static_and_two_symbolic_dims_get_no_variant(tmp_path: Path) -> None:
    static = infer.compile(save(onnx_models.conv_net(batch=1), tmp_path), output=tmp_path / "s")
    assert static.manifest.pipeline["batch_one_variants"] == 0
    assert "other_batch" not in static.manifest.parity
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sequence = infer.compile(save(model, tmp_path, "seq.onnx"), output=tmp_path / "q")
    assert sequence.manifest.pipeline["batch_one_variants"] == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_the_other_batch_is_checked_too(tmp_path: Path, batch: int) -> None:
    # Checked at batch 3, the general function ran first; the check at batch 1 runs the variant.
    path = save(onnx_models.conv_net(batch="N"), tmp_path)
    art = infer.compile(path, output=tmp_path / "a.infer", check_dims={"N": batch})
    assert art.manifest.parity["other_batch"]["batch"] == (2 if batch == 1 else 1)
    assert art.manifest.parity["other_batch"]["status"] == "passed"


def test_a_model_that_runs_only_batch_one_compiles_with_the_other_check_skipped(
    tmp_path: Path,
) -> None:
    # A symbolic batch that a reshape to a fixed shape pins to 1: ONNX Runtime fails at batch 2.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
        "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
        [numpy_helper.from_array(np.array([1, 3, 4], np.int64), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    art = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer")
    assert art.manifest.parity["status"] == "passed"
    other = art.manifest.parity["other_batch"]
    assert (other["batch"], other["status"]) == (2, "skipped")
    assert "cannot be reshaped" in other["reason"]


def test_a_variant_that_fails_is_left_out_out_loud(tmp_path: Path, monkeypatch: Any) -> None:
    from infer.optimize import specialize

    def broken(function: Any) -> Any:
        raise RuntimeError("no copy today")

    monkeypatch.setattr(specialize, "copy_with_new_vars", broken)
    path = save(onnx_models.conv_net(batch="N"), tmp_path)
    with pytest.warns(infer.FallbackWarning, match="without its batch-1 variant.*no copy today"):
        art = infer.compile(path, output=tmp_path / "a.infer")
    assert art.manifest.pipeline["name"] == "cpu-default"
    assert art.manifest.pipeline["batch_one_variants"] == 0
    assert art.manifest.parity["status"] == "passed"
    assert "other_batch" not in art.manifest.parity
