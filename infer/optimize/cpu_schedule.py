"""A default CPU schedule: every loop nest TVM generates runs parallel and vectorised.

TVM's CPU pipeline legalizes and fuses but schedules nothing, so each operator is a naive
single-threaded loop nest. This dlight rule gives every PrimFunc a fixed, shape-aware schedule
(no search): producers are inlined into consumers, spatial loops are fused and run in parallel,
and the innermost spatial loop is vectorised. Reductions (conv, matmul, pooling, norms) keep
their reduction loops inside the parallel spatial ones; the innermost output loop moves below
them so that each step updates a whole vector of outputs, in several output rows at once
(register blocking: one loaded weight vector feeds several multiply-adds), and the reduction
is split when a thread's slice of the weights would not stay in L1.

With NHWC activations and HWIO weights (see pipeline.py) a convolution's vector runs over
output channels and its rows over output pixels: the direct-convolution micro-kernel of
hand-written libraries, derived here from the loop nest rather than written per operator.

RowReduction, tried before it, takes the kernels that reduce along rows and then write each
row from the results (softmax, layer and RMS norms): one parallel iteration per row, the
reductions a vector at a time along the row.
"""

from __future__ import annotations

import math
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.stmt import SBlockRealize
from tvm.target import Target

from infer.target import host_cpu_features, host_cpu_name

__all__ = ["SCHEDULE_REVISION", "ParallelVectorize", "RowReduction", "vector_bits"]

# Bumped whenever the rule's output changes, so that compile caches do not serve older code.
SCHEDULE_REVISION = 16

# Below this many iterations a parallel loop costs more in dispatch than it saves.
MIN_PARALLEL_EXTENT = 2
# Nor is a loop nest of fewer iterations in all (spatial x reduction) worth waking the pool's
# threads for: it takes a few µs on one core, a wake-up of sleeping workers tens (Silero VAD's
# ~40 small kernels ran 1.6x slower on 2 threads than on 1).
MIN_PARALLEL_WORK = 1 << 15
# Iterations of an elementwise loop nest's parallel loop, per core of the target: enough for the
# threads to share evenly; the loops inside stay loops.
PARALLEL_CHUNKS_PER_CORE = 4
# The narrowest vector an elementwise loop is split into.
MIN_LANES = 4
# Marks a loop for TVM's LoopPartition to split where a predicate inside turns constant: the
# vectors of a symbolic-width row, whole, then its partial last vector (as scalars); it leaves
# loops of constant extent whole.
PARTITION_HINT = "pragma_loop_partition_hint"
# Whole vectors a row of a static width lanes do not divide needs for RowReduction to take it
# (narrower rows stay with ParallelVectorize, as fast there). Softmax + where(isnan) over 21
# classes, 8736 rows, one thread: 692 µs there, 225 here.
MIN_ROW_VECTORS = 1
# Rows of outputs a reduction computes per vector step (register blocking): the largest of
# these that divides the loop; 8 accumulators + operands fit AVX2's 16 vector registers.
BLOCK_ROWS = (8, 7, 6, 5, 4, 3, 2)
# A thread's slice of the weights per output block should stay in L1 (32 KiB on Zen 3).
L1_WEIGHT_BYTES = 24 * 1024
# The schedule rule TOPI's pooling blocks carry ("meta_schedule.pool_max", "...pool_avg").
POOLING_RULE = "meta_schedule.pool_"


def vector_bits(target: Target) -> int:
    """Return the SIMD width in bits the target's CPU offers (512 for AVX-512, 256 for AVX2)."""
    features = str(target.attrs.get("mattr", "")) + " " + str(target.attrs.get("mcpu", ""))
    if str(target.attrs.get("mcpu", "")) == host_cpu_name():
        flags = host_cpu_features()
        if "avx512f" in flags:
            return 512
        if "avx2" in flags or "avx" in flags:
            return 256
    if "avx512" in features:
        return 512
    return 128


