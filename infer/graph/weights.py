"""Weight transforms applied to models pulled from recipes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["seeded_random_weights"]


def seeded_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Return model with each ConstantOfShape of a constant shape replaced by a seeded random initializer.

    The onnx wheel's 'light' models store every weight as ConstantOfShape(value=0.02), so every
    output is constant and any runtime "matches". Tensors of rank >= 2 get N(0, 2/fan_in) (He
    init, so activations keep their scale through deep nets); vectors get U(0.5, 1.5), which keeps
    batch-norm variances positive.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    kept: list[onnx.NodeProto] = []
    used_shapes: set[str] = set()
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in consts:
            shape = tuple(int(d) for d in consts[node.input[0]])
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            dtype = (
                numpy_helper.to_array(value).dtype if value is not None else np.dtype(np.float32)
            )
            if len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                array = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
            else:
                array = rng.uniform(0.5, 1.5, size=shape)
            graph.initializer.append(numpy_helper.from_array(array.astype(dtype), node.output[0]))
            if out.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
                elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
                graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], elem, shape))
            used_shapes.add(node.input[0])
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    still_used = {i for n in graph.node for i in n.input}
    remaining = [t for t in graph.initializer if t.name not in used_shapes or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    inputs = [v for v in graph.input if v.name not in used_shapes or v.name in still_used]
    del graph.input[:]
    graph.input.extend(inputs)
    return out


def calibrate_batch_norm(
    model: onnx.ModelProto, seed: int = 0, max_passes: int = 100
) -> onnx.ModelProto:
    """Return model with each BatchNormalization's mean/var set to its input's statistics.

    Random weights make activations grow layer after layer until a softmax saturates to one-hot,
    where any runtime "matches". Re-estimating batch-norm statistics on a seeded N(0, 1) input
    (as after training, but on noise) keeps every activation near unit scale. One pass fixes
    the statistics of layers whose inputs were already fixed, so passes repeat until none move.
    """
    import onnxruntime as ort

    from infer.graph.shapes import graph_inputs

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    bns = [n for n in graph.node if n.op_type == "BatchNormalization" and len(n.input) >= 5]
    if not bns:
        return out
    stat_names = {name for n in bns for name in n.input[3:5]}
    params = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in stat_names}
    calib = onnx.ModelProto()
    calib.CopyFrom(out)
    kept = [t for t in calib.graph.initializer if t.name not in params]
    del calib.graph.initializer[:]
    calib.graph.initializer.extend(kept)
    present = {v.name for v in calib.graph.input}
    for name, array in params.items():
        if name not in present:
            elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            calib.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, array.shape))
    probes = [n.input[0] for n in bns]
    for name in probes:
        calib.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        calib.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in graph_inputs(out.graph):
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    for _ in range(max_passes):
        activations = session.run(probes, {**feeds, **params})
        moved = False
        for node, raw in zip(bns, activations, strict=True):
            act = np.clip(raw.astype(np.float64), -1e150, 1e150)  # early passes see huge values
            axes = tuple(i for i in range(act.ndim) if i != 1)
            mean = np.clip(act.mean(axis=axes), -1e30, 1e30).astype(params[node.input[3]].dtype)
            var = np.minimum(act.var(axis=axes) + 1e-3, 1e30).astype(params[node.input[4]].dtype)
            if not np.allclose(mean, params[node.input[3]], rtol=1e-3, atol=1e-4):
                moved = True
            params[node.input[3]], params[node.input[4]] = mean, var
        if not moved:
            break
    for t in graph.initializer:
        if t.name in params:
            t.CopyFrom(numpy_helper.from_array(params[t.name], t.name))
    return out
