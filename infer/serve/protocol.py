"""The KServe v2 / Open Inference Protocol's tensors over REST: JSON and the binary extension.

A request is a JSON object {"id"?, "inputs": [{"name", "shape", "datatype", "data" |
"parameters": {"binary_data_size": n}}], "outputs"?: [{"name", "parameters"?:
{"binary_data": bool}}], "parameters"?: {"binary_data_output": bool}}. With the binary tensor
data extension, the JSON is the first Inference-Header-Content-Length bytes of the body and the
binary inputs' raw little-endian bytes follow in input order (BYTES: each element a 4-byte
little-endian length, then its bytes). Every malformed part is a ProtocolError naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infer.errors import InputError

__all__ = [
    "BINARY_HEADER",
    "DATATYPES",
    "InferRequest",
    "ProtocolError",
    "datatype_of",
    "decode_request",
    "encode_response",
]

BINARY_HEADER = "Inference-Header-Content-Length"
# v2 datatype -> numpy dtype (BYTES: numpy object arrays of bytes).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype.name: name for name, dtype in DATATYPES.items() if name != "BYTES"}


class ProtocolError(InputError):
    """A request that does not follow the protocol (HTTP 400)."""


def datatype_of(dtype: str) -> str:
    """Return the v2 datatype of a numpy dtype name (object and str: BYTES)."""
    if dtype in ("object", "str") or dtype.startswith("<U"):
        return "BYTES"
    if dtype not in _BY_DTYPE:
        raise ProtocolError(f"dtype {dtype} has no KServe v2 datatype")
    return _BY_DTYPE[dtype]


@dataclass
class InferRequest:
    """A decoded infer request: the feeds, the outputs asked for and how to send them."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)
    binary_all: bool = False


def _json_part(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    if header_length is None:
        json_bytes, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{BINARY_HEADER} {header_length!r} is not a number") from None
        if not 0 <= length <= len(body):
            raise ProtocolError(f"{BINARY_HEADER} {length} is outside the body's {len(body)} bytes")
        json_bytes, tail = body[:length], body[length:]
    try:
        return json.loads(json_bytes), tail
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None


def _shape(entry: Mapping[str, Any], what: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"{what}: shape must be a list of sizes >= 0, got {shape!r}")
    return tuple(shape)


def _from_binary(raw: bytes, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise ProtocolError(f"{what}: a BYTES element's length is cut off")
            size = int.from_bytes(raw[offset : offset + 4], "little")
            items.append(raw[offset + 4 : offset + 4 + size])
            offset += 4 + size
        if offset != len(raw) or len(items) != count:
            raise ProtocolError(
                f"{what}: {len(items)} BYTES elements for shape {list(shape)} ({count})"
            )
        return np.array(items, dtype=object).reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"{what}: {len(raw)} bytes of binary data, shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    count = math.prod(shape)
    flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else None
    if flat is None or flat.size != count:
        got = "not a list" if flat is None else f"{flat.size} values"
        raise ProtocolError(f"{what}: data has {got}, shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"{what}: BYTES data must be strings")
        return np.array([v.encode("utf-8") for v in flat], dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    kinds = (bool,) if datatype == "BOOL" else (int,) if dtype.kind in "iu" else (int, float)
    if not all(
        isinstance(v, kinds) and (datatype == "BOOL" or not isinstance(v, bool)) for v in flat
    ):
        raise ProtocolError(
            f"{what}: {datatype} data must be {' or '.join(k.__name__ for k in kinds)}s"
        )
    try:
        with np.errstate(over="raise", invalid="raise"):
            values = np.array(flat.tolist(), dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise ProtocolError(f"{what}: a value does not fit {datatype} ({exc})") from None
    return values.reshape(shape)


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Return the request in body (its JSON the first header_length bytes when given)."""
    payload, tail = _json_part(body, header_length)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise ProtocolError('the request must be an object with an "inputs" list')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, entry in enumerate(payload["inputs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"inputs[{index}]: expected an object with a name")
        name = entry["name"]
        what = f"input {name!r}"
        if name in inputs:
            raise ProtocolError(f"{what} is given twice")
        datatype = entry.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(
                f"{what}: datatype {datatype!r}, expected one of {', '.join(DATATYPES)}"
            )
        shape = _shape(entry, what)
        parameters = entry.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise ProtocolError(
                    f"{what}: binary_data_size {size!r} runs past the body's binary part "
                    f"({len(tail) - offset} bytes left)"
                )
            inputs[name] = _from_binary(tail[offset : offset + size], datatype, shape, what)
            offset += size
        else:
            inputs[name] = _from_json(entry.get("data"), datatype, shape, what)
    if offset != len(tail):
        raise ProtocolError(f"{len(tail) - offset} bytes of binary data belong to no input")
    wanted = payload.get("outputs")
    outputs, binary = None, set()
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise ProtocolError('"outputs" must be a list of objects with a name')
        outputs = [o["name"] for o in wanted]
        binary = {
            o["name"] for o in wanted if (o.get("parameters") or {}).get("binary_data") is True
        }
    parameters = payload.get("parameters") or {}
    request_id = payload.get("id")
    return InferRequest(
        inputs=inputs,
        id=None if request_id is None else str(request_id),
        outputs=outputs,
        binary_outputs=binary,
        binary_all=isinstance(parameters, dict) and parameters.get("binary_data_output") is True,
    )


def _binary(array: np.ndarray) -> bytes:
    if array.dtype == object or array.dtype.kind in "US":
        parts = []
        for value in array.reshape(-1):
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(len(data).to_bytes(4, "little") + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    if array.dtype == object or array.dtype.kind in "US":
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
    flat = array.reshape(-1)
    if array.dtype.kind == "f" and not np.isfinite(flat).all():
        raise ProtocolError(
            "an output holds NaN or infinity, which JSON cannot carry: ask for binary_data"
        )
    values: list[Any] = flat.tolist()
    return values


def encode_response(
    model: str, request: InferRequest, names: Sequence[str], arrays: Sequence[np.ndarray]
) -> tuple[bytes, int | None]:
    """Return (body, JSON length when binary outputs follow it, else None) of the response."""
    outputs, tails = [], []
    for name, array in zip(names, arrays, strict=True):
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array.dtype.name),
            "shape": list(array.shape),
        }
        if request.binary_all or name in request.binary_outputs:
            data = _binary(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            tails.append(data)
        else:
            entry["data"] = _json_data(array)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not tails:
        return head, None
    return head + b"".join(tails), len(head)
