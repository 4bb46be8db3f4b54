"""Session: loads a verified artifact and runs it, with the call shape of onnxruntime's."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infer.artifact.manifest import (
    LIBRARY_FILE,
    ORT_SEGMENT,
    PARAMS_FILE,
    TVM_SEGMENT,
    ArtifactManifest,
    sha256_file,
)
from infer.config import apply_tvm_thread_environment, default_num_threads
from infer.errors import ArtifactError, InferError, InputError
from infer.native_stderr import drop_tvm_log_noise
from infer.runtime.compat import check_compatible
from infer.runtime.feeds import FeedChecker, check_indices
from infer.signature import CODED_DTYPES, TensorSpec, numpy_dtype

__all__ = ["Session"]

# TVM's thread pool: "big cores" mode.
_THREADPOOL_MODE_BIG = 1
_DLPACK_CPU = 1


@dataclass
class _Step:
    """One segment of the model: which tensors it reads and writes, and how to run it."""

    kind: str
    inputs: list[str]
    outputs: list[str]
    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    # A CPU library's run straight from feeds laid out as its previous run's (a dict of
    # C-contiguous arrays of the same dtypes and shapes): None when they are not.
    run_feeds: Callable[[Mapping[str, Any]], list[np.ndarray] | None] | None = None


# safetensors dtype names as numpy's (ml_dtypes' for bf16 and float8), as safetensors writes them.
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
    "U8": "uint8", "BOOL": "bool", "C64": "complex64", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
}  # fmt: skip
MAX_PARAMS_HEADER_BYTES = 100 << 20


def _safetensors_dtype(name: str) -> np.dtype[Any]:
    """Return the numpy dtype of a safetensors dtype name; ValueError for one infer does not read."""
    import ml_dtypes

    numpy_name = _SAFETENSORS_DTYPES.get(name)
    if numpy_name is None:
        raise ValueError(f"dtype {name!r} is not one infer reads")
    return np.dtype(getattr(ml_dtypes, numpy_name, numpy_name))


def _numpy_views(tensor: Any) -> bool:
    """True when numpy views the tensor through DLPack (not bfloat16 or float8, not on a GPU)."""
    try:
        np.from_dlpack(tensor)
    except (BufferError, TypeError, RuntimeError):
        return False
    return True


def _storage(dtype: str) -> str:
    """Return the dtype a compiled model holds values of dtype in (codes for narrow types)."""
    return "uint8" if dtype in CODED_DTYPES else dtype


class Session:
    """A compiled model loaded for inference.

    Every file's sha256 is checked against the manifest before the library (code) is opened,
    and an artifact built for another TVM version or CPU is refused. `run` is safe to call from
    many threads; calls are serialised, each using the session's thread pool of `threads`.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        import tvm
        import tvm_ffi

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
        self._empty = tvm.runtime.empty
        self._shape_type = tvm.runtime.ShapeTuple
        self._tensor_type = tvm.runtime.Tensor
        self._array_type = tvm_ffi.Array
        self._array_size = tvm_ffi.get_global_func("ffi.ArraySize")
        self._array_item = tvm_ffi.get_global_func("ffi.ArrayGetItem")
        self._param_addresses: set[int] = set()
        self._input_addresses: set[int] = set()
        self._cpu = kind != "cuda"
        self._onednn: Any = None
        # Entered around each run: the oneDNN state (kernels, packed weights) of this session.
        self._library_state: AbstractContextManager[None] = nullcontext()
        if self.manifest.pipeline.get("offload"):
            from infer.runtime import onednn

            onednn.register()
            choices = (
                onednn.read_choices(self.path / onednn.CHOICES_FILE)
                if onednn.CHOICES_FILE in self.manifest.files
                else None
            )
            self._onednn = onednn.OnednnState(self.threads, choices)
            self._library_state = onednn.active(self._onednn)
        self._check_feeds = FeedChecker(self.manifest.inputs)
        # Narrow types (float8, int4, ...) run as uint8 codes: feeds and outputs are views.
        self._coded_inputs = {
            i
            for i, spec in enumerate(self.manifest.inputs)
            if spec.is_tensor and spec.dtype in CODED_DTYPES
        }
        self._coded_outputs = {
            i: numpy_dtype(spec.dtype)
            for i, spec in enumerate(self.manifest.outputs)
            if spec.is_tensor and spec.dtype in CODED_DTYPES
        }
        self._steps: list[_Step] = []
        if not self.manifest.segments:
            self._steps.append(
                self._tvm_step(
                    self.path,
                    self.manifest.params,
                    [s.name for s in self.manifest.inputs],
                    [s.name for s in self.manifest.outputs],
                    [_storage(s.dtype) for s in self.manifest.outputs],
                )
            )
        for segment in self.manifest.segments:
            if segment["kind"] == TVM_SEGMENT:
                step = self._tvm_step(
                    self.path / segment["dir"],
                    segment["params"],
                    segment["inputs"],
                    segment["outputs"],
                    segment.get("output_dtypes", []),
                )
            else:
                step = self._ort_step(self.path / segment["file"], segment)
            self._steps.append(step)
        self._release_after = self._plan_releases()
        # The one step of a model compiled whole (no segments): run without the bookkeeping.
        self._whole = self._steps[0] if not self.manifest.segments else None
        # ... and, for feeds as the last run's, without the checks: on a small model the Python
        # around the library runs on cold caches (Silero VAD: 20-24 µs of a 62-67 µs window,
        # 12-13 µs with this path).
        self._run_feeds = (
            self._whole.run_feeds
            if self._whole is not None
            and not self._coded_inputs
            and not self._coded_outputs
            and not self.manifest.index_checks
            else None
        )
        self._output_names = [s.name for s in self.manifest.outputs]
        self._all_outputs = list(range(len(self._output_names)))
        self._lock = threading.Lock()
        self._configured = threading.local()
        self._config_threadpool = tvm.get_global_func("runtime.config_threadpool")

    def _tvm_step(
        self,
        directory: Path,
        param_names: list[str],
        inputs: list[str],
        outputs: list[str],
        dtypes: list[str],
    ) -> _Step:
        """Return a step running a compiled library; outputs are cast to the dtypes ONNX declares."""
        import tvm
        from tvm.runtime.vm import VirtualMachine

        library_path, params_path = directory / LIBRARY_FILE, directory / PARAMS_FILE
        with tempfile.TemporaryDirectory(prefix="infer-lib-") as private:
            # The code opened is a private copy, checked again: the artifact's lib.so may be
            # replaced after verify_files, and dlopen hands back the library already loaded from
            # a path (the previous build) when the same path is opened again.
            copy = Path(private) / LIBRARY_FILE
            shutil.copyfile(library_path, copy)
            expected = self.manifest.files[str(library_path.relative_to(self.path))]
            if sha256_file(copy) != expected:
                raise ArtifactError(f"{library_path}: changed after it was verified")
            try:
                with drop_tvm_log_noise():
                    library = tvm.runtime.load_module(str(copy))
                    vm = VirtualMachine(library, self._device)
                if self._onednn is not None:  # one pool (OpenMP's) for TVM's loops and oneDNN's
                    self._onednn.adopt(copy)
            except Exception as exc:
                raise ArtifactError(f"{library_path}: cannot be loaded: {exc}") from None
        params = self._read_params(params_path, param_names)
        # Outputs that alias a weight are copied, so that callers cannot write into the model.
        if self._device.dlpack_device_type() == _DLPACK_CPU:
            self._param_addresses |= {self._address(p) for p in params}
        main = vm["main"]
        wanted = [numpy_dtype(d) if d else None for d in dtypes]
        # CPU: one buffer per input, refilled (slot i: its numpy view and its tensor).
        slots: list[tuple[np.ndarray, Any] | None] = [None] * len(inputs)
        to_device = self._input_buffers(slots) if self._cpu else self._to_device
        to_numpy = self._to_numpy
        get, array_type, tensor_type = self._array_item, self._array_type, self._tensor_type
        params_at, inputs_at = self._param_addresses, self._input_addresses
        from_dlpack = np.from_dlpack

        # TVM computes some integer results (Shape arithmetic) in other types than ONNX says;
        # which outputs those are is fixed by the build: found on the first run.
        casts: list[int] | None = None
        # The result's type and its number of tensors, once a run found it a CPU tensor or a
        # tuple of them that numpy views: later results are read without the general
        # flattening.
        plain: tuple[type, int] | None = None

        def arrays_of(result: Any) -> list[np.ndarray]:
            nonlocal casts, plain
            if plain is not None and type(result) is plain[0]:
                tensors: list[Any] = (
                    [get(result, i) for i in range(plain[1])]
                    if plain[0] is array_type
                    else [result]
                )
                arrays = []
                for tensor in tensors:  # _to_numpy's work, inline
                    array = from_dlpack(tensor)
                    address = tensor.data_ptr()
                    arrays.append(
                        array.copy() if address in params_at or address in inputs_at else array
                    )
            else:
                flat = self._flatten(result)
                arrays = [t if isinstance(t, np.ndarray) else to_numpy(t) for t in flat]
                if (
                    self._cpu
                    and type(result) in (array_type, tensor_type)
                    and len(flat) == len(outputs)
                    and all(type(t) is tensor_type and _numpy_views(t) for t in flat)
                ):
                    plain = type(result), len(flat)
            if casts is None:
                casts = [
                    i
                    for i, (array, dtype) in enumerate(zip(arrays, wanted, strict=False))
                    if dtype is not None and array.dtype != dtype
                ]
            for i in casts:
                arrays[i] = arrays[i].astype(wanted[i])
            return arrays

        def run(args: list[np.ndarray]) -> list[np.ndarray]:
            return arrays_of(main(*map(to_device, args, range(len(args))), *params))

        def run_feeds(feeds: Mapping[str, Any]) -> list[np.ndarray] | None:
            if plain is None or type(feeds) is not dict or len(feeds) != len(inputs):
                return None
            copies, tensors = [], []
            for name, slot in zip(inputs, slots, strict=True):
                array = feeds.get(name)
                if slot is None:
                    return None
                view, tensor = slot
                if not (
                    type(array) is np.ndarray
                    and array.dtype is view.dtype
                    and array.shape == view.shape
                    and array.flags.c_contiguous
                ):
                    return None
                copies.append((view, array))
                tensors.append(tensor)
            for view, array in copies:
                view[...] = array
            return arrays_of(main(*tensors, *params))

        return _Step(TVM_SEGMENT, inputs, outputs, run, run_feeds if self._cpu else None)

    def _ort_step(self, model_path: Path, segment: dict[str, Any]) -> _Step:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No spinning between calls: TVM's pool needs these cores for the next segment.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ArtifactError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from None
        names = [i.name for i in session.get_inputs()]
        if names != segment["inputs"]:
            raise ArtifactError(
                f"{model_path}: inputs {names}, the manifest lists {segment['inputs']}"
            )

        def run(args: list[np.ndarray]) -> list[np.ndarray]:
            outputs: list[np.ndarray] = session.run(
                segment["outputs"], dict(zip(names, args, strict=True))
            )
            return outputs

        return _Step(ORT_SEGMENT, list(segment["inputs"]), list(segment["outputs"]), run)

    def _plan_releases(self) -> list[list[str]]:
        """Return, per step, the intermediate tensors no later step or output reads."""
        keep = {s.name for s in self.manifest.outputs}
        seen: set[str] = set()
        releases: list[list[str]] = []
        for step in reversed(self._steps):
            releases.append([o for o in step.outputs if o not in keep and o not in seen])
            seen |= set(step.inputs) | set(step.outputs)
        releases.reverse()
        return releases

    def _measure_library_kernels(self) -> bool:
        """Make each library kernel made from now on the fastest of oneDNN's implementations
        on its call, timed (a compile's parity run); False when the artifact calls no library."""
        if self._onednn is None:
            return False
        self._onednn.measure = True
        self._onednn.choices.clear()
        return True

    def _write_library_choices(self) -> None:
        """Write the implementations measured into the artifact (onednn.CHOICES_FILE)."""
        from infer.runtime import onednn

        onednn.write_choices(self.path, self._onednn)

    def placement(self) -> dict[str, Any]:
        """Return where the model runs: nodes and segments on TVM and on ONNX Runtime."""
        nodes, flops, ort_ops = self.manifest.placement_totals()
        total = nodes[TVM_SEGMENT] + nodes[ORT_SEGMENT]
        return {
            "segments": [s["kind"] for s in self.manifest.segments] or [TVM_SEGMENT],
            "tvm_nodes": nodes[TVM_SEGMENT],
            "onnxruntime_nodes": nodes[ORT_SEGMENT],
            "onnxruntime_op_types": ort_ops,
            "tvm_node_share": nodes[TVM_SEGMENT] / total if total else 1.0,
            "onnxruntime_flops_share": (
                flops[ORT_SEGMENT] / (flops[TVM_SEGMENT] + flops[ORT_SEGMENT])
                if flops[ORT_SEGMENT]
                else 0.0
            ),
        }

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
        if output_names is None and self._run_feeds is not None:
            with self._lock, self._library_state:
                self._ensure_threads()
                try:
                    outputs = self._run_feeds(feeds)
                except Exception as exc:
                    raise self._run_failed(self._whole, exc) from None
            if outputs is not None:
                return outputs
        arrays = self._check_feeds(feeds)
        check_indices(self.manifest.index_checks, self.manifest.inputs, arrays)
        if self._coded_inputs:
            arrays = [
                a.view(np.uint8) if i in self._coded_inputs else a for i, a in enumerate(arrays)
            ]
        all_names = self._output_names
        if output_names is None:
            indices = self._all_outputs
        else:
            unknown = [n for n in output_names if n not in all_names]
            if unknown:
                raise InputError(
                    f"unknown output name(s) {', '.join(repr(n) for n in unknown)}; "
                    f"the model's outputs are {', '.join(repr(n) for n in all_names)}"
                )
            indices = [all_names.index(n) for n in output_names]
        with self._lock, self._library_state:
            self._ensure_threads()
            if self._whole is not None:
                outputs = self._run_step(self._whole, arrays)
            else:
                values = dict(zip((s.name for s in self.manifest.inputs), arrays, strict=True))
                for step, release in zip(self._steps, self._release_after, strict=True):
                    produced = self._run_step(step, [values[n] for n in step.inputs])
                    values.update(zip(step.outputs, produced, strict=True))
                    for name in release:
                        values.pop(name, None)
                outputs = [values[n] for n in all_names]
            if indices is self._all_outputs and not self._coded_outputs:
                return outputs
            return [self._as_declared(i, outputs[i]) for i in indices]

    def _as_declared(self, index: int, array: np.ndarray) -> np.ndarray:
        """Return an output in its declared dtype: narrow types come back from codes."""
        dtype = self._coded_outputs.get(index)
        return array if dtype is None else array.view(dtype)

    def _run_step(self, step: _Step, args: list[np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = step.run(args)
        except Exception as exc:
            raise self._run_failed(step, exc) from None
        if len(outputs) != len(step.outputs):
            what = "the library" if step is self._whole else f"a {step.kind} segment"
            raise ArtifactError(
                f"{self.path}: {what} returned {len(outputs)} outputs, the manifest lists "
                f"{len(step.outputs)}"
            )
        return outputs

    def _run_failed(self, step: _Step | None, exc: Exception) -> InferError:
        where = "" if step is None or len(self._steps) == 1 else f" in its {step.kind} segment"
        return InferError(f"{self.manifest.model_name}: run failed{where}: {exc}")

    def _to_device(self, array: np.ndarray, _index: int = 0) -> Any:
        # empty + copyfrom is ~25x faster than tvm.runtime.tensor(array) for large inputs.
        tensor = self._empty(array.shape, array.dtype.name, self._device)
        tensor.copyfrom(array)
        return tensor

    def _read_params(self, path: Path, names: list[str]) -> list[Any]:
        """Return the named weights of a safetensors file as device tensors, each read straight
        into its tensor on CPU. safetensors' own loaders map the file, and its pages then count
        in the RSS beside the copies (BERT-base peaked at its weights twice over at load)."""
        try:
            with open(path, "rb") as f:
                header_size = int.from_bytes(f.read(8), "little")
                if not 0 < header_size <= MAX_PARAMS_HEADER_BYTES:
                    raise ValueError(f"header of {header_size} bytes")
                header = json.loads(f.read(header_size))
                start, end = 8 + header_size, path.stat().st_size
                missing = [n for n in names if n not in header]
                if missing:
                    raise ArtifactError(f"{path}: lacks parameter(s) {', '.join(missing[:5])}")
                return [self._read_param(f, header[n], start, end) for n in names]
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"{path}: cannot be read: {exc}") from None

    def _read_param(self, f: Any, entry: dict[str, Any], start: int, end: int) -> Any:
        dtype = _safetensors_dtype(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        first, last = (start + int(o) for o in entry["data_offsets"])
        if not start <= first <= last <= end or last - first != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor bytes {first}..{last} do not hold {dtype.name}{list(shape)}")
        f.seek(first)
        if self._cpu and math.prod(shape):
            tensor = self._empty(shape, dtype.name, self._device)
            try:
                view = np.from_dlpack(tensor)
            except (BufferError, TypeError, RuntimeError):
                view = None  # numpy cannot view it through DLPack (bool, bf16): copied in below
            if view is not None:
                if f.readinto(view.reshape(-1).view(np.uint8).data) != last - first:
                    raise ValueError("file ends early")
                return tensor
        array = np.frombuffer(f.read(last - first), dtype=dtype).reshape(shape)
        return self._to_device(array)

    def _input_buffers(
        self, slots: list[tuple[np.ndarray, Any] | None]
    ) -> Callable[[np.ndarray, int], Any]:
        """Return a CPU to_device that refills one buffer per argument (slots[index]: its numpy
        view and its tensor) while its shape and dtype hold: a fresh tensor and TVM's checked
        copy cost ~30 µs per input on small models. Runs are serialised, and an output that is
        one of these buffers is copied out."""

        def to_device(array: np.ndarray, index: int) -> Any:
            slot = slots[index]
            if slot is None or slot[0].shape != array.shape or slot[0].dtype != array.dtype:
                if slot is not None:
                    self._input_addresses.discard(slot[0].ctypes.data)
                    slots[index] = None
                tensor = self._empty(array.shape, array.dtype.name, self._device)
                try:
                    view = np.from_dlpack(tensor)
                except (BufferError, TypeError, RuntimeError):
                    # numpy cannot view bfloat16 or float8 through DLPack: copied in by TVM
                    tensor.copyfrom(array)
                    return tensor
                slot = slots[index] = (view, tensor)
                if slot[0].size:
                    self._input_addresses.add(slot[0].ctypes.data)
            slot[0][...] = array  # the same dtype and shape: a plain copy
            return slot[1]

        return to_device

    @staticmethod
    def _address(tensor: Any) -> int:
        try:
            return int(np.from_dlpack(tensor).ctypes.data)
        except (BufferError, TypeError, RuntimeError):
            return -1

    def _to_numpy(self, tensor: Any) -> np.ndarray:
        if self._cpu:
            try:
                # Zero-copy: the array keeps the VM's output buffer alive.
                array: np.ndarray = np.from_dlpack(tensor)
                # (the tensor's address is the array's, and cheaper to read than array.ctypes)
                address = tensor.data_ptr()
                if array.size and (
                    address in self._param_addresses or address in self._input_addresses
                ):
                    return array.copy()
                return array
            except (BufferError, TypeError, RuntimeError):
                pass
        result: np.ndarray = tensor.numpy()
        return result

    def _flatten(self, result: Any) -> list[Any]:
        """Return the VM's result as a flat list: tensors, shapes and scalars (as int64 arrays)."""
        if type(result) is self._array_type:  # a tuple; read by index, 2x faster than iterating
            get, tensor = self._array_item, self._tensor_type
            items = [get(result, i) for i in range(self._array_size(result))]
            for item in items:
                if type(item) is not tensor:
                    return [leaf for item in items for leaf in self._flatten(item)]
            return items
        if hasattr(result, "numpy"):
            return [result]
        if isinstance(result, self._shape_type):  # a Shape output of the ONNX graph
            return [np.asarray(tuple(result), dtype=np.int64)]
        if isinstance(result, bool | int | float):  # a scalar (PrimValue) output
            return [np.asarray(result, dtype=np.int64 if isinstance(result, int) else None)]
        flat: list[Any] = []
        for item in result:
            flat.extend(self._flatten(item))
        return flat

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.manifest.inputs)
        return f"Session({str(self.path)!r}, inputs=[{ins}], target={self.manifest.target['kind']})"
