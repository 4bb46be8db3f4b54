"""Legalization: ONNX ops TVM's importer lacks, rewritten into ops it has, before import.

One plain function per ONNX op, named after it, its inputs as arguments and its attributes as
keyword arguments with the spec's defaults (tinygrad's habit). A function gets an `Emitter` to
add nodes and returns the names of the op's outputs; when a case is out of reach (a sequence
length only known at run time, an activation it does not know) it raises NotLegalizable and
the node stays as it is: partitioning then sends it to ONNX Runtime, with the reason.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from infer.graph.shapes import element_types, inferred_types, known_dims
from infer.graph.support import default_opset, iter_nodes, supported_op_types

__all__ = [
    "GRU",
    "LEGALIZATIONS",
    "LSTM",
    "NOT_LEGALIZED",
    "RNN",
    "Emitter",
    "NotLegalizable",
    "legalize",
]

_DEFAULT_DOMAINS = ("", "ai.onnx")
# The doc_string of the nodes a legalization emits.
LEGALIZED = "infer: legalized"
# Initializers up to this size are offered to legalizations as constants.
MAX_CONSTANT_ELEMENTS = 64
# A node left as it is carries the reason in its doc_string, after this marker.
NOT_LEGALIZED = "infer: not legalized: "
# Unrolled recurrences beyond this many steps are left to ONNX Runtime (graph size).
MAX_UNROLLED_STEPS = 512
MAX_EXPANSION_ROUNDS = 4


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Return node's attributes by name, strings decoded."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}


class NotLegalizable(Exception):
    """This case of the op cannot be rewritten here; the message says why."""


class Emitter:
    """Adds nodes to a graph under construction, with fresh names and the model's opset."""

    def __init__(
        self,
        prefix: str,
        opset: int,
        shapes: dict[str, tuple[int | None, ...]],
        constants: dict[str, np.ndarray] | None = None,
        types: dict[str, int] | None = None,
        inputs: frozenset[str] = frozenset(),
    ):
        self.prefix = prefix
        self.inputs = inputs  # the graph's inputs: values known only at run time
        self.opset = opset
        self.shapes = shapes
        self.constants = constants or {}
        self.types = types or {}
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def _name(self) -> str:
        self._count += 1
        return f"{self.prefix}__{self._count}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Add a node; return its output name (a list of names when outputs > 1)."""
        names = [self._name() for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=names[0] + "_node", **attrs)
        node.doc_string = LEGALIZED  # not legalized again in a later round
        self.nodes.append(node)
        return names if outputs > 1 else names[0]

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """Add a Constant node of value; return its name."""
        name = self._name()
        array = np.asarray(value, dtype=dtype)
        self.nodes.append(
            helper.make_node(
                "Constant", [], [name], name=name + "_node", value=numpy_helper.from_array(array)
            )
        )
        return name

    def named(self, declared: Sequence[str], produced: Sequence[str]) -> list[onnx.NodeProto]:
        """Return the nodes emitted, giving the op's declared output names to the values
        produced: renamed where they are made, else through an Identity."""
        nodes = list(self.nodes)
        read = {name for n in nodes for name in n.input}
        made = {name: n for n in nodes for name in n.output}
        for name, value in zip(declared, produced, strict=False):
            if not name:
                continue
            if value in made and value not in read:  # name the value where it is made
                maker = made[value]
                maker.output[list(maker.output).index(value)] = name
            else:
                nodes.append(helper.make_node("Identity", [value], [name]))
        return nodes

    def dim(self, name: str, axis: int) -> int | None:
        """Return the static size of name's dim axis, None when unknown."""
        shape = self.shapes.get(name)
        if shape is None or axis >= len(shape):
            return None
        return shape[axis]

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return str(self.op("Unsqueeze", x, self.const(list(axes))))
        return str(self.op("Unsqueeze", x, axes=list(axes)))

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return str(self.op("Slice", x, self.const([start]), self.const([end]), self.const([axis])))

    def take(self, x: str, index: int, axis: int = 0) -> str:
        """Return x[index] along axis, that axis removed.

        Slice + Squeeze rather than Gather: TVM imports Gather with index normalisation
        through shape_of, which its ConvertLayout pass then fails on (std::bad_alloc).
        """
        part = self.slice(x, index, index + 1, axis)
        if self.opset >= 13:
            return str(self.op("Squeeze", part, self.const([axis])))
        return str(self.op("Squeeze", part, axes=[axis]))


