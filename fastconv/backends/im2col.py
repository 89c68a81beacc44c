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

- the unfold kernel is numba-parallel over the rows of the column matrix (disjoint writes), reads
  the unpadded input and writes zeros where a tap falls in the padding, so no padded copy of the
  input is ever made;
- groups become one batched GEMM (``matmul`` over a stack of ``(Kg, Cg*kh*kw)`` matrices);
- a 1×1, stride-1, unpadded convolution is already a GEMM on the reshaped input: no unfolding;
- a tile that stays inside one image multiplies straight into the output array (BLAS writes a
  strided destination), so the only copy is the unfold itself.

BLAS threads follow :data:`fastconv.config.threads` through :mod:`threadpoolctl`, the unfold
kernel's threads through :func:`numba.set_num_threads`. Every dtype fastconv computes in works,
complex included.

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> fastconv.conv2d(x, np.ones((1, 1, 3, 3)), backend="im2col")[0, 0]
array([[45., 54.],
       [81., 90.]])
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.geometry import ConvSpec

name = "im2col"

__all__ = ["name", "available", "supports", "run", "column_bytes", "plan_tiles"]


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    return None


@njit(parallel=True, cache=True)
def _im2col_kernel(x, cols, first, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                   dilation_h, dilation_w, pad_top, pad_left):
    """Fill ``cols`` (C*kh*kw, P) with the windows of output pixels ``first .. first + P - 1``.

    Pixels are numbered ``(n * out_h + oh) * out_w + ow`` over the whole batch, so a tile may start
    and end anywhere: inside a row, or in another image.
    """
    _, channels, height, width = x.shape
    taps = kernel_h * kernel_w
    pixels = cols.shape[1]
    last = first + pixels  # one past the tile's last pixel
    for row in prange(channels * taps):  # each thread owns whole rows of cols: no races
        c = row // taps
        u = (row // kernel_w) % kernel_h
        v = row % kernel_w
        dst = cols[row]
        # input columns ow*sw + v*dw - pad_left inside [0, width) for ow in [ow_lo, ow_hi)
        shift = v * dilation_w - pad_left
        ow_lo = 0 if shift >= 0 else min(out_w, (-shift + stride_w - 1) // stride_w)
        ow_hi = max(ow_lo, min(out_w, (width - 1 - shift) // stride_w + 1)) if width - 1 - shift >= 0 else ow_lo
        line = first // out_w  # (n, oh) rows touched by the tile
        while line * out_w < last:
            n = line // out_h
            oh = line % out_h
            start = max(first, line * out_w) - line * out_w  # ow range of this row inside the tile
            stop = min(last, (line + 1) * out_w) - line * out_w
            offset = line * out_w - first  # cols position of ow = 0
            ih = oh * stride_h + u * dilation_h - pad_top
            if ih < 0 or ih >= height:
                for ow in range(start, stop):
                    dst[offset + ow] = 0
            else:
                lo = min(max(start, ow_lo), stop)
                hi = max(min(stop, ow_hi), lo)
                for ow in range(start, lo):
                    dst[offset + ow] = 0
                src = x[n, c, ih]
                for ow in range(lo, hi):
                    dst[offset + ow] = src[ow * stride_w + shift]
                for ow in range(hi, stop):
                    dst[offset + ow] = 0
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
    images_per_tile = limit // (image * (column_per_pixel + result_per_pixel))
    if images_per_tile >= 2:
        step = min(images_per_tile, spec.batch) * image
        total = spec.batch * image
        return [(first, min(first + step, total)) for first in range(0, total, step)]
    step = max(1, min(image, limit // column_per_pixel))
    return [(n * image + first, n * image + min(first + step, image))
            for n in range(spec.batch) for first in range(0, image, step)]


_blas_controller = None


def _blas_threads(count: int):
    """Context limiting the BLAS pool to ``count`` threads (a ThreadpoolController made once)."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    blas = _blas_controller.select(user_api="blas")
    if all(info.get("num_threads") == count for info in blas.info()):
        return contextlib.nullcontext()  # already right: skip the limit/restore round trip
    return blas.limit(limits=count)


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
    numba.set_num_threads(min(config.threads, numba.config.NUMBA_NUM_THREADS))
    with _blas_threads(config.threads):
        if _is_pointwise(spec):  # already a GEMM on the reshaped input
            inputs = x.reshape(spec.batch, groups, spec.in_channels_per_group, image)
            np.matmul(filters, inputs, out=out_by_group)
        else:
            tiles = plan_tiles(spec, workspace_bytes)
            largest = max(stop - first for first, stop in tiles)
            buffer = np.empty(groups * rows_per_group * largest, dtype=spec.dtype)
            for first, stop in tiles:
                pixels = stop - first
                cols = buffer[:groups * rows_per_group * pixels].reshape(groups * rows_per_group, pixels)
                _im2col_kernel(x, cols, first, spec.out_height, spec.out_width,
                               spec.kernel_height, spec.kernel_width, *spec.stride, *spec.dilation,
                               spec.padding[0][0], spec.padding[1][0])
                cols = cols.reshape(groups, rows_per_group, pixels)
                n, offset = divmod(first, image)
                if pixels <= image - offset:  # inside one image: multiply straight into out
                    np.matmul(filters, cols, out=out_by_group[n, :, :, offset:offset + pixels])
                else:  # whole images: (G, Kg, images * P) -> (images, G, Kg, P)
                    result = np.matmul(filters, cols).reshape(groups, k_per_group, -1, image)
                    out_by_group[n:n + pixels // image] = result.transpose(2, 0, 1, 3)
    if bias is not None:
        out += bias[None, :, None, None]
    return out
