"""``separable``: low-rank kernels as sums of column-times-row filters.

A kernel of rank ``r`` is a sum of ``r`` outer products, ``w = sum_i col_i ⊗ row_i`` (the singular
value decomposition finds them, with the singular values split evenly between the factors).
Correlating with one outer product is a 1-D pass down the columns followed by a 1-D pass along the
rows, so an output costs ``r · (kh + kw)`` multiply-adds instead of ``kh · kw``: a 31×31 Gaussian
needs 62 instead of 961. Gaussian, box, Sobel, Prewitt and every other outer-product kernel are
rank 1 exactly; blurs with a rounded corner or differences of Gaussians are rank 2 or 3.

The backend factors every (k, c) kernel of the weight and declines, naming the rank it found,
when some kernel is not low-rank enough to pay off: ``rank · (kh + kw) >= kh · kw`` (1×k and k×1
kernels are 1-D already and always accepted; they run as a single pass). Ranks are counted
numerically: singular values below ``tol · s_max`` are dropped, with ``tol = max(kh, kw) · eps``
of the compute dtype by default (``numpy.linalg.matrix_rank``'s rule), so the error of the
dropped terms is at rounding level. Because that needs the weight values and not only the
:class:`~fastconv.geometry.ConvSpec`, the decision lives in the optional ``supports_weight`` hook
of the backend protocol (see :mod:`fastconv.backends`), which the dispatcher consults after
``supports``.

**The fused kernel** (float32 and float64, on :mod:`fastconv.backends.simd`). For each rank term
the horizontal pass filters input rows along the row, ``H[y, j] = sum_v row[v] · x[y, j·s_w +
v·d_w]``, and the vertical pass sums those rows, ``out[i, j] += sum_u col[u] · H[i·s_h + u·d_h, j]``
(the order OpenCV's ``sepFilter2D`` uses: no column of the intermediate is ever computed that the
output does not read). The two are fused so that the intermediate never leaves the cache:

- **Tasks** are (image, output channel, band of output rows, strip of output columns), run in
  parallel. A task keeps a **ring** of the ``window = (rows - 1)·s_h + (kh - 1)·d_h + 1``
  horizontally filtered rows that one vertical block reads, indexed by input row modulo
  ``window``: moving down by a block filters only the rows that enter the window, each row once.
  Strips are as wide as :data:`RING_BYTES` (or a smaller ``config.workspace_bytes``) allows, so
  the ring stays in L2; its rows are an odd number of cache lines apart.
- **The horizontal pass** runs register blocks of :data:`HORIZONTAL_COLS` vectors along the row
  (:func:`~fastconv.backends.simd.block_fma_loop`: one broadcast tap, one load and one FMA per
  vector and tap). Interior strips read the input rows in place; strips at the image's left or
  right edge, and column strides above 1, read a copy of the row with its zero padding and its
  columns split into ``s_w`` phases, so that every tap reads contiguous memory.
- **The vertical pass** runs register blocks of ``rows`` output rows × ``cols`` vectors: each
  ring vector loaded is used by every row of the block, with that row's tap (zero where the row
  does not read it), so tall kernels cost far fewer loads than FMAs. ``0 · inf`` is NaN, so
  where a block's sum holds NaN its rows are summed again over their own taps only: NaN and inf
  land exactly where direct summation puts them.
- Rows outside the image (the zero padding) are zero rows of the ring; nothing is padded in
  memory (except for a 1-D kernel holding NaN or inf, whose taps must meet the padding too,
  ``0 · NaN`` being NaN as in torch: then the input is padded explicitly; 2-D kernels holding
  them are declined, having no factors). Stride and dilation are index arithmetic. Results are added to the output with the
  bias, with masked stores at the right edge. Calls of fewer than :data:`SERIAL_MACS`
  multiply-adds run on the calling thread.

Per output and term that is ``kw`` horizontal and ``window · rows / rows`` ≈ ``kh + rows - 1``
vertical multiply-adds. Complex dtypes, and geometry reaching further than
:data:`FUSED_MAX_REACH` (dilations of thousands), run plain numba loops, one output row per task
(the column pass of the row into a buffer, then its row pass into the output row).

Examples
--------
>>> import numpy as np, fastconv
>>> g = np.exp(-np.linspace(-2, 2, 9) ** 2)
>>> cols, rows = fastconv.separate(np.outer(g, g))
>>> cols.shape, rows.shape          # rank 1: one column factor, one row factor
((1, 9), (1, 9))
>>> x = np.random.default_rng(0).standard_normal((1, 1, 32, 32))
>>> y = fastconv.separable_conv2d(x, g, g, padding="same")
>>> bool(np.allclose(y, fastconv.conv2d(x, np.outer(g, g)[None, None], padding="same")))
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.thread_pools import ParallelKernel
from fastconv.backends._weight_cache import WeightCache
from fastconv.backends import FAST_MATH, simd
from fastconv.backends.work import dtype_work, io_bytes
from fastconv.geometry import ConvSpec, pad_input

name = "separable"
thread_pool = "openmp"  # see fastconv.backends: what auto charges for switching pools

__all__ = ["available", "supports", "supports_weight", "run", "clear_caches", "cost_terms", "factor_kernels",
           "default_tolerance"]


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    return None  # every geometry and dtype; the weight decides (supports_weight)


# --------------------------------------------------------------------------------------------
# the decomposition


def default_tolerance(kernel_shape, dtype) -> float:
    """Singular values below this, relative to the largest, are rounding noise (numpy's ``matrix_rank`` rule)."""
    return max(kernel_shape) * float(np.finfo(dtype).eps)


def factor_kernels(kernels: np.ndarray, tol: float):
    """SVD of a stack of kernels (..., kh, kw): column factors (..., kh, kh∧kw), row factors
    (..., kh∧kw, kw), each with sqrt(s) folded in, and the numerical rank of each kernel."""
    wide = np.complex128 if kernels.dtype.kind == "c" else np.float64
    if min(kernels.shape[-2:]) == 1:
        # A 1-D kernel is its own single factor, times 1: exact, NaN-proof, and no SVD (which took
        # 45 ms for 65,536 1×1 kernels). Its rank is 1 unless it is all zeros (tol < 1).
        kernels = kernels.astype(wide)
        ones = np.ones(kernels.shape[:-2] + (1, 1), dtype=wide)
        ranks = np.any(kernels != 0, axis=(-2, -1)).astype(np.int64)
        return (ones, kernels, ranks) if kernels.shape[-2] == 1 else (kernels, ones, ranks)
    u, s, vt = np.linalg.svd(kernels.astype(wide), full_matrices=False)  # vt is V^H: w = u s vt
    ranks = np.count_nonzero(s > tol * s[..., :1], axis=-1)
    root = np.sqrt(s)
    return u * root[..., None, :], vt * root[..., :, None], ranks


# --------------------------------------------------------------------------------------------
# the backend


def _pays_off(rank: int, kernel_h: int, kernel_w: int) -> bool:
    if kernel_h == 1 or kernel_w == 1:
        return True  # a 1-D kernel is one pass of min(kh, kw) == 1 term: never worse than direct
    return rank * (kernel_h + kernel_w) < kernel_h * kernel_w


# Kernel-ready factors of recently used weights (see _weight_cache: never stale, even after in-place updates).
_FACTOR_CACHE_BYTES = 64 << 20
_factors = WeightCache(max_entries=8, max_bytes=_FACTOR_CACHE_BYTES)

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"byte": 2.49e-20, "call": 1.65e-05, "float64_factor": 1.71, "horizontal_mac": 2.43e-11,
                  "kernel": 1.07e-06, "mac": 3.08e-11, "svd_entry": 1.18e-07, "svd_flop": 8.83e-11, "task": 5.19e-07,
                  "vertical_mac": 3.26e-11}

