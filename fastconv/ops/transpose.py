"""``conv_transpose2d``: transposed convolution (the adjoint of conv2d), with torch's semantics.

Where conv2d *gathers* a window of input pixels into each output pixel, the transposed
convolution *scatters*: input pixel (i, j) adds ``x[n, c, i, j] * weight[c, k, u, v]`` to output
pixel ``(i * stride - padding + u * dilation, j * stride - padding + v * dilation)``. It is what
conv2d's gradient with respect to its input computes, and the upsampling layer of decoders and
GAN generators. Two algorithms, chosen with ``backend=``:

``naive`` (:mod:`fastconv.backends.naive`)
    The definition read backwards, as a gather: plain loops, every dtype; the reference.
``col2im`` (:mod:`fastconv.backends.col2im`, what ``"auto"`` picks)
    One matrix product computes every scattered contribution at once, then a numba kernel adds
    each column into its output pixel (the inverse of im2col).

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

from fastconv import backends
from fastconv.geometry import make_transpose_spec
from fastconv.ops.operands import batched_operands, check_bias
from fastconv.ops.conv2d import preferred_backend

__all__ = ["conv_transpose2d"]


def _pick_backend(backend) -> str:
    if backend == "auto":
        # a use_backend() block's preference when it has a transposed convolution, else the first
        # available backend that is not the reference loops
        names = backends.backend_names("conv_transpose2d")
        preferred = preferred_backend()
        if preferred in names:
            return preferred
        fallback = None
        for name in names:
            if backends.unavailable_reason(name) is None:
                if not getattr(backends.get(name), "reference", False):
                    return name
                fallback = fallback or name
        if fallback is None:
            raise ValueError("no backend can run conv_transpose2d here")
        return fallback
    return backends.check_name(backend, "conv_transpose2d")


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
    x, (weight,), bias, unbatched, compute_dtype, out_dtype = batched_operands(x, {"weight": weight}, bias)
    if weight.ndim != 4:
        raise ValueError(f"weight must have shape (C, K // groups, kh, kw), got {weight.ndim} dimensions: "
                         f"shape {weight.shape}")
    spec = make_transpose_spec(x.shape, weight.shape, stride=stride, padding=padding, output_padding=output_padding,
                               dilation=dilation, groups=groups, dtype=compute_dtype, out_dtype=out_dtype)
    check_bias(bias, spec.out_channels, f"weight {weight.shape} and groups={spec.groups}")
    run = backends.get(_pick_backend(backend)).run_transpose
    x = np.ascontiguousarray(x, dtype=compute_dtype)
    weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=compute_dtype)
    out = run(x, weight, bias, spec).astype(out_dtype, copy=False)
    return out[0] if unbatched else out
