"""The CLI, in-process with click's CliRunner, on small models and their ONNX Runtime outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from infer.cli import cli
from tests import onnx_models
from tests.conftest import save


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_compile_then_run_with_inputs_and_outputs(mlp_path: Path, tmp_path: Path) -> None:
    code, out, _ = invoke(
        "compile", str(mlp_path), "-o", str(tmp_path / "m.infer"), "--dim", "batch=3"
    )
    assert code == 0 and "parity: passed" in out
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", **{"input:0": x})
    code, out, _ = invoke(
        "run",
        str(tmp_path / "m.infer"),
        "--inputs",
        str(tmp_path / "in.npz"),
        "-o",
        str(tmp_path / "out.npz"),
    )
    assert code == 0, out
    assert "probs" in out and "float32" in out and "(3, 10)" in out
    want = ort.InferenceSession(str(mlp_path)).run(None, {"input:0": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["probs"], want, rtol=1e-5, atol=1e-6)


def test_run_onnx_compiles_into_the_cache_then_hits(mlp_path: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    first = CliRunner().invoke(
        cli, ["run", str(mlp_path), "--input", f"input:0={tmp_path / 'x.npy'}"]
    )
    assert first.exit_code == 0, first.output
    assert "cache hit" not in first.stderr
    second = CliRunner().invoke(
        cli, ["run", str(mlp_path), "--input", f"input:0={tmp_path / 'x.npy'}"]
    )
    assert second.exit_code == 0
    assert "cache hit" in second.stderr and "compile (" not in second.stderr


def test_run_random_repeat_compare_ort_json(mlp_path: Path) -> None:
    code, out, _ = invoke(
        "run", str(mlp_path), "--random", "--dim", "batch=2", "--repeat", "5", "--warmup", "1",
        "--compare-ort", "--threads", "1", "--json",
    )  # fmt: skip
    assert code == 0, out
    summary = json.loads(out)
    assert summary["threads"] == 1
    assert summary["infer"]["runs"] == 5 and summary["onnxruntime"]["runs"] == 5
    ratio = summary["infer"]["median_ms"] / summary["onnxruntime"]["median_ms"]
    assert summary["ratio_vs_onnxruntime"] == pytest.approx(ratio)


def test_random_with_a_symbolic_dim_needs_its_size(mlp_path: Path) -> None:
    code, _, err = invoke("run", str(mlp_path), "--random")
    assert code == 2
    assert err.strip() == (
        "error: input 'input:0' has symbolic dim(s) 'batch'; give sizes with --shape input:0=d0,d1,... "
        "or --dim NAME=SIZE"
    )


def test_inputs_and_random_are_exclusive(mlp_path: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", x=np.ones(1))
    code, _, err = invoke("run", str(mlp_path), "--random", "--inputs", str(tmp_path / "in.npz"))
    assert code == 2 and "exactly one" in err


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, mlp_path: Path) -> None:
    code, _, err = invoke("compile", str(tmp_path / "none.onnx"))
    assert code == 2 and err == f"error: {tmp_path / 'none.onnx'}: no such file\n"
    code, _, err = invoke("compile", str(mlp_path), "--shape", "x=1,16")
    assert (
        code == 2
        and err
        == "error: shape override for unknown input 'x'; the model's inputs are: 'input:0'\n"
    )
    code, _, err = invoke("compile", "no-such-model")
    assert (
        code == 2
        and "not a known model (all-minilm-l6-v2, efficientnet-lite0, paraphrase-minilm-l3-v2, ppocr-cls, ppocr-det, ppocr-det-any, ppocr-rec, resnet50-light, silero-vad"
        in err
    )
    code, _, err = invoke("compile", str(mlp_path), "--target", "vulkan")
    assert code == 2 and "target: unknown kind 'vulkan'" in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--debug", "compile", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "ModelError" in result.stderr


def test_inspect_lists_ops_and_unsupported_ones(tmp_path: Path) -> None:
    path = save(onnx_models.with_op("Celu", count=2), tmp_path)
    code, out, _ = invoke("inspect", str(path))
    assert code == 0
    assert "input   x: float32[2, 3]" in out
    assert "Relu 1" in out and "Celu 2" in out
    assert "unsupported by TVM's importer: Celu x2 (nodes 'celu_0', 'celu_1')" in out
    assert "after legalization, every node runs on TVM" in out  # Celu's function body
    code, out, _ = invoke("inspect", str(path), "--json")
    data = json.loads(out)
    assert data["op_histogram"] == {"Celu": 2, "Relu": 1}
    assert data["unsupported_ops"] == [
        {"op_type": "Celu", "domain": "", "count": 2, "nodes": ["celu_0", "celu_1"]}
    ]


def test_check_reruns_parity(mlp_path: Path, tmp_path: Path) -> None:
    assert invoke("compile", str(mlp_path), "-o", str(tmp_path / "m.infer"))[0] == 0
    code, out, _ = invoke("check", str(tmp_path / "m.infer"), "--seed", "5", "--dim", "batch=4")
    assert code == 0 and "ok probs" in out and "parity ok vs onnxruntime" in out
    other = save(onnx_models.mlp(hidden=8), tmp_path, "other.onnx")
    code, _, err = invoke("check", str(tmp_path / "m.infer"), "--model", str(other))
    assert code == 2 and "compiled from another model" in err


def test_cache_list_verify_prune(mlp_path: Path, isolated_cache: Path) -> None:
    assert invoke("run", str(mlp_path), "--random", "--dim", "batch=1")[0] == 0
    code, out, _ = invoke("cache", "list")
    assert code == 0 and "mlp" in out and "ok" in out
    (entry,) = (isolated_cache / "artifacts").iterdir()
    # Replace, never rewrite in place: this process has the library mapped since its parity check.
    (entry / "lib.so.new").write_bytes(b"damaged")
    (entry / "lib.so.new").replace(entry / "lib.so")
    code, out, _ = invoke("cache", "verify")
    assert code == 2 and "DAMAGED" in out and "1 entries, 1 damaged" in out
    code, out, _ = invoke("cache", "prune")
    assert code == 0 and "1 entries removed" in out
    assert invoke("cache", "verify")[1].strip() == "0 entries, 0 damaged"


def test_models_list() -> None:
    code, out, _ = invoke("models", "list")
    assert code == 0 and "ppocr-det" in out and "rapidocr-onnxruntime" in out


def test_run_a_real_model_on_its_real_sample_image(
    ppocr_det_path: Path, ppocr_det_artifact: Path, tmp_path: Path
) -> None:
    from infer.processors.image import image_to_tensor
    from infer.registry import get_recipe, pull_sample

    code, _, err = invoke(
        "run", str(ppocr_det_artifact), "--sample", "-o", str(tmp_path / "det.npz")
    )
    assert code == 0, err
    (got,) = np.load(tmp_path / "det.npz").values()
    recipe = get_recipe("ppocr-det")
    assert recipe.image_input is not None
    x = image_to_tensor(pull_sample(recipe), recipe.image_input, (1, 3, 320, 448))
    (want,) = ort.InferenceSession(str(ppocr_det_path)).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert (
        0.05 < float((want > 0.3).mean()) < 0.5
    )  # the page's text lines light up, the margins do not


def test_image_needs_a_recipe_with_image_input(mlp_path: Path, tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    code, _, err = invoke("run", str(mlp_path), "--image", str(tmp_path / "x.png"))
    assert code == 2 and "has no recipe with an [image_input] section" in err
