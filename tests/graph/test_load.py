"""Loading: checker, garbage files, and external data that must stay inside the model's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from infer.errors import ModelError
from infer.graph.load import load_model
from tests import onnx_models


def external_model(
    directory: Path, location: str, *, offset: int = 0, length: int | None = None
) -> Path:
    """Write y = x + W where W (4 float32) lives in external data at location."""
    w = np.arange(4, dtype=np.float32)
    tensor = numpy_helper.from_array(w, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {
        "location": location,
        "offset": str(offset),
        "length": str(w.nbytes if length is None else length),
    }
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads_and_matches_onnxruntime(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(
        b"\0" * 8 + np.arange(4, dtype=np.float32).tobytes()
    )
    path = external_model(tmp_path, "weights/w.bin", offset=8)
    loaded = load_model(path)
    (w,) = [numpy_helper.to_array(t) for t in loaded.proto.graph.initializer]
    np.testing.assert_array_equal(w, np.arange(4, dtype=np.float32))
    x = np.ones(4, np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = ort.InferenceSession(loaded.proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_external_data_with_dotdot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    path = external_model(model_dir, "../secret.bin")
    with pytest.raises(
        ModelError, match=r"tensor 'W': external data location '\.\./secret\.bin' contains '\.\.'"
    ):
        load_model(path)


def test_external_data_with_an_absolute_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "abs.bin"
    target.write_bytes(b"\0" * 16)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    path = external_model(model_dir, str(target))
    with pytest.raises(ModelError, match=r"tensor 'W': .* is an absolute path"):
        load_model(path)


def test_external_data_through_a_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 16)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.symlink(outside, model_dir / "w.bin")
    path = external_model(model_dir, "w.bin")
    with pytest.raises(
        ModelError,
        match=r"tensor 'W': external data location 'w\.bin' resolves to .*outside the model's folder",
    ):
        load_model(path)


def test_external_data_offset_past_the_end_is_refused(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    path = external_model(tmp_path, "w.bin", offset=12)
    with pytest.raises(
        ModelError,
        match=r"tensor 'W': external data offset=12 length=16 is past the end of 'w\.bin' \(16 bytes\)",
    ):
        load_model(path)


def test_external_data_length_must_fit_the_dims(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    path = external_model(tmp_path, "w.bin", length=8)
    with pytest.raises(
        ModelError,
        match=r"tensor 'W': external data holds 8 bytes, its dims \[4\] and dtype need 16",
    ):
        load_model(path)


def test_external_data_missing_file(tmp_path: Path) -> None:
    path = external_model(tmp_path, "nothere.bin")
    with pytest.raises(
        ModelError, match=r"tensor 'W': external data file 'nothere\.bin' does not exist"
    ):
        load_model(path)


def test_external_data_from_bytes_is_refused(tmp_path: Path) -> None:
    path = external_model(tmp_path, "w.bin")
    with pytest.raises(
        ModelError, match=r"tensor 'W' has external data, which needs a model file path"
    ):
        load_model(path.read_bytes())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"ONNX checker rejected the model|no graph"),
        (b"\xff\xfe garbage \x00\x01" * 50, r"not a valid ONNX model"),
    ],
)
def test_garbage_files_are_model_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_truncated_model_is_a_model_error(tmp_path: Path) -> None:
    data = onnx_models.conv_net().SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelError, match=str(path.name)):
            load_model(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no such file"):
        load_model(tmp_path / "none.onnx")
    with pytest.raises(ModelError, match=r"is a directory"):
        load_model(tmp_path)


def test_checker_runs_in_full(tmp_path: Path) -> None:
    model = onnx_models.mlp()
    model.graph.node[0].input[1] = "not_defined"  # an input nothing produces
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"ONNX checker rejected the model"):
        load_model(path)


def test_sha256_is_stable_and_content_based(tmp_path: Path) -> None:
    model = onnx_models.mlp()
    a = load_model(model.SerializeToString()).sha256
    onnx.save(model, tmp_path / "m.onnx")
    assert load_model(tmp_path / "m.onnx").sha256 == a
    other = onnx_models.mlp(hidden=8)
    assert load_model(other).sha256 != a


def test_a_model_only_strict_shape_inference_objects_to_loads(tmp_path: Path) -> None:
    # onnx's own function body of MeanVarianceNormalization-13 fails strict inference;
    # ONNX Runtime runs the model, and so does infer.
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MeanVarianceNormalization", ["x"], ["y"])],
        "mvn",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 2, 2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(model, full_check=True)
    assert (
        load_model(model.SerializeToString()).proto.graph.node[0].op_type
        == "MeanVarianceNormalization"
    )
