"""Hand the heavy operators of a Relax graph to a kernel library: convolutions and matmuls become
`R.call_dps_packed` calls of infer/runtime/onednn.py's functions, with a following bias add and
activation folded into the call (oneDNN post-ops); TVM compiles everything else.

Runs on `main` after LiftTransformParams, so that weights are plain parameters (already in the
layout ConvertLayout chose) and the kernel can pack each one once. Only float32 operators with at
least MIN_OFFLOAD_MACS multiply-adds move: below that, a library call (~6 µs from the graph,
oneDNN's own dispatch included) costs more than TVM's own loop nest.

With precision "bf16" the matmuls on weights and the dense convolutions of at least
MIN_PARALLEL_MACS compute in bfloat16 (oneDNN converts the input and packs the weights in bf16,
accumulates and writes f32); everything else stays float32.

A convolution or matmul on weights whose input a quantized model dequantizes from 8 bits (one
scale and zero point for the tensor, as infer.optimize.canonicalize spells it) computes in
int8 whatever the precision: oneDNN reads the 8-bit tensor itself, quantizes the weights per
output channel as it packs them, accumulates in int32 and writes f32, the dequantize folded
into its scales. This is what a QDQ model says (ONNX Runtime runs it the same way). Only on
CPUs with VNNI (int8_kernels): elsewhere oneDNN's uint8 x int8 products may saturate, and the
dequantized operator runs in float32.
"""

from __future__ import annotations

import json
import math
from typing import Any

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.relax_main import Bindings, op_name, replace_main, weight_params
from infer.runtime import onednn
from infer.runtime.onednn import INT8

__all__ = [
    "MIN_OFFLOAD_MACS",
    "MIN_PARALLEL_MACS",
    "SAME_DTYPE",
    "SYMBOLIC_DIM_SIZE",
    "activation_post_op",
    "bias_of",
    "dequantized",
    "offload_to_onednn",
]

# Silero VAD's 1-d convolutions and LSTM matmuls (12-264 K multiply-adds) took 8-50x longer in
# TVM than in oneDNN.
MIN_OFFLOAD_MACS = 1 << 12
# A symbolic dim counts as this much in the two thresholds: a batch or a sequence is rarely 1,
# and a detector with symbolic height and width (PP-OCR's) ran 6x slower when its convolutions
# counted as one pixel (kept in TVM, single-threaded): 5.2 s vs 0.83 s at 736x1472.
SYMBOLIC_DIM_SIZE = 64
# Smaller operators run on one of oneDNN's threads: waking the others costs more than they save.
# A (1, K) x (K, N) matmul alone in a session, at 2 threads, one thread / two: 4.3 / 4.9 µs at
# 32 K multiply-adds, 4.7 / 5.5 at 64 K, 6.2 / 5.6 at 128 K, 12.7 / 8.0 at 256 K. Silero VAD's
# LSTM gates (128 K) and widest convolution (198 K) on two threads: 24.4 -> 22.1 µs a window.
MIN_PARALLEL_MACS = 1 << 17

# The precisions a float32 operator is converted to in the kernel (int8 needs a quantized model).
_CONVERTED = ("bf16",)
# out_dtype values that leave a float32 operator's output float32 (None prints as "None").
SAME_DTYPE = ("", "None", "void", "float32")
# Max/Min with a constant scalar: oneDNN's clip with the other side open.
_BOUNDS = ("relax.maximum", "relax.minimum")
_FLOAT_MAX = 3.4028234663852886e38
_ACTIVATIONS = {
    "relax.nn.relu": "relu",
    "relax.sigmoid": "logistic",
    "relax.nn.gelu": "gelu_erf",
    "relax.nn.gelu_tanh": "gelu_tanh",
}


def _static(shape: Any) -> list[int] | None:
    """Return a shape's dims as ints (symbolic ones as SYMBOLIC_DIM_SIZE), or None without a
    known rank."""
    if not isinstance(shape, relax.ShapeExpr):
        return None
    return [int(d) if isinstance(d, tirx.IntImm) else SYMBOLIC_DIM_SIZE for d in shape.values]


def _tensor(expr: Any) -> tuple[list[int], str] | None:
    info = expr.ty
    if not isinstance(info, relax.TensorType):
        return None
    dims = _static(info.shape)
    return None if dims is None else (dims, str(info.dtype))


def _is_float32(*exprs: Any) -> bool:
    return all((t := _tensor(e)) is not None and t[1] == "float32" for e in exprs)


_CONVOLUTIONS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv2d_transpose")


