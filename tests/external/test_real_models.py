"""Real models from packages, compiled without manual simplification, against ONNX Runtime.

Every .onnx that silero-vad==6.2.3 ships (the LSTM and If variants included) and rapidocr's
text-line classifier and recognizer: each compiles, passes the parity check, runs on TVM for
at least MIN_TVM_SHARE of its nodes, and matches ONNX Runtime on a real-looking input.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import infer
from infer.registry import get_recipe, pull

MIN_TVM_SHARE = 0.95
SILERO = [
    "silero-vad",
    "silero-vad-lstm",
    "silero-vad-op15",
    "silero-vad-half",
    "silero-vad-sequence",
    "silero-vad-openvino",
]


def _speech_like(shape: tuple[int, ...]) -> np.ndarray:
    """Return a 16 kHz chunk: a voiced 180 Hz tone with harmonics, and noise."""
    t = np.arange(shape[-1]) / 16000.0
    tone = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6))
    noise = np.random.default_rng(1).standard_normal(shape) * 0.05
    return (0.3 * tone + noise).astype(np.float32)


def _feeds(session: infer.Session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    feeds: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        shape = tuple(int(d) for d in spec.shape)
        if spec.name == "input":
            feeds[spec.name] = _speech_like(shape)
        elif spec.name == "x":
            feeds[spec.name] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:  # recurrent state carried from a previous chunk
            feeds[spec.name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return feeds


@pytest.mark.external
@pytest.mark.parametrize("name", [*SILERO, "ppocr-cls", "ppocr-rec"])
def test_real_model_compiles_mostly_on_tvm_and_matches_onnxruntime(name: str) -> None:
    recipe = get_recipe(name)
    path = pull(recipe)
    art = infer.compile(name, threads=2)
    assert art.manifest.parity is not None and art.manifest.parity["status"] == "passed"
    session = art.load(threads=2)
    placement = session.placement()
    print(f"{name}: {placement['tvm_node_share']:.1%} of nodes on TVM, {placement}")
    assert placement["tvm_node_share"] >= MIN_TVM_SHARE

    feeds = _feeds(session)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref_feeds = {k: v for k, v in feeds.items()}
    if "sr" in {i.name for i in reference.get_inputs()}:
        ref_feeds["sr"] = np.array(int(recipe.constant_inputs["sr"]), dtype=np.int64)
    want = reference.run(None, ref_feeds)
    got = session.run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)
