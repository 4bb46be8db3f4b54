"""Graph clean-ups TVM's importer needs: initializers that are also inputs, unused initializers."""

from __future__ import annotations

import onnx

from infer.graph.support import iter_nodes

__all__ = ["constant_initializers"]

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
