"""oneDNN kernels for the convolutions and matmuls that compiled graphs hand off (see
infer/optimize/offload.py): built here through ctypes on a call's first use, weights reordered
once per session into the layout oneDNN picks for this CPU; later calls from `R.call_dps_packed`
run in the compiled dispatch (infer/runtime/dispatch.py) without entering Python.

The library is the `onednn-cpu-gomp` wheel (oneDNN 3.2 on GNU OpenMP), whose brgemm kernels run
fp32 Conv and MatMul at ONNX Runtime's speed on this CPU (TVM_NOTES.md); TVM compiles the rest.
Each kernel is created on first use for one input shape and kept in the running session's state,
so that packed weights live as long as the session that owns them and no longer. It runs on the
implementation the compile measured fastest for its call (CHOICES_FILE, see _fastest), else on
oneDNN's first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import ArtifactError, InferError

__all__ = [
    "CHOICES_FILE",
    "CONV2D",
    "F32_KIND",
    "INT8",
    "LIBRARY",
    "MATMUL",
    "OnednnState",
    "active",
    "available",
    "depthwise_fusable",
    "library_version",
    "read_choices",
    "register",
    "write_choices",
]

LIBRARY = "onednn-cpu-gomp"
# An artifact's record of the implementation its compile measured fastest for each call
# (OnednnState.choices), at its root: {"threads": n, "kernels": {call key: choice}}.
CHOICES_FILE = "onednn_kernels.json"
# The config precision of calls on an 8-bit source (a quantized model's dequantize folded in).
INT8 = "int8"
# The global function names compiled graphs call; their last argument is a JSON config string.
CONV2D = "infer.onednn.conv2d"
MATMUL = "infer.onednn.matmul"
# A compile also times a bf16 call's kernel computed in f32 (recipes of this kind suffix) and
# keeps f32 where it is faster: Silero VAD's STFT convolution (one input channel, a 256-wide
# window) took 12.3 µs in bf16 and 5.4 in f32; its bf16 window went from 28.5 to 24.9 µs.
F32_KIND = "@fp32"
# ... faster by this much (as MEASURE_MARGIN): timed alone, the weights stay in cache, so f32
# does not pay there for the twice-as-many weight bytes it reads in a model's run.
F32_MARGIN = 0.5

_SONAME = "libdnnl.so.3"
# Values from oneDNN 3.2's dnnl_types.h / dnnl_common_types.h.
_SUCCESS = 0
_UNDEF, _BF16, _F32, _S32, _S8, _U8 = 0, 2, 3, 4, 5, 6
_FORMAT_ANY = 1
_ENGINE_CPU = 1
_STREAM_IN_ORDER = 1
_FORWARD_INFERENCE = 96
_CONVOLUTION_DIRECT = 1
_DECONVOLUTION_DIRECT = 10
_QUERY_IMPL_INFO_STR, _QUERY_WEIGHTS_MD, _QUERY_SCRATCHPAD_MD = 8, 131, 136
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS, _ARG_SCRATCHPAD = 1, 17, 33, 41, 80
_ARG_ATTR_SCALES, _ARG_ATTR_ZERO_POINTS = 4096, 8192
# The depthwise post-op's own arguments (DNNL_ARG_ATTR_POST_OP_DW | its weights or bias), and
# the query of an execution argument's memory descriptor.
_ARG_POST_OP_DW = 16384
_QUERY_EXEC_ARG_MD = 255
# Each primitive gets its own scratchpad: the library's default one belongs to the thread that
# made the primitive, and running it from another thread (a server's worker) crashed.
_SCRATCHPAD_MODE_USER = 1
_ELTWISE = {"relu": 0x20, "clip": 46, "gelu_erf": 49, "gelu_tanh": 43, "logistic": 41}
_MAX_NDIMS = 12
_ALIGN = 64

_Dims = ctypes.c_int64 * _MAX_NDIMS
# int8 weights are symmetric per output channel: q = round(w / scale) with |q| <= 127, the
# levels ONNX Runtime's quantizer gives them (symmetric: -128 has no positive counterpart).
_WEIGHT_LEVELS = 127


@dataclasses.dataclass(frozen=True)
class _Quant:
    """How an int8 kernel reads its 8-bit source: x = (source - zero) * scale, one scale and
    zero point for the whole tensor; weight_mask is the oneDNN mask of its weights' per-channel
    scales."""

    source: int  # _U8 or _S8
    scale: float
    zero: int
    weight_mask: int = 1


def _quantize_weights(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (int8 values in w's layout, float32 scale per index of axis): w's values
    symmetric per output channel. Weights a model quantized this way (ONNX Runtime's
    per-channel int8) come back exactly."""
    channels = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    scales = (np.abs(channels).max(axis=1) / _WEIGHT_LEVELS).astype(np.float32)
    scales[scales == 0] = 1.0
    shape = [1] * w.ndim
    shape[axis] = -1
    values = np.rint(w / scales.reshape(shape))
    return np.clip(values, -_WEIGHT_LEVELS, _WEIGHT_LEVELS).astype(np.int8), scales


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("patch", ctypes.c_int),
        ("hash", ctypes.c_char_p),
        ("cpu_runtime", ctypes.c_uint),
        ("gpu_runtime", ctypes.c_uint),
    ]


def _library_candidates() -> list[str]:
    # pip puts the wheel's libdnnl.so.3 into <prefix>/lib; a system install is the fallback.
    paths = [str(Path(sys.prefix) / "lib" / _SONAME)]
    found = ctypes.util.find_library("dnnl")
    if found:
        paths.append(found)
    return paths


