"""``convolve2d`` and ``correlate2d``: drop-in replacements for scipy.signal's, served by conv2d.

Both are computed the same way: extend ``in1`` past its edges as ``boundary`` says (a constant
``fillvalue``, periodic wrap-around, or mirror images that repeat the edge pixel), then slide
``in2`` over it with conv2d's ``padding="valid"``. True convolution flips ``in2`` first;
correlation conjugates it instead. ``mode`` only changes how far ``in1`` is extended
(:func:`fastconv.geometry.signal_geometry`): ``k - 1`` on each side for "full", about half of
that for "same", nothing for "valid". Because the extension is explicit (``numpy.pad``), wrap and
symm work for kernels of any size, even several times larger than the image, exactly as scipy.

Every float or complex call is one :func:`fastconv.conv2d` on a (1, 1, H, W) view, so
``backend=`` picks any conv2d backend and ``"auto"`` the best one for the shape. Integer inputs
give integer results, as in scipy, computed exactly in 64-bit integers (wrapping like scipy's
fixed-width arithmetic when the result dtype overflows); longdouble inputs keep their precision
(both by shifted products in numpy, one per kernel tap).

scipy's rules are followed throughout: the result dtype is ``numpy.result_type(in1, in2)``
(bool-only, float16-only and object inputs are refused, as scipy refuses them); in "valid" mode
the inputs are swapped when ``in2`` is the larger in every dimension (for correlation the result
is then reversed), and an error is raised when neither is; ``fillvalue`` is cast to the result
dtype with scipy's checks. One deliberate difference: empty inputs raise ValueError.

Examples
--------
>>> import numpy as np, fastconv
>>> image = np.arange(9.0).reshape(3, 3)
>>> fastconv.convolve2d(image, np.array([[1.0, -1.0]]), mode="same")
array([[0., 1., 1.],
       [3., 1., 1.],
       [6., 1., 1.]])
>>> fastconv.correlate2d(image, np.ones((2, 2)), mode="valid", boundary="symm")
array([[ 8., 12.],
       [20., 24.]])
"""

from __future__ import annotations

import warnings

import numpy as np

from fastconv import backends
from fastconv.geometry import SIGNAL_BOUNDARIES, signal_geometry
from fastconv.ops.conv2d import conv2d

__all__ = ["convolve2d", "correlate2d", "computed_exactly", "correlate_padded", "fill_value", "pad_mode",
           "result_dtype"]

_CONV2D_DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128)}
# computed by shifted products in numpy instead: exact integers, and extended precision kept
_SHIFT_AND_ADD_DTYPES = {np.dtype(np.longdouble), np.dtype(np.clongdouble)}


def result_dtype(in1: np.ndarray, in2: np.ndarray, op: str) -> np.dtype:
    """The dtype scipy's ``op`` returns for these inputs; ValueError for the dtypes scipy refuses."""
    dtype = np.result_type(in1.dtype, in2.dtype)
    if dtype.kind in "iu" or dtype in _CONV2D_DTYPES or dtype in _SHIFT_AND_ADD_DTYPES:
        return dtype
    raise ValueError(f"{op} not available for this type: inputs of dtype {in1.dtype} and {in2.dtype} give "
                     f"{dtype}; accepted: integers, float32, float64, longdouble and their complex types (as scipy)")


