"""Defaults, and the only place that reads INFER_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from infer.errors import InferError

__all__ = [
    "Limits",
    "apply_tvm_thread_environment",
    "available_cpus",
    "bind_threads",
    "cache_dir",
    "default_num_threads",
    "limit_variable",
]

CACHE_DIR_ENV = "INFER_CACHE_DIR"
NUM_THREADS_ENV = "INFER_NUM_THREADS"
BIND_THREADS_ENV = "INFER_BIND_THREADS"
# INFER_MAX_NODES, INFER_MAX_CONSTANT_BYTES, INFER_MAX_TENSOR_BYTES: see Limits.
LIMIT_ENV_PREFIX = "INFER_MAX_"
# Caps on what an untrusted model or feed may ask for (infer.graph.limits, infer.runtime.feeds).
DEFAULT_MAX_NODES = 250_000
DEFAULT_MAX_CONSTANT_BYTES = 4 << 30
DEFAULT_MAX_TENSOR_BYTES = 4 << 30


def cache_dir() -> Path:
    """Return the cache root: $INFER_CACHE_DIR, else $XDG_CACHE_HOME/infer, else ~/.cache/infer."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infer"


def default_num_threads() -> int:
    """Return $INFER_NUM_THREADS, else the number of CPUs this process may use."""
    raw = os.environ.get(NUM_THREADS_ENV)
    if raw:
        return _positive_int(NUM_THREADS_ENV, raw)
    return available_cpus()


def _positive_int(variable: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InferError(f"{variable}: expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise InferError(f"{variable}: expected a positive integer, got {value}")
    return value


def limit_variable(name: str) -> str:
    """Return the environment variable that overrides a cap: INFER_MAX_<NAME>."""
    return LIMIT_ENV_PREFIX + name.upper()


def _limit_override(name: str) -> int | None:
    """Return $INFER_MAX_<NAME> (a positive integer) when set, else None."""
    variable = limit_variable(name)
    raw = os.environ.get(variable)
    return _positive_int(variable, raw) if raw else None


@dataclass(frozen=True)
class Limits:
    """The caps one compile works under; `current()` applies the INFER_MAX_* overrides."""

    max_nodes: int = DEFAULT_MAX_NODES
    max_constant_bytes: int = DEFAULT_MAX_CONSTANT_BYTES
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES

    @classmethod
    def current(cls) -> Limits:
        """Return the defaults with $INFER_MAX_NODES, _CONSTANT_BYTES, _TENSOR_BYTES applied."""
        return cls(
            max_nodes=_limit_override("nodes") or DEFAULT_MAX_NODES,
            max_constant_bytes=_limit_override("constant_bytes") or DEFAULT_MAX_CONSTANT_BYTES,
            max_tensor_bytes=_limit_override("tensor_bytes") or DEFAULT_MAX_TENSOR_BYTES,
        )


def available_cpus() -> int:
    """Return the number of CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bind_threads() -> bool:
    """Return whether TVM may pin its threads to cores ($INFER_BIND_THREADS=1; default off).

    Pinning also pins the calling thread, which changes the CPU affinity of the embedding
    application's thread and of every thread it starts later (ONNX Runtime's pool included).
    """
    return os.environ.get(BIND_THREADS_ENV, "0") == "1"


def apply_tvm_thread_environment() -> None:
    """Set the environment TVM's thread pool reads when it is created (call before running TVM code).

    Without TVM_NUM_THREADS, TVM sizes its pool at half the hardware threads (it assumes SMT), so
    on a 2-CPU machine every parallel loop runs on one thread whatever `threads=` asks. The pool
    is sized for every CPU this process may use; each Session then uses its own `threads` of
    them (more threads than CPUs would only oversubscribe). TVM_NUM_THREADS and
    TVM_THREAD_POOL_SPIN_COUNT set by the user are kept.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(available_cpus()))
    os.environ["TVM_BIND_THREADS"] = "1" if bind_threads() else "0"
    # TVM's idle workers spin on the cores oneDNN's OpenMP threads need between two TVM kernels:
    # ResNet-50 at 2 threads took 112 ms (p90 278) spinning and 87 ms (p90 90) without.
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
