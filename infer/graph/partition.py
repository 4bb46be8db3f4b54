"""Partitioning: which nodes TVM compiles and which run on ONNX Runtime, in the fewest segments.

A node goes to ONNX Runtime when TVM's importer has no converter for it (or for a node in one
of its subgraphs), when it is not in the default ONNX domain, when TVM is known to compute it
wrongly or unsafely (_TVM_WRONG, sub-byte tensors), when a tensor it reads from an ONNX Runtime
segment has no known rank, or when the build found that TVM rejects it (`forced`).
Each node gets the earliest level its inputs allow, a level rising each time a path changes
runtime; the nodes of one (level, runtime) pair form a segment, and segments run in level order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from infer.errors import UnsupportedOp
from infer.graph.legalize import NOT_LEGALIZED
from infer.graph.narrow import NARROW_TYPES
from infer.graph.shapes import dims_of, inferred_types
from infer.graph.support import TVM_CONTRIB_OPS, iter_nodes, supported_op_types

__all__ = [
    "ONNXRUNTIME",
    "TVM",
    "Partition",
    "Segment",
    "node_flops",
    "node_key",
    "partition",
    "subgraph_refs",
]

TVM = "tvm"
ONNXRUNTIME = "onnxruntime"
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def node_key(node: onnx.NodeProto) -> str:
    """Return a name that identifies a node across copies of the graph: its first output."""
    return next((o for o in node.output if o), node.name)


@dataclass
class Segment:
    """A run of nodes on one runtime, as a standalone ONNX model."""

    kind: str
    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    node_keys: list[str]
    op_types: dict[str, int] = field(default_factory=dict)
    flops: int = 0

    @property
    def node_count(self) -> int:
        return len(self.node_keys)

    def output_dtypes(self) -> list[str]:
        """Return the numpy dtype name ONNX declares for each output ('' where unknown)."""
        names: list[str] = []
        for value in self.model.graph.output:
            try:
                elem = value.type.tensor_type.elem_type
                names.append(np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else "")
            except (KeyError, TypeError, ValueError):
                names.append("")
        return names


@dataclass
class Partition:
    """The segments of a model, in execution order."""

    segments: list[Segment]
    reasons: dict[str, str] = field(default_factory=dict)  # node key -> why ONNX Runtime

    @property
    def single_tvm(self) -> bool:
        """Whether TVM takes the whole model (a model of no nodes included)."""
        return all(s.kind == TVM for s in self.segments) and len(self.segments) <= 1

    def fallback_op_types(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for seg in self.segments:
            if seg.kind == ONNXRUNTIME:
                counts.update(seg.op_types)
        return dict(counts.most_common())

    def fallback_ops(self) -> list[UnsupportedOp]:
        """Return the op types that run on ONNX Runtime, with counts and first node names."""
        found: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for seg in self.segments:
            if seg.kind != ONNXRUNTIME:
                continue
            keys = set(seg.node_keys)
            for node in seg.model.graph.node:
                if node_key(node) in keys:
                    found[(node.domain, node.op_type)].append(node.name or node_key(node))
        return [
            UnsupportedOp(op_type=op, domain=domain, count=len(names), node_names=tuple(names[:3]))
            for (domain, op), names in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ]

    def node_counts(self) -> dict[str, int]:
        counts = {TVM: 0, ONNXRUNTIME: 0}
        for seg in self.segments:
            counts[seg.kind] += seg.node_count
        return counts


def subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Return the outer-scope names a node's subgraphs read."""
    refs: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            used: set[str] = set()
            for inner in graph.node:
                used.update(i for i in inner.input if i)
                used.update(subgraph_refs(inner))
                defined.update(inner.output)
            used.update(o.name for o in graph.output)
            refs |= used - defined
    return refs


def _reads(node: onnx.NodeProto) -> list[str]:
    return [i for i in node.input if i] + sorted(subgraph_refs(node) - set(node.input))


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    found = next((a for a in node.attribute if a.name == name), None)
    return helper.get_attribute_value(found) if found is not None else default


def _elem_type(type_proto: onnx.TypeProto | None) -> int:
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return 0
    return int(type_proto.tensor_type.elem_type)


# Cases TVM 0.27's converters take but compute wrongly (measured by tools/conformance.py).
_TVM_WRONG: dict[str, tuple[Callable[[onnx.NodeProto], bool], str]] = {
    "LayerNormalization": (
        lambda n: len([o for o in n.output[1:] if o]) > 0,
        "TVM's LayerNormalization does not compute the Mean/InvStdDev outputs",
    ),
    "NonMaxSuppression": (lambda n: True, "TVM's NonMaxSuppression returns no boxes"),
    "BatchNormalization": (
        lambda n: bool(_attribute(n, "training_mode", 0)),
        "TVM's BatchNormalization ignores training_mode=1",
    ),
}