#: The resource each term's constant scales with where the term's name does not say (see
#: :func:`fastconv.auto.constants.term_resource`): the kernels are factored by LAPACK on one thread;
#: a parallel task is a fixed cost of dispatch, like the call.
COST_RESOURCES = {"kernel": "serial_compute", "svd_entry": "serial_compute", "svd_flop": "serial_compute",
                  "task": "call"}


def clear_caches() -> None:
    """Forget the cached factors of every weight."""
    _factors.clear()


class _Factors(NamedTuple):
    """What ``run`` needs of a weight, derived once per weight content (see :func:`_prepare`)."""

    cols: np.ndarray    # (K, Cg, R, kh) in the compute dtype: one contiguous column factor per term
    rows: np.ndarray    # (K, Cg, R, kw) in the compute dtype
    ranks: np.ndarray   # (K, Cg) int64: terms beyond ranks[k, c] are unused
    finite: np.ndarray  # 0-d bool: the weight holds no NaN or infinity


def _prepare(weight: np.ndarray, dtype: np.dtype, tol: float) -> _Factors:
    """The factors of every (k, c) kernel of ``weight`` laid out as the kernels read them."""
    cols, rows, ranks = factor_kernels(weight, tol)
    max_rank = max(int(ranks.max()), 1)
    return _Factors(np.ascontiguousarray(cols[..., :max_rank].transpose(0, 1, 3, 2), dtype=dtype),
                    np.ascontiguousarray(rows[..., :max_rank, :], dtype=dtype), ranks.astype(np.int64),
                    np.array(np.isfinite(weight).all()))


