"""Winograd convolution: 3x3 stride-1 convolutions as F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016), with 36 products a 4x4 output tile where direct
convolution takes 144.

Each eligible NHWC convolution of `main` becomes
  input transform, reading the padding as zeros (TVM) -> 36 matrix products (one grouped 1x1
  convolution, oneDNN's) -> output transform with the bias add and activation folded in (TVM),
and its weights' transform (G w G^T, 4x their bytes) joins the weight-only computations that
LiftTransformParams moves out of main: the build runs it once. The transforms are TIR kernels
written here with their own schedule: a tile's 6x6 patch is transformed in registers, one vector
of channels at a time, rows then columns, without multiplying by the zeros of the matrices.
The batch, height and width may be symbolic (the kernels take them as variables).

Measured on the 2-core Zen 3 (one thread, oneDNN 3.2; each kernel alone, the median of 15
runs, the transforms' of 50): ResNet-18's 56x56x64 convolution took 2.46 ms direct
(brgconv:avx2) against 0.88 for the 36 products plus 0.16 and 0.11 for the transforms;
28x28x128 3.28 against 0.92 + 0.08 + 0.06; 14x14x256 2.41 against 1.13 + 0.05 + 0.04. At
7x7x512 the products alone (2.84) took the direct time (2.77): four tiles a channel pair and 4x
the weights' bytes, so outputs under MIN_OUTPUT_PIXELS stay direct. The pipeline applies it
only where the products go to oneDNN (see pipeline.py).

The rounding differs from direct convolution: ~1e-5 of the output's magnitude per layer where
direct convolution's is ~1e-7 (the input transform's 5 and 4 and the output transform's 8
scale the terms); the build's parity check holds every artifact to its float32 tolerance.

Reading the padding in the input transform instead of padding a copy first takes about the
time of the two (one thread, median of 300 calls, 3 rounds; a noisy host): 56x56x64 0.175 ms
against 0.036 + 0.142; 28x28x128 0.082 against 0.022 + 0.067; 40x40x64 0.081 against 0.018 +
0.049; 160x160x16 0.409 against 0.063 + 0.382, without the copy's memory, and lets height and
width be symbolic. Its bounds are tested once per column of a tile's first stage and once per
row read: a test per value read took 0.96 s to compile a kernel (8.8 s with symbolic sizes)
against 0.61 (4.4), and a tile first read into registers ran slower than the copy.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from tvm import relax, s_tir, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from infer.optimize.offload import (
    SAME_DTYPE,
    SYMBOLIC_DIM_SIZE,
    activation_post_op,
    bias_of,
    dequantized,
)
from infer.optimize.relax_main import Bindings, op_name, replace_main, weight_params

__all__ = ["MIN_OUTPUT_PIXELS", "winograd_convolutions"]

# Output tile side m of F(m x m, 3 x 3), and the input tile side m + 2.
TILE = 4
_SIDE = TILE + 2
# B^T, G and A^T of F(4x4, 3x3) (the paper's interpolation points 0, 1, -1, 2, -2, infinity).
_B_T = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_F = Fraction
_G = (
    (_F(1, 4), 0, 0),
    (_F(-1, 6), _F(-1, 6), _F(-1, 6)),
    (_F(-1, 6), _F(1, 6), _F(-1, 6)),
    (_F(1, 24), _F(1, 12), _F(1, 6)),
    (_F(1, 24), _F(-1, 12), _F(1, 6)),
    (0, 0, 1),
)
_A_T = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
# Smaller outputs stay direct convolutions (see the module docstring: 7x7 did not gain).
MIN_OUTPUT_PIXELS = 12 * 12
# The fewest input and output channels: below, the 36 products are too thin to run at speed.
MIN_CHANNELS = 16
# Activations folded into the output transform (oneDNN's post-op names, see offload.py).
_FOLDED = ("relu", "clip")


def _combination(row: tuple[Any, ...], term: Any) -> Any:
    """Return sum_i row[i] * term(i) as a TIR expression, zero terms left out and +-1 without a
    multiply."""
    total = None
    for i, coefficient in enumerate(row):
        if coefficient == 0:
            continue
        value = term(i)
        if coefficient == -1:
            value = -value
        elif coefficient != 1:
            value = value * tirx.const(float(coefficient), "float32")
        total = value if total is None else total + value
    return total


def _select(index: Any, expressions: list[Any]) -> Any:
    """Return expressions[index]: a chain of selects that unrolling index folds away."""
    chosen = expressions[-1]
    for k in range(len(expressions) - 2, -1, -1):
        chosen = tirx.Select(index == k, expressions[k], chosen)
    return chosen


def _input_transform(
    shape: tuple[Any, ...], top: int, left: int, tiles: tuple[Any, Any], lanes: int
) -> Any:
    """Return the PrimFunc (x, v) that writes V = B^T d B for every 6x6 tile d of NHWC x,
    padded by top and left (and with zeros past its bottom and right): v[n, tile row, tile
    column, xi, nu, channel]. The padding is read, not written: no padded copy of x."""
    n, height, width, channels, rows, columns, side = _indices((*shape, *tiles, _SIDE))
    x = te.placeholder((n, height, width, channels), "float32", name="x")
    tile_shape = (n, rows, columns, side, side, channels)
    zero = tirx.const(0.0, "float32")

    def by_rows(b: Any, i: Any, j: Any, xi: Any, q: Any, c: Any) -> Any:
        # Bounds: the column once for the combination, each row for its term.
        h, w = i * TILE - top, j * TILE + q - left

        def term(r: Any) -> Any:
            return tirx.if_then_else(tirx.all(h + r >= 0, h + r < height), x[b, h + r, w, c], zero)

        value = _select(xi, [_combination(row, term) for row in _B_T])
        return tirx.if_then_else(tirx.all(w >= 0, w < width), value, zero)

    half = te.compute(tile_shape, by_rows, name="rows")

    def by_columns(b: Any, i: Any, j: Any, xi: Any, nu: Any, c: Any) -> Any:
        return _select(nu, [_combination(row, lambda r: half[b, i, j, xi, r, c]) for row in _B_T])

    v = te.compute(tile_shape, by_columns, name="v")
    sch = s_tir.Schedule(te.create_prim_func([x, v]))
    block = sch.get_sblock("v")
    b, i, j, xi, nu, c = sch.get_loops(block)
    tile = sch.fuse(b, i, j)
    c_outer, c_inner = sch.split(c, [None, lanes])
    sch.reorder(tile, c_outer, xi, nu, c_inner)
    _finish(sch, tile, c_outer, "rows", (xi, nu), c_inner)
    return sch.mod["main"]


def _output_transform(
    shape: tuple[Any, ...], out_shape: tuple[Any, ...], bias_shape: tuple[int, ...] | None,
    activation: tuple[str, float, float] | None, lanes: int,
) -> Any:  # fmt: skip
    """Return the PrimFunc (m, [bias], y) that writes Y = A^T M A for every tile of m (as
    v above), cut to out_shape (NHWC), plus the bias, through the activation."""
    dims = _indices((*shape, *out_shape, TILE, *(bias_shape or ())))
    shape, out_shape, tile, bias_shape = dims[:6], dims[6:10], dims[10], dims[11:] or None
    n, rows, columns, _, side, channels = shape
    m = te.placeholder(shape, "float32", name="m")
    bias = te.placeholder(bias_shape, "float32", name="bias") if bias_shape else None
    half = te.compute(
        (n, rows, columns, tile, side, channels),
        lambda b, i, j, p, q, c: _select(
            p, [_combination(row, lambda s: m[b, i, j, s, q, c]) for row in _A_T]
        ),
        name="rows",
    )

    def output(b: Any, h: Any, w: Any, c: Any) -> Any:
        i, p, j, q = h // TILE, h % TILE, w // TILE, w % TILE
        value = _select(q, [_combination(row, lambda s: half[b, i, j, p, s, c]) for row in _A_T])
        if bias is not None:
            value = value + bias[(0,) * (len(bias_shape or ()) - 1) + (c,)]
        if activation is None:
            return value
        kind, low, high = activation
        if kind == "relu":
            return te.max(value, tirx.const(0.0, "float32"))
        return te.min(te.max(value, tirx.const(low, "float32")), tirx.const(high, "float32"))

    y = te.compute(out_shape, output, name="y")
    sch = s_tir.Schedule(te.create_prim_func([m, *([bias] if bias is not None else []), y]))
    block = sch.get_sblock("y")
    b, h, w, c = sch.get_loops(block)
    h_outer, h_inner = sch.split(h, [None, TILE])
    w_outer, w_inner = sch.split(w, [None, TILE])
    c_outer, c_inner = sch.split(c, [None, lanes])
    sch.reorder(b, h_outer, w_outer, c_outer, h_inner, w_inner, c_inner)
    tile = sch.fuse(b, h_outer, w_outer)
    _finish(sch, tile, c_outer, "rows", (h_inner, w_inner), c_inner)
    return sch.mod["main"]


def _finish(
    sch: Any, tile: Any, c_outer: Any, first: str, unrolled: tuple[Any, Any], c_inner: Any
) -> None:
    """Tiles in parallel; the first stage of a tile's vector of channels computed into
    registers just before the second needs it; the tile's positions unrolled (the selects fold
    to one combination each), the channels a vector."""
    sch.parallel(tile)
    stage = sch.get_sblock(first)
    sch.compute_at(stage, c_outer)
    sch.set_scope(stage, 0, "local")
    *_, outer, inner, vector = sch.get_loops(stage)
    sch.unroll(outer)
    sch.unroll(inner)
    sch.vectorize(vector)
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(c_inner)


def _kernel(func: Any) -> Any:
    """func marked scheduled (the default schedule leaves it) and opaque (never fused: the
    operators around it would undo its schedule)."""
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)


def _weight_transform(w: Any, channels: int, outputs: int) -> Any:
    """Return the Relax expression of U = G w G^T for HWIO 3x3 weights w, as the HWIO weights
    (1, 1, C, 36 K) of the grouped 1x1 convolution: group xi * 6 + nu holds U[xi, nu]."""
    g = relax.const([[float(v) for v in row] for row in _G], "float32")
    g_t = relax.const([[float(_G[k][r]) for k in range(_SIDE)] for r in range(3)], "float32")
    left = relax.op.matmul(g, relax.op.reshape(w, (3, 3 * channels * outputs)))
    left = relax.op.permute_dims(relax.op.reshape(left, (_SIDE, 3, channels * outputs)), [0, 2, 1])
    both = relax.op.reshape(relax.op.matmul(left, g_t), (_SIDE, channels, outputs, _SIDE))
    both = relax.op.permute_dims(both, [1, 0, 3, 2])  # (C, xi, nu, K)
    return relax.op.reshape(both, (1, 1, channels, _SIDE * _SIDE * outputs))


def _dims(expr: Any) -> tuple[Any, ...] | None:
    """Return a float32 tensor's dims: ints where static, TIR expressions where symbolic."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32":
        return None
    values = getattr(ty.shape, "values", None)
    if not values:
        return None
    return tuple(int(v) if isinstance(v, tirx.IntImm) else v for v in values)


