"""``max_pool2d`` and ``avg_pool2d`` with torch's semantics, as parallel numba kernels.

Both reduce windows of ``kernel_size`` pixels taken every ``stride`` pixels (default: the kernel
size) over an input padded by ``padding`` on both sides; geometry and validation (torch's rules:
padding at most half the kernel, ``ceil_mode`` dropping a last window that would start in the
right padding) live in :func:`fastconv.geometry.make_pool_spec`.

A rectangular window is separable: its maximum is the maximum over its rows of the maximum over
its columns, and likewise for sums. So each output row is computed in two passes: first reduce
the window's input rows into one row buffer (a contiguous, vectorisable loop), then reduce each
window's columns of that buffer. That is ``kh + kw`` operations per output instead of
``kh * kw``. One thread owns one (image, channel) plane at a time: no races.

Padding is never materialised: the row buffer holds input columns only, and taps that fall in
the padding (which can neither win a maximum nor add to a sum) are skipped, so the work and the
buffer stay proportional to the input however large the window and its padding. Average pooling
divides by the window size counted as torch counts it (see :func:`avg_pool2d`). Max pooling
propagates NaN, as torch does, so its kernel is compiled without fastmath.

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> fastconv.max_pool2d(x, 2)[0, 0]
array([[ 5.,  7.],
       [13., 15.]])
>>> fastconv.avg_pool2d(x, 2)[0, 0]
array([[ 2.5,  4.5],
       [10.5, 12.5]])
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastconv.thread_pools import ParallelKernel
from fastconv.geometry import PoolSpec, as_int, make_pool_spec, resolve_dtypes
from fastconv.ops.operands import as_numeric_array

__all__ = ["avg_pool2d", "max_pool2d"]


@njit(cache=True)
def _column_taps(kernel_w, out_w, stride_w, pad_w, dilation_w, used_w):
    """The taps v of a window row that land on input columns [0, used_w) for at least one output.

    The others read padding only, which can neither win a maximum nor add to a sum; skipping them
    keeps the work and the row buffer proportional to the input, however wide the window and its
    padding (a 2**40-wide window needed a 2**40-value buffer).
    """
    first_v = max(0, -(((out_w - 1) * stride_w - pad_w) // dilation_w))  # ceil((pad - (out_w-1)·s) / d)
    last_v = min(kernel_w, (used_w - 1 + pad_w) // dilation_w + 1)
    return first_v, max(first_v, last_v)


@njit(cache=True)
def _column_outputs(v, out_w, stride_w, pad_w, dilation_w, used_w):
    """(offset, first ox, last ox): the outputs whose tap v reads input column ox·s + offset in [0, used_w)."""
    offset = v * dilation_w - pad_w
    first_ox = max(0, -(offset // stride_w))  # ceil(-offset / s)
    last_ox = min(out_w, (used_w - 1 - offset) // stride_w + 1)
    return offset, first_ox, max(first_ox, last_ox)


@ParallelKernel
@njit(cache=True, parallel=True)
def _max_pool2d(x, out, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w):
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    padded_w_read = (out_w - 1) * stride_w + dilation_w * (kernel_w - 1) + 1  # padded columns any window reads
    used_w = max(min(in_w, padded_w_read - pad_w), 1)  # input columns any window reads
    first_v, last_v = _column_taps(kernel_w, out_w, stride_w, pad_w, dilation_w, used_w)
    for plane in prange(batch * channels):
        n = plane // channels
        c = plane % channels
        image = x[n, c]
        row_max = np.empty(used_w, dtype=x.dtype)  # over the window's input rows, per input column
        for oy in range(out_h):
            row_max[:] = -np.inf
            top = oy * stride_h - pad_h
            # only the taps on input rows: a huge kernel with huge padding must not loop over all taps
            first_u = max(0, (dilation_h - 1 - top) // dilation_h)
            for u in range(first_u, min(kernel_h, (in_h - 1 - top) // dilation_h + 1)):
                iy = top + u * dilation_h
                for ix in range(used_w):
                    value = image[iy, ix]
                    current = row_max[ix]
                    row_max[ix] = value if (value > current or value != value) else current
            result = out[n, c, oy]
            result[:] = -np.inf
            for v in range(first_v, last_v):
                offset, first_ox, last_ox = _column_outputs(v, out_w, stride_w, pad_w, dilation_w, used_w)
                for ox in range(first_ox, last_ox):
                    value = row_max[ox * stride_w + offset]
                    current = result[ox]
                    result[ox] = value if (value > current or value != value) else current


@ParallelKernel
@njit(cache=True, parallel=True)
def _avg_pool2d(x, out, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad, divisor_override):
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    padded_w_read = (out_w - 1) * stride_w + kernel_w
    used_w = max(min(in_w, padded_w_read - pad_w), 1)
    first_v, last_v = _column_taps(kernel_w, out_w, stride_w, pad_w, 1, used_w)
    # Window sizes factor into a row count times a column count; torch counts the padding inside
    # the padded input (count_include_pad) but never the part of a ceil_mode window beyond it.
    rows = np.empty(out_h, dtype=x.dtype)
    for oy in range(out_h):
        start = oy * stride_h - pad_h
        end = min(start + kernel_h, in_h + pad_h)
        rows[oy] = end - start if count_include_pad else min(end, in_h) - max(start, 0)
    cols = np.empty(out_w, dtype=x.dtype)
    for ox in range(out_w):
        start = ox * stride_w - pad_w
        end = min(start + kernel_w, in_w + pad_w)
        cols[ox] = end - start if count_include_pad else min(end, in_w) - max(start, 0)
    for plane in prange(batch * channels):
        n = plane // channels
        c = plane % channels
        image = x[n, c]
        row_sum = np.zeros(used_w, dtype=x.dtype)  # over the window's input rows, per input column
        for oy in range(out_h):
            row_sum[:] = 0
            top = oy * stride_h - pad_h
            for u in range(max(0, -top), min(kernel_h, in_h - top)):  # the taps on input rows only
                iy = top + u
                for ix in range(used_w):
                    row_sum[ix] += image[iy, ix]
            result = out[n, c, oy]
            result[:] = 0
            for v in range(first_v, last_v):  # the taps on input columns only
                offset, first_ox, last_ox = _column_outputs(v, out_w, stride_w, pad_w, 1, used_w)
                for ox in range(first_ox, last_ox):
                    result[ox] += row_sum[ox * stride_w + offset]
            for ox in range(out_w):
                divisor = divisor_override if divisor_override != 0 else rows[oy] * cols[ox]
                result[ox] /= divisor


def _prepare(x, name):
    """``x`` as a C-contiguous float (N, C, H, W) array of the compute dtype; (x, output dtype, unbatched)."""
    x = as_numeric_array("x", x)
    if x.dtype.kind == "c":
        raise TypeError(f"{name}: x has dtype {x.dtype}; pooling needs real values "
                        f"(accepted: bool, integer, float16, float32, float64)")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: x must have shape (N, C, H, W) or (C, H, W), got {x.ndim} dimensions: "
                         f"shape {x.shape}")
    compute_dtype, out_dtype = resolve_dtypes(x.dtype)
    unbatched = x.ndim == 3
    x = np.ascontiguousarray(x[None] if unbatched else x, dtype=compute_dtype)
    return x, out_dtype, unbatched


def _finish(out, out_dtype, unbatched):
    out = out.astype(out_dtype, copy=False)
    return out[0] if unbatched else out


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Maximum over each window, as torch's ``max_pool2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Real input; an unbatched input gives an unbatched result.
    kernel_size : int or (int, int)
        Window size (taps per axis).
    stride : int or (int, int), optional
        Step between windows; default ``kernel_size``.
    padding : int or (int, int)
        Implicit -inf border on both sides of each axis, at most ``kernel_size // 2``.
    dilation : int or (int, int)
        Spacing between the taps of a window.
    ceil_mode : bool
        Round the output size up, keeping a last partial window as long as it starts inside the
        input or its left/top padding.

    Returns
    -------
    numpy.ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        Same dtype as ``x`` for float32/float64 (float16 is computed in float32 and returned as
        float16; bools and integers give float64). NaN in a window gives NaN.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.max_pool2d(np.arange(25.0).reshape(1, 5, 5), 2, ceil_mode=True)[0]
    array([[ 6.,  8.,  9.],
           [16., 18., 19.],
           [21., 23., 24.]])
    """
    x, out_dtype, unbatched = _prepare(x, "max_pool2d")
    spec: PoolSpec = make_pool_spec(x.shape, kernel_size, stride=stride, padding=padding, dilation=dilation,
                                    ceil_mode=ceil_mode, op="max_pool2d", dtype=x.dtype)
    out = np.empty(spec.out_shape, dtype=x.dtype)
    _max_pool2d(x, out, *spec.kernel_size, *spec.stride, *spec.padding, *spec.dilation)
    return _finish(out, out_dtype, unbatched)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over each window, as torch's ``avg_pool2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Real input; an unbatched input gives an unbatched result.
    kernel_size, stride, padding, ceil_mode
        As for :func:`max_pool2d` (the padding holds zeros).
    count_include_pad : bool
        Divide by the window size including the zero padding (torch's default), or by the number
        of input pixels in the window only. The part of a ``ceil_mode`` window that lies beyond
        the padded input is never counted (torch's rule).
    divisor_override : int, optional
        Divide every window sum by this non-zero value instead.

    Returns
    -------
    numpy.ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out)
        Dtype as for :func:`max_pool2d`.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 1, 3, 3))
    >>> fastconv.avg_pool2d(x, 3, stride=1, padding=1)[0, 0]
    array([[0.44444444, 0.66666667, 0.44444444],
           [0.66666667, 1.        , 0.66666667],
           [0.44444444, 0.66666667, 0.44444444]])
    >>> fastconv.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    array([[1., 1., 1.],
           [1., 1., 1.],
           [1., 1., 1.]])
    """
    x, out_dtype, unbatched = _prepare(x, "avg_pool2d")
    spec: PoolSpec = make_pool_spec(x.shape, kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                                    op="avg_pool2d", dtype=x.dtype)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"avg_pool2d: count_include_pad must be True or False, got {count_include_pad!r}")
    override = 0
    if divisor_override is not None:
        override = as_int("divisor_override", divisor_override)
        if override == 0:
            raise ValueError("avg_pool2d: divisor_override must be None or a non-zero int, got 0")
        if abs(override) >= 2**62:  # the kernel takes it as an int64
            raise ValueError(f"avg_pool2d: divisor_override must be below 2**62 in magnitude, got {override}")
    out = np.empty(spec.out_shape, dtype=x.dtype)
    _avg_pool2d(x, out, *spec.kernel_size, *spec.stride, *spec.padding, bool(count_include_pad), override)
    return _finish(out, out_dtype, unbatched)