class _Library:
    """The C API of libdnnl, one engine per process and one stream per thread."""

    def __init__(self) -> None:
        errors = []
        for path in _library_candidates():
            try:
                self.lib = ctypes.CDLL(path)
                break
            except OSError as exc:
                errors.append(str(exc))
        else:
            raise ArtifactError(
                f"this artifact calls oneDNN, and {_SONAME} cannot be loaded "
                f"(pip install {LIBRARY}): {'; '.join(errors)}"
            )
        lib = self.lib
        p = ctypes.c_void_p
        for name in (
            "dnnl_engine_create",
            "dnnl_stream_create",
            "dnnl_stream_wait",
            "dnnl_memory_desc_create_with_tag",
            "dnnl_memory_desc_create_with_strides",
            "dnnl_convolution_forward_primitive_desc_create",
            "dnnl_deconvolution_forward_primitive_desc_create",
            "dnnl_matmul_primitive_desc_create",
            "dnnl_reorder_primitive_desc_create",
            "dnnl_primitive_create",
            "dnnl_primitive_execute",
            "dnnl_memory_create",
            "dnnl_memory_set_data_handle",
            "dnnl_primitive_attr_create",
            "dnnl_primitive_attr_set_post_ops",
            "dnnl_post_ops_create",
            "dnnl_post_ops_append_eltwise",
            "dnnl_memory_desc_destroy",
            "dnnl_primitive_desc_destroy",
            "dnnl_primitive_destroy",
            "dnnl_memory_destroy",
            "dnnl_primitive_attr_destroy",
            "dnnl_post_ops_destroy",
            "dnnl_memory_desc_clone",
            "dnnl_primitive_attr_set_scratchpad_mode",
            "dnnl_primitive_attr_set_scales_mask",
            "dnnl_primitive_attr_set_zero_points_mask",
        ):
            getattr(lib, name).restype = ctypes.c_int
        lib.dnnl_primitive_desc_query_md.restype = p
        lib.dnnl_primitive_desc_query_md.argtypes = [p, ctypes.c_int, ctypes.c_int]
        lib.dnnl_primitive_desc_query.restype = ctypes.c_int
        lib.dnnl_primitive_desc_query.argtypes = [p, ctypes.c_int, ctypes.c_int, p]
        lib.dnnl_primitive_desc_next_impl.restype = ctypes.c_int
        lib.dnnl_primitive_desc_next_impl.argtypes = [p]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_get_size.argtypes = [p]
        lib.dnnl_memory_desc_equal.restype = ctypes.c_int
        lib.dnnl_memory_desc_equal.argtypes = [p, p]
        lib.dnnl_memory_set_data_handle.argtypes = [p, p]
        lib.dnnl_primitive_execute.argtypes = [p, p, ctypes.c_int, p]
        lib.dnnl_stream_wait.argtypes = [p]
        lib.dnnl_post_ops_append_eltwise.argtypes = [
            p,
            ctypes.c_int,
            ctypes.c_float,
            ctypes.c_float,
        ]
        lib.dnnl_post_ops_append_dw.restype = ctypes.c_int
        lib.dnnl_post_ops_append_dw.argtypes = [p, *[ctypes.c_int] * 3, *[ctypes.c_int64] * 3]
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        self.engine = p()
        self.check(lib.dnnl_engine_create(ctypes.byref(self.engine), _ENGINE_CPU, 0), "engine")
        self._streams = threading.local()
        try:
            self.gomp: Any = ctypes.CDLL("libgomp.so.1")
        except OSError:
            self.gomp = None

    @staticmethod
    def check(status: int, what: str) -> None:
        if status != _SUCCESS:
            raise InferError(f"oneDNN: {what} failed (dnnl_status_t {status})")

    def stream(self) -> ctypes.c_void_p:
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = ctypes.c_void_p()
            self.check(
                self.lib.dnnl_stream_create(ctypes.byref(stream), self.engine, _STREAM_IN_ORDER),
                "stream",
            )
            self._streams.stream = stream
        return stream

    def set_threads(self, threads: int) -> None:
        # OpenMP's thread count is per calling thread; set it where oneDNN runs (every time:
        # the compiled dispatch sets it too).
        if self.gomp is not None:
            self.gomp.omp_set_num_threads(ctypes.c_int(threads))

    def md(
        self, dims: Sequence[int], strides: Sequence[int] | None = None, dtype: int = _F32
    ) -> ctypes.c_void_p:
        """Return a memory descriptor (f32 unless dtype says): strided, or format `any` when
        strides is None."""
        md = ctypes.c_void_p()
        if strides is None:
            status = self.lib.dnnl_memory_desc_create_with_tag(
                ctypes.byref(md), len(dims), _Dims(*dims), dtype, _FORMAT_ANY
            )
        else:
            status = self.lib.dnnl_memory_desc_create_with_strides(
                ctypes.byref(md), len(dims), _Dims(*dims), dtype, _Dims(*strides)
            )
        self.check(status, f"memory descriptor {list(dims)}")
        return md

    def memory(self, md: Any) -> ctypes.c_void_p:
        memory = ctypes.c_void_p()
        self.check(
            self.lib.dnnl_memory_create(ctypes.byref(memory), md, self.engine, None), "memory"
        )
        return memory

    def attr(
        self,
        post_ops: Sequence[tuple[str, float, float]],
        quant: _Quant | None = None,
        depthwise: tuple[int, bool, Sequence[tuple[str, float, float]]] | None = None,
    ) -> ctypes.c_void_p:
        """Return primitive attributes: a scratchpad of the primitive's own, the post-ops, and
        for int8 the masks of the scales and zero points passed at execution. depthwise (stride,
        whether it has a bias, its own post-ops) appends a 3x3 depthwise convolution with
        padding 1 (f32)."""
        attr, ops = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attributes")
        self.check(
            self.lib.dnnl_primitive_attr_set_scratchpad_mode(attr, _SCRATCHPAD_MODE_USER),
            "scratchpad mode",
        )
        if quant is not None:
            for arg, mask in ((_ARG_SRC, 0), (_ARG_WEIGHTS, quant.weight_mask)):
                self.check(self.lib.dnnl_primitive_attr_set_scales_mask(attr, arg, mask), "scales")
            if quant.zero:
                self.check(
                    self.lib.dnnl_primitive_attr_set_zero_points_mask(attr, _ARG_SRC, 0),
                    "zero points",
                )
        if not post_ops and depthwise is None:
            return attr
        self.check(self.lib.dnnl_post_ops_create(ctypes.byref(ops)), "post-ops")
        dw_stride, dw_bias, dw_post_ops = depthwise if depthwise is not None else (0, False, [])
        for name, alpha, beta in post_ops:
            self.check(
                self.lib.dnnl_post_ops_append_eltwise(ops, _ELTWISE[name], alpha, beta),
                f"post-op {name}",
            )
        if depthwise is not None:
            self.check(
                self.lib.dnnl_post_ops_append_dw(
                    ops, _F32, _F32 if dw_bias else _UNDEF, _F32, 3, dw_stride, 1
                ),
                "depthwise post-op",
            )
        for name, alpha, beta in dw_post_ops:
            self.check(
                self.lib.dnnl_post_ops_append_eltwise(ops, _ELTWISE[name], alpha, beta),
                f"post-op {name}",
            )
        self.check(self.lib.dnnl_primitive_attr_set_post_ops(attr, ops), "post-ops")
        self.lib.dnnl_post_ops_destroy(ops)
        return attr

    def version(self) -> str:
        v = self.lib.dnnl_version().contents
        return f"{v.major}.{v.minor}.{v.patch}"


_LIBRARY: _Library | None = None
_LIBRARY_LOCK = threading.Lock()


def _library() -> _Library:
    global _LIBRARY
    with _LIBRARY_LOCK:
        if _LIBRARY is None:
            _LIBRARY = _Library()
        return _LIBRARY


def compiled_dispatch() -> bool:
    """Return whether calls run through the compiled dispatch (after register())."""
    return _FAST is not None


def available() -> bool:
    """Return whether oneDNN can be loaded here."""
    try:
        _library()
    except ArtifactError:
        return False
    return True


