"""Loading ONNX models from files or bytes, with external data read only from the model's folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from infer.errors import ModelError

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


def _expected_nbytes(tensor: TensorProto) -> int | None:
    """Return the byte size the tensor's dims and dtype imply, None for types of no fixed size."""
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError):
        return None
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    bits: dict[int, int] = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4}
    for name in ("INT2", "UINT2"):
        if hasattr(TensorProto, name):
            bits[int(getattr(TensorProto, name))] = 2
    if tensor.data_type in bits:
        return (count * bits[tensor.data_type] + 7) // 8
    return count * np.dtype(np_dtype).itemsize


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
    expected = _expected_nbytes(tensor)
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

    for tensor in iter_tensors(proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            if base is None:
                raise ModelError(
                    f"{source}: tensor {tensor.name!r} has external data, which needs a model "
                    "file path (its folder) rather than bytes"
                )
            _load_external(tensor, base)

    if check:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{source}: ONNX checker rejected the model: {first}") from None
        except ValueError as exc:  # e.g. a model over the 2 GB protobuf limit
            raise ModelError(f"{source}: ONNX checker failed: {exc}") from None
    digest = hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
    return LoadedModel(proto, source, digest)
