"""``col2im``: transposed convolution as one matrix product and a scatter-add (conv_transpose2d).

Where conv2d *gathers* a window of input pixels into each output pixel, the transposed
convolution *scatters*: input pixel (i, j) adds ``x[n, c, i, j] * weight[c, k, u, v]`` to output
pixel ``(i * stride - padding + u * dilation, j * stride - padding + v * dilation)``. It is what
conv2d's gradient with respect to its input computes, and the upsampling layer of decoders and
GAN generators.

One matrix product computes every scattered contribution at once,
``columns[(k, u, v), (n, i, j)] = sum_c weight[c, (k, u, v)] * x[c, (n, i, j)]`` (BLAS, per
group), then a numba kernel adds each column into its output pixel ("col2im", the inverse of
im2col). No zero-stuffed input is ever built: the product does exactly the useful
multiplications. The product runs on BLAS's threads; col2im, a cheap memory-bound pass, runs on
the calling thread on purpose: on a parallel numba kernel started right after the product,
numba's workers and OpenBLAS's (which spin-wait after a GEMM) fight for the cores, and we
measured the whole call 4-10× slower on 2 cores (docs/performance/family.md).

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 1, 2, 2)); w = np.ones((1, 1, 2, 2))
>>> fastconv.conv_transpose2d(x, w, stride=2, backend="col2im")[0, 0]
array([[1., 1., 1., 1.],
       [1., 1., 1., 1.],
       [1., 1., 1., 1.],
       [1., 1., 1., 1.]])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastconv import config
from fastconv.backends.naive import output_with_bias
from fastconv.geometry import TransposeSpec

name = "col2im"
thread_pool = "blas"  # see fastconv.backends: what auto charges for switching pools

__all__ = ["name", "thread_pool", "available", "run_transpose", "transpose_cost_terms", "COST_CONSTANTS"]

#: Seconds per unit of each term of :func:`transpose_cost_terms` (measured as described in
#: docs/performance/training.md; ``fastconv tune --calibrate`` fits conv2d backends only).
COST_CONSTANTS = {"call": 1.5e-05, "gemm_flop": 3.5e-12, "scatter_byte": 1.5e-10, "byte": 1e-10,
                  "float64_factor": 1.6}


def available() -> str | None:
    return None


def transpose_cost_terms(spec: TransposeSpec) -> dict[str, float]:
    """One GEMM per group (the scattered contributions), then the scatter-add of its columns."""
    size = spec.dtype.itemsize
    columns = spec.out_channels * spec.kernel_height * spec.kernel_width * spec.batch * spec.in_height * spec.in_width
    inputs = spec.batch * spec.in_channels * spec.in_height * spec.in_width
    outputs = spec.batch * spec.out_channels * spec.out_height * spec.out_width
    return {"call": float(spec.groups), "gemm_flop": float(spec.flops) * (4.0 if spec.dtype.kind == "c" else 1.0),
            "scatter_byte": float(columns * size), "byte": float((2 * inputs + outputs) * size)}


@njit(cache=True)
def _col2im(columns, out, channel_offset, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w):
    """Add ``columns`` (K_g, kh, kw, N, H, W) into ``out[:, channel_offset:channel_offset + K_g]``."""
    out_per_group, kernel_h, kernel_w, batch, in_h, in_w = columns.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for task in range(batch * out_per_group):  # one (image, output channel) plane at a time
        n = task // out_per_group
        k = task % out_per_group
        plane = out[n, channel_offset + k]
        for u in range(kernel_h):
            for i in range(in_h):
                oy = i * stride_h - pad_h + u * dilation_h
                if oy < 0 or oy >= out_h:
                    continue
                for v in range(kernel_w):
                    shift = v * dilation_w - pad_w  # ox = j * stride + shift
                    j_first = max(0, (-shift + stride_w - 1) // stride_w)
                    j_last = min(in_w, (out_w - 1 - shift) // stride_w + 1)
                    for j in range(j_first, j_last):
                        plane[oy, j * stride_w + shift] += columns[k, u, v, n, i, j]


def run_transpose(x, weight, bias, spec: TransposeSpec) -> np.ndarray:
    out = output_with_bias(bias, spec)
    in_per_group = spec.in_channels // spec.groups
    out_per_group = spec.out_channels // spec.groups
    kh, kw = spec.kernel_height, spec.kernel_width
    # channels first, so that one product serves the whole batch: (C, N, H, W)
    x_channels_first = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    # images per product, so that the columns stay within the workspace limit (at least one image)
    per_image = out_per_group * kh * kw * spec.in_height * spec.in_width * spec.dtype.itemsize
    chunk = max(1, min(spec.batch, config.workspace_bytes // max(per_image, 1)))
    for g in range(spec.groups):
        channels = slice(g * in_per_group, (g + 1) * in_per_group)
        weight_matrix = weight[channels].reshape(in_per_group, out_per_group * kh * kw)
        for first in range(0, spec.batch, chunk):
            images = x_channels_first[channels, first:first + chunk]
            count = images.shape[1]
            columns = weight_matrix.T @ images.reshape(in_per_group, -1)
            columns = columns.reshape(out_per_group, kh, kw, count, spec.in_height, spec.in_width)
            _col2im(columns, out[first:first + count], g * out_per_group, *spec.stride, *spec.padding,
                    *spec.dilation)
    return out