@functools.lru_cache(maxsize=256)
def _tolerance(kernel_shape, dtype) -> float:
    return default_tolerance(kernel_shape, dtype)


def _weight_factors(weight: np.ndarray, spec: ConvSpec) -> _Factors:
    """The :class:`_Factors` of ``weight`` in ``spec``'s dtype, computed once per weight content and
    shared by ``supports_weight`` and ``run``."""
    tol = _tolerance((spec.kernel_height, spec.kernel_width), spec.dtype)
    return _factors.get((weight.shape, weight.dtype.str, spec.dtype.str, tol), weight,
                        lambda: _prepare(weight, spec.dtype, tol))


def supports_weight(weight: np.ndarray, spec: ConvSpec) -> str | None:
    """``None`` when every (k, c) kernel of ``weight`` is low-rank enough to pay off, else why not."""
    kernel_h, kernel_w = spec.kernel_height, spec.kernel_width
    if kernel_h == 1 or kernel_w == 1:
        return None
    if not np.isfinite(weight).all():
        return "weight holds NaN or infinity, which has no low-rank factorisation"
    ranks = _weight_factors(weight, spec).ranks
    worst = np.unravel_index(np.argmax(ranks), ranks.shape)
    rank = int(ranks[worst])
    if _pays_off(rank, kernel_h, kernel_w):
        return None
    most = (kernel_h * kernel_w - 1) // (kernel_h + kernel_w)
    return (f"weight[{worst[0]}, {worst[1]}] has numerical rank {rank}; separable pays off only when "
            f"rank·(kh+kw) < kh·kw, i.e. rank <= {most} for {kernel_h}×{kernel_w} kernels")


# --------------------------------------------------------------------------------------------
# the plan: every size the fused kernel uses, derived from the spec alone

#: Bytes of the ring of horizontally filtered rows one task keeps (it is read once per block of
#: output rows, so it should stay in L2). The strip width follows from it; a smaller
#: ``config.workspace_bytes`` lowers it.
RING_BYTES = 256 << 10

#: Below this many multiply-adds a call runs on the calling thread: waking the others would cost
#: more than the work.
SERIAL_MACS = 1 << 16

#: Vectors per horizontal register block (and the most per vertical block): enough independent
#: FMAs to hide their latency, few enough registers for AVX2's 16.
HORIZONTAL_COLS = 8


#: Rows of the vertical window, or columns of the horizontal reach, beyond which a geometry runs
#: on the plain loops: a ring or row copy that long (a dilation of thousands) would hold mostly
#: padding, and its sizes would overflow for the dilations and strides near 2**62 that
#: ConvSpec accepts.
FUSED_MAX_REACH = 1 << 12


