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
from fastconv.geometry import PoolSpec, as_int, make_pool_spec, resolve_dtypes, shape_tuple
from fastconv.ops.operands import as_numeric_array

__all__ = ["avg_pool2d", "avg_pool2d_backward", "max_pool2d", "max_pool2d_backward"]


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


@njit(cache=True)
def _window_extents(extents, kernel, stride, pad, size, count_include_pad):
    """Fill ``extents[o]`` with how many input positions along one axis window ``o`` averages over
    (torch's rule: the padding counts with ``count_include_pad``, the part of a ceil_mode window
    beyond the padded input never does); returns ``extents``."""
    for o in range(extents.shape[0]):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        extents[o] = end - start if count_include_pad else min(end, size) - max(start, 0)
    return extents


@ParallelKernel
@njit(cache=True, parallel=True)
def _avg_pool2d(x, out, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad, divisor_override):
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    padded_w_read = (out_w - 1) * stride_w + kernel_w
    used_w = max(min(in_w, padded_w_read - pad_w), 1)
    first_v, last_v = _column_taps(kernel_w, out_w, stride_w, pad_w, 1, used_w)
    # window sizes factor into a row count times a column count
    rows = _window_extents(np.empty(out_h, dtype=x.dtype), kernel_h, stride_h, pad_h, in_h, count_include_pad)
    cols = _window_extents(np.empty(out_w, dtype=x.dtype), kernel_w, stride_w, pad_w, in_w, count_include_pad)
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


def _divisor(divisor_override, name) -> int:
    """``divisor_override`` as the kernels take it: 0 for None, else a non-zero int64."""
    if divisor_override is None:
        return 0
    override = as_int("divisor_override", divisor_override)
    if override == 0:
        raise ValueError(f"{name}: divisor_override must be None or a non-zero int, got 0")
    if abs(override) >= 2**62:  # the kernel takes it as an int64
        raise ValueError(f"{name}: divisor_override must be below 2**62 in magnitude, got {override}")
    return override


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
    override = _divisor(divisor_override, "avg_pool2d")
    out = np.empty(spec.out_shape, dtype=x.dtype)
    _avg_pool2d(x, out, *spec.kernel_size, *spec.stride, *spec.padding, bool(count_include_pad), override)
    return _finish(out, out_dtype, unbatched)


# --------------------------------------------------------------------------------------------
# gradients