# Activation functions of the recurrent ops: name -> (uses alpha, uses beta, builder).
def _affine(g: Emitter, x: str, a: float, b: float) -> str:
    scaled = g.op("Mul", x, g.const(a, np.float32))
    return str(g.op("Add", scaled, g.const(b, np.float32)))


def _scaled_tanh(g: Emitter, x: str, a: float, b: float) -> str:
    inner = g.op("Tanh", g.op("Mul", x, g.const(b, np.float32)))
    return str(g.op("Mul", inner, g.const(a, np.float32)))


_ACTIVATIONS: dict[str, tuple[float | None, float | None, Callable[..., str]]] = {
    "sigmoid": (None, None, lambda g, x, a, b: g.op("Sigmoid", x)),
    "tanh": (None, None, lambda g, x, a, b: g.op("Tanh", x)),
    "relu": (None, None, lambda g, x, a, b: g.op("Relu", x)),
    "softsign": (None, None, lambda g, x, a, b: g.op("Softsign", x)),
    "softplus": (None, None, lambda g, x, a, b: g.op("Softplus", x)),
    "leakyrelu": (0.01, None, lambda g, x, a, b: g.op("LeakyRelu", x, alpha=a)),
    "thresholdedrelu": (1.0, None, lambda g, x, a, b: g.op("ThresholdedRelu", x, alpha=a)),
    "elu": (1.0, None, lambda g, x, a, b: g.op("Elu", x, alpha=a)),
    "hardsigmoid": (0.2, 0.5, lambda g, x, a, b: g.op("HardSigmoid", x, alpha=a, beta=b)),
    "affine": (1.0, 0.0, _affine),
    "scaledtanh": (1.0, 1.0, _scaled_tanh),
}


def _apply_activation(
    build: Callable[..., Any], a: float | None, b: float | None, g: Emitter, x: str
) -> str:
    return str(build(g, x, a, b))


def _activations(
    names: Sequence[bytes | str] | None,
    alphas: Sequence[float] | None,
    betas: Sequence[float] | None,
    defaults: Sequence[str],
    directions: int,
) -> list[Callable[[Emitter, str], str]]:
    """Return one callable per activation slot (per direction), alphas/betas consumed in order."""
    listed = [n.decode() if isinstance(n, bytes) else n for n in (names or [])]
    if not listed:
        listed = list(defaults) * directions
    if len(listed) != len(defaults) * directions:
        raise NotLegalizable(f"{len(listed)} activations, expected {len(defaults) * directions}")
    alpha_iter, beta_iter = iter(alphas or []), iter(betas or [])
    out: list[Callable[[Emitter, str], str]] = []
    for name in listed:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise NotLegalizable(f"activation {name!r}")
        alpha_default, beta_default, build = _ACTIVATIONS[key]
        a = next(alpha_iter, alpha_default) if alpha_default is not None else None
        b = next(beta_iter, beta_default) if beta_default is not None else None
        out.append(functools.partial(_apply_activation, build, a, b))
    return out


