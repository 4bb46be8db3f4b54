"""The compiled fast path of the oneDNN calls compiled graphs make (onednn_dispatch.cc).

Through Python, each call cost ~5 µs beyond its kernel (tvm-ffi's conversion of the arguments,
the kernel lookup, four ctypes calls): a third of a Silero VAD window. The fast path looks the
call up in the session's table of kernels and runs it in C++; Python builds kernels on a miss,
as before. It is compiled once per machine with the C++ compiler into the cache (~2 s), against
tvm-ffi's C ABI only. Without a compiler, calls go through Python, and a warning says so.

The same library runs TVM's parallel loops on OpenMP's threads (`adopt`), so that the kernels
of TVM and of oneDNN share one pool: with TVM's own pool beside OpenMP's, EfficientNet-Lite0's
residual adds took 30-58 µs each at 2 threads, 11-27 on one pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

from infer.config import cache_dir
from infer.errors import InferWarning

__all__ = ["Dispatch", "load"]

SOURCE = Path(__file__).with_name("onednn_dispatch.cc")
COMPILE_TIMEOUT_S = 300
# The Python entry points stand under these names, behind the fast path's.
FALLBACK_SUFFIX = ".python"


class Dispatch:
    """The loaded fast path: its tables (one per session) and its kernel records."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.infer_dispatch_init.argtypes = [p] * 6
        lib.infer_dispatch_init.restype = None
        lib.infer_dispatch_register.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.infer_dispatch_register.restype = i
        lib.infer_dispatch_table_new.argtypes = [i]
        lib.infer_dispatch_table_new.restype = p
        lib.infer_parallel_init.argtypes = [p] * 3
        lib.infer_parallel_init.restype = None
        lib.infer_parallel_adopt.argtypes = [ctypes.c_char_p]
        lib.infer_parallel_adopt.restype = i
        for name in ("infer_dispatch_table_free", "infer_dispatch_table_clear"):
            getattr(lib, name).argtypes = [p]
            getattr(lib, name).restype = None
        lib.infer_dispatch_activate.argtypes = [p]
        lib.infer_dispatch_activate.restype = p
        lib.infer_dispatch_remember.argtypes = [
            ctypes.c_uint64, i, i, p, i, p, i, p, p, p, i, p, p, p,
        ]  # fmt: skip
        lib.infer_dispatch_remember.restype = i

    def init(self, functions: list[Any], engine: Any) -> None:
        """Give the fast path oneDNN's execute, stream_wait, memory_set_data_handle and
        stream_create, OpenMP's omp_set_num_threads (or None), and the engine."""
        addresses = [None if f is None else ctypes.cast(f, ctypes.c_void_p) for f in functions]
        self.lib.infer_dispatch_init(*addresses, engine)

    def init_parallel(self, gomp: ctypes.CDLL) -> None:
        """Give the parallel launch OpenMP's GOMP_parallel, omp_get_thread_num and
        omp_get_num_threads."""
        functions = (gomp.GOMP_parallel, gomp.omp_get_thread_num, gomp.omp_get_num_threads)
        self.lib.infer_parallel_init(*(ctypes.cast(f, ctypes.c_void_p) for f in functions))

    def adopt(self, library: Path) -> bool:
        """Run the parallel loops of the compiled library TVM loaded from library on OpenMP's
        threads, while a session's table is active; False when they stay on TVM's pool."""
        status = self.lib.infer_parallel_adopt(os.fsencode(library))
        if status < 0:
            raise RuntimeError(f"{library} is not loaded")
        return bool(status)

    def register(self, name: str) -> str:
        """Put the fast path in front of global function name; return the name the Python
        entry point must be registered under first."""
        fallback = name + FALLBACK_SUFFIX
        if self.lib.infer_dispatch_register(name.encode(), fallback.encode()) != 0:
            raise RuntimeError(f"registering the compiled dispatch of {name} failed")
        return fallback


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build(compiler: str, target: Path) -> None:
    from tvm_ffi import libinfo

    library = Path(libinfo.find_libtvm_ffi())
    includes = {libinfo.find_include_path(), libinfo.find_dlpack_include_path()}
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        command = [
            compiler, "-O2", "-std=c++17", "-shared", "-fPIC",
            *(f"-I{d}" for d in sorted(includes)), str(SOURCE), "-o", str(out),
            f"-L{library.parent}", "-ltvm_ffi", f"-Wl,-rpath,{library.parent}", "-ldl",
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({proc.returncode}): {proc.stderr[-1500:]}")
        out.replace(target)


@functools.cache
def load() -> Dispatch | None:
    """Return the fast path, compiled into the cache on first use; None (with a warning) when
    it cannot be built or loaded here."""
    import tvm_ffi

    compiler = _compiler()
    try:
        if compiler is None:
            raise RuntimeError("no C++ compiler (c++, g++ or $CXX) on PATH")
        stamp = hashlib.sha256(
            SOURCE.read_bytes() + f"|{tvm_ffi.__version__}|{compiler}".encode()
        ).hexdigest()[:16]
        target = cache_dir() / "native" / f"onednn_dispatch-{stamp}.so"
        if not target.is_file():
            _build(compiler, target)
        return Dispatch(ctypes.CDLL(str(target)))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        warnings.warn(
            InferWarning(
                f"the compiled oneDNN dispatch is unavailable ({exc}); oneDNN calls go through "
                "Python, ~5 µs slower each"
            ),
            stacklevel=2,
        )
        return None
