"""Target strings ('llvm', 'cuda -arch=sm_80', a JSON dict) to TVM targets, and host CPU facts."""

from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infer.errors import CompileError

__all__ = [
    "RUNTIME_ONLY_ENV",
    "TargetSpec",
    "host_cpu_features",
    "host_cpu_name",
    "parse_target",
    "require_compiler",
]

DEFAULT_CUDA_ARCHS = ("sm_80",)
# CPU flags that change which instructions generated code may use.
ISA_FLAGS = frozenset(
    {
        "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2",
        "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16",
        "avx512_fp16", "avx512vbmi", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    }
)  # fmt: skip
_ARCH = re.compile(r"^sm_\d{2,3}[af]?$")


@functools.cache
def host_cpu_features() -> frozenset[str]:
    """Return the host CPU's ISA flags (from /proc/cpuinfo) that matter to generated code."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split()) & ISA_FLAGS
    return frozenset()


# TVM's switch for loading its runtime library without the compiler's (tvm/base.py): a process
# that only runs artifacts holds ~110 MiB less.
RUNTIME_ONLY_ENV = "TVM_USE_RUNTIME_LIB"


def require_compiler() -> None:
    """Raise CompileError when this process loaded TVM's runtime library alone (what
    RUNTIME_ONLY_ENV=1 asks for, and TVM's fallback when its compiler library cannot load):
    such a process runs artifacts but cannot compile or tune, nor name the host CPU for LLVM."""
    import tvm.base

    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise CompileError(
            f"this process loaded TVM's runtime library only ({RUNTIME_ONLY_ENV}=1, or TVM's "
            "compiler library failed to load): it runs compiled artifacts (infer.load on an "
            f"artifact directory) but cannot compile; unset {RUNTIME_ONLY_ENV} to compile"
        )


@functools.cache
def host_cpu_name() -> str:
    """Return LLVM's name for the host CPU (e.g. 'znver3')."""
    import tvm.target.codegen

    return str(tvm.target.codegen.llvm_get_system_cpu())


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target: its kind, the TVM target dict, and what it needs of the machine."""

    kind: str  # "llvm" or "cuda"
    options: dict[str, Any]
    cpu_features: tuple[str, ...] = ()  # host ISA flags the code may use (llvm)
    cuda_archs: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in manifests and cache keys."""
        return {
            "kind": self.kind,
            "options": self.options,
            "cpu_features": list(self.cpu_features),
            "cuda_archs": list(self.cuda_archs),
        }

    @property
    def device(self) -> str:
        """Return the device kind code runs on ('cpu' or 'cuda')."""
        return "cuda" if self.kind == "cuda" else "cpu"

    def __str__(self) -> str:
        if self.kind == "cuda":
            return f"cuda ({', '.join(self.cuda_archs)})"
        return f"llvm -mcpu={self.options.get('mcpu', 'generic')}"

    def tvm_target(self) -> Any:
        """Return the tvm.target.Target (imports TVM)."""
        import tvm

        if self.kind == "cuda":
            opts = dict(self.options)
            host = opts.pop("host", {"kind": "llvm", "mcpu": host_cpu_name()})
            return tvm.target.Target(opts, host=host)
        return tvm.target.Target(dict(self.options))


def _parse_flags(text: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(text)
    if not words:
        raise CompileError("target: empty target string; expected 'llvm' or 'cuda'")
    kind, flags = words[0], {}
    for word in words[1:]:
        key, sep, value = word.lstrip("-").partition("=")
        if not sep:
            raise CompileError(f"target {text!r}: option {word!r} must look like -key=value")
        flags[key] = value
    return kind, flags


def parse_target(
    target: str | dict[str, Any] | None = None, num_cores: int | None = None
) -> TargetSpec:
    """Return the TargetSpec for 'llvm', 'llvm -mcpu=..', 'cuda', 'cuda -arch=sm_80,sm_86' or a dict."""
    require_compiler()
    if target is None:
        target = "llvm"
    if isinstance(target, str) and target.strip().startswith("{"):
        try:
            target = json.loads(target)
        except json.JSONDecodeError as exc:
            raise CompileError(f"target: invalid JSON ({exc})") from None
    if isinstance(target, dict):
        options = dict(target)
        kind = str(options.get("kind", ""))
    else:
        kind, flags = _parse_flags(target)
        options = {"kind": kind, **flags}
    if kind == "llvm":
        options.setdefault("mcpu", host_cpu_name())
        if num_cores is not None:
            options.setdefault("num-cores", int(num_cores))
        features: tuple[str, ...] = ()
        if options["mcpu"] == host_cpu_name():
            features = tuple(sorted(host_cpu_features()))
        return TargetSpec("llvm", options, cpu_features=features)
    if kind == "cuda":
        raw = options.pop("arch", None)
        archs = tuple(a.strip() for a in str(raw).split(",")) if raw else DEFAULT_CUDA_ARCHS
        for arch in archs:
            if not _ARCH.match(arch):
                raise CompileError(
                    f"target cuda: arch {arch!r} is not of the form sm_XX (e.g. sm_80)"
                )
        # TVM compiles for the lowest arch; nvcc adds code for every arch asked for.
        options["arch"] = min(archs, key=lambda a: int(re.sub(r"\D", "", a)))
        return TargetSpec("cuda", options, cuda_archs=archs)
    raise CompileError(f"target: unknown kind {kind!r}; expected 'llvm' or 'cuda'")
