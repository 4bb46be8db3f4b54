"""Half-precision ops that accumulate, computed in float32.

TVM computes a float16 MatMul, Softmax or reduction in float16 throughout: sums of a few
dozen terms already lose the last bits (attention at float16 was off by 2 ulp in 1-17% of its
outputs). ONNX Runtime's CPU kernels compute these in float32 and round the result once; so
does infer now: the op's half inputs are cast to float32 and its half outputs back. This CPU
has no half arithmetic anyway: LLVM widens each half operation to float32 and back.
Elementwise ops round once per op either way and are left as they are.
"""

from __future__ import annotations

import onnx
from onnx import helper

from infer.graph.shapes import element_types, inferred_types

__all__ = ["ACCUMULATING_OPS", "half_ops_in_float"]

_HALF = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
# Ops whose result sums or normalises over many elements.
ACCUMULATING_OPS = frozenset(
    {
        "AveragePool",
        "BatchNormalization",
        "Conv",
        "ConvTranspose",
        "CumSum",
        "Einsum",
        "Gemm",
        "GlobalAveragePool",
        "GroupNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "LogSoftmax",
        "LpNormalization",
        "MatMul",
        "MeanVarianceNormalization",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMean",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "RMSNormalization",
        "Softmax",
    }
)
_PREFIX = "infer_half_"


def half_ops_in_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the model with each top-level accumulating op on half inputs computed in
    float32 (inputs cast up, outputs cast back); the model itself when it has none."""
    graph = model.graph
    candidates = [
        n for n in graph.node if n.op_type in ACCUMULATING_OPS and n.domain in ("", "ai.onnx")
    ]
    if not candidates:
        return model
    types = element_types(inferred_types(model))
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    nodes: list[onnx.NodeProto] = []
    changed = False
    for index, node in enumerate(graph.node):
        if node.op_type not in ACCUMULATING_OPS or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        halves = [name for name in node.input if name and types.get(name) in _HALF]
        outputs = [name for name in node.output if name and types.get(name) in _HALF]
        if not halves or len(outputs) != len([o for o in node.output if o]):
            nodes.append(node)  # mixed outputs (LayerNormalization's stats): left as they are
            continue
        changed = True
        wide = onnx.NodeProto()
        wide.CopyFrom(node)
        for i, name in enumerate(node.input):
            if name in halves:
                cast = f"{_PREFIX}{index}_in{i}"
                nodes.append(helper.make_node("Cast", [name], [cast], to=onnx.TensorProto.FLOAT))
                wide.input[i] = cast
        for i, name in enumerate(node.output):
            if name:
                wide.output[i] = f"{_PREFIX}{index}_out{i}"
        nodes.append(wide)
        for i, name in enumerate(node.output):
            if name:
                nodes.append(helper.make_node("Cast", [wide.output[i]], [name], to=types[name]))
    if not changed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
