"""Renaming ONNX values: to C identifiers, so that generated code (CUDA, C) accepts them, and a
model's outputs to the ones a recipe keeps, under the names it gives."""

from __future__ import annotations

import re

import onnx

__all__ = ["rename_values", "sanitize_value_names", "select_outputs"]

_INVALID = re.compile(r"[^A-Za-z0-9_]")


def _all_names(graph: onnx.GraphProto, names: list[str]) -> None:
    for seq in (graph.input, graph.output, graph.value_info):
        names.extend(v.name for v in seq)
    names.extend(t.name for t in graph.initializer)
    names.extend(s.values.name for s in graph.sparse_initializer)
    for node in graph.node:
        names.extend(node.input)
        names.extend(node.output)
        for attr in node.attribute:
            if attr.HasField("g"):
                _all_names(attr.g, names)
            for sub in attr.graphs:
                _all_names(sub, names)


def rename_values(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename values of graph and its subgraphs in place, as mapping says."""
    for seq in (graph.input, graph.output, graph.value_info):
        for v in seq:
            v.name = mapping.get(v.name, v.name)
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    for s in graph.sparse_initializer:
        s.values.name = mapping.get(s.values.name, s.values.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
        for attr in node.attribute:
            if attr.HasField("g"):
                rename_values(attr.g, mapping)
            for sub in attr.graphs:
                rename_values(sub, mapping)


def sanitize_value_names(
    model: onnx.ModelProto, renamed: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Return a copy of model whose value names are unique C identifiers; the empty name stays.

    renamed, when given, receives each new name mapped to the original.
    """
    names: list[str] = []
    _all_names(model.graph, names)
    taken: set[str] = set()
    mapping: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if not name:
            continue
        clean = _INVALID.sub("_", name)
        if not clean[0].isalpha() and clean[0] != "_":
            clean = "v_" + clean
        # onnx:: prefixes are stripped by TVM's importer; keep names distinct after that.
        if clean.startswith("onnx__"):
            clean = "t_" + clean
        candidate, n = clean, 1
        while candidate in taken:
            candidate = f"{clean}_{n}"
            n += 1
        taken.add(candidate)
        mapping[name] = candidate
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rename_values(out.graph, mapping)
    if renamed is not None:
        renamed.update({new: old for old, new in mapping.items()})
    return out


def select_outputs(model: onnx.ModelProto, keep: dict[str, str]) -> onnx.ModelProto:
    """Return a copy of model whose outputs are only keep's keys, renamed to its values (in
    keep's order); what only the dropped outputs needed goes at compile time's dead-code pass.

    ValueError names an output the model does not have, or a new name already taken.
    """
    outputs = {v.name: v for v in model.graph.output}
    missing = [name for name in keep if name not in outputs]
    if missing:
        raise ValueError(f"no output(s) {missing}; the model's outputs are {sorted(outputs)}")
    names: list[str] = []
    _all_names(model.graph, names)
    taken = [new for old, new in keep.items() if new != old and new in names]
    if taken:
        raise ValueError(f"output name(s) {taken} already name values of the model")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [out.graph.output[list(outputs).index(name)] for name in keep]
    copies = [onnx.ValueInfoProto() for _ in kept]
    for copy, value in zip(copies, kept, strict=True):
        copy.CopyFrom(value)
    del out.graph.output[:]
    out.graph.output.extend(copies)
    rename_values(out.graph, {old: new for old, new in keep.items() if new != old})
    return out
