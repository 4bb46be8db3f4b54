"""The default CPU schedule: every loop nest parallel, numbers unchanged (checked by ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import infer
from infer.target import parse_target
from tests import onnx_models
from tests.conftest import save


def optimized_module(pipeline_name: str, model: Any) -> tuple[Any, Any, Any]:
    """Return (the Relax module, the build options, the TVM target) of model (an ONNX path or
    proto) imported and through the named pipeline's passes, for a 2-core CPU."""
    from infer.build import BuildOptions, _import, prepare_model
    from infer.graph.load import load_model
    from infer.optimize.pipeline import run_pipeline

    spec = parse_target("llvm", num_cores=2)
    options = BuildOptions.make(spec, pipeline=pipeline_name)
    mod, _ = _import(prepare_model(load_model(model), options), "model")
    target = spec.tvm_target()
    return run_pipeline(mod, options.pipeline, target), options, target


def lowered_prim_funcs(
    pipeline_name: str, model: Any = None, rules: list[Any] | None = None
) -> list[str]:
    """Return the TIR of every PrimFunc of model (an ONNX path or proto; the conv net by
    default) after the CPU lowering, scheduled by rules (ParallelVectorize by default)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight

    from infer.optimize.cpu_schedule import ParallelVectorize

    source = onnx_models.conv_net(batch=8) if model is None else model
    mod, options, target = optimized_module(pipeline_name, source)
    with target:
        mod = tvm.transform.Sequential(cpu_generic.legalize_passes(target))(mod)
        if options.pipeline.schedule == "parallel-vectorize":
            mod = dlight.ApplyDefaultSchedule(*(rules or [ParallelVectorize()]))(mod)
    return [f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_every_loop_nest_runs_parallel_and_most_are_vectorised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infer.optimize import cpu_schedule

    # The test's network is small: every loop nest counts as worth its threads.
    monkeypatch.setattr(cpu_schedule, "MIN_PARALLEL_WORK", 1)
    funcs = [f for f in lowered_prim_funcs("cpu-default") if "for " in f]
    assert funcs
    # parallel, or so small that one vector is the whole loop (a per-channel weight transform)
    scheduled = [f for f in funcs if "T.parallel(" in f or "T.vectorized(" in f]
    assert scheduled == funcs, [f for f in funcs if f not in scheduled][:1]
    assert sum("T.parallel(" in f for f in funcs) >= len(funcs) * 2 // 3
    naive = lowered_prim_funcs("cpu-naive")
    assert not any("T.parallel(" in f for f in naive)


def test_small_loop_nests_stay_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from infer.optimize import cpu_schedule

    monkeypatch.setattr(cpu_schedule, "MIN_PARALLEL_WORK", 1 << 40)
    funcs = [f for f in lowered_prim_funcs("cpu-default") if "for " in f]
    assert funcs and not any("T.parallel(" in f for f in funcs)


@pytest.mark.parametrize("pipeline", ["cpu-default", "cpu-naive"])
def test_both_cpu_pipelines_match_onnxruntime(pipeline: str, tmp_path: Path) -> None:
    path = save(onnx_models.conv_net(batch=3), tmp_path)
    art = infer.compile(path, output=tmp_path / "c.infer", pipeline=pipeline)
    assert art.manifest.pipeline["name"] == pipeline
    x = np.random.default_rng(9).standard_normal((3, 3, 16, 16)).astype(np.float32)
    (got,) = art.load(threads=2).run(None, {"x": x})
    (want,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_unknown_pipeline_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        infer.CompileError,
        match=r"pipeline 'fast' does not exist for target llvm; valid: cpu-default, cpu-direct, cpu-nchw, cpu-naive",
    ):
        infer.compile(onnx_models.mlp(), pipeline="fast")


def test_schedule_revision_is_in_the_cache_key() -> None:
    from infer.optimize import cpu_schedule, pipeline

    assert pipeline.SCHEDULE_REVISION == cpu_schedule.SCHEDULE_REVISION
    assert (
        pipeline.PIPELINES["cpu-default"].to_json()["schedule_revision"]
        == cpu_schedule.SCHEDULE_REVISION
    )


def test_an_epilogue_after_a_matmul_over_one_element_is_added_once(tmp_path: Path) -> None:
    """state + k (x) v: a MatMul over k=1 (an outer product) then Add. TVM drops the unit
    reduction axis but keeps its init; inlining the Add there added `state` twice."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["k", "v"], ["outer"]),
            helper.make_node("Add", ["state", "outer"], ["y"]),
        ],
        "outer_update",
        [
            helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 4, 8, 1]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 4, 1, 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 4, 8, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    art = infer.compile(model, check=False, output=tmp_path / "m.infer", threads=1)
    rng = np.random.default_rng(0)
    feeds = {
        "k": rng.standard_normal((2, 4, 8, 1)).astype(np.float32),
        "v": rng.standard_normal((2, 4, 1, 8)).astype(np.float32),
        "state": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
    }
    (got,) = art.load(threads=1).run(None, feeds)
    np.testing.assert_allclose(got, feeds["state"] + feeds["k"] @ feeds["v"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("perm", "shape"),
    [([0, 2, 3, 1], (3, 224, 224)), ([0, 3, 1, 2], (56, 56, 24)), ([0, 2, 1, 3], (12, 16, 32))],
)
def test_transposes_keep_their_inner_loops_and_values(
    perm: list[int], shape: tuple[int, ...], tmp_path: Path
) -> None:
    # An NCHW image turned NHWC (a minor dim of 3: not vectorised) ran as one fused loop over
    # every element, each index recovered by divisions; the outer loops alone are fused now.
    import tvm
    from tvm import te, topi

    from infer.optimize.cpu_schedule import ParallelVectorize

    batch = tvm.tirx.Var("batch", "int64")
    x = te.placeholder((batch, *shape), name="x")
    func = te.create_prim_func([x, topi.transpose(x, perm)])
    target = parse_target("llvm", num_cores=2).tvm_target()
    with target:
        scheduled = ParallelVectorize().apply(func, target, False).mod["main"].script()
    assert scheduled.count("T.parallel(") == 1
    assert scheduled.count("for ") >= 2  # the parallel loop and a loop or vector inside

    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], perm=perm)],
        "transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    dims = ["batch", *shape]
    graph.output[0].CopyFrom(
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[p] for p in perm])
    )
    path = tmp_path / "t.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    session = infer.load(path, threads=2)
    for batch_size in (1, 3):
        value = np.random.default_rng(batch_size).standard_normal((batch_size, *shape))
        (got,) = session.run(None, {"x": value.astype(np.float32)})
        np.testing.assert_array_equal(got, value.astype(np.float32).transpose(perm))