def depthwise_fusable(nhwc: Sequence[int], channels: int, stride: int, threads: int) -> bool:
    """Return whether oneDNN computes a 1x1 convolution of an NHWC input into channels, then a
    3x3 depthwise one of stride (padding 1), as one kernel of its own (f32) on this CPU at
    threads (it offered one at 56x56 on one thread, not on two).

    Its only other way is "ref_fused_convolution": the two primitives one after the other
    through a scratchpad of the whole 1x1 output, a buffer of each call's own. MobileNetV2 ran
    slower with those in 16 blocks than with two calls each (10.0-12.3 ms against 8.3-10.0,
    one thread), while the fused kernel (jit_1x1 here, offered at 112x112 at one and two
    threads) took 0.74 ms in the model against 0.74 + 0.37 for the two calls it replaces."""
    lib = _library()
    lib.set_threads(threads)  # oneDNN chooses for the threads set when the primitive is made
    n, h, w, c = nhwc
    attr = lib.attr([], None, (stride, True, []))
    src = lib.md([n, c, h, w], _strides("NHWC", (n, h, w, c), "NCHW"))
    dst = lib.md([n, channels, h, w], _strides("NHWC", (n, h, w, channels), "NCHW"))
    weights, bias = lib.md([channels, c, 1, 1]), lib.md([channels], [1])
    pd = ctypes.c_void_p()
    try:
        status = lib.lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(pd), lib.engine, _FORWARD_INFERENCE, _CONVOLUTION_DIRECT, src, weights,
            bias, dst, _Dims(1, 1), _Dims(0, 0), _Dims(0, 0), _Dims(0, 0), attr,
        )  # fmt: skip
        if status != _SUCCESS:
            return False
        while True:
            if not _implementation(lib, pd).startswith("ref"):
                return True
            if lib.lib.dnnl_primitive_desc_next_impl(pd) != _SUCCESS:
                return False
    finally:
        if pd.value:
            lib.lib.dnnl_primitive_desc_destroy(pd)
        lib.lib.dnnl_primitive_attr_destroy(attr)
        for md in (src, dst, weights, bias):
            lib.lib.dnnl_memory_desc_destroy(md)


def library_version() -> str:
    """Return oneDNN's version, e.g. '3.2.0'."""
    return _library().version()


def _dense_strides(shape: Sequence[int]) -> list[int]:
    """Return the element strides of a dense row-major tensor of shape."""
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return strides[::-1]


def _strides(layout: str, shape: Sequence[int], logical: str) -> list[int]:
    """Return the strides of logical's letters in a dense tensor of shape stored in layout."""
    by_letter = dict(zip(layout, _dense_strides(shape), strict=True))
    return [by_letter[letter] for letter in logical]


class _Kernel:
    """One oneDNN primitive for one set of shapes, its memory objects and packed weights."""

    def __init__(
        self,
        lib: _Library,
        pd: ctypes.c_void_p,
        roles: Sequence[tuple[int, Any]],
        packed: tuple[Any, np.ndarray] | None,
        fixed: Sequence[tuple[int, int, np.ndarray]] = (),
        bound: Sequence[tuple[int, Any, np.ndarray]] = (),
    ) -> None:
        """pd is consumed; roles are (DNNL_ARG_*, memory descriptor) in execution order (the
        memory objects copy the descriptors); fixed are (DNNL_ARG_*, data type, 1-d array)
        passed to every execution (int8 scales and zero points, a depthwise post-op's bias),
        bound (DNNL_ARG_*, memory descriptor, buffer) likewise at the buffer's aligned address
        (a depthwise post-op's packed weights)."""
        self.lib = lib
        self.primitive = ctypes.c_void_p()
        lib.check(lib.lib.dnnl_primitive_create(ctypes.byref(self.primitive), pd), "primitive")
        self.memories = [lib.memory(md) for _, md in roles]
        args = [_ExecArg(arg, m.value) for (arg, _), m in zip(roles, self.memories, strict=True)]
        # The memory objects of fixed and bound point into their arrays, kept here.
        self.fixed = [array for *_, array in (*fixed, *bound)]
        self.fixed_memories: list[ctypes.c_void_p] = []

        def bind(arg: int, md: Any, address: int) -> None:
            memory = lib.memory(md)
            lib.lib.dnnl_memory_set_data_handle(memory, address)
            self.fixed_memories.append(memory)
            args.append(_ExecArg(arg, memory.value))

        for arg, dtype, array in fixed:
            md = lib.md([array.size], [1], dtype)
            bind(arg, md, array.ctypes.data)
            lib.lib.dnnl_memory_desc_destroy(md)
        for arg, md, buffer in bound:
            bind(arg, md, _aligned_address(buffer))
        # The primitive's own scratchpad (a user-managed one; none when it needs none).
        scratchpad_md = ctypes.c_void_p(
            lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_SCRATCHPAD_MD, 0)
        )
        size = lib.lib.dnnl_memory_desc_get_size(scratchpad_md) if scratchpad_md.value else 0
        self.scratchpad = np.empty(size + _ALIGN, dtype=np.uint8) if size else None
        self.scratchpad_memory = None
        if self.scratchpad is not None:
            self.scratchpad_memory = lib.memory(scratchpad_md)
            lib.lib.dnnl_memory_set_data_handle(
                self.scratchpad_memory, _aligned_address(self.scratchpad)
            )
            args.append(_ExecArg(_ARG_SCRATCHPAD, self.scratchpad_memory.value))
        self.args = (_ExecArg * len(args))(*args)
        self.nargs = len(args)
        self.threads = 1  # OpenMP threads to run on, set by whoever builds the kernel
        self.packed = packed  # (its memory descriptor, the buffer holding the packed weights)
        self.packed_handle = None if packed is None else _aligned_address(packed[1])
        # A reorder that converts the source to the compute type first, and its output buffer.
        self.convert: tuple[_Kernel, np.ndarray] | None = None
        # The primitive and oneDNN's implementation running it: "convolution jit_1x1:avx2".
        self.implementation = ""
        lib.lib.dnnl_primitive_desc_destroy(pd)

    def __call__(self, handles: Sequence[int | None]) -> None:
        lib = self.lib.lib
        if self.convert is not None:
            reorder, buffer = self.convert
            converted = _aligned_address(buffer)
            reorder([handles[0], converted])
            handles = [converted, *handles[1:]]
        # Set every time: the compiled dispatch sets them too, behind Python's back.
        for memory, handle in zip(self.memories, handles, strict=True):
            lib.dnnl_memory_set_data_handle(memory, handle)
        stream = self.lib.stream()
        self.lib.check(
            lib.dnnl_primitive_execute(self.primitive, stream, self.nargs, self.args), "execute"
        )
        lib.dnnl_stream_wait(stream)

    def __del__(self) -> None:
        lib = getattr(self.lib, "lib", None)
        if lib is None:
            return
        for memory in [*self.memories, *self.fixed_memories, self.scratchpad_memory]:
            if memory is not None:
                lib.dnnl_memory_destroy(memory)
        lib.dnnl_primitive_destroy(self.primitive)


def _aligned_address(buffer: np.ndarray) -> int:
    address = int(buffer.ctypes.data)
    return address + (-address) % _ALIGN


# Kernels kept per session: one per operator and input shape; the oldest go first, so that a
# model fed ever new shapes (a server's text lengths) holds a bounded number.
MAX_KERNELS = 512


