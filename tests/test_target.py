from __future__ import annotations

import pytest

from infer.errors import CompileError
from infer.target import host_cpu_features, host_cpu_name, parse_target


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
