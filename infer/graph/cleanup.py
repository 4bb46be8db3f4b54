"""Graph clean-ups TVM's importer needs: initializers that are also inputs, unused initializers."""

from __future__ import annotations

import onnx

from infer.graph.support import iter_nodes

__all__ = [
    "constant_initializers",
    "constants_to_initializers",
    "dropout_to_identity",
    "for_import",
    "sum_to_add",
]

# IR version 4 is the first where an initializer need not be listed as a graph input.
IR_VERSION_INITIALIZERS_NOT_INPUTS = 4


def constant_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where initializers are constants: not graph inputs, and dropped when unused.

    Models of IR version 3 list every initializer as an input too; TVM's importer then binds
    those twice. Like ONNX Runtime when no feed overrides them, infer treats them as constants.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    used = {name for node in iter_nodes(graph) for name in node.input} | {
        o.name for o in graph.output
    }
    initializers = [t for t in graph.initializer if t.name in used]
    names = {t.name for t in initializers} | {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.extend(inputs)
    out.ir_version = max(out.ir_version, IR_VERSION_INITIALIZERS_NOT_INPUTS)
    return out


def sum_to_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where each variadic Sum is a chain of Adds.

    TVM imports Sum as broadcast_to + stack (a 5-d copy for 4-d inputs) + sum, which costs a copy
    of every input and blocks layout conversion; Add broadcasts the same way (numpy rules).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(out.graph.node):
        if node.op_type != "Sum" or node.domain not in ("", "ai.onnx") or not node.input:
            nodes.append(node)
            continue
        inputs = list(node.input)
        if len(inputs) == 1:
            nodes.append(
                onnx.helper.make_node("Identity", inputs, list(node.output), name=node.name)
            )
            continue
        acc = inputs[0]
        for step, operand in enumerate(inputs[1:], start=1):
            last = step == len(inputs) - 1
            target = node.output[0] if last else f"{node.output[0]}__sum{index}_{step}"
            nodes.append(
                onnx.helper.make_node(
                    "Add", [acc, operand], [target], name=f"{node.name}__add{step}"
                )
            )
            acc = target
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


# Constant nodes at least this large hold weights; smaller ones (shapes, axes, scales) stay
# constants, which TVM's importer needs to see as such.
MIN_WEIGHT_ELEMENTS = 16


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where large floating-point Constant nodes of the main graph are initializers.

    Exports that store weights as Constant nodes (PaddlePaddle's) would otherwise compile them
    into the library as embedded constants; as initializers they become the artifact's weights.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            count = 1
            for d in value.dims:
                count *= d
            floating = value.data_type in (
                onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16
            )  # fmt: skip
            if floating and count >= MIN_WEIGHT_ELEMENTS and len(node.output) == 1:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def dropout_to_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where inference-mode Dropouts whose mask nobody reads are Identity.

    At inference Dropout passes its input through; TVM imports it as a (data, mask) tuple,
    which blocks layout conversion. One with a training_mode input, or a mask in use, stays.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = {name for node in iter_nodes(out.graph) for name in node.input} | {
        o.name for o in out.graph.output
    }
    for i, node in enumerate(out.graph.node):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx") or len(node.input) > 2:
            continue
        if len(node.output) > 1 and node.output[1] and node.output[1] in used:
            continue
        out.graph.node[i].CopyFrom(
            onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        )
    return out


def for_import(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the model as TVM's importer should see it: every clean-up above, C identifiers."""
    from infer.graph.names import sanitize_value_names

    cleaned = dropout_to_identity(
        sum_to_add(constants_to_initializers(constant_initializers(model)))
    )
    return sanitize_value_names(cleaned)
