"""Legalization of ONNX's loops (Loop, Scan) by unrolling, when their trip count is static.

TVM 0.27's importer has no converter for either. A Scan over a sequence of static length, or a
Loop with a constant trip count whose body never ends it early (its condition output is its
condition input or a constant true), is unrolled: the body is inlined once per step, its values
renamed per step, outer-scope names left as they are. A data-dependent loop stays on ONNX
Runtime, with that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from infer.graph.legalize import MAX_UNROLLED_STEPS, Emitter, NotLegalizable
from infer.graph.names import rename_values

__all__ = ["LOOP_LEGALIZATIONS"]

SCAN_MIN_OPSET = 9  # Scan-8 has a batch axis and sequence_lens: not unrolled here


def _inline(g: Emitter, body: onnx.GraphProto, bound: Sequence[str], prefix: str) -> list[str]:
    """Add body's nodes with its inputs bound to `bound`; return the names of its outputs."""
    mapping = {i.name: b for i, b in zip(body.input, bound, strict=True)}
    for tensor in body.initializer:
        name = f"{prefix}{tensor.name}"
        g.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        mapping[tensor.name] = name
    for node in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [mapping.get(n, n) if n else n for n in node.input]
        for k, out in enumerate(node.output):
            if out:
                mapping[out] = f"{prefix}{out}"
                copy.output[k] = mapping[out]
        copy.name = f"{prefix}{node.name or node.output[0]}"
        for attr in copy.attribute:  # subgraphs read the body's values by name
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                rename_values(sub, mapping)
        g.nodes.append(copy)
    return [mapping.get(o.name, o.name) for o in body.output]


def _stack(g: Emitter, steps: list[str], axis: int) -> str:
    parts = [g.unsqueeze(s, [axis]) for s in steps]
    return parts[0] if len(parts) == 1 else str(g.op("Concat", *parts, axis=axis))


def Scan(g: Emitter, *inputs: str, **attrs: Any) -> list[str]:
    """Return [final states..., stacked scan outputs...] of a Scan unrolled over its length."""
    if g.opset < SCAN_MIN_OPSET:
        raise NotLegalizable("Scan-8 (batch axis, sequence_lens)")
    body: onnx.GraphProto = attrs["body"]
    scans = int(attrs["num_scan_inputs"])
    states = list(inputs[: len(inputs) - scans])
    scanned = list(inputs[len(inputs) - scans :])
    in_axes = list(attrs.get("scan_input_axes") or [0] * scans)
    in_reverse = list(attrs.get("scan_input_directions") or [0] * scans)
    outputs = len(body.output) - len(states)
    out_axes = list(attrs.get("scan_output_axes") or [0] * outputs)
    out_reverse = list(attrs.get("scan_output_directions") or [0] * outputs)
    lengths = set()
    for x, axis in zip(scanned, in_axes, strict=True):
        rank = len(g.shapes.get(x, ()))
        lengths.add(g.dim(x, axis % rank) if rank else None)
    if len(lengths) != 1 or None in lengths:
        raise NotLegalizable("the scanned length is not static")
    length = int(lengths.pop())  # type: ignore[arg-type]
    if length > MAX_UNROLLED_STEPS:
        raise NotLegalizable(f"{length} steps (more than {MAX_UNROLLED_STEPS})")
    if length == 0:
        raise NotLegalizable("an empty scan")
    collected: list[list[str]] = [[] for _ in range(outputs)]
    for t in range(length):
        elements = []
        for x, axis, reverse in zip(scanned, in_axes, in_reverse, strict=True):
            rank = len(g.shapes[x])
            elements.append(g.take(x, length - 1 - t if reverse else t, axis % rank))
        produced = _inline(g, body, states + elements, f"{g.prefix}_t{t}_")
        states = produced[: len(states)]
        for k, value in enumerate(produced[len(states) :]):
            collected[k].append(value)
    stacked = []
    for steps, axis, reverse in zip(collected, out_axes, out_reverse, strict=True):
        if axis < 0:
            raise NotLegalizable("a negative scan output axis")
        stacked.append(_stack(g, steps[::-1] if reverse else steps, axis))
    return [*states, *stacked]


def _ends_early(body: onnx.GraphProto) -> bool:
    """Return True unless body's condition output is its condition input or a constant true."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    if cond_out == cond_in:
        return False
    producer = next((n for n in body.node if cond_out in n.output), None)
    if producer is None:
        return True
    if producer.op_type == "Identity" and producer.input[0] == cond_in:
        return False
    if producer.op_type == "Constant":
        value = next((a.t for a in producer.attribute if a.name == "value"), None)
        return value is None or not bool(numpy_helper.to_array(value).all())
    return True


def Loop(
    g: Emitter, M: str = "", cond: str = "", *carried: str, body: onnx.GraphProto
) -> list[str]:
    """Return [final carried values..., stacked scan outputs...] of a Loop with a constant trip
    count and no early exit, unrolled."""
    trips = g.constants.get(M) if M else None
    if trips is None:
        raise NotLegalizable("the trip count is not a constant")
    if cond and cond in g.constants and not bool(np.asarray(g.constants[cond]).all()):
        raise NotLegalizable("the loop never runs")  # rare; ONNX Runtime handles it
    if cond and cond not in g.constants:
        raise NotLegalizable("the initial condition is not a constant")
    if _ends_early(body):
        raise NotLegalizable("the body computes its own exit condition")
    count = int(np.asarray(trips).reshape(()))
    if count > MAX_UNROLLED_STEPS:
        raise NotLegalizable(f"{count} iterations (more than {MAX_UNROLLED_STEPS})")
    if count <= 0:
        raise NotLegalizable("zero iterations (empty scan outputs)")
    values = list(carried)
    outputs = len(body.output) - 1 - len(values)
    collected: list[list[str]] = [[] for _ in range(outputs)]
    condition = g.const(True, np.bool_)
    for i in range(count):
        iteration = g.const(i, np.int64)
        produced = _inline(g, body, [iteration, condition, *values], f"{g.prefix}_i{i}_")
        values = produced[1 : 1 + len(values)]
        for k, value in enumerate(produced[1 + len(values) :]):
            collected[k].append(value)
    return [*values, *(_stack(g, steps, 0) for steps in collected)]


LOOP_LEGALIZATIONS: dict[str, Callable[..., list[str]]] = {"Loop": Loop, "Scan": Scan}
