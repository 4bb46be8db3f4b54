"""Gathers never read outside their table: an out-of-range index is clipped, not a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import infer
from tests.conftest import save


def test_an_out_of_range_embedding_index_reads_the_last_row(tmp_path: Path) -> None:
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer").load(threads=1)
    ids = np.array([0, 3, -1, -4, 10**9, -(10**9), 2**62], np.int64)
    (got,) = session.run(None, {"ids": ids})
    # In range (negative ones count from the end, as ONNX says): numpy's take. Beyond: clipped
    # into the table, where TVM's default "fast" take read any address (SIGSEGV).
    want = np.take(table, np.clip(np.where(ids < 0, ids + 4, ids), 0, 3), axis=0)
    np.testing.assert_array_equal(got, want)
