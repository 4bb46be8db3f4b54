"""Compile-time caps: node count, constant size and tensor size, with their overrides."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.errors import ModelError
from infer.graph.constants import fold_constants
from infer.graph.load import load_model
from tests import onnx_models
from tests.conftest import save


def expand_to(shape: list[int]) -> onnx.ModelProto:
    """Return x -> Expand(x, shape) with the shape a constant: the output size is known."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"], name="grow")],
        "expand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [f"d{i}" for i in range(len(shape))]
            )
        ],
        [numpy_helper.from_array(np.asarray(shape, np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_tensor_past_the_cap_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = save(expand_to([1 << 20, 1 << 20]), tmp_path)
    with pytest.raises(
        ModelError,
        match=r"tensor 'y' \(output of Expand node 'grow'\) of shape \[1048576, 1048576\] would "
        r"be 4.0 TiB, over the limit of 4.0 GiB per tensor \(raise it with INFER_MAX_TENSOR_BYTES\)",
    ):
        infer.compile(path, output=tmp_path / "out.infer")
    assert not (tmp_path / "out.infer").exists()


def test_the_tensor_cap_can_be_lowered_and_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(expand_to([64, 64]), tmp_path)  # 16 KiB
    monkeypatch.setenv("INFER_MAX_TENSOR_BYTES", "1024")
    with pytest.raises(ModelError, match=r"16.0 KiB, over the limit of 1.0 KiB"):
        infer.compile(path, output=tmp_path / "out.infer")
    monkeypatch.setenv("INFER_MAX_TENSOR_BYTES", str(1 << 20))
    session = infer.compile(path, output=tmp_path / "out.infer").load()
    (y,) = session.run(None, {"x": np.asarray([3.0], np.float32)})
    np.testing.assert_array_equal(y, np.full((64, 64), 3.0, np.float32))


def test_node_and_constant_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(onnx_models.mlp(), tmp_path)
    monkeypatch.setenv("INFER_MAX_NODES", "3")
    with pytest.raises(
        ModelError, match=r"more than 3 nodes, the limit \(raise it with INFER_MAX_NODES\)"
    ):
        load_model(path)
    monkeypatch.delenv("INFER_MAX_NODES")
    monkeypatch.setenv("INFER_MAX_CONSTANT_BYTES", "1000")
    with pytest.raises(
        ModelError, match=r"tensor 'fc1/W' of dims \[32, 16\] is 2.0 KiB, over the limit of 1000 B"
    ):
        load_model(path)
    monkeypatch.setenv("INFER_MAX_CONSTANT_BYTES", "zero")
    with pytest.raises(
        infer.InferError, match="INFER_MAX_CONSTANT_BYTES: expected a positive integer, got 'zero'"
    ):
        load_model(path)


def test_a_constant_with_dims_no_memory_holds_is_refused_before_its_data_is_read(
    tmp_path: Path,
) -> None:
    model = onnx_models.mlp()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    weight.dims[:] = [1 << 40, 16]
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(
        ModelError, match=r"tensor 'fc1/W' of dims \[1099511627776, 16\] is 64.0 TiB"
    ):
        load_model(path)


@pytest.mark.parametrize("extra", [-4, 4])
def test_a_tensor_holding_more_or_less_data_than_its_dims_is_refused(
    tmp_path: Path, extra: int
) -> None:
    model = onnx_models.mlp()
    bias = model.graph.initializer[1]
    bias.raw_data = bias.raw_data[:extra] if extra < 0 else bias.raw_data + b"\0" * extra
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(
        ModelError,
        match=r"tensor 'fc1/b' holds 1\d\d bytes of data, its dims \[32\] and dtype need 128",
    ):
        load_model(path, check=False)


@pytest.mark.parametrize(
    ("op", "inputs"),
    [
        ("ConstantOfShape", [np.asarray([1 << 27], np.int64)]),
        (
            "Range",
            [np.asarray(0, np.int64), np.asarray(1 << 26, np.int64), np.asarray(1, np.int64)],
        ),
        ("Tile", [np.ones((2, 2), np.float32), np.asarray([1 << 12, 1 << 12], np.int64)]),
    ],
)
def test_folding_never_evaluates_what_would_be_too_large(op: str, inputs: list[np.ndarray]) -> None:
    # Each output is 256-512 MiB: too large to fold, and it must not even be computed.
    names = [f"c{i}" for i in range(len(inputs))]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"])],
        "grow",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, n) for n, v in zip(names, inputs, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tracemalloc.start()
    try:
        folded = fold_constants(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (producer,) = [n for n in folded.graph.node if "y" in n.output]
    assert producer.op_type == op
    assert peak < 64 << 20
