"""``fft``: convolution through the convolution theorem, on pyFFTW.

Cross-correlation of an image ``x`` with a kernel ``w`` is a product in the frequency domain::

    out = IFFT( FFT(x) · conj(FFT(conj(w))) )           (cyclic, on a T_h × T_w grid)

The cyclic result equals the direct one wherever the kernel window does not wrap around the grid,
so a grid of at least ``(out - 1) * stride + kernel extent`` samples per axis gives every output
exactly. The cost is a handful of ``O(T log T)`` transforms, whatever the kernel size: FFT wins
when kernels are large (roughly 9×9 and up on one channel, earlier with many channels), where the
direct method pays ``kh · kw`` multiply-adds per output.

How this backend does it, step by step:

1. **Grid size.** Each transform axis is padded to a size FFTW handles fast (a product of 2, 3,
   5 and 7); the last axis is also made *even*, because real-to-complex transforms of odd length
   are markedly slower (``pyfftw.next_fast_len`` happily returns odd sizes like 2079 = 3³·7·11;
   see ``docs/performance/fft.md``).
2. **Tiles (overlap-save).** A large image with a moderate kernel is cut into overlapping tiles
   of a few hundred pixels whose valid outputs abut: memory stays bounded by
   ``fastconv.config.workspace_bytes`` and the transforms stay cache-sized. The tile size comes
   from a small cost model (transform work per valid output); one tile covering everything is one
   of the candidates, so small images and huge kernels are transformed whole. With one input
   channel per group (single-channel images, batches of them, depthwise layers) and many tiles,
   each thread takes one tile at a time through all the steps below in its own single-threaded
   plans, so that a tile's work stays in the core's cache (``_convolve_planes``); otherwise the
   tiles go through each step together, in batches as large as the workspace allows.
3. **Transforms.** Real inputs use real-to-complex transforms (half the spectrum), complex inputs
   complex-to-complex ones. Plans are FFTW objects with their own aligned buffers
   (``pyfftw.empty_aligned``), built once per (shape, dtype, threads, planner effort) and reused
   from a bounded pool; a thread checks a plan out for the duration of a call, so no two threads
   ever share buffers. Every input channel of every tile is transformed once, in one batched plan.
4. **Channels.** The spectra are combined with one small complex GEMM per frequency bin,
   ``Y[bin] (tiles, K) = X[bin] (tiles, C) @ W[bin]ᵀ (C, K)``, per group; with one input channel
   per group (single-channel images, depthwise layers) it is a plain elementwise product.
5. **Inverse.** One inverse transform per output channel and tile, again one batched plan. The
   complex-to-real inverse destroys its input, which is fine: the input is the plan's own buffer.
6. **Stride and dilation.** Along an axis with stride 1, a kernel dilated by ``d`` with many
   channels (spectra above 32 MB) is split off by space-to-batch (TensorFlow's ``atrous_conv2d`` does the same): output rows ``i ≡ r (mod d)``
   read only the padded input rows ``≡ r (mod d)``, so the convolution is ``d`` *undilated* ones
   on the interleaved sub-images ``x_pad[r::d]``, run as one batch and interleaved back. Otherwise
   the zero-inserted kernel would be transformed on a grid spanning its whole dilated extent:
   deeplabv3's 3×3 kernels with dilation 12 span 25×25, and the spectra of 256×256 of them on the
   90×90 grid were 2 GB per call (2.3 s; 42 ms split, see ``docs/performance/fft.md``). With stride
   > 1 the dilation stays in the kernel. Stride keeps every ``stride``-th sample of the stride-1
   result: FFT convolution computes all outputs at once, so it does not get faster with stride (it
   does not get slower either).

Filter spectra are cached, because a network or an image pipeline applies the same weights again
and again and transforming them is often the larger half of the work. The cache keeps a private
copy of every weight it has transformed and serves a spectrum only when the weight now passed is
*equal, element for element,* to that copy (``np.array_equal``, a memory-speed comparison far
cheaper than the transform). Mutating a weight in place, or passing a new array with other values
at the same address, therefore never returns a stale spectrum.

NaN, infinity and huge values: a single non-finite value would spread over the whole FFT output
(every frequency bin sees every pixel), and a transform's partial sums can overflow where the
direct sum would not. So before transforming, the backend bounds what the transforms can reach
from ``max|x|`` (one read of the input, at memory speed) and the largest ``sum|w|`` of a filter:
every value in the forward transform, the per-bin products and the inverse transform is at most
``T_h·T_w · max|x| · max(1, max_k sum|w_k|)`` (complex inputs: twice that). When that bound is
NaN, infinite or above the dtype's largest value (a NaN or inf in the input or weight, or values
within a factor of about the grid size of the dtype's limit), the whole call is handed to direct
summation (the ``im2col`` backend's GEMMs), which puts NaN and inf exactly where direct
convolution does. As a second line, every tile's inverse transform is checked at its first sample
(a sum over all bins, so non-finite whenever any bin is): free, and it sends the call to direct
summation too.

Accuracy: the rounding error of an FFT convolution grows with ``log T`` and is spread evenly
over all outputs, relative to the *largest* values involved, so small outputs carry larger
relative error than with direct summation (one value of 1e300 in an image of ones leaves errors
of about 1e284 in every output of its tile). Float32 results agree with the float64 reference to
about 1e-6 of the largest output, float64 ones to about 1e-15.

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.random.default_rng(0).standard_normal((1, 1, 64, 64))
>>> w = np.ones((1, 1, 15, 15)) / 225
>>> y = fastconv.conv2d(x, w, padding="same", backend="fft")
>>> bool(np.allclose(y, fastconv.conv2d(x, w, padding="same", backend="naive")))
True
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pyfftw

from fastconv import config
from fastconv.thread_pools import reinitialise_after_fork, run_on_threads
from fastconv.backends._weight_cache import WeightCache
from fastconv.backends.work import dtype_work, io_bytes
from fastconv.geometry import ConvSpec, check_fits

name = "fft"
thread_pool = "fftw"  # see fastconv.backends: what auto charges for switching pools

__all__ = ["available", "supports", "run", "fast_even_length", "clear_caches", "cache_info"]

# Idle plans kept for reuse (count and bytes of their buffers, all shapes together) and filter
# spectra kept (count and bytes).
_MAX_IDLE_PLANS = 16
_MAX_IDLE_PLAN_BYTES = 256 << 20
_MAX_SPECTRA = 8
_MAX_SPECTRUM_BYTES = 256 << 20
# Overlap-save tiles start at this size per axis (smaller ones cost more per output in per-tile
# work than they save; tests lower it to tile small images).
_SMALLEST_TILE = 64
# Grids above this many points run measurably slower per point (they leave L2); see _choose_tiles.
_CACHE_FRIENDLY_POINTS = 1 << 19
# One input channel per group: tiles are streamed one by one per thread (see _convolve_planes)
# when all of them together would take more than this (less stays in cache batched) and there
# are at least two per thread.
_STREAM_ABOVE_BYTES = 4 << 20
# What a tile costs beyond its transforms, in units of the model's transform work (points ·
# log2 points per transform): the Python work of cutting it out and writing it back, ~10 µs
# batched, ~20 µs streamed (a 256² tile's two transforms, 2.1e6 units, take ~350 µs).
_TILE_OVERHEAD = 2e4
_STREAMED_TILE_OVERHEAD = 1.2e5
# Elements per slab when spectra are reordered between the transforms' and the GEMMs' layouts.
_REORDER_BLOCK_ELEMENTS = 1 << 14
# Dilated stride-1 axes are split into sub-images when the dilated kernels' spectra would exceed
# this, and the sub-images are not too many; see _dilation_phases.
_SPLIT_SPECTRUM_BYTES = 32 << 20
_MAX_SUB_IMAGES = 4096

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"bin_flop": 3.57e-17, "bin_gemm": 8.23e-08, "bin_gemm_flop": 5.83e-11, "byte": 1.26e-10,
                  "call": 8.57e-05, "fft_flop": 4.05e-11, "filter_spectrum_byte": 1.01e-12, "float64_factor": 1.04,
                  "streamed_tile": 1.94e-05, "tile": 1.07e-11}

#: The resource each term's constant scales with where the term's name does not say (see
#: :func:`fastconv.auto.constants.term_resource`): ``bin_gemm`` counts the small GEMMs, one
#: call each, whose cost is the call, not its flops.
COST_RESOURCES = {"bin_gemm": "call"}


def available() -> str | None:
    return None  # pyfftw imported above; an ImportError makes the registry report why


def supports(spec: ConvSpec) -> str | None:
    return None  # every geometry, groups, float32/float64 and complex64/complex128


# --------------------------------------------------------------------------------------------
# transform sizes and tiles


def fast_even_length(n: int) -> int:
    """The smallest size >= ``n`` that FFTW transforms fast *and* that is even.

    Real-to-complex transforms of odd length take a slower path in FFTW, and
    ``pyfftw.next_fast_len`` may return odd sizes (it counts 3, 5, 7, 11 and 13 as fast).

    >>> import pyfftw
    >>> pyfftw.next_fast_len(2078), fast_even_length(2078)
    (2079, 2080)
    """
    size = pyfftw.next_fast_len(max(int(n), 2))
    while size % 2:
        size = pyfftw.next_fast_len(size + 1)
    return size


def _axis_tiling(out: int, extent: int, stride: int, tile: int) -> tuple[int, int]:
    """(outputs per tile, tiles) when a ``tile``-long grid computes ``out`` strided outputs."""
    per_tile = (tile - extent) // stride + 1
    return per_tile, -(-out // per_tile)


def _streams_planes(spec: ConvSpec, grid: tuple[int, int], tiles: int) -> bool:
    """Whether :func:`_convolve_planes` runs this convolution: one input channel per group, tiles
    that together would not stay in cache batched, and at least two of them per thread."""
    if spec.in_channels_per_group != 1:
        return False
    points = grid[0] * grid[1]
    bins = points if spec.dtype.kind == "c" else grid[0] * (grid[1] // 2 + 1)
    items = spec.batch * spec.groups * tiles
    item_bytes = (1 + spec.out_channels_per_group) * (points + 2 * bins) * spec.dtype.itemsize
    return items >= 2 * config.threads and items * item_bytes > _STREAM_ABOVE_BYTES


def _choose_tiles(spec: ConvSpec, complex_data: bool) -> tuple[int, int]:
    """Transform grid (T_h, T_w): the single whole-image grid or the cheapest overlap-save tile.

    The cost model counts transform work, ``T log2 T`` per channel per tile, over every tile
    needed, plus the per-bin channel product and a fixed cost per tile; a tile too large for the
    workspace is dismissed unless nothing smaller works. Tiles are powers of two (fast and even)
    from 4× the kernel up, and, where tiles are streamed plane by plane (one input channel per
    group), also three times powers of two from 2× the kernel up: with a cheap product and each
    tile's work in cache, the overlap a tile wastes is what decides, and finer steps of size
    waste less (a 31×31 kernel: 384² tiles keep 85% of their outputs, 256² ones 78%).
    """
    extent_h, extent_w = spec.dilated_kernel
    (stride_h, stride_w), (out_h, out_w) = spec.stride, (spec.out_height, spec.out_width)
    whole_h = pyfftw.next_fast_len((out_h - 1) * stride_h + extent_h)
    whole_w = fast_even_length((out_w - 1) * stride_w + extent_w)
    planes = spec.in_channels_per_group == 1

    def candidates(whole, extent, stride):
        sizes = {whole}
        size = _SMALLEST_TILE
        while size < whole:
            if size >= 4 * extent + stride:
                sizes.add(size)
            if planes and 3 * size // 2 < whole and 3 * size // 2 >= 2 * extent + stride:
                sizes.add(3 * size // 2)
            if planes and size >= 2 * extent + stride:
                sizes.add(size)
            size *= 2
        return sorted(sizes)

    channels, outs = spec.in_channels, spec.out_channels
    item_bytes = spec.dtype.itemsize
    best = None
    for tile_h in candidates(whole_h, extent_h, stride_h):
        for tile_w in candidates(whole_w, extent_w, stride_w):
            _, tiles_h = _axis_tiling(out_h, extent_h, stride_h, tile_h)
            _, tiles_w = _axis_tiling(out_w, extent_w, stride_w, tile_w)
            points = tile_h * tile_w
            bins = points if complex_data else tile_h * (tile_w // 2 + 1)
            streamed = _streams_planes(spec, (tile_h, tile_w), tiles_h * tiles_w)
            overhead = _STREAMED_TILE_OVERHEAD * spec.groups if streamed else _TILE_OVERHEAD
            per_tile = (points * math.log2(points) * (channels + outs)
                        + 4 * bins * outs * spec.in_channels_per_group + overhead)
            if points > _CACHE_FRIENDLY_POINTS:  # transforms that leave the caches run slower per point
                per_tile *= 1.25
            cost = per_tile * tiles_h * tiles_w * spec.batch
            tile_bytes = (channels + outs) * (points + 2 * bins) * item_bytes
            too_big = tile_bytes > config.workspace_bytes and (tiles_h, tiles_w) == (1, 1)
            key = (too_big, cost)
            if best is None or key < best[0]:
                best = (key, (tile_h, tile_w))
    return best[1]


# --------------------------------------------------------------------------------------------
# plans: FFTW objects with their own aligned buffers, checked out by one thread at a time


def _plan_bytes(plan) -> int:
    return plan.input_array.nbytes + plan.output_array.nbytes


class _PlanPool:
    """Idle FFTW plans by key. ``checkout`` lends one to the calling thread (building a new one
    when all are busy) and takes it back afterwards; at most ``max_idle`` plans holding at most
    ``max_bytes`` of buffers are kept, least recently used first out, and a plan larger than
    ``max_bytes`` on its own is not kept at all. (Building plans from several threads at once is
    safe: pyFFTW serialises FFTW's planner under its own lock.)"""

    def __init__(self, max_idle: int, max_bytes: int):
        self._max_idle, self._max_bytes = max_idle, max_bytes
        self._idle: OrderedDict[tuple, list] = OrderedDict()  # never holds an empty list
        self._count = self._bytes = 0
        self._lock = reinitialise_after_fork(threading.Lock())
        self.built = 0  # plans built so far (for tests and cache_info)

    @contextmanager
    def checkout(self, key, build):
        with self._lock:
            plans = self._idle.get(key)
            plan = plans.pop() if plans else None
            if plan is not None:
                if not plans:  # an empty list would be "the oldest" to evict from, with nothing in it
                    del self._idle[key]
                self._count -= 1
                self._bytes -= _plan_bytes(plan)
        if plan is None:
            plan = build()
            with self._lock:
                self.built += 1
        try:
            yield plan
        finally:
            self._give_back(key, plan)

    def _give_back(self, key, plan) -> None:
        size = _plan_bytes(plan)
        with self._lock:
            if size > self._max_bytes:  # keeping it would evict every other plan, then itself
                return
            self._idle.setdefault(key, []).append(plan)
            self._idle.move_to_end(key)
            self._count += 1
            self._bytes += size
            while self._count > self._max_idle or self._bytes > self._max_bytes:  # drop the LRU
                oldest, plans = next(iter(self._idle.items()))
                self._bytes -= _plan_bytes(plans.pop())
                self._count -= 1
                if not plans:
                    del self._idle[oldest]

    def clear(self):
        with self._lock:
            self._idle.clear()
            self._count = self._bytes = 0


_plans = _PlanPool(_MAX_IDLE_PLANS, _MAX_IDLE_PLAN_BYTES)


def _build_plan(batch: int, grid: tuple[int, int], dtype: np.dtype, inverse: bool, threads: int, effort: str):
    """An FFTW object transforming ``batch`` grids at once over the last two axes."""
    real = dtype.kind == "f"
    complex_dtype = np.result_type(dtype, np.complex64)
    spatial = (batch,) + grid
    spectral = (batch, grid[0], grid[1] // 2 + 1) if real else spatial
    if inverse:
        source = pyfftw.empty_aligned(spectral, complex_dtype)
        target = pyfftw.empty_aligned(spatial, dtype)
        direction = "FFTW_BACKWARD"
    else:
        source = pyfftw.empty_aligned(spatial, dtype)
        target = pyfftw.empty_aligned(spectral, complex_dtype)
        direction = "FFTW_FORWARD"
    # DESTROY_INPUT lets the c2r inverse use its faster in-place algorithms: its input is ours.
    flags = (effort, "FFTW_DESTROY_INPUT") if inverse else (effort,)
    return pyfftw.FFTW(source, target, axes=(-2, -1), direction=direction, flags=flags, threads=threads)


# pyFFTW's FFTW runs multi-threaded plans on GNU OpenMP, whose thread pool does not survive fork:
# in a child forked after a threaded plan ran, a threaded plan waits forever for threads that are
# not there. Such a child gets single-threaded plans (see _after_fork_in_child).
_threaded_plans_built = False
_threads_allowed: int | None = None  # a cap on plan threads (1 in such a child), or None


def _after_fork_in_child() -> None:
    global _threads_allowed
    if _threaded_plans_built:
        _threads_allowed = 1
        _plans.clear()  # the parent's threaded plans must never run here


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def _plan(batch: int, grid: tuple[int, int], dtype: np.dtype, inverse: bool, threads: int | None = None):
    global _threaded_plans_built
    threads, effort = config.threads if threads is None else threads, config.fftw_planner
    if _threads_allowed is not None:
        threads = min(threads, _threads_allowed)
    if threads > 1:
        _threaded_plans_built = True
    key = (batch, grid, dtype.str, inverse, threads, effort)
    with _plans.checkout(key, lambda: _build_plan(batch, grid, dtype, inverse, threads, effort)) as plan:
        yield plan


# --------------------------------------------------------------------------------------------
# filter spectra, cached against an exact copy of the weight


_spectra = WeightCache(_MAX_SPECTRA, _MAX_SPECTRUM_BYTES)


def clear_caches() -> None:
    """Forget every cached FFTW plan and filter spectrum (FFTW's wisdom is kept)."""
    _plans.clear()
    _spectra.clear()


def cache_info() -> dict:
    """Counters of the plan pool and the spectrum cache (plans built, spectrum hits and misses)."""
    return {"plans_built": _plans.built, "spectrum_hits": _spectra.hits, "spectrum_misses": _spectra.misses}


def _filter_spectrum(weight: np.ndarray, spec: ConvSpec, grid: tuple[int, int]) -> np.ndarray:
    """Correlation spectra of every (k, c) filter on ``grid``, scaled by 1 / grid size.

    Layout: (K, bins) when each group has one input channel (the product is elementwise), else
    (groups, bins, K // groups, C // groups), ready for one complex GEMM per bin.
    """
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    dilation_h, dilation_w = spec.dilation
    extent_h, extent_w = spec.dilated_kernel
    groups, count = spec.groups, out_channels * channels_per_group
    # FFTW's inverse is unnormalised: scale the few kernel taps rather than every bin
    kernels = weight.reshape(count, kernel_h, kernel_w) * (1.0 / (grid[0] * grid[1]))
    if spec.dtype.kind == "c":  # conj(FFT(conj w)) is the spectrum of w reversed: a correlation
        kernels = np.conj(kernels)
    bins = grid[0] * (grid[1] if spec.dtype.kind == "c" else grid[1] // 2 + 1)
    complex_dtype = np.result_type(spec.dtype, np.complex64)
    if channels_per_group == 1:
        spectrum = np.empty((count, bins), dtype=complex_dtype)
    else:  # bins-major; (K/g, C/g) flattened, which is the order of the filters within a group
        spectrum = np.empty((groups, bins, count // groups), dtype=complex_dtype)
    per_group = count // groups
    per_filter_bytes = 3 * grid[0] * grid[1] * spec.dtype.itemsize
    chunk = _equal_chunk(per_group, config.workspace_bytes // per_filter_bytes)
    # Chunks step through each group on their own: a chunk never straddles two groups, and when
    # the chunk does not divide the filters per group, the next group still starts a chunk.
    starts = [group * per_group + offset for group in range(groups) for offset in range(0, per_group, chunk)]
    for start in starts:
        stop = min(start + chunk, (start // per_group + 1) * per_group)
        with _plan(stop - start, grid, spec.dtype, inverse=False) as forward:
            source = forward.input_array
            source[...] = 0
            # the zero-inserted (dilated) kernel in the top-left corner of the grid
            source[:, :extent_h:dilation_h, :extent_w:dilation_w] = kernels[start:stop]
            forward.execute()
            spectra = forward.output_array.reshape(stop - start, bins)
            if channels_per_group == 1:
                np.conjugate(spectra, out=spectrum[start:stop])
                continue
            group, offset = divmod(start, per_group)
            target = spectrum[group, :, offset:offset + stop - start]
            for first in range(0, bins, 256):  # transpose in blocks that stay in cache
                np.conjugate(spectra[:, first:first + 256].T, out=target[first:first + 256])
    if channels_per_group == 1:
        return spectrum
    return spectrum.reshape(groups, bins, out_channels // groups, channels_per_group)


# --------------------------------------------------------------------------------------------
# the convolution


class _NotFinite(Exception):
    """A transform met NaN or inf (or overflowed): the result must come from direct sums."""


def _equal_chunk(total: int, most: int) -> int:
    """Chunk size <= ``most`` (at least 1) splitting ``total`` into near-equal chunks: the fewest
    chunks that respect ``most``, so at most two plan shapes (full chunks and the last one)."""
    chunk = int(max(1, min(total, most)))
    return -(-total // -(-total // chunk))


def _dilation_phases(spec: ConvSpec) -> tuple[int, int]:
    """Per axis, the sub-images a dilated stride-1 axis is split into (1: the axis is not split).

    Splitting pays when the filter spectra of the dilated kernels are large (many channels), and
    costs when they are not: sub-images tile a large image less tightly, and every one of them is
    a separate item to cut out and write back (a 2×2 kernel with dilation 1000 would make a
    million 2×2 sub-images). Measured, float32, 2 threads: 32 channels, 3×3, dilation 6 on 64²
    (24 MB of spectra) 2.0 ms split vs 2.4 ms not; 16 channels, dilation 4 on 128² (19 MB) 4.8 vs
    3.4 ms; 3 channels, dilation 2 on 2×512² (0.1 MB) 22 vs 11 ms.
    """
    phases = tuple(dilation if stride == 1 and kernel > 1 else 1 for stride, dilation, kernel in
                   zip(spec.stride, spec.dilation, (spec.kernel_height, spec.kernel_width)))
    if phases == (1, 1) or spec.batch * phases[0] * phases[1] > _MAX_SUB_IMAGES:
        return (1, 1)
    complex_data = spec.dtype.kind == "c"
    grid_h, grid_w = _choose_tiles(spec, complex_data)
    bins = grid_h * (grid_w if complex_data else grid_w // 2 + 1)
    spectrum_bytes = spec.out_channels * spec.in_channels_per_group * bins * 2 * spec.dtype.itemsize
    return phases if spectrum_bytes > _SPLIT_SPECTRUM_BYTES else (1, 1)


def _run_in_phases(x, weight, bias, spec: ConvSpec, phases: tuple[int, int]) -> np.ndarray:
    """Space-to-batch: the dilated convolution as an undilated one on interleaved sub-images.

    The padded input is cut into ``phase_h · phase_w`` sub-images ``x_pad[r::phase_h, s::phase_w]``
    (zero-extended to equal sizes), stacked along the batch axis, convolved with the undilated
    kernel, and the outputs interleaved back; the zero extension only adds outputs past the end.
    """
    (phase_h, phase_w), (batch, channels) = phases, (spec.batch, spec.in_channels)
    (top, _), (left, _) = spec.padding
    rows, cols = -(-spec.padded_height // phase_h), -(-spec.padded_width // phase_w)
    padded = np.zeros((batch, channels, rows * phase_h, cols * phase_w), dtype=spec.dtype)
    padded[:, :, top:top + spec.in_height, left:left + spec.in_width] = x
    sub_images = padded.reshape(batch, channels, rows, phase_h, cols, phase_w).transpose(0, 3, 5, 1, 2, 4)
    phase_spec = replace(
        spec, batch=batch * phase_h * phase_w, in_height=rows, in_width=cols, padding=((0, 0), (0, 0)),
        dilation=tuple(1 if split > 1 else dilation for split, dilation in zip(phases, spec.dilation)))
    phase_out = _run_transforms(np.ascontiguousarray(sub_images).reshape(phase_spec.input_shape), weight, bias,
                                phase_spec)
    out_rows, out_cols = phase_spec.out_height, phase_spec.out_width
    interleaved = phase_out.reshape(batch, phase_h, phase_w, spec.out_channels, out_rows, out_cols) \
        .transpose(0, 3, 4, 1, 5, 2).reshape(batch, spec.out_channels, out_rows * phase_h, out_cols * phase_w)
    return np.ascontiguousarray(interleaved[:, :, :spec.out_height, :spec.out_width])


def _transforms_are_safe(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> bool:
    """False when the transforms could meet NaN or inf, or overflow: then direct summation runs.

    Every value the transforms compute is at most ``points · max|x| · max(1, max_k sum|w_k|)``
    (``points`` the grid size; twice that for complex data): a forward bin sums at most
    ``points`` samples, a per-bin product over the channels of a group is at most
    ``max|x| · sum|w_k|`` (the kernels are scaled by ``1 / points``), and an inverse output sums
    ``points`` bins.
    """
    if x.size == 0 or weight.size == 0:
        return True
    real_x = x.view(x.real.dtype) if spec.dtype.kind == "c" else x  # |z| <= sqrt(2) · largest component
    with np.errstate(invalid="ignore", over="ignore"):
        largest_x = max(abs(float(real_x.max())), abs(float(real_x.min())))
        largest_filter = float(np.abs(weight).reshape(len(weight), -1).sum(axis=1, dtype=np.float64).max())
    if not (math.isfinite(largest_x) and math.isfinite(largest_filter)):  # NaN or inf (max() hides NaN)
        return False
    grid = _choose_tiles(spec, spec.dtype.kind == "c")
    bound = grid[0] * grid[1] * largest_x * max(1.0, largest_filter) * (2 if spec.dtype.kind == "c" else 1)
    return bound <= float(np.finfo(spec.dtype).max)  # Python floats: inf past 1.8e308, no error


def _direct(x, weight, bias, spec: ConvSpec) -> np.ndarray:
    """Direct summation, for the calls the transforms cannot do exactly (NaN, inf, overflow)."""
    from fastconv.backends import im2col

    return im2col.run(x, weight, bias, spec)


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    if spec.batch == 0:
        return np.empty(spec.out_shape, dtype=spec.dtype)
    if not _transforms_are_safe(x, weight, spec):
        return _direct(x, weight, bias, spec)
    phases = _dilation_phases(spec)
    if phases != (1, 1):
        return _run_in_phases(x, weight, bias, spec, phases)
    return _run_transforms(x, weight, bias, spec)


def _run_transforms(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    # First, so that an output too large for memory fails here (MemoryError) and not after a list
    # of its tiles has used up all memory.
    out = np.empty(spec.out_shape, dtype=spec.dtype)
    complex_data = spec.dtype.kind == "c"
    grid = _choose_tiles(spec, complex_data)
    check_fits("the fft backend's transform grid", (spec.in_channels,) + grid, spec.dtype,
               lambda: f"padding {spec.padding} and dilation {spec.dilation} on input {spec.input_shape}",
               hint="use another backend")
    key = (weight.shape, spec.dtype.str, spec.dilation, spec.groups, grid)
    spectrum = _spectra.get(key, weight, lambda: _filter_spectrum(weight, spec, grid))

    extent_h, extent_w = spec.dilated_kernel
    (stride_h, stride_w) = spec.stride
    per_tile_h, tiles_h = _axis_tiling(spec.out_height, extent_h, stride_h, grid[0])
    per_tile_w, tiles_w = _axis_tiling(spec.out_width, extent_w, stride_w, grid[1])
    items = [(n, ty, tx) for n in range(spec.batch) for ty in range(tiles_h) for tx in range(tiles_w)]

    channels, out_channels = spec.in_channels, spec.out_channels
    points = grid[0] * grid[1]
    bins = points if complex_data else grid[0] * (grid[1] // 2 + 1)
    item_bytes = (channels + out_channels) * (points + 2 * bins) * spec.dtype.itemsize
    chunk = _equal_chunk(len(items), config.workspace_bytes // item_bytes)

    try:
        if _streams_planes(spec, grid, tiles_h * tiles_w):
            planes = [(n, group, ty, tx) for n in range(spec.batch) for group in range(spec.groups)
                      for ty in range(tiles_h) for tx in range(tiles_w)]
            _convolve_planes(x, spectrum, spec, grid, planes, (per_tile_h, per_tile_w), out)
        else:
            for start in range(0, len(items), chunk):
                batch_items = items[start:start + chunk]
                _convolve_tiles(x, spectrum, spec, grid, batch_items, (per_tile_h, per_tile_w), out)
    except _NotFinite:  # NaN/inf would smear over every FFT output
        return _direct(x, weight, bias, spec)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


@np.errstate(over="ignore", invalid="ignore")  # NaN/inf are caught after the inverse transform
def _multiply_spectra(spectra_in, spectrum, spectra_out, groups, channels_per_group, outs_per_group):
    """Y[t, k] = sum_c W[k, c] · X[t, c] per frequency bin, within each group."""
    count, bins = spectra_in.shape[0], spectra_in.shape[2]
    if channels_per_group == 1:  # elementwise: Y[t, g, k] = X[t, g] * W[g, k]
        np.multiply(spectra_in.reshape(count, groups, 1, bins),
                    spectrum.reshape(1, groups, outs_per_group, bins),
                    out=spectra_out.reshape(count, groups, outs_per_group, bins))
        return
    # The GEMMs want bins outermost, the transforms bins innermost. Reordering a tensor larger
    # than the caches in one strided copy ran at ~1-2 GB/s; in blocks of a few tiles and at most 64
    # bins that stay in cache, 10-20x faster (the ASPP layer: 1.1 + 1.3 ms instead of ~10 ms).
    bins_per_block = min(bins, 64)
    by_bin = np.empty((bins, count, channels_per_group), dtype=spectra_in.dtype)
    for group in range(groups):  # one (tiles × C/g) @ (C/g × K/g) complex GEMM per bin
        group_in = spectra_in[:, group * channels_per_group:(group + 1) * channels_per_group]
        group_out = spectra_out[:, group * outs_per_group:(group + 1) * outs_per_group]
        for tiles, first in _reorder_blocks(count, bins, channels_per_group, bins_per_block):
            by_bin[first:first + bins_per_block, tiles] = \
                group_in[tiles, :, first:first + bins_per_block].transpose(2, 0, 1)
        product = np.matmul(by_bin, spectrum[group].transpose(0, 2, 1))  # (bins, tiles, K/g)
        for tiles, first in _reorder_blocks(count, bins, outs_per_group, bins_per_block):
            group_out[tiles, :, first:first + bins_per_block] = \
                product[first:first + bins_per_block, tiles].transpose(1, 2, 0)


def _reorder_blocks(count, bins, channels, bins_per_block):
    """(slice of tiles, first bin) of cache-sized blocks of a (tiles, channels, bins) array."""
    tiles_per_block = max(1, _REORDER_BLOCK_ELEMENTS // (channels * bins_per_block))
    for first_tile in range(0, count, tiles_per_block):
        for first_bin in range(0, bins, bins_per_block):
            yield slice(first_tile, first_tile + tiles_per_block), first_bin


def _cut_tile(image: np.ndarray, row0: int, col0: int, tile: np.ndarray) -> None:
    """Copy the window of ``image`` (C, H, W) whose top-left corner is (``row0``, ``col0``) into
    ``tile`` (C, T_h, T_w), zeros wherever the window lies outside the image."""
    (height, width), (tile_h, tile_w) = image.shape[1:], tile.shape[1:]
    first_row, last_row = min(max(-row0, 0), tile_h), max(min(height - row0, tile_h), 0)
    first_col, last_col = min(max(-col0, 0), tile_w), max(min(width - col0, tile_w), 0)
    if first_row < last_row and first_col < last_col:
        tile[:, first_row:last_row, first_col:last_col] = \
            image[:, row0 + first_row:row0 + last_row, col0 + first_col:col0 + last_col]
    else:
        first_row = last_row = 0
    # zeros around the image part: the padding, and the grid beyond the image
    tile[:, :first_row] = 0
    tile[:, last_row:] = 0
    tile[:, first_row:last_row, :first_col] = 0
    tile[:, first_row:last_row, last_col:] = 0


def _convolve_planes(x, spectrum, spec, grid, items, per_tile, out):
    """Convolve the tiles ``items`` [(n, group, tile_row, tile_col), ...] of a convolution with one
    input channel per group, one tile at a time per thread.

    Each thread takes the next tile, transforms it, multiplies its spectrum by the group's
    filter spectra and transforms those back, all in its own single-threaded plans, and writes
    the outputs: a tile's work stays in the core's cache, where a batch of every tile would
    stream through memory several times (the copy in, both transforms, the product, the copy
    out). The input is read once and the output written once.
    """
    outs = spec.out_channels_per_group
    (top, _), (left, _) = spec.padding
    stride_h, stride_w = spec.stride
    step_h, step_w = per_tile[0] * stride_h, per_tile[1] * stride_w
    bins = spectrum.shape[-1]
    taken = itertools.count()  # next() on it is atomic under the GIL: each tile goes to one thread
    failed = threading.Event()

    def work():
        with _plan(1, grid, spec.dtype, inverse=False, threads=1) as forward, \
                _plan(outs, grid, spec.dtype, inverse=True, threads=1) as inverse, \
                np.errstate(over="ignore", invalid="ignore"):  # NaN/inf are caught after the inverse
            tile, spectrum_in = forward.input_array, forward.output_array.reshape(1, bins)
            spectra_out, results = inverse.input_array.reshape(outs, bins), inverse.output_array
            for index in taken:
                if index >= len(items) or failed.is_set():
                    return
                n, group, tile_row, tile_col = items[index]
                _cut_tile(x[n, group:group + 1], tile_row * step_h - top, tile_col * step_w - left, tile)
                forward.execute()
                np.multiply(spectrum_in, spectrum[group * outs:(group + 1) * outs], out=spectra_out)
                inverse.execute()  # destroys spectra_out, which is the plan's own buffer
                if not np.isfinite(results[:, 0, 0]).all():  # see _convolve_tiles
                    failed.set()
                    raise _NotFinite
                out_row, out_col = tile_row * per_tile[0], tile_col * per_tile[1]
                rows = min(per_tile[0], spec.out_height - out_row)
                cols = min(per_tile[1], spec.out_width - out_col)
                out[n, group * outs:(group + 1) * outs, out_row:out_row + rows, out_col:out_col + cols] = \
                    results[:, :rows * stride_h:stride_h, :cols * stride_w:stride_w]

    threads = config.threads if _threads_allowed is None else min(config.threads, _threads_allowed)
    run_on_threads(min(threads, len(items)), work)


def _convolve_tiles(x, spectrum, spec, grid, items, per_tile, out):
    """Convolve the tiles ``items`` [(n, tile_row, tile_col), ...] and write their outputs."""
    count = len(items)
    channels, out_channels, groups = spec.in_channels, spec.out_channels, spec.groups
    (top, _), (left, _) = spec.padding
    stride_h, stride_w = spec.stride
    step_h, step_w = per_tile[0] * stride_h, per_tile[1] * stride_w  # input rows/cols between tiles

    with _plan(count * channels, grid, spec.dtype, inverse=False) as forward, \
            _plan(count * out_channels, grid, spec.dtype, inverse=True) as inverse:
        tiles = forward.input_array.reshape(count, channels, *grid)
        for index, (n, tile_row, tile_col) in enumerate(items):
            _cut_tile(x[n], tile_row * step_h - top, tile_col * step_w - left, tiles[index])
        forward.execute()

        bins = forward.output_array.shape[1] * forward.output_array.shape[2]
        spectra_in = forward.output_array.reshape(count, channels, bins)
        spectra_out = inverse.input_array.reshape(count, out_channels, bins)
        channels_per_group, outs_per_group = spec.in_channels_per_group, spec.out_channels_per_group
        _multiply_spectra(spectra_in, spectrum, spectra_out, groups, channels_per_group, outs_per_group)
        inverse.execute()  # destroys spectra_out, which is the plan's own buffer

        results = inverse.output_array.reshape(count, out_channels, *grid)
        # Each inverse output is a sum over all bins, so a NaN or inf anywhere in a tile's
        # spectra (from the input, the weight, or an overflow) reaches its sample (0, 0).
        if not np.isfinite(results[:, :, 0, 0]).all():
            raise _NotFinite
        for index, (n, tile_row, tile_col) in enumerate(items):
            out_row, out_col = tile_row * per_tile[0], tile_col * per_tile[1]
            rows = min(per_tile[0], spec.out_height - out_row)
            cols = min(per_tile[1], spec.out_width - out_col)
            out[n, :, out_row:out_row + rows, out_col:out_col + cols] = \
                results[index, :, :rows * stride_h:stride_h, :cols * stride_w:stride_w]


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """Transforms of every input and output channel per tile, products per frequency bin.

    Per tile: transform each input channel and each output channel (filter spectra are cached
    between calls, so their transforms are not paid per call), then multiply spectra bin by bin
    and sum over channels. The kernel size does not appear at all -- which is why FFT wins for
    large kernels -- and neither does the stride (the stride-1 result is computed and sampled).
    Large dilations run as several undilated convolutions of interleaved sub-images. Where tiles
    are streamed plane by plane (:func:`_convolve_planes`), ``streamed_tile`` counts them and the
    spectra cost no memory traffic.
    """
    work = dtype_work(spec.dtype)
    phases = _dilation_phases(spec)
    if phases != (1, 1):
        # space-to-batch: phases_h * phases_w undilated convolutions of the interleaved sub-images,
        # plus cutting them out of a padded copy of the input and interleaving the outputs back
        rows, cols = -(-spec.padded_height // phases[0]), -(-spec.padded_width // phases[1])
        split = replace(spec, batch=spec.batch * phases[0] * phases[1], in_height=rows, in_width=cols,
                        padding=((0, 0), (0, 0)), dilation=tuple(1 if count > 1 else dilation
                                                                 for count, dilation in zip(phases, spec.dilation)))
        terms = cost_terms(split)
        terms["byte"] += 2.0 * (split.batch * spec.in_channels * rows * cols
                                + spec.batch * spec.out_channels * spec.out_height * spec.out_width) \
            * spec.dtype.itemsize
        return terms
    transforms = spec.batch * (spec.in_channels + spec.out_channels)
    products = spec.batch * spec.out_channels * spec.in_channels_per_group
    height, width = _choose_tiles(spec, spec.dtype.kind == "c")  # the grid run will use
    (extent_h, extent_w), (stride_h, stride_w) = spec.dilated_kernel, spec.stride
    tiles = (_axis_tiling(spec.out_height, extent_h, stride_h, height)[1]
             * _axis_tiling(spec.out_width, extent_w, stride_w, width)[1])
    points = height * width
    bins = points if spec.dtype.kind == "c" else height * (width // 2 + 1)
    real_work = work / 4 if spec.dtype.kind == "c" else work  # a complex FFT is not four real ones
    per_transform = 2.5 * points * math.log2(max(points, 2)) * real_work * (2 if spec.dtype.kind == "c" else 1)
    spectrum_bytes = transforms * bins * 2 * spec.dtype.itemsize
    terms = {
        "call": 1.0,
        "fft_flop": tiles * transforms * per_transform,
        "tile": float(tiles * spec.batch),
        "byte": io_bytes(spec) + tiles * spectrum_bytes,
    }
    if _streams_planes(spec, (height, width), tiles):
        # tile by tile per thread: the spectra stay in cache, and each plane of each tile is a
        # step of Python work of its own
        terms["byte"] = io_bytes(spec)
        terms["streamed_tile"] = float(tiles * spec.batch * spec.groups)
    filters = spec.out_channels * spec.in_channels_per_group
    filter_spectrum_bytes = filters * bins * 2 * spec.dtype.itemsize
    if filter_spectrum_bytes + filters * spec.kernel_height * spec.kernel_width * spec.dtype.itemsize \
            > _MAX_SPECTRUM_BYTES:
        # filter spectra too big for the cache are transformed again on every call (a VGG
        # 512x512x3x3 layer on 14x14 maps: 302 MB of spectra, 0.3 s a call)
        terms["fft_flop"] += filters * per_transform
        terms["byte"] += filter_spectrum_bytes
    product_flops = 8.0 * tiles * products * bins * real_work
    if spec.in_channels_per_group == 1:  # one input channel per group: an elementwise product
        terms["bin_flop"] = product_flops
    else:
        # a small complex GEMM per bin and group, (K/g x C/g) @ (C/g x tiles): BLAS speed, plus a
        # call per bin, plus reading the cached filter spectra (K x C/g per bin), which is what
        # bounds it when there are few tiles (a 1x1 layer on 14x14 maps reads 58 MB of spectra)
        terms["bin_gemm_flop"] = product_flops
        terms["bin_gemm"] = float(spec.groups * bins)
        terms["filter_spectrum_byte"] = float(filter_spectrum_bytes)
    return terms