@ParallelKernel
@njit(cache=True, parallel=True)
def _max_pool2d_backward(x, grad, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                         dilation_w):
    """Add each window's output gradient to the input pixel holding its maximum (torch's argmax)."""
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = grad.shape[2], grad.shape[3]
    for plane in prange(batch * channels):
        n = plane // channels
        c = plane % channels
        image = x[n, c]
        target = grad_in[n, c]
        for oy in range(out_h):
            top = oy * stride_h - pad_h
            first_u = max(0, (dilation_h - 1 - top) // dilation_h)
            last_u = min(kernel_h, (in_h - 1 - top) // dilation_h + 1)
            for ox in range(out_w):
                left = ox * stride_w - pad_w
                first_v = max(0, (dilation_w - 1 - left) // dilation_w)
                last_v = min(kernel_w, (in_w - 1 - left) // dilation_w + 1)
                if first_u >= last_u or first_v >= last_v:
                    continue  # a window of padding only (its maximum is -inf): no input pixel to credit
                # torch's scan: row by row, the first maximum wins a tie, a NaN wins over numbers
                # and a later NaN over an earlier one; a window of -inf credits its first pixel
                best_y, best_x = top + first_u * dilation_h, left + first_v * dilation_w
                best = -np.inf
                for u in range(first_u, last_u):
                    iy = top + u * dilation_h
                    for v in range(first_v, last_v):
                        ix = left + v * dilation_w
                        value = image[iy, ix]
                        if value > best or value != value:
                            best, best_y, best_x = value, iy, ix
                target[best_y, best_x] += grad[n, c, oy, ox]


@ParallelKernel
@njit(cache=True, parallel=True)
def _avg_pool2d_backward(grad, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad,
                         divisor_override):
    """Spread each window's output gradient, over its divisor, evenly on the input pixels it averaged."""
    batch, channels, in_h, in_w = grad_in.shape
    out_h, out_w = grad.shape[2], grad.shape[3]
    # the divisor factors, as the forward kernel counts them
    rows = _window_extents(np.empty(out_h, dtype=grad.dtype), kernel_h, stride_h, pad_h, in_h, count_include_pad)
    cols = _window_extents(np.empty(out_w, dtype=grad.dtype), kernel_w, stride_w, pad_w, in_w, count_include_pad)
    for plane in prange(batch * channels):
        n = plane // channels
        c = plane % channels
        target = grad_in[n, c]
        row_sum = np.zeros(in_w, dtype=grad.dtype)  # one output row spread over the input columns
        for oy in range(out_h):
            row_sum[:] = 0
            for ox in range(out_w):
                divisor = divisor_override if divisor_override != 0 else rows[oy] * cols[ox]
                value = grad[n, c, oy, ox] / divisor
                left = ox * stride_w - pad_w
                for ix in range(max(0, left), min(in_w, left + kernel_w)):
                    row_sum[ix] += value
            top = oy * stride_h - pad_h
            for iy in range(max(0, top), min(in_h, top + kernel_h)):
                target[iy] += row_sum


def _pool_gradient_operands(name, x_or_shape, grad_output, spec_of):
    """Validate a pooling gradient's operands; (x or None, grad_output, spec, output dtype, unbatched).

    ``x_or_shape`` is the forward input (max pooling) or its shape (average pooling);
    ``spec_of(batched input shape, compute dtype)`` validates the geometry.
    """
    arrays = {"grad_output": as_numeric_array("grad_output", grad_output)}
    if isinstance(x_or_shape, (tuple, list)):
        input_shape = shape_tuple("input_shape", x_or_shape)
    else:
        arrays["x"] = as_numeric_array("x", x_or_shape)
        input_shape = arrays["x"].shape
    for label, array in arrays.items():
        if array.dtype.kind == "c":
            raise TypeError(f"{name}: {label} has dtype {array.dtype}; pooling needs real values "
                            f"(accepted: bool, integer, float16, float32, float64)")
    if len(input_shape) not in (3, 4):
        raise ValueError(f"{name}: the input must have shape (N, C, H, W) or (C, H, W), got shape {input_shape}")
    unbatched = len(input_shape) == 3
    compute_dtype, out_dtype = resolve_dtypes(*(array.dtype for array in arrays.values()))
    spec = spec_of((1, *input_shape) if unbatched else input_shape, compute_dtype)
    expected = spec.out_shape[1:] if unbatched else spec.out_shape
    if arrays["grad_output"].shape != expected:
        raise ValueError(f"{name}: grad_output has shape {arrays['grad_output'].shape}, but the pooling of an input "
                         f"of shape {input_shape} has output shape {expected}")
    batched = {label: np.ascontiguousarray(array[None] if unbatched else array, dtype=compute_dtype)
               for label, array in arrays.items()}
    return batched.get("x"), batched["grad_output"], spec, out_dtype, unbatched


def max_pool2d_backward(x, grad_output, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The gradient of :func:`max_pool2d` with respect to its input.

    Each window's output gradient goes to the input pixel that holds the window's maximum, as
    torch picks it: scanning the window row by row, the first of equal maxima, or the last NaN;
    overlapping windows add up.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        The forward call's input.
    grad_output : array_like, shape of ``max_pool2d``'s result
        The gradient of the loss with respect to the pooled output.
    kernel_size, stride, padding, dilation, ceil_mode
        Those of the forward :func:`max_pool2d` call.

    Returns
    -------
    numpy.ndarray of ``x``'s shape
        Dtype as conv2d's rules give for ``x`` and ``grad_output``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.array([[[1.0, 3.0], [3.0, 2.0]]])
    >>> fastconv.max_pool2d_backward(x, np.ones((1, 1, 1)), 2)[0]   # a tie: the first maximum
    array([[0., 1.],
           [0., 0.]])
    """
    x, grad_output, spec, out_dtype, unbatched = _pool_gradient_operands(
        "max_pool2d_backward", x, grad_output,
        lambda shape, dtype: make_pool_spec(shape, kernel_size, stride=stride, padding=padding, dilation=dilation,
                                            ceil_mode=ceil_mode, op="max_pool2d_backward", dtype=dtype))
    grad_in = np.zeros(x.shape, dtype=x.dtype)
    _max_pool2d_backward(x, grad_output, grad_in, *spec.kernel_size, *spec.stride, *spec.padding, *spec.dilation)
    return _finish(grad_in, out_dtype, unbatched)


def avg_pool2d_backward(input_shape, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """The gradient of :func:`avg_pool2d` with respect to its input.

    Each window's output gradient, divided as the forward call divided its sum, is added to every
    input pixel of the window (padding receives nothing).

    Parameters
    ----------
    input_shape : tuple of int
        The forward call's input shape, (N, C, H, W) or (C, H, W).
    grad_output : array_like, shape of ``avg_pool2d``'s result
        The gradient of the loss with respect to the pooled output.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        Those of the forward :func:`avg_pool2d` call.

    Returns
    -------
    numpy.ndarray of ``input_shape``
        Dtype as conv2d's rules give for ``grad_output``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool2d_backward((1, 2, 4), np.ones((1, 1, 2)), 2)[0]
    array([[0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25]])
    """
    override = _divisor(divisor_override, "avg_pool2d_backward")
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"avg_pool2d_backward: count_include_pad must be True or False, got {count_include_pad!r}")
    _, grad_output, spec, out_dtype, unbatched = _pool_gradient_operands(
        "avg_pool2d_backward", input_shape if isinstance(input_shape, (tuple, list)) else tuple(input_shape), grad_output,
        lambda shape, dtype: make_pool_spec(shape, kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                                            op="avg_pool2d_backward", dtype=dtype))
    grad_in = np.zeros((spec.batch, spec.channels, spec.in_height, spec.in_width), dtype=grad_output.dtype)
    _avg_pool2d_backward(grad_output, grad_in, *spec.kernel_size, *spec.stride, *spec.padding,
                         bool(count_include_pad), override)
    return _finish(grad_in, out_dtype, unbatched)
