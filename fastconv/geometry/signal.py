"""The geometry of scipy.signal's convolve2d / correlate2d.

Both are a correlation of ``in1``, extended past its edges by the boundary rule, with ``in2``
(flipped for convolution, conjugated for correlation). Only the amount of extension differs
between the modes.
"""

from __future__ import annotations

from fastconv.geometry.limits import check_fits

__all__ = ["SIGNAL_MODES", "SIGNAL_BOUNDARIES", "signal_geometry"]


SIGNAL_MODES = ("full", "same", "valid")
# scipy's boundary names (and their aliases) -> numpy.pad's modes
SIGNAL_BOUNDARIES = {"fill": "constant", "pad": "constant", "wrap": "wrap", "circular": "wrap",
                     "symm": "symmetric", "symmetric": "symmetric"}


def signal_geometry(in1_shape, in2_shape, mode="full", *, flip=True, op="convolve2d", dtype=None):
    """Padding of ``in1`` and whether scipy swaps the operands, for ``convolve2d``/``correlate2d``.

    Returns ``(swap, ((top, bottom), (left, right)), out_shape)``: with ``swap`` the roles of the
    two inputs are exchanged first (``"valid"`` mode with ``in2`` the larger, as scipy does), the
    padding is in pixels of the (possibly swapped) first input, and the result is a valid
    correlation of the padded input. ``flip`` is True for convolution: "same" centres differ by
    one pixel between convolution and correlation for even kernels, as in scipy. With a ``dtype``
    (a call computed in memory, in that dtype) the padded input and the result must each fit in
    :func:`memory_limit_bytes`.

    >>> signal_geometry((5, 6), (3, 4), "same")
    (False, ((1, 1), (2, 1)), (5, 6))
    >>> signal_geometry((2, 2), (5, 5), "valid")
    (True, ((0, 0), (0, 0)), (4, 4))
    """
    if not isinstance(mode, str) or mode not in SIGNAL_MODES:
        raise ValueError(f"{op}: mode must be one of {SIGNAL_MODES}, got {mode!r}")
    if len(in1_shape) != 2 or len(in2_shape) != 2:
        raise ValueError(f"{op} inputs must both be 2-D arrays, got shapes {tuple(in1_shape)} and {tuple(in2_shape)}")
    if min(in1_shape) < 1 or min(in2_shape) < 1:
        raise ValueError(f"{op}: inputs must not be empty, got shapes {tuple(in1_shape)} and {tuple(in2_shape)}")
    swap = False
    if mode == "valid":
        first_fits = all(a >= b for a, b in zip(in1_shape, in2_shape))
        second_fits = all(b >= a for a, b in zip(in1_shape, in2_shape))
        if not (first_fits or second_fits):
            raise ValueError("For 'valid' mode, one must be at least as large as the other in every dimension")
        swap = not first_fits
    if swap:
        in1_shape, in2_shape = in2_shape, in1_shape
    sides = []
    for k in in2_shape:
        if mode == "full":
            sides.append((k - 1, k - 1))
        elif mode == "same":  # the output is the full one cropped, starting at (k - 1) // 2 (or k // 2)
            start = (k - 1) // 2 if flip else k // 2
            sides.append((k - 1 - start, start))
        else:
            sides.append((0, 0))
    out = tuple(n + before + after - k + 1 for n, k, (before, after) in zip(in1_shape, in2_shape, sides))
    if dtype is not None:
        def cause():
            return f"{op}: mode={mode!r} on inputs of shapes {tuple(in1_shape)} and {tuple(in2_shape)}"

        padded = tuple(n + before + after for n, (before, after) in zip(in1_shape, sides))
        check_fits("the result", out, dtype, cause, "use mode='valid' or 'same', or fastconv.dask")
        check_fits("the padded input", padded, dtype, cause, "use mode='valid' or 'same', or fastconv.dask")
    return swap, tuple(sides), out

