"""A summary of an ONNX model: signature, opsets, op histogram and unsupported ops."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from infer.errors import UnsupportedOp
from infer.graph.cleanup import clean
from infer.graph.load import LoadedModel
from infer.graph.partition import partition
from infer.graph.shapes import graph_inputs, graph_outputs
from infer.graph.support import find_unsupported, iter_nodes
from infer.signature import TensorSpec

__all__ = ["ModelSummary", "summarize"]


@dataclass(frozen=True)
class ModelSummary:
    """What `infer inspect` shows about an ONNX model."""

    source: str
    sha256: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: dict[str, int]
    parameter_count: int
    unsupported: list[UnsupportedOp]
    # After legalization: op type -> node count of what would run on ONNX Runtime, and why.
    fallback: dict[str, int]
    fallback_reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain JSON data."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "producer": self.producer,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "op_histogram": self.op_histogram,
            "parameter_count": self.parameter_count,
            "unsupported_ops": [
                {
                    "op_type": u.op_type,
                    "domain": u.domain,
                    "count": u.count,
                    "nodes": list(u.node_names),
                }
                for u in self.unsupported
            ],
            "onnxruntime_after_legalization": self.fallback,
            "onnxruntime_reasons": self.fallback_reasons,
        }


def summarize(model: LoadedModel) -> ModelSummary:
    """Return the summary of a loaded model."""
    proto = model.proto
    histogram = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in iter_nodes(proto.graph)
    )
    tensors = list(proto.graph.initializer) + [
        a.t
        for n in iter_nodes(proto.graph)
        if n.op_type == "Constant"
        for a in n.attribute
        if a.HasField("t")
    ]
    params = 0
    for t in tensors:
        count = 1
        for d in t.dims:
            count *= d
        params += count
    plan = partition(clean(proto))
    return ModelSummary(
        source=model.source,
        sha256=model.sha256,
        ir_version=proto.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=graph_inputs(proto.graph),
        outputs=graph_outputs(proto.graph),
        op_histogram=dict(histogram.most_common()),
        parameter_count=params,
        unsupported=find_unsupported(proto),
        fallback=plan.fallback_op_types(),
        fallback_reasons=sorted(set(plan.reasons.values())),
    )