def _is_reduction(sch: Any, block: Any) -> bool:
    """A block with a reduction axis, or with an init: normalize_prim_func drops a reduction
    axis of extent 1 (a matmul over k=1) and leaves its init behind."""
    stmt = sch.get(block)
    return stmt.init is not None or any(
        iv.iter_type == tirx.IterVar.CommReduce for iv in stmt.iter_vars
    )


def _is_pooling(sch: Any, block: Any) -> bool:
    """A pooling window's reduction: TOPI tags a max pooling's block with a pooling schedule
    rule, and an average pooling's division after its sum."""

    def tagged(b: Any) -> bool:
        rule = sch.get(b).annotations.get("schedule_rule")
        return rule is not None and str(rule).startswith(POOLING_RULE)

    return tagged(block) or any(tagged(c) for c in sch.get_consumers(block))


def _inline(sch: Any, infos: list[Any]) -> list[Any]:
    """Inline producers into consumers and epilogues into producers, but not padding into reductions
    other than pooling.

    Padding inlined into a convolution is recomputed at every reduction step, with a branch in
    the innermost loop; materialised it costs one pass. A pooling window is a few steps, and the
    bounds test of its padding does not change along the channels a vector holds: inlined there,
    ResNet-50's 3x3 max pooling over (1, 112, 112, 64) took 71 µs instead of 399 (one thread). A
    plain copy (padding of 0) is inlined.
    """
    keep = [
        i
        for i in infos
        if "if_then_else" in str(sch.get(i.block_rv).body)
        and any(
            _is_reduction(sch, c) and not _is_pooling(sch, c) for c in sch.get_consumers(i.block_rv)
        )
    ]
    rest = [i for i in infos if i not in keep]
    return [*keep, *_try_inline(sch, rest)]


def _try_inline(sch: Any, blocks: list[Any]) -> list[Any]:
    """dlight's try_inline, but never an epilogue into a reduction: into a reduction of extent 1
    (an outer product written as a matmul over k=1) TVM 0.27's reverse_compute_inline puts the
    epilogue in both the init and the update, adding its other operand twice."""

    def after_reduction(block: Any) -> bool:
        return any(_is_reduction(sch, p) for p in sch.get_producers(block))

    def trial(inline: Any, allowed: Any) -> int | None:
        for index, info in enumerate(blocks):
            if not allowed(info.block_rv):
                continue
            try:
                inline(info.block_rv)
            except Exception:  # the schedule refuses: the block stays
                continue
            return index
        return None

    while True:
        index = trial(sch.compute_inline, lambda _b: True)
        if index is None:
            index = trial(sch.reverse_compute_inline, lambda b: not after_reduction(b))
        if index is None:
            return blocks
        blocks.pop(index)


def _index_vars(region: Any) -> list[list[Any]]:
    """Return the variables of each index of a buffer region, dim by dim."""
    return [tirx.analysis.undefined_vars(r.min) for r in region.region]


def _vars_of(region: Any) -> list[Any]:
    return [v for used in _index_vars(region) for v in used]


def _static(extent: Any) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm | int) else None


def _same_extent(a: Any, b: Any) -> bool:
    """Whether two loop extents are the same number, or the same symbolic expression."""
    import tvm_ffi

    static = _static(a)
    return static == _static(b) if static is not None else bool(tvm_ffi.structural_equal(a, b))


