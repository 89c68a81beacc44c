"""Operand handling shared by every operation: numeric arrays, GPU arrays, layouts, batches, bias.

Each public operation turns its array arguments into numpy arrays (or leaves GPU arrays where
they are) through :func:`as_numeric_array`, so every operation names a bad argument in the same
words.
"""

from __future__ import annotations

import numpy as np

from fastconv import backends
from fastconv.geometry import check_dtype, resolve_dtypes

__all__ = ["as_numeric_array", "batched_operands", "check_bias", "in_gpu_memory", "memory_layout"]


def in_gpu_memory(value) -> bool:
    # Numba device arrays (and the CUDA simulator's stand-ins) have copy_to_host; CuPy arrays and
    # torch CUDA tensors export __cuda_array_interface__. np.asarray would copy them to the host.
    return hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host")


def as_numeric_array(name: str, value) -> np.ndarray:
    """``value`` as an array of a dtype fastconv accepts (arrays in GPU memory stay there); TypeError naming ``name``."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__} {value!r:.60}")
    if in_gpu_memory(value):  # left where it is; ValueError when no GPU backend is available
        array = backends.device_backend().as_device_array(value)
        check_dtype(name, array.dtype)
        return array
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise TypeError(f"{name} must be an array of numbers; numpy could not convert it: {error}") from None
    check_dtype(name, array.dtype)
    return array


def memory_layout(array) -> str:
    """The caller's memory layout, part of the autotuning signature (device arrays: "C")."""
    flags = getattr(array, "flags", None)
    if flags is None or getattr(flags, "c_contiguous", True):
        return "C"
    return "F" if getattr(flags, "f_contiguous", False) else "strided"


def batched_operands(x, weights: dict, bias):
    """The common first steps of the operations around conv2d (conv_transpose2d, local_conv2d...).

    Checks that ``x`` and every array of ``weights`` (name -> array_like) and ``bias`` are numeric,
    that ``x`` is (N, C, H, W) or (C, H, W), and resolves the dtypes. Returns
    ``(x as (N, C, H, W), [weights...], bias, unbatched, compute dtype, output dtype)``.
    """
    x = as_numeric_array("x", x)
    arrays = [as_numeric_array(name, value) for name, value in weights.items()]
    if x.ndim not in (3, 4):
        raise ValueError(f"x must have shape (N, C, H, W) or (C, H, W), got {x.ndim} dimensions: shape {x.shape}")
    dtypes = [x.dtype] + [array.dtype for array in arrays]
    if bias is not None:
        bias = as_numeric_array("bias", bias)
        dtypes.append(bias.dtype)
    unbatched = x.ndim == 3
    compute_dtype, out_dtype = resolve_dtypes(*dtypes)
    return (x[None] if unbatched else x), arrays, bias, unbatched, compute_dtype, out_dtype


def check_bias(bias, out_channels: int, weight_description: str) -> None:
    """ValueError unless ``bias`` is None or has shape (out_channels,)."""
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"bias must have shape (K,) = ({out_channels},) to match {weight_description}, "
                         f"got shape {bias.shape}")