def _tiles(size: Any) -> Any:
    """Return how many tiles cover size outputs (an int, or a TIR expression of a symbolic one)."""
    return -(-size // TILE) if isinstance(size, int) else tirx.floordiv(size + TILE - 1, TILE)


def _variables(dims: tuple[Any, ...], names: str) -> tuple[Any, ...]:
    """Return dims with each symbolic one a fresh int64 TIR variable (named by the letter of
    names at its place): the kernel's own, bound from its arguments when it is called."""
    return tuple(
        d if isinstance(d, int) else tirx.Var(name, "int64")
        for d, name in zip(dims, names, strict=True)
    )


def _indices(dims: tuple[Any, ...]) -> tuple[Any, ...]:
    """Return a kernel's dims with one index type: int64 throughout when one is a (int64)
    variable, as mixed types fail TIR's lowering."""
    if all(isinstance(d, int) for d in dims):
        return dims
    return tuple(tirx.IntImm("int64", d) if isinstance(d, int) else d for d in dims)


def _signature(dims: tuple[Any, ...]) -> tuple[int | None, ...]:
    """Return dims with the symbolic ones as None: what a kernel made for them depends on."""
    return tuple(d if isinstance(d, int) else None for d in dims)


def _eligible(call: Any, fixed: set[Any], lanes: int) -> bool:
    """Whether call is a float32 3x3 stride-1 NHWC convolution on weights (parameters, or
    computed from them alone), large enough (a symbolic height or width counts as
    SYMBOLIC_DIM_SIZE, as in offload.py)."""
    if op_name(call) != "relax.nn.conv2d":
        return False
    attrs, (data, kernel) = call.attrs, call.args
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != (
        "NHWC", "HWIO", "NHWC"
    ) or str(attrs.out_dtype) not in SAME_DTYPE:  # fmt: skip
        return False
    if int(attrs.groups) != 1 or any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation)):
        return False
    if kernel not in fixed:  # a constant's transform would not be lifted: run every call
        return False
    shapes = _dims(data), _dims(kernel), _dims(call)
    if None in shapes or not all(isinstance(d, int) for d in shapes[1]):  # type: ignore[union-attr]
        return False
    (kh, kw, channels, outputs), (_, height, width, _) = shapes[1:]  # type: ignore[misc]
    pixels = math.prod(d if isinstance(d, int) else SYMBOLIC_DIM_SIZE for d in (height, width))
    return (
        (kh, kw) == (3, 3)
        and pixels >= MIN_OUTPUT_PIXELS
        and min(channels, outputs) >= MIN_CHANNELS
        and channels % lanes == 0
        and outputs % lanes == 0
    )


