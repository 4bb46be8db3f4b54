"""The named pass pipelines: layout conversion only where there is a convolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.cli import cli
from tests import onnx_models
from tests.conftest import save


def _steps(dump: Path) -> list[str]:
    return sorted(p.stem.split("-", 1)[1] for p in dump.glob("*.py") if not p.stem.startswith("00"))


def test_convolutions_are_converted_to_nhwc(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(), tmp_path)
    infer.compile(path, output=tmp_path / "a.infer", dump_ir=tmp_path / "ir", check=False)
    assert "ConvertLayout" in _steps(tmp_path / "ir")
    (converted,) = (tmp_path / "ir").glob("*-ConvertLayout.py")
    assert "R.nn.conv2d(" in converted.read_text()


def test_elementwise_ops_between_convolutions_stay_nhwc(tmp_path: Path) -> None:
    # A (1,) scale as Mul's first operand and a Clip: ConvertLayout alone would transpose back
    # to NCHW and forward around each (PaddlePaddle's hard-swish blocks).
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s", "c1"], ["m"]),
        helper.make_node("Clip", ["m", "lo", "hi"], ["k"]),
        helper.make_node("Add", ["k", "m"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0.5], np.float32), "s"),
        numpy_helper.from_array(np.array(-0.25, np.float32), "lo"),
        numpy_helper.from_array(np.array(0.75, np.float32), "hi"),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    art = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer", dump_ir=tmp_path / "ir")
    (lifted,) = (tmp_path / "ir").glob("*-LiftTransformParams.py")  # weight permutes gone
    main = lifted.read_text().split("def main(")[1]
    big_transposes = [
        line
        for line in main.splitlines()
        if "R.permute_dims(" in line and "(1, 1, 1, 1)" not in line
    ]
    assert len(big_transposes) == 2, big_transposes  # the input to NHWC, the output back
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (got,) = art.load(threads=1).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


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


def test_the_cpu_build_runs_main_as_generated_code(tmp_path: Path) -> None:
    import tvm

    from infer.artifact.manifest import LIBRARY_FILE

    model = onnx_models.conv_net()
    path = save(model, tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    for pipeline, generated in (("cpu-default", True), ("cpu-naive", False)):
        art = infer.compile(path, output=tmp_path / pipeline, pipeline=pipeline)
        assert art.manifest.pipeline["vm_exec_mode"] == ("compiled" if generated else "bytecode")
        # The VM lists a generated function as such; bytecode it prints instruction by instruction.
        text = tvm.runtime.load_module(str(art.path / LIBRARY_FILE))["as_text"]()
        assert ("@main num_inputs=" in text and "vm_tir_func" in text.split("\n")[0]) == generated
        (got,) = art.load(threads=1).run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        shown = CliRunner().invoke(cli, ["--quiet", "inspect", str(art.path)])
        how = "as generated code" if generated else "by the VM's bytecode interpreter"
        assert f"pipeline: {pipeline}, the graph run {how}" in shown.output
