"""``numba_cpu``: direct convolution in parallel numba kernels, no lowering, no workspace.

Each output row ``out[n, k, i, :]`` is accumulated in place, tap by tap::

    out[n, k, i, j] += sum_v w[k, c, u, v] * x[n, c, i*sh + u*dh - pt, j*sw + v*dw - pl]

for every input channel ``c`` of ``k``'s group and kernel row ``u`` whose input row is inside the
image (rows in the zero padding are skipped, so the input is never padded or copied). Skipping
them is exact unless a weight is NaN or infinite: then ``0 · w`` is NaN, as torch computes it,
and such calls pad the input explicitly and skip nothing.

What makes it fast, in the order it mattered when measured:

1. **The output-width loop is innermost and counts from zero** over slices that start at the
   first column where every tap is inside the image. Numba then emits no negative-index
   wrap-around check and LLVM vectorises the loop over contiguous output pixels (AVX2/AVX-512).
   The columns whose taps touch the left/right padding are done by a short checked loop.
2. **Kernel-width specialisation.** For widths 1, 3, 5 and 7 the width is a compile-time constant
   (``_kernels(width)`` builds and caches one pair of kernels per width), so LLVM unrolls the
   taps of a row into the vectorised pixel loop: each output vector is loaded and stored once per
   kernel row instead of once per tap. Other widths use the same source with a run-time width.
3. **Register blocking over output channels.** The general kernel computes four output channels
   at once: each input vector loaded feeds four fused multiply-adds.
4. ``prange`` over disjoint output rows (``n``, channel block, ``i``): no two threads ever write
   the same row, so there are no races and no reductions.

Three kernels:

- ``plane`` handles depthwise convolution (``groups == C``, up to three filters per channel) and
  the single-channel image filter (``C == K == 1``, a depthwise convolution with one group). Each
  output plane reads exactly one input plane, so it is a single memory-bound pass over the input.
- ``depthwise3x3`` (:func:`_depthwise3x3`) is ``plane`` specialised for the MobileNet case: 3×3
  filters, dilation 1, stride 1 or 2 (a compile-time constant). Whole planes per task (row
  blocks when planes are few), the nine weights in registers, each output pixel written once,
  and at stride 1 the interior rows of a plane done as one flat vectorised run (border pixels
  fixed afterwards): 3-3.5× the general ``plane`` kernel's speed on MobileNetV2's 56×56 planes,
  where per-row work dominated.
- ``direct`` handles everything else (any groups, stride, dilation) with the 4-channel block.
  When a group's output channels are not a multiple of four, zero filters pad the block and the
  extra planes are dropped at the end.

Threads: :data:`fastconv.config.threads` (see :mod:`fastconv.thread_pools`, which also
keeps the kernels safe under threads and in forked children). Compiled code is
cached on disk (``cache=True``); nothing compiles at import. Complex dtypes are declined (use
``im2col``).

Examples
--------
A depthwise 3×3 box sum over two channels (the ``depthwise3x3`` kernel):

>>> import numpy as np, fastconv
>>> x = np.arange(32.0).reshape(1, 2, 4, 4)
>>> fastconv.conv2d(x, np.ones((2, 1, 3, 3)), groups=2, backend="numba_cpu")[0, :, 0, 0]
array([ 45., 189.])
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.thread_pools import ParallelKernel
from fastconv.backends import FAST_MATH
from fastconv.backends.work import dtype_work, io_bytes
from fastconv.geometry import ConvSpec, interior_range, pad_input

name = "numba_cpu"

__all__ = ["name", "available", "supports", "run", "SPECIALISED_WIDTHS"]

#: Kernel widths compiled with the width as a constant (the rest use a run-time width).
SPECIALISED_WIDTHS = (1, 3, 5, 7)

#: Output channels computed together by the general kernel (one input load feeds this many FMAs).
CHANNEL_BLOCK = 4

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"byte": 2.05e-11, "call": 5.81e-06, "float64_factor": 1.07, "mac": 4.87e-11, "mac_depthwise3x3": 1.87e-20,
                  "mac_edge": 6.59e-11, "mac_plane": 1.36e-11, "mac_runtime_width": 6.8e-11, "mac_strided": 8.63e-11,
                  "row_pass": 1.58e-08}


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    if spec.dtype.kind == "c":
        return f"numba_cpu computes in float32 or float64, not {spec.dtype}; use backend='im2col'"
    return None


# Output columns [lo, hi) whose every tap falls inside the row: no checks needed there (rows
# too: pass the heights, the kernel height, the vertical stride and dilation and pad_top).
_interior_columns = njit(cache=True)(interior_range)


@njit(cache=True)
def _plane_task(task, out_channels, tasks_per_plane, rows_per_task):
    """(batch index, output channel, first output row) of a plane kernel's ``task``."""
    plane_index = task // tasks_per_plane
    return plane_index // out_channels, plane_index % out_channels, (task % tasks_per_plane) * rows_per_task