def _fixed_vars(bindings: Bindings, weights: set[Any]) -> set[Any]:
    """Return the vars computed from the weights alone (what LiftTransformParams lifts)."""
    fixed = set(weights)
    for var in bindings.order:
        value = bindings.values[var]
        if isinstance(value, relax.Call) and all(
            v in fixed for v in relax.analysis.free_vars(value)
        ):
            fixed.add(var)
    return fixed


def _plan(
    main: Any, lanes: int, int8_kernels: bool
) -> tuple[dict[Any, tuple[Any, Any, Any]], set[Any]]:
    """Return {last var of each chain: (convolution, bias, activation)} and the vars to drop."""
    bindings = Bindings(main)
    fixed = _fixed_vars(bindings, weight_params(main))
    replace: dict[Any, tuple[Any, Any, Any]] = {}
    drop: set[Any] = set()
    for var in bindings.order:
        call = bindings.values[var]
        if not _eligible(call, fixed, lanes):
            continue
        if int8_kernels and dequantized(call.args[0], bindings.values, fixed) is not None:
            continue  # an int8 convolution in oneDNN
        outputs = _dims(call)[-1]  # type: ignore[index]
        last, bias, activation = var, None, None
        user = bindings.sole_user(last)
        if user is not None and op_name(bindings.values[user]) == "relax.add":
            bias = bias_of(bindings.values[user], last, fixed, outputs, axis_last=True)
            if bias is not None:
                drop.add(last)
                last, user = user, bindings.sole_user(user)
        if user is not None:
            post = activation_post_op(bindings.values[user], last, bindings.values)
            if post is not None and post[0] in _FOLDED:
                activation = post
                drop.add(last)
                last = user
        replace[last] = (call, bias, activation)
    return replace, drop


