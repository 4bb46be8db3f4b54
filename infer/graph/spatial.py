"""Rewrites that let TVM's importer keep a fully convolutional model's height and width symbolic.

Two walls stand in the way (measured on PP-OCRv4's DBNet detector):
- a feature pyramid adds an upsampled coarse map to a finer one; with an input height H, the
  importer works out the coarse map's height as 2 * ((H - 1) // 32 + 1) and the fine one's as
  (H - 1) // 16 + 1, cannot prove them equal (they are not, unless 32 divides H) and gives the sum
  no shape, which the next Resize refuses. Feeding the picture as 32x32 blocks
  ([n, c * 1024, h, w], DepthToSpace back to [n, c, 32h, 32w]) states that 32 divides H: every
  size downstream becomes a multiple of h that the importer simplifies exactly;
- Resize with constant scales computes its output size through float32 (int(2.0 * h)), which
  no later op matches with 2 * h. A nearest-neighbour upsample by an integer factor k is the same
  as repeating the channels k*k times (Tile) and moving them into k x k blocks (DepthToSpace,
  DCR), whose sizes are exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from infer.errors import ModelError

__all__ = ["BLOCK", "input_blocks", "nearest_upsample_as_depth_to_space", "to_blocks"]

BLOCK = 32  # the input blocks of input_blocks: the detector's total stride


def input_blocks(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return model with its one NCHW input fed as BLOCK x BLOCK blocks: x [n, c*BLOCK^2, h, w],
    turned back into [n, c, BLOCK*h, BLOCK*w] by DepthToSpace (CRD: channel-major blocks, which
    is x.reshape(n, c, h, B, w, B).transpose(0, 1, 3, 5, 2, 4).reshape(n, c*B*B, h, w))."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initialized = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initialized]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelError("input-blocks: expects a model with one 4-d (NCHW) input")
    value = inputs[0]
    dims = value.type.tensor_type.shape.dim
    if not dims[1].HasField("dim_value"):
        raise ModelError("input-blocks: the input's channel count must be fixed")
    name = value.name
    inner = f"{name}__image"
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    channels = dims[1].dim_value * BLOCK * BLOCK
    batch = dims[0].dim_value if dims[0].HasField("dim_value") else dims[0].dim_param or "n"
    new_input = helper.make_tensor_value_info(
        name, value.type.tensor_type.elem_type, [batch, channels, "h", "w"]
    )
    graph.input.remove(value)
    graph.input.insert(0, new_input)
    graph.node.insert(
        0, helper.make_node("DepthToSpace", [name], [inner], blocksize=BLOCK, mode="CRD")
    )
    return out


def to_blocks(image: np.ndarray) -> np.ndarray:
    """Return an NCHW batch as input_blocks' input (H and W multiples of BLOCK)."""
    n, c, height, width = image.shape
    h, w = height // BLOCK, width // BLOCK
    blocks = image.reshape(n, c, h, BLOCK, w, BLOCK).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(blocks.reshape(n, c * BLOCK * BLOCK, h, w))


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _integer_upsample(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> int | None:
    """Return k when node is a nearest Resize of a 4-d tensor by k on H and W only."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"nearest") != b"nearest" or len(node.input) < 3:
        return None
    if attrs.get("coordinate_transformation_mode", b"half_pixel") != b"asymmetric":
        return None
    if attrs.get("nearest_mode", b"round_prefer_floor") != b"floor":
        return None
    if len(node.input) > 3 and node.input[3]:
        return None
    scales = constants.get(node.input[2])
    if scales is None or scales.shape != (4,) or list(scales[:2]) != [1, 1]:
        return None
    k = float(scales[2])
    if k != float(scales[3]) or k < 2 or k != int(k):
        return None
    return int(k)


def nearest_upsample_as_depth_to_space(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return model with each nearest Resize by an integer factor k (asymmetric, floor) as
    Tile(channels x k*k) + DepthToSpace(k, DCR): out[i, j] = in[i // k, j // k] either way."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = _constant_values(graph)
    nodes = []
    for node in graph.node:
        k = _integer_upsample(node, constants)
        if k is None:
            nodes.append(node)
            continue
        repeats = f"{node.output[0]}__repeats"
        graph.initializer.append(
            numpy_helper.from_array(np.array([1, k * k, 1, 1], np.int64), repeats)
        )
        tiled = f"{node.output[0]}__tiled"
        nodes.append(
            helper.make_node("Tile", [node.input[0], repeats], [tiled], name=f"{node.name}_tile")
        )
        nodes.append(
            helper.make_node(
                "DepthToSpace", [tiled], list(node.output), name=node.name, blocksize=k, mode="DCR"
            )
        )
    graph.ClearField("node")
    graph.node.extend(nodes)
    return out