class ParallelVectorize(CPUScheduleRule):  # type: ignore[misc]
    """Parallel outer spatial loops, vectorised inner spatial loop, for every block of a PrimFunc."""

    def apply(self, func: Any, target: Target, _tunable: bool) -> Any:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        bits = vector_bits(target)
        grain = PARALLEL_CHUNKS_PER_CORE * max(int(target.attrs.get("num-cores", 1) or 1), 2)
        for vectorize in (True, False):
            try:
                return self._schedule(func, bits, vectorize, grain)
            except Exception:  # a primitive refused this loop nest: try the plainer schedule
                continue
        return None

    def _schedule(self, func: Any, bits: int, vectorize: bool, grain: int) -> Any:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        for info in _inline(sch, infos):
            kinds = info.dom_kind()
            if "O" in kinds or "S" not in kinds:
                continue  # opaque loops, or a reduction to a scalar: leave as is
            self._schedule_block(sch, info, bits, vectorize, grain)
        return sch

    def _schedule_block(self, sch: Any, info: Any, bits: int, vectorize: bool, grain: int) -> None:
        block = info.block_rv
        spatial_iters = [it for it in info.iters if it.kind == "S"]
        spatial = [it.loop_rv for it in spatial_iters]
        reduction = [it.loop_rv for it in info.iters if it.kind == "R"]
        extents = [_static(sch.get(loop).extent) for loop in (*spatial, *reduction)]
        small = None not in extents and math.prod(extents) < MIN_PARALLEL_WORK  # type: ignore[arg-type]
        reuse = _reuse_loop(sch, info) if reduction else None
        # which spatial loops index the reused operand (the weights): they stay outermost
        weight_deps = [
            reuse is not None and any(v.same_as(it.var) for v in reuse[2]) for it in spatial_iters
        ]
        if reduction:
            sch.reorder(*spatial, *reduction)
        lanes, converts = _lanes(sch, block, bits)
        if vectorize and not reduction and not converts:
            spatial = _fuse_for_lanes(sch, info, spatial, lanes)
        inner_extent = _static(sch.get(spatial[-1]).extent)
        if not reduction and not converts and inner_extent is not None:
            # narrower vectors where a register's lanes do not divide the loop (a bias add
            # over (1, 56, 56, 24): 58 µs as a loop of 24 per pixel, 5.6 as three vectors of 8)
            while lanes > MIN_LANES and inner_extent % lanes:
                lanes //= 2
        vector_loop = rows = None
        first_reduction = reduction[0] if reduction else None
        if (
            vectorize
            and inner_extent is not None
            and inner_extent >= lanes
            and inner_extent % lanes == 0
        ):
            outer, vector_loop = sch.split(spatial[-1], factors=[None, lanes])
            spatial = [*spatial[:-1], outer]
            tile = None
            if not reduction and len(spatial) == len(spatial_iters):
                tile = _transpose_tile(sch, info, spatial_iters, lanes)
            if tile is not None:
                # A vector of a transpose gathers along a read's strided dim: a tile of lanes
                # vectors, one per step of the read's contiguous dim, reads whole cache lines
                # (BERT's keys as (heads, 64, seq) from (seq, 768): 95 µs, 26 tiled).
                spatial[tile], tile_loop = sch.split(spatial[tile], factors=[None, lanes])
                sch.reorder(spatial[-1], tile_loop, vector_loop)
                sch.unroll(tile_loop)
            if reduction:
                # Each reduction step updates a vector of outputs in several rows at once, so
                # that one vector load of the weights feeds several multiply-adds.
                inner_order: list[Any] = [vector_loop]
                if reuse is not None:  # never the innermost spatial loop (see _reuse_loop)
                    loop, factor, _ = reuse
                    index = spatial.index(loop)
                    spatial[index], rows = sch.split(loop, factors=[None, factor])
                    inner_order = [rows, vector_loop]
                blocked = self._cache_block(sch, block, spatial, weight_deps, reduction, lanes)
                if blocked is not None:
                    spatial, middle, first_reduction = blocked
                    sch.reorder(*spatial, *middle, *inner_order)
                else:
                    sch.reorder(*spatial, *reduction, *inner_order)
        if (
            vector_loop is None
            and (inner_extent is None or converts)
            and not reduction
            and len(spatial) > 1
        ):
            # A symbolic innermost extent stays a loop of its own: fused with the others, every
            # element would recover its indices by divisions by symbolic extents (~40 cycles
            # each; an attention mask add over [batch, heads, seq, seq] ran at 3.5 ns/element).
            # So does a conversion's that 32 lanes do not divide, for LLVM to vectorize: a
            # quantize over 16 channels took 2.9 ms fused, 0.35 with 16 lanes, and TVM's own
            # 16 lanes gather and store byte by byte elsewhere (1.3 ms against 0.13).
            spatial = spatial[:-1]
        if not reduction:
            spatial = _parallel_prefix(sch, spatial, grain)
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        extent = _static(sch.get(fused).extent)
        if not small and (extent is None or extent >= MIN_PARALLEL_EXTENT):
            sch.parallel(fused)
        if vector_loop is not None:
            # before decompose_reduction: vectorize needs the block to still carry its init
            sch.vectorize(vector_loop)
        if rows is not None:
            sch.unroll(rows)
        if first_reduction is not None:
            init = sch.decompose_reduction(block, first_reduction)
            if vector_loop is not None:
                sch.vectorize(sch.get_loops(init)[-1])

    @staticmethod
    def _cache_block(
        sch: Any,
        block: Any,
        spatial: list[Any],
        weight_deps: list[bool],
        reduction: list[Any],
        lanes: int,
    ) -> tuple[list[Any], list[Any], Any] | None:
        """Split the innermost reduction so a thread's slice of the weights stays in L1.

        Returns (parallel loops, the loops between them and the rows/vector loops, the new
        outermost reduction loop), or None when the weight slice already fits.
        """
        extents = [_static(sch.get(r).extent) for r in reduction]
        if any(e is None for e in extents):
            return None
        item_bytes = max(sch.get(block).writes[0].source.dtype.bits // 8, 1)
        total = math.prod(e for e in extents if e is not None)
        if total * lanes * item_bytes <= L1_WEIGHT_BYTES:
            return None
        last = extents[-1]
        assert last is not None
        rest = total // last
        chunk = next(
            (
                d
                for d in range(last - 1, lanes - 1, -1)
                if last % d == 0 and rest * d * lanes * item_bytes <= L1_WEIGHT_BYTES
            ),
            None,
        )
        outer = [lp for lp, dep in zip(spatial, weight_deps, strict=True) if dep]
        inner = [lp for lp, dep in zip(spatial, weight_deps, strict=True) if not dep]
        if chunk is None or not outer or not inner:
            return None
        r_outer, r_inner = sch.split(reduction[-1], factors=[None, chunk])
        return outer, [r_outer, *inner, *reduction[:-1], r_inner], r_outer


class RowReduction(CPUScheduleRule):  # type: ignore[misc]
    """Softmax-shaped kernels, row by row: reductions along the last axis of a (rows..., n)
    output (a row's max and sum of exps), then the output's row from them.

    ParallelVectorize puts each reduction's vector across rows, which reads with a stride of a
    row (gathers), and inlines the exp into both the sum and the output. Here each row is one
    parallel iteration: a reduction keeps lanes partial results read along the row (rfactor),
    a value more than one block reads (the exps) is kept for the row, in L1, and the output is
    written a vector at a time. One thread, Zen 5, each kernel alone: softmax over
    (1, 12, 128, 128) with PyTorch's where(isnan(.)) after it 194 µs (122 with nan.py's
    isnan), 68 here; LayerNormalization over (1, 128, 768) 47 µs, 21 here; in BERT-base at
    sequence 128 the twelve softmaxes took 2.23 ms and the 25 layer norms 0.76, now 0.75 and
    0.41. A row whose last vector is partial (a width lanes do not divide, or a symbolic one: a
    text pipeline's sequence) keeps its split's predicate in the partial sums
    (_mask_partial_vector) and runs its whole vectors apart from the partial last one
    (_split_off_partial_vector): under the predicate TVM runs every vector as scalars. A static
    width narrower than MIN_ROW_VECTORS vectors stays with ParallelVectorize.
    Softmax + where(isnan) over (1, 12, n, n): n = 100 took 389 µs under ParallelVectorize, 61
    here; a ViT's 197 1459 and 167; a symbolic n, at 128, 637 and 95 (68 with n fixed: there
    the exps are kept; of a symbolic width compute_at bounds a kept row by min/max expressions
    that peel its first vector as scalars, so they are computed twice). all-MiniLM-L6-v2
    compiled with a symbolic sequence went from 16.5 to 13.8 ms at sequence 128, one thread
    (13.3 with the sequence fixed)."""

    def apply(self, func: Any, target: Target, _tunable: bool) -> Any:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._schedule(func, vector_bits(target))
        except Exception:  # a primitive refused this loop nest: not a row reduction
            return None

    @staticmethod
    def _schedule(func: Any, bits: int) -> Any:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2:
            return None
        *inner, last = infos
        if last.dom_kind().strip("S") or not any(i.is_reduction() for i in inner):
            return None
        width = last.iters[-1].dom
        extent = _static(width)
        lanes = bits // 32
        rows = len(last.iters) - 1
        # a symbolic width, or one lanes do not divide: the last vector of a row is partial
        masked = extent is None or extent % lanes != 0
        if rows < 1 or (masked and extent is not None and extent < MIN_ROW_VECTORS * lanes):
            return None
        spatial = [i for i in infos if i.dom_kind() == "S" * (rows + 1)]
        reductions = [i for i in inner if i.is_reduction()]
        for info in reductions:  # its rows, then one reduction along the row, read per row
            if (
                info.dom_kind() != "S" * rows + "R"
                or not _same_extent(info.iters[-1].dom, width)
                or not _along_rows(sch, info, spatial)
            ):
                return None
        kept = []
        for info in inner:
            kinds = info.dom_kind()
            if info.is_reduction():
                continue
            if kinds == "S" * rows:  # a value per row (layer norm's mean)
                _try_inline(sch, [info])
            elif kinds != "S" * (rows + 1):
                return None
            elif len(sch.get_consumers(info.block_rv)) > 1 and extent is not None:
                kept.append(info.block_rv)  # the exps: computed once, read twice
            else:  # (of a symbolic width: computed twice, see above)
                sch.compute_inline(info.block_rv)
        partial = []
        for info in reductions:
            _, vector = sch.split(sch.get_loops(info.block_rv)[-1], factors=[None, lanes])
            partial.append(sch.rfactor(vector, factor_axis=rows))
        loops = sch.get_loops(last.block_rv)
        row = sch.fuse(*loops[:-1]) if rows > 1 else loops[0]
        total = _static(sch.get(row).extent)
        if total is None or extent is None or total * extent >= MIN_PARALLEL_WORK:
            sch.parallel(row)
        # every block computed inside its row, consumers first
        root = sch.get_child_blocks(sch.get_sblock("root"))
        for block in reversed(root[:-1]):
            sch.compute_at(block, row)
        for block in [*kept, last.block_rv]:
            steps, vector = sch.split(sch.get_loops(block)[-1], factors=[None, lanes])
            sch.vectorize(vector)
            if masked:
                _split_off_partial_vector(sch, steps, extent, lanes)
        for block in partial:
            lanes_loop, steps = sch.get_loops(block)[-2:]
            sch.reorder(steps, lanes_loop)
            sch.vectorize(lanes_loop)
            sch.decompose_reduction(block, steps)
            if masked:
                _mask_partial_vector(sch, lanes_loop, lanes, width)
                _split_off_partial_vector(sch, steps, extent, lanes)
        return sch


def _split_off_partial_vector(sch: Any, steps: Any, extent: int | None, lanes: int) -> None:
    """Have the vector steps of a row run as whole vectors, then the partial last one (as
    scalars), rather than every vector under the predicate (which TVM runs as scalars): a
    symbolic row by TVM's LoopPartition (PARTITION_HINT), a static one here."""
    if extent is None:
        sch.annotate(steps, PARTITION_HINT, 1)
    elif extent // lanes:
        sch.loop_partition(steps, [extent // lanes, None])


def _mask_partial_vector(sch: Any, lanes_loop: Any, lanes: int, width: Any) -> None:
    """Give the rfactor'd update block under lanes_loop back the predicate of its split (step x
    lanes + lane < width): rfactor keeps it, compute_at drops it, and without it the row's last
    vector adds in elements past the row's end (the next row's, or past the buffer)."""
    loop = sch.get(lanes_loop)
    realize = loop.body
    if not isinstance(realize, SBlockRealize):
        raise ValueError(f"{loop.loop_var}: holds no single block")
    block = realize.block
    steps = [i for i, v in enumerate(block.iter_vars) if v.iter_type == tirx.IterVar.CommReduce]
    lane = block.iter_vars[0]  # rfactor puts the lane (its new data-parallel iter) first
    if (
        len(steps) != 1
        or lane.iter_type != tirx.IterVar.DataPar
        or _static(lane.dom.extent) != lanes
    ):
        raise ValueError(f"{block.name_hint}: not an rfactor'd update")
    values = realize.iter_values
    inside = values[steps[0]] * lanes + values[0] < width
    given = realize.predicate
    if not (isinstance(given, tirx.IntImm) and int(given) == 1):
        inside = tirx.And(given, inside)
    masked = SBlockRealize(values, inside, block)
    replacement = tirx.For(
        loop.loop_var, loop.min, loop.extent, loop.kind, masked, loop.thread_binding,
        loop.annotations,
    )  # fmt: skip
    sch.state.replace(sch.get_sref(lanes_loop), replacement, {block: block})


def _transpose_tile(sch: Any, info: Any, spatial_iters: list[Any], lanes: int) -> int | None:
    """Return the index of the spatial loop to tile a transpose by: that of the innermost var
    in the last index of a read that also uses the vectorized (innermost) var elsewhere, when
    lanes divide it; None when every read runs along the vector (or broadcasts)."""
    inner = spatial_iters[-1].var
    for read in sch.get(info.block_rv).reads:
        indices = _index_vars(read)
        if not indices or any(v.same_as(inner) for v in indices[-1]):
            continue
        if not any(v.same_as(inner) for used in indices[:-1] for v in used):
            continue  # a broadcast
        for index in range(len(spatial_iters) - 2, -1, -1):
            it = spatial_iters[index]
            if any(v.same_as(it.var) for v in indices[-1]):
                extent = _static(it.dom)
                return index if extent is not None and extent % lanes == 0 else None
    return None


def _along_rows(sch: Any, reduction: Any, readers: list[Any]) -> bool:
    """Whether a reduction runs along the last dim of what it reads (its loop var indexes
    nothing else), and the spatial blocks of the row (readers) read its result once per row,
    not by column: else computing it inside each row would read across rows, or recompute it
    for every row."""
    over = reduction.iters[-1].var
    stmt = sch.get(reduction.block_rv)
    written = [w.source for w in stmt.writes]
    along = False
    for read in stmt.reads:
        if any(read.source.same_as(w) for w in written):
            continue
        uses = [any(v.same_as(over) for v in used) for used in _index_vars(read)]
        if any(uses[:-1]):
            return False
        along = along or uses[-1]
    for reader in readers:
        column = reader.iters[-1].var
        for read in sch.get(reader.block_rv).reads:
            if any(read.source.same_as(w) for w in written) and any(
                v.same_as(column) for v in _vars_of(read)
            ):
                return False
    return along


def _fuse_for_lanes(sch: Any, info: Any, spatial: list[Any], lanes: int) -> list[Any]:
    """Return spatial with its innermost loops fused into one whose extent lanes divide, when
    the innermost alone is not (NHWC with 24 or 40 channels) and every input is read as it is
    written along them (a broadcast or transposed read would become a gather): an add of two
    (batch, 56, 56, 24) tensors took 348 µs fused whole (a scalar per element), 17 as vectors
    over each row of 56 x 24 in one fused loop, 9 with the row loops kept (_parallel_prefix)."""
    iter_vars = [it.var for it in info.iters if it.kind == "S"]
    reads = [[r.min for r in region.region] for region in sch.get(info.block_rv).reads]
    product = 1
    for count in range(1, len(spatial) + 1):
        extent = _static(sch.get(spatial[-count]).extent)
        if extent is None:
            break
        product *= extent
        if product % lanes == 0:
            fused_vars = iter_vars[-count:]
            alike = all(
                len(index) >= count
                and all(i.same_as(v) for i, v in zip(index[-count:], fused_vars, strict=True))
                for index in reads
            )
            if count == 1 or not alike:
                break
            return [*spatial[:-count], sch.fuse(*spatial[-count:])]
    return spatial


def _parallel_prefix(sch: Any, spatial: list[Any], grain: int) -> list[Any]:
    """Return the outer loops of spatial to fuse into the parallel one: the fewest whose
    static extents reach grain iterations, the rest staying plain inner loops.

    A loop nest fused whole recovers every index by divisions, per element or per vector: a
    transpose TVM does not vectorize (an NCHW image turned NHWC, a minor dim of 3) took 410 µs
    for a (batch, 3, 224, 224) image against ONNX Runtime's 76, now 44. Inner loops left as
    loops keep their strides plain for LLVM.
    """
    product = 1
    for count, loop in enumerate(spatial, start=1):
        product *= _static(sch.get(loop).extent) or 1
        if product >= grain:
            return spatial[:count]
    return spatial


def _lanes(sch: Any, block: Any, bits: int) -> tuple[int, bool]:
    """Return the vector lanes of a block, and whether it converts (reads a float type wider
    than it writes: a quantize, f32 in and uint8 out). Lanes are a register of the type it
    writes, or two registers of the wider type for a conversion. Timed on the quantize kernels
    of int8 MobileNetV2 and PP-OCR det, AVX-512: 32 lanes 0.13, 0.44 and 1.4 ms; 16 lanes (one
    f32 register) 1.15, 0.67 and 3.3 ms (TVM's vectors gather and store byte by byte there); 64
    (one uint8 register) 0.13 (96 channels: LLVM vectorized the loop itself), 4.1 and 8.9 ms.
    The int64 indices of a gather do not count."""
    stmt = sch.get(block)
    write_bits = max(int(w.source.dtype.bits) for w in stmt.writes) if stmt.writes else 32
    read_bits = [
        int(r.source.dtype.bits)
        for r in stmt.reads
        if str(r.source.dtype).startswith(("float", "bfloat"))
    ]
    widest = max([*read_bits, write_bits])
    if widest > write_bits:
        return max(1, 2 * bits // widest), True
    return max(1, bits // max(write_bits, 8)), False


def _reuse_loop(sch: Any, info: Any) -> tuple[Any, int, list[Any]] | None:
    """Return (a spatial loop some input read in the inner loop ignores, its blocking factor,
    the variables that input is indexed by).

    Blocking that loop lets a loaded vector of that input serve several rows of outputs: the
    output channels of a convolution, the rows of a matrix product.
    """
    spatial = [it for it in info.iters if it.kind == "S"]
    if len(spatial) < 2:
        return None
    inner_var = spatial[-1].var
    reads = [_vars_of(region) for region in sch.get(info.block_rv).reads]
    vector_reads = [used for used in reads if any(v.same_as(inner_var) for v in used)]
    for it in reversed(spatial[:-1]):
        extent = _static(it.dom)
        factor = next((r for r in BLOCK_ROWS if extent is not None and extent % r == 0), None)
        if factor is None:
            continue
        for used in vector_reads:
            if not any(v.same_as(it.var) for v in used):
                return it.loop_rv, factor, used
    return None