def _conv(call: Any, weights: set[Any]) -> tuple[dict[str, Any], int] | None:
    """Return (config, output channels) for an offloadable conv1d, conv2d or conv2d_transpose
    call (oneDNN's convolution or deconvolution), else None."""
    attrs = call.attrs
    data, kernel = call.args
    transposed = op_name(call) == "relax.nn.conv2d_transpose"
    spatial = "W" if op_name(call) == "relax.nn.conv1d" else "HW"
    if kernel not in weights or not _is_float32(data, kernel, call):
        return None
    if str(attrs.out_layout) != str(attrs.data_layout) or str(attrs.out_dtype) not in SAME_DTYPE:
        return None
    data_layout, kernel_layout = str(attrs.data_layout), str(attrs.kernel_layout)
    if sorted(data_layout) != sorted("NC" + spatial) or sorted(kernel_layout) != sorted(
        "OI" + spatial
    ):
        return None
    if transposed and (int(attrs.groups) != 1 or any(int(p) for p in attrs.output_padding)):
        return None
    out_dims, kernel_dims = _tensor(call)[0], _tensor(kernel)[0]  # type: ignore[index]
    # Multiply-adds: each output (each input, transposed) meets one filter of its group.
    if transposed:
        macs = math.prod(_tensor(data)[0]) * math.prod(kernel_dims)  # type: ignore[index]
        macs //= kernel_dims[kernel_layout.index("I")]
    else:
        macs = math.prod(out_dims) * math.prod(kernel_dims) // kernel_dims[kernel_layout.index("O")]
    if macs < MIN_OFFLOAD_MACS:
        return None
    config = {
        "data_layout": data_layout,
        "kernel_layout": kernel_layout,
        "groups": int(attrs.groups),
        "strides": [int(s) for s in attrs.strides],
        "padding": [int(p) for p in attrs.padding],
        "dilation": [int(d) for d in attrs.dilation],
        "transposed": transposed,
        "single_thread": macs < MIN_PARALLEL_MACS,
    }
    return config, kernel_dims[kernel_layout.index("O")]


def _matmul(call: Any, weights: set[Any]) -> tuple[dict[str, Any], int] | None:
    """Return (config, output columns) for an offloadable matmul call, else None."""
    a, b = call.args
    if not _is_float32(a, b, call) or str(call.attrs.out_dtype) not in SAME_DTYPE:
        return None
    a_dims, b_dims = _tensor(a)[0], _tensor(b)[0]  # type: ignore[index]
    if len(a_dims) < 2 or len(b_dims) < 2 or a in weights:
        return None
    on_weights = b in weights
    if on_weights and len(b_dims) != 2:
        return None
    macs = math.prod(_tensor(call)[0]) * a_dims[-1]  # type: ignore[index]
    if macs < MIN_OFFLOAD_MACS:
        return None
    columns = b.ty.shape.values[-1]  # a symbolic count never matches a bias
    channels = int(columns) if isinstance(columns, tirx.IntImm) else -1
    return {"weights": on_weights, "single_thread": macs < MIN_PARALLEL_MACS}, channels


def bias_of(add: Any, produced: Any, weights: set[Any], channels: int, axis_last: bool) -> Any:
    """Return the weight that add adds to produced per output channel, else None."""
    if len(add.args) != 2:
        return None
    other = add.args[1] if add.args[0].same_as(produced) else add.args[0]
    if other.same_as(produced) or other not in weights or not _is_float32(other):
        return None
    dims = _tensor(other)[0]  # type: ignore[index]
    if math.prod(dims) != channels:
        return None
    if axis_last:
        return other if dims and dims[-1] == channels else None
    # Channels first: the bias must run along axis 1 of an output of its rank (1, C, 1, 1).
    rank = len(_tensor(produced)[0])  # type: ignore[index]
    return other if len(dims) == rank and dims[1] == channels else None


# Ops that leave the value of a one-element constant as it is (ConvertLayout puts a
# permute_dims on the (1, 1, 1, 1) bound of a ReLU6).
_SHAPE_ONLY = frozenset(
    f"relax.{name}" for name in ("permute_dims", "reshape", "expand_dims", "squeeze")
)


def _one_element_const(expr: Any, values: dict[Any, Any]) -> Any:
    """Return the one-element constant that expr is (through bindings and shape-only ops)."""
    while True:
        if isinstance(expr, tvm.ir.GenericConst):
            return expr if expr.value.numpy().size == 1 else None
        if isinstance(expr, relax.Var) and expr in values:
            expr = values[expr]
        elif isinstance(expr, relax.Call) and op_name(expr) in _SHAPE_ONLY:
            expr = expr.args[0]
        else:
            return None