def _recurrence(
    g: Emitter,
    kind: str,
    x: str,
    w: str,
    r: str,
    b: str,
    sequence_lens: str,
    initial_h: str,
    initial_c: str,
    p: str,
    *,
    hidden_size: int | None,
    direction: str,
    activations: list[Callable[[Emitter, str], str]],
    clip: float | None,
    layout: int,
    linear_before_reset: int = 0,
) -> list[str]:
    """Return [Y, Y_h] (and Y_c for LSTM): the recurrence unrolled over a static length."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    directions = 2 if direction == "bidirectional" else 1
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotLegalizable(f"direction {direction!r}")
    seq = g.dim(x, 1 if layout else 0)
    if seq is None:
        raise NotLegalizable("the sequence length is not static")
    if seq > MAX_UNROLLED_STEPS:
        raise NotLegalizable(f"{seq} steps, more than {MAX_UNROLLED_STEPS} to unroll")
    if sequence_lens and direction != "forward":
        raise NotLegalizable("sequence_lens with a reverse direction")
    hidden = hidden_size or g.dim(r, 2)
    if hidden is None:
        raise NotLegalizable("hidden_size unknown")
    if layout:
        x = g.op("Transpose", x, perm=[1, 0, 2])
        initial_h = g.op("Transpose", initial_h, perm=[1, 0, 2]) if initial_h else ""
        initial_c = g.op("Transpose", initial_c, perm=[1, 0, 2]) if initial_c else ""
    # Zeros of [batch, hidden] from x's batch dim (static or not): x[0, :, :1] * 0 would keep NaN.
    batch_shape = g.op("Concat", g.slice(g.op("Shape", x), 1, 2, 0), g.const([hidden]), axis=0)
    zeros = g.op("Expand", g.const(np.zeros((1, hidden)), np.float32), batch_shape)
    if sequence_lens:
        lens = g.op("Cast", sequence_lens, to=onnx.TensorProto.INT64)
    per_dir = len(activations) // directions
    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        f = activations[d * per_dir : (d + 1) * per_dir]
        w_t = g.op("Transpose", g.take(w, d), perm=[1, 0])  # [input, gates*hidden]
        r_t = g.op("Transpose", g.take(r, d), perm=[1, 0])  # [hidden, gates*hidden]
        h = g.take(initial_h, d) if initial_h else zeros
        c = g.take(initial_c, d) if initial_c else zeros
        # One step (a streaming model's cell: Silero VAD): one product [x, h] @ [W; R] where
        # two would each pay a call. GRU's candidate multiplies h apart, so it keeps two.
        joined = seq == 1 and kind != "GRU"
        if joined:
            x_h = g.op("Concat", g.take(x, 0), h, axis=1)
            xw = g.unsqueeze(g.op("MatMul", x_h, g.op("Concat", w_t, r_t, axis=0)), [0])
        else:
            xw = g.op("MatMul", x, w_t)  # every step's input projection at once
        rb_h = ""
        if b:
            b_d = g.take(b, d)
            wb = g.slice(b_d, 0, gates * hidden, 0)
            rb = g.slice(b_d, gates * hidden, 2 * gates * hidden, 0)
            if kind == "GRU":
                # The reset gate's recurrent bias of h stays apart when applied before reset.
                rb_zr = g.slice(rb, 0, 2 * hidden, 0)
                rb_h = g.slice(rb, 2 * hidden, 3 * hidden, 0)
                xw = g.op("Add", xw, wb)
                xw_zr = g.slice(xw, 0, 2 * hidden, 2)
                xw = g.op(
                    "Concat",
                    g.op("Add", xw_zr, rb_zr),
                    g.slice(xw, 2 * hidden, 3 * hidden, 2),
                    axis=2,
                )
            else:
                xw = g.op("Add", xw, g.op("Add", wb, rb))
        peep = (
            [g.slice(g.take(p, d), k * hidden, (k + 1) * hidden, 0) for k in range(3)] if p else []
        )
        steps: list[str | None] = [None] * seq
        for t in reversed(range(seq)) if reverse else range(seq):
            xw_t = g.take(xw, t)
            h_prev, c_prev = h, c

            def gate(pre: str) -> str:
                if clip is None:
                    return pre
                return str(g.op("Clip", pre, g.const(-clip, np.float32), g.const(clip, np.float32)))

            if kind != "GRU":
                pre = xw_t if joined else g.op("Add", xw_t, g.op("MatMul", h_prev, r_t))
            if kind == "RNN":
                h = f[0](g, gate(pre))
            elif kind == "LSTM":
                i, o, fg, cc = (g.slice(pre, k * hidden, (k + 1) * hidden, 1) for k in range(4))
                if peep:
                    i = g.op("Add", i, g.op("Mul", peep[0], c_prev))
                    fg = g.op("Add", fg, g.op("Mul", peep[2], c_prev))
                i, fg, cc = f[0](g, gate(i)), f[0](g, gate(fg)), f[1](g, gate(cc))
                c = g.op("Add", g.op("Mul", fg, c_prev), g.op("Mul", i, cc))
                if peep:
                    o = g.op("Add", o, g.op("Mul", peep[1], c))
                h = g.op("Mul", f[0](g, gate(o)), f[2](g, c))
            else:  # GRU, gates z, r, h
                r_zr = g.slice(r_t, 0, 2 * hidden, 1)
                r_h = g.slice(r_t, 2 * hidden, 3 * hidden, 1)
                zr = g.op("Add", g.slice(xw_t, 0, 2 * hidden, 1), g.op("MatMul", h_prev, r_zr))
                z = f[0](g, gate(g.slice(zr, 0, hidden, 1)))
                rg = f[0](g, gate(g.slice(zr, hidden, 2 * hidden, 1)))
                xh = g.slice(xw_t, 2 * hidden, 3 * hidden, 1)
                if linear_before_reset:
                    hr = g.op("MatMul", h_prev, r_h)
                    if rb_h:
                        hr = g.op("Add", hr, rb_h)
                    cand = g.op("Add", xh, g.op("Mul", rg, hr))
                else:
                    hr = g.op("MatMul", g.op("Mul", rg, h_prev), r_h)
                    if rb_h:
                        hr = g.op("Add", hr, rb_h)
                    cand = g.op("Add", xh, hr)
                cand = f[1](g, gate(cand))
                one_minus_z = g.op("Sub", g.const(1.0, np.float32), z)
                h = g.op("Add", g.op("Mul", one_minus_z, cand), g.op("Mul", z, h_prev))
            y_t = h
            if sequence_lens:
                valid = g.unsqueeze(g.op("Less", g.const(t), lens), [1])  # [batch, 1]
                h = g.op("Where", valid, h, h_prev)
                if kind == "LSTM":
                    c = g.op("Where", valid, c, c_prev)
                y_t = g.op("Where", valid, y_t, zeros)
            steps[t] = g.unsqueeze(y_t, [0])  # [1, batch, hidden]
        # Concatenated in 3-D, then one Unsqueeze: 4-D Concats trip TVM's ConvertLayout.
        all_steps = g.op("Concat", *[s for s in steps if s is not None], axis=0)
        ys.append(g.unsqueeze(all_steps, [1]))  # [seq, 1, batch, hidden]
        hs.append(g.unsqueeze(h, [0]))
        cs.append(g.unsqueeze(c, [0]))
    y = ys[0] if directions == 1 else g.op("Concat", *ys, axis=1)
    y_h = hs[0] if directions == 1 else g.op("Concat", *hs, axis=0)
    y_c = cs[0] if directions == 1 else g.op("Concat", *cs, axis=0)
    if layout:
        y = g.op("Transpose", y, perm=[2, 0, 1, 3])
        y_h = g.op("Transpose", y_h, perm=[1, 0, 2])
        y_c = g.op("Transpose", y_c, perm=[1, 0, 2])
    return [y, y_h, y_c] if kind == "LSTM" else [y, y_h]


def LSTM(
    g: Emitter, X: str, W: str, R: str, B: str = "", sequence_lens: str = "",
    initial_h: str = "", initial_c: str = "", P: str = "", *,
    hidden_size: int | None = None, direction: str = "forward",
    activations: Sequence[bytes] | None = None, activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None, clip: float | None = None,
    input_forget: int = 0, layout: int = 0,
) -> list[str]:  # fmt: skip
    """Return [Y, Y_h, Y_c] of an LSTM unrolled over its static sequence length."""
    if input_forget:
        raise NotLegalizable("input_forget=1")
    directions = 2 if direction == "bidirectional" else 1
    acts = _activations(
        activations, activation_alpha, activation_beta, ("Sigmoid", "Tanh", "Tanh"), directions
    )
    return _recurrence(
        g, "LSTM", X, W, R, B, sequence_lens, initial_h, initial_c, P,
        hidden_size=hidden_size, direction=direction, activations=acts, clip=clip, layout=layout,
    )  # fmt: skip


def GRU(
    g: Emitter, X: str, W: str, R: str, B: str = "", sequence_lens: str = "",
    initial_h: str = "", *, hidden_size: int | None = None, direction: str = "forward",
    activations: Sequence[bytes] | None = None, activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None, clip: float | None = None,
    linear_before_reset: int = 0, layout: int = 0,
) -> list[str]:  # fmt: skip
    """Return [Y, Y_h] of a GRU unrolled over its static sequence length."""
    directions = 2 if direction == "bidirectional" else 1
    acts = _activations(
        activations, activation_alpha, activation_beta, ("Sigmoid", "Tanh"), directions
    )
    return _recurrence(
        g, "GRU", X, W, R, B, sequence_lens, initial_h, "", "",
        hidden_size=hidden_size, direction=direction, activations=acts, clip=clip, layout=layout,
        linear_before_reset=linear_before_reset,
    )  # fmt: skip


def RNN(
    g: Emitter, X: str, W: str, R: str, B: str = "", sequence_lens: str = "",
    initial_h: str = "", *, hidden_size: int | None = None, direction: str = "forward",
    activations: Sequence[bytes] | None = None, activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None, clip: float | None = None, layout: int = 0,
) -> list[str]:  # fmt: skip
    """Return [Y, Y_h] of a simple RNN unrolled over its static sequence length."""
    directions = 2 if direction == "bidirectional" else 1
    acts = _activations(activations, activation_alpha, activation_beta, ("Tanh",), directions)
    return _recurrence(
        g, "RNN", X, W, R, B, sequence_lens, initial_h, "", "",
        hidden_size=hidden_size, direction=direction, activations=acts, clip=clip, layout=layout,
    )  # fmt: skip


def Gather(g: Emitter, data: str, indices: str, *, axis: int = 0) -> list[str]:
    """Return [data[index]] as Slice + Squeeze when the index is a constant scalar.

    TVM imports Gather with run-time index normalisation (shape_of, where), which its
    ConvertLayout pass fails on (std::bad_alloc) and which costs a dispatch per Gather.
    """
    index = g.constants.get(indices)
    if index is None or index.ndim != 0:
        raise NotLegalizable("the index is not a constant scalar")
    rank = len(g.shapes.get(data, ()))
    size = g.dim(data, axis % rank) if rank else None
    if size is None:
        # TVM cannot prove that a slice of a symbolic dim has extent 1, so Squeeze fails.
        raise NotLegalizable("the gathered dim has no static size")
    value = int(index)
    if value < 0:
        value += size
    return [g.take(data, value, axis % rank if rank else axis)]


def Clip(g: Emitter, input: str, min: str | float = "", max: str | float = "") -> list[str]:
    """Return [input clamped] to constant scalar bounds, as Relu or Where(Less/Greater).

    TVM imports Clip as opaque TIR calls, which its layout conversion cannot see through: an
    NHWC network then transposes to NCHW and back around every Clip. Relu, Less/Greater and
    Where import as Relax operators (Max and Min would stack both operands into one tensor).
    Before opset 11 the bounds are attributes.
    """
    dtype = helper.tensor_dtype_to_np_dtype(g.types.get(input, onnx.TensorProto.FLOAT))
    if dtype.kind != "f":
        raise NotLegalizable("only floating-point Clip is rewritten")
    low, high = (_clip_bound(g, name, value) for name, value in (("min", min), ("max", max)))
    if g.opset < 9 and (high is not None or low not in (None, 0.0)):
        raise NotLegalizable("Where needs opset 9")
    # Bounds of the input's rank (all dims 1): TVM's layout conversion rejects 0-d operands.
    rank = len(g.shapes.get(input, ()))

    def bound(value: float) -> str:
        return g.const(np.full((1,) * rank, value), dtype)

    result = input
    if low is not None and low == 0.0:
        result = g.op("Relu", result)
    elif low is not None:
        floor = bound(low)
        result = g.op("Where", g.op("Greater", result, floor), result, floor)
    if high is not None:
        ceiling = bound(high)
        result = g.op("Where", g.op("Less", result, ceiling), result, ceiling)
    return [result if result != input else g.op("Identity", input)]


def _clip_bound(g: Emitter, name: str, value: str | float) -> float | None:
    """Return a Clip bound: an attribute's value (opset < 11) or a constant input's."""
    if isinstance(value, float):
        return value
    if not value:
        return None
    array = g.constants.get(value)
    if array is None or array.size != 1:
        raise NotLegalizable(f"the {name} bound is not a constant scalar")
    if np.isnan(array).any():
        raise NotLegalizable(f"the {name} bound is NaN")
    return float(array.reshape(()))


def Reshape(g: Emitter, data: str, shape: str, *, allowzero: int = 0) -> list[str]:
    """Return [data as a 1-element vector] for a scalar reshaped to [1] or [-1]: as Unsqueeze,
    which TVM's importer takes for the scalars of shape arithmetic (its Reshape refuses them:
    wav2vec2's frame count, computed from the sample count, went to ONNX Runtime whole)."""
    del allowzero  # no zeros in a one-element target
    target = g.constants.get(shape)
    if g.shapes.get(data) != () or target is None or target.reshape(-1).tolist() not in ([1], [-1]):
        raise NotLegalizable("not a scalar reshaped to one element")
    return [g.unsqueeze(data, [0])]