@njit(cache=True, fastmath=FAST_MATH)
def _edge_columns(o, x_row, w_row, first, stop, stride_w, dilation_w, pad_left):
    """Columns ``first .. stop-1`` of one output row, skipping taps that land in the padding."""
    width = x_row.shape[0]
    for j in range(first, stop):
        total = o[j]
        for v in range(w_row.shape[0]):
            col = j * stride_w + v * dilation_w - pad_left
            if 0 <= col < width:
                total += w_row[v] * x_row[col]
        o[j] = total


@njit(cache=True, fastmath=FAST_MATH)
def _edge_columns4(o0, o1, o2, o3, x_row, w0, w1, w2, w3, first, stop, stride_w, dilation_w, pad_left):
    """:func:`_edge_columns` for a block of four output channels."""
    width = x_row.shape[0]
    for j in range(first, stop):
        for v in range(w0.shape[0]):
            col = j * stride_w + v * dilation_w - pad_left
            if 0 <= col < width:
                xv = x_row[col]
                o0[j] += w0[v] * xv
                o1[j] += w1[v] * xv
                o2[j] += w2[v] * xv
                o3[j] += w3[v] * xv


@functools.lru_cache(maxsize=None)
def _kernels(width: int, unit_step: bool):
    """The (plane, direct) kernel pair for kernel width ``width`` (0: the width is read at run time).

    ``width`` and ``unit_step`` (stride and dilation 1 along the width) are closure constants, so
    numba compiles (and caches on disk, keyed by the constants) one version per combination. With
    a constant width LLVM fully unrolls the tap loop inside the pixel loop; with a constant unit
    step the pixel loop reads contiguous memory and vectorises (with a run-time stride LLVM emits
    scalar code: the 2048x2048 5x5 filter took 21 ms instead of 2 ms). Compilation happens on
    the first call of each kernel, never here.
    """
    constant_width = width
    constant_step = unit_step

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def plane(x, w, bias, out, multiplier, rows_per_task, stride_h, stride_w, dilation_h, dilation_w,
              pad_top, pad_left):
        # out[n, k] = bias[k] + x[n, k // multiplier] correlated with w[k, 0]; one task is
        # rows_per_task consecutive rows of one plane, so small planes stay in L1 and big ones split
        batch, _, height, width_in = x.shape
        out_channels, _, kernel_h, runtime_width = w.shape
        kernel_w = constant_width if constant_width > 0 else runtime_width
        step, spacing = (1, 1) if constant_step else (stride_w, dilation_w)
        out_h, out_w = out.shape[2], out.shape[3]
        lo, hi = _interior_columns(out_w, width_in, kernel_w, stride_w, dilation_w, pad_left)
        count = hi - lo
        tasks_per_plane = (out_h + rows_per_task - 1) // rows_per_task
        for task in prange(batch * out_channels * tasks_per_plane):
            n, k, first_row = _plane_task(task, out_channels, tasks_per_plane, rows_per_task)
            for i in range(first_row, min(out_h, first_row + rows_per_task)):
                o = out[n, k, i]
                o[:] = bias[k]
                inner = o[lo:hi]
                for u in range(kernel_h):
                    row = i * stride_h + u * dilation_h - pad_top
                    if row < 0 or row >= height:
                        continue
                    x_row = x[n, k // multiplier, row]
                    w_row = w[k, 0, u]
                    x_inner = x_row[lo * stride_w - pad_left:]  # starts inside the row: index from 0
                    for j in range(count):
                        total = inner[j]
                        for v in range(kernel_w):
                            total += w_row[v] * x_inner[j * step + v * spacing]
                        inner[j] = total
                    _edge_columns(o, x_row, w_row, 0, lo, stride_w, dilation_w, pad_left)
                    _edge_columns(o, x_row, w_row, hi, out_w, stride_w, dilation_w, pad_left)

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def direct(x, w, out, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left):
        # out[n, k] += sum_c x[n, group(k)*Cg + c] correlated with w[k, c], four channels at a time;
        # out holds the bias on entry and its channels per group are a multiple of four
        batch, channels, height, width_in = x.shape
        out_channels, channels_per_group, kernel_h, runtime_width = w.shape
        kernel_w = constant_width if constant_width > 0 else runtime_width
        step, spacing = (1, 1) if constant_step else (stride_w, dilation_w)
        out_h, out_w = out.shape[2], out.shape[3]
        out_per_group = out_channels // (channels // channels_per_group)
        blocks = out_channels // 4
        lo, hi = _interior_columns(out_w, width_in, kernel_w, stride_w, dilation_w, pad_left)
        count = hi - lo
        for task in prange(batch * blocks * out_h):
            i = task % out_h
            k = 4 * ((task // out_h) % blocks)
            n = task // (out_h * blocks)
            first_channel = (k // out_per_group) * channels_per_group
            o0, o1, o2, o3 = out[n, k, i], out[n, k + 1, i], out[n, k + 2, i], out[n, k + 3, i]
            p0, p1, p2, p3 = o0[lo:hi], o1[lo:hi], o2[lo:hi], o3[lo:hi]
            for c in range(channels_per_group):
                for u in range(kernel_h):
                    row = i * stride_h + u * dilation_h - pad_top
                    if row < 0 or row >= height:
                        continue
                    x_row = x[n, first_channel + c, row]
                    w0, w1, w2, w3 = w[k, c, u], w[k + 1, c, u], w[k + 2, c, u], w[k + 3, c, u]
                    x_inner = x_row[lo * stride_w - pad_left:]
                    for j in range(count):
                        s0, s1, s2, s3 = p0[j], p1[j], p2[j], p3[j]
                        for v in range(kernel_w):
                            xv = x_inner[j * step + v * spacing]
                            s0 += w0[v] * xv
                            s1 += w1[v] * xv
                            s2 += w2[v] * xv
                            s3 += w3[v] * xv
                        p0[j], p1[j], p2[j], p3[j] = s0, s1, s2, s3
                    _edge_columns4(o0, o1, o2, o3, x_row, w0, w1, w2, w3, 0, lo, stride_w, dilation_w, pad_left)
                    _edge_columns4(o0, o1, o2, o3, x_row, w0, w1, w2, w3, hi, out_w, stride_w, dilation_w,
                                   pad_left)

    return ParallelKernel(plane), ParallelKernel(direct)


@functools.lru_cache(maxsize=None)
def _depthwise3x3(stride: int):
    """The plane kernel specialised for 3×3 filters, dilation 1 and ``stride`` (1 or 2) on both axes.

    MobileNet-style depthwise layers are this case, on small planes (56 pixels a row) where the
    general plane kernel spends as long on per-row bookkeeping as on arithmetic. Here the nine
    weights are scalars held in registers for a whole task and each output pixel is one expression
    of nine products, so every output value is stored once (not once per kernel row). With stride 1
    and an output as wide as the input (padding 1 left and right, the usual case) consecutive
    interior pixels of consecutive rows are also consecutive in memory: the whole block of interior
    rows is then ONE vectorised loop over the flattened plane. The pixels that loop gets wrong (the
    first and last column, whose flattened neighbours wrap into the adjacent row) and the rows and
    columns touching the padding are then written by a short checked loop. The stride is a
    compile-time constant, so the stride-2 loads are constant-stride and LLVM vectorises them too.
    """
    step = stride

    @njit(parallel=True, fastmath=FAST_MATH, cache=True)
    def depthwise3x3(x, w, bias, out, multiplier, rows_per_task, pad_top, pad_left):
        batch, _, height, width = x.shape
        out_channels = w.shape[0]
        out_h, out_w = out.shape[2], out.shape[3]
        # interior output rows [i0, i1) and columns [j0, j1): all nine taps inside the image
        i0, i1 = _interior_columns(out_h, height, 3, step, 1, pad_top)
        j0, j1 = _interior_columns(out_w, width, 3, step, 1, pad_left)
        flat = step == 1 and out_w == width  # output and input rows have the same pitch
        tasks_per_plane = (out_h + rows_per_task - 1) // rows_per_task
        for task in prange(batch * out_channels * tasks_per_plane):
            n, k, first_row = _plane_task(task, out_channels, tasks_per_plane, rows_per_task)
            last_row = min(out_h, first_row + rows_per_task)
            image = x[n, k // multiplier]
            flat_in = image.reshape(-1)
            flat_out = out[n, k].reshape(-1)
            w00, w01, w02 = w[k, 0, 0, 0], w[k, 0, 0, 1], w[k, 0, 0, 2]
            w10, w11, w12 = w[k, 0, 1, 0], w[k, 0, 1, 1], w[k, 0, 1, 2]
            w20, w21, w22 = w[k, 0, 2, 0], w[k, 0, 2, 1], w[k, 0, 2, 2]
            b = bias[k]
            top, bottom = max(i0, first_row), min(i1, last_row)
            if top < bottom and j0 < j1:
                if flat:
                    # from interior pixel (top, j0) to (bottom - 1, j1 - 1) in one run
                    start = (top - pad_top) * width + j0 - pad_left  # its top-left tap
                    r0, r1, r2 = flat_in[start:], flat_in[start + width:], flat_in[start + 2 * width:]
                    o = flat_out[top * out_w + j0:(bottom - 1) * out_w + j1]
                    for j in range(o.shape[0]):
                        o[j] = (b + w00 * r0[j] + w01 * r0[j + 1] + w02 * r0[j + 2]
                                + w10 * r1[j] + w11 * r1[j + 1] + w12 * r1[j + 2]
                                + w20 * r2[j] + w21 * r2[j + 1] + w22 * r2[j + 2])
                else:
                    for i in range(top, bottom):
                        start = (step * i - pad_top) * width + step * j0 - pad_left
                        r0, r1, r2 = flat_in[start:], flat_in[start + width:], flat_in[start + 2 * width:]
                        o = flat_out[i * out_w + j0:i * out_w + j1]
                        for j in range(o.shape[0]):
                            s = step * j
                            o[j] = (b + w00 * r0[s] + w01 * r0[s + 1] + w02 * r0[s + 2]
                                    + w10 * r1[s] + w11 * r1[s + 1] + w12 * r1[s + 2]
                                    + w20 * r2[s] + w21 * r2[s + 1] + w22 * r2[s + 2])
            # the rest (padding rows and columns, and the columns the flat run wrapped): checked taps
            for i in range(first_row, last_row):
                interior_row = i0 <= i < i1 and j0 < j1
                for part in range(2):
                    if interior_row:
                        first, stop = (0, j0) if part == 0 else (j1, out_w)
                    else:
                        first, stop = (0, out_w) if part == 0 else (0, 0)
                    for j in range(first, stop):
                        total = b
                        for u in range(3):
                            row = step * i + u - pad_top
                            if 0 <= row < height:
                                for v in range(3):
                                    col = step * j + v - pad_left
                                    if 0 <= col < width:
                                        total += w[k, 0, u, v] * image[row, col]
                        out[n, k, i, j] = total

    return ParallelKernel(depthwise3x3)


def uses_depthwise3x3(spec: ConvSpec) -> bool:
    """True when ``spec`` runs on the 3×3 depthwise kernel (a plane-kernel spec with 3×3 filters,
    dilation 1 and stride 1 or 2; :mod:`fastconv.cost` models it at its own rate)."""
    return ((spec.kernel_height, spec.kernel_width) == (3, 3) and spec.dilation == (1, 1)
            and spec.stride in ((1, 1), (2, 2)))


def _kernels_for(spec: ConvSpec):
    width = spec.kernel_width if spec.kernel_width in SPECIALISED_WIDTHS else 0
    return _kernels(width, spec.stride[1] == 1 and (spec.dilation[1] == 1 or spec.kernel_width == 1))


def uses_plane_kernel(spec: ConvSpec) -> bool:
    """True when ``spec`` runs on the plane-by-plane kernel (depthwise or single-channel).

    >>> from fastconv.geometry import make_spec
    >>> uses_plane_kernel(make_spec((1, 8, 9, 9), (8, 1, 3, 3), groups=8))
    True
    >>> uses_plane_kernel(make_spec((1, 8, 9, 9), (16, 8, 3, 3)))
    False
    """
    return spec.in_channels_per_group == 1 and spec.out_channels_per_group < CHANNEL_BLOCK


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    if spec.batch == 0:  # an empty batch: nothing to compute (and no tasks to divide the work into)
        return np.empty(spec.out_shape, dtype=spec.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        weight_sum = weight.sum()
    if not np.isfinite(weight_sum):
        # The kernels skip taps that fall in the zero padding, which is exact for finite weights;
        # a NaN or inf weight must meet the padding too (0·NaN and 0·inf are NaN, as in torch), so
        # the padding is materialised and no tap is skipped. One vectorised sum detects it (a
        # NaN or inf anywhere makes the sum non-finite; so does a sum that overflows, which only
        # takes this slower, still exact, path).
        x = pad_input(x, spec)
        spec = spec.zero_padded()
    plane, direct = _kernels_for(spec)
    geometry = (*spec.stride, *spec.dilation, spec.padding[0][0], spec.padding[1][0])
    groups, per_group = spec.groups, spec.out_channels_per_group
    blocked = -(-per_group // CHANNEL_BLOCK) * CHANNEL_BLOCK
    if uses_plane_kernel(spec):
        out = np.empty(spec.out_shape, dtype=spec.dtype)
        planes = spec.batch * spec.out_channels
        # whole planes per task when there are plenty of planes, else split them into row blocks
        tasks_wanted = 8 * config.threads
        rows_per_task = spec.out_height if planes >= tasks_wanted else -(-spec.out_height * planes // tasks_wanted)
        bias = np.zeros(spec.out_channels, dtype=spec.dtype) if bias is None else bias
        if uses_depthwise3x3(spec):
            _depthwise3x3(spec.stride[0])(x, weight, bias, out, per_group, rows_per_task, spec.padding[0][0],
                                          spec.padding[1][0])
            return out
        plane(x, weight, bias, out, per_group, rows_per_task, *geometry)
        return out
    if blocked == per_group:
        out = np.empty(spec.out_shape, dtype=spec.dtype)
        out[...] = 0 if bias is None else bias[None, :, None, None]
        direct(x, weight, out, *geometry)
        return out
    # pad each group's filters with zero filters up to a whole number of channel blocks
    padded_weight = np.zeros((groups, blocked) + weight.shape[1:], dtype=spec.dtype)
    padded_weight[:, :per_group] = weight.reshape((groups, per_group) + weight.shape[1:])
    padded_out = np.zeros((spec.batch, groups, blocked, spec.out_height, spec.out_width), dtype=spec.dtype)
    if bias is not None:
        padded_out[:, :, :per_group] = bias.reshape(groups, per_group)[None, :, :, None, None]
    direct(x, padded_weight.reshape((groups * blocked,) + weight.shape[1:]),
           padded_out.reshape(spec.batch, groups * blocked, spec.out_height, spec.out_width), *geometry)
    return np.ascontiguousarray(padded_out[:, :, :per_group]).reshape(spec.out_shape)


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """The work of the kernel :func:`run` picks, in terms each charged at its own rate.

    Three kernels, each at its own rate per multiply-add: the plane kernel (depthwise and
    single-channel: one memory-bound pass per output plane), its 3x3 specialisation (nine
    weights in registers, one store per output), and the general kernel, which register-blocks
    output channels (zero filters pad a partial block). In the plane and general kernels each
    (output row, input channel, kernel row) is one pass along the row: the interior columns in
    a vectorised loop, the columns whose taps reach into the padding in a short scalar loop
    with bounds checks, plus the pass's fixed set-up. On narrow images (14-32 columns) the
    edges and set-up outweigh the interior. Kernel widths the kernels do not specialise, and
    strided or dilated rows (no longer contiguous loads: scalar code), cost extra per
    multiply-add.
    """
    work = dtype_work(spec.dtype)
    plane = uses_plane_kernel(spec)
    block = 1 if plane else CHANNEL_BLOCK
    per_group = spec.out_channels_per_group
    padded_outs = spec.groups * -(-per_group // block) * block  # output channels computed
    taps = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    outputs = spec.batch * padded_outs * spec.out_height * spec.out_width
    if plane and uses_depthwise3x3(spec):
        return {"call": 1.0, "mac_depthwise3x3": float(outputs * taps * work), "byte": io_bytes(spec)}
    lo, hi = interior_range(spec.out_width, spec.in_width, spec.kernel_width, spec.stride[1], spec.dilation[1],
                            spec.padding[1][0])
    interior = hi - lo
    row_outputs = spec.batch * padded_outs * spec.out_height
    macs = row_outputs * interior * taps * work
    terms = {"call": 1.0, "mac_plane" if plane else "mac": float(macs),
             "mac_edge": float(row_outputs * (spec.out_width - interior) * taps * work),
             # passes along a row: one per (output row, channel block, input channel, kernel row)
             "row_pass": float(row_outputs / block * spec.in_channels_per_group * spec.kernel_height),
             "byte": io_bytes(spec)}
    if spec.kernel_width not in SPECIALISED_WIDTHS:
        terms["mac_runtime_width"] = float(macs)
    if spec.stride[1] > 1 or (spec.dilation[1] > 1 and spec.kernel_width > 1):
        terms["mac_strided"] = float(macs)
    return terms
