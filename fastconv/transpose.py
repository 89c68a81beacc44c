"""``conv_transpose2d``: transposed convolution (the adjoint of conv2d), with torch's semantics.

Where conv2d *gathers* a window of input pixels into each output pixel, the transposed
convolution *scatters*: input pixel (i, j) adds ``x[n, c, i, j] * weight[c, k, u, v]`` to output
pixel ``(i * stride - padding + u * dilation, j * stride - padding + v * dilation)``. It is what
conv2d's gradient with respect to its input computes, and the upsampling layer of decoders and
GAN generators. Two algorithms, chosen with ``backend=``:

``naive``
    The definition read backwards, as a gather: for each output pixel, visit every kernel tap and
    keep those whose source ``(oy + padding - u * dilation) / stride`` is a whole input pixel.
    Plain loops, every dtype; the reference.
``col2im`` (what ``"auto"`` picks)
    One matrix product computes every scattered contribution at once,
    ``columns[(k, u, v), (n, i, j)] = sum_c weight[c, (k, u, v)] * x[c, (n, i, j)]`` (BLAS, per
    group), then a numba kernel adds each column into its output pixel ("col2im", the inverse of
    im2col). No zero-stuffed input is ever built: the product does exactly the useful
    multiplications. The product runs on BLAS's threads; col2im, a cheap memory-bound pass, runs
    on the calling thread on purpose: on a parallel numba kernel started right after the product,
    numba's workers and OpenBLAS's (which spin-wait after a GEMM) fight for the cores, and we
    measured the whole call 4-10× slower on 2 cores (docs/performance.md).

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 1, 2, 2)); w = np.ones((1, 1, 2, 2))
>>> fastconv.conv_transpose2d(x, w, stride=2)[0, 0]
array([[1., 1., 1., 1.],
       [1., 1., 1., 1.],
       [1., 1., 1., 1.],
       [1., 1., 1., 1.]])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastconv import config
from fastconv.dispatch import _batched_operands, _check_bias, _preferred_backend
from fastconv.geometry import TransposeSpec, make_transpose_spec

__all__ = ["conv_transpose2d", "TRANSPOSE_BACKENDS"]


@njit(cache=True)
def _naive_conv_transpose2d(x, weight, out, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups):
    batch, in_channels, in_h, in_w = x.shape
    _, out_per_group, kernel_h, kernel_w = weight.shape
    _, out_channels, out_h, out_w = out.shape
    in_per_group = in_channels // groups
    for n in range(batch):
        for k in range(out_channels):
            group = k // out_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    total = out[n, k, oy, ox]  # starts at the bias
                    for c in range(group * in_per_group, (group + 1) * in_per_group):
                        for u in range(kernel_h):
                            row = oy + pad_h - u * dilation_h  # = i * stride for the source row i
                            if row < 0 or row % stride_h != 0 or row // stride_h >= in_h:
                                continue
                            for v in range(kernel_w):
                                col = ox + pad_w - v * dilation_w
                                if col < 0 or col % stride_w != 0 or col // stride_w >= in_w:
                                    continue
                                total += x[n, c, row // stride_h, col // stride_w] * weight[c, k % out_per_group, u, v]
                    out[n, k, oy, ox] = total


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


def _run_naive(x, weight, bias, spec: TransposeSpec) -> np.ndarray:
    out = _output_with_bias(bias, spec)
    _naive_conv_transpose2d(x, weight, out, *spec.stride, *spec.padding, *spec.dilation, spec.groups)
    return out


def _run_col2im(x, weight, bias, spec: TransposeSpec) -> np.ndarray:
    out = _output_with_bias(bias, spec)
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


def _output_with_bias(bias, spec: TransposeSpec) -> np.ndarray:
    out = np.zeros(spec.out_shape, dtype=spec.dtype)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


#: The algorithms ``conv_transpose2d(backend=...)`` accepts; ``"auto"`` runs ``_AUTO``.
TRANSPOSE_BACKENDS = {"naive": _run_naive, "col2im": _run_col2im}
_AUTO = "col2im"


def _pick_backend(backend) -> str:
    if backend == "auto":  # honour use_backend("naive") blocks
        preferred = _preferred_backend.get()
        return preferred if preferred in TRANSPOSE_BACKENDS else _AUTO
    if not isinstance(backend, str) or backend not in TRANSPOSE_BACKENDS:
        raise ValueError(f"Unknown backend {backend!r} for conv_transpose2d; valid backends are "
                         f"{', '.join(TRANSPOSE_BACKENDS)} and 'auto'")
    return backend


def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     backend="auto"):
    """Transposed 2-D convolution ("deconvolution"), as torch's ``conv_transpose2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input. An unbatched input gives an unbatched result.
    weight : array_like, shape (C, K // groups, kh, kw)
        Filters, in torch's layout for transposed convolution (input channels first).
    bias : array_like, shape (K,), optional
        Added to every output value of channel k.
    stride, dilation : int or (int, int)
        Spacing of the scattered kernels, and of the taps inside each. Positive.
    padding : int or (int, int)
        Rows/columns removed from both sides of each axis of the full result, as in torch
        (``dilation * (k - 1) - padding`` of zero padding on the equivalent convolution).
    output_padding : int or (int, int)
        Extra rows/columns added at the bottom/right, to pick one of the output sizes that a
        strided convolution maps to the same input size. Smaller than ``max(stride, dilation)``.
    groups : int
        Divides C and K: ``groups`` independent transposed convolutions.
    backend : {"auto", "col2im", "naive"}
        The algorithm (see the module docstring); ``"auto"`` runs ``"col2im"``.

    Returns
    -------
    numpy.ndarray, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        ``H_out = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1``.
        Dtype rules as :func:`fastconv.conv2d`.

    Examples
    --------
    Upsample a 4×4 map to 8×8, DCGAN style:

    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 8, 4, 4), dtype=np.float32); w = np.ones((8, 3, 4, 4), dtype=np.float32)
    >>> fastconv.conv_transpose2d(x, w, stride=2, padding=1).shape
    (1, 3, 8, 8)
    """
    x, (weight,), bias, unbatched, compute_dtype, out_dtype = _batched_operands(x, {"weight": weight}, bias)
    if weight.ndim != 4:
        raise ValueError(f"weight must have shape (C, K // groups, kh, kw), got {weight.ndim} dimensions: "
                         f"shape {weight.shape}")
    spec = make_transpose_spec(x.shape, weight.shape, stride=stride, padding=padding, output_padding=output_padding,
                               dilation=dilation, groups=groups, dtype=compute_dtype, out_dtype=out_dtype)
    _check_bias(bias, spec.out_channels, f"weight {weight.shape} and groups={spec.groups}")
    run = TRANSPOSE_BACKENDS[_pick_backend(backend)]
    x = np.ascontiguousarray(x, dtype=compute_dtype)
    weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=compute_dtype)
    out = run(x, weight, bias, spec).astype(out_dtype, copy=False)
    return out[0] if unbatched else out
