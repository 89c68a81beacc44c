"""``numba_cpu``: direct convolution in parallel numba kernels on explicit SIMD register blocks.

No lowering to a matrix product and no transform: every output is the sum of its taps, computed
by two kernels built on :mod:`fastconv.backends.simd` (an LLVM vector type for numba, so that a
block of accumulators stays in registers across the whole reduction, which plain numba loops
cannot do). Complex dtypes are declined (``im2col`` and ``fft`` compute them).

**The register-block kernel** (dense and grouped layers). The output of one group is a matrix
product, ``out[k, pixel] = sum_(c, u, v) w[k, c, u, v] · x[c, pixel shifted by tap (u, v)]``,
computed the way a GEMM microkernel does, with output *pixels in vector lanes* so that results
go straight into the NCHW output:

- **The input is packed once** into zero-padded planes in which every tap reads consecutive
  output pixels from consecutive memory, for any stride and dilation. *Phase planes* split the
  padded image into the ``s_h × s_w`` sub-images of every ``s``-th row and column (only phases
  some tap reads): tap ``(u, v)`` of output ``(i, j)`` reads phase ``(u·d_h mod s_h, v·d_w mod s_w)``
  at ``(i + u·d_h div s_h, j + v·d_w div s_w)``. Their rows are ``(kw - 1)·d_w div s_w`` pixels wider
  than the output's, and those pixels are computed for nothing (2 of 58 on 56² maps, but 24 of 89
  for a 3×3 dilation-12 layer on 65² maps), so the plan may instead pack *one copy per kernel
  column* (rows as wide as the output's, ``kw`` copies to pack): :func:`plan` takes whichever
  costs less. The zeros of the padding contribute ``0 · w`` as torch's do (NaN for ``w = inf``).
- **Pixels are flattened** over the planes' row pitch: a run of pixels ``q = i·pitch + j`` crosses
  rows freely and each tap is one constant offset in it.
- **A register block** of ``rows`` output channels × ``cols`` vectors of pixels stays in
  registers through the reduction (:func:`fastconv.backends.simd.block_fma_loop`): each step broadcasts
  ``rows`` weights, loads ``cols`` input vectors and issues ``rows · cols`` FMAs. The block is
  sized from the CPU's vector registers (4×5 with AVX-512's 32, 3×3 with AVX2's 16): no spills.
- **The reduction runs in channel slices** whose input window fits L1, every channel block of
  the task passing over a slice before the next (partial sums kept per block in between).
- **Weights are read where they are**: filter ``k`` is the run ``(c, u, v)`` of the (K, C/g, kh,
  kw) weight and step ``s`` of the reduction reads element ``s`` of each of the block's filters,
  so nothing is packed or cached (checking a cached copy of a 9 MB weight cost 0.5 ms a call).
- **Output**: each vector gets the bias and is stored with masked stores, split where it crosses a
  row end (the pieces are found once per tile), never outside the output.
- The packed input lives in a per-thread workspace reused across calls (faulting in fresh pages
  cost a third of a 3 ms layer).

**The plane kernel** (one input channel per group: depthwise layers with up to three filters
per channel, single-channel images; kernels up to 11×11, and up to 15×15 where the registers
hold a kernel column and a block of accumulators; column stride 1 or 2). Vectors run over
output pixels of a row and weights are broadcast (:func:`fastconv.backends.simd.block_stencil`, every tap
unrolled for the spec's geometry): a block of output rows shares each input vector it loads, and
one kernel column of weights at a time stays in registers. Small planes are read in place, with
masked loads at the borders reading the padding as zeros (packing 56- or 28-pixel rows cost more
than the arithmetic); rows of 2 KiB or more are read from a per-task copy of a column strip
whose pitch is an odd number of cache lines, since rows 8 KiB apart share L1 sets.

**The weight gradient** (:func:`run_weight_grad`, the backward-filter pass) is the same matrix
product with the pixels as its inner dimension, ``dw[k, (c, u, v)] = sum_pixel g[k, pixel] ·
x[c, pixel shifted by tap (u, v)]``, on the same packed input, in one of two forms, whichever
:func:`weight_grad_form` estimates cheaper:

- **pixels in the lanes** (planes of many pixels): a block of ``rows`` output channels ×
  ``cols`` (channel, tap) columns loads ``rows`` gradient vectors and ``cols`` input vectors a
  step and multiplies each pair lane by lane (:func:`fastconv.backends.simd.block_dot_loop`); the
  lanes hold partial sums over pixels, added up once at the end. The gradient is read where it is
  when the runs are its rows (column copies), else packed into runs of the planes' pitch with
  zeros where they cross a row end. Depthwise layers are the one-row case (a 1×9 block per
  channel for 3×3 kernels).
- **output channels in the lanes** (planes of few pixels, where the first form's reductions are
  a dozen vectors long): the forward's broadcast step, input values against vectors of output
  channels, a pixel a step, the gradient packed channels-last per block of output channels.

Three block shapes (4, 2 or 1 rows) serve every geometry, so few kernels are compiled.

**Threads**: :data:`fastconv.config.threads`, through :class:`fastconv.thread_pools.ParallelKernel`
(safe from several threads and in forked children); a problem of less than :data:`SERIAL_MACS`
multiply-adds runs on the calling thread, since waking the other threads costs more than it
saves. ``prange`` over tasks that write disjoint output blocks (image, group, pixel tile,
channel-block chunk; or image, channel, band of rows), split finely enough for every thread to
get several. Every index is derived from the spec: the packed input has the slack the last
tile's taps read past the last plane (lanes that are discarded), loads past a plane's edge are
masked, stores are masked to the output.

Examples
--------
>>> import numpy as np
>>> from fastconv.geometry import make_spec
>>> x = np.ones((1, 2, 5, 5), np.float32); w = np.ones((3, 2, 3, 3), np.float32)
>>> run(x, w, None, make_spec(x.shape, w.shape, padding=1, dtype=np.float32))[0, 0, :2, :3]
array([[ 8., 12., 12.],
       [12., 18., 18.]], dtype=float32)
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.backends import FAST_MATH, simd
from fastconv.backends.work import dtype_work, io_bytes
from fastconv.geometry import ConvSpec, check_fits
from fastconv.thread_pools import ParallelKernel

name = "numba_cpu"
thread_pool = "openmp"  # see fastconv.backends: what auto charges for switching pools

__all__ = ["name", "thread_pool", "available", "supports", "run", "run_weight_grad", "plan", "weight_grad_plan",
           "uses_plane_kernel", "cost_terms", "weight_grad_cost_terms", "COST_CONSTANTS", "COST_RESOURCES", "SERIAL_MACS"]

#: Below this many multiply-adds a call runs on one thread: waking the others (microseconds)
#: would cost more than the work.
SERIAL_MACS = 1 << 16


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    if spec.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return f"numba_cpu computes in float32 or float64, not {spec.dtype} (im2col and fft take complex)"
    return None


# ---------------------------------------------------------------------------------------------
# the plan: every size the kernels use, derived from the spec alone


@dataclass(frozen=True)
class Plan:
    """How one spec is laid out for the register-block kernel (all sizes in elements)."""

    rows: int               # output channels per register block (broadcast weights)
    cols: int               # pixel vectors per register block
    lanes: int              # pixels per vector
    row_phases: tuple       # input row phases (u·d_h mod s_h) some tap reads
    col_phases: tuple       # input column phases
    plane_height: int       # rows of a phase plane
    plane_width: int        # W_ph: the row pitch of phase planes and of the flattened pixel runs
    plane_size: int         # elements per phase plane
    tap_offsets: tuple      # per tap (u, v): phase plane index · plane_size + u'·W_ph + v'
    pixels: int             # Q: flattened pixels from the first output pixel to the last
    tiles: int              # pixel tiles (rows · cols · lanes outputs each) per plane
    blocks: int             # channel blocks per group (out_channels_per_group padded up to rows)
    channel_slice: int      # input channels per pass of the reduction (the rest is L1-sized)
    buffer_size: int        # elements of the packed input, with the slack the last tile reads


def _block_shape(out_per_group: int, pixel_vectors: int) -> tuple[int, int]:
    """(rows, cols) of the register block for ``out_per_group`` channels and this many pixel vectors.

    One step of the block keeps ``rows · cols`` accumulators, ``rows`` broadcast weights and
    ``cols`` input vectors live, and all of them must fit the CPU's vector registers (one spare),
    or LLVM spills accumulators on every step. A step issues ``rows · cols`` FMAs for ``rows +
    cols`` loads, and loads do cost: on a Zen 4 core a 3×7 block ran a 512-channel layer 1.6×
    faster than 1×13, a 4×5 block a 64-channel one 10% faster than 2×7. So the block with the
    most useful FMAs per load wins, counting as waste the zero filters that pad a group's
    channels up to a multiple of ``rows`` and the vectors the last tile computes past the end.
    """
    registers = simd.VECTOR_REGISTERS - 1
    best = None
    for rows in range(1, 9):
        widest = min((registers - rows) // (rows + 1), pixel_vectors)
        for cols in range(1, widest + 1):
            used = (out_per_group / (_ceil_div(out_per_group, rows) * rows)
                    * pixel_vectors / (_ceil_div(pixel_vectors, cols) * cols))
            score = used * rows * cols / (rows + cols)
            if best is None or score > best[0] + 1e-9:
                best = (score, rows, cols)
    return best[1], best[2]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: Bytes of input a tile may read per pass of the reduction: about half of a 32 KiB L1 data cache.
L1_WINDOW_BYTES = 16 << 10

#: Rough single-thread rates for choosing a layout: useful FLOP/s of the register block, and
#: bytes/s of packed input written (the packing is a strided copy).
_FLOP_RATE, _PACK_RATE = 100e9, 10e9


def _layout(spec: ConvSpec, column_copies: bool) -> Plan:
    """The plan with phase planes (``column_copies=False``) or with one copy per kernel column.

    Phase planes hold every ``s_w``-th column once; tap ``v`` reads them at column offset
    ``v·d_w div s_w``, so their rows are ``(kw - 1)·d_w div s_w`` pixels wider than the output's and
    those pixels are computed for nothing (27% of a 3×3 dilation-12 layer on 65² maps). Column
    copies hold, for each distinct ``v·d_w``, the columns ``J·s_w + v·d_w``: rows exactly as wide as
    the output's, at the price of packing ``kw`` copies instead of ``s_w`` phases.
    """
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    kh, kw = spec.kernel_height, spec.kernel_width
    out_h, out_w = spec.out_height, spec.out_width
    lanes = simd.lanes(spec.dtype)
    row_phases = tuple(sorted({u * dh % sh for u in range(kh)}))
    if column_copies:
        col_phases = tuple(sorted({v * dw for v in range(kw)}))
        plane_width = out_w

        def column(v):
            return col_phases.index(v * dw), 0
    else:
        col_phases = tuple(sorted({v * dw % sw for v in range(kw)}))
        plane_width = out_w + (kw - 1) * dw // sw

        def column(v):
            return col_phases.index(v * dw % sw), v * dw // sw
    plane_height = out_h + (kh - 1) * dh // sh
    plane_size = plane_height * plane_width
    tap_offsets = tuple(
        (row_phases.index(u * dh % sh) * len(col_phases) + column(v)[0]) * plane_size
        + (u * dh // sh) * plane_width + column(v)[1]
        for u in range(kh) for v in range(kw))
    pixels = (out_h - 1) * plane_width + out_w
    vectors = _ceil_div(pixels, lanes)
    rows, cols = _block_shape(spec.out_channels_per_group, vectors)
    tiles = _ceil_div(vectors, cols)
    tile = cols * lanes
    blocks = _ceil_div(spec.out_channels_per_group, rows)
    # the input lines one channel of a tile reads: per phase plane and row offset, the tile's
    # pixels and the furthest column offset
    reach = {}
    for offset in tap_offsets:
        start = offset - offset % plane_width
        reach[start] = max(reach.get(start, 0), offset % plane_width)
    window = sum(tile + extra for extra in reach.values()) * spec.dtype.itemsize
    channel_slice = max(1, min(spec.in_channels_per_group, L1_WINDOW_BYTES // window))
    planes = spec.batch * spec.in_channels * len(row_phases) * len(col_phases)
    last_read = (planes - len(row_phases) * len(col_phases)) * plane_size + tiles * tile - 1 + max(tap_offsets)
    buffer_size = max(planes * plane_size, last_read + 1)
    return Plan(rows, cols, lanes, row_phases, col_phases, plane_height, plane_width, plane_size, tap_offsets,
                pixels, tiles, blocks, channel_slice, buffer_size)


def _seconds(spec: ConvSpec, layout: Plan) -> float:
    """Estimated single-thread time of a layout: the FMAs it issues plus the input it packs."""
    computed = (2 * spec.batch * spec.groups * layout.blocks * layout.rows * layout.tiles * layout.cols
                * layout.lanes * spec.in_channels_per_group * spec.kernel_height * spec.kernel_width)
    return computed / _FLOP_RATE + layout.buffer_size * spec.dtype.itemsize / _PACK_RATE


@functools.lru_cache(maxsize=256)
def plan(spec: ConvSpec) -> Plan:
    """The :class:`Plan` for ``spec``: phase planes or column copies, whichever costs less
    (cached: a spec is hashable and immutable)."""
    return min((_layout(spec, copies) for copies in (False, True)), key=lambda layout: _seconds(spec, layout))


# ---------------------------------------------------------------------------------------------
# input and weight packing


@njit(inline="always")
def _pack_rows(image, packed, start, rows, pitch, first_row, a, b, stride_h, stride_w, pad_top, pad_left):
    """``rows`` rows of one zero-padded phase plane of ``image`` (H, W) into ``packed[start:]``.

    Row ``I`` (from ``first_row``), column ``J`` of phase ``(a, b)`` is padded-image pixel
    ``(I·s_h + a, J·s_w + b)``; rows are ``pitch`` elements apart.
    """
    height, width = image.shape
    flat = image.reshape(-1)
    lanes = simd.lanes(packed.dtype)
    zero = simd.zero(packed)
    # columns J whose source column J·s_w + b - pad_left is inside [0, width)
    first = min(pitch, max(0, (pad_left - b + stride_w - 1) // stride_w))
    stop = min(pitch, max(first, (width + pad_left - b + stride_w - 1) // stride_w))
    source_start = first * stride_w + b - pad_left
    for row_index in range(rows):
        at = start + row_index * pitch
        source_row = (first_row + row_index) * stride_h + a - pad_top
        if source_row < 0 or source_row >= height:
            _fill_zero(packed, at, pitch, zero, lanes)
            continue
        _fill_zero(packed, at, first, zero, lanes)
        _fill_zero(packed, at + stop, pitch - stop, zero, lanes)
        source = source_row * width + source_start
        count = stop - first
        if stride_w == 1:
            j = 0
            while j + lanes <= count:
                simd.store(packed, at + first + j, simd.load(flat, source + j))
                j += lanes
            if j < count:
                simd.store_lanes(packed, at + first + j, simd.load_lanes(flat, source + j, 0, count - j), 0, count - j)
        else:
            if stride_w == 2:  # two vectors of the row, deinterleaved: their even elements
                for j in range(0, count, lanes):
                    wanted = min(lanes, count - j)
                    needed = 2 * wanted - 1  # source elements from the first to the last wanted
                    low = simd.load_lanes(flat, source + 2 * j, 0, min(lanes, needed))
                    high = simd.load_lanes(flat, source + 2 * j + lanes, 0, needed - lanes)
                    simd.store_lanes(packed, at + first + j, simd.even_odd(low, high)[0], 0, wanted)
            else:
                for j in range(count):
                    packed[at + first + j] = flat[source + j * stride_w]


@njit(inline="always")
def _fill_zero(packed, at, count, zero, lanes):
    j = 0
    while j + lanes <= count:
        simd.store(packed, at + j, zero)
        j += lanes
    if j < count:
        simd.store_lanes(packed, at + j, zero, 0, count - j)


@functools.lru_cache(maxsize=None)
def _input_packer(simd_version: int):
    """The input-packing kernel, a closure over ``simd_version`` (:data:`fastconv.backends.simd.SOURCE_VERSION`)."""
    version = simd_version

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def pack(x, packed, row_phases, col_phases, plane_height, plane_width, stride_h, stride_w, pad_top, pad_left):
        """Zero-padded phase planes of ``x``: packed[n, c, a, b, I, J] = xpad[I·s_h + a_, J·s_w + b_]."""
        version  # noqa: B018 (keeps the simd version in the closure, so in numba's cache key)
        batch, channels = x.shape[:2]
        phase_count = row_phases.shape[0] * col_phases.shape[0]
        plane_size = plane_height * plane_width
        for plane in prange(batch * channels * phase_count):
            image = plane // (channels * phase_count)
            channel = (plane // phase_count) % channels
            phase = plane % phase_count
            _pack_rows(x[image, channel], packed, plane * plane_size, plane_height, plane_width, 0,
                       row_phases[phase // col_phases.shape[0]], col_phases[phase % col_phases.shape[0]],
                       stride_h, stride_w, pad_top, pad_left)
        used = batch * channels * phase_count * plane_size
        packed[used:] = 0

    return ParallelKernel(pack)


_workspaces = threading.local()


def _workspace(size: int, dtype: np.dtype, slot: str = "array") -> np.ndarray:
    """A scratch array of ``size`` elements, kept for the next call of this thread.

    The packed input is about as large as the input, and fresh pages cost more to fault in than
    the packing itself (1 ms of a 3 ms layer when measured), so each thread keeps its largest
    workspace up to ``config.workspace_bytes``.
    """
    kept = getattr(_workspaces, slot, None)
    if kept is not None and kept.dtype == dtype and kept.size >= size:
        return kept[:size]
    array = np.empty(size, dtype=dtype)
    if array.nbytes <= config.workspace_bytes:
        setattr(_workspaces, slot, array)
    return array


# ---------------------------------------------------------------------------------------------
# the register-block kernel


@functools.lru_cache(maxsize=None)
def _block_kernel(rows: int, cols: int):
    """The kernel for a ``rows × cols`` register block (both compile-time constants)."""
    block_rows, block_cols, version = rows, cols, simd.SOURCE_VERSION

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def kernel(packed, weights, bias, out, tap_offsets, batch, channels_per_group, out_per_group, groups,
               blocks, chunks, tiles, channel_stride, channel_slice, plane_width, out_h, out_w):
        version  # noqa: B018 (the simd version in the closure: part of numba's cache key)
        lanes = simd.lanes(packed.dtype)
        tile = block_cols * lanes
        taps = tap_offsets.shape[0]
        weight_row = channels_per_group * taps  # one filter: (c, u, v) in order
        blocks_per_chunk = (blocks + chunks - 1) // chunks
        out_plane = out_h * out_w
        for task in prange(batch * groups * tiles * chunks):
            chunk = task % chunks
            tile_index = (task // chunks) % tiles
            group = (task // (chunks * tiles)) % groups
            image = task // (chunks * tiles * groups)
            first_pixel = tile_index * tile
            input_base = (image * groups + group) * channels_per_group * channel_stride + first_pixel
            # where the lanes of each of the tile's vectors go: pieces (first lane, end lane, output
            # offset of lane 0) that lie in one output row, found once for every block of the tile
            pieces = np.empty((block_cols, lanes, 3), dtype=np.int64)
            piece_counts = np.zeros(block_cols, dtype=np.int64)
            for n in range(block_cols):
                q = first_pixel + n * lanes
                i = q // plane_width
                j = q - i * plane_width
                lane = 0
                while lane < lanes and i < out_h:
                    if j >= out_w:  # past the row's last output: on to the next row
                        lane += plane_width - j
                        i += 1
                        j = 0
                        continue
                    count = min(lanes - lane, out_w - j)
                    pieces[n, piece_counts[n], 0] = lane
                    pieces[n, piece_counts[n], 1] = lane + count
                    pieces[n, piece_counts[n], 2] = i * out_w + j - lane
                    piece_counts[n] += 1
                    lane += count
                    j += count
            first_block = chunk * blocks_per_chunk
            # with chunks not dividing the blocks evenly, the last chunks can start past the end: no work
            last_block = max(first_block, min(blocks, first_block + blocks_per_chunk))
            block_size = block_rows * block_cols * lanes
            # the reduction runs over slices of the input channels small enough for the tile's
            # input window to stay in L1 while every block of the task reads it; the blocks keep
            # their partial sums here between slices
            partial = np.empty((last_block - first_block) * block_size, dtype=packed.dtype)
            for c0 in range(0, channels_per_group, channel_slice):
                count = min(channel_slice, channels_per_group - c0)
                for block in range(first_block, last_block):
                    saved = (block - first_block) * block_size
                    acc = simd.block_zero(block_rows, block_cols, packed)
                    if c0 > 0:
                        acc = simd.block_load(partial, saved, acc)
                    first_k = group * out_per_group + block * block_rows
                    acc = simd.block_fma_loop(acc, weights, first_k * weight_row + c0 * taps, weight_row,
                                              out_per_group - block * block_rows, packed,
                                              input_base + c0 * channel_stride, lanes, tap_offsets, count,
                                              channel_stride)
                    if c0 + count < channels_per_group:
                        simd.block_store(partial, saved, acc)
                        continue
                    for m in range(min(block_rows, out_per_group - block * block_rows)):
                        k = first_k + m
                        out_base = (image * groups * out_per_group + k) * out_plane
                        shift = simd.broadcast(bias[k])
                        row = acc[m]
                        for n in range(block_cols):
                            value = simd.add(row[n], shift)
                            for piece in range(piece_counts[n]):
                                lo, hi, at_out = pieces[n, piece, 0], pieces[n, piece, 1], pieces[n, piece, 2]
                                if hi - lo == lanes:
                                    simd.store(out, out_base + at_out, value)
                                else:
                                    simd.store_lanes(out, out_base + at_out, value, lo, hi)

    return ParallelKernel(kernel)


# ---------------------------------------------------------------------------------------------
# the plane kernel: depthwise and single-channel convolution

#: Largest kernel (taps) the plane kernel unrolls completely; larger ones run as a dense convolution.
PLANE_MAX_TAPS = 225

#: Up to this many taps the plane kernel beats the dense one even when a kernel column of weights
#: leaves no vector registers for a block of accumulators (they spill); past it only where the
#: registers hold both. Measured on a 1024² image, float32, 2 threads: 15×15 ran in 3.5 ms on the
#: plane kernel and 9.3 ms dense with AVX-512's 32 registers, but 16 ms against 9.9 ms compiled
#: for AVX2's 16; a 7×7 stride-2 kernel, spilling with AVX2, still took 1.2 ms against 1.6 dense.
PLANE_SPILLING_MAX_TAPS = 121


@dataclass(frozen=True)
class PlanePlan:
    """How a depthwise spec (one input channel per group) runs on the plane kernel."""

    rows: int               # output rows per register block (they share input loads)
    cols: int               # vectors per register block along an output row
    lanes: int
    column_tiles: int       # register blocks across an output row
    strip_tiles: int        # register blocks per column strip (its input rows stay in L1)
    strip_pitch: int        # row pitch of a strip copied to scratch, or 0: read the input in place
    scratch_rows: int       # rows of that scratch
    band_rows: int          # output rows per task (a multiple of rows)
    bands: int              # tasks per plane


def uses_plane_kernel(spec: ConvSpec) -> bool:
    """True when ``spec`` runs on the plane kernel: one input channel per group (depthwise, or a
    single-channel image), at most three filters per channel, column stride 1 or 2, and at most
    :data:`PLANE_SPILLING_MAX_TAPS` taps, or :data:`PLANE_MAX_TAPS` where the vector registers
    hold a kernel column of weights and at least two accumulators (every tap is unrolled)."""
    taps = spec.kernel_height * spec.kernel_width
    return (spec.in_channels_per_group == 1 and spec.out_channels_per_group <= 3 and spec.stride[1] <= 2
            and (taps <= PLANE_SPILLING_MAX_TAPS or (taps <= PLANE_MAX_TAPS and _plane_registers(spec) >= 2)))


def _plane_registers(spec: ConvSpec) -> int:
    """Vector registers the plane kernel has for accumulators: all but one kernel column of weights
    (two with column stride 2), an input vector in flight and a spare."""
    return simd.VECTOR_REGISTERS - 2 - spec.kernel_height * min(2, spec.stride[1])


def _plane_block_shape(spec: ConvSpec, vectors_per_row: int) -> tuple[int, int]:
    """(rows, cols) for the plane kernel.

    The ``rows · cols`` accumulators, one kernel column of weights (two with column stride 2)
    and an input vector in flight fit the registers (one spare). Output rows share input loads
    (``rows`` rows read ``(rows - 1)·s_h + (kh - 1)·d_h + 1`` input rows per column offset, not
    ``rows · kh``); vectors past the end of an output row and rows past the end of the plane
    are waste.
    """
    kh, (sh, dh) = spec.kernel_height, (spec.stride[0], spec.dilation[0])
    registers = _plane_registers(spec)
    best = None
    for cols in range(1, vectors_per_row + 1):
        rows_max = min(8, spec.out_height, registers // cols)
        for rows in range(1, rows_max + 1):
            used = (vectors_per_row / (_ceil_div(vectors_per_row, cols) * cols)
                    * spec.out_height / (_ceil_div(spec.out_height, rows) * rows))
            read_rows = len({r * sh + u * dh for r in range(rows) for u in range(kh)})
            score = used * rows * kh / read_rows * min(1.0, rows * cols / 8)
            if best is None or score > best[0] + 1e-9:
                best = (score, rows, cols)
    if best is None:  # a kernel column alone fills the registers: one vector at a time
        return 1, 1
    return best[1], best[2]


@functools.lru_cache(maxsize=256)
def _plane_plan(spec: ConvSpec, threads: int) -> PlanePlan:
    lanes = simd.lanes(spec.dtype)
    vectors_per_row = _ceil_div(spec.out_width, lanes)
    rows, cols = _plane_block_shape(spec, vectors_per_row)
    column_tiles = _ceil_div(vectors_per_row, cols)
    # a task walks down column strips narrow enough for the input rows a block reads to stay
    # in L1 from one block row to the next
    (sh, dh), (sw, dw) = (spec.stride[0], spec.dilation[0]), (spec.stride[1], spec.dilation[1])
    read_rows = (rows - 1) * sh + (spec.kernel_height - 1) * dh + 1
    tile_bytes = read_rows * cols * lanes * sw * spec.dtype.itemsize
    strip_tiles = max(1, min(column_tiles, L1_WINDOW_BYTES // tile_bytes))
    # whole planes per task, unless there are too few planes to give every thread several tasks
    bands_wanted = _ceil_div(4 * threads, spec.batch * spec.in_channels)
    band_rows = _ceil_div(_ceil_div(spec.out_height, bands_wanted), rows) * rows
    # Wide images: rows of 2 KiB or more are read from a copy of the strip whose rows are an odd
    # number of cache lines apart. In place, the 12-18 rows a block reads on a 2048-wide image
    # are 8 KiB apart, fall into the same L1 sets and evict each other (45 instead of 105
    # GFLOP/s per thread for 11x11); the copy also holds the zero padding, so no loads are masked.
    strip_pitch = scratch_rows = 0
    if spec.in_width * spec.dtype.itemsize >= 2048:
        needed = strip_tiles * cols * lanes * sw + (spec.kernel_width - 1) * dw
        lines = _ceil_div(needed * spec.dtype.itemsize, 64)
        strip_pitch = (lines + 1 - lines % 2) * 64 // spec.dtype.itemsize
        scratch_rows = (band_rows - 1) * sh + (spec.kernel_height - 1) * dh + 1
    return PlanePlan(rows, cols, lanes, column_tiles, strip_tiles, strip_pitch, scratch_rows, band_rows,
                     _ceil_div(spec.out_height, band_rows))


@functools.lru_cache(maxsize=None)
def _plane_kernel(rows: int, cols: int, geometry: tuple):
    """The plane kernel for a ``rows × cols`` block and ``geometry`` = (kh, kw, s_h, s_w, d_h, d_w),
    all compile-time constants (every tap unrolled)."""
    block_rows, block_cols, stencil, version = rows, cols, geometry, simd.SOURCE_VERSION

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def kernel(x, weight, bias, out, multiplier, band_rows, bands, column_tiles, strip_tiles, strip_pitch,
               scratch_rows, pad_top, pad_left):
        version  # noqa: B018 (the simd version in the closure: part of numba's cache key)
        lanes = simd.lanes(x.dtype)
        batch, channels, height, width = x.shape
        out_h, out_w = out.shape[2], out.shape[3]
        kh, kw, stride_h, stride_w, dilation_h, dilation_w = stencil
        # the input rows and columns one block reads, past its first
        row_reach = (block_rows - 1) * stride_h + (kh - 1) * dilation_h
        column_reach = stride_w * block_cols * lanes - 1 + (kw - 1) * dilation_w
        flat_x = x.reshape(-1)
        flat_weight = weight.reshape(-1)
        plane_size = height * width
        for task in prange(batch * channels * bands):
            band = task % bands
            channel = (task // bands) % channels
            image = task // (bands * channels)
            base = (image * channels + channel) * plane_size
            first_row = band * band_rows
            last_row = min(out_h, first_row + band_rows)
            scratch = np.empty(scratch_rows * strip_pitch, dtype=x.dtype)
            for strip in range(0, column_tiles, strip_tiles):
                strip_left = strip * block_cols * lanes * stride_w - pad_left  # its first input column
                if strip_pitch > 0:  # copy the strip's input (with its zero padding) first
                    _pack_rows(x[image, channel], scratch, 0, scratch_rows, strip_pitch, 0,
                               first_row * stride_h - pad_top, strip_left, 1, 1, 0, 0)
                for m in range(multiplier):
                    k = channel * multiplier + m
                    shift = simd.broadcast(bias[k])
                    plane = out[image, k].reshape(-1)
                    for i0 in range(first_row, last_row, block_rows):
                        top = i0 * stride_h - pad_top
                        rows_inside = top >= 0 and top + row_reach < height
                        for tile in range(strip, min(column_tiles, strip + strip_tiles)):
                            j0 = tile * block_cols * lanes
                            left = j0 * stride_w - pad_left
                            acc = simd.block_zero(block_rows, block_cols, flat_x)
                            if strip_pitch > 0:
                                acc = simd.block_stencil(acc, flat_weight, k * kh * kw, scratch, 0, strip_pitch,
                                                         scratch_rows, strip_pitch, (i0 - first_row) * stride_h,
                                                         left - strip_left, stencil)
                            elif rows_inside and left >= 0 and left + column_reach < width:
                                acc = simd.block_stencil(acc, flat_weight, k * kh * kw, flat_x, base, width, height,
                                                         width, top, left, stencil)
                            else:  # reaches into the padding: masked loads read it as zeros
                                acc = simd.block_stencil_edge(acc, flat_weight, k * kh * kw, flat_x, base, width,
                                                              height, width, top, left, stencil)
                            for r in range(min(block_rows, last_row - i0)):
                                for n in range(block_cols):
                                    j = j0 + n * lanes
                                    if j >= out_w:
                                        break
                                    value = simd.add(acc[r][n], shift)
                                    if j + lanes <= out_w:
                                        simd.store(plane, (i0 + r) * out_w + j, value)
                                    else:
                                        simd.store_lanes(plane, (i0 + r) * out_w + j, value, 0, out_w - j)

    return ParallelKernel(kernel)


class _Launch:
    """Everything a call of one spec needs besides its arrays, worked out once per spec: the
    kernels (parallel, or serial below :data:`SERIAL_MACS`) and their scalar arguments."""

    def __init__(self, spec: ConvSpec, threads: int):
        self.out_shape, self.dtype = spec.out_shape, spec.dtype
        self.zero_bias = np.zeros(spec.out_channels, dtype=spec.dtype)
        serial = spec.flops < 2 * SERIAL_MACS

        def launcher(kernel: ParallelKernel):
            return kernel.serial() if serial else kernel

        self.plane = uses_plane_kernel(spec)
        if self.plane:
            layout = _plane_plan(spec, threads)
            geometry = (spec.kernel_height, spec.kernel_width, *spec.stride, *spec.dilation)
            self.kernel = launcher(_plane_kernel(layout.rows, layout.cols, geometry))
            self.arguments = (spec.out_channels_per_group, layout.band_rows, layout.bands, layout.column_tiles,
                              layout.strip_tiles, layout.strip_pitch, layout.scratch_rows, spec.padding[0][0],
                              spec.padding[1][0])
            return
        layout = plan(spec)
        check_fits("the packed input", (layout.buffer_size,), spec.dtype,
                   lambda: f"padding {spec.padding}, stride {spec.stride}, dilation {spec.dilation} on input "
                           f"{spec.input_shape}")
        self.buffer_size = layout.buffer_size
        self.packer = launcher(_input_packer(simd.SOURCE_VERSION))
        self.pack_arguments = (np.array(layout.row_phases, dtype=np.int64), np.array(layout.col_phases, dtype=np.int64),
                               layout.plane_height, layout.plane_width, *spec.stride, spec.padding[0][0],
                               spec.padding[1][0])
        phases = len(layout.row_phases) * len(layout.col_phases)
        # split each tile's channel blocks into chunks until every thread has several tasks
        chunks = min(layout.blocks, _ceil_div(8 * threads, spec.batch * spec.groups * layout.tiles))
        self.kernel = launcher(_block_kernel(layout.rows, layout.cols))
        self.arguments = (np.array(layout.tap_offsets, dtype=np.int64), spec.batch, spec.in_channels_per_group,
                          spec.out_channels_per_group, spec.groups, layout.blocks, chunks, layout.tiles,
                          phases * layout.plane_size, layout.channel_slice, layout.plane_width, spec.out_height,
                          spec.out_width)

    def __call__(self, x, weight, bias):
        bias = self.zero_bias if bias is None else bias
        out = np.empty(self.out_shape, dtype=self.dtype)
        if self.plane:
            self.kernel(x, weight, bias, out, *self.arguments)
            return out
        packed = _workspace(self.buffer_size, self.dtype)
        self.packer(x, packed, *self.pack_arguments)
        self.kernel(packed, weight.reshape(-1), bias, out.reshape(-1), *self.arguments)
        return out


@functools.lru_cache(maxsize=256)
def _launch(spec: ConvSpec, threads: int) -> _Launch:
    return _Launch(spec, threads)


# ---------------------------------------------------------------------------------------------
# the backend entry point


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    if spec.batch == 0:
        return np.empty(spec.out_shape, dtype=spec.dtype)
    # the protocol promises C-contiguous arrays; the kernels index them flat, so make sure (free if so)
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    return _launch(spec, config.threads)(np.ascontiguousarray(x), np.ascontiguousarray(weight), bias)


# ---------------------------------------------------------------------------------------------
# the weight gradient (backward-filter)


@dataclass(frozen=True)
class WeightGradPlan:
    """How the weight-gradient kernel runs one spec (sizes in elements)."""

    layout: Plan            # the packed input: the forward's phase planes or column copies
    rows: int               # output channels per register block (output-gradient vectors)
    cols: int               # (input channel, tap) columns per register block (input vectors)
    grad_pitch: int         # elements per output-gradient plane (packed: whole vectors of pixels)
    vectors: int            # whole vectors of pixels the register blocks run over
    in_place: bool          # the output gradient is read where it is (the runs are its rows)
    row_blocks_per_task: int
    col_blocks_per_task: int
    tasks: int
    chunk: int              # vectors of pixels per pass over a task's blocks (its rows stay in L2)


def _weight_grad_block_shape(out_per_group: int, columns: int) -> tuple[int, int]:
    """(rows, cols) of the weight gradient's register block, from a menu of three shapes.

    A step loads ``rows + cols`` vectors and issues ``rows · cols`` FMAs, and the ``rows · cols``
    accumulators and the loaded vectors must fit the registers (one spare). The menu (4, 2 or 1
    rows, as many columns as fit, at most 9: a 3×3 kernel's taps) keeps the compiled kernels few;
    the shape with the most useful FMAs per load wins (rows past a group's output channels and
    columns past its ``C/g · kh · kw`` are waste).
    """
    registers = simd.VECTOR_REGISTERS - 1
    best = None
    for rows in (4, 2, 1):
        cols = min(9, (registers - rows) // (rows + 1))
        used = (out_per_group / (_ceil_div(out_per_group, rows) * rows)
                * columns / (_ceil_div(columns, cols) * cols))
        score = used * rows * cols / (rows + cols)
        if best is None or score > best[0] + 1e-9:
            best = (score, rows, cols)
    return best[1], best[2]


#: Bytes of output gradient a task's blocks read per pass over the pixels: they stay in L2.
L2_WINDOW_BYTES = 128 << 10


def _weight_grad_seconds(spec: ConvSpec, layout: Plan) -> float:
    """Estimated single-thread time of the weight pass on ``layout``: the FMAs over the pixel runs
    (as wide as the planes' rows), the input packed, and the output gradient packed where the
    runs are wider than its rows (else it is read where it is)."""
    columns = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    computed = 2 * spec.batch * spec.out_channels * columns * layout.pixels
    packed = layout.buffer_size
    if layout.plane_width != spec.out_width:
        packed += 2 * spec.batch * spec.out_channels * layout.pixels
    return computed / _FLOP_RATE + packed * spec.dtype.itemsize / _PACK_RATE


@functools.lru_cache(maxsize=256)
def weight_grad_plan(spec: ConvSpec, threads: int) -> WeightGradPlan:
    """The :class:`WeightGradPlan` of ``spec`` for ``threads`` threads (cached)."""
    layout = min((_layout(spec, copies) for copies in (False, True)),
                 key=lambda candidate: _weight_grad_seconds(spec, candidate))
    lanes = layout.lanes
    columns = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    rows, cols = _weight_grad_block_shape(spec.out_channels_per_group, columns)
    row_blocks = _ceil_div(spec.out_channels_per_group, rows)
    col_blocks = _ceil_div(columns, cols)
    # A task holds at most 16 output channels (their pixels are re-read from L2 by each of its
    # column blocks). Tasks are split until every thread has several: across output channels
    # (each task re-reads the input) or across columns (each re-reads the output gradient),
    # whichever re-reads less.
    row_blocks_per_task = min(row_blocks, max(1, 16 // rows))
    wanted = _ceil_div(4 * threads, spec.groups)
    input_bytes = spec.in_channels_per_group * layout.buffer_size / max(1, spec.in_channels)
    grad_bytes = spec.out_channels_per_group * layout.pixels
    if grad_bytes > input_bytes:
        row_blocks_per_task = min(row_blocks_per_task, max(1, _ceil_div(row_blocks, wanted)))
    row_tasks = _ceil_div(row_blocks, row_blocks_per_task)
    col_tasks = min(col_blocks, _ceil_div(wanted, row_tasks))
    col_blocks_per_task = _ceil_div(col_blocks, col_tasks)
    col_tasks = _ceil_div(col_blocks, col_blocks_per_task)
    in_place = layout.plane_width == spec.out_width
    vectors = layout.pixels // lanes if in_place else _ceil_div(layout.pixels, lanes)
    chunk = max(16, L2_WINDOW_BYTES // (row_blocks_per_task * rows * simd.VECTOR_BYTES))
    chunk = _ceil_div(vectors, max(1, _ceil_div(vectors, chunk)))  # passes of equal length
    grad_pitch = spec.out_height * spec.out_width if in_place else _ceil_div(layout.pixels, lanes) * lanes
    return WeightGradPlan(layout, rows, cols, grad_pitch, vectors, in_place, row_blocks_per_task,
                          col_blocks_per_task, spec.groups * row_tasks * col_tasks, max(1, chunk))


@functools.lru_cache(maxsize=None)
def _grad_packer(simd_version: int):
    """The output-gradient packing kernel (closure over the simd version, as :func:`_input_packer`)."""
    version = simd_version

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def pack(grad, packed, plane_width, pitch):
        """packed[n·K + k, i·plane_width + j] = grad[n, k, i, j], zeros past each row's outputs and
        past the last: the pixels laid out as the packed input's flattened runs."""
        version  # noqa: B018 (keeps the simd version in the closure, so in numba's cache key)
        batch, channels, out_h, out_w = grad.shape
        for plane in prange(batch * channels):
            image, channel = plane // channels, plane % channels
            base = plane * pitch
            for i in range(out_h):
                row = base + i * plane_width
                for j in range(out_w):
                    packed[row + j] = grad[image, channel, i, j]
                end = min(row + plane_width, base + pitch)
                for q in range(row + out_w, end):
                    packed[q] = 0
            for q in range(base + min(pitch, out_h * plane_width), base + pitch):
                packed[q] = 0

    return ParallelKernel(pack)


@functools.lru_cache(maxsize=None)
def _weight_grad_kernel(rows: int, cols: int):
    """The weight-gradient kernel for a ``rows × cols`` register block (compile-time constants)."""
    block_rows, block_cols, version = rows, cols, simd.SOURCE_VERSION

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def kernel(packed, grads, dw, tap_offsets, batch, channels_per_group, out_per_group, groups, channel_stride,
               grad_pitch, vectors, pixels, row_blocks_per_task, col_blocks_per_task, chunk):
        version  # noqa: B018 (the simd version in the closure: part of numba's cache key)
        lanes = simd.lanes(packed.dtype)
        taps = tap_offsets.shape[0]
        columns = channels_per_group * taps
        row_blocks = (out_per_group + block_rows - 1) // block_rows
        col_blocks = (columns + block_cols - 1) // block_cols
        row_tasks = (row_blocks + row_blocks_per_task - 1) // row_blocks_per_task
        col_tasks = (col_blocks + col_blocks_per_task - 1) // col_blocks_per_task
        block_size = block_rows * block_cols * lanes
        for task in prange(groups * row_tasks * col_tasks):
            col_task = task % col_tasks
            row_task = (task // col_tasks) % row_tasks
            group = task // (col_tasks * row_tasks)
            first_row_block = row_task * row_blocks_per_task
            row_count = min(row_blocks, first_row_block + row_blocks_per_task) - first_row_block
            first_col_block = col_task * col_blocks_per_task
            col_count = min(col_blocks, first_col_block + col_blocks_per_task) - first_col_block
            # each column (c, tap) of the task's blocks: where its input run starts in a packed
            # image's group; columns past the last repeat it (their sums are discarded)
            offsets = np.empty(col_count * block_cols, dtype=np.int64)
            for n in range(col_count * block_cols):
                column = min(first_col_block * block_cols + n, columns - 1)
                c = column // taps
                offsets[n] = c * channel_stride + tap_offsets[column - c * taps]
            partial = np.zeros(row_count * col_count * block_size, dtype=packed.dtype)
            for image in range(batch):
                input_base = (image * groups + group) * channels_per_group * channel_stride
                grad_base = (image * groups + group) * out_per_group * grad_pitch
                for s0 in range(0, vectors, chunk):
                    count = min(chunk, vectors - s0)
                    for b in range(col_count):
                        for r in range(row_count):
                            saved = (r * col_count + b) * block_size
                            first_k = (first_row_block + r) * block_rows
                            acc = simd.block_load(partial, saved, simd.block_zero(block_rows, block_cols, packed))
                            acc = simd.block_dot_loop(acc, grads, grad_base + first_k * grad_pitch + s0 * lanes,
                                                      grad_pitch, out_per_group - first_k, packed,
                                                      input_base + s0 * lanes, offsets, b * block_cols, count)
                            simd.block_store(partial, saved, acc)
                # pixels past the last whole vector (a gradient read in place): one at a time,
                # into lane 0
                for q in range(vectors * lanes, pixels):
                    for b in range(col_count):
                        for r in range(row_count):
                            saved = (r * col_count + b) * block_size
                            first_k = (first_row_block + r) * block_rows
                            for m in range(min(block_rows, out_per_group - first_k)):
                                g = grads[grad_base + (first_k + m) * grad_pitch + q]
                                for n in range(block_cols):
                                    partial[saved + (m * block_cols + n) * lanes] += \
                                        g * packed[input_base + offsets[b * block_cols + n] + q]
            # the lanes of each accumulator are partial sums over pixels: add them up
            for r in range(row_count):
                first_k = (first_row_block + r) * block_rows
                for b in range(col_count):
                    saved = (r * col_count + b) * block_size
                    for m in range(min(block_rows, out_per_group - first_k)):
                        k = group * out_per_group + first_k + m
                        for n in range(block_cols):
                            column = (first_col_block + b) * block_cols + n
                            if column >= columns:
                                break
                            at = saved + (m * block_cols + n) * lanes
                            dw[k * columns + column] = simd.hsum(simd.load(partial, at))

    return ParallelKernel(kernel)


@dataclass(frozen=True)
class ChannelLanesPlan:
    """How the weight gradient runs with output channels in the lanes (sizes in elements)."""

    layout: Plan            # the packed input (the forward's)
    rows: int               # input channels per register block (broadcast input values)
    cols: int               # vectors of output channels per register block
    k_blocks: int           # blocks of cols · lanes output channels per group
    k_blocks_per_task: int
    c_blocks_per_task: int
    tasks: int
    chunk: int              # pixels per pass over a task's blocks (their gradient stays in L2)


@functools.lru_cache(maxsize=256)
def _channel_lanes_plan(spec: ConvSpec, threads: int) -> ChannelLanesPlan:
    layout = plan(spec)
    lanes = layout.lanes
    k_vectors = _ceil_div(spec.out_channels_per_group, lanes)
    rows, cols = _weight_grad_block_shape(spec.in_channels_per_group, k_vectors)
    k_blocks = _ceil_div(k_vectors, cols)
    c_blocks = _ceil_div(spec.in_channels_per_group, rows)
    wanted = _ceil_div(4 * threads, spec.groups)
    k_tasks = min(k_blocks, wanted)
    k_blocks_per_task = _ceil_div(k_blocks, k_tasks)
    k_tasks = _ceil_div(k_blocks, k_blocks_per_task)
    c_tasks = min(c_blocks, _ceil_div(wanted, k_tasks))
    c_blocks_per_task = _ceil_div(c_blocks, c_tasks)
    c_tasks = _ceil_div(c_blocks, c_blocks_per_task)
    chunk = max(64, L2_WINDOW_BYTES // (cols * simd.VECTOR_BYTES))
    chunk = _ceil_div(layout.pixels, _ceil_div(layout.pixels, chunk))
    return ChannelLanesPlan(layout, rows, cols, k_blocks, k_blocks_per_task, c_blocks_per_task,
                            spec.groups * k_tasks * c_tasks, chunk)


#: The output-channels-in-lanes form's time per multiply-add over the pixels-in-lanes form's: its
#: steps are as many loads and FMAs, but each reads one pixel of a gradient run spread over the
#: block's channels, and it ran at about 70% of the other's rate per flop (VGG's 14×14×512 and
#: ResNet-50's strided 1×1 and 3×3 layers, 2 threads, float32). Counted as extra flops.
CHANNEL_LANES_SLOWDOWN = 1.4

#: Seconds one pass of a register block costs besides its steps (partial sums loaded and stored,
#: operands' addresses set up): it decides between the two forms on layers of few pixels.
_BLOCK_PASS_SECONDS = 1e-7


def _weight_grad_work(spec: ConvSpec, form: str) -> tuple[float, float, float]:
    """(flops issued, block passes, elements packed) of the weight pass in ``form``
    (``"pixel_lanes"``: :func:`weight_grad_plan`, ``"channel_lanes"``: the transposed form)."""
    taps = spec.kernel_height * spec.kernel_width
    columns = spec.in_channels_per_group * taps
    if form == "pixel_lanes":
        layout = weight_grad_plan(spec, config.threads)
        lanes = layout.layout.lanes
        row_blocks = _ceil_div(spec.out_channels_per_group, layout.rows)
        col_blocks = _ceil_div(columns, layout.cols)
        pixels = layout.vectors * lanes + (layout.layout.pixels % lanes if layout.in_place else 0)
        flops = 2.0 * spec.batch * spec.groups * row_blocks * layout.rows * col_blocks * layout.cols * pixels
        passes = spec.batch * spec.groups * row_blocks * col_blocks * _ceil_div(max(layout.vectors, 1), layout.chunk)
        packed = layout.layout.buffer_size + (0 if layout.in_place else spec.batch * spec.out_channels
                                              * layout.grad_pitch)
        return flops, float(passes), float(packed)
    layout = _channel_lanes_plan(spec, config.threads)
    k_blocks = layout.k_blocks
    c_blocks = _ceil_div(spec.in_channels_per_group, layout.rows)
    pixels = layout.layout.pixels
    flops = (2.0 * spec.batch * spec.groups * k_blocks * layout.cols * layout.layout.lanes * c_blocks * layout.rows
             * taps * pixels * CHANNEL_LANES_SLOWDOWN)
    passes = spec.batch * spec.groups * k_blocks * c_blocks * taps * _ceil_div(pixels, layout.chunk)
    packed = layout.layout.buffer_size + spec.batch * spec.groups * pixels * k_blocks * layout.cols * layout.layout.lanes
    return flops, float(passes), float(packed)


@functools.lru_cache(maxsize=256)
def weight_grad_form(spec: ConvSpec, threads: int) -> str:
    """``"pixel_lanes"`` or ``"channel_lanes"``: the form of the weight pass that costs less."""
    def seconds(form):
        flops, passes, packed = _weight_grad_work(spec, form)
        return flops / _FLOP_RATE + passes * _BLOCK_PASS_SECONDS + packed * spec.dtype.itemsize / _PACK_RATE

    return min(("pixel_lanes", "channel_lanes"), key=seconds)


@functools.lru_cache(maxsize=None)
def _transposed_grad_packer(simd_version: int):
    """The packing of the output gradient with the channels last (closure over the simd version)."""
    version = simd_version

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def pack(grad, packed, groups, plane_width, pixels, k_width):
        """packed[((n·G + g)·blocks + b)·pixels + i·plane_width + j, t] = grad[n, g·Kg + b·k_width + t, i, j]:
        per image, group and block of ``k_width`` output channels, a run over the pixels (contiguous,
        so that a block's gradient is one stream); zeros for the pixels the runs cross between rows
        and for channels past Kg."""
        version  # noqa: B018 (keeps the simd version in the closure, so in numba's cache key)
        batch, channels, out_h, out_w = grad.shape
        per_group = channels // groups
        blocks = (per_group + k_width - 1) // k_width
        for task in prange(batch * groups * blocks * out_h):
            i = task % out_h
            run = task // out_h
            block = run % blocks
            image_group = run // blocks
            image, group = image_group // groups, image_group % groups
            first = group * per_group + block * k_width
            valid = min(k_width, per_group - block * k_width)
            row = (run * pixels + i * plane_width) * k_width
            width = min(plane_width, pixels - i * plane_width)
            for j in range(width):
                at = row + j * k_width
                if j < out_w:
                    for t in range(valid):
                        packed[at + t] = grad[image, first + t, i, j]
                    for t in range(valid, k_width):
                        packed[at + t] = 0
                else:
                    for t in range(k_width):
                        packed[at + t] = 0

    return ParallelKernel(pack)


@functools.lru_cache(maxsize=None)
def _channel_lanes_kernel(rows: int, cols: int):
    """The weight-gradient kernel with output channels in the lanes, for a ``rows × cols`` block."""
    block_rows, block_cols, version = rows, cols, simd.SOURCE_VERSION

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def kernel(packed, grads, dw, tap_offsets, one_offset, batch, channels_per_group, out_per_group, groups,
               channel_stride, pixels, k_blocks, k_blocks_per_task, c_blocks_per_task, chunk):
        version  # noqa: B018 (the simd version in the closure: part of numba's cache key)
        lanes = simd.lanes(packed.dtype)
        taps = tap_offsets.shape[0]
        k_width = block_cols * lanes
        c_blocks = (channels_per_group + block_rows - 1) // block_rows
        k_tasks = (k_blocks + k_blocks_per_task - 1) // k_blocks_per_task
        c_tasks = (c_blocks + c_blocks_per_task - 1) // c_blocks_per_task
        block_size = block_rows * block_cols * lanes
        for task in prange(groups * k_tasks * c_tasks):
            c_task = task % c_tasks
            k_task = (task // c_tasks) % k_tasks
            group = task // (c_tasks * k_tasks)
            first_kb = k_task * k_blocks_per_task
            kb_count = min(k_blocks, first_kb + k_blocks_per_task) - first_kb
            first_cb = c_task * c_blocks_per_task
            cb_count = min(c_blocks, first_cb + c_blocks_per_task) - first_cb
            partial = np.zeros(kb_count * taps * cb_count * block_size, dtype=packed.dtype)
            for image in range(batch):
                input_base = (image * groups + group) * channels_per_group * channel_stride
                grad_base = (image * groups + group) * k_blocks * pixels * k_width
                for q0 in range(0, pixels, chunk):
                    count = min(chunk, pixels - q0)
                    for kb in range(kb_count):
                        k0 = (first_kb + kb) * k_width
                        for t in range(taps):
                            for cb in range(cb_count):
                                c0 = (first_cb + cb) * block_rows
                                saved = ((kb * taps + t) * cb_count + cb) * block_size
                                acc = simd.block_load(partial, saved, simd.block_zero(block_rows, block_cols, packed))
                                acc = simd.block_fma_loop(acc, packed, input_base + c0 * channel_stride
                                                          + tap_offsets[t] + q0, channel_stride,
                                                          channels_per_group - c0, grads,
                                                          grad_base + ((first_kb + kb) * pixels + q0) * k_width,
                                                          lanes, one_offset, count, k_width)
                                simd.block_store(partial, saved, acc)
            for kb in range(kb_count):
                k0 = (first_kb + kb) * k_width
                for t in range(taps):
                    for cb in range(cb_count):
                        c0 = (first_cb + cb) * block_rows
                        saved = ((kb * taps + t) * cb_count + cb) * block_size
                        for m in range(min(block_rows, channels_per_group - c0)):
                            for lane in range(min(k_width, out_per_group - k0)):
                                k = group * out_per_group + k0 + lane
                                dw[(k * channels_per_group + c0 + m) * taps + t] = \
                                    partial[saved + m * block_cols * lanes + lane]

    return ParallelKernel(kernel)


def run_weight_grad(x: np.ndarray, grad_output: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """weight pass: a direct kernel, the sums over pixels kept in SIMD register blocks.

    ``dw[k, c, u, v] = sum over (n, pixel) of g[n, k, pixel] · x[n, c, pixel shifted by tap (u, v)]``:
    the input is packed as for the forward register-block kernel (zero-padded phase planes or
    column copies, in which each tap reads the output pixels as one run), the output gradient
    into runs of the same pitch (zeros where the run crosses a row end), and a register block of
    ``rows`` output channels × ``cols`` (channel, tap) columns multiplies the two runs vector by
    vector, the pixels in the lanes, every sum staying in registers; the lanes are added at the
    end. The pixels the runs cross between rows multiply a zero gradient; where one of them meets
    an inf or NaN input the sum is not finite, and the pass is recomputed by ``im2col``'s unfold
    and GEMM, which reads only the taps each output reads. Returns (K, C // groups, kh, kw).
    """
    dw = np.empty(spec.weight_shape, dtype=spec.dtype)
    if spec.batch == 0:
        dw[...] = 0
        return dw
    layout = weight_grad_plan(spec, config.threads)
    geometry = layout.layout
    check_fits("the packed input", (geometry.buffer_size,), spec.dtype,
               lambda: f"padding {spec.padding}, stride {spec.stride}, dilation {spec.dilation} on input "
                       f"{spec.input_shape}")
    serial = spec.flops < 2 * SERIAL_MACS

    def launcher(kernel: ParallelKernel):
        return kernel.serial() if serial else kernel

    x = np.ascontiguousarray(x)
    grad_output = np.ascontiguousarray(grad_output)
    channel_lanes = weight_grad_form(spec, config.threads) == "channel_lanes"
    if channel_lanes:
        transposed = _channel_lanes_plan(spec, config.threads)
        geometry = transposed.layout
    packed = _workspace(geometry.buffer_size, spec.dtype)
    launcher(_input_packer(simd.SOURCE_VERSION))(
        x, packed, np.array(geometry.row_phases, dtype=np.int64), np.array(geometry.col_phases, dtype=np.int64),
        geometry.plane_height, geometry.plane_width, *spec.stride, spec.padding[0][0], spec.padding[1][0])
    phases = len(geometry.row_phases) * len(geometry.col_phases)
    if channel_lanes:
        pixels, k_width = geometry.pixels, transposed.cols * geometry.lanes
        grads = _workspace(spec.batch * spec.groups * transposed.k_blocks * pixels * k_width, spec.dtype, "gradient")
        launcher(_transposed_grad_packer(simd.SOURCE_VERSION))(grad_output, grads, spec.groups,
                                                               geometry.plane_width, pixels, k_width)
        launcher(_channel_lanes_kernel(transposed.rows, transposed.cols))(
            packed, grads, dw.reshape(-1), np.array(geometry.tap_offsets, dtype=np.int64), np.zeros(1, np.int64),
            spec.batch, spec.in_channels_per_group, spec.out_channels_per_group, spec.groups,
            phases * geometry.plane_size, pixels, transposed.k_blocks, transposed.k_blocks_per_task,
            transposed.c_blocks_per_task, transposed.chunk)
        return _finite_or_exact(dw, x, grad_output, spec)
    if layout.in_place:
        grads = grad_output.reshape(-1)
    else:
        grads = _workspace(spec.batch * spec.out_channels * layout.grad_pitch, spec.dtype, "gradient")
        launcher(_grad_packer(simd.SOURCE_VERSION))(grad_output, grads, geometry.plane_width, layout.grad_pitch)
    launcher(_weight_grad_kernel(layout.rows, layout.cols))(
        packed, grads, dw.reshape(-1), np.array(geometry.tap_offsets, dtype=np.int64), spec.batch,
        spec.in_channels_per_group, spec.out_channels_per_group, spec.groups, phases * geometry.plane_size,
        layout.grad_pitch, layout.vectors, geometry.pixels, layout.row_blocks_per_task, layout.col_blocks_per_task,
        layout.chunk)
    return _finite_or_exact(dw, x, grad_output, spec)


def _finite_or_exact(dw, x, grad_output, spec):
    """``dw``, or where it is not finite, the pass recomputed by reading only the taps each output
    reads (``im2col``'s): the runs' extra pixels may have met an inf or NaN input."""
    if np.isfinite(dw).all():
        return dw
    from fastconv.backends import im2col

    return im2col.run_weight_grad(x, grad_output, spec)


# ---------------------------------------------------------------------------------------------
# the cost model

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"block_flop": 2.88e-12, "block_load": 1.5e-10, "byte": 6.21e-12, "call": 1.77e-06,
                  "float64_factor": 1.3, "pack_byte": 1.17e-11, "parallel_call": 6.31e-06, "plane_flop": 4.22e-12,
                  "task": 2.37e-08}

#: The resource each term's constant scales with on another machine (see
#: :func:`fastconv.auto.constants.term_resource`): the kernels are bound by the vector FMA rate
#: (``compute``, the probe's vectorised multiply-adds on all threads), packing and the input,
#: output and weight traffic by ``memory``, and a parallel task, like the call, is a fixed
#: cost of dispatch rather than arithmetic (``call``).
COST_RESOURCES = {"block_flop": "compute", "plane_flop": "compute", "pack_byte": "memory", "byte": "memory",
                  "call": "call", "task": "call"}


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """The work of the kernel :func:`run` picks, as the kernels really do it.

    ``block_flop`` / ``plane_flop``: the multiply-adds (two flops each) the register blocks
    issue, waste included (zero filters padding a group's channels to whole blocks, pixels of
    the last tile past the output, the columns phase planes add); ``pack_byte``: the packed or
    copied input written; ``task``: the parallel tasks; ``byte``: input, output and weight.
    """
    work = dtype_work(spec.dtype)  # (complex is declined; kept for the protocol's sake)
    serial = spec.flops < 2 * SERIAL_MACS
    if uses_plane_kernel(spec):
        layout = _plane_plan(spec, config.threads)
        block_rows = _ceil_div(layout.band_rows, layout.rows) * layout.bands
        vectors = block_rows * layout.rows * layout.column_tiles * layout.cols
        flops = 2.0 * spec.batch * spec.out_channels * vectors * layout.lanes * spec.kernel_height * spec.kernel_width
        copied = (spec.batch * spec.in_channels * layout.bands * layout.scratch_rows * layout.strip_pitch
                  * _ceil_div(layout.column_tiles, layout.strip_tiles)) if layout.strip_pitch else 0
        return {"call": 1.0, "parallel_call": 0.0 if serial else 1.0, "plane_flop": flops * work,
                "pack_byte": float(copied * spec.dtype.itemsize),
                "task": float(spec.batch * spec.in_channels * layout.bands), "byte": io_bytes(spec)}
    layout = plan(spec)
    steps = (spec.batch * spec.groups * layout.blocks * layout.tiles * spec.in_channels_per_group
             * spec.kernel_height * spec.kernel_width)
    flops = 2.0 * steps * layout.rows * layout.cols * layout.lanes
    return {"call": 1.0, "parallel_call": 0.0 if serial else 2.0, "block_flop": flops * work,
            "block_load": float(steps * (layout.rows + layout.cols)),
            "pack_byte": float(layout.buffer_size * spec.dtype.itemsize),
            "task": float(spec.batch * spec.groups * layout.tiles * layout.blocks), "byte": io_bytes(spec)}



def weight_grad_cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """The work of :func:`run_weight_grad` in the form it takes, in the forward's terms.

    ``block_flop``: the multiply-adds its register blocks issue, waste included (rows and columns
    padding a group to whole blocks, the pixels the runs cross between rows and past the last);
    ``block_load``: the vectors their reduction steps load; ``parallel_call``: the parallel regions;
    ``pack_byte``: the packed input and output gradient written; ``task``: the parallel tasks and
    the register blocks' passes over the pixels (each a fixed cost of about the same size);
    ``byte``: input, output gradient and weight gradient.
    """
    form = weight_grad_form(spec, config.threads)
    flops, passes, packed = _weight_grad_work(spec, form)
    layout = weight_grad_plan(spec, config.threads) if form == "pixel_lanes" else \
        _channel_lanes_plan(spec, config.threads)
    # (a reduction step loads ``rows`` vectors of one operand and ``cols`` of the other for
    # ``rows · cols`` vector FMAs, as the forward's blocks do)
    loads = flops * (layout.rows + layout.cols) / (2.0 * layout.rows * layout.cols * layout.layout.lanes)
    return {"call": 1.0, "parallel_call": 0.0 if spec.flops < 2 * SERIAL_MACS else 2.0, "block_flop": flops,
            "block_load": loads, "pack_byte": packed * spec.dtype.itemsize, "task": float(layout.tasks) + passes,
            "byte": io_bytes(spec)}