def fill_value(fillvalue, dtype: np.dtype):
    """``fillvalue`` as a scalar of ``dtype``, cast where and how scipy 1.17 casts it.

    Python scalars (and one-element lists) follow numpy's checked conversion (an int out of
    range, a complex for a real result, NaN for an integer: ValueError); numpy scalars are cast
    like numpy casts arrays (unchecked); a numpy array must cast safely to ``dtype``.
    """
    fill = np.asarray(fillvalue)
    if fill.size != 1:
        raise ValueError("`fillvalue` must be scalar or an array with one element.")
    refused = ValueError(f"could not cast `fillvalue` directly to the output type {dtype} "
                         f"(it was first converted to complex).")
    if isinstance(fillvalue, np.ndarray):
        if fill.dtype.kind not in "biufc" or not np.can_cast(fill.dtype, dtype, "safe"):
            raise refused
        return fill.reshape(()).astype(dtype)[()]
    if isinstance(fillvalue, np.generic) and fill.dtype.kind in "biufc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ComplexWarning, invalid-cast RuntimeWarning: scipy is silent
            return fill.astype(dtype)[()]
    value = fill.reshape(()).item()
    if isinstance(value, (str, bytes)):
        try:
            complex(value)  # a malformed string raises ValueError, as in scipy
        except ValueError:
            raise ValueError(f"`fillvalue` must be a number (or a string complex() reads), got {value!r}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 1e40 -> float32 is inf, silently
            return np.array(value, dtype=dtype)[()]
    except (TypeError, ValueError, OverflowError):
        raise refused from None


def pad_mode(boundary, op: str) -> str:
    """numpy's pad mode for scipy's ``boundary`` name."""
    if not isinstance(boundary, str) or boundary not in SIGNAL_BOUNDARIES:
        raise ValueError(f"{op}: boundary must be one of 'fill', 'wrap' (or 'circular') and 'symm' "
                         f"(or 'symmetric'), got {boundary!r}")
    return SIGNAL_BOUNDARIES[boundary]


def computed_exactly(dtype: np.dtype) -> bool:
    """Integer and long-double results: computed by shift-and-add, never by a conv2d backend."""
    return dtype.kind in "iu" or dtype in _SHIFT_AND_ADD_DTYPES


def correlate_padded(padded: np.ndarray, kernel: np.ndarray, backend) -> np.ndarray:
    """Valid correlation of two 2-D arrays of the result dtype."""
    if computed_exactly(padded.dtype):
        # integers: exact arithmetic, wrapping modulo 2**64 (and so modulo the result's width);
        # longdouble: computed in longdouble
        wide = {"i": np.int64, "u": np.uint64}.get(padded.dtype.kind, padded.dtype)
        padded, kernel = padded.astype(wide), kernel.astype(wide)
        rows, cols = padded.shape[0] - kernel.shape[0] + 1, padded.shape[1] - kernel.shape[1] + 1
        total = np.zeros((rows, cols), dtype=wide)
        for u in range(kernel.shape[0]):
            for v in range(kernel.shape[1]):
                total += kernel[u, v] * padded[u:u + rows, v:v + cols]
        return total
    return conv2d(padded[None, None], kernel[None, None], padding="valid", backend=backend)[0, 0]


def _signal(in1, in2, mode, boundary, fillvalue, backend, *, flip: bool, op: str) -> np.ndarray:
    in1, in2 = np.asarray(in1), np.asarray(in2)
    if not in1.ndim == in2.ndim == 2:
        raise ValueError(f"{op} inputs must both be 2-D arrays, got shapes {in1.shape} and {in2.shape}")
    numpy_mode = pad_mode(boundary, op)
    dtype = result_dtype(in1, in2, op)
    swap, sides, _ = signal_geometry(in1.shape, in2.shape, mode, flip=flip, op=op, dtype=dtype)
    if backend != "auto":  # checked here too: integer and long double results never reach a backend
        backends.check_name(backend)
    if swap:  # scipy's rule for "valid" mode when in2 is the larger
        in1, in2 = in2, in1
    kernel = in2[::-1, ::-1] if flip else in2.conj()
    extra = {"constant_values": fill_value(fillvalue, dtype)} if numpy_mode == "constant" else {}
    padded = np.pad(in1.astype(dtype, copy=False), sides, mode=numpy_mode, **extra)
    out = correlate_padded(padded, np.ascontiguousarray(kernel, dtype=dtype), backend)
    if swap and not flip:
        out = out[::-1, ::-1]
    return np.ascontiguousarray(out).astype(dtype, copy=False)


def convolve2d(in1, in2, mode="full", boundary="fill", fillvalue=0, backend="auto"):
    """Convolve two 2-D arrays, as ``scipy.signal.convolve2d`` (the kernel is flipped).

    Parameters
    ----------
    in1, in2 : array_like, 2-D
        The image and the kernel (either may be the larger).
    mode : {"full", "same", "valid"}
        "full": every overlap, shape ``in1 + in2 - 1``; "same": the shape of ``in1``, centred on
        the full result; "valid": only full overlaps, ``|in1 - in2| + 1`` (the inputs are swapped
        when ``in2`` is larger in every dimension; an error when neither input is).
    boundary : {"fill", "wrap", "symm"}
        How ``in1`` is extended: ``fillvalue``, periodically, or mirrored with the edge repeated.
        scipy's aliases "pad", "circular" and "symmetric" are accepted too.
    fillvalue : scalar
        The value outside ``in1`` for ``boundary="fill"``.
    backend : str
        The conv2d backend to run on (``fastconv.list_backends()``), or "auto".

    Returns
    -------
    numpy.ndarray
        Of dtype ``numpy.result_type(in1, in2)``, as scipy.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.convolve2d(np.eye(2), np.array([[1, 2], [3, 4]]))
    array([[1., 2., 0.],
           [3., 5., 2.],
           [0., 3., 4.]])
    """
    return _signal(in1, in2, mode, boundary, fillvalue, backend, flip=True, op="convolve2d")


def correlate2d(in1, in2, mode="full", boundary="fill", fillvalue=0, backend="auto"):
    """Cross-correlate two 2-D arrays, as ``scipy.signal.correlate2d`` (``in2`` is conjugated).

    Parameters and result are those of :func:`convolve2d`; in "valid" mode with swapped inputs
    the result is reversed, as in scipy.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.correlate2d(np.eye(2), np.array([[1, 2], [3, 4]]))
    array([[4., 3., 0.],
           [2., 5., 3.],
           [0., 2., 1.]])
    """
    return _signal(in1, in2, mode, boundary, fillvalue, backend, flip=False, op="correlate2d")
