"""Separable filters: splitting a kernel into 1-D factors, and convolving with given factors.

A rank-``r`` kernel is a sum of ``r`` outer products of a column and a row; :func:`separate` finds
them (an SVD), :func:`separable_conv2d` runs a convolution whose filters are given as factors
(on the ``separable`` backend, :mod:`fastconv.backends.separable`).
"""

from __future__ import annotations

import numpy as np

from fastconv.backends.separable import default_tolerance, factor_kernels
from fastconv.geometry import check_dtype
from fastconv.ops.operands import as_numeric_array
from fastconv.ops.conv2d import conv2d

__all__ = ["separate", "separable_conv2d"]


def separate(kernel2d, tol=None):
    """Split a 2-D kernel into column and row factors: ``kernel ≈ sum_i outer(cols[i], rows[i])``.

    Parameters
    ----------
    kernel2d : array_like, shape (kh, kw)
        The kernel (real or complex).
    tol : float, optional
        Relative tolerance: singular values below ``tol`` times the largest are dropped, so the
        spectral-norm error of the result is at most ``tol · ||kernel||₂``. Default
        ``max(kh, kw) · eps`` of the kernel's dtype (float64 for integers), numpy's ``matrix_rank``
        rule: only rounding noise is dropped.

    Returns
    -------
    cols : numpy.ndarray, shape (r, kh)
    rows : numpy.ndarray, shape (r, kw)
        The ``r`` rank-one terms, largest first (``r`` is 0 for an all-zero kernel). Float32,
        complex64 and complex128 kernels keep their dtype; everything else gives float64.

    Examples
    --------
    Sobel is rank 1: a smoothing column times a difference row.

    >>> import numpy as np, fastconv
    >>> sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]])
    >>> cols, rows = fastconv.separate(sobel)
    >>> len(cols), bool(np.allclose(np.outer(cols[0], rows[0]), sobel))
    (1, True)
    """
    kernel = np.asarray(kernel2d)
    if kernel.ndim != 2 or min(kernel.shape) < 1:
        raise ValueError(f"kernel2d must be a non-empty 2-D array (kh, kw), got shape {kernel.shape}")
    check_dtype("kernel2d", kernel.dtype)
    if kernel.dtype in (np.float32, np.complex64, np.complex128):
        dtype = kernel.dtype
    else:
        dtype = np.dtype(np.float64)
    if tol is None:
        tol = default_tolerance(kernel.shape, dtype)
    elif isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or not 0 <= tol < 1:
        raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
    if not np.isfinite(kernel).all():
        raise ValueError("kernel2d holds NaN or infinity; its singular value decomposition is undefined")
    cols, rows, rank = factor_kernels(kernel, float(tol))
    rank = int(rank)
    return cols[:, :rank].T.astype(dtype), rows[:rank].astype(dtype)


def separable_conv2d(x, col_kernel, row_kernel, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                     padding_mode="zeros"):
    """conv2d with the kernel ``outer(col_kernel, row_kernel)``, run as two 1-D passes.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input images, as for :func:`fastconv.conv2d`.
    col_kernel : array_like, shape (kh,) or (K, C // groups, kh)
        Column (vertical) factor of each filter.
    row_kernel : array_like, shape (kw,) or (K, C // groups, kw)
        Row (horizontal) factor of each filter. ``weight[k, c] = outer(col_kernel[k, c],
        row_kernel[k, c])``. With 1-D factors the one filter is applied to every channel on its
        own (``K = C``, depthwise, as ``scipy.ndimage`` filters each image); then ``groups``
        must stay 1.
    bias, stride, padding, dilation, groups, padding_mode
        As for :func:`fastconv.conv2d`, whose validation they go through.

    Returns
    -------
    numpy.ndarray
        As :func:`fastconv.conv2d` with ``backend="separable"`` returns.

    Examples
    --------
    A 5×5 box blur of each channel of an RGB image:

    >>> import numpy as np, fastconv
    >>> x = np.ones((3, 8, 8))
    >>> box = np.full(5, 1 / 5)
    >>> y = fastconv.separable_conv2d(x, box, box, padding="same")
    >>> y.shape, round(float(y[0, 4, 4]), 12), round(float(y[0, 0, 0]), 12)  # a corner sees 3×3 ones
    ((3, 8, 8), 1.0, 0.36)
    """
    cols = as_numeric_array("col_kernel", col_kernel)
    rows = as_numeric_array("row_kernel", row_kernel)
    if cols.ndim != rows.ndim or cols.ndim not in (1, 3) or cols.shape[:-1] != rows.shape[:-1]:
        raise ValueError(
            f"col_kernel and row_kernel must both have shape (k,) or (K, C // groups, k) with the same K and "
            f"C // groups, got shapes {cols.shape} and {rows.shape}"
        )
    x = as_numeric_array("x", x)
    if cols.ndim == 1:
        if not (isinstance(groups, (int, np.integer)) and groups == 1):
            raise ValueError(f"groups must be 1 with 1-D factors (each channel is filtered on its own), got {groups!r}")
        if x.ndim not in (3, 4):
            raise ValueError(f"x must have shape (N, C, H, W) or (C, H, W), got shape {x.shape}")
        channels = x.shape[-3]
        cols = np.broadcast_to(cols, (channels, 1, cols.shape[0]))
        rows = np.broadcast_to(rows, (channels, 1, rows.shape[0]))
        groups = channels
    weight = cols[..., :, None] * rows[..., None, :]
    return conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=padding_mode, backend="separable")
