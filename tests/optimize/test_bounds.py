"""No compiled gather reads, and no compiled scatter writes, outside its buffer.

An out-of-range index given as a model input is refused with InputError (as ONNX Runtime
refuses it); one computed inside the model is clipped into the dim, never a wild access: TVM's
own take read any address (SIGSEGV) and its scatters wrote past the output (SIGSEGV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.errors import InputError
from tests.conftest import save

TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
IDS = np.array([0, 3, -1, -4, 10**9, -(10**9), 2**62], np.int64)


def model(
    nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], dims: list[str | int]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "indexing",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [
            numpy_helper.from_array(TABLE, "table"),
            numpy_helper.from_array(np.zeros((), np.int64), "zero"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def clipped(ids: np.ndarray, size: int) -> np.ndarray:
    return np.clip(np.where(ids < 0, ids + size, ids), 0, size - 1)


def test_an_out_of_range_index_input_is_an_input_error(tmp_path: Path) -> None:
    gather = model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0, name="embed")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        ["n", 3],
    )
    session = infer.compile(save(gather, tmp_path), output=tmp_path / "a.infer").load(threads=1)
    assert session.manifest.index_checks == [
        {"input": "ids", "op": "Gather", "node": "embed", "extents": [4]}
    ]
    (got,) = session.run(None, {"ids": IDS[:4]})
    np.testing.assert_array_equal(got, np.take(TABLE, IDS[:4], axis=0))
    with pytest.raises(
        InputError,
        match=r"input 'ids': index -1000000000 is out of range for Gather node 'embed', which "
        r"indexes a dim of size 4 \(valid: -4..3\)",
    ):
        session.run(None, {"ids": IDS})


def test_an_out_of_range_computed_index_is_clipped_not_a_wild_read(tmp_path: Path) -> None:
    # ids + 0: computed in the model, so not checked as an input; clipped by the compiled take.
    gather = model(
        [
            helper.make_node("Add", ["ids", "zero"], ["computed"]),
            helper.make_node("Gather", ["table", "computed"], ["y"], axis=0),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        ["n", 3],
    )
    session = infer.compile(save(gather, tmp_path), output=tmp_path / "a.infer").load(threads=1)
    assert session.manifest.index_checks == []
    (got,) = session.run(None, {"ids": IDS})
    np.testing.assert_array_equal(got, np.take(TABLE, clipped(IDS, 4), axis=0))


@pytest.mark.parametrize("op", ["ScatterElements", "ScatterND"])
def test_a_scatter_never_writes_outside_its_output(tmp_path: Path, op: str) -> None:
    rows = np.array([1, 2**40, -9], np.int64)  # rows 1, 3 (clipped) and 0 (clipped): no repeats
    if op == "ScatterElements":  # one element per column, scattered along axis 0
        ids_shape, updates = [1, 3], np.ones((1, 3), np.float32)
        feed = rows[:3].reshape(1, 3)
    else:  # whole rows
        ids_shape, updates = [3, 1], np.arange(1, 10, dtype=np.float32).reshape(3, 3)
        feed = rows.reshape(3, 1)
    scatter = model(
        [
            helper.make_node("Add", ["ids", "zero"], ["computed"]),
            helper.make_node(op, ["table", "computed", "updates"], ["y"], name="scatter"),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape),
            helper.make_tensor_value_info("updates", TensorProto.FLOAT, list(updates.shape)),
        ],
        [4, 3],
    )
    session = infer.compile(save(scatter, tmp_path), output=tmp_path / "a.infer", check=False).load(
        threads=1
    )
    for _ in range(20):  # a wild write shows up as a crash or damage within a few runs
        (got,) = session.run(None, {"ids": feed, "updates": updates})
    want = TABLE.copy()
    index = clipped(feed, 4)
    if op == "ScatterElements":
        want[index[0], np.arange(3)] = updates[0]
    else:
        for row, update in zip(index[:, 0], updates, strict=True):
            want[row] = update
    np.testing.assert_array_equal(got, want)
