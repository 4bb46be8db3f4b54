"""Session: loads a verified artifact and runs it, with the call shape of onnxruntime's."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infer.artifact.manifest import LIBRARY_FILE, PARAMS_FILE, ArtifactManifest
from infer.config import apply_tvm_thread_environment, default_num_threads
from infer.errors import ArtifactError, InferError, InputError
from infer.native_stderr import drop_tvm_scope_warnings
from infer.runtime.compat import check_compatible
from infer.runtime.feeds import check_feeds
from infer.signature import TensorSpec

__all__ = ["Session"]

# TVM's thread pool: "big cores" mode.
_THREADPOOL_MODE_BIG = 1
_DLPACK_CPU = 1


class Session:
    """A compiled model loaded for inference.

    Every file's sha256 is checked against the manifest before the library (code) is opened,
    and an artifact built for another TVM version or CPU is refused. `run` is safe to call from
    many threads; calls are serialised, each using the session's thread pool of `threads`.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        import tvm
        from safetensors.numpy import load_file
        from tvm.runtime.vm import VirtualMachine

        self.path = Path(path)
        if not self.path.is_dir():
            raise ArtifactError(f"{self.path}: not an artifact directory")
        self.manifest = ArtifactManifest.read(self.path)
        self.manifest.verify_files(self.path)
        check_compatible(self.manifest, str(self.path))
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InferError(f"threads: expected a positive integer, got {threads!r}")
        self.threads = threads if threads is not None else default_num_threads()

        kind = self.manifest.target["kind"]
        self._device = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
        if kind == "cuda" and not self._device.exist:
            raise ArtifactError(
                f"{self.path}: field target.kind is 'cuda', and this host has no CUDA device"
            )
        try:
            with drop_tvm_scope_warnings():
                library = tvm.runtime.load_module(str(self.path / LIBRARY_FILE))
                self._vm = VirtualMachine(library, self._device)
        except Exception as exc:
            raise ArtifactError(f"{self.path / LIBRARY_FILE}: cannot be loaded: {exc}") from None
        try:
            arrays = load_file(str(self.path / PARAMS_FILE))
        except Exception as exc:
            raise ArtifactError(f"{self.path / PARAMS_FILE}: cannot be read: {exc}") from None
        missing = [p for p in self.manifest.params if p not in arrays]
        if missing:
            raise ArtifactError(
                f"{self.path / PARAMS_FILE}: lacks parameter(s) {', '.join(missing[:5])}"
            )
        self._empty = tvm.runtime.empty
        self._params = [self._to_device(arrays[name]) for name in self.manifest.params]
        # Outputs that alias a weight are copied, so that callers cannot write into the model.
        self._param_addresses = (
            {self._address(p) for p in self._params}
            if self._device.dlpack_device_type() == _DLPACK_CPU
            else set()
        )
        self._main = self._vm["main"]
        self._lock = threading.Lock()
        self._configured = threading.local()
        self._config_threadpool = tvm.get_global_func("runtime.config_threadpool")

    def get_inputs(self) -> list[TensorSpec]:
        """Return the input specs (name, dtype, shape; symbolic dims as strings), in order."""
        return list(self.manifest.inputs)

    def get_outputs(self) -> list[TensorSpec]:
        """Return the output specs, in ONNX output order."""
        return list(self.manifest.outputs)

    def _ensure_threads(self) -> None:
        # TVM's pool is per calling thread: size it once in each thread that runs.
        if getattr(self._configured, "threads", None) != self.threads:
            apply_tvm_thread_environment()  # read by TVM when it (re)configures its pool
            self._config_threadpool(_THREADPOOL_MODE_BIG, self.threads)
            self._configured.threads = self.threads

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """Return the outputs named (all when None) as numpy arrays, in the order asked."""
        arrays = check_feeds(self.manifest.inputs, feeds)
        all_names = [s.name for s in self.manifest.outputs]
        if output_names is None:
            indices = list(range(len(all_names)))
        else:
            unknown = [n for n in output_names if n not in all_names]
            if unknown:
                raise InputError(
                    f"unknown output name(s) {', '.join(repr(n) for n in unknown)}; "
                    f"the model's outputs are {', '.join(repr(n) for n in all_names)}"
                )
            indices = [all_names.index(n) for n in output_names]
        with self._lock:
            self._ensure_threads()
            try:
                args = [self._to_device(a) for a in arrays]
                result = self._main(*args, *self._params)
            except Exception as exc:
                raise InferError(f"{self.manifest.model_name}: run failed: {exc}") from None
            outputs = self._flatten(result)
            if len(outputs) != len(all_names):
                raise ArtifactError(
                    f"{self.path}: the library returned {len(outputs)} outputs, the manifest lists "
                    f"{len(all_names)}"
                )
            return [self._to_numpy(outputs[i]) for i in indices]

    def _to_device(self, array: np.ndarray) -> Any:
        # empty + copyfrom is ~25x faster than tvm.runtime.tensor(array) for large inputs.
        tensor = self._empty(array.shape, array.dtype.name, self._device)
        tensor.copyfrom(array)
        return tensor

    @staticmethod
    def _address(tensor: Any) -> int:
        try:
            return int(np.from_dlpack(tensor).ctypes.data)
        except (BufferError, TypeError, RuntimeError):
            return -1

    def _to_numpy(self, tensor: Any) -> np.ndarray:
        if self._device.dlpack_device_type() == _DLPACK_CPU:
            try:
                # Zero-copy: the array keeps the VM's output buffer alive.
                array: np.ndarray = np.from_dlpack(tensor)
                if array.size and array.ctypes.data in self._param_addresses:
                    return array.copy()
                return array
            except (BufferError, TypeError, RuntimeError):
                pass
        result: np.ndarray = tensor.numpy()
        return result

    @staticmethod
    def _flatten(result: Any) -> list[Any]:
        if hasattr(result, "numpy"):
            return [result]
        flat: list[Any] = []
        for item in result:
            flat.extend(Session._flatten(item))
        return flat

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.manifest.inputs)
        return f"Session({str(self.path)!r}, inputs=[{ins}], target={self.manifest.target['kind']})"
