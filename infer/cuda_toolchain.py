"""CUDA builds without a GPU: nvcc fatbins for every arch shipped, and a stub driver at build time.

TVM registers its CUDA module factory only when libtvm_runtime_cuda.so loads, which needs a
libcuda.so.1. On a build machine without a driver, a stub libcuda.so.1 (every symbol TVM links
returns CUDA_ERROR_NO_DEVICE) is built with the C compiler and loaded first; it is never used at
run time. Device code is compiled by nvcc into a fatbin, so loading the artifact needs no NVRTC.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from infer.config import cache_dir
from infer.errors import CompileError

__all__ = ["ensure_cuda_codegen", "nvcc_path"]

# Driver symbols libtvm_runtime_cuda.so imports (nm -D --undefined-only).
_DRIVER_SYMBOLS = (
    "cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx",
    "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled",
)  # fmt: skip
_CUDA_ERROR_NO_DEVICE = 100
NVCC_TIMEOUT_S = 600


def nvcc_path() -> str | None:
    """Return the path of nvcc, or None when it is not installed."""
    return shutil.which("nvcc")


def _build_stub(directory: Path) -> Path:
    stub = directory / "libcuda.so.1"
    if stub.is_file():
        return stub
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise CompileError(
            "target cuda: a C compiler (cc) is needed to build without a CUDA driver"
        )
    directory.mkdir(parents=True, exist_ok=True)
    body = "\n".join(
        f"int {name}(void) {{ return {_CUDA_ERROR_NO_DEVICE}; }}" for name in _DRIVER_SYMBOLS
    )
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        source = Path(tmp) / "stub.c"
        source.write_text(body + "\n")
        out = Path(tmp) / "libcuda.so.1"
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(source)],
            check=True,
            capture_output=True,
        )
        out.replace(stub)
    return stub


def _compile_fatbin(code: str, archs: tuple[str, ...]) -> bytearray:
    nvcc = nvcc_path()
    if nvcc is None:
        raise CompileError("target cuda: nvcc not found on PATH; it compiles the device code")
    gencode: list[str] = []
    for arch in archs:
        number = arch.removeprefix("sm_")
        gencode += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    newest = max(archs, key=lambda a: int("".join(c for c in a if c.isdigit())))
    number = newest.removeprefix("sm_")
    gencode += ["-gencode", f"arch=compute_{number},code=compute_{number}"]  # PTX for newer GPUs
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        source.write_text(code)
        proc = subprocess.run(
            [nvcc, "--fatbin", "-O3", "-w", *gencode, "-o", str(out), str(source)],
            capture_output=True,
            text=True,
            timeout=NVCC_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise CompileError(f"nvcc failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return bytearray(out.read_bytes())


@functools.cache
def _load_cuda_runtime() -> None:
    import tvm

    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    stub = _build_stub(cache_dir() / "toolchain")
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
        package="tvm",
        target_name="tvm_runtime_cuda",
        extra_lib_paths=[runtime_dir],
        mode="RTLD_LOCAL",
    )
    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise CompileError(
            "target cuda: TVM's CUDA runtime did not register after loading the stub driver"
        )


def ensure_cuda_codegen(archs: tuple[str, ...]) -> Any:
    """Make TVM able to emit CUDA modules here and route device code through nvcc for archs.

    Returns the previous compile hook so the caller may restore it.
    """
    import tvm
    import tvm_ffi

    if nvcc_path() is None:
        raise CompileError("target cuda: nvcc not found on PATH; it compiles the device code")
    _load_cuda_runtime()
    previous = tvm.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_hook(code: str) -> bytearray:
        return _compile_fatbin(code, archs)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_hook, override=True)
    return previous