class OnednnState:
    """The kernels and packed weights of one session, and the threads oneDNN may use."""

    def __init__(self, threads: int, choices: dict[str, str] | None = None) -> None:
        self.threads = threads
        # oneDNN's implementation for each call a compile measured (CHOICES_FILE): call key ->
        # "<primitive> <implementation>"; calls not in it take oneDNN's first.
        self.choices: dict[str, str] = dict(choices or {})
        # Set by a compile: a kernel made for a call key not in choices times every
        # implementation oneDNN offers for it (both primitives of a matmul on weights) and
        # keeps the fastest, into choices; the same key's later kernels (other weights) take it.
        self.measure = False
        self.kernels: dict[tuple[Any, ...], _Kernel] = {}
        self.packed: dict[int, list[tuple[Any, np.ndarray]]] = {}
        # Per-channel scales of the weights packed in int8, by (address, channel axis).
        self.weight_scales: dict[tuple[int, int], np.ndarray] = {}
        # Calls that went through Python: kernel builds, and every call without the compiled
        # dispatch.
        self.python_calls = 0
        # Compiled libraries whose parallel loops run on OpenMP's threads (adopt).
        self.openmp_libraries = 0
        # The compiled dispatch's table of these kernels (None: calls go through Python).
        self.table = None if _FAST is None else _FAST.lib.infer_dispatch_table_new(threads)

    def adopt(self, library: Path) -> bool:
        """Run the parallel loops of the compiled library TVM loaded from library on OpenMP's
        threads (oneDNN's) while this state is active; False when they stay on TVM's pool."""
        adopted = self.table is not None and _FAST is not None and _FAST.adopt(library)
        self.openmp_libraries += adopted
        return adopted

    def keep(self, key: tuple[Any, ...], kernel: _Kernel) -> None:
        """Keep kernel under key, dropping the oldest past MAX_KERNELS."""
        if len(self.kernels) >= MAX_KERNELS:
            del self.kernels[next(iter(self.kernels))]
            if self.table is not None and _FAST is not None:  # it may point at the one dropped
                _FAST.lib.infer_dispatch_table_clear(self.table)
        self.kernels[key] = kernel

    def __del__(self) -> None:
        if getattr(self, "table", None) is not None and _FAST is not None:
            _FAST.lib.infer_dispatch_table_free(self.table)
            self.table = None

    def pack(
        self,
        lib: _Library,
        pd: Any,
        weight: Any,
        user_md: Any,
        int8_axis: int | None = None,
        argument: int | None = None,
    ) -> tuple[Any, np.ndarray]:
        """Return (memory descriptor, buffer) of weight reordered to the layout pd wants, reusing
        an earlier reorder of the same weight into the same layout. With int8_axis, user_md is
        int8 and the weight is quantized per channel of that axis first, its scales kept in
        weight_scales: once per session, not once per input shape. argument: the execution
        argument the weight is (its weights when None)."""
        wanted = (
            lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_WEIGHTS_MD, 0)
            if argument is None
            else lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, argument)
        )
        address = weight.data_ptr()
        for md, buffer in self.packed.get(address, []):
            if lib.lib.dnnl_memory_desc_equal(md, wanted):
                return md, buffer
        source = address
        if int8_axis is not None:
            values, self.weight_scales[address, int8_axis] = _quantize_weights(
                np.from_dlpack(weight), int8_axis
            )
            source = values.ctypes.data
        # The query result belongs to pd, which is destroyed once the primitive exists: keep a copy.
        md = _copy_md(lib, wanted)
        reorder, buffer = _reorder(lib, user_md, md, "weight reorder")
        reorder([source, _aligned_address(buffer)])
        self.packed.setdefault(address, []).append((md, buffer))
        return md, buffer


def _reorder(lib: _Library, src: Any, dst: Any, what: str) -> tuple[_Kernel, np.ndarray]:
    """Return a reorder kernel from memory descriptor src to dst, and a buffer that holds dst."""
    pd = ctypes.c_void_p()
    lib.check(
        lib.lib.dnnl_reorder_primitive_desc_create(
            ctypes.byref(pd), src, lib.engine, dst, lib.engine, None
        ),
        what,
    )
    kernel = _Kernel(lib, pd, [(_ARG_SRC, src), (_ARG_DST, dst)], None)
    return kernel, np.empty(lib.lib.dnnl_memory_desc_get_size(dst) + _ALIGN, dtype=np.uint8)


def _implementation(lib: _Library, pd: Any) -> str:
    """Return the name of the implementation primitive descriptor pd stands on."""
    name = ctypes.c_char_p()
    lib.check(
        lib.lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(name)),
        "implementation query",
    )
    return (name.value or b"").decode()


def _copy_md(lib: _Library, md: Any) -> ctypes.c_void_p:
    copy = ctypes.c_void_p()
    lib.check(lib.lib.dnnl_memory_desc_clone(ctypes.byref(copy), ctypes.c_void_p(md)), "clone")
    return copy


_ACTIVE = threading.local()


class active:  # named as the context manager it is: `with active(state):`
    """Run the block with state as the calling thread's oneDNN state. One instance may be
    entered again and again, not concurrently: a Session enters its own under its lock."""

    def __init__(self, state: OnednnState) -> None:
        self.state = state
        self._saved: list[tuple[OnednnState | None, Any, Any]] = []

    def __enter__(self) -> None:
        previous = getattr(_ACTIVE, "state", None)
        _ACTIVE.state = self.state
        fast = _FAST if self.state.table is not None else None
        table = None if fast is None else fast.lib.infer_dispatch_activate(self.state.table)
        self._saved.append((previous, fast, table))

    def __exit__(self, *_exc: object) -> None:
        previous, fast, table = self._saved.pop()
        _ACTIVE.state = previous
        if fast is not None:
            fast.lib.infer_dispatch_activate(table)


def _state() -> OnednnState:
    state = getattr(_ACTIVE, "state", None)
    if state is None:  # called outside a Session: correct, but packs weights on every call
        state = OnednnState(threads=1)
    return state


# The types a kernel may compute in: bf16 converts the source and the packed weights, keeps the
# bias, the accumulation and the output f32 (oneDNN's bf16 convolutions and matmuls).
_COMPUTE_TYPES = {"fp32": _F32, "bf16": _BF16}


def _precision_note(config: dict[str, Any]) -> str:
    precision = config.get("precision", "fp32")
    return "" if precision == "fp32" else f" in {precision}"


