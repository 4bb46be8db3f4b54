"""Which ONNX ops the TVM Relax importer can take, checked before any compile work."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import onnx

from infer.errors import UnsupportedOp, UnsupportedOpError

__all__ = [
    "TVM_CONTRIB_OPS",
    "check_supported",
    "default_opset",
    "find_unsupported",
    "iter_nodes",
    "supported_op_types",
]

# Ops the importer handles outside its converter table.
_DIRECT_OPS = frozenset({"If", "Constant"})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
NODE_NAMES_SHOWN = 3
# Contrib ops (domain, op type) that infer writes itself and TVM's importer converts.
TVM_CONTRIB_OPS = frozenset({("com.microsoft", "Gelu")})


def supported_op_types() -> frozenset[str]:
    """Return the op types of the default ONNX domain that TVM's Relax importer converts."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset(_get_convert_map()) | _DIRECT_OPS


def default_opset(model: onnx.ModelProto, missing: int = 0) -> int:
    """Return the model's opset of the default ONNX domain, missing when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), missing)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Yield every node of a graph and of its subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from iter_nodes(sub)


def find_unsupported(model: onnx.ModelProto) -> list[UnsupportedOp]:
    """Return every op type of the model the importer lacks, with counts and first node names."""
    supported = supported_op_types()
    found: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for index, node in enumerate(iter_nodes(model.graph)):
        if node.domain in _DEFAULT_DOMAINS and node.op_type in supported:
            continue
        if (node.domain, node.op_type) in TVM_CONTRIB_OPS:
            continue
        found[(node.domain, node.op_type)].append(node.name or f"#{index}")
    return [
        UnsupportedOp(
            op_type=op, domain=domain, count=len(names), node_names=tuple(names[:NODE_NAMES_SHOWN])
        )
        for (domain, op), names in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def check_supported(model: onnx.ModelProto, name: str = "model") -> None:
    """Raise UnsupportedOpError listing every op the importer lacks; return if there is none."""
    missing = find_unsupported(model)
    if missing:
        raise UnsupportedOpError(missing, model=name)
