"""Work counts the backends' ``cost_terms`` share: multiply-adds, bytes moved, dtype weights.

A backend describes its cost as counts of named terms (see :mod:`fastconv.backends`); these are
the counts several algorithms have in common.

>>> from fastconv.geometry import make_spec
>>> spec = make_spec((1, 2, 8, 8), (4, 2, 3, 3), padding=1, dtype="float32")
>>> direct_macs(spec), io_bytes(spec)
(4608, 1824.0)
"""

from __future__ import annotations

import numpy as np

from fastconv.geometry import ConvSpec

__all__ = ["dtype_work", "is_double", "direct_macs", "io_bytes"]


def dtype_work(dtype) -> float:
    """Real multiply-adds per multiply-add of ``dtype``: 4 for complex, 1 for real dtypes. (What a
    float64 costs over a float32 differs by backend, so that is a fitted ``float64_factor``.)"""
    return 4.0 if np.dtype(dtype).kind == "c" else 1.0


def is_double(dtype) -> bool:
    """True for float64 and complex128 (the ``float64_factor`` of a backend's constants applies)."""
    dtype = np.dtype(dtype)
    return (dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize) == 8


def direct_macs(spec: ConvSpec) -> int:
    """Multiply-adds of direct convolution: one per kernel tap per output value."""
    outputs = spec.batch * spec.out_channels * spec.out_height * spec.out_width
    return outputs * spec.in_channels_per_group * spec.kernel_height * spec.kernel_width


def io_bytes(spec: ConvSpec) -> float:
    """Bytes of the input, the output and the weight: what any algorithm reads or writes once."""
    values = (spec.batch * spec.in_channels * spec.in_height * spec.in_width
              + spec.batch * spec.out_channels * spec.out_height * spec.out_width
              + spec.out_channels * spec.in_channels_per_group * spec.kernel_height * spec.kernel_width)
    return float(values * spec.dtype.itemsize)
