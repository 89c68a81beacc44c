"""``im2col``: convolution lowered to matrix multiplication (GEMM) with a bounded workspace.

Every output pixel of group ``g`` is a dot product between the group's filters and the window of
input under the kernel. Unfolding those windows into the columns of a matrix turns the whole
layer into one matrix product per group::

    cols[g][(c, u, v), p] = x_pad[n, g*Cg + c, oh*sh + u*dh, ow*sw + v*dw]      p = (n, oh, ow)
    out[n, g*Kg:(g+1)*Kg, oh, ow] = weight[g*Kg:(g+1)*Kg].reshape(Kg, Cg*kh*kw) @ cols[g]

and the product runs in BLAS (numpy's ``matmul`` over the OpenBLAS numpy ships), which is close to
the machine's peak. The price is memory: the column matrix repeats every input value ``kh * kw``
times, so a 9×9 kernel on a batch of large images needs gigabytes. Here the output pixels are
processed in tiles so that the column buffer (plus the small GEMM result buffer when a tile spans
several images) never exceeds :data:`fastconv.config.workspace_bytes`; peak memory is then that
limit plus the input and the output.

Details that matter for speed:

- the unfold kernel (numba) reads the unpadded input and writes zeros where a tap falls in the
  padding, so no padded copy of the input is ever made; its copies are slice assignments that
  vectorise;
- the unfold runs on one thread while BLAS uses them all. It is memory-bound and short, and a
  parallel (OpenMP) unfold leaves numba's worker threads spinning for milliseconds after each
  call, stealing the cores the following GEMM needs: measured on resnet50_3x3_56, 2 cores,
  unfold + GEMM took 4.6 ms with a 2-thread prange unfold and 2.3 ms with the serial one
  (1.8 ms only with ``OMP_WAIT_POLICY=passive``, a process-wide setting fastconv does not impose);
- groups become one batched GEMM (``matmul`` over a stack of ``(Kg, Cg*kh*kw)`` matrices);
- a 1×1, stride-1, unpadded convolution is already a GEMM on the reshaped input: no unfolding;
- a tile that stays inside one image multiplies straight into the output array (BLAS writes a
  strided destination), so the only copy is the unfold itself.

BLAS threads follow :data:`fastconv.config.threads` (through threadpoolctl, restored afterwards even
when calls overlap in several threads: :func:`fastconv.thread_pools.blas_threads`). Every dtype
fastconv computes in works, complex included.

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> fastconv.conv2d(x, np.ones((1, 1, 3, 3)), backend="im2col")[0, 0]
array([[45., 54.],
       [81., 90.]])
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.backends import FAST_MATH
from fastconv.thread_pools import ParallelKernel, blas_threads
from fastconv.backends.work import direct_macs, dtype_work, io_bytes
from fastconv.geometry import ConvSpec

name = "im2col"
thread_pool = "blas"  # see fastconv.backends: what auto charges for switching pools

__all__ = ["name", "thread_pool", "available", "supports", "run", "run_weight_grad", "weight_grad_cost_terms", "column_bytes",
           "plan_tiles"]

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"byte": 6.87e-20, "call": 1.63e-05, "float64_factor": 0.886, "gemm_byte": 4.1e-12,
                  "gemm_call": 5.37e-07, "gemm_flop": 5.98e-12, "unfold_byte": 1.41e-10}


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    return None


@njit(cache=True, nogil=True)
def _im2col_images(x, cols, first_image, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                   dilation_h, dilation_w, pad_top, pad_left):
    """Fill ``cols`` (C*kh*kw, images*H_out*W_out) with the windows of whole images from ``first_image``.

    The common case (a tile of whole images): each row of ``cols`` is, per image, a strided 2-D
    block of one input channel framed by zeros, copied as one 2-D slice assignment.
    """
    _, channels, height, width = x.shape
    taps = kernel_h * kernel_w
    image = out_h * out_w
    for row in range(channels * taps):
        c = row // taps
        u = (row // kernel_w) % kernel_h
        v = row % kernel_w
        # output (oh, ow) reads input (oh*sh + shift_h, ow*sw + shift_w): inside the image for
        # oh in [oh_lo, oh_hi) and ow in [ow_lo, ow_hi); the rest is zero padding
        shift_h = u * dilation_h - pad_top
        shift_w = v * dilation_w - pad_left
        oh_lo, oh_hi = _inside(shift_h, stride_h, height, out_h)
        ow_lo, ow_hi = _inside(shift_w, stride_w, width, out_w)
        for m in range(cols.shape[1] // image):
            dst = cols[row, m * image:(m + 1) * image].reshape((out_h, out_w))
            dst[:oh_lo] = 0
            dst[oh_hi:] = 0
            dst[oh_lo:oh_hi, :ow_lo] = 0
            dst[oh_lo:oh_hi, ow_hi:] = 0
            if oh_hi > oh_lo and ow_hi > ow_lo:
                src = x[first_image + m, c, oh_lo * stride_h + shift_h::stride_h, ow_lo * stride_w + shift_w::stride_w]
                dst[oh_lo:oh_hi, ow_lo:ow_hi] = src[:oh_hi - oh_lo, :ow_hi - ow_lo]


@njit(cache=True)
def _inside(shift, stride, size, out_size):
    """Output indices [lo, hi) whose input index ``o * stride + shift`` lies in [0, size)."""
    lo = 0 if shift >= 0 else min(out_size, (-shift + stride - 1) // stride)
    if size - 1 - shift < 0:
        return lo, lo
    return lo, max(lo, min(out_size, (size - 1 - shift) // stride + 1))


@njit(cache=True, nogil=True)
def _im2col_pixels(x, cols, first, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                   dilation_h, dilation_w, pad_top, pad_left):
    """Fill ``cols`` (C*kh*kw, P) with the windows of output pixels ``first .. first + P - 1``.

    Pixels are numbered ``(n * out_h + oh) * out_w + ow`` over the whole batch, so a tile may start
    and end anywhere inside an image: this is the path for images too large for the workspace. Every copy is a slice assignment or a
    loop counting from zero, so numba drops its negative-index checks and the copies vectorise.
    """
    _, channels, height, width = x.shape
    taps = kernel_h * kernel_w
    pixels = cols.shape[1]
    last = first + pixels  # one past the tile's last pixel
    for row in range(channels * taps):
        c = row // taps
        u = (row // kernel_w) % kernel_h
        v = row % kernel_w
        dst = cols[row]
        # input column of output column ow is ow*sw + shift, inside [0, width) for ow in [ow_lo, ow_hi)
        shift = v * dilation_w - pad_left
        ow_lo, ow_hi = _inside(shift, stride_w, width, out_w)
        line = first // out_w  # the (n, oh) rows the tile touches
        while line * out_w < last:
            n = line // out_h
            oh = line % out_h
            start = max(first, line * out_w) - line * out_w  # the part of this row inside the tile
            stop = min(last, (line + 1) * out_w) - line * out_w
            segment = dst[line * out_w + start - first:line * out_w + stop - first]  # ow = start..stop-1
            ih = oh * stride_h + u * dilation_h - pad_top
            if ih < 0 or ih >= height:
                segment[:] = 0
            else:
                lo = min(max(start, ow_lo), stop)
                hi = max(min(stop, ow_hi), lo)
                segment[:lo - start] = 0
                segment[hi - start:] = 0
                inside = segment[lo - start:hi - start]
                src = x[n, c, ih, lo * stride_w + shift:]
                if stride_w == 1:
                    inside[:] = src[:hi - lo]
                else:
                    for j in range(hi - lo):
                        inside[j] = src[j * stride_w]
            line += 1


def column_bytes(spec: ConvSpec) -> int:
    """Bytes of the full, untiled column matrix of ``spec`` (what plain im2col would allocate).

    >>> from fastconv.geometry import make_spec
    >>> column_bytes(make_spec((1, 3, 32, 32), (8, 3, 3, 3), padding=1, dtype=np.float32))
    110592
    """
    rows = spec.in_channels * spec.kernel_height * spec.kernel_width
    return rows * spec.batch * spec.out_height * spec.out_width * spec.dtype.itemsize


def plan_tiles(spec: ConvSpec, workspace_bytes: int | None = None) -> list[tuple[int, int]]:
    """Split the ``N * H_out * W_out`` output pixels into tiles ``(first, stop)`` whose scratch fits.

    A tile's scratch is its column matrix, plus its GEMM result when it spans several images (a
    tile inside one image is multiplied straight into the output). A tile never straddles an image
    boundary unless it holds whole images. One pixel is the smallest tile, so the limit holds
    whenever one pixel's column (``C * kh * kw`` values) fits in it.

    >>> from fastconv.geometry import make_spec
    >>> spec = make_spec((2, 1, 4, 4), (1, 1, 3, 3), padding=1)
    >>> plan_tiles(spec, 9 * 8 * 16 * 2 + 8 * 32)  # both images at once
    [(0, 32)]
    >>> plan_tiles(spec, 9 * 8 * 6)  # six pixels at a time, tiles stay inside an image
    [(0, 6), (6, 12), (12, 16), (16, 22), (22, 28), (28, 32)]
    """
    limit = config.workspace_bytes if workspace_bytes is None else workspace_bytes
    itemsize = spec.dtype.itemsize
    column_per_pixel = spec.in_channels * spec.kernel_height * spec.kernel_width * itemsize
    result_per_pixel = spec.out_channels * itemsize
    image = spec.out_height * spec.out_width
    if spec.batch == 0:
        return []
    images_per_tile = limit // (image * (column_per_pixel + result_per_pixel))
    if images_per_tile >= 2:
        step = min(images_per_tile, spec.batch) * image
        total = spec.batch * image
        return [(first, min(first + step, total)) for first in range(0, total, step)]
    step = max(1, min(image, limit // column_per_pixel))
    return [(n * image + first, n * image + min(first + step, image))
            for n in range(spec.batch) for first in range(0, image, step)]


def _unfolded_tiles(x: np.ndarray, spec: ConvSpec, workspace_bytes: int | None):
    """The column matrix of each tile of :func:`plan_tiles`, one at a time in one reused buffer:
    ``(n, offset, pixels, cols)``, the tile's first image and pixel offset in it, its pixel count
    and its (G, Cg·kh·kw, pixels) columns (valid until the next tile)."""
    groups, image = spec.groups, spec.out_height * spec.out_width
    rows_per_group = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    tiles = plan_tiles(spec, workspace_bytes)
    largest = max((stop - first for first, stop in tiles), default=0)
    buffer = np.empty(groups * rows_per_group * largest, dtype=spec.dtype)
    for first, stop in tiles:
        pixels = stop - first
        cols = buffer[:groups * rows_per_group * pixels].reshape(groups * rows_per_group, pixels)
        n, offset = divmod(first, image)
        unfold = _im2col_images if offset == 0 and pixels % image == 0 else _im2col_pixels
        unfold(x, cols, n if unfold is _im2col_images else first, spec.out_height, spec.out_width,
               spec.kernel_height, spec.kernel_width, *spec.stride, *spec.dilation,
               spec.padding[0][0], spec.padding[1][0])
        yield n, offset, pixels, cols.reshape(groups, rows_per_group, pixels)


def _is_pointwise(spec: ConvSpec) -> bool:
    return (spec.kernel_height == spec.kernel_width == 1 and spec.stride == (1, 1)
            and spec.padding == ((0, 0), (0, 0)))


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec,
        workspace_bytes: int | None = None) -> np.ndarray:
    """Convolve as ``spec`` says; ``workspace_bytes`` overrides the configured limit (tests)."""
    groups = spec.groups
    k_per_group = spec.out_channels_per_group
    rows_per_group = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    image = spec.out_height * spec.out_width
    filters = weight.reshape(groups, k_per_group, rows_per_group)
    out = np.empty(spec.out_shape, dtype=spec.dtype)
    # (G, Kg, H_out*W_out) view of each image's output; BLAS writes into it in place
    out_by_group = out.reshape(spec.batch, groups, k_per_group, image)
    if out.size == 0:  # an empty batch
        return out
    # inf and NaN inputs propagate as arithmetic says, without numpy's RuntimeWarnings from BLAS
    with blas_threads(config.threads), np.errstate(invalid="ignore", over="ignore"):
        if _is_pointwise(spec):  # already a GEMM on the reshaped input
            inputs = x.reshape(spec.batch, groups, spec.in_channels_per_group, image)
            np.matmul(filters, inputs, out=out_by_group)
        else:
            for n, offset, pixels, cols in _unfolded_tiles(x, spec, workspace_bytes):
                if pixels <= image - offset:  # inside one image: multiply straight into out
                    np.matmul(filters, cols, out=out_by_group[n, :, :, offset:offset + pixels])
                else:  # whole images: (G, Kg, images * P) -> (images, G, Kg, P)
                    result = np.matmul(filters, cols).reshape(groups, k_per_group, -1, image)
                    out_by_group[n:n + pixels // image] = result.transpose(2, 0, 1, 3)
        if bias is not None:
            out += bias[None, :, None, None]
    return out


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """Unfolding every receptive field into the column matrix, then one GEMM per group and tile.

    A 1×1 stride-1 layer needs no unfolding: it *is* a GEMM. Thin GEMMs (depthwise: one output
    channel per group) are limited by the bytes they move, not their flops, hence a GEMM-bytes
    term.
    """
    size = spec.dtype.itemsize
    rows = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width  # GEMM inner dimension
    pixels = spec.batch * spec.out_height * spec.out_width
    plain_gemm = (spec.kernel_height == spec.kernel_width == 1 and spec.stride == (1, 1)
                  and spec.padding == ((0, 0), (0, 0)))
    unfold_values = 0 if plain_gemm else spec.in_channels * spec.kernel_height * spec.kernel_width * pixels
    k_per_group = spec.out_channels_per_group
    tiles = 1 if plain_gemm else len(plan_tiles(spec))
    return {
        "call": 1.0,
        "unfold_byte": float(unfold_values * size),
        "gemm_flop": 2.0 * spec.groups * k_per_group * rows * pixels * dtype_work(spec.dtype),
        # operands and result of each group's GEMM: what bounds thin (depthwise) products
        "gemm_byte": float(spec.groups * (k_per_group * rows + rows * pixels + k_per_group * pixels) * size),
        "gemm_call": float(spec.groups * tiles),
        "byte": io_bytes(spec),
    }


# --------------------------------------------------------------------------------------------
# the weight gradient (backward-filter)


def run_weight_grad(x: np.ndarray, grad_output: np.ndarray, spec: ConvSpec,
                    workspace_bytes: int | None = None) -> np.ndarray:
    """weight pass: the output gradient times the forward convolution's unfolded input.

    ``dw[g] = sum over tiles of grad[g] (Kg, P) @ cols[g]ᵀ (P, Cg·kh·kw)``, with the column matrix
    of the forward convolution (same tiles, same workspace bound): the GEMM's inner dimension is
    the pixels, long and BLAS-friendly. Groups of one input channel (depthwise) would make each
    product a handful of dot products; those are summed straight from the input instead
    (:func:`_depthwise_weight_grad`), without unfolding it. Returns (K, C // groups, kh, kw).
    """
    groups, k_per_group = spec.groups, spec.out_channels_per_group
    rows_per_group = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    image = spec.out_height * spec.out_width
    if spec.in_channels_per_group == 1 and k_per_group <= 4:
        dw = np.zeros(spec.weight_shape, dtype=spec.dtype)
        _depthwise_weight_grad(x, grad_output, dw, *spec.stride, *spec.dilation, spec.padding[0][0],
                               spec.padding[1][0])
        return dw
    dw = np.zeros((groups, k_per_group, rows_per_group), dtype=spec.dtype)
    grads = grad_output.reshape(spec.batch, groups, k_per_group, image)
    with blas_threads(config.threads), np.errstate(invalid="ignore", over="ignore"):
        if _is_pointwise(spec):
            inputs = x.reshape(spec.batch, groups, spec.in_channels_per_group, image)
            for n in range(spec.batch):
                dw += np.matmul(grads[n], inputs[n].transpose(0, 2, 1))
        else:
            for n, offset, pixels, cols in _unfolded_tiles(x, spec, workspace_bytes):
                if pixels <= image - offset:
                    tile = grads[n, :, :, offset:offset + pixels]
                else:  # whole images: (images, G, Kg, P) -> (G, Kg, images * P), the columns' order
                    tile = grads[n:n + pixels // image].transpose(1, 2, 0, 3).reshape(groups, k_per_group, pixels)
                dw += np.matmul(tile, cols.transpose(0, 2, 1))
    return dw.reshape(spec.weight_shape)


def weight_grad_cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """The forward convolution's unfold and GEMM (the same column matrix, a product of the same
    size). Depthwise layers, summed straight from the input, run at about the rate the unfold
    copies bytes: one ``unfold_byte`` per multiply-add (measured on MobileNetV2's 3×3 layers)."""
    if spec.in_channels_per_group == 1 and spec.out_channels_per_group <= 4:
        macs = direct_macs(spec) * dtype_work(spec.dtype)
        return {"call": 1.0, "unfold_byte": float(macs)}
    return {term: value * (WEIGHT_GRAD_SLOWDOWN if term != "call" else 1.0)
            for term, value in cost_terms(spec, rank).items()}


#: The weight pass's time over the forward model's estimate of the same unfold and GEMM: its GEMM
#: has few output rows (K per group) and the pixels as inner dimension, which BLAS runs at a lower
#: rate than the forward's, and the product is accumulated into the result. Measured with
#: ``fastconv bench --suite cnn --pass weight`` (2 threads, float32) against the shipped
#: constants, on the 14 layers that unfold: 0.97-1.83x, median 1.13x.
WEIGHT_GRAD_SLOWDOWN = 1.15


@ParallelKernel
@njit(cache=True, parallel=True, fastmath=FAST_MATH)
def _depthwise_weight_grad(x, grad, dw, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left):
    """dw[k, 0, u, v] = sum over (n, oh, ow) of grad[n, k, oh, ow] · x[n, k // Kg, oh·sh + u·dh - pt, ...].

    One output channel per task. Each row of the output gradient is read once and multiplied into
    every tap's row of partial sums (elementwise, so it vectorises without a horizontal sum per
    row); the partial sums are added up at the end.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = dw.shape
    out_h, out_w = grad.shape[2], grad.shape[3]
    per_group = out_channels // channels
    lows = np.empty(kernel_w, dtype=np.int64)
    highs = np.empty(kernel_w, dtype=np.int64)
    for v in range(kernel_w):
        lows[v], highs[v] = _inside(v * dilation_w - pad_left, stride_w, width, out_w)
    for k in prange(out_channels):
        c = k // per_group
        partial = np.zeros((kernel_h, kernel_w, out_w), dtype=dw.dtype)
        for n in range(batch):
            for oh in range(out_h):
                g_row = grad[n, k, oh]
                for u in range(kernel_h):
                    iy = oh * stride_h + u * dilation_h - pad_top
                    if iy < 0 or iy >= height:
                        continue
                    x_row = x[n, c, iy]
                    for v in range(kernel_w):
                        lo, hi = lows[v], highs[v]
                        shift = v * dilation_w - pad_left
                        sums = partial[u, v, lo:hi]
                        gs = g_row[lo:hi]
                        if stride_w == 1:  # contiguous on both sides
                            xs = x_row[lo + shift:hi + shift]
                            for j in range(hi - lo):
                                sums[j] += gs[j] * xs[j]
                        else:
                            for j in range(hi - lo):
                                sums[j] += gs[j] * x_row[(lo + j) * stride_w + shift]
        for u in range(kernel_h):
            for v in range(kernel_w):
                dw[k, 0, u, v] = partial[u, v].sum()
