"""oneDNN kernels as compiled graphs call them, checked against ONNX Runtime's Conv and numpy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from infer.errors import ArtifactError
from infer.runtime import onednn
from tests.conftest import requires_bf16, requires_int8, run_python, save, to_bf16

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


def tensor(array: np.ndarray) -> Any:
    import tvm

    return tvm.runtime.tensor(np.ascontiguousarray(array))


def call(name: str, *args: Any, config: dict[str, Any], out_shape: tuple[int, ...]) -> np.ndarray:
    import tvm

    onednn.register()
    out = tensor(np.full(out_shape, np.nan, np.float32))
    tvm.get_global_func(name)(*[tensor(a) for a in args], json.dumps(config), out)
    result: np.ndarray = out.numpy()
    return result


def ort_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, relu: bool, **attrs: Any) -> np.ndarray:
    """x NCHW, w OIHW; Conv (+ Relu) run by ONNX Runtime."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs)]
    nodes.append(helper.make_node("Relu" if relu else "Identity", ["c"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"x": x, "w": w, "b": b})[0]
    return result


def _conv_config(**changes: Any) -> str:
    """A 3x3 convolution's config (NHWC, padded, ReLU) with changes."""
    config = {
        "data_layout": "NHWC", "kernel_layout": "HWIO", "groups": 1, "strides": [1, 1],
        "padding": [1, 1, 1, 1], "dilation": [1, 1], "post_ops": [["relu", 0.0, 0.0]],
    }  # fmt: skip
    return json.dumps({**config, **changes})


@pytest.mark.parametrize(
    ("groups", "channels", "out_channels", "strides", "pads", "dilation"),
    [
        (1, 16, 32, [1, 1], [1, 1, 1, 1], [1, 1]),
        (1, 3, 8, [2, 1], [1, 0, 2, 1], [1, 1]),  # asymmetric padding and strides
        (16, 16, 16, [2, 2], [1, 1, 1, 1], [1, 1]),  # depthwise
        (2, 8, 12, [1, 1], [2, 2, 2, 2], [2, 2]),  # grouped, dilated
    ],
)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv2d_matches_onnxruntime(
    groups: int,
    channels: int,
    out_channels: int,
    strides: list[int],
    pads: list[int],
    dilation: list[int],
    layout: str,
) -> None:
    rng = np.random.default_rng(groups + channels)
    x = rng.standard_normal((2, channels, 13, 11), dtype=np.float32)
    w = rng.standard_normal((out_channels, channels // groups, 3, 3), dtype=np.float32)
    b = rng.standard_normal(out_channels, dtype=np.float32)
    want = ort_conv(x, w, b, True, strides=strides, pads=pads, group=groups, dilations=dilation)
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    config = {
        "data_layout": layout,
        "kernel_layout": "HWIO" if layout == "NHWC" else "OIHW",
        "groups": groups,
        "strides": strides,
        "padding": [top, left, bottom, right],
        "dilation": dilation,
        "post_ops": [["relu", 0.0, 0.0]],
    }
    if layout == "NHWC":
        got = call(
            onednn.CONV2D, x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), b,
            config=config, out_shape=want.transpose(0, 2, 3, 1).shape,
        ).transpose(0, 3, 1, 2)  # fmt: skip
    else:
        got = call(onednn.CONV2D, x, w, b, config=config, out_shape=want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_on_weights_with_bias_and_clip() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 64), dtype=np.float32)
    w = rng.standard_normal((64, 48), dtype=np.float32)
    b = rng.standard_normal(48, dtype=np.float32)
    config = {"weights": True, "post_ops": [["clip", -1.0, 2.5]]}
    got = call(onednn.MATMUL, x, w, b, config=config, out_shape=(2, 5, 48))
    np.testing.assert_allclose(got, np.clip(x @ w + b, -1.0, 2.5), rtol=1e-4, atol=1e-4)


def test_batched_matmul_broadcasts_batch_dims() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 4, 7, 16), dtype=np.float32)
    c = rng.standard_normal((2, 1, 16, 9), dtype=np.float32)
    got = call(
        onednn.MATMUL, a, c, config={"weights": False, "post_ops": []}, out_shape=(2, 4, 7, 9)
    )
    np.testing.assert_allclose(got, a @ c, rtol=1e-4, atol=1e-4)