@functools.lru_cache(maxsize=256)
def fits_fused_kernel(spec: ConvSpec) -> bool:
    """True when ``spec`` runs on the fused kernel (real dtype, window and reach within
    :data:`FUSED_MAX_REACH`, column stride at most 16)."""
    (stride_h, stride_w), (dilation_h, dilation_w) = spec.stride, spec.dilation
    if not (spec.dtype.kind == "f" and (spec.kernel_height - 1) * dilation_h < FUSED_MAX_REACH
            and (spec.kernel_width - 1) * dilation_w < FUSED_MAX_REACH and stride_w <= 16):
        return False
    rows, _ = _vertical_block(spec)
    return (rows - 1) * stride_h + (spec.kernel_height - 1) * dilation_h < FUSED_MAX_REACH


@dataclass(frozen=True)
class Plan:
    """How one spec runs on the fused kernel (sizes in elements)."""

    rows: int               # output rows per vertical register block
    vertical_cols: int      # vectors per vertical register block
    horizontal_cols: int    # vectors per horizontal register block
    lanes: int
    window: int             # input rows one vertical block reads: (rows - 1)·s_h + (kh - 1)·d_h + 1
    strip: int              # output columns per strip (a multiple of lanes)
    strips: int
    pitch: int              # ring row pitch: an odd number of cache lines
    phase_length: int       # row length of each column phase of a copied input row
    band_rows: int          # output rows per task (a multiple of rows)
    bands: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _vertical_block(spec: ConvSpec) -> tuple[int, int]:
    """(rows, cols) of the vertical register block.

    A block of ``rows`` output rows reads ``window = (rows - 1)·s_h + (kh - 1)·d_h + 1`` ring rows;
    every vector it loads is shared by all the rows, each with its own tap (zero where the row does
    not read it), so a step costs ``cols`` loads and ``rows · cols`` FMAs, of which ``kh / window``
    are useful. Per output row that is ``window · (rows + 1) / rows`` operations per vector column:
    few rows waste FMAs on small kernels' zero taps, more rows save loads on tall kernels. The
    accumulators, broadcast taps and loaded vectors must fit the registers (one spare), and at
    least 8 accumulators hide the FMA latency. Rows are 1, 2, 4 or 8 and cols as many as fit (at
    most :data:`HORIZONTAL_COLS`), whatever the image's width: every block shape is a kernel to
    compile, so there are few.
    """
    kernel_h, (stride_h, dilation_h) = spec.kernel_height, (spec.stride[0], spec.dilation[0])
    registers = simd.VECTOR_REGISTERS - 1
    best = None
    for rows in (1, 2, 4, 8):
        cols = min(HORIZONTAL_COLS, (registers - rows) // (rows + 1))
        if cols < 1 or (rows > 1 and rows > spec.out_height):
            break
        window = (rows - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
        cost = window * (rows + 1) / rows * max(1.0, 8 / (rows * cols))
        if best is None or cost < best[0] - 1e-9:
            best = (cost, rows, cols)
    return best[1], best[2]


@functools.lru_cache(maxsize=256)
def plan(spec: ConvSpec, threads: int, ring_bytes: int) -> Plan:
    """The :class:`Plan` for ``spec`` with ``threads`` threads and a ring of at most ``ring_bytes``."""
    lanes = simd.lanes(spec.dtype)
    itemsize = spec.dtype.itemsize
    rows, vertical_cols = _vertical_block(spec)
    horizontal_cols = HORIZONTAL_COLS
    (stride_h, stride_w), (dilation_h, dilation_w) = spec.stride, spec.dilation
    window = (rows - 1) * stride_h + (spec.kernel_height - 1) * dilation_h + 1
    # strips as wide as the ring allows, all about equally wide
    widest = max(1, ring_bytes // (window * itemsize * lanes)) * lanes
    strips = _ceil_div(spec.out_width, widest)
    strip = _ceil_div(_ceil_div(spec.out_width, strips), lanes) * lanes
    strips = _ceil_div(spec.out_width, strip)
    strip_vectors = strip // lanes
    needed = max(_ceil_div(strip_vectors, horizontal_cols) * horizontal_cols,
                 _ceil_div(strip_vectors, vertical_cols) * vertical_cols) * lanes * itemsize
    # Rows an even number of cache lines apart (16 KiB for a 4096-wide float32 strip) fall into
    # the same L1 sets, and the 10-70 rows a vertical block reads would evict each other.
    lines = _ceil_div(needed, 64)
    pitch = (lines + 1 - lines % 2) * 64 // itemsize
    phase_length = pitch + (spec.kernel_width - 1) * dilation_w // stride_w
    # enough tasks for every thread to get several, but bands tall enough that re-reading the
    # window's overlap at each band's top costs little
    planes = spec.batch * spec.out_channels * strips
    bands_wanted = max(1, min(_ceil_div(4 * threads, planes), spec.out_height // max(1, 4 * window)))
    band_rows = _ceil_div(_ceil_div(spec.out_height, bands_wanted), rows) * rows
    return Plan(rows, vertical_cols, horizontal_cols, lanes, window, strip, strips, pitch, phase_length, band_rows,
                _ceil_div(spec.out_height, band_rows))


# --------------------------------------------------------------------------------------------
# the fused kernel


@njit(inline="always")
def _copy_row(flat_x, row_start, width, image_left, scratch, phase_length, stride_w):
    """``scratch[p·phase_length + q] = row[image_left + p + q·s_w]``, 0 outside the row: the zero
    padding materialised, and the columns a strided row pass reads made contiguous."""
    if stride_w == 1:
        first = min(phase_length, max(0, -image_left))
        stop = min(phase_length, max(first, width - image_left))
        scratch[:first] = 0
        scratch[first:stop] = flat_x[row_start + image_left + first:row_start + image_left + stop]
        scratch[stop:phase_length] = 0
        return
    for phase in range(stride_w):
        for q in range(phase_length):
            column = image_left + phase + q * stride_w
            scratch[phase * phase_length + q] = flat_x[row_start + column] if 0 <= column < width else 0


@functools.lru_cache(maxsize=None)
def _fused_kernel(rows: int, vertical_cols: int, horizontal_cols: int):
    """The fused kernel for a ``rows × vertical_cols`` vertical block and a ``1 × horizontal_cols``
    horizontal block (compile-time constants)."""
    block_rows, block_cols, row_cols, version = rows, vertical_cols, horizontal_cols, simd.SOURCE_VERSION

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def kernel(x, col_factors, row_factors, ranks, bias, out, direct_taps, copied_taps, window, strip, strips,
               pitch, phase_length, band_rows, bands, pad_top, pad_left, stride_h, stride_w, dilation_h,
               dilation_w, groups):
        """out[n, k] = bias[k] + sum over c and rank terms of vertical(horizontal(x[n, c]))."""
        version  # noqa: B018 (the simd version in the closure: part of numba's cache key)
        lanes = simd.lanes(x.dtype)
        batch, channels, height, width = x.shape
        out_channels, channels_per_group, max_rank, kernel_h = col_factors.shape
        kernel_w = row_factors.shape[3]
        out_h, out_w = out.shape[2], out.shape[3]
        outs_per_group = out_channels // groups
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)
        flat_cols, flat_rows = col_factors.reshape(-1), row_factors.reshape(-1)
        reach = (kernel_w - 1) * dilation_w
        for task in prange(batch * out_channels * bands * strips):
            strip_index = task % strips
            band = (task // strips) % bands
            k = (task // (strips * bands)) % out_channels
            image = task // (strips * bands * out_channels)
            group = k // outs_per_group
            first_row, first_col = band * band_rows, strip_index * strip
            last_row, last_col = min(out_h, first_row + band_rows), min(out_w, first_col + strip)
            row_tiles = (last_col - first_col + row_cols * lanes - 1) // (row_cols * lanes)
            col_tiles = (last_col - first_col + block_cols * lanes - 1) // (block_cols * lanes)
            image_left = first_col * stride_w - pad_left  # the image column under the strip's first tap
            # interior strips read the input rows in place; the others from a zero-padded copy
            direct = stride_w == 1 and image_left >= 0 and image_left + row_tiles * row_cols * lanes + reach <= width
            ring = np.zeros(window * pitch, dtype=x.dtype)
            scratch = np.zeros(stride_w * phase_length, dtype=x.dtype)
            band_taps = np.empty(block_rows * window, dtype=x.dtype)
            ring_rows = np.empty(window, dtype=np.int64)
            out_base = (image * out_channels + k) * out_h * out_w
            shift = simd.broadcast(bias[k])
            terms = 0
            for c in range(channels_per_group):
                plane = (image * channels + group * channels_per_group + c) * height * width
                for r in range(ranks[k, c]):
                    col_at = ((k * channels_per_group + c) * max_rank + r) * kernel_h
                    row_at = ((k * channels_per_group + c) * max_rank + r) * kernel_w
                    # row m of the block reads ring row m·s_h + u·d_h through tap u
                    band_taps[:] = 0
                    for m in range(block_rows):
                        for u in range(kernel_h):
                            band_taps[m * window + m * stride_h + u * dilation_h] = flat_cols[col_at + u]
                    next_row = first_row * stride_h - pad_top  # the first input row not yet in the ring
                    for i0 in range(first_row, last_row, block_rows):
                        valid = min(block_rows, last_row - i0)
                        y0 = i0 * stride_h - pad_top
                        # the horizontal pass of the rows entering the window, into the ring
                        for y in range(max(next_row, y0), y0 + window):
                            at = (y % window) * pitch
                            if y < 0 or y >= height:  # zero padding: a zero row
                                ring[at:at + row_tiles * row_cols * lanes] = 0
                                continue
                            if direct:
                                source, start, taps = flat_x, plane + y * width + image_left, direct_taps
                            else:
                                _copy_row(flat_x, plane + y * width, width, image_left, scratch, phase_length,
                                          stride_w)
                                source, start, taps = scratch, 0, copied_taps
                            for tile in range(row_tiles):
                                acc = simd.block_zero(1, row_cols, ring)
                                acc = simd.block_fma_loop(acc, flat_rows, row_at, 0, 1, source,
                                                          start + tile * row_cols * lanes, lanes, taps, 1, 0)
                                for n in range(row_cols):
                                    simd.store(ring, at + (tile * row_cols + n) * lanes, acc[0][n])
                        next_row = y0 + window
                        for e in range(window):
                            ring_rows[e] = ((y0 + e) % window) * pitch
                        # the vertical pass of the window, into the output
                        for tile in range(col_tiles):
                            j0 = first_col + tile * block_cols * lanes
                            acc = simd.block_zero(block_rows, block_cols, ring)
                            acc = simd.block_fma_loop(acc, band_taps, 0, window, valid, ring,
                                                      tile * block_cols * lanes, lanes, ring_rows, 1, 0)
                            # A block's zero taps meet every ring row, and 0 · inf is NaN: where the
                            # block holds NaN, its rows are summed again over their own taps only.
                            check = simd.zero(ring)
                            for m in range(valid):
                                for n in range(block_cols):
                                    check = simd.add(check, acc[m][n])
                            total = simd.hsum(check)
                            exact = total != total
                            for m in range(valid):
                                row_base = out_base + (i0 + m) * out_w
                                for n in range(block_cols):
                                    j = j0 + n * lanes
                                    if j >= last_col:
                                        break
                                    value = acc[m][n]
                                    if exact:
                                        value = simd.zero(ring)
                                        for u in range(kernel_h):
                                            value = simd.fma(simd.broadcast(flat_cols[col_at + u]), simd.load(
                                                ring, ring_rows[m * stride_h + u * dilation_h] + j - first_col),
                                                value)
                                    count = min(lanes, last_col - j)
                                    if terms == 0:
                                        value = simd.add(value, shift)
                                    else:
                                        value = simd.add(value, simd.load_lanes(flat_out, row_base + j, 0, count))
                                    if count == lanes:
                                        simd.store(flat_out, row_base + j, value)
                                    else:
                                        simd.store_lanes(flat_out, row_base + j, value, 0, count)
                    terms += 1
            if terms == 0:  # every kernel of the filter is zero: the bias alone
                for i in range(first_row, last_row):
                    flat_out[out_base + i * out_w + first_col:out_base + i * out_w + last_col] = bias[k]

    return ParallelKernel(kernel)


class _Launch:
    """The kernel and its scalar arguments for one spec, worked out once."""

    def __init__(self, spec: ConvSpec, threads: int, ring_bytes: int):
        layout = plan(spec, threads, ring_bytes)
        kernel = _fused_kernel(layout.rows, layout.vertical_cols, layout.horizontal_cols)
        macs = spec.batch * spec.out_channels * spec.in_channels_per_group * (spec.kernel_height + spec.kernel_width) \
            * spec.out_height * spec.out_width
        self.kernel = kernel.serial() if macs < SERIAL_MACS else kernel
        (stride_h, stride_w), (dilation_h, dilation_w) = spec.stride, spec.dilation
        offsets = [v * dilation_w for v in range(spec.kernel_width)]
        self.zero_bias = np.zeros(spec.out_channels, dtype=spec.dtype)
        self.arguments = (
            np.array(offsets, dtype=np.int64),
            np.array([offset % stride_w * layout.phase_length + offset // stride_w for offset in offsets],
                     dtype=np.int64),
            layout.window, layout.strip, layout.strips, layout.pitch, layout.phase_length, layout.band_rows,
            layout.bands, spec.padding[0][0], spec.padding[1][0], stride_h, stride_w, dilation_h, dilation_w,
            spec.groups)


@functools.lru_cache(maxsize=256)
def _launch(spec: ConvSpec, threads: int, ring_bytes: int) -> _Launch | None:
    """The fused kernel's launch for ``spec``, or None where ``spec`` runs on the plain loops."""
    return _Launch(spec, threads, ring_bytes) if fits_fused_kernel(spec) else None


# --------------------------------------------------------------------------------------------
# complex dtypes and far-reaching geometry: plain loops, one output row per task


@ParallelKernel
@njit(cache=True, parallel=True, fastmath=FAST_MATH)
def _plain_kernel(x, cols, rows, ranks, out, top, left, stride_h, stride_w, dilation_h, dilation_w, groups):
    """out[n, k] += sum over c and rank terms r of rowpass(colpass(x[n, c], cols[k, c, r]), rows[k, c, r]).

    ``x`` is unpadded: rows and columns outside it (the zero padding) are skipped, not read.
    cols (K, Cg, R, kh), rows (K, Cg, R, kw), ranks (K, Cg): terms beyond ranks[k, c] are unused.
    """
    batch, _, height, width = x.shape
    out_channels, channels_per_group, _, kernel_h = cols.shape
    kernel_w = rows.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    outs_per_group = out_channels // groups
    used_w = (out_w - 1) * stride_w + (kernel_w - 1) * dilation_w + 1  # padded columns the row pass reads
    first_col = min(left, used_w)                  # padded columns [first_col, last_col) hold x
    last_col = max(min(left + width, used_w), first_col)
    for task in prange(batch * out_channels * out_h):
        n = task // (out_channels * out_h)
        k = (task // out_h) % out_channels
        i = task % out_h
        group = k // outs_per_group
        column_pass = np.zeros(used_w, dtype=out.dtype)
        for c in range(channels_per_group):
            channel = group * channels_per_group + c
            for r in range(ranks[k, c]):
                inside = column_pass[first_col:last_col]  # the columns that hold x, not padding
                inside[:] = 0
                for u in range(kernel_h):
                    source_row = i * stride_h + u * dilation_h - top
                    if 0 <= source_row < height:
                        tap = cols[k, c, r, u]
                        source = x[n, channel, source_row, first_col - left:]
                        for col in range(last_col - first_col):
                            inside[col] += source[col] * tap
                target = out[n, k, i]
                for v in range(kernel_w):
                    tap = rows[k, c, r, v]
                    offset = v * dilation_w
                    for j in range(out_w):
                        target[j] += column_pass[j * stride_w + offset] * tap


# --------------------------------------------------------------------------------------------
# the backend entry point


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    if spec.batch == 0:
        return np.empty(spec.out_shape, dtype=spec.dtype)
    # The factors come from the cache: on small images a call's Python work would otherwise push
    # the gap between two calls' parallel kernels past the time idle OpenMP workers spin before
    # they sleep, and waking them costs more than the kernel.
    cols, rows, ranks, finite = _weight_factors(weight, spec)
    if not finite:
        # Only 1-D kernels get here with NaN or inf (supports_weight declines the rest). Both
        # kernels skip the zero padding, exact for finite taps; a NaN or inf tap must meet the
        # padding too (0·NaN is NaN, as in torch), so the padding is materialised.
        x = pad_input(x, spec)
        spec = spec.zero_padded()
    x = np.ascontiguousarray(x)
    launch = _launch(spec, config.threads, min(RING_BYTES, config.workspace_bytes))
    if launch is None:
        out = np.zeros(spec.out_shape, dtype=spec.dtype)
        if bias is not None:
            out += bias[None, :, None, None]
        (top, _), (left, _) = spec.padding
        _plain_kernel(x, cols, rows, ranks, out, top, left, *spec.stride, *spec.dilation, spec.groups)
        return out
    out = np.empty(spec.out_shape, dtype=spec.dtype)
    bias = launch.zero_bias if bias is None else np.ascontiguousarray(bias)
    launch.kernel(x, cols, rows, ranks, bias, out, *launch.arguments)
    return out


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """The work of the fused kernel: a horizontal and a vertical pass per rank term, after an SVD.

    ``horizontal_mac``: the horizontal pass's multiply-adds, ``kw`` per ring element, over whole
    horizontal blocks (every input row a band's windows read, the rows of each band's overlap
    again). ``vertical_mac``: the vertical blocks' multiply-adds, ``window`` per block row and
    vector, zero taps and whole blocks included. ``task``: the parallel tasks. ``byte``: input,
    output and weight. The plain loops (complex dtypes, far-reaching geometry) count ``mac``:
    ``kh + kw`` per output and term. The rank comes from the weight values, not the spec (None: unknown,
    assume full rank).
    """
    if rank is None:
        rank = min(spec.kernel_height, spec.kernel_width)
    pairs = spec.batch * spec.out_channels * spec.in_channels_per_group * rank
    work = dtype_work(spec.dtype)
    if not fits_fused_kernel(spec):
        terms = {"call": 1.0, "byte": io_bytes(spec),
                 "mac": pairs * (spec.kernel_height + spec.kernel_width) * spec.out_height * spec.out_width * work}
    else:
        layout = plan(spec, config.threads, min(RING_BYTES, config.workspace_bytes))
        stride_h = spec.stride[0]
        strip_vectors = layout.strip // layout.lanes
        horizontal_width = _ceil_div(strip_vectors, layout.horizontal_cols) * layout.horizontal_cols * layout.lanes
        vertical_width = _ceil_div(strip_vectors, layout.vertical_cols) * layout.vertical_cols * layout.lanes
        blocks = _ceil_div(layout.band_rows, layout.rows) * layout.bands
        # rows a band's windows read: its own rows' stride steps plus one window's overlap
        ring_rows = min(spec.padded_height, layout.bands * ((layout.band_rows - layout.rows) * stride_h + layout.window))
        per_strip = pairs * layout.strips
        terms = {"call": 1.0, "byte": io_bytes(spec),
                 "horizontal_mac": float(per_strip * ring_rows * horizontal_width * spec.kernel_width),
                 "vertical_mac": float(per_strip * blocks * layout.rows * layout.window * vertical_width),
                 "task": float(spec.batch * spec.out_channels * layout.bands * layout.strips)}
    kernels = spec.out_channels * spec.in_channels_per_group
    entries = kernels * spec.kernel_height * spec.kernel_width
    smaller = min(spec.kernel_height, spec.kernel_width)
    if smaller == 1:
        return terms  # a 1-D kernel is its own factor: no SVD
    # float64 factors (kh x r, r x kw, rank) of every kernel, plus the cache's copy of the weight
    factor_bytes = 8 * kernels * (spec.kernel_height * smaller + smaller * spec.kernel_width + 1) \
        + entries * spec.dtype.itemsize
    if factor_bytes <= _FACTOR_CACHE_BYTES:
        return terms  # factored once per weight and cached: later calls (a loop) do not pay it
    # Otherwise every call factors each (k, c) kernel by a float64 SVD (LAPACK, one thread): a fixed
    # cost per kernel, plus n^3 flops, plus per-entry work that dominates up to n ~ 100 (a 31x31
    # kernel takes 0.1 ms here, a 63x63 one 0.5 ms, a 101x101 one 1.4 ms: n^2.4).
    return {**terms, "kernel": float(kernels), "svd_entry": float(entries), "svd_flop": float(entries * smaller)}