LEGALIZATIONS: dict[str, Callable[..., list[str]]] = {
    "Reshape": Reshape,
    "LSTM": LSTM,
    "GRU": GRU,
    "RNN": RNN,
    "Gather": Gather,
    "Clip": Clip,
}


# Ops TVM's importer has a converter of the same name for, but not for the standard op's
# meaning: expanded into their ONNX function body whenever they have one.
_EXPAND_ALWAYS = frozenset({"Attention"})


def _wants_expansion(node: onnx.NodeProto, supported: frozenset[str]) -> bool:
    if node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type in _EXPAND_ALWAYS or node.op_type not in supported:
        return True
    # TVM's LayerNormalization computes Y only; the body gives Mean and InvStdDev too.
    return node.op_type == "LayerNormalization" and any(node.output[1:])


def expand_function(
    node: onnx.NodeProto, opset: int, input_types: Sequence[onnx.TypeProto | None], prefix: str
) -> list[onnx.NodeProto] | None:
    """Return the nodes of the op's ONNX function body for this opset, None when it has none."""
    from onnx.backend.test.case.node import function_expand_helper

    try:
        # Typed Any: onnx's stubs lack the function accessors its own test helper uses.
        schema: Any = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    versions = [v for v in schema.function_opset_versions if v <= opset]
    body = onnx.FunctionProto()
    if versions:
        body.ParseFromString(schema.get_function_with_opset_version(max(versions)))
    else:
        dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if not dependent or any(t is None for t in input_types[: len(node.input)]):
            return None
        try:
            data = schema.get_context_dependent_function_with_opset_version(
                max(dependent),
                node.SerializeToString(),
                [t.SerializeToString() for t in input_types if t is not None],
            )
        except Exception:  # the schema cannot build a body for these types
            return None
        body.ParseFromString(data)
    if not body.node:
        return None
    with_defaults = onnx.NodeProto()
    with_defaults.CopyFrom(node)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value and attr.default_value.name:
            with_defaults.attribute.append(attr.default_value)
    return list(function_expand_helper(with_defaults, body, prefix))


def legalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the model with every legalizable node rewritten, in subgraphs too.

    A node that cannot be rewritten stays, its doc_string saying why.
    """
    supported = supported_op_types()
    if not any(
        _legalization_for(n) is not None or _wants_expansion(n, supported)
        for n in iter_nodes(model.graph)
    ):
        return model
    opset = default_opset(model, missing=1)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    # A function body may use function ops in turn (SoftmaxCrossEntropyLoss uses
    # NegativeLogLikelihoodLoss): passes repeat, with fresh types, while bodies are expanded.
    for round_ in range(MAX_EXPANSION_ROUNDS):
        known = _Known.of(out, opset, supported)
        if not _legalize_graph(out.graph, known, f"r{round_}_"):
            break
    return out


@functools.cache
def _tables() -> dict[str, dict[str, Callable[..., list[str]]]]:
    """Return {domain: {op type: legalization}}: every module's functions, merged once."""
    # These modules build on this one: imported here, not at the top.
    from infer.graph.legalize_loops import LOOP_LEGALIZATIONS
    from infer.graph.legalize_ml import ML_DOMAIN, ML_LEGALIZATIONS
    from infer.graph.legalize_quant import QUANT_LEGALIZATIONS
    from infer.graph.legalize_semantics import SEMANTIC_LEGALIZATIONS
    from infer.graph.legalize_signal import SIGNAL_LEGALIZATIONS

    default = {
        **LEGALIZATIONS,
        **QUANT_LEGALIZATIONS,
        **LOOP_LEGALIZATIONS,
        **SIGNAL_LEGALIZATIONS,
        **SEMANTIC_LEGALIZATIONS,
    }
    return {**dict.fromkeys(_DEFAULT_DOMAINS, default), ML_DOMAIN: ML_LEGALIZATIONS}


