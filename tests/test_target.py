from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import infer
from infer.errors import CompileError
from infer.target import RUNTIME_ONLY_ENV, host_cpu_features, host_cpu_name, parse_target
from tests import onnx_models
from tests.conftest import run_python, save


def test_llvm_detects_the_host_cpu_and_records_its_features() -> None:
    spec = parse_target("llvm", num_cores=2)
    assert spec.options == {"kind": "llvm", "mcpu": host_cpu_name(), "num-cores": 2}
    assert set(spec.cpu_features) == set(host_cpu_features())
    flags = open("/proc/cpuinfo").read()
    assert ("avx2" in spec.cpu_features) == (" avx2" in flags)


def test_another_mcpu_records_no_host_features() -> None:
    spec = parse_target("llvm -mcpu=x86-64")
    assert spec.options["mcpu"] == "x86-64" and spec.cpu_features == ()


def test_json_and_dict_targets() -> None:
    assert parse_target('{"kind": "llvm", "mcpu": "x86-64"}').options["mcpu"] == "x86-64"
    assert parse_target({"kind": "cuda", "arch": "sm_86"}).cuda_archs == ("sm_86",)


def test_cuda_archs_compile_for_the_lowest() -> None:
    spec = parse_target("cuda -arch=sm_90,sm_80")
    assert spec.cuda_archs == ("sm_90", "sm_80") and spec.options["arch"] == "sm_80"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty target"),
        ("opencl", "unknown kind 'opencl'"),
        ("llvm mcpu", "must look like -key=value"),
        ("{bad", "invalid JSON"),
    ],
)
def test_target_errors(text: str, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        parse_target(text)


_RUNTIME_ONLY = """
import sys
import numpy as np
import infer
import tvm.base

session = infer.load(sys.argv[1], threads=1)
(got,) = session.run(None, {"x": np.load(sys.argv[2])})
np.save(sys.argv[3], got)
try:
    infer.compile(sys.argv[4], output=sys.argv[5])
except infer.CompileError as exc:
    print(tvm.base._RUNTIME_ONLY, "|", exc)
"""


def test_a_runtime_only_process_runs_artifacts_and_refuses_to_compile(tmp_path: Path) -> None:
    # TVM_USE_RUNTIME_LIB=1: TVM's runtime library without its compiler's (~110 MiB less).
    model = onnx_models.conv_net(batch=1)
    path = save(model, tmp_path)
    artifact = infer.compile(path, output=tmp_path / "m.infer").path
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    printed = run_python(
        _RUNTIME_ONLY,
        *map(str, (artifact, tmp_path / "x.npy", tmp_path / "y.npy", path, tmp_path / "n")),
        env={RUNTIME_ONLY_ENV: "1"},
    )
    only, message = printed.strip().split(" | ", 1)
    assert only == "True"
    assert f"{RUNTIME_ONLY_ENV}=1" in message and "cannot compile" in message
    assert not (tmp_path / "n").exists()
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-4)