def activation_post_op(
    call: Any, produced: Any, values: dict[Any, Any]
) -> tuple[str, float, float] | None:
    """Return the oneDNN eltwise post-op (name, alpha, beta) that call applies to produced."""
    name = op_name(call)
    if name is None or (name not in _BOUNDS and not call.args[0].same_as(produced)):
        return None
    if name in _ACTIVATIONS:
        return (_ACTIVATIONS[name], 0.0, 0.0)
    if name == "relax.clip":
        low, high = call.args[1], call.args[2]
        if isinstance(low, relax.PrimValue) and isinstance(high, relax.PrimValue):
            try:
                return ("clip", float(low.value.value), float(high.value.value))
            except AttributeError:
                return None
    if name in _BOUNDS and len(call.args) == 2:
        other = _one_element_const(
            call.args[1] if call.args[0].same_as(produced) else call.args[0], values
        )
        if other is not None:
            bound = float(other.value.numpy().reshape(()))
            if not math.isfinite(bound) or str(other.value.dtype) != "float32":
                return None
            low, high = (bound, _FLOAT_MAX) if name == "relax.maximum" else (-_FLOAT_MAX, bound)
            return ("clip", low, high)
    return None


def _one_value(expr: Any, values: dict[Any, Any], weights: set[Any], dtype: str) -> Any:
    """Return the one-element weight or constant of dtype that expr is, else None."""
    if expr in weights:
        dims = _tensor(expr)
        return expr if dims is not None and dims[1] == dtype and math.prod(dims[0]) == 1 else None
    const = _one_element_const(expr, values)
    return const if const is not None and str(const.value.dtype) == dtype else None


def _bound(expr: Any, values: dict[Any, Any], op: str, dtype: str | None = None) -> Any:
    """Return the call of op (an astype to dtype) that expr is bound to, else None."""
    value: Any = values.get(expr)
    if op_name(value) != op:
        return None
    return value if dtype is None or str(value.attrs.dtype) == dtype else None


def dequantized(expr: Any, values: dict[Any, Any], weights: set[Any]) -> tuple[Any, ...] | None:
    """Return (8-bit tensor, scale, zero point) when expr dequantizes an 8-bit tensor with one
    scale and zero point, as canonicalize writes it: (astype(q, int32) - zero) as float32 times
    scale; else None. A transpose of that (the NHWC layout starting at a convolution) comes
    back as the transpose of the 8-bit tensor, a quarter of the bytes."""
    transposed = _bound(expr, values, "relax.permute_dims")
    if transposed is not None:
        inner = dequantized(transposed.args[0], values, weights)
        if inner is None:
            return None
        return (relax.op.permute_dims(inner[0], transposed.attrs.axes), *inner[1:])
    # (astype(q, int32) - zero) as float32, times scale: innermost last.
    chain = [("relax.multiply", None), ("relax.astype", "float32"), ("relax.subtract", None)]
    calls: list[Any] = []
    for op, dtype in [*chain, ("relax.astype", "int32")]:
        call = _bound(calls[-1].args[0] if calls else expr, values, op, dtype)
        if call is None:
            return None
        calls.append(call)
    scaled, _, centred, as_int = calls
    source = as_int.args[0]
    if (found := _tensor(source)) is None or found[1] not in ("uint8", "int8"):
        return None
    scale = _one_value(scaled.args[1], values, weights, "float32")
    zero = _one_value(centred.args[1], values, weights, "int32")
    return None if scale is None or zero is None else (source, scale, zero)


def _epilogue(
    bindings: Bindings, var: Any, channels: int, axis_last: bool, weights: set[Any], bias_ok: bool
) -> tuple[Any, Any, list[list[Any]], list[Any]]:
    """Return (last var, bias, post-ops, vars folded away) of the bias add and activations that
    follow var and fold into its call."""
    values, sole_user = bindings.values, bindings.sole_user
    last, bias, post_ops, folded = var, None, [], []
    user = sole_user(last)
    if bias_ok and user is not None and op_name(values[user]) == "relax.add":
        bias = bias_of(values[user], last, weights, channels, axis_last)
        if bias is not None:
            folded.append(last)
            last, user = user, sole_user(user)
    while user is not None and (post := activation_post_op(values[user], last, values)) is not None:
        post_ops.append(list(post))
        folded.append(last)
        last, user = user, sole_user(user)
    return last, bias, post_ops, folded


