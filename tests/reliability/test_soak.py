"""Long runs: RSS stays flat over repeated runs and over 200 input shapes (tools/soak.py, shorter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import onnx_models
from tests.conftest import save

REPO = Path(__file__).resolve().parents[2]
# The stated bound for 200 shapes: TVM's allocator may keep one buffer set per size seen.
MAX_SHAPES_GROWTH_MIB = 32


def soak(args: list[str], tmp_path: Path, cache: Path) -> list[dict[str, object]]:
    out = tmp_path / "soak.json"
    env = {**os.environ, "INFER_CACHE_DIR": str(cache)}
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "soak.py"), *args, "--json", str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    result: list[dict[str, object]] = json.loads(out.read_text())
    return result


def test_rss_is_flat_over_repeated_runs_and_200_shapes(
    tmp_path: Path, isolated_cache: Path
) -> None:
    conv = save(onnx_models.conv_net(), tmp_path, "conv.onnx")
    mlp = save(onnx_models.mlp(batch="batch"), tmp_path, "mlp.onnx")
    (repeated,) = soak([str(conv), "--runs", "1500"], tmp_path, isolated_cache)
    assert float(str(repeated["growth_percent"])) < 5.0, repeated
    (shapes,) = soak([str(mlp), "--runs", "1000", "--shapes", "200"], tmp_path, isolated_cache)
    assert shapes["cycled_dims"] == ["batch"]
    grown = float(str(shapes["rss_max_mib"])) - float(str(shapes["rss_after_warmup_mib"]))
    assert grown < MAX_SHAPES_GROWTH_MIB, shapes