def _tvm_rejects(node: onnx.NodeProto, supported: frozenset[str]) -> str | None:
    for inner in iter_nodes(helper.make_graph([node], "n", [], [])):
        if (inner.domain, inner.op_type) in TVM_CONTRIB_OPS:
            continue
        if inner.domain not in _DEFAULT_DOMAINS:
            return f"domain {inner.domain!r}"
        if inner.op_type not in supported:
            if inner.doc_string.startswith(NOT_LEGALIZED):
                why = inner.doc_string[len(NOT_LEGALIZED) :]
                return f"TVM has no converter for {inner.op_type}, and it was not legalized: {why}"
            return f"TVM has no converter for {inner.op_type}"
        wrong = _TVM_WRONG.get(inner.op_type)
        if wrong is not None and wrong[0](inner):
            return wrong[1]
    return None


def _static_shape(type_proto: onnx.TypeProto | None) -> tuple[int, ...] | None:
    dims = dims_of(type_proto)
    if dims is None or any(d is None for d in dims):
        return None
    return tuple(int(d) for d in dims if d is not None)


def node_flops(node: onnx.NodeProto, types: Mapping[str, onnx.TypeProto]) -> int:
    """Return an estimate of a node's floating-point operations (0 when shapes are unknown).

    Multiply-adds count two: Conv, ConvTranspose, MatMul and Gemm by their reductions, every
    other op one per output element.
    """
    out = _static_shape(types.get(node.output[0])) if node.output else None
    if out is None:
        return 0
    size = int(np.prod(out)) if out else 1
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        weight = _static_shape(types.get(node.input[1]))
        if weight is None:
            return 0
        per_output = int(np.prod(weight[1:]))
        if node.op_type == "ConvTranspose":  # each input element scatters into the output
            data = _static_shape(types.get(node.input[0]))
            return 2 * int(np.prod(data)) * int(np.prod(weight[1:])) if data else 0
        return 2 * size * per_output
    if node.op_type in ("MatMul", "Gemm") and node.input:
        left = _static_shape(types.get(node.input[0]))
        if not left:
            return 0
        transposed = node.op_type == "Gemm" and _attribute(node, "transA", 0)
        k = left[0] if transposed and len(left) == 2 else left[-1]
        return 2 * size * k
    return size


def _has_rank(type_proto: onnx.TypeProto | None) -> bool:
    return _elem_type(type_proto) != 0 and dims_of(type_proto) is not None