def _unit_height(layout: str, shape: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """Return a 1-d layout and shape with a height of 1 before the width: NCW -> NCHW."""
    at = layout.index("W")
    return layout[:at] + "H" + layout[at:], (*shape[:at], 1, *shape[at:])


def _conv2d_recipes(
    lib: _Library,
    config: dict[str, Any],
    x: Any,
    w: Any,
    has_bias: bool,
    out: Any,
    quant: _Quant | None,
) -> list[_Recipe]:
    return [
        _convolution(
            lib, config, tuple(x.shape), w, tuple(w.shape), tuple(out.shape), has_bias, quant
        )
    ]


@dataclasses.dataclass
class _Depthwise:
    """The 3x3 depthwise convolution a convolution computes after itself (oneDNN's dw post-op):
    its weights as stored (packed with the kernel), its bias, and the final output's memory
    descriptor (the convolution's own dst is the 1x1's output, never written)."""

    w: Any
    user_w: Any
    bias: Any
    dst: Any


def _depthwise(lib: _Library, config: dict[str, Any], w: Any, bias: Any, out: Any) -> _Depthwise:
    """Return the depthwise post-op of config's convolution on weights w (and bias) into out."""
    layout = config["dw"]["kernel_layout"]
    o_stride, i_stride, h_stride, w_stride = _strides(layout, tuple(w.shape), "OIHW")
    channels = tuple(w.shape)[layout.index("O")]
    # (groups, outputs per group, inputs per group, height, width): a channel per group.
    user_w = lib.md([channels, 1, 1, 3, 3], [o_stride, o_stride, i_stride, h_stride, w_stride])
    data_layout, shape = config["data_layout"], tuple(out.shape)
    dst = lib.md(
        [shape[data_layout.index(c)] for c in "NCHW"], _strides(data_layout, shape, "NCHW")
    )
    return _Depthwise(w, user_w, bias, dst)


def _convolution(
    lib: _Library,
    config: dict[str, Any],
    x_shape: tuple[int, ...],
    w: Any,
    w_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    has_bias: bool,
    quant: _Quant | None = None,
) -> _Recipe:
    """Return the recipe of config's convolution (or deconvolution) on tensors of these shapes,
    stored in config's layouts; w is the weight tensor, packed once into oneDNN's layout. With
    quant, the source is 8-bit and the weights are quantized to int8 as they are packed."""
    data_layout, kernel_layout = config["data_layout"], config["kernel_layout"]
    groups = config["groups"]
    strides, padding, dilation = config["strides"], config["padding"], config["dilation"]
    if "H" not in data_layout:  # 1-d: oneDNN's 2-d convolution with a height of 1
        _, y_shape = _unit_height(data_layout, y_shape)
        data_layout, x_shape = _unit_height(data_layout, x_shape)
        kernel_layout, w_shape = _unit_height(kernel_layout, w_shape)
        strides, dilation, padding = [1, *strides], [1, *dilation], [0, padding[0], 0, padding[1]]
    if "dw" in config:  # the 1x1's output, which the depthwise post-op reads
        y_shape = tuple(
            w_shape[kernel_layout.index("O")] if c == "C" else x_shape[i]
            for i, c in enumerate(data_layout)
        )
    src_dims = [x_shape[data_layout.index(c)] for c in "NCHW"]
    dst_dims = [y_shape[data_layout.index(c)] for c in "NCHW"]
    dtype = _S8 if quant else _COMPUTE_TYPES[config.get("precision", "fp32")]
    src_strides = _strides(data_layout, x_shape, "NCHW")
    src = lib.md(src_dims, src_strides, quant.source if quant else _F32)
    compute_src = src if quant else lib.md(src_dims, src_strides, dtype)
    dst = lib.md(dst_dims, _strides(data_layout, y_shape, "NCHW"))
    o, i, kh, kw = (w_shape[kernel_layout.index(c)] for c in "OIHW")
    o_stride, i_stride, h_stride, w_stride = _strides(kernel_layout, w_shape, "OIHW")
    user_type = _S8 if quant else _F32
    if groups == 1:
        user_w = lib.md([o, i, kh, kw], [o_stride, i_stride, h_stride, w_stride], user_type)
        any_w = lib.md([o, i, kh, kw], dtype=dtype)
    else:
        og = o // groups
        dims = [groups, og, i, kh, kw]
        user_w = lib.md(dims, [og * o_stride, o_stride, i_stride, h_stride, w_stride], user_type)
        any_w = lib.md(dims, dtype=dtype)
        if quant:  # per channel over (group, channel of the group)
            quant = dataclasses.replace(quant, weight_mask=0b11)
    bias = lib.md([o], [1]) if has_bias else None
    top, left, bottom, right = padding
    dilation = [d - 1 for d in dilation]
    dw = config.get("dw")
    depthwise = (
        None if dw is None else (dw["strides"][0], dw["bias"], [tuple(op) for op in dw["post_ops"]])
    )
    attr = lib.attr([tuple(op) for op in config["post_ops"]], quant, depthwise)
    # A transposed convolution is oneDNN's deconvolution: the same arguments, weights (O, I, ...)
    # with O its output channels (the second dim of ONNX's / Relax's IOHW).
    transposed = config.get("transposed", False)
    create = (
        lib.lib.dnnl_deconvolution_forward_primitive_desc_create
        if transposed
        else lib.lib.dnnl_convolution_forward_primitive_desc_create
    )

    def describe() -> ctypes.c_void_p:
        pd = ctypes.c_void_p()
        lib.check(
            create(
                ctypes.byref(pd),
                lib.engine,
                _FORWARD_INFERENCE,
                _DECONVOLUTION_DIRECT if transposed else _CONVOLUTION_DIRECT,
                compute_src,
                any_w,
                bias,
                dst,
                _Dims(*strides),
                _Dims(*dilation),
                _Dims(top, left),
                _Dims(bottom, right),
                attr,
            ),
            f"{'de' if transposed else ''}convolution {list(src_dims)} * {[o, i, kh, kw]} "
            f"groups {groups}{_precision_note(config)}",
        )
        return pd

    # The output channels' axis of the weight tensor as stored, counted from its end (a
    # matmul's (K, N) weights come here as HWIO).
    out_axis = config["kernel_layout"].index("O") - len(config["kernel_layout"])
    return _Recipe(
        "deconvolution" if transposed else "convolution", describe, attr, (src, compute_src),
        dst, bias, w, user_w, any_w, pack=True, quant=quant, out_axis=out_axis,
    )  # fmt: skip


def _matmul_recipes(
    lib: _Library,
    config: dict[str, Any],
    x: Any,
    w: Any,
    has_bias: bool,
    out: Any,
    quant: _Quant | None,
) -> list[_Recipe]:
    """Return the ways to make config's matmul: on weights, oneDNN's matmul and its 1x1
    convolution over the rows (the one expected faster first); on two activations, the matmul."""
    x_shape, w_shape, y_shape = tuple(x.shape), tuple(w.shape), tuple(out.shape)
    on_weights = config["weights"]
    rows = _rows_times_weights(lib, config, x_shape, w, has_bias, quant) if on_weights else None
    if on_weights:  # (..., M, K) @ (K, N): the rows of x flattened into one M
        k, n = w_shape
        m = int(np.prod(x_shape[:-1], dtype=np.int64))
        dtype = _S8 if quant else _COMPUTE_TYPES[config.get("precision", "fp32")]
        src = lib.md([m, k], [k, 1], quant.source if quant else _F32)
        compute_src = src if quant else lib.md([m, k], [k, 1], dtype)
        dst = lib.md([m, n], [n, 1])
        user_w = lib.md([k, n], [n, 1], _S8 if quant else _F32)
        wanted_w = lib.md([k, n], dtype=dtype)
        bias = lib.md([1, n], [n, 1]) if has_bias else None
        if quant:  # per column of the (K, N) weights
            quant = dataclasses.replace(quant, weight_mask=0b10)
    else:  # batched: both operands are activations, batch dims broadcast (always f32)
        rank = len(y_shape)
        xs = (1,) * (rank - len(x_shape)) + x_shape
        ws = (1,) * (rank - len(w_shape)) + w_shape
        src, dst = lib.md(xs, _dense_strides(xs)), lib.md(y_shape, _dense_strides(y_shape))
        compute_src = src
        user_w = wanted_w = lib.md(ws, _dense_strides(ws))
        bias = None
    attr = lib.attr([tuple(op) for op in config["post_ops"]], quant)

    def describe() -> ctypes.c_void_p:
        pd = ctypes.c_void_p()
        lib.check(
            lib.lib.dnnl_matmul_primitive_desc_create(
                ctypes.byref(pd), lib.engine, compute_src, wanted_w, bias, dst, attr
            ),
            f"matmul {list(x_shape)} @ {list(w_shape)}{_precision_note(config)}",
        )
        return pd

    matmul = _Recipe(
        "matmul", describe, attr, (src, compute_src), dst, bias, w, user_w, wanted_w,
        pack=on_weights, quant=quant, out_axis=-1,
    )  # fmt: skip
    if rows is None:
        return [matmul]
    # The order without a measured choice: see _rows_times_weights.
    return [matmul, rows] if w_shape[0] > w_shape[1] else [rows, matmul]


def _rows_times_weights(
    lib: _Library,
    config: dict[str, Any],
    x_shape: tuple[int, ...],
    w: Any,
    has_bias: bool,
    quant: _Quant | None = None,
) -> _Recipe:
    """(..., M, K) @ (K, N) as oneDNN's 1x1 convolution over M pixels of K channels (NHWC).

    On AVX2, oneDNN 3.2's f32 matmul is its gemm:jit; its first 1x1 convolution
    (brgconv_1x1:avx2) packs the weights once and, measured on BERT-base's projections at 128
    rows, takes 8.9 ms for 768 -> 3072 (gemm 17.9 ms) and 2.2 ms for 768 -> 768 (gemm 2.4 ms),
    but 27.8 ms for 3072 -> 768 (gemm 10.4 ms): so by default the weights with K <= N take it.
    A compile measures every implementation of both (see OnednnState.measure).
    """
    k, n = tuple(w.shape)
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    # The rows of x as one image row of M pixels (NHWC), the (K, N) weights as HWIO.
    one_by_one = {
        "data_layout": "NHWC", "kernel_layout": "HWIO", "groups": 1, "strides": [1, 1],
        "padding": [0, 0, 0, 0], "dilation": [1, 1], "post_ops": config["post_ops"],
        "precision": config.get("precision", "fp32"),
    }  # fmt: skip
    return _convolution(
        lib, one_by_one, (1, 1, m, k), w, (1, 1, k, n), (1, 1, m, n), has_bias, quant
    )


@dataclasses.dataclass
class _Recipe:
    """One way to make a kernel: the primitive (kind) that describe() returns a new descriptor
    of, on the attributes and memory descriptors here, which live until release().

    sources are the f32 source the graph passes and the one the primitive computes on: when
    they differ (bf16), the kernel converts the source with a reorder first. The weights w are
    packed once into the layout the primitive wants (pack) or read in place; with quant, the
    f32 weights are quantized per channel of out_axis (their axis in w) before packing, and
    the scales and zero point go with every execution."""

    kind: str
    describe: Callable[[], ctypes.c_void_p]
    attr: Any
    sources: tuple[Any, Any]
    dst: Any
    bias: Any
    w: Any
    user_w: Any
    wanted_w: Any
    pack: bool
    quant: _Quant | None = None
    out_axis: int = -1
    depthwise: _Depthwise | None = None

    def implementations(self, lib: _Library) -> list[str]:
        """Return the names of oneDNN's implementations of this primitive, best expected first
        (a name offered twice counts once: kernel() finds the first)."""
        pd, names = self.describe(), []
        try:
            while True:
                name = _implementation(lib, pd)
                if name not in names:
                    names.append(name)
                if lib.lib.dnnl_primitive_desc_next_impl(pd) != _SUCCESS:
                    return names
        finally:
            lib.lib.dnnl_primitive_desc_destroy(pd)

    def kernel(self, lib: _Library, state: OnednnState, implementation: str | None) -> _Kernel:
        """Return the kernel of this recipe, run by the named implementation (oneDNN's first
        when None, or when this CPU offers none of that name)."""
        pd = self.describe()
        if implementation is not None:
            while _implementation(lib, pd) != implementation:
                if lib.lib.dnnl_primitive_desc_next_impl(pd) != _SUCCESS:
                    lib.lib.dnnl_primitive_desc_destroy(pd)
                    pd = self.describe()
                    break
        src, compute_src = self.sources
        quant, w = self.quant, self.w
        int8_axis = self.out_axis if quant is not None else None
        packed = state.pack(lib, pd, w, self.user_w, int8_axis) if self.pack else None
        fixed: list[tuple[int, int, np.ndarray]] = []
        if quant is not None:
            scales = state.weight_scales[w.data_ptr(), self.out_axis]
            fixed = [
                (_ARG_ATTR_SCALES | _ARG_SRC, _F32, np.array([quant.scale], np.float32)),
                (_ARG_ATTR_SCALES | _ARG_WEIGHTS, _F32, scales),
            ]
            if quant.zero:
                zero = np.array([quant.zero], np.int32)
                fixed.append((_ARG_ATTR_ZERO_POINTS | _ARG_SRC, _S32, zero))
        dst, bound = self.dst, list[tuple[int, Any, np.ndarray]]()
        if self.depthwise is not None:
            dst, bound, dw_fixed = self._depthwise_arguments(lib, state, pd)
            fixed += dw_fixed
        roles = [
            (_ARG_SRC, compute_src),
            (_ARG_WEIGHTS, packed[0] if packed else self.user_w),
            (_ARG_DST, dst),
        ]
        if self.bias is not None:
            roles.insert(2, (_ARG_BIAS, self.bias))
        convert = None
        if compute_src.value != src.value and not lib.lib.dnnl_memory_desc_equal(src, compute_src):
            convert = _reorder(lib, src, compute_src, "source conversion")
        name = f"{self.kind} {_implementation(lib, pd)}"
        kernel = _Kernel(lib, pd, roles, packed, fixed=fixed, bound=bound)
        kernel.convert = convert
        kernel.implementation = name
        return kernel

    def _depthwise_arguments(
        self, lib: _Library, state: OnednnState, pd: Any
    ) -> tuple[Any, list[tuple[int, Any, np.ndarray]], list[tuple[int, int, np.ndarray]]]:
        """Return the final output's descriptor, the depthwise post-op's weights packed as pd
        wants them (_Kernel's bound) and its bias, if any, copied (_Kernel's fixed)."""
        dw = self.depthwise
        assert dw is not None
        wanted_dst = lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, _ARG_DST)
        if not lib.lib.dnnl_memory_desc_equal(wanted_dst, dw.dst):
            raise InferError("oneDNN depthwise post-op: its output is not in the graph's layout")
        weights = _ARG_POST_OP_DW | _ARG_WEIGHTS
        md, buffer = state.pack(lib, pd, dw.w, dw.user_w, argument=weights)
        fixed = []
        if dw.bias is not None:
            values = np.from_dlpack(dw.bias).reshape(-1).astype(np.float32)  # a copy
            fixed.append((_ARG_POST_OP_DW | _ARG_BIAS, _F32, values))
        return dw.dst, [(weights, md, buffer)], fixed

    def release(self, lib: _Library) -> None:
        if self.attr is not None:
            lib.lib.dnnl_primitive_attr_destroy(self.attr)
        descriptors = (*self.sources, self.dst, self.bias, self.user_w, self.wanted_w)
        for md in {md.value for md in descriptors if md is not None}:
            lib.lib.dnnl_memory_desc_destroy(ctypes.c_void_p(md))


