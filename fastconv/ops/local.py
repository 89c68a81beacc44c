"""Convolutions whose filters change with the output position: unshared (local) and tiled.

``local_conv2d`` is the locally connected layer: conv2d's geometry, but every output position
(i, j) has its own filter bank ``weight[i, j]`` of shape (K, C, kh, kw)::

    out[n, k, i, j] = bias[k] + sum_{c, u, v} x_pad[n, c, i*sh + u*dh, j*sw + v*dw] * weight[i, j, k, c, u, v]

Each position is then a small matrix product (its input patch times its own filters), so the
whole layer is one batched product (``numpy.matmul`` over positions, BLAS underneath) of the
im2col patches with the weights.

``tiled_conv2d`` sits between local and ordinary convolution: ``t_h * t_w`` filter banks are
cycled over the output, position (i, j) using ``weight[i % t_h, j % t_w]``. The outputs that
share a filter bank form a sub-grid with ``t`` times the stride, so the layer is ``t_h * t_w``
ordinary convolutions with stride ``(t_h * sh, t_w * sw)`` on shifted views of the padded input
— each one a :func:`fastconv.conv2d` call that any backend can serve. With t = 1 it is conv2d;
with t equal to the output size it is local_conv2d.

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 1, 3, 3)); w = np.ones((2, 2, 1, 1, 2, 2)) * np.arange(1, 5).reshape(2, 2, 1, 1, 1, 1)
>>> fastconv.local_conv2d(x, w)[0, 0]
array([[ 4.,  8.],
       [12., 16.]])
>>> fastconv.tiled_conv2d(x, w)[0, 0]
array([[ 4.,  8.],
       [12., 16.]])
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fastconv.geometry import backend_input, make_local_spec, pad_input
from fastconv.ops.operands import batched_operands, check_bias
from fastconv.ops.conv2d import conv2d

__all__ = ["local_conv2d", "tiled_conv2d"]


def _prepare(x, weight, bias, stride, padding, dilation, padding_mode, tiled):
    """The padded input (gathered where :func:`fastconv.geometry.backend_input` gathers), contiguous
    operands of the compute dtype, and the spec of that input (no padding left)."""
    x, (weight,), bias, unbatched, compute_dtype, out_dtype = batched_operands(x, {"weight": weight}, bias)
    spec = make_local_spec(x.shape, weight.shape, stride=stride, padding=padding, dilation=dilation,
                           padding_mode=padding_mode, tiled=tiled, dtype=compute_dtype, out_dtype=out_dtype)
    check_bias(bias, spec.out_channels, f"weight {weight.shape}")
    x_read, spec = backend_input(np.ascontiguousarray(x, dtype=compute_dtype), spec)
    x_padded, spec = pad_input(x_read, spec), spec.zero_padded()  # the window views need explicit zeros
    weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    bias = None if bias is None else np.asarray(bias, dtype=compute_dtype)
    return x_padded, weight, bias, spec, unbatched


def local_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """Unshared convolution (locally connected layer): one filter bank per output position.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input; an unbatched input gives an unbatched result.
    weight : array_like, shape (H_out, W_out, K, C, kh, kw)
        ``weight[i, j]`` is the (K, C, kh, kw) filter bank of output position (i, j); its first two
        axes must equal the output size that conv2d's geometry gives.
    bias : array_like, shape (K,), optional
        Shared by all positions.
    stride, padding, dilation, padding_mode
        As for :func:`fastconv.conv2d`.

    Returns
    -------
    numpy.ndarray, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        Dtype rules as :func:`fastconv.conv2d`.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.local_conv2d(np.ones((2, 5, 5)), np.ones((3, 3, 4, 2, 3, 3))).shape
    (4, 3, 3)
    """
    x_padded, weight, bias, spec, unbatched = _prepare(x, weight, bias, stride, padding, dilation, padding_mode,
                                                       tiled=False)
    (dh, dw), (sh, sw) = spec.dilation, spec.stride
    out_h, out_w = spec.out_height, spec.out_width
    windows = sliding_window_view(x_padded, spec.dilated_kernel, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    windows = windows[:, :, :out_h, :out_w]  # (N, C, H_out, W_out, kh, kw)
    taps = spec.in_channels * spec.kernel_height * spec.kernel_width
    # one (N, taps) @ (taps, K) product per output position
    patches = windows.transpose(2, 3, 0, 1, 4, 5).reshape(out_h * out_w, spec.batch, taps)
    filters = weight.reshape(out_h * out_w, spec.out_channels, taps).transpose(0, 2, 1)
    out = np.matmul(patches, filters).reshape(out_h, out_w, spec.batch, spec.out_channels).transpose(2, 3, 0, 1)
    if bias is not None:
        out = out + bias[None, :, None, None]
    out = np.ascontiguousarray(out).astype(spec.out_dtype, copy=False)
    return out[0] if unbatched else out


def tiled_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, padding_mode="zeros", backend="auto"):
    """Tiled convolution: ``t_h * t_w`` filter banks cycled over the output positions.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input; an unbatched input gives an unbatched result.
    weight : array_like, shape (t_h, t_w, K, C, kh, kw)
        Output position (i, j) uses ``weight[i % t_h, j % t_w]``; a tile larger than the output
        leaves the banks past it unused.
    bias : array_like, shape (K,), optional
        Shared by all positions.
    stride, padding, dilation, padding_mode
        As for :func:`fastconv.conv2d`.
    backend : str
        The conv2d backend that runs the ``t_h * t_w`` strided convolutions, or "auto".

    Returns
    -------
    numpy.ndarray, shape (N, K, H_out, W_out) or (K, H_out, W_out)

    Examples
    --------
    Two filters alternating along each row:

    >>> import numpy as np, fastconv
    >>> w = np.stack([np.ones((1, 1, 1, 1)), -np.ones((1, 1, 1, 1))])[None]  # (1, 2, 1, 1, 1, 1)
    >>> fastconv.tiled_conv2d(np.ones((1, 2, 4)), w)[0]
    array([[ 1., -1.,  1., -1.],
           [ 1., -1.,  1., -1.]])
    """
    x_padded, weight, bias, spec, unbatched = _prepare(x, weight, bias, stride, padding, dilation, padding_mode,
                                                       tiled=True)
    tile_h, tile_w = weight.shape[:2]
    out = np.empty(spec.out_shape, dtype=spec.dtype)

    def sub_grid(first, tile, out_size, stride, extent):
        """The padded rows that outputs first, first + tile, ... read, and the stride between them."""
        count = len(range(first, out_size, tile))
        # one output: any stride will do, and stride * tile may be past what conv2d accepts
        step = stride * tile if count > 1 else 1
        return slice(first * stride, first * stride + (count - 1) * step + extent), step

    # banks a >= H_out (b >= W_out) serve no output: every output (i, j) has i % t_h = a < H_out
    for a in range(min(tile_h, spec.out_height)):
        rows, step_h = sub_grid(a, tile_h, spec.out_height, spec.stride[0], spec.dilated_kernel[0])
        for b in range(min(tile_w, spec.out_width)):
            cols, step_w = sub_grid(b, tile_w, spec.out_width, spec.stride[1], spec.dilated_kernel[1])
            out[:, :, a::tile_h, b::tile_w] = conv2d(x_padded[:, :, rows, cols], weight[a, b], bias,
                                                     stride=(step_h, step_w), dilation=spec.dilation,
                                                     padding="valid", backend=backend)
    out = out.astype(spec.out_dtype, copy=False)
    return out[0] if unbatched else out