@mutator
class _Rewrite(PyExprMutator):  # type: ignore[misc]
    def __init__(self, mod: Any, replace: dict[Any, Any], drop: set[Any], lanes: int) -> None:
        super().__init__(mod)
        self.replace, self.drop, self.lanes = replace, drop, lanes
        self.kernels: dict[tuple[Any, ...], Any] = {}

    def _call_kernel(self, key: tuple[Any, ...], make: Any, args: list[Any], shape: Any) -> Any:
        gvar = self.kernels.get(key)
        if gvar is None:
            name = f"winograd_{key[0]}_{len(self.kernels)}"
            func = _kernel(make()).with_attr("global_symbol", name)
            gvar = self.kernels[key] = self.builder_.add_func(func, name)
        out = relax.TensorType(shape, "float32")
        return self.builder_.emit(relax.call_tir(gvar, args, out))

    def visit_var_binding_(self, binding: Any) -> None:
        if binding.var in self.drop:
            return
        if binding.var not in self.replace:
            super().visit_var_binding_(binding)
            return
        call, bias, activation = self.replace[binding.var]
        data, kernel = (self.visit_expr(arg) for arg in call.args)
        n, height, width, channels = _dims(call.args[0])  # type: ignore[misc]
        _, out_height, out_width, outputs = _dims(call)  # type: ignore[misc]
        top, left, _, _ = (int(p) for p in call.attrs.padding)
        rows, columns = _tiles(out_height), _tiles(out_width)
        lanes = self.lanes
        tile_dims = (n, rows, columns, _SIDE, _SIDE)
        dims = _variables((n, height, width, rows, columns), "nhwrq")
        tiles = self._call_kernel(
            ("input", _signature((n, height, width, rows, columns)), channels, top, left, lanes),
            lambda: _input_transform((*dims[:3], channels), top, left, dims[3:], lanes),
            [data], (*tile_dims, channels),
        )  # fmt: skip
        count = n * rows * columns
        flat = self.builder_.emit(relax.op.reshape(tiles, (1, 1, count, _SIDE * _SIDE * channels)))
        weights = self.builder_.emit(_weight_transform(kernel, channels, outputs))
        products = self.builder_.emit(
            relax.op.nn.conv2d(
                flat, weights, groups=_SIDE * _SIDE, data_layout="NHWC", kernel_layout="HWIO"
            )
        )
        products = self.builder_.emit(relax.op.reshape(products, (*tile_dims, outputs)))
        args = [products]
        bias_shape = None
        if bias is not None:
            args.append(self.visit_expr(bias))
            bias_shape = _dims(bias)
        sizes = (n, rows, columns, out_height, out_width)
        dims = _variables(sizes, "nrqhw")
        value = self._call_kernel(
            ("output", _signature(sizes), outputs, bias_shape, activation, lanes),
            lambda: _output_transform(
                (*dims[:3], _SIDE, _SIDE, outputs), (dims[0], *dims[3:], outputs), bias_shape,
                activation, lanes,
            ),
            args, (n, out_height, out_width, outputs),
        )  # fmt: skip
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))


def winograd_convolutions(
    mod: Any, counts: dict[str, int], vector_bits: int, int8_kernels: bool = False
) -> Any:
    """Return mod with main's eligible convolutions as Winograd F(4x4, 3x3) (see the module
    docstring); counts["winograd"] gets how many. vector_bits is the CPU's SIMD width; with
    int8_kernels the convolutions on dequantized 8-bit tensors are left to oneDNN's int8."""
    main = mod["main"]
    lanes = max(vector_bits // 32, 4)
    replace, drop = _plan(main, lanes, int8_kernels)
    if not replace:
        return mod
    counts["winograd"] = counts.get("winograd", 0) + len(replace)
    rewrite = _Rewrite(mod, replace, drop, lanes)
    # A bound folded in (ReLU6's) may leave its shape-only ops on constants unread.
    return replace_main(mod, rewrite, relax.analysis.remove_all_unused(rewrite.visit_expr(main)))