def _source_quant(x: Any, scale: Any, zero: Any) -> _Quant:
    """Return how an int8 kernel reads x: its type, and the one scale and zero point (weights
    of the model, read once when the kernel is made)."""
    types = {"uint8": _U8, "int8": _S8}
    dtype = str(x.dtype)
    if dtype not in types:
        raise InferError(f"oneDNN int8 kernel: the source is {dtype}, expected uint8 or int8")
    scale_value = float(np.from_dlpack(scale).reshape(-1)[0])
    zero_value = int(np.from_dlpack(zero).reshape(-1)[0])
    return _Quant(types[dtype], scale_value, zero_value)


# A compile times each implementation once, then MEASURE_RUNS times more or for MEASURE_SECONDS
# (a kernel of microseconds runs up to MEASURE_MAX_RUNS times), and keeps the least time; one
# whose first run takes MEASURE_CUTOFF times the best so far is dropped there.
MEASURE_RUNS = 5
MEASURE_SECONDS = 0.002
MEASURE_MAX_RUNS = 200
MEASURE_CUTOFF = 3.0
# Another implementation replaces oneDNN's first only when it is this much faster: timed alone on
# data in cache, two within a few percent can swap places inside a model (ResNet-18's 64 -> 64
# 3x3 convolution at two threads: brgconv:avx2 1.46 and jit:avx2 1.47 ms alone, 1.64 and 2.28 ms
# a call in the model's run).
MEASURE_MARGIN = 0.05
# Implementations never measured: oneDNN's reference code (seconds where the others take
# milliseconds), and its reference composition of a fused depthwise post-op (see
# depthwise_fusable: fast on the measurement's hot data, slow in a model).
_REFERENCE = ("ref:", "ref_fused")


