"""Session: input checks with ONNX Runtime-grade messages, threads, and thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer.errors import InputError
from infer.reference import ReferenceSession
from tests import onnx_models
from tests.conftest import save


@pytest.fixture(scope="module")
def multi_io_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("multi")
    path = save(onnx_models.multi_io(), directory)
    return infer.compile(path, output=directory / "m.infer", check_dims={"N": 4, "K": 2}).path


def feeds() -> dict[str, np.ndarray]:
    return {
        "a": np.ones((4, 4), np.float32),
        "idx": np.array([0, 3], np.int64),
        "mask": np.ones((4, 4), bool),
    }


def test_missing_inputs_are_listed(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    f = feeds()
    del f["idx"], f["mask"]
    with pytest.raises(InputError, match=r"missing input\(s\): 'idx', 'mask'"):
        sess.run(None, f)


def test_unknown_input_names_list_the_valid_ones(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(
        InputError, match=r"unknown input name\(s\) 'b'; the model's inputs are 'a', 'idx', 'mask'"
    ):
        sess.run(None, {**feeds(), "b": np.ones(1)})


def test_wrong_dtype(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(InputError, match=r"^input 'a': expected float32, got float64$"):
        sess.run(None, {**feeds(), "a": np.ones((4, 4))})


def test_wrong_rank(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(
        InputError, match=r"input 'a': expected rank 2 \(N, 4\), got rank 3 \(1, 4, 4\)"
    ):
        sess.run(None, {**feeds(), "a": np.ones((1, 4, 4), np.float32)})


def test_each_mismatched_dim_is_named_with_its_index(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(
        InputError,
        match=r"input 'a': shape \(4, 5\) does not match \(N, 4\): dim 1: expected 4, got 5",
    ):
        sess.run(None, {**feeds(), "a": np.ones((4, 5), np.float32)})


def test_symbolic_dims_must_agree_across_inputs(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(
        InputError, match=r"input 'mask': .*dim 0 \('N'\): expected 4 as in input 'a' dim 0, got 3"
    ):
        sess.run(None, {**feeds(), "mask": np.ones((3, 4), bool)})


def test_unknown_output_name(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(
        InputError,
        match=r"unknown output name\(s\) 'nope'; the model's outputs are 'gathered', 'count'",
    ):
        sess.run(["nope"], feeds())


def test_not_an_array(multi_io_artifact: Path) -> None:
    sess = infer.load(multi_io_artifact)
    with pytest.raises(
        InputError, match=r"input 'a': expected a numpy array of float32, got object"
    ):
        sess.run(None, {**feeds(), "a": object()})
    with pytest.raises(InputError, match=r"feeds must be a dict"):
        sess.run(None, [np.ones(1)])  # type: ignore[arg-type]


def test_feeds_are_checked_after_a_run_that_passed(multi_io_artifact: Path) -> None:
    """A run's feeds laid out as the last accepted ones skip the checks: all else is checked."""
    sess = infer.load(multi_io_artifact)
    expected = sess.run(None, feeds())
    bad = {
        "a": np.ones((4, 5), np.float32),  # same dtype, another shape
        "idx": np.array([0, 4], np.int64),  # same layout, an index out of range
        "mask": np.ones((4, 4), np.uint8),  # same shape, another dtype
    }
    for name, value in bad.items():
        with pytest.raises(InputError, match=rf"input '{name}'"):
            sess.run(None, {**feeds(), name: value})
    with pytest.raises(InputError, match=r"unknown input name\(s\) 'extra'"):
        sess.run(None, {"a": feeds()["a"], "idx": feeds()["idx"], "extra": 1})
    with pytest.raises(InputError, match=r"missing input\(s\): 'mask'"):
        sess.run(None, {"a": feeds()["a"], "idx": feeds()["idx"]})
    # A strided view and an array subclass of the accepted shape run as their contiguous values.
    strided = {**feeds(), "a": np.ones((4, 8), np.float32)[:, ::2]}
    subclass = {**feeds(), "a": np.ones((4, 4), np.float32).view(np.matrix)}
    for f in (strided, subclass):
        for got, want in zip(sess.run(None, f), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_runs_after_the_first_skip_the_checks_and_still_refuse_bad_feeds(tmp_path: Path) -> None:
    """A whole-model run with feeds laid out as the last run's goes straight to the library;
    any other feeds take the checked path, with its messages."""
    model = onnx_models.mlp(batch="N")
    sess = infer.compile(save(model, tmp_path), output=tmp_path / "m.infer").load()
    reference = ort.InferenceSession(model.SerializeToString())
    (spec,) = sess.get_inputs()
    shape = [d if isinstance(d, int) else 3 for d in spec.shape]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    sess.run(None, {spec.name: x})
    checks = sess._check_feeds
    sess._check_feeds = None  # type: ignore[assignment]  # the checked path would fail now
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(
            sess.run(None, {spec.name: x})[0], reference.run(None, {spec.name: x})[0], atol=1e-6
        )
    sess._check_feeds = checks
    bad = [
        ({spec.name: x.astype(np.float64)}, r"expected float32, got float64"),
        ({spec.name: x[None]}, r"expected rank 2"),
        ({}, rf"missing input\(s\): '{spec.name}'"),
        ({spec.name: x, "extra": x}, r"unknown input name\(s\) 'extra'"),
        ({spec.name: "x"}, rf"input '{spec.name}'"),  # not an array
    ]
    for feed, message in bad:
        with pytest.raises(InputError, match=message):
            sess.run(None, feed)
    # A strided view, a subclass and a new batch size run as their contiguous values.
    wide = np.repeat(x, 2, axis=1)
    for feed in (wide[:, ::2], x.view(np.matrix), np.concatenate([x, x])):
        np.testing.assert_allclose(
            sess.run(None, {spec.name: feed})[0],
            reference.run(None, {spec.name: np.ascontiguousarray(feed)})[0],
            atol=1e-6,
        )


def test_run_from_many_threads_matches_serial(tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(batch=1), tmp_path)
    sess = infer.compile(path, output=tmp_path / "c.infer").load(threads=2)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    serial = [sess.run(None, {"x": x})[0] for x in inputs]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = [sess.run(None, {"x": inputs[i]})[0] for _ in range(200)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        for out in results[i]:
            np.testing.assert_array_equal(out, serial[i])


def test_threads_argument_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(onnx_models.mlp(), tmp_path)
    art = infer.compile(path, output=tmp_path / "m.infer")
    assert infer.load(art.path, threads=1).threads == 1
    monkeypatch.setenv("INFER_NUM_THREADS", "2")
    assert infer.load(art.path).threads == 2
    monkeypatch.setenv("INFER_NUM_THREADS", "zero")
    with pytest.raises(
        infer.InferError, match=r"INFER_NUM_THREADS: expected a positive integer, got 'zero'"
    ):
        infer.load(art.path)
    with pytest.raises(infer.InferError, match=r"threads: expected a positive integer, got 0"):
        infer.load(art.path, threads=0)


def test_outputs_that_alias_a_weight_are_copies(tmp_path: Path) -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["w_out"]), helper.make_node("Relu", ["x"], ["y"])],
        "alias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
        ],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = infer.compile(save(model, tmp_path), output=tmp_path / "a.infer").load()
    x = np.ones((2, 3), np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    for _ in range(3):  # the first run, and the runs after it that skip the checks
        out, _ = sess.run(None, {"x": x})
        np.testing.assert_array_equal(out, want)
        out += 100.0


def test_an_output_that_is_an_input_survives_the_next_run(tmp_path: Path) -> None:
    # Inputs go through buffers the session keeps and refills: an output that is one of them
    # must be a copy, or the next run would change the caller's array.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Neg", ["x"], ["neg"])],
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("same", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["n", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = infer.compile(save(model, tmp_path), output=tmp_path / "p.infer").load()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    runs = [(x, sess.run(None, {"x": x})) for x in (a, a + 100, a + 200)]
    for x, (same, neg) in runs:
        np.testing.assert_array_equal(same, x)
        np.testing.assert_array_equal(neg, -x)
    # A new shape gets a new buffer; strided and non-contiguous feeds are copied in.
    b = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    same, neg = sess.run(None, {"x": b})
    np.testing.assert_array_equal(same, b)
    np.testing.assert_array_equal(neg, -b)


def test_inputs_numpy_cannot_view_through_dlpack_still_run(tmp_path: Path) -> None:
    # bfloat16 (ml_dtypes) has no DLPack view in numpy: such inputs are copied in by TVM.
    import ml_dtypes

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = infer.compile(save(model, tmp_path), output=tmp_path / "b.infer", check=False).load()
    x = np.array([[1.5, -2.0, 0.25], [3.0, 4.5, -0.5]], dtype=ml_dtypes.bfloat16)
    for _ in range(2):
        (y,) = sess.run(None, {"x": x})
        np.testing.assert_array_equal(y, x.astype(np.float32))


def test_weights_of_every_stored_type_load_as_they_were_given(tmp_path: Path) -> None:
    # Session reads each weight straight into its tensor; types numpy lacks (bf16) go through
    # safetensors' loader. Each weight comes back out unchanged through an Identity.
    import ml_dtypes

    rng = np.random.default_rng(0)
    weights = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "i64": rng.integers(-9, 9, (4,)).astype(np.int64),
        "u8": rng.integers(0, 255, (2, 2)).astype(np.uint8),
        "flag": np.array([True, False, True]),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
    }
    initializers = [numpy_helper.from_array(v, k) for k, v in weights.items() if k != "bf16"]
    initializers.append(
        helper.make_tensor(
            "bf16",
            TensorProto.BFLOAT16,
            [2, 3],
            weights["bf16"].view(np.uint16).tobytes(),
            raw=True,
        )
    )
    outputs = [
        helper.make_tensor_value_info(f"out_{i.name}", i.data_type, i.dims) for i in initializers
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            *(helper.make_node("Identity", [i.name], [f"out_{i.name}"]) for i in initializers),
        ],
        "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]), *outputs],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = infer.compile(save(model, tmp_path), output=tmp_path / "w.infer", check=False).load()
    x = np.array([-1.0, 2.0], np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x}), strict=True))
    for name, want in weights.items():
        assert got[f"out_{name}"].dtype == want.dtype, name
        np.testing.assert_array_equal(got[f"out_{name}"], want)


