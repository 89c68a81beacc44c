"""``cuda``: direct convolution on an NVIDIA GPU with numba.cuda kernels.

Three kernels share one launch shape — a block of 16 × 8 threads, one output pixel per thread
(two for the depthwise kernel), and a 3-D grid over (output tile, output-channel block, batch):

``tiled``
    The workhorse. A block stages the input tile its outputs read — the tile plus its halo of
    ``(kernel - 1) * dilation`` pixels, four input channels at a time — and the weights of its
    output-channel block in shared memory, then every thread accumulates four output channels in
    registers. Each staged input value is reused by every thread whose window covers it and by
    four output channels, which is what lifts direct convolution off the memory-bandwidth floor.
``depthwise``
    ``groups == C``: every output channel reads one input channel, so there is no channel
    reduction to amortise the staging over; instead each thread computes two output rows from a
    taller staged tile.
``direct``
    The fallback: every thread reads its window straight from global memory. It runs what the
    others cannot hold (see below).

Shared arrays on a real GPU need shapes known at compile time, so the staged tile is a fixed
``20 × 36`` pixels (``36 × 36`` for depthwise) and the staged weights at most ``49`` taps (7×7).
**The rule:** a spec runs ``depthwise`` or ``tiled`` when its halo tile fits —
``(16 - 1) * stride_w + (kw - 1) * dilation_w + 1 <= 36`` across and
``(8 - 1) * stride_h + (kh - 1) * dilation_h + 1 <= 20`` down (``(16 - 1) * stride_h + ... <= 36``
for depthwise) — and ``kh * kw <= 49``; otherwise ``direct``. 3×3 and 5×5 kernels fit up to stride 2,
7×7 at stride 1 (all at dilation 1). :func:`launch_plan` tells which.

Every padding mode is applied by index arithmetic while staging (out-of-range reads become zero,
a mirrored, clamped or wrapped index), so arrays already on the GPU are never padded by copying.

Host NumPy arrays are copied to the GPU and the result copied back: ``conv2d`` returns NumPy.
Arrays already in GPU memory — numba device arrays, or any object exporting
``__cuda_array_interface__`` such as CuPy arrays and torch CUDA tensors — are read in place and
the result is a numba device array (``cupy.asarray`` / ``torch.as_tensor`` wrap it without a copy).
``backend="auto"`` picks ``cuda`` for such inputs, never for host arrays unless
``fastconv.use_backend("cuda")`` asks for it. Without a GPU the backend reports itself
unavailable; with ``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported, the same kernels run
in numba's CUDA simulator (slowly: every thread is a Python thread), which is how the tests run.

Examples
--------
>>> from fastconv.geometry import make_spec
>>> launch_plan(make_spec((2, 64, 56, 56), (64, 64, 3, 3), padding=1))
LaunchPlan(kernel='tiled', grid=(28, 16, 2), block=(16, 8, 1), tiles_across=4)
>>> launch_plan(make_spec((1, 8, 56, 56), (8, 1, 3, 3), padding=1, groups=8)).kernel
'depthwise'
>>> launch_plan(make_spec((1, 3, 64, 64), (4, 3, 11, 11))).kernel
'direct'
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import config as numba_config
from numba import cuda

from fastconv.geometry import ConvSpec

name = "cuda"

#: Arrays live in GPU memory: auto picks this backend for device arrays (see fastconv.backends).
placement = "device"

NO_GPU_REASON = "no CUDA GPU found; set NUMBA_ENABLE_CUDASIM=1 to run the kernels in the CUDA simulator"

# Launch geometry: a block is THREADS_ACROSS × THREADS_DOWN threads, one output pixel each.
THREADS_ACROSS, THREADS_DOWN = 16, 8
THREADS = THREADS_ACROSS * THREADS_DOWN
CHANNELS_PER_THREAD = 4  # output channels each thread accumulates in registers
STAGE_CHANNELS = 4  # input channels staged in shared memory per barrier pair
ROWS_PER_THREAD = 2  # output rows per thread in the depthwise kernel
# Compile-time shared-memory shapes (float64: 4·20·36·8 + 4·4·49·8 bytes = 29 KiB of 48 KiB).
TILE_ROWS, TILE_COLS = 20, 36
DEPTHWISE_TILE_ROWS, DEPTHWISE_TILE_COLS = 36, 36
MAX_TAPS = 49
MAX_GRID_Y, MAX_GRID_Z = 65535, 65535  # CUDA's limits on gridDim.y and gridDim.z

_PADDING_MODE_CODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


def available() -> str | None:
    return None if cuda.is_available() else NO_GPU_REASON


def supports(spec: ConvSpec) -> str | None:
    if spec.dtype.kind == "c":
        return f"complex dtypes are not supported (got {spec.dtype}); accepted: float32, float64"
    if spec.groups * _channel_blocks(spec) > MAX_GRID_Y:
        return (f"{spec.out_channels} output channels in {spec.groups} groups need more than {MAX_GRID_Y} "
                f"blocks of {CHANNELS_PER_THREAD} channels (CUDA's grid limit)")
    return None


class LaunchPlan(NamedTuple):
    """Which kernel runs a spec and how it is launched."""

    kernel: str  # "tiled", "depthwise" or "direct"
    grid: tuple[int, int, int]  # (output tiles, output-channel blocks, batch)
    block: tuple[int, int, int]
    tiles_across: int  # output tiles per row of tiles, to split grid x into (tile row, tile column)


def _channel_blocks(spec: ConvSpec) -> int:
    """Blocks of CHANNELS_PER_THREAD output channels per group (per input channel if depthwise)."""
    return -(-spec.out_channels_per_group // CHANNELS_PER_THREAD)


def _halo(outputs: int, stride: int, kernel: int, dilation: int) -> int:
    """Input pixels that ``outputs`` consecutive outputs read along one axis."""
    return (outputs - 1) * stride + (kernel - 1) * dilation + 1


def kernels_that_fit(spec: ConvSpec) -> tuple[str, ...]:
    """The kernels able to run ``spec``, best first: ``direct`` always, the others when their
    staged tile holds the halo (see the module docstring for the rule)."""
    (stride_h, stride_w), (dilation_h, dilation_w) = spec.stride, spec.dilation
    kernel_h, kernel_w = spec.kernel_height, spec.kernel_width
    taps_fit = kernel_h * kernel_w <= MAX_TAPS
    halo_w = _halo(THREADS_ACROSS, stride_w, kernel_w, dilation_w)
    fitting = []
    if (spec.is_depthwise and taps_fit and halo_w <= DEPTHWISE_TILE_COLS
            and _halo(THREADS_DOWN * ROWS_PER_THREAD, stride_h, kernel_h, dilation_h) <= DEPTHWISE_TILE_ROWS):
        fitting.append("depthwise")
    if taps_fit and halo_w <= TILE_COLS and _halo(THREADS_DOWN, stride_h, kernel_h, dilation_h) <= TILE_ROWS:
        fitting.append("tiled")
    return (*fitting, "direct")


def launch_plan(spec: ConvSpec, kernel: str | None = None) -> LaunchPlan:
    """The kernel (the best that fits unless ``kernel`` names one), grid and block for ``spec``."""
    fitting = kernels_that_fit(spec)
    kernel = fitting[0] if kernel is None else kernel
    if kernel not in fitting:
        raise ValueError(f"kernel must be one of {fitting} for {spec}, got {kernel!r}")
    rows_per_tile = THREADS_DOWN * (ROWS_PER_THREAD if kernel == "depthwise" else 1)
    tiles_down = -(-spec.out_height // rows_per_tile)
    tiles_across = -(-spec.out_width // THREADS_ACROSS)
    grid = (tiles_down * tiles_across, spec.groups * _channel_blocks(spec), min(spec.batch, MAX_GRID_Z))
    return LaunchPlan(kernel, grid, (THREADS_ACROSS, THREADS_DOWN, 1), tiles_across)


# --------------------------------------------------------------------------------------------
# kernels


@cuda.jit(device=True)
def _source_index(position, size, mode):
    """The index along an axis of ``size`` pixels that padded ``position`` reads; -1 for a zero.

    ``position`` counts from the first real pixel, so the padding lies at negative positions and
    at ``size`` and beyond.
    """
    if position >= 0 and position < size:
        return position
    if mode == 1:  # reflect: mirror about the edge pixel without repeating it
        return -position if position < 0 else 2 * (size - 1) - position
    if mode == 2:  # replicate
        return 0 if position < 0 else size - 1
    if mode == 3:  # circular: make_spec keeps the padding <= size, so one wrap suffices
        return position % size
    return -1


@cuda.jit(device=True)
def _block_channels(out_channels, channels, channels_per_group):
    """(first output channel, how many, first input channel) of this block's channel block.

    ``gridDim.y`` counts blocks of CHANNELS_PER_THREAD output channels, group after group; a
    block never straddles two groups, so the last block of a group may hold fewer channels.
    """
    out_per_group = out_channels // (channels // channels_per_group)
    blocks_per_group = (out_per_group + CHANNELS_PER_THREAD - 1) // CHANNELS_PER_THREAD
    group = cuda.blockIdx.y // blocks_per_group
    k_first = group * out_per_group + (cuda.blockIdx.y % blocks_per_group) * CHANNELS_PER_THREAD
    return k_first, min(CHANNELS_PER_THREAD, (group + 1) * out_per_group - k_first), group * channels_per_group


def _kernel_sources(compute):
    """The three kernels as Python functions computing in numba type ``compute``.

    ``compute`` is a closure constant, so the shared and local arrays get compile-time dtypes.
    Every kernel takes (x, weight, bias, out, stride_h, stride_w, dilation_h, dilation_w,
    pad_top, pad_left, padding_mode_code, tiles_across); x is (N, C, H, W) unpadded.
    """

    def tiled(x, weight, bias, out, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
              mode, tiles_across):
        tile = cuda.shared.array((STAGE_CHANNELS, TILE_ROWS, TILE_COLS), compute)
        staged_weights = cuda.shared.array((STAGE_CHANNELS, CHANNELS_PER_THREAD, MAX_TAPS), compute)
        totals = cuda.local.array(CHANNELS_PER_THREAD, compute)
        _, channels, height, width = x.shape
        out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
        batch, _, out_h, out_w = out.shape
        taps = kernel_h * kernel_w
        k_first, k_count, c_first = _block_channels(out_channels, channels, channels_per_group)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        thread = ty * THREADS_ACROSS + tx
        i_first = (cuda.blockIdx.x // tiles_across) * THREADS_DOWN
        j_first = (cuda.blockIdx.x % tiles_across) * THREADS_ACROSS
        i, j = i_first + ty, j_first + tx
        halo_h = (THREADS_DOWN - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
        halo_w = (THREADS_ACROSS - 1) * stride_w + (kernel_w - 1) * dilation_w + 1
        row_first, col_first = i_first * stride_h - pad_top, j_first * stride_w - pad_left
        for n in range(cuda.blockIdx.z, batch, cuda.gridDim.z):
            for q in range(CHANNELS_PER_THREAD):
                totals[q] = compute(0)
            for c_stage in range(0, channels_per_group, STAGE_CHANNELS):
                staged = min(STAGE_CHANNELS, channels_per_group - c_stage)
                cuda.syncthreads()  # every thread has finished reading the previous stage
                for e in range(thread, staged * halo_h * halo_w, THREADS):
                    s, r, col = e // (halo_h * halo_w), (e // halo_w) % halo_h, e % halo_w
                    row_in = _source_index(row_first + r, height, mode)
                    col_in = _source_index(col_first + col, width, mode)
                    value = compute(0)
                    if row_in >= 0 and col_in >= 0:
                        value = compute(x[n, c_first + c_stage + s, row_in, col_in])
                    tile[s, r, col] = value
                for e in range(thread, staged * CHANNELS_PER_THREAD * taps, THREADS):
                    s, q, t = e // (CHANNELS_PER_THREAD * taps), (e // taps) % CHANNELS_PER_THREAD, e % taps
                    value = compute(0)  # channels past the block's last are zero, never stored
                    if q < k_count:
                        value = compute(weight[k_first + q, c_stage + s, t // kernel_w, t % kernel_w])
                    staged_weights[s, q, t] = value
                cuda.syncthreads()
                if i < out_h and j < out_w:
                    for s in range(staged):
                        for u in range(kernel_h):
                            for v in range(kernel_w):
                                pixel = tile[s, ty * stride_h + u * dilation_h, tx * stride_w + v * dilation_w]
                                for q in range(CHANNELS_PER_THREAD):
                                    totals[q] += pixel * staged_weights[s, q, u * kernel_w + v]
            if i < out_h and j < out_w:
                for q in range(CHANNELS_PER_THREAD):  # constant trip count keeps totals in registers
                    if q < k_count:
                        out[n, k_first + q, i, j] = totals[q] + bias[k_first + q]

    def depthwise(x, weight, bias, out, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                  mode, tiles_across):
        tile = cuda.shared.array((DEPTHWISE_TILE_ROWS, DEPTHWISE_TILE_COLS), compute)
        staged_weights = cuda.shared.array((CHANNELS_PER_THREAD, MAX_TAPS), compute)
        totals = cuda.local.array(CHANNELS_PER_THREAD, compute)
        _, channels, height, width = x.shape
        out_channels, _, kernel_h, kernel_w = weight.shape
        batch, _, out_h, out_w = out.shape
        taps = kernel_h * kernel_w
        k_first, k_count, c = _block_channels(out_channels, channels, 1)  # one group per channel
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        thread = ty * THREADS_ACROSS + tx
        rows_per_tile = THREADS_DOWN * ROWS_PER_THREAD
        i_first = (cuda.blockIdx.x // tiles_across) * rows_per_tile
        j_first = (cuda.blockIdx.x % tiles_across) * THREADS_ACROSS
        j = j_first + tx
        halo_h = (rows_per_tile - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
        halo_w = (THREADS_ACROSS - 1) * stride_w + (kernel_w - 1) * dilation_w + 1
        row_first, col_first = i_first * stride_h - pad_top, j_first * stride_w - pad_left
        for e in range(thread, CHANNELS_PER_THREAD * taps, THREADS):
            q, t = e // taps, e % taps
            value = compute(0)
            if q < k_count:
                value = compute(weight[k_first + q, 0, t // kernel_w, t % kernel_w])
            staged_weights[q, t] = value
        for n in range(cuda.blockIdx.z, batch, cuda.gridDim.z):
            cuda.syncthreads()  # weights staged / previous image's tile no longer read
            for e in range(thread, halo_h * halo_w, THREADS):
                r, col = e // halo_w, e % halo_w
                row_in = _source_index(row_first + r, height, mode)
                col_in = _source_index(col_first + col, width, mode)
                value = compute(0)
                if row_in >= 0 and col_in >= 0:
                    value = compute(x[n, c, row_in, col_in])
                tile[r, col] = value
            cuda.syncthreads()
            for p in range(ROWS_PER_THREAD):
                row_in_tile = ty + p * THREADS_DOWN
                i = i_first + row_in_tile
                if i < out_h and j < out_w:
                    for q in range(CHANNELS_PER_THREAD):
                        totals[q] = compute(0)
                    for u in range(kernel_h):
                        for v in range(kernel_w):
                            pixel = tile[row_in_tile * stride_h + u * dilation_h, tx * stride_w + v * dilation_w]
                            for q in range(CHANNELS_PER_THREAD):
                                totals[q] += pixel * staged_weights[q, u * kernel_w + v]
                    for q in range(CHANNELS_PER_THREAD):
                        if q < k_count:
                            out[n, k_first + q, i, j] = totals[q] + bias[k_first + q]

    def direct(x, weight, bias, out, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
               mode, tiles_across):
        totals = cuda.local.array(CHANNELS_PER_THREAD, compute)
        _, channels, height, width = x.shape
        out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
        batch, _, out_h, out_w = out.shape
        k_first, k_count, c_first = _block_channels(out_channels, channels, channels_per_group)
        i = (cuda.blockIdx.x // tiles_across) * THREADS_DOWN + cuda.threadIdx.y
        j = (cuda.blockIdx.x % tiles_across) * THREADS_ACROSS + cuda.threadIdx.x
        if i < out_h and j < out_w:  # no barrier below, so threads may leave early
            for n in range(cuda.blockIdx.z, batch, cuda.gridDim.z):
                for q in range(CHANNELS_PER_THREAD):
                    totals[q] = compute(0)
                for c in range(channels_per_group):
                    for u in range(kernel_h):
                        row_in = _source_index(i * stride_h + u * dilation_h - pad_top, height, mode)
                        for v in range(kernel_w):
                            col_in = _source_index(j * stride_w + v * dilation_w - pad_left, width, mode)
                            if row_in >= 0 and col_in >= 0:
                                pixel = compute(x[n, c_first + c, row_in, col_in])
                                for q in range(CHANNELS_PER_THREAD):
                                    if q < k_count:
                                        totals[q] += pixel * compute(weight[k_first + q, c, u, v])
                for q in range(CHANNELS_PER_THREAD):
                    if q < k_count:
                        out[n, k_first + q, i, j] = totals[q] + bias[k_first + q]

    return {"tiled": tiled, "depthwise": depthwise, "direct": direct}


@functools.lru_cache(maxsize=None)
def _kernels(dtype: np.dtype) -> dict:
    """The compiled-on-first-launch kernels computing in ``dtype`` (float32 or float64)."""
    return {kind: cuda.jit(source) for kind, source in _kernel_sources(numba.from_dtype(dtype)).items()}


# --------------------------------------------------------------------------------------------
# host side


def as_device_array(value):
    """``value`` (already in GPU memory) as a numba device array, without copying.

    Numba device arrays pass through; CuPy arrays, torch CUDA tensors and other objects exporting
    ``__cuda_array_interface__`` are wrapped.
    """
    if hasattr(value, "copy_to_host"):  # a numba device array (or the simulator's stand-in)
        return value
    return cuda.as_cuda_array(value)


def _to_device(array, dtype):
    """Device arrays as they are (the kernels cast on load); host arrays copied over as ``dtype``."""
    if hasattr(array, "copy_to_host"):
        return array
    return cuda.to_device(np.ascontiguousarray(array, dtype=dtype))


def _with_batch_axis(x):
    """A (1, C, H, W) view of the device array ``x`` of shape (C, H, W)."""
    if numba_config.ENABLE_CUDASIM:
        return x[None]  # the simulator's arrays index like NumPy's; numba's real ones do not
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray((1, *x.shape), (0, *x.strides), x.dtype, gpu_data=x.gpu_data)


def _launch(x, weight, bias, out, spec: ConvSpec, kernel: str | None = None) -> None:
    """Run ``spec`` on device arrays; ``kernel`` overrides the planned kernel (for the tests)."""
    plan = launch_plan(spec, kernel)
    if bias is None:
        bias = cuda.to_device(np.zeros(spec.out_channels, dtype=spec.dtype))
    (pad_top, _), (pad_left, _) = spec.padding
    compiled = _kernels(spec.dtype)[plan.kernel]
    compiled[plan.grid, plan.block](x, weight, bias, out, *spec.stride, *spec.dilation, pad_top, pad_left,
                                    _PADDING_MODE_CODES[spec.padding_mode], plan.tiles_across)


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    """Host arrays in, host array out: copy over, compute, copy back."""
    out = cuda.device_array(spec.out_shape, dtype=spec.dtype)
    _launch(cuda.to_device(x), cuda.to_device(weight), None if bias is None else cuda.to_device(bias), out, spec)
    return out.copy_to_host()


def run_on_device(x, weight, bias, spec: ConvSpec):
    """``conv2d`` for operands of which at least one is in GPU memory; returns a device array.

    ``x`` is (N, C, H, W) or (C, H, W) (then ``spec.batch == 1``); ``spec`` is the caller's spec,
    padding mode included: the kernels pad while they read, so nothing is copied. Operands on the
    host are copied to the GPU in ``spec.dtype``; device operands of another dtype are cast as the
    kernels load them. The result has shape ``spec.out_shape`` and dtype ``spec.out_dtype``.
    """
    reason = supports(spec)
    if reason is not None:
        raise ValueError(f"backend 'cuda' cannot run this convolution: {reason}")
    x = _to_device(x, spec.dtype)
    if x.ndim == 3:
        x = _with_batch_axis(x)
    weight = _to_device(weight, spec.dtype)
    bias = None if bias is None else _to_device(bias, spec.dtype)
    out = cuda.device_array(spec.out_shape, dtype=spec.out_dtype)
    _launch(x, weight, bias, out, spec)
    return out