def _handles(kernel: _Kernel, x: Any, w: Any, bias: Any, out: Any) -> list[int]:
    """Return the data addresses of a call to kernel, in its memory objects' order."""
    weight = kernel.packed_handle if kernel.packed_handle is not None else w.data_ptr()
    if bias is None:
        return [x.data_ptr(), weight, out.data_ptr()]
    return [x.data_ptr(), weight, bias.data_ptr(), out.data_ptr()]


def _seconds(kernel: _Kernel, handles: list[int]) -> float:
    started = time.perf_counter()
    kernel(handles)
    return time.perf_counter() - started


def _least_seconds(kernel: _Kernel, handles: list[int]) -> float:
    """Return kernel's least time over MEASURE_RUNS runs or more (see MEASURE_SECONDS)."""
    times: list[float] = []
    while len(times) < MEASURE_MAX_RUNS and (
        len(times) < MEASURE_RUNS or sum(times) < MEASURE_SECONDS
    ):
        times.append(_seconds(kernel, handles))
    return min(times)


def _fastest(
    lib: _Library, state: OnednnState, recipes: Sequence[_Recipe], handles: Any
) -> _Kernel:
    """Return the fastest kernel of recipes on this call's tensors (handles(kernel) gives its
    addresses): every implementation of every recipe, timed, the first one made (oneDNN's
    first of the first recipe) ahead by MEASURE_MARGIN, a bf16 call's f32 ones behind by
    F32_MARGIN. oneDNN's reference code ("ref:") is
    left out: it takes seconds where the others take milliseconds. The weights the others
    packed are let go."""
    address = recipes[0].w.data_ptr()
    packed_before = list(state.packed.get(address, []))
    best, best_seconds = None, float("inf")  # seconds with the others' handicap
    for recipe in recipes:
        try:
            implementations = recipe.implementations(lib)
        except InferError:  # oneDNN has no such primitive for these types here
            continue
        for implementation in implementations:
            if implementation.startswith(_REFERENCE):
                continue
            try:
                kernel = recipe.kernel(lib, state, implementation)
            except InferError:  # listed, yet refuses to be made: the others remain
                continue
            addresses = handles(kernel)
            first = _seconds(kernel, addresses)  # includes the first touch of its memory
            if first > MEASURE_CUTOFF * best_seconds:
                continue
            seconds = _least_seconds(kernel, addresses)
            if recipe.kind.endswith(F32_KIND):
                seconds *= 1 + F32_MARGIN
            elif best is not None:
                seconds *= 1 + MEASURE_MARGIN
            if seconds < best_seconds:
                best, best_seconds = kernel, seconds
    if best is None:
        return recipes[0].kernel(lib, state, None)
    if address in state.packed:
        kept = [buffer for _, buffer in packed_before]
        if best.packed is not None:
            kept.append(best.packed[1])
        state.packed[address] = [
            pack for pack in state.packed[address] if any(pack[1] is k for k in kept)
        ]
    return best


def _chosen(
    lib: _Library, state: OnednnState, recipes: Sequence[_Recipe], choice: str | None
) -> _Kernel:
    """Return the kernel choice names ("<primitive> <implementation>"), else the first
    recipe's with oneDNN's first implementation."""
    if choice is not None:
        kind, _, implementation = choice.partition(" ")
        for recipe in recipes:
            if recipe.kind == kind:
                return recipe.kernel(lib, state, implementation)
    return recipes[0].kernel(lib, state, None)


_BUILDERS = {CONV2D: _conv2d_recipes, MATMUL: _matmul_recipes}
_CONFIGS: dict[str, dict[str, Any]] = {}


def write_choices(directory: Path, state: OnednnState) -> None:
    """Write state's choices into directory's CHOICES_FILE."""
    record = {"threads": state.threads, "kernels": dict(sorted(state.choices.items()))}
    (directory / CHOICES_FILE).write_text(json.dumps(record, indent=1) + "\n")


