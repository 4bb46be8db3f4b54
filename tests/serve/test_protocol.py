"""The KServe v2 tensor coding against the protocol's own rules, written out here: JSON data in
row-major order, binary data little-endian, BYTES as 4-byte little-endian lengths + bytes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from infer.serve.protocol import ProtocolError, decode_request, encode_response


def test_json_tensors_of_every_datatype() -> None:
    request = {
        "id": 7,
        "inputs": [
            {"name": "f", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, -3, 4]},
            {"name": "i", "shape": [3], "datatype": "INT64", "data": [1, -2, 3]},
            {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]},
            {"name": "u", "shape": [1, 1], "datatype": "UINT8", "data": [[255]]},
        ],
    }
    decoded = decode_request(json.dumps(request).encode())
    assert decoded.id == "7"
    np.testing.assert_array_equal(decoded.inputs["f"], np.array([[1, 2.5], [-3, 4]], np.float32))
    assert decoded.inputs["f"].dtype == np.float32 and decoded.inputs["i"].dtype == np.int64
    assert decoded.inputs["b"].tolist() == [True, False]
    assert decoded.inputs["s"].tolist() == ["héllo".encode(), b""]
    assert decoded.inputs["u"].dtype == np.uint8 and decoded.inputs["u"].shape == (1, 1)


def test_binary_tensors_and_bytes_elements() -> None:
    floats = np.array([[0.5, -1.0, 2.0]], np.float32)
    strings = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 12},
                },
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(strings)},
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    decoded = decode_request(header + floats.tobytes() + strings, str(len(header)))
    np.testing.assert_array_equal(decoded.inputs["x"], floats)
    assert decoded.inputs["s"].tolist() == [b"abc", b""]
    body, length = encode_response(
        "m", decoded, ["y", "t"], [floats * 2, np.array([b"ok", b"\xff"], dtype=object)]
    )
    assert length is not None
    meta = json.loads(body[:length])
    assert [o["parameters"]["binary_data_size"] for o in meta["outputs"]] == [12, 4 + 2 + 4 + 1]
    assert [o["datatype"] for o in meta["outputs"]] == ["FP32", "BYTES"]
    assert body[length : length + 12] == (floats * 2).astype("<f4").tobytes()
    assert body[length + 12 :] == struct.pack("<I", 2) + b"ok" + struct.pack("<I", 1) + b"\xff"


def test_json_response_and_what_json_cannot_carry() -> None:
    request = decode_request(b'{"inputs": []}')
    body, length = encode_response("m", request, ["y"], [np.array([[1, 2]], np.int32)])
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}],
    }
    with pytest.raises(ProtocolError, match=r"NaN or infinity.*binary_data"):
        encode_response("m", request, ["y"], [np.array([np.nan], np.float32)])


_SHORT = (
    b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", '
    b'"parameters": {"binary_data_size": 8}}]}'
)


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b'{"inputs": 3}', None, 'an object with an "inputs" list'),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}', None,
         "datatype 'FP99', expected one of BOOL"),
        (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}', None,
         "shape must be a list of sizes >= 0"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}', None,
         "a value does not fit INT8"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}', None,
         "INT32 data must be ints"),
        (_SHORT + b"\x00" * 4, str(len(_SHORT)), "binary_data_size 8 runs past"),
        (b'{"inputs": []}', "999", "Inference-Header-Content-Length 999 is outside"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
         b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', None,
         "input 'x' is given twice"),
    ],
    ids=["inputs", "datatype", "shape", "overflow", "float-as-int", "binary-short",
         "header-length", "duplicate"],
)  # fmt: skip
def test_malformed_requests_name_what_is_wrong(
    body: bytes, header: str | None, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(".", r"\.")):
        decode_request(body, header)