def partition(model: onnx.ModelProto, forced: Mapping[str, str] | None = None) -> Partition:
    """Return the model split into TVM and ONNX Runtime segments.

    forced maps node keys (see node_key) that must run on ONNX Runtime to the reason.
    """
    graph = model.graph
    supported = supported_op_types()
    types = inferred_types(model)
    forced = dict(forced or {})
    reasons: dict[str, str] = {}
    initializers = {t.name for t in graph.initializer}
    # Constants are free: each segment that reads one gets its own copy.
    graph_outputs = [o.name for o in graph.output]
    constants = {
        n.output[0]: n
        for n in graph.node
        if n.op_type == "Constant"
        and n.domain in _DEFAULT_DOMAINS
        and n.output[0] not in graph_outputs
    }
    body = [n for n in graph.node if not (n.output and n.output[0] in constants)]
    reads = {node_key(n): _reads(n) for n in body}  # subgraph scans, once per node
    kinds: dict[str, str] = {}
    producer_kind: dict[str, str] = {}
    # Sequences, maps and optionals at the model's edge: TVM's segments take tensors only.
    containers = {
        v.name for v in [*graph.input, *graph.output] if not v.type.HasField("tensor_type")
    }
    for node in body:
        key = node_key(node)
        reason = forced[key] if key in forced else _tvm_rejects(node, supported)
        if reason is None and containers.intersection([*reads[key], *node.output]):
            reason = "a sequence, map or optional input or output of the model"
        if reason is None and any(
            _elem_type(types.get(name)) in NARROW_TYPES for name in [*reads[key], *node.output]
        ):
            # What narrow.py could not turn into codes: TVM 0.27 reads sub-byte tensors past
            # their buffers, and gets float8's NaN, saturation and FNUZ bias wrong.
            reason = "a float8, float4, int4 or int2 value on an op infer does not spell on codes"
        if reason is None:
            unranked = [
                name
                for name in reads[key]
                if producer_kind.get(name) == ONNXRUNTIME and not _has_rank(types.get(name))
            ]
            if unranked:
                reason = f"input {unranked[0]!r} from ONNX Runtime has no known rank"
        kinds[key] = TVM if reason is None else ONNXRUNTIME
        if reason is not None:
            reasons[key] = reason
        for out in node.output:
            producer_kind[out] = kinds[key]

    level: dict[str, int] = {}
    producer: dict[str, onnx.NodeProto] = {}
    groups: dict[tuple[int, str], list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in body:
        kind = kinds[node_key(node)]
        lvl = 0
        for name in reads[node_key(node)]:
            if name in producer:
                p = producer[name]
                p_lvl = level[node_key(p)]
                lvl = max(lvl, p_lvl if kinds[node_key(p)] == kind else p_lvl + 1)
        level[node_key(node)] = lvl
        groups[(lvl, kind)].append(node)
        for out in node.output:
            producer[out] = node

    order = sorted(groups, key=lambda k: (k[0], k[1] != TVM))
    reads_after: list[set[str]] = []
    later: set[str] = set(graph_outputs)
    for group_key in reversed(order):
        reads_after.append(set(later))
        for node in groups[group_key]:
            later.update(reads[node_key(node)])
    reads_after.reverse()

    segments: list[Segment] = []
    for index, group_key in enumerate(order):
        nodes = groups[group_key]
        produced = {o for n in nodes for o in n.output if o}
        needed = list(dict.fromkeys(name for n in nodes for name in reads[node_key(n)]))
        inputs = [
            n for n in needed if n not in produced and n not in initializers and n not in constants
        ]
        outputs = [o for n in nodes for o in n.output if o and o in reads_after[index]]
        local = [constants[n] for n in needed if n in constants]
        segment_model = _segment_model(
            model,
            local + nodes,
            inputs,
            outputs,
            set(needed),
            types,
            f"{graph.name or 'model'}_{index}",
        )
        segments.append(
            Segment(
                kind=group_key[1],
                model=segment_model,
                inputs=inputs,
                outputs=outputs,
                node_keys=[node_key(n) for n in nodes],
                op_types=dict(collections.Counter(n.op_type for n in nodes).most_common()),
                flops=sum(node_flops(n, types) for n in nodes),
            )
        )
    # A TVM segment takes and gives tensors only: its nodes on a sequence, map or optional it
    # would pass to or take from ONNX Runtime move there too, and the model is split again.
    crossing: dict[str, str] = {}
    for index, segment in enumerate(segments):
        edge = [n for n in [*segment.inputs, *segment.outputs] if not _is_tensor(types.get(n))]
        if segment.kind != TVM or not edge:
            continue
        for node in groups[order[index]]:
            if set(edge).intersection([*reads[node_key(node)], *node.output]):
                crossing[node_key(node)] = "a sequence, map or optional value between runtimes"
    if crossing:
        return partition(model, {**forced, **crossing})
    return Partition(segments, reasons)


def _is_tensor(type_proto: onnx.TypeProto | None) -> bool:
    return type_proto is None or type_proto.HasField("tensor_type")


def _value_info(name: str, types: dict[str, onnx.TypeProto]) -> onnx.ValueInfoProto:
    """Return name's type as known; a dim of unknown size gets a symbolic name."""
    value = onnx.ValueInfoProto(name=name)
    if name in types:
        value.type.CopyFrom(types[name])
        if value.type.HasField("tensor_type"):
            for i, dim in enumerate(value.type.tensor_type.shape.dim):
                if not dim.HasField("dim_value") and not dim.dim_param:
                    dim.dim_param = f"{name}_dim{i}"
    return value


def _segment_model(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    inputs: list[str],
    outputs: list[str],
    reads: set[str],
    types: dict[str, onnx.TypeProto],
    name: str,
) -> onnx.ModelProto:
    """Return nodes as a model of their own: inputs, outputs, the initializers they read."""
    graph = model.graph
    original_inputs = {v.name: v for v in graph.input}
    original_outputs = {v.name: v for v in graph.output}
    segment_graph = helper.make_graph(
        nodes,
        name,
        [original_inputs.get(i) or _value_info(i, types) for i in inputs],
        [original_outputs.get(o) or _value_info(o, types) for o in outputs],
        initializer=[t for t in graph.initializer if t.name in reads],
    )
    out = helper.make_model(
        segment_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    out.functions.extend(model.functions)
    return out
