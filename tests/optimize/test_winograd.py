"""3x3 convolutions as Winograd F(4x4, 3x3): the transforms against a direct correlation, and
compiled models against ONNX Runtime, with what converts and what stays direct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.optimize import winograd
from infer.runtime import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


def test_transform_matrices_compute_a_3x3_correlation() -> None:
    """A^T [(G g G^T) * (B^T d B)] A is the valid 3x3 correlation of a 6x6 tile (float64)."""
    rng = np.random.default_rng(0)
    b_t = np.array(winograd._B_T, np.float64)
    g = np.array([[float(v) for v in row] for row in winograd._G])
    a_t = np.array(winograd._A_T, np.float64)
    for _ in range(5):
        d, w = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
        got = a_t @ ((g @ w @ g.T) * (b_t @ d @ b_t.T)) @ a_t.T
        want = np.array([[np.sum(d[i : i + 3, j : j + 3] * w) for j in range(4)] for i in range(4)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _conv(
    name: str, source: str, channels: int, outputs: int, rng: np.random.Generator,
    bias: bool = True, **attrs: object,
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:  # fmt: skip
    groups = int(attrs.get("group", 1))  # type: ignore[call-overload]
    w = rng.standard_normal((outputs, channels // groups, 3, 3)).astype(np.float32)
    weights = [numpy_helper.from_array((w / np.sqrt(9 * channels)).astype(np.float32), f"{name}_w")]
    inputs = [source, f"{name}_w"]
    if bias:
        weights.append(
            numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), f"{name}_b")
        )
        inputs.append(f"{name}_b")
    return helper.make_node("Conv", inputs, [name], kernel_shape=[3, 3], **attrs), weights


def _model(
    nodes: list, weights: list, x_shape: list[int], outputs: dict[str, list]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def eligible_model(
    batch: int | str = 2, height: int | str = 14, width: int | str = 15
) -> onnx.ModelProto:
    """Three 3x3 stride-1 convolutions of 16 -> 32 -> 32 -> 16 channels on a 14x15 image, batch
    2 (tiles cut at the edges): padded with bias and ReLU, unpadded with Clip (ReLU6) and no
    bias, asymmetric padding with its output read twice (no fold) and added to the input's
    channel means. Any of the input's batch, height and width may be symbolic (a dim name)."""
    rng = np.random.default_rng(1)
    a, wa = _conv("a", "x", 16, 32, rng, pads=[1, 1, 1, 1])
    b, wb = _conv("b", "a_relu", 32, 32, rng, bias=False, pads=[0, 0, 0, 0])
    c, wc = _conv("c", "b_clip", 32, 16, rng, pads=[1, 1, 2, 1])
    nodes = [
        a, helper.make_node("Relu", ["a"], ["a_relu"]),
        b, helper.make_node("Clip", ["b", "low", "high"], ["b_clip"]),
        c, helper.make_node("Relu", ["c"], ["c_relu"]),
        helper.make_node("GlobalAveragePool", ["x"], ["x_mean"]),
        helper.make_node("Add", ["c_relu", "x_mean"], ["y"]),
    ]  # fmt: skip
    constants = [
        numpy_helper.from_array(np.array(0.0, np.float32), "low"),
        numpy_helper.from_array(np.array(6.0, np.float32), "high"),
    ]
    out = [
        batch,
        16,
        height - 1 if isinstance(height, int) else "out_height",
        width - 2 if isinstance(width, int) else "out_width",
    ]
    return _model(nodes, wa + wb + wc + constants, [batch, 16, height, width], {"y": out, "c": out})


def direct_model() -> onnx.ModelProto:
    """3x3 convolutions Winograd does not take, side by side on one input: stride 2, dilation
    2, groups 2, 8 input channels, and an output under MIN_OUTPUT_PIXELS."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Slice", ["x", "c0", "c8", "c1"], ["x8"]),
        helper.make_node("Slice", ["x", "c00", "c1010", "c23"], ["x_small"]),
    ]
    weights = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("c0", [0]), ("c8", [8]), ("c1", [1]), ("c00", [0, 0]), ("c1010", [10, 10]),
                     ("c23", [2, 3]))
    ]  # fmt: skip
    for name, source, channels, attrs in (
        ("strided", "x", 16, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("dilated", "x", 16, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
        ("grouped", "x", 16, {"group": 2, "pads": [1, 1, 1, 1]}),
        ("thin", "x8", 8, {"pads": [1, 1, 1, 1]}),
        ("small", "x_small", 16, {"pads": [1, 1, 1, 1]}),
    ):
        node, w = _conv(name, source, channels, 16, rng, **attrs)
        nodes.append(node)
        weights += w
    outputs = {"strided": [1, 16, 8, 8], "dilated": [1, 16, 16, 16], "grouped": [1, 16, 16, 16],
               "thin": [1, 16, 16, 16], "small": [1, 16, 10, 10]}  # fmt: skip
    return _model(nodes, weights, [1, 16, 16, 16], outputs)


def compile_and_compare(
    model: onnx.ModelProto,
    tmp_path: Path,
    shapes: list[list[int]] | None = None,
    **options: object,
) -> dict:
    """Compile model, run it against ONNX Runtime on seeded inputs of each of shapes (by
    default the model's static input shape); return the offload counts."""
    artifact = infer.compile(model, output=tmp_path / "model.infer", **options)  # type: ignore[arg-type]
    session = infer.Session(artifact.path, threads=2)
    reference = ort.InferenceSession(model.SerializeToString())
    static = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    for shape in shapes or [static]:
        feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        want = reference.run(None, feeds)
        got = session.run(None, feeds)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))
    return dict(artifact.manifest.pipeline["offload"])


def test_eligible_convolutions_run_as_winograd(tmp_path: Path) -> None:
    counts = compile_and_compare(eligible_model(), tmp_path)
    assert counts.get("winograd") == 3


def test_a_symbolic_batch_runs_as_winograd(tmp_path: Path) -> None:
    counts = compile_and_compare(eligible_model(batch="batch"), tmp_path, [[3, 16, 14, 15]])
    assert counts.get("winograd") == 3


def test_a_symbolic_height_and_width_run_as_winograd(tmp_path: Path) -> None:
    """One build, images of three sizes (a symbolic side counts as 64 in the size rule)."""
    model = eligible_model(batch="n", height="height", width="width")
    shapes = [[1, 16, 14, 15], [2, 16, 23, 9], [1, 16, 5, 34]]
    assert compile_and_compare(model, tmp_path, shapes).get("winograd") == 3


def test_other_convolutions_stay_direct(tmp_path: Path) -> None:
    counts = compile_and_compare(direct_model(), tmp_path)
    assert "winograd" not in counts and counts["conv2d"] == 5


def test_the_direct_pipeline_has_no_winograd(tmp_path: Path) -> None:
    counts = compile_and_compare(eligible_model(), tmp_path, pipeline="cpu-direct")
    assert "winograd" not in counts and counts["conv2d"] == 3