# The depthwise convolutions oneDNN computes inside the 1x1 convolution before them (its
# "dw" post-op): 3x3, stride 1 or 2, padding 1, NHWC. The 1x1's output (a MobileNet block's
# expanded tensor, 6x its input) then never goes to memory whole. MobileNetV2's 16 -> 96 at
# 112x112 and its depthwise stride 2, alone on inputs fresh from memory: 1.22 ms as two calls
# and 0.67 as one at one thread, 0.72 and 0.46 at two; in the model 1.11 and 0.74 (one thread).
_DEPTHWISE_STRIDES = (1, 2)


def _depthwise_after(
    bindings: Bindings,
    conv: Any,
    last: Any,
    config: dict[str, Any],
    channels: int,
    weights: set[Any],
    threads: int,
) -> tuple[Any, Any, dict[str, Any]] | None:
    """Return (var, call, config) of the depthwise convolution that reads last, the output of the
    convolution conv (config) and its epilogue, when conv is 1x1 and oneDNN can fold the
    depthwise one into it; else None."""
    layout, kernel_layout = config["data_layout"], config["kernel_layout"]
    kernel_dims = _tensor(conv.args[1])[0]  # type: ignore[index]
    if (
        layout != "NHWC"
        or [kernel_dims[kernel_layout.index(c)] for c in "HW"] != [1, 1]
        or config["groups"] != 1
        or config["transposed"]
        or config["strides"] != [1, 1]
        or any(config["padding"])
        or config["dilation"] != [1, 1]
        or "precision" in config
    ):
        return None
    user = bindings.sole_user(last)
    call: Any = bindings.values.get(user)
    if op_name(call) != "relax.nn.conv2d" or not call.args[0].same_as(last):
        return None
    found = _conv(call, weights)
    if found is None:
        return None
    dw, out_channels = found
    kernel_layout, kernel_dims = dw["kernel_layout"], _tensor(call.args[1])[0]  # type: ignore[index]
    stride = dw["strides"][0]
    if (
        dw["data_layout"] != layout
        or dw["groups"] != channels
        or out_channels != channels
        or [kernel_dims[kernel_layout.index(c)] for c in "HW"] != [3, 3]
        or dw["strides"] != [stride, stride]
        or stride not in _DEPTHWISE_STRIDES
        or dw["padding"] != [1, 1, 1, 1]
        or dw["dilation"] != [1, 1]
    ):
        return None
    # A build serves every thread count and batch: oneDNN must have a kernel for both at one
    # thread and at all of them, and at batch 1 and SYMBOLIC_DIM_SIZE when the batch is symbolic
    # (height and width must be known).
    dims = conv.args[0].ty.shape.values
    if not all(isinstance(d, tirx.IntImm) for d in dims[1:]):
        return None
    batches = {int(dims[0])} if isinstance(dims[0], tirx.IntImm) else {1, SYMBOLIC_DIM_SIZE}
    if not all(
        onednn.depthwise_fusable([n, *(int(d) for d in dims[1:])], channels, stride, t)
        for n in batches
        for t in {1, threads}
    ):
        return None
    return user, call, dw