def test_running_does_not_pin_the_calling_thread(tmp_path: Path) -> None:
    import os

    before = os.sched_getaffinity(0)
    sess = infer.compile(save(onnx_models.mlp(), tmp_path), output=tmp_path / "m.infer").load(
        threads=2
    )
    sess.run(None, {"input:0": np.zeros((2, 16), np.float32)})
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_tvm_pool_has_a_thread_per_cpu_not_half(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = save(onnx_models.mlp(), tmp_path)
    infer.compile(path, output=tmp_path / "m.infer")
    code = (
        "import infer, tvm, numpy as np\n"
        f"s = infer.load({str(tmp_path / 'm.infer')!r}, threads=2)\n"
        "s.run(None, {'input:0': np.zeros((2, 16), np.float32)})\n"
        "print(tvm.runtime.num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip().splitlines()[-1]) == len(os.sched_getaffinity(0))


def test_a_rebuilt_artifact_at_the_same_path_runs_its_new_code(tmp_path: Path) -> None:
    # dlopen returns the library already loaded from a path: the second build must not run the
    # first build's code (here its argument count differs, elsewhere only its numbers would).
    out = tmp_path / "same.infer"
    first = infer.compile(onnx_models.mlp(), output=out).load()
    x = np.ones((2, 16), np.float32)
    first.run(None, {"input:0": x})
    second = infer.compile(onnx_models.mlp(hidden=8, classes=3), output=out).load()
    (got,) = second.run(None, {"input:0": x})
    (want,) = ReferenceSession(onnx_models.mlp(hidden=8, classes=3), 1).run({"input:0": x})
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
