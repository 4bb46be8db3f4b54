"""PyTorch: nn.Modules, ExportedPrograms and .pt2 files, exported with torch.onnx.

The dynamo exporter (torch.export + torchlib) comes first; when it fails on a module, the
TorchScript exporter is tried and the switch is said in a FallbackWarning and the manifest.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from infer.errors import FallbackWarning, ModelError
from infer.frontends import Converted, DynamicAxes, error_line, named_axes, quiet, require

__all__ = ["DYNAMO_OPSET", "OPTIONS", "TORCHSCRIPT_OPSET", "convert"]

# The options of infer.compile this frontend takes.
OPTIONS = frozenset({"example_inputs", "dynamic_axes", "input_names", "output_names"})

# torchlib writes its functions for opset 18: asking for it needs no version conversion.
DYNAMO_OPSET = 18
# The newest opset the TorchScript exporter supports fully.
TORCHSCRIPT_OPSET = 17
# What names an op in the exporters' errors: aten::add, aten.add.Tensor, torch.ops.aten.add.
_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo")
_OP_PATTERN = re.compile(r"\b(?:torch\.ops\.)?(aten|prim|quantized|torchvision)(?:::|\.)(\w+)")


def convert(
    model: Any,
    *,
    example_inputs: Any = None,
    dynamic_axes: DynamicAxes | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Converted:
    """Return a torch.nn.Module, ExportedProgram or .pt2 file exported to ONNX."""
    torch = require("pytorch")
    name = type(model).__name__
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        name = path.stem
        try:
            model = torch.export.load(str(path))
        except Exception as exc:  # torch raises many kinds on a bad archive
            raise ModelError(f"{path}: not a torch.export .pt2 archive ({exc})") from None
    args, kwargs = _example(torch, model, example_inputs, name)
    if isinstance(model, torch.nn.Module):
        model.eval()
        forward = model
    else:  # an ExportedProgram
        forward = model.module()
    names = list(input_names) if input_names else _input_names(model, forward, args, kwargs)
    axes = named_axes(dynamic_axes, names, f"PyTorch {name}")
    with torch.no_grad():
        result = forward(*args, **kwargs)
    outputs = _tensors(torch, result)
    out_names = list(output_names) if output_names else _output_names(torch, result)
    if not isinstance(model, torch.nn.Module):
        axes = {}  # a program carries its own dynamic shapes
    provenance: dict[str, Any] = {"framework": "pytorch", "version": torch.__version__}
    try:
        proto = _export_dynamo(torch, model, args, kwargs, names, out_names, axes)
        provenance.update(exporter="torch.onnx.export(dynamo=True)", opset=DYNAMO_OPSET)
    except Exception as dynamo_error:
        if not isinstance(model, torch.nn.Module):
            raise _export_error(name, dynamo_error) from None
        try:
            proto = _export_torchscript(torch, model, args, names, out_names, axes)
        except Exception:
            raise _export_error(name, dynamo_error) from None
        reason = _first_line(dynamo_error)
        warnings.warn(
            f"PyTorch {name}: the dynamo exporter failed ({reason}); exported with the "
            "TorchScript exporter instead, which records the path the example inputs took",
            FallbackWarning,
            stacklevel=3,
        )
        provenance.update(
            exporter="torch.onnx.export(dynamo=False)",
            opset=TORCHSCRIPT_OPSET,
            dynamo_error=reason,
        )
    proto.graph.name = name
    if len(proto.graph.output) != len(outputs):
        reference = None  # the exporter dropped or added outputs: nothing to line up
    else:
        reference = _reference(torch, forward, names, len(args), kwargs)
    return Converted(proto, name, provenance, reference)


def _example(
    torch: Any, model: Any, example_inputs: Any, name: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return (args, kwargs) of torch tensors from example_inputs (or the program's own)."""
    if example_inputs is None:
        if isinstance(model, torch.export.ExportedProgram) and model.example_inputs is not None:
            args, kwargs = model.example_inputs
            return tuple(args), dict(kwargs)
        raise ModelError(
            f"PyTorch {name}: give example_inputs=(tensor, ...): the exporter traces the module "
            "on them (their shapes are fixed unless dynamic_axes says otherwise)"
        )

    seen: set[int] = set()

    def tensor(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value))
        # The tracer makes one graph input of a tensor given twice, and the inputs' names
        # would shift: each input gets its own tensor.
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return value.clone()
            seen.add(id(value))
        return value

    if isinstance(example_inputs, Mapping):
        return (), {str(k): tensor(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, list | tuple):
        return tuple(tensor(v) for v in example_inputs), {}
    return (tensor(example_inputs),), {}


def _input_names(
    model: Any, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[str]:
    """Return the names of forward's parameters that the example fills, in order."""
    try:
        parameters = list(inspect.signature(forward.forward).parameters)
    except (TypeError, ValueError):
        parameters = []
    positional = [p for p in parameters if p not in ("args", "kwargs")][: len(args)]
    if len(positional) < len(args):
        positional = [f"input_{i}" for i in range(len(args))]
    return positional + list(kwargs)


def _output_names(torch: Any, result: Any) -> list[str]:
    """Return a name per tensor output: its key path (last_hidden_state, 0, ...) where it has one."""
    leaves, _ = torch.utils._pytree.tree_flatten_with_path(result)
    names: list[str] = []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        names.append("_".join(keys) if keys else "output")
    if len(set(names)) != len(names) or all(n.isdigit() for n in names):
        names = ["output"] if len(names) == 1 else [f"output_{i}" for i in range(len(names))]
    return names


def _tensors(torch: Any, result: Any) -> list[Any]:
    return [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]


def _export_dynamo(
    torch: Any,
    model: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    out_names: list[str],
    axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    # Named dims as dynamic_shapes: inputs sharing a name share the dim. (Given as dynamic_axes,
    # each input's dim was its own, and a dim that the model ties to another came out static.)
    shapes = [axes.get(n) for n in names]
    dynamic_shapes = (
        None if not axes else tuple(shapes) if not kwargs else dict(zip(names, shapes, strict=True))
    )
    with quiet(*_LOGGERS):
        program = torch.onnx.export(
            model,
            args,
            kwargs=kwargs or None,
            dynamo=True,
            input_names=names,
            output_names=out_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=DYNAMO_OPSET,
            optimize=True,
            verbose=False,
        )
    proto: onnx.ModelProto = program.model_proto
    return proto


def _export_torchscript(
    torch: Any,
    model: Any,
    args: tuple[Any, ...],
    names: list[str],
    out_names: list[str],
    axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with quiet(*_LOGGERS):
        torch.onnx.export(
            model,
            args,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=out_names,
            dynamic_axes=axes or None,
            opset_version=TORCHSCRIPT_OPSET,
        )
    return onnx.load_from_string(buffer.getvalue())


def _reference(
    torch: Any, forward: Any, names: list[str], positional: int, kwargs: dict[str, Any]
) -> Any:
    """Return the module's own forward on numpy feeds, outputs flattened like the exporter's."""

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]
        keyword = dict(zip(names[positional:], tensors[positional:], strict=True))
        with torch.no_grad():
            result = forward(*tensors[:positional], **keyword)
        return [t.detach().cpu().numpy() for t in _tensors(torch, result)]

    return run


def _first_line(error: BaseException) -> str:
    """Return the first line of the innermost cause: the exporters wrap the real error."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error_line(error)


def _export_error(name: str, error: BaseException) -> ModelError:
    """Return the ModelError for an export that failed: the framework and the first failing op."""
    text = str(error)
    match = _OP_PATTERN.search(text)
    op = f" at op {match.group(1)}::{match.group(2)}" if match else ""
    return ModelError(f"PyTorch {name}: torch.onnx cannot export it{op}: {_first_line(error)}")