def _legalization_for(node: onnx.NodeProto) -> Callable[..., list[str]] | None:
    """Return the function that rewrites node's op, None when there is none."""
    return _tables().get(node.domain, {}).get(node.op_type)


@dataclass(frozen=True)
class _Known:
    """What one legalization round knows of the model: opset, TVM's ops, inferred types."""

    opset: int
    supported: frozenset[str]
    type_protos: dict[str, onnx.TypeProto]
    shapes: dict[str, tuple[int | None, ...]]
    types: dict[str, int]  # element types

    @classmethod
    def of(cls, model: onnx.ModelProto, opset: int, supported: frozenset[str]) -> _Known:
        type_protos = inferred_types(model)
        return cls(
            opset, supported, type_protos, known_dims(type_protos), element_types(type_protos)
        )


def _legalize_graph(graph: onnx.GraphProto, known: _Known, scope: str) -> int:
    """Rewrite graph in place; return how many function bodies were expanded."""
    opset, shapes, types = known.opset, known.shapes, known.types
    expansions = 0
    nodes: list[onnx.NodeProto] = []
    constants = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    # Small initializers too (a Clip's bounds, a Gather's index); weights are not read here.
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= MAX_CONSTANT_ELEMENTS and tensor.name not in constants:
            constants[tensor.name] = numpy_helper.to_array(tensor)
    inputs = frozenset(i.name for i in graph.input)
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                expansions += _legalize_graph(sub, known, f"{scope}{index}_{attr.name}_")
        function = _legalization_for(node)
        if node.doc_string == LEGALIZED:
            nodes.append(node)
            continue
        if function is None:
            expanded = None
            if _wants_expansion(node, known.supported):
                input_types = [known.type_protos.get(i) if i else None for i in node.input]
                prefix = f"{scope}{node.op_type}{index}_"
                expanded = expand_function(node, opset, input_types, prefix)
            nodes.extend(expanded if expanded is not None else [node])
            expansions += expanded is not None
            continue
        g = Emitter(
            f"{scope}{node.op_type.lower()}{index}", opset, shapes, constants, types, inputs
        )
        attrs = node_attributes(node)
        parameters = inspect.signature(function).parameters.values()
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        accepted = {p.name for p in parameters}
        try:
            unknown = [] if open_ended else sorted(set(attrs) - accepted)
            if unknown:
                raise NotLegalizable(f"attribute(s) {', '.join(unknown)}")
            recurrent = node.op_type in ("LSTM", "GRU", "RNN")
            if (
                recurrent
                and types.get(node.input[0], onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT
            ):
                raise NotLegalizable("only float32 is legalized")
            outputs = function(g, *node.input, **attrs)
        except NotLegalizable as exc:
            if node.op_type in known.supported:  # TVM's converter takes the node as it is
                nodes.append(node)
                continue
            kept = onnx.NodeProto()
            kept.CopyFrom(node)
            kept.doc_string = f"{NOT_LEGALIZED}{exc}"  # partitioning gives this as the reason
            nodes.append(kept)
            continue
        # Inlined loop bodies bring nodes of their own: another round types and legalizes them.
        expansions += any(n.doc_string != LEGALIZED for n in g.nodes)
        nodes.extend(g.named(node.output, outputs))
    del graph.node[:]
    graph.node.extend(nodes)
    return expansions