def read_choices(path: Path) -> dict[str, str]:
    """Return the choices in path (a CHOICES_FILE); ArtifactError when it is not one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable: {exc}") from None
    kernels = record.get("kernels") if isinstance(record, dict) else None
    if not isinstance(kernels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in kernels.items()
    ):
        raise ArtifactError(f"{path}: field kernels: expected an object of strings")
    return kernels


def choice_key(name: str, config_text: str, x_shape: Sequence[int], w_shape: Sequence[int]) -> str:
    """Return the key of a call's kernel in OnednnState.choices: what makes the kernel, without
    the addresses of its weights (calls alike in all but those run alike)."""
    return f"{name} {list(x_shape)} {list(w_shape)} {config_text}"


def _entry(name: str) -> Any:
    build, lib = _BUILDERS[name], _library()

    def call(*args: Any) -> None:
        # (x, w, [bias], [scale, zero point] | [dw weights, [dw bias]], config, out): the config
        # string is baked into the graph at compile time; int8 calls pass the scale and zero
        # point of their 8-bit x, a convolution with a depthwise post-op that one's weights.
        x, w, out, config_text = args[0], args[1], args[-1], args[-2]
        state = _state()
        state.python_calls += 1
        config = _CONFIGS.get(config_text)
        if config is None:
            config = _CONFIGS[config_text] = json.loads(config_text)
        tensors = args[2:-2]
        quantized = config.get("precision") == INT8
        if quantized:
            if len(tensors) < 2:
                raise InferError(f"{name}: an int8 call needs its source's scale and zero point")
            scale, zero, tensors = tensors[-2], tensors[-1], tensors[:-2]
        dw_tensors: tuple[Any, ...] = ()
        if "dw" in config:
            count = 2 if config["dw"]["bias"] else 1
            if len(tensors) < count:
                raise InferError(f"{name}: a depthwise post-op needs its weights in the call")
            dw_tensors, tensors = tensors[-count:], tensors[:-count]
        bias = tensors[0] if tensors else None
        # A primitive is made for both operands' shapes (an attention's keys grow while its
        # query stays one row); weights packed once are also told apart by their address, and
        # int8 ones by their source's scale (a weight of the model, as the scale is).
        packed_weights = w.data_ptr() if name == CONV2D or config.get("weights") else 0
        key: tuple[Any, ...] = (name, config_text, tuple(x.shape), tuple(w.shape), packed_weights)
        if quantized:
            key += (scale.data_ptr(), zero.data_ptr())
        key += tuple(t.data_ptr() for t in dw_tensors)  # packed into the kernel too
        kernel = state.kernels.get(key)
        if kernel is None:
            # Set while the primitive is made: oneDNN splits the work for the threads there
            # are then (brgconv's nthr) and opens that many on every call, whatever is set later.
            threads = 1 if config.get("single_thread") else state.threads
            lib.set_threads(threads)
            quant = _source_quant(x, scale, zero) if quantized else None
            recipes = build(lib, config, x, w, bias is not None, out, quant)
            choice = choice_key(name, config_text, x.shape, w.shape)
            measuring = state.measure and choice not in state.choices  # once per choice key
            # A bf16 call's f32 recipes: made to be measured, or where the measure chose one.
            if config.get("precision") == "bf16" and (
                measuring or F32_KIND in state.choices.get(choice, "")
            ):
                f32 = build(lib, {**config, "precision": "fp32"}, x, w, bias is not None, out, None)
                for recipe in f32:
                    recipe.kind += F32_KIND
                recipes += f32
            depthwise = None
            if dw_tensors:
                dw_bias = dw_tensors[1] if len(dw_tensors) > 1 else None
                depthwise = _depthwise(lib, config, dw_tensors[0], dw_bias, out)
                for recipe in recipes:
                    recipe.depthwise = depthwise
            try:
                if measuring:
                    kernel = _fastest(lib, state, recipes, lambda k: _handles(k, x, w, bias, out))
                    state.choices[choice] = kernel.implementation
                else:
                    kernel = _chosen(lib, state, recipes, state.choices.get(choice))
            finally:
                for recipe in recipes:
                    recipe.release(lib)
                if depthwise is not None:
                    lib.lib.dnnl_memory_desc_destroy(depthwise.user_w)
                    lib.lib.dnnl_memory_desc_destroy(depthwise.dst)
            kernel.threads = threads
            state.keep(key, kernel)
        lib.set_threads(kernel.threads)
        kernel(_handles(kernel, x, w, bias, out))
        if _FAST is not None and state.table is not None:
            # Addresses the kernel was made for: packed weights, an int8 source's scale and
            # zero point (the arguments before the config).
            required = (0b10 if packed_weights else 0) | (
                0b11 << (len(args) - 4) if quantized else 0
            )
            if dw_tensors:  # the depthwise weights (and bias) before the config
                required |= ((1 << len(dw_tensors)) - 1) << (len(args) - 2 - len(dw_tensors))
            _remember(_FAST, kernel, required, 2 if bias is not None else -1)

    return call


def _remember(fast: Any, kernel: _Kernel, required: int, bias: int) -> None:
    """Record kernel in the active table for the call the compiled dispatch handed here (a
    no-op for a call that did not come through it)."""
    memories = (ctypes.c_void_p * len(kernel.memories))(*(m.value for m in kernel.memories))
    convert: tuple[Any, ...] = (None, 0, None, None, None)
    if kernel.convert is not None:
        reorder, buffer = kernel.convert
        convert = (
            reorder.primitive, reorder.nargs, ctypes.addressof(reorder.args),
            (ctypes.c_void_p * 2)(*(m.value for m in reorder.memories)), _aligned_address(buffer),
        )  # fmt: skip
    status = fast.lib.infer_dispatch_remember(
        required, bias, kernel.threads, kernel.primitive, kernel.nargs,
        ctypes.addressof(kernel.args), len(kernel.memories), memories, kernel.packed_handle,
        *convert,
    )  # fmt: skip
    if status < 0:
        raise InferError(f"oneDNN dispatch: recording a kernel failed ({status})")


_REGISTERED = False
# The compiled dispatch (infer/runtime/dispatch.py), once register() has loaded it.
_FAST: Any = None


def register() -> None:
    """Register the functions compiled graphs call (once per process); loads oneDNN."""
    global _REGISTERED
    if _REGISTERED:
        return
    import tvm

    from infer.runtime import dispatch

    global _FAST
    lib = _library()
    _FAST = dispatch.load()
    if _FAST is not None:
        dnnl = lib.lib
        _FAST.init(
            [
                dnnl.dnnl_primitive_execute, dnnl.dnnl_stream_wait,
                dnnl.dnnl_memory_set_data_handle, dnnl.dnnl_stream_create,
                None if lib.gomp is None else lib.gomp.omp_set_num_threads,
            ],
            lib.engine,
        )  # fmt: skip
        if lib.gomp is not None:
            _FAST.init_parallel(lib.gomp)
    for name in _BUILDERS:
        if _FAST is None:
            tvm.register_global_func(name, _entry(name), override=True)
        else:  # the Python entry point behind the compiled one
            tvm.register_global_func(name + dispatch.FALLBACK_SUFFIX, _entry(name), override=True)
            _FAST.register(name)
    _REGISTERED = True