def _row_model(op: str, width: int | str, tmp_path: Path) -> Path:
    """Softmax or LayerNormalization over the last axis (width) of (n, 4, width), as PyTorch's
    attention writes softmax: Where(IsNaN(softmax), 0, softmax)."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = []
    if op == "Softmax":
        nodes = [
            helper.make_node("Softmax", ["x"], ["s"], axis=-1),
            helper.make_node("IsNaN", ["s"], ["nan"]),
            helper.make_node("Where", ["nan", "zero", "s"], ["y"]),
        ]
        initializers.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    else:
        nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)]
        rng = np.random.default_rng(1)
        assert isinstance(width, int)
        for name in "gb":
            initializers.append(
                numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), name)
            )
    graph = helper.make_graph(
        nodes,
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, tmp_path)


@pytest.mark.parametrize(("op", "width"), [("Softmax", 128), ("Softmax", 100), ("Softmax", 21),
                                           ("Softmax", 6), ("Softmax", "w"),
                                           ("LayerNormalization", 768),
                                           ("LayerNormalization", 100)])  # fmt: skip
def test_row_reductions_match_onnxruntime(op: str, width: int | str, tmp_path: Path) -> None:
    # The row schedule (RowReduction) takes widths the vector divides, wider ones it does not
    # (a row's last vector partial: 100, and 21 with one whole vector) and a symbolic width
    # (run at widths of both kinds, and narrower than a vector); ParallelVectorize takes 6.
    # Masked positions (-inf), a row masked whole and a NaN input come out as ONNX Runtime's.
    path = _row_model(op, width, tmp_path)
    session = infer.compile(path, output=tmp_path / "a.infer", check=False).load(threads=2)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [width] if isinstance(width, int) else [128, 100, 40, 17, 16, 6]:
        x = (np.random.default_rng(size).standard_normal((3, 4, size)) * 4).astype(np.float32)
        if op == "Softmax":
            x[0, 1, ::3] = -np.inf
            x[1, 2, :] = -np.inf
            x[2, 3, 5] = np.nan
        (got,) = session.run(None, {"x": x})
        (want,) = reference.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(("op", "width"), [("Softmax", 128), ("Softmax", 100), ("Softmax", "w"),
                                           ("LayerNormalization", 768)])  # fmt: skip
def test_row_reductions_reduce_along_rows_in_vectors(
    op: str, width: int | str, tmp_path: Path
) -> None:
    from infer.optimize.cpu_schedule import PARTITION_HINT
    from infer.optimize.pipeline import schedule_rules

    model = _row_model(op, width, tmp_path)
    scripts = lowered_prim_funcs("cpu-default", model, schedule_rules())
    rows = [s for s in scripts if "_rf" in s]
    assert len(rows) == 1, scripts
    # one parallel loop over rows; partial results a vector wide, read along the row
    assert rows[0].count("T.parallel(") == 1
    assert rows[0].count("T.vectorized(") >= 3
    if width == 128 or width == 768:
        assert "T.where(" not in rows[0]
    elif isinstance(width, str):
        # the partial sums read no further than the row's end, and the whole vectors of a row
        # are split from its partial last one (by TVM's LoopPartition, as it lowers)
        assert rows[0].count(f"T.where(ax1 * T.int64(16) + ax0 < {width})") == 2, rows[0]
        assert PARTITION_HINT in rows[0]
    else:  # here: 6 whole vectors, then the partial one
        assert rows[0].count("_partition") == 2 * 5  # max, exps, sum, softmax, where
        assert rows[0].count("T.where(ax10 * T.int64(16) + ax0 < T.int64(100))") == 2


@pytest.mark.parametrize("axis", [1, 0])
def test_row_reduction_takes_only_reductions_along_rows(axis: int) -> None:
    # x / sum(x) along the rows (axis 1) is scheduled row by row; along the columns (axis 0)
    # each row would need every other row: left to ParallelVectorize.
    import tvm
    from tvm import te

    from infer.optimize.cpu_schedule import RowReduction

    x = te.placeholder((64, 128), name="x")
    k = te.reduce_axis((0, 128 if axis == 1 else 64), name="k")
    if axis == 1:
        total = te.compute((64,), lambda i: te.sum(x[i, k], axis=k), name="total")
        y = te.compute((64, 128), lambda i, j: x[i, j] / total[i], name="y")
    else:
        total = te.compute((128,), lambda j: te.sum(x[k, j], axis=k), name="total")
        y = te.compute((64, 128), lambda i, j: x[i, j] / total[j], name="y")
    func = te.create_prim_func([x, y])
    target = parse_target("llvm", num_cores=2).tvm_target()
    with target:
        scheduled = RowReduction().apply(func, target, False)
    if axis == 0:
        assert scheduled is None
        return
    assert "_rf" in scheduled.mod["main"].script()
    built = tvm.compile(scheduled.mod, target=target)
    value = np.random.default_rng(0).random((64, 128), dtype=np.float32) + 0.5
    out = tvm.runtime.tensor(np.zeros((64, 128), np.float32))
    built(tvm.runtime.tensor(value), out)
    np.testing.assert_allclose(out.numpy(), value / value.sum(1, keepdims=True), rtol=1e-6)


def test_a_transpose_that_gathers_is_tiled() -> None:
    # Attention's keys as (heads, 64, seq) from (seq, heads x 64): each output vector runs
    # along seq, a stride of 768 in the input; tiled, a vector per step of the input's row.
    import tvm
    from tvm import te

    from infer.optimize.cpu_schedule import ParallelVectorize

    x = te.placeholder((128, 768), name="x")
    y = te.compute((12, 64, 128), lambda h, d, s: x[s, h * 64 + d], name="y")
    target = parse_target("llvm", num_cores=2).tvm_target()
    with target:
        scheduled = ParallelVectorize().apply(te.create_prim_func([x, y]), target, False)
    script = scheduled.mod["main"].script()
    assert "T.unroll(" in script and "T.vectorized(" in script
    built = tvm.compile(scheduled.mod, target=target)
    value = np.random.default_rng(0).standard_normal((128, 768)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((12, 64, 128), np.float32))
    built(tvm.runtime.tensor(value), out)
    np.testing.assert_array_equal(out.numpy(), value.reshape(128, 12, 64).transpose(1, 2, 0))


def _pools() -> Any:
    """A 1x1 convolution (so that the graph goes NHWC), a padded 3x3 max pooling of stride 2, a
    padded 3x3 average pooling that counts only the pixels inside, and another convolution."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 32, 1, 1)).astype(np.float32) / 4, "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node(
                "MaxPool", ["c"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
            ),
            helper.make_node(
                "AveragePool",
                ["m"],
                ["a"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                count_include_pad=0,
            ),
            helper.make_node("Conv", ["a", "w"], ["y"]),
        ],
        "pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 10, 10])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_padded_pooling_reads_its_input_in_place(tmp_path: Path) -> None:
    # The padding is inlined into the pooling windows: no padded copy of the input is made.
    model = _pools()
    funcs = [f for f in lowered_prim_funcs("cpu-default", model) if "pool" in f]
    assert len(funcs) == 2
    for func in funcs:
        assert "pad_temp" not in func and "if_then_else" in func, func
    # Negative inputs: a padded position taken as 0 would win a max or change an average.
    x = -np.abs(np.random.default_rng(1).standard_normal((1, 32, 20, 20))).astype(np.float32)
    session = infer.compile(save(model, tmp_path), output=tmp_path / "p.infer").load(threads=2)
    (got,) = session.run(None, {"x": x})
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
