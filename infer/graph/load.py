"""Loading ONNX models from files or bytes, with external data read only from the model's folder."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, Message
from onnx import TensorProto

from infer.config import Limits
from infer.errors import ModelError
from infer.graph.limits import check_constant, check_node_count, tensor_nbytes

__all__ = ["LoadedModel", "iter_tensors", "load_model"]

# ONNX's protobuf serialization limit; larger models need external data.
PROTOBUF_LIMIT_BYTES = 2**31 - 1


class LoadedModel:
    """A checked ModelProto with all tensor data in memory, and where it came from."""

    def __init__(
        self, proto: onnx.ModelProto, source: str, sha256: str, name: str | None = None
    ) -> None:
        self.proto = proto
        self.source = source
        self.sha256 = sha256
        if name is None:
            name = Path(source).stem if source.endswith(".onnx") else (proto.graph.name or "model")
        self.name = name


def iter_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Yield every TensorProto of a graph: initializers, attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


def _resolve_inside(base: Path, location: str, tensor_name: str) -> Path:
    """Return the real path of location under base; ModelError when it would leave base."""
    if not location:
        raise ModelError(f"tensor {tensor_name!r}: external data has no 'location'")
    if "\x00" in location:
        raise ModelError(f"tensor {tensor_name!r}: external data location contains a NUL byte")
    rel = Path(location)
    if (
        rel.is_absolute()
        or location.startswith(("/", "\\"))
        or (len(location) > 1 and location[1] == ":")
    ):
        raise ModelError(
            f"tensor {tensor_name!r}: external data location {location!r} is an absolute path; "
            f"only files inside the model's folder {str(base)!r} are read"
        )
    if ".." in rel.parts or ".." in location.replace("\\", "/").split("/"):
        raise ModelError(
            f"tensor {tensor_name!r}: external data location {location!r} contains '..'; "
            f"only files inside the model's folder {str(base)!r} are read"
        )
    real_base = base.resolve()
    real = (real_base / rel).resolve()
    if real != real_base and real_base not in real.parents:
        raise ModelError(
            f"tensor {tensor_name!r}: external data location {location!r} resolves to "
            f"{str(real)!r}, outside the model's folder {str(real_base)!r} (a symlink?)"
        )
    if not real.is_file():
        raise ModelError(f"tensor {tensor_name!r}: external data file {location!r} does not exist")
    return real


def _load_external(tensor: TensorProto, base: Path) -> None:
    """Read one tensor's external data into raw_data, checking path, offset and length."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    name = tensor.name or "<unnamed>"
    path = _resolve_inside(base, info.get("location", ""), name)
    size = path.stat().st_size
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise ModelError(
            f"tensor {name!r}: external data offset/length must be integers, got "
            f"offset={info.get('offset')!r} length={info.get('length')!r}"
        ) from None
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelError(
            f"tensor {name!r}: external data offset={offset} length={length} is past the end "
            f"of {info['location']!r} ({size} bytes)"
        )
    expected = tensor_nbytes(tensor.data_type, list(tensor.dims))
    if expected is not None and expected != length:
        raise ModelError(
            f"tensor {name!r}: external data holds {length} bytes, its dims {list(tensor.dims)} "
            f"and dtype need {expected}"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


# Typed data fields whose length must be the element count, per data type.
_TYPED_FIELDS: dict[int, str] = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.INT32: "int32_data",
    TensorProto.STRING: "string_data",
}


def _check_data_length(tensor: TensorProto, source: str) -> None:
    """ModelError when a tensor holds more or fewer values than its dims say."""
    name = tensor.name or "<unnamed>"
    count = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        expected = tensor_nbytes(tensor.data_type, list(tensor.dims))
        if expected is not None and expected != len(tensor.raw_data):
            raise ModelError(
                f"{source}: tensor {name!r} holds {len(tensor.raw_data)} bytes of data, its dims "
                f"{list(tensor.dims)} and dtype need {expected}"
            )
        return
    field = _TYPED_FIELDS.get(tensor.data_type)
    if field is not None and len(getattr(tensor, field)) != count:
        raise ModelError(
            f"{source}: tensor {name!r} holds {len(getattr(tensor, field))} values in {field}, "
            f"its dims {list(tensor.dims)} need {count}"
        )


def _undecodable_text(message: Message, path: str) -> str | None:
    """Return the path of the first text field that is not valid UTF-8 (protobuf gives it as bytes)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            if any(
                isinstance(v, bytes) for v in ([value] if isinstance(value, str | bytes) else value)
            ):
                return f"{path}{field.name}"
        elif field.type == field.TYPE_MESSAGE:
            single = isinstance(value, Message)
            for index, sub in enumerate([value] if single else value):
                where = f"{path}{field.name}." if single else f"{path}{field.name}[{index}]."
                found = _undecodable_text(sub, where)
                if found:
                    return found
    return None


def _parse(data: bytes, source: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{source}: not a valid ONNX model (protobuf decode failed: {exc})"
        ) from None
    if not proto.HasField("graph"):
        raise ModelError(f"{source}: not a valid ONNX model (no graph)")
    return proto


def _check(proto: onnx.ModelProto, source: str) -> None:
    """ModelError unless the ONNX checker accepts the model: in full, or, when only its strict
    shape inference objects, in structure (ONNX Runtime runs such models: onnx's own function
    body of MeanVarianceNormalization-13 fails that inference)."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        if isinstance(exc, onnx.shape_inference.InferenceError) and _structure_ok(proto):
            return  # shapes are inferred again, leniently, where they are needed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{source}: ONNX checker rejected the model: {first}") from None
    except ValueError as exc:  # e.g. a model over the 2 GB protobuf limit
        raise ModelError(f"{source}: ONNX checker failed: {exc}") from None


def _structure_ok(proto: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError):
        return False
    return True


def load_model(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto, *, check: bool = True
) -> LoadedModel:
    """Return the model, checked, with external data read from inside its folder only.

    `model` is a path to a .onnx file, its bytes, or a ModelProto (whose external data, if any,
    must already be loaded).
    """
    if isinstance(model, onnx.ModelProto):
        proto, source, base = model, model.graph.name or "<ModelProto>", None
        proto = (
            onnx.ModelProto.FromString(proto.SerializeToString())
            if proto.ByteSize() < PROTOBUF_LIMIT_BYTES
            else proto
        )
    elif isinstance(model, bytes | bytearray | memoryview):
        source, base = "<bytes>", None
        proto = _parse(bytes(model), source)
    else:
        path = Path(model)
        source = str(path)
        if path.is_dir():
            raise ModelError(f"{source}: is a directory, expected an .onnx file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{source}: no such file") from None
        except OSError as exc:
            raise ModelError(f"{source}: cannot read ({exc.strerror})") from None
        proto = _parse(data, source)
        base = path.parent

    broken = _undecodable_text(proto, "")
    if broken:
        raise ModelError(f"{source}: not a valid ONNX model (field {broken} is not UTF-8 text)")
    limits = Limits.current()
    check_node_count(proto, limits, source)
    for tensor in iter_tensors(proto.graph):
        check_constant(tensor, limits, source)  # from declared dims: before reading any data
        if tensor.data_location == TensorProto.EXTERNAL:
            if base is None:
                raise ModelError(
                    f"{source}: tensor {tensor.name!r} has external data, which needs a model "
                    "file path (its folder) rather than bytes"
                )
            _load_external(tensor, base)
        _check_data_length(tensor, source)

    if check:
        _check(proto, source)
    digest = hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
    return LoadedModel(proto, source, digest)