def _plan(
    func: Any,
    weights: set[Any],
    counts: dict[str, int],
    precision: str,
    int8_kernels: bool,
    threads: int,
) -> tuple[dict[Any, Any], set[Any]]:
    """Return {var: (packed function, arguments, type)} for the last binding of each chain,
    and the vars to drop."""
    bindings = Bindings(func)
    values = bindings.values
    replace: dict[Any, Any] = {}
    drop: set[Any] = set()
    consumed: set[Any] = set()  # depthwise convolutions folded into the call before them
    for var in bindings.order:
        if var in consumed:
            continue
        call = values[var]
        name = op_name(call)
        if name in _CONVOLUTIONS:
            found = _conv(call, weights)
            function, axis_last = "infer.onednn.conv2d", None
        elif name == "relax.matmul":
            found = _matmul(call, weights)
            function, axis_last = "infer.onednn.matmul", True
        else:
            continue
        if found is None:
            continue
        config, channels = found
        if axis_last is None:
            axis_last = config["data_layout"].endswith("C")
        bias_ok = name != "relax.matmul" or config["weights"]
        last, bias, post_ops, folded = _epilogue(
            bindings, var, channels, axis_last, weights, bias_ok
        )
        drop.update(folded)
        config["post_ops"] = post_ops
        # Activations times activations (attention's batched matmuls) stay f32, and so do
        # grouped and depthwise convolutions: memory-bound, they gain less from bf16 than the
        # input conversion costs (EfficientNet-Lite0: 9.17 ms with them in bf16, 8.86 without),
        # and kept in f32 the Chelsea photo keeps its fp32 top-1 class ('tiger cat' at 0.378 vs
        # 0.368; 'Egyptian cat' first with them in bf16). Operators under MIN_PARALLEL_MACS stay
        # f32 as well: the conversion call costs more than bf16 saves (Silero VAD's window took
        # 0.137 ms with its 7 small operators in bf16, 0.103 in f32).
        on_weights = config["weights"] if name == "relax.matmul" else not config["transposed"]
        quantized = None
        if on_weights and int8_kernels:
            quantized = dequantized(call.args[0], values, weights)
        reduced = (
            precision in _CONVERTED
            and not config["single_thread"]
            and (config["weights"] if name == "relax.matmul" else config["groups"] == 1)
        )
        if quantized is not None:
            config["precision"], reduced = INT8, False
        elif reduced:
            config["precision"] = precision
        args = [call.args[0], call.args[1], *([bias] if bias is not None else [])]
        if quantized is not None:
            source, scale, zero = quantized
            args = [source, *args[1:], scale, zero]
        depthwise = None
        if name == "relax.nn.conv2d" and quantized is None and not reduced:
            depthwise = _depthwise_after(
                bindings,
                call,
                last,
                config,
                channels,
                weights,
                1 if config["single_thread"] else threads,
            )
        if depthwise is not None:
            dw_var, dw_call, dw = depthwise
            dw_last, dw_bias, dw_post_ops, dw_folded = _epilogue(
                bindings, dw_var, channels, True, weights, True
            )
            consumed.add(dw_var)
            drop.update([last, *dw_folded])
            last = dw_last
            config["dw"] = {
                "kernel_layout": dw["kernel_layout"],
                "strides": dw["strides"],
                "bias": dw_bias is not None,
                "post_ops": dw_post_ops,
            }
            args += [dw_call.args[1], *([dw_bias] if dw_bias is not None else [])]
        args.append(tvm.ir.StringImm(json.dumps(config, sort_keys=True)))
        replace[last] = (function, args, last.ty)
        folded_ops = len(post_ops) + (bias is not None)
        if "dw" in config:
            folded_ops += len(config["dw"]["post_ops"]) + config["dw"]["bias"]
        for key, count in (
            (function.rsplit(".", 1)[-1], 1),
            ("post_ops", folded_ops),
            *([("depthwise_fused", 1)] if "dw" in config else []),
            *([(precision, 1)] if reduced else []),
            *([(INT8, 1)] if quantized is not None else []),
        ):
            counts[key] = counts.get(key, 0) + count
    return replace, drop


@mutator
class _Rewrite(PyExprMutator):  # type: ignore[misc]
    def __init__(self, mod: Any, replace: dict[Any, Any], drop: set[Any]) -> None:
        super().__init__(mod)
        self.replace, self.drop = replace, drop

    def visit_var_binding_(self, binding: Any) -> None:
        if binding.var in self.drop:
            return
        if binding.var in self.replace:
            function, args, ty = self.replace[binding.var]
            # An argument computed for the call (a transpose) gets a binding of its own.
            args = [
                self.builder_.emit(self.visit_expr(arg))
                if isinstance(arg, relax.Call)
                else self.visit_expr(arg)
                for arg in args
            ]
            value = relax.call_dps_packed(function, relax.Tuple(args), ty)
            self.builder_.emit_normalized(
                relax.VarBinding(binding.var, self.builder_.normalize(value))
            )
            return
        super().visit_var_binding_(binding)


def offload_to_onednn(
    mod: Any,
    counts: dict[str, int],
    precision: str = "fp32",
    int8_kernels: bool = False,
    threads: int = 1,
) -> Any:
    """Return mod with main's heavy float32 convolutions and matmuls calling oneDNN, the large
    dense ones on weights computing in precision, those on dequantized 8-bit tensors in int8
    when int8_kernels, and 1x1 convolutions computing the depthwise one after them where oneDNN
    has a kernel for both at threads; counts gets the calls made per kind ("conv2d", "matmul"),
    the bias adds and activations folded in, the depthwise convolutions folded in
    ("depthwise_fused") and the calls in a reduced precision ("bf16", "int8")."""
    main = mod["main"]
    replace, drop = _plan(main, weight_params(main), counts, precision, int8_kernels, threads)
    if not replace:
        return mod
    rewrite = _Rewrite(mod, replace, drop)
    # The bounds folded in may leave their shape-only ops on constants unread.
    return replace_main(mod, rewrite, relax.analysis.remove_all_unused(rewrite.visit_expr(main)))
