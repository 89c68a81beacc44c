"""The public arguments as fastconv reads them: ints, (h, w) pairs, shapes and dtypes.

Every operation normalises its arguments through these, so every error names the argument, the
value received and what is accepted, in the same words.

>>> int_pair("stride", 2, minimum=1)
(2, 2)
>>> resolve_dtypes(np.int64, np.float32)
(dtype('float64'), dtype('float64'))
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["GEOMETRY_LIMIT", "as_int", "int_pair", "shape_tuple", "resolve_dtypes", "check_dtype"]

GEOMETRY_LIMIT = 2**62  # far beyond any array that fits in memory; sums of a few stay in int64


def as_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}") from None


def int_pair(name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or a (h, w) pair of ints, each >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r} with {len(value)} entries")
        pair = (as_int(name, value[0]), as_int(name, value[1]))
    else:
        try:
            single = as_int(name, value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {value!r}") from None
        pair = (single, single)
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what} (an int or a pair of such ints), got {value!r}")
    if max(pair) >= GEOMETRY_LIMIT:  # numba kernels index with int64: larger values fail to compile
        raise ValueError(f"{name} must be below 2**62 (an int or a pair of such ints), got {value!r}")
    return pair


def shape_tuple(name: str, value) -> tuple[int, ...]:
    """A shape given by the caller (not taken from an array): a sequence of ints >= 0."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    shape = tuple(as_int(f"{name}[{index}]", size) for index, size in enumerate(value))
    if shape and min(shape) < 0:
        raise ValueError(f"{name} must hold sizes >= 0, got {value!r}")
    return shape


_COMPUTE_DTYPE_BY_KIND = {"b": np.dtype(np.float64), "i": np.dtype(np.float64), "u": np.dtype(np.float64)}
_SUPPORTED_FLOATS = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.complex64, np.complex128)}


def resolve_dtypes(*dtypes) -> tuple[np.dtype, np.dtype]:
    """Return (compute dtype, output dtype) for the given operand dtypes.

    Integers and bools compute (and return) float64; float16 computes in float32 and returns
    float16; otherwise numpy's ``result_type`` decides.

    >>> resolve_dtypes(np.float32, np.float32)
    (dtype('float32'), dtype('float32'))
    >>> resolve_dtypes(np.float16, np.float16)
    (dtype('float32'), dtype('float16'))
    >>> resolve_dtypes(np.int64, np.float32)
    (dtype('float64'), dtype('float64'))
    """
    result = np.result_type(*dtypes)
    if result.kind in _COMPUTE_DTYPE_BY_KIND:
        return _COMPUTE_DTYPE_BY_KIND[result.kind], _COMPUTE_DTYPE_BY_KIND[result.kind]
    if result not in _SUPPORTED_FLOATS:
        raise TypeError(
            f"cannot convolve arrays of dtype {result} (from {', '.join(str(np.dtype(d)) for d in dtypes)}); "
            f"accepted: bool, integer, float16, float32, float64, complex64, complex128"
        )
    if result == np.float16:
        return np.dtype(np.float32), result
    return result, result


def check_dtype(name: str, dtype: np.dtype) -> None:
    """Raise TypeError naming ``name`` unless ``dtype`` is one that conv2d accepts."""
    if dtype.kind not in "biufc" or (dtype.kind in "fc" and dtype not in _SUPPORTED_FLOATS):
        raise TypeError(
            f"{name} has dtype {dtype}; accepted: bool, integer, float16, float32, float64, "
            f"complex64, complex128"
        )