def test_a_session_state_packs_each_weight_once_per_layout() -> None:
    import tvm

    onednn.register()
    rng = np.random.default_rng(3)
    w = tensor(rng.standard_normal((32, 16), dtype=np.float32))
    state = onednn.OnednnState(threads=1)
    function = tvm.get_global_func(onednn.MATMUL)
    config = json.dumps({"weights": True, "post_ops": []})
    with onednn.active(state):
        for rows in (4, 4, 8):
            x = rng.standard_normal((rows, 32), dtype=np.float32)
            out = tensor(np.zeros((rows, 16), np.float32))
            function(tensor(x), w, config, out)
            np.testing.assert_allclose(out.numpy(), x @ w.numpy(), rtol=1e-4, atol=1e-4)
    assert len(state.kernels) == 2  # one primitive per input shape
    assert sum(len(v) for v in state.packed.values()) <= 2  # reused when the layout is the same


def _offered(name: str, config: dict[str, Any], x: Any, w: Any, bias: Any, out: Any) -> list[str]:
    """Return every choice ("<primitive> <implementation>") a compile may make for this call."""
    lib = onednn._library()
    recipes = onednn._BUILDERS[name](lib, config, x, w, bias is not None, out, None)
    try:
        return [
            f"{recipe.kind} {implementation}"
            for recipe in recipes
            for implementation in recipe.implementations(lib)
            if not implementation.startswith("ref:")
        ]
    finally:
        for recipe in recipes:
            recipe.release(lib)


