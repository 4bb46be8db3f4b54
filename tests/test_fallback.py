"""What TVM cannot take runs on ONNX Runtime, per segment, out loud; --no-fallback refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import infer
from infer.cli import cli
from infer.errors import (
    ArtifactError,
    CompileError,
    FallbackWarning,
    InputError,
    UnsupportedOpError,
)
from tests import onnx_models
from tests.conftest import save


def ort_run(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def test_an_op_tvm_lacks_runs_on_onnxruntime_between_tvm_segments(tmp_path: Path) -> None:
    path = save(onnx_models.lp_norm_between(), tmp_path)
    with pytest.warns(
        FallbackWarning,
        match=r"1 of 3 nodes, 33\.3% of the FLOPs run on ONNX Runtime \(LpNormalization x1\)",
    ):
        art = infer.compile(path, output=tmp_path / "a.infer")
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    kinds = [(s["kind"], s.get("dir") or s.get("file")) for s in art.manifest.segments]
    assert kinds == [("tvm", "tvm0"), ("onnxruntime", "fallback/1.onnx"), ("tvm", "tvm2")]
    assert art.manifest.segments[1]["reasons"] == ["TVM has no converter for LpNormalization"]
    session = art.load(threads=1)
    assert session.placement() == {
        "segments": ["tvm", "onnxruntime", "tvm"],
        "tvm_nodes": 2,
        "onnxruntime_nodes": 1,
        "onnxruntime_op_types": {"LpNormalization": 1},
        "tvm_node_share": pytest.approx(2 / 3),
        "onnxruntime_flops_share": pytest.approx(1 / 3),
    }
    rng = np.random.default_rng(11)
    for _ in range(3):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        got = session.run(None, {"x": x})
        want = ort_run(path, {"x": x})
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    (c,) = session.run(["c"], {"x": x})
    np.testing.assert_allclose(c, -x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-5)


def test_no_fallback_refuses_listing_every_op(tmp_path: Path) -> None:
    path = save(onnx_models.lp_norm_between(), tmp_path)
    with pytest.raises(UnsupportedOpError, match="LpNormalization"):
        infer.compile(path, output=tmp_path / "a.infer", fallback=False)
    assert not (tmp_path / "a.infer").exists()


def test_a_node_the_importer_rejects_moves_to_onnxruntime(tmp_path: Path) -> None:
    path = save(onnx_models.reduce_with_input_axes(), tmp_path)
    with pytest.raises(
        CompileError, match=r"failed on op ReduceSum \(node 'reduce'\).*constant axes"
    ):
        infer.compile(path, output=tmp_path / "native.infer", fallback=False)
    with pytest.warns(FallbackWarning, match=r"ReduceSum x1"):
        art = infer.compile(path, output=tmp_path / "a.infer", check_dims={"a": 2})
    reasons = [r for s in art.manifest.segments for r in s.get("reasons", [])]
    assert any("Only constant axes" in r for r in reasons), reasons
    session = art.load(threads=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    for axes in ([0], [1], [-1]):
        feeds = {"x": x, "axes": np.array(axes, dtype=np.int64)}
        (got,) = session.run(None, feeds)
        (want,) = ort_run(path, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_changed_fallback_model_is_refused(tmp_path: Path) -> None:
    path = save(onnx_models.lp_norm_between(), tmp_path)
    with pytest.warns(FallbackWarning):
        art = infer.compile(path, output=tmp_path / "a.infer", check=False)
    segment = art.path / "fallback" / "1.onnx"
    segment.write_bytes(segment.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"'fallback/1\.onnx' has sha256"):
        infer.load(art.path)


@pytest.mark.filterwarnings("default::infer.errors.FallbackWarning")
def test_cli_states_the_fallback_and_inspect_lists_segments(tmp_path: Path) -> None:
    path = save(onnx_models.lp_norm_between(), tmp_path)
    out_dir = tmp_path / "a.infer"
    result = CliRunner().invoke(cli, ["compile", str(path), "-o", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert (
        "1 of 3 nodes, 33.3% of the FLOPs run on ONNX Runtime (LpNormalization x1)" in result.stderr
    )
    result = CliRunner().invoke(cli, ["inspect", str(out_dir)])
    assert (
        "segment 1: onnxruntime 1 nodes, 6 FLOPs (LpNormalization 1)  fallback/1.onnx"
        in result.stdout
    )
    assert "why not TVM: TVM has no converter for LpNormalization" in result.stdout
    result = CliRunner().invoke(cli, ["inspect", str(out_dir), "--json"])
    assert [s["kind"] for s in json.loads(result.stdout)["segments"]] == [
        "tvm",
        "onnxruntime",
        "tvm",
    ]
    result = CliRunner().invoke(cli, ["compile", str(path), "--no-fallback"])
    assert result.exit_code == 2 and "LpNormalization" in result.stderr


def test_a_legalized_lstm_runs_wholly_on_tvm(tmp_path: Path) -> None:
    path = save(onnx_models.lstm_between(), tmp_path)
    art = infer.compile(path, output=tmp_path / "a.infer", fallback=False)
    assert art.manifest.segments == []
    session = art.load(threads=1)
    x = np.random.default_rng(4).standard_normal((5, 1, 3)).astype(np.float32)
    for g, w in zip(session.run(None, {"x": x}), ort_run(path, {"x": x}), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_an_op_tvm_gets_wrong_runs_on_onnxruntime_or_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou"], ["selected"])],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 4]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3])],
        [
            numpy_helper.from_array(np.array([3], np.int64), "k"),
            numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
        ],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    with pytest.raises(UnsupportedOpError, match="NonMaxSuppression x1"):
        infer.compile(path, output=tmp_path / "native.infer", fallback=False)
    with pytest.warns(FallbackWarning, match="NonMaxSuppression"):
        art = infer.compile(path, output=tmp_path / "a.infer")
    assert art.manifest.segments[0]["reasons"] == ["TVM's NonMaxSuppression returns no boxes"]
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3], [5, 5, 6, 6]]], np.float32)
    feeds = {"boxes": boxes, "scores": np.array([[[0.9, 0.8, 0.7, 0.1]]], np.float32)}
    (got,) = art.load(threads=1).run(None, feeds)
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 2], [0, 0, 3]])


def sequence_model() -> onnx.ModelProto:
    """A model with a sequence input and a sequence output, and tensor work between."""
    seq = helper.make_tensor_sequence_value_info
    nodes = [
        helper.make_node("SequenceAt", ["parts", "first"], ["head"]),
        helper.make_node("Relu", ["head"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["y"]),
        helper.make_node("SplitToSequence", ["y"], ["pieces"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "sequences",
        [
            seq("parts", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            seq("pieces", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor(name="first", data_type=TensorProto.INT64, dims=[], vals=[1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sequence_inputs_and_outputs_run_on_onnx_runtime_said_out_loud(tmp_path: Path) -> None:
    model = sequence_model()
    with pytest.warns(FallbackWarning, match=r"\(SequenceAt x1, SplitToSequence x1\)"):
        art = infer.compile(model, output=tmp_path / "seq.infer")  # parity on random sequences
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    spec = art.manifest.inputs[0]
    assert (spec.container, spec.dtype, spec.shape) == ("sequence", "float32", (2, 3))
    assert art.manifest.outputs[1].container == "sequence"
    session = art.load(threads=1)
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(3)]
    feeds = {"parts": parts, "x": rng.standard_normal((2, 3)).astype(np.float32)}
    y, pieces = session.run(None, feeds)
    want_y, want_pieces = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(y, want_y, rtol=1e-6)
    assert len(pieces) == len(want_pieces) == 2
    for got, want in zip(pieces, want_pieces, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(InputError, match=r"input 'parts': expected a list \(an ONNX sequence\)"):
        session.run(None, {"parts": parts[0], "x": feeds["x"]})
    with pytest.raises(InputError, match=r"input 'parts\[1\]': expected float32, got float64"):
        session.run(None, {"parts": [parts[0], parts[1].astype(np.float64)], "x": feeds["x"]})
    with pytest.raises(UnsupportedOpError):
        infer.compile(model, output=tmp_path / "native.infer", fallback=False)


def test_a_classifier_with_zipmap_outputs_runs_its_zipmap_on_onnx_runtime(tmp_path: Path) -> None:
    # skl2onnx's default classifier output is a sequence of maps (ZipMap): a common real model.
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    model = to_onnx(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), x[:1])
    with pytest.warns(FallbackWarning, match=r"1 of 8 nodes run on ONNX Runtime \(ZipMap x1\)"):
        art = infer.compile(model, output=tmp_path / "zipmap.infer")
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    assert art.manifest.outputs[1].container == "sequence(map(int64))"
    labels, probabilities = art.load(threads=1).run(None, {"X": x[:3]})
    want_labels, want_probabilities = ort.InferenceSession(model.SerializeToString()).run(
        None, {"X": x[:3]}
    )
    np.testing.assert_array_equal(labels, want_labels)
    assert [sorted(p) for p in probabilities] == [sorted(p) for p in want_probabilities]
    for got, want in zip(probabilities, want_probabilities, strict=True):
        np.testing.assert_allclose(
            [got[k] for k in sorted(got)], [want[k] for k in sorted(want)], rtol=1e-5
        )