# (name, x, w, bias, config, reference): a 3x3 convolution (NHWC, ReLU), a 1x1 one, matmuls on
# weights with K > N and K < N (each offered as oneDNN's matmul and as a 1x1 convolution).
def _calls() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, str, np.ndarray]]:
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 16, 9, 9), dtype=np.float32)
    b = rng.standard_normal(24, dtype=np.float32)
    calls = []
    for k, pads in ((3, [1, 1, 1, 1]), (1, [0, 0, 0, 0])):
        w = rng.standard_normal((24, 16, k, k), dtype=np.float32)
        want = ort_conv(x, w, b, True, pads=pads).transpose(0, 2, 3, 1)
        config = _conv_config(padding=pads)
        calls.append(
            (onednn.CONV2D, x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), b, config, want)
        )
    for k, n in ((48, 20), (20, 48)):
        rows = rng.standard_normal((3, 7, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        bias = rng.standard_normal(n, dtype=np.float32)
        config = json.dumps({"weights": True, "post_ops": [["relu", 0.0, 0.0]]})
        calls.append((onednn.MATMUL, rows, w, bias, config, np.maximum(rows @ w + bias, 0)))
    return calls


@pytest.mark.parametrize("index", range(4))
def test_every_kernel_a_compile_may_choose_computes_the_call(index: int) -> None:
    # A compile keeps whichever implementation is fastest here: each must be right, and a
    # state given the choice must run exactly that one.
    import tvm

    onednn.register()
    name, x, w, b, config, want = _calls()[index]
    function = tvm.get_global_func(name)
    args = [tensor(x), tensor(w), tensor(b)]
    key = onednn.choice_key(name, config, x.shape, w.shape)
    offered = _offered(name, json.loads(config), *args, tensor(want))
    kinds = {choice.split(" ")[0] for choice in offered}
    assert kinds == ({"convolution"} if name == onednn.CONV2D else {"convolution", "matmul"})
    for choice in offered:
        state = onednn.OnednnState(threads=1, choices={key: choice})
        out = tensor(np.full(want.shape, np.nan, np.float32))
        with onednn.active(state):
            function(*args, config, out)
        (kernel,) = state.kernels.values()
        assert kernel.implementation == choice
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4, err_msg=choice)


def _measured(
    monkeypatch: Any, index: int, time_of: Callable[[list[str], str], float]
) -> tuple[onednn.OnednnState, list[str], list[str], list[Any]]:
    """Run call index in a measuring state whose timer says time_of(offered, implementation)
    (the kernels still run); return the state, the choices offered, those timed in order, and
    the call's tensors (the state knows packed weights by address: keep them alive). The timer,
    not the kernels, is made predictable."""
    import tvm

    onednn.register()
    name, x, w, b, config, want = _calls()[index]
    args = [tensor(x), tensor(w), tensor(b)]
    offered = _offered(name, json.loads(config), *args, tensor(want))
    timed: list[str] = []
    real_seconds = onednn._seconds

    def seconds(kernel: Any, handles: list[int]) -> float:
        real_seconds(kernel, handles)
        timed.append(kernel.implementation)
        return time_of(offered, kernel.implementation)

    monkeypatch.setattr(onednn, "_seconds", seconds)
    state = onednn.OnednnState(threads=1)
    state.measure = True
    out = tensor(np.full(want.shape, np.nan, np.float32))
    with onednn.active(state):
        tvm.get_global_func(name)(*args, config, out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)
    return state, offered, timed, args


def test_a_measuring_state_keeps_the_fastest_and_records_it(monkeypatch: Any) -> None:
    import tvm

    # The last one offered is the fastest.
    state, offered, timed, _args = _measured(
        monkeypatch, 3, lambda offered, name: 1.0 + len(offered) - offered.index(name)
    )
    assert len(offered) >= 2
    (kernel,) = state.kernels.values()
    assert kernel.implementation == offered[-1]
    name, x, w, b, config, _ = _calls()[3]
    assert state.choices == {onednn.choice_key(name, config, x.shape, w.shape): offered[-1]}
    assert set(timed) == set(offered)  # each timed (none past 3x the best so far here)
    assert timed.count(offered[0]) == 1 + onednn.MEASURE_RUNS
    assert [len(packs) for packs in state.packed.values()] == [1]  # the losers' packs let go
    # Another layer of the same shapes (other weights) takes the choice without timing again.
    count = len(timed)
    other = np.random.default_rng(13).standard_normal(w.shape).astype(np.float32)
    out = tensor(np.zeros((3, 7, 48), np.float32))
    with onednn.active(state):
        tvm.get_global_func(name)(tensor(x), tensor(other), tensor(b), config, out)
    np.testing.assert_allclose(out.numpy(), np.maximum(x @ other + b, 0), rtol=1e-4, atol=1e-4)
    assert len(timed) == count and len(state.kernels) == 2
    assert {k.implementation for k in state.kernels.values()} == {offered[-1]}


@pytest.mark.parametrize(("others", "kept"), [(0.97, 0), (0.9, 1)])
def test_another_implementation_must_beat_onednns_first_by_the_margin(
    monkeypatch: Any, others: float, kept: int
) -> None:
    state, offered, _, _args = _measured(
        monkeypatch, 0, lambda offered, name: 1.0 if name == offered[0] else others
    )
    assert list(state.choices.values()) == [offered[kept]]


@pytest.mark.parametrize(("each", "runs"), [(1e-3, 5), (1e-4, 11), (1e-7, 200)])
def test_kernels_of_microseconds_are_timed_more_often(
    monkeypatch: Any, each: float, runs: int
) -> None:
    calls: list[float] = []

    def seconds(_kernel: Any, _handles: list[int]) -> float:
        calls.append(each * (1 + len(calls) % 3))
        return calls[-1]

    monkeypatch.setattr(onednn, "_seconds", seconds)
    assert onednn._least_seconds(None, []) == each  # type: ignore[arg-type]
    assert len(calls) == runs


def test_a_choice_this_cpu_does_not_offer_takes_onednns_first() -> None:
    import tvm

    onednn.register()
    name, x, w, b, config, want = _calls()[0]
    args = [tensor(x), tensor(w), tensor(b)]
    key = onednn.choice_key(name, config, x.shape, w.shape)
    state = onednn.OnednnState(threads=1, choices={key: "convolution brgconv:avx1024"})
    out = tensor(np.full(want.shape, np.nan, np.float32))
    with onednn.active(state):
        tvm.get_global_func(name)(*args, config, out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)
    (kernel,) = state.kernels.values()
    assert kernel.implementation == _offered(name, json.loads(config), *args, out)[0]


def test_a_choices_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    state = onednn.OnednnState(threads=2, choices={"k": "matmul gemm:jit:f32"})
    onednn.write_choices(tmp_path, state)
    path = tmp_path / onednn.CHOICES_FILE
    assert onednn.read_choices(path) == {"k": "matmul gemm:jit:f32"}
    for text in ("{", '{"kernels": {"k": 3}}', "[]"):
        path.write_text(text)
        with pytest.raises(ArtifactError, match=onednn.CHOICES_FILE):
            onednn.read_choices(path)


@pytest.mark.parametrize(("strides", "pads"), [([2, 2], [0, 0, 0, 0]), ([2, 1], [1, 0, 1, 1])])
def test_conv2d_transpose_matches_onnxruntime(strides: list[int], pads: list[int]) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 6, 7, 5), dtype=np.float32)
    w = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)  # (in, out, kh, kw): IOHW
    b = rng.standard_normal(4, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=strides, pads=pads)],
        "deconv",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "w": w, "b": b})
    config = {
        "data_layout": "NCHW",
        "kernel_layout": "IOHW",
        "groups": 1,
        "strides": strides,
        "padding": pads,
        "dilation": [1, 1],
        "transposed": True,
        "post_ops": [],
    }
    got = call(onednn.CONV2D, x, w, b, config=config, out_shape=want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_kernel_made_in_one_thread_runs_in_another() -> None:
    # A server runs a session from its worker threads and the caller's. With oneDNN's own
    # scratchpad (the making thread's), a convolution made in one thread crashed the process
    # when run from another: each primitive now has a scratchpad of its own.
    import threading

    import tvm

    onednn.register()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 24, 24), dtype=np.float32)
    w = rng.standard_normal((32, 16, 3, 3), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    want = ort_conv(x, w, b, relu=False, pads=[1, 1, 1, 1])
    config = _conv_config(data_layout="NCHW", kernel_layout="OIHW", post_ops=[])
    state = onednn.OnednnState(threads=1)
    function = tvm.get_global_func(onednn.CONV2D)
    weights, bias = tensor(w), tensor(b)
    results: list[np.ndarray] = []

    def run() -> None:
        out = tensor(np.zeros(want.shape, np.float32))
        with onednn.active(state):
            function(tensor(x), weights, bias, config, out)
        results.append(out.numpy())

    run()
    for _ in range(2):
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    run()
    assert len(state.kernels) == 1 and len(results) == 4
    for got in results:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _bf16_and_f32_errors(got: np.ndarray, f32_inputs: tuple, reference: Any) -> tuple[float, float]:
    """Return got's largest error against reference run on the inputs rounded to bf16, and
    against reference run on the float32 inputs; both relative to the output's largest value."""
    want_bf16 = reference(*(to_bf16(a) for a in f32_inputs))
    want_f32 = reference(*f32_inputs)
    scale = float(np.abs(want_f32).max())
    return (
        float(np.abs(got - want_bf16).max()) / scale,
        float(np.abs(got - want_f32).max()) / scale,
    )


@requires_bf16
@pytest.mark.parametrize("groups", [1, 32])
def test_bf16_conv2d_computes_on_bf16_rounded_operands(groups: int) -> None:
    # bf16 products are exact in f32 and oneDNN accumulates in f32: the result is ONNX Runtime's
    # convolution of the operands rounded to bf16, to summation order; far from float32's.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 32, 17, 15), dtype=np.float32)
    w = rng.standard_normal((64, 32 // groups, 3, 3), dtype=np.float32)
    b = rng.standard_normal(64, dtype=np.float32)
    attrs = {"pads": [1, 1, 1, 1], "group": groups}
    config = {
        "data_layout": "NHWC", "kernel_layout": "HWIO", "groups": groups, "strides": [1, 1],
        "padding": [1, 1, 1, 1], "dilation": [1, 1], "post_ops": [], "precision": "bf16",
    }  # fmt: skip
    got = call(
        onednn.CONV2D, x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), b,
        config=config, out_shape=(1, 17, 15, 64),
    ).transpose(0, 3, 1, 2)  # fmt: skip
    bf16_error, f32_error = _bf16_and_f32_errors(
        got, (x, w), lambda x, w: ort_conv(x, w, b, False, **attrs)
    )
    assert bf16_error < 1e-5 and f32_error > 1e-3, (bf16_error, f32_error)


@requires_bf16
@pytest.mark.parametrize(("k", "n"), [(96, 40), (40, 96)])  # a matmul; a 1x1 convolution
def test_bf16_matmul_on_weights_computes_on_bf16_rounded_operands(k: int, n: int) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 7, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    config = {"weights": True, "post_ops": [["relu", 0.0, 0.0]], "precision": "bf16"}
    got = call(onednn.MATMUL, x, w, b, config=config, out_shape=(3, 7, n))

    def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return np.maximum(x.astype(np.float64) @ w.astype(np.float64) + b, 0.0)

    bf16_error, f32_error = _bf16_and_f32_errors(got, (x, w), reference)
    assert bf16_error < 1e-5 and f32_error > 1e-3, (bf16_error, f32_error)


def per_channel_int8(w: np.ndarray, axis: int) -> np.ndarray:
    """Return w quantized symmetric per channel of axis to 127 levels and back (the weights an
    int8 kernel computes with), written from ONNX Runtime's symmetric int8 rule."""
    other = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    scale = np.abs(w).max(axis=other, keepdims=True) / 127
    return (np.clip(np.rint(w / scale), -127, 127) * scale).astype(np.float32)


def source_8bit(shape: tuple[int, ...], dtype: Any, seed: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max + 1, shape).astype(dtype)


@requires_int8
@pytest.mark.parametrize(("source", "zero"), [(np.uint8, 131), (np.int8, -7), (np.uint8, 0)])
@pytest.mark.parametrize("groups", [1, 16])
def test_int8_conv2d_reads_the_8bit_source_and_quantizes_the_weights(
    source: Any, zero: int, groups: int
) -> None:
    # x = (q - zero) * scale as the model dequantizes it; the weights quantized per output
    # channel; int32 accumulation is exact, so the result is ONNX Runtime's float convolution
    # of exactly those values, far from that of the float32 weights.
    rng = np.random.default_rng(7)
    q = source_8bit((1, 16, 9, 11), source, seed=groups)
    scale = np.float32(0.05)
    x = ((q.astype(np.float32) - zero) * scale).astype(np.float32)
    w = rng.standard_normal((32, 16 // groups, 3, 3), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    attrs = {"pads": [1, 1, 1, 1], "group": groups, "strides": [2, 1]}
    config = {
        "data_layout": "NHWC", "kernel_layout": "HWIO", "groups": groups, "strides": [2, 1],
        "padding": [1, 1, 1, 1], "dilation": [1, 1], "post_ops": [["relu", 0.0, 0.0]],
        "precision": "int8",
    }  # fmt: skip
    want = ort_conv(x, per_channel_int8(w, 0), b, True, **attrs)
    got = call(
        onednn.CONV2D, q.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), b,
        np.array(scale), np.array(zero, np.int32),
        config=config, out_shape=want.transpose(0, 2, 3, 1).shape,
    ).transpose(0, 3, 1, 2)  # fmt: skip
    top = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * top)
    assert np.abs(got - ort_conv(x, w, b, True, **attrs)).max() > 1e-4 * top


@requires_int8
@pytest.mark.parametrize(("k", "n"), [(96, 40), (40, 96)])  # a matmul; a 1x1 convolution
def test_int8_matmul_on_weights_reads_the_8bit_source(k: int, n: int) -> None:
    rng = np.random.default_rng(8)
    q = source_8bit((3, 7, k), np.uint8, seed=k)
    zero, scale = 128, np.float32(0.02)
    w = rng.standard_normal((k, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    config = {"weights": True, "post_ops": [], "precision": "int8"}
    got = call(
        onednn.MATMUL, q, w, b, np.array(scale), np.array(zero, np.int32),
        config=config, out_shape=(3, 7, n),
    )  # fmt: skip
    x = (q.astype(np.float64) - zero) * scale
    want = x @ per_channel_int8(w, 1).astype(np.float64) + b
    top = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * top)
    assert np.abs(got - (x @ w.astype(np.float64) + b)).max() > 1e-4 * top


@requires_int8
def test_int8_weights_are_quantized_once_per_session_whatever_the_rows() -> None:
    import tvm

    onednn.register()
    rng = np.random.default_rng(9)
    w = rng.standard_normal((64, 16), dtype=np.float32)
    weights, scale = tensor(w), tensor(np.array(0.02, np.float32))
    state = onednn.OnednnState(threads=1)
    function = tvm.get_global_func(onednn.MATMUL)
    config = json.dumps({"weights": True, "post_ops": [], "precision": "int8"})
    with onednn.active(state):
        for rows in (3, 40):
            q = source_8bit((rows, 64), np.uint8, seed=rows)
            out = tensor(np.zeros((rows, 16), np.float32))
            function(tensor(q), weights, scale, tensor(np.array(5, np.int32)), config, out)
            want = ((q.astype(np.float64) - 5) * np.float32(0.02)) @ per_channel_int8(w, 1)
            np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert len(state.kernels) == 2 and list(state.weight_scales) == [(weights.data_ptr(), -1)]


def test_the_compiled_dispatch_runs_the_kernels_python_made() -> None:
    # Two layers with the same config and shapes and different weights (ResNet's repeated
    # blocks) must not share a kernel; after each layer's first call, Python is not called.
    import tvm

    onednn.register()
    assert onednn.compiled_dispatch()  # a C++ compiler is part of the build environment
    rng = np.random.default_rng(10)
    weights = [rng.standard_normal((16, 16, 3, 3), dtype=np.float32) for _ in range(2)]
    b = rng.standard_normal(16, dtype=np.float32)
    as_hwio = [tensor(w.transpose(2, 3, 1, 0)) for w in weights]
    bias = tensor(b)
    function, config = tvm.get_global_func(onednn.CONV2D), _conv_config()
    state = onednn.OnednnState(threads=1)
    out = tensor(np.zeros((1, 8, 8, 16), np.float32))
    with onednn.active(state):
        for step in range(6):
            x = rng.standard_normal((1, 16, 8, 8), dtype=np.float32)
            layer = step % 2
            function(tensor(x.transpose(0, 2, 3, 1)), as_hwio[layer], bias, config, out)
            want = ort_conv(x, weights[layer], b, True, pads=[1, 1, 1, 1])
            got = out.numpy().transpose(0, 3, 1, 2)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert state.python_calls == 2 and len(state.kernels) == 2


def test_the_compiled_dispatch_forgets_the_kernels_python_drops(monkeypatch: Any) -> None:
    import tvm

    onednn.register()
    monkeypatch.setattr(onednn, "MAX_KERNELS", 1)
    rng = np.random.default_rng(11)
    w = rng.standard_normal((8, 4, 3, 3), dtype=np.float32)
    b = np.zeros(8, np.float32)
    weights, bias = tensor(w.transpose(2, 3, 1, 0)), tensor(b)
    function, config = tvm.get_global_func(onednn.CONV2D), _conv_config()
    state = onednn.OnednnState(threads=1)
    with onednn.active(state):
        for size in (5, 7, 5, 7):  # each shape drops the other's kernel
            x = rng.standard_normal((1, 4, size, size), dtype=np.float32)
            out = tensor(np.zeros((1, size, size, 8), np.float32))
            function(tensor(x.transpose(0, 2, 3, 1)), weights, bias, config, out)
            want = ort_conv(x, w, b, True, pads=[1, 1, 1, 1])
            np.testing.assert_allclose(
                out.numpy().transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4
            )
    assert state.python_calls == 4 and len(state.kernels) == 1


@requires_int8
def test_the_compiled_dispatch_tells_int8_sources_apart_by_their_scale() -> None:
    import tvm

    onednn.register()
    rng = np.random.default_rng(12)
    w = rng.standard_normal((32, 16), dtype=np.float32)
    weights, zero = tensor(w), tensor(np.array(3, np.int32))
    scales = [tensor(np.array(s, np.float32)) for s in (0.02, 0.5)]
    state = onednn.OnednnState(threads=1)
    function = tvm.get_global_func(onednn.MATMUL)
    config = json.dumps({"weights": True, "post_ops": [], "precision": "int8"})
    out = tensor(np.zeros((4, 16), np.float32))
    with onednn.active(state):
        for step in range(6):
            q = source_8bit((4, 32), np.uint8, seed=step)
            scale = scales[step % 2]
            function(tensor(q), weights, scale, zero, config, out)
            x = (q.astype(np.float64) - 3) * scale.numpy()
            want = x @ per_channel_int8(w, 1)
            np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert state.python_calls == 2


@requires_bf16
def test_the_compiled_dispatch_converts_a_bf16_kernels_source() -> None:
    # The first call runs in Python, the others in the compiled dispatch: same kernel, same
    # source conversion, so the same bits.
    import tvm

    onednn.register()
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 16, 8, 8), dtype=np.float32)
    w = rng.standard_normal((32, 16, 3, 3), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    function = tvm.get_global_func(onednn.CONV2D)
    config = _conv_config(precision="bf16")
    args = (tensor(x.transpose(0, 2, 3, 1)), tensor(w.transpose(2, 3, 1, 0)), tensor(b))
    state = onednn.OnednnState(threads=1)
    results = []
    with onednn.active(state):
        for _ in range(3):
            out = tensor(np.zeros((1, 8, 8, 32), np.float32))
            function(*args, config, out)
            results.append(out.numpy().transpose(0, 3, 1, 2))
    assert state.python_calls == 1
    want = ort_conv(to_bf16(x), to_bf16(w), b, True, pads=[1, 1, 1, 1])
    for got in results:
        np.testing.assert_array_equal(got, results[0])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 2])
def test_tvm_kernels_of_an_offloaded_build_run_on_openmps_threads(
    tmp_path: Path, threads: int
) -> None:
    # A convolution (oneDNN) between TVM kernels big enough to be parallel loops: the layout
    # transposes and sigmoid(conv) * x. Each loop's tasks must all run on OpenMP's team.
    import infer

    rng = np.random.default_rng(11)
    w = rng.standard_normal((32, 32, 3, 3), dtype=np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["s", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_gate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32, 64, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = save(model, tmp_path)
    session = infer.load(infer.compile(path, output=tmp_path / "m.infer").path, threads=threads)
    assert session._onednn.openmp_libraries == 1
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = rng.standard_normal((batch, 32, 64, 64), dtype=np.float32)
        (want,) = reference.run(None, {"x": x})
        (got,) = session.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


_THREAD_CPU = """
import os, sys
import infer
from infer.parity import random_feeds


def cpu_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


session = infer.load(sys.argv[1], threads=2)
feeds = random_feeds(session.get_inputs())
for _ in range(5):
    session.run(None, feeds)
before = cpu_ticks()
for _ in range(20000):
    session.run(None, feeds)
after = cpu_ticks()
main = os.getpid()
others = sum(after[t] - before.get(t, 0) for t in after if t != main)
print(after[main] - before[main], others)
"""


def test_small_convolutions_of_a_two_thread_session_open_no_openmp_team(tmp_path: Path) -> None:
    # Operators under MIN_PARALLEL_MACS run on one thread. oneDNN fixes a primitive's team when
    # it is made: made while two threads were set, each call woke a second thread, which then
    # spun beside the caller for as long as the session ran (Silero VAD: 44 or 66 µs a window,
    # by the run). In a fresh process, the other threads' CPU time is measured over the runs.
    import infer
    from tests import onnx_models

    path = save(onnx_models.conv_net(batch=1), tmp_path)
    artifact = infer.compile(path, output=tmp_path / "m.infer").path
    printed = run_python(_THREAD_CPU, str(artifact))
    main, others = map(int, printed.split())
    assert main > 0
    assert others <= main // 10, printed
