"""Unshared (local) and tiled convolution, depthwise-separable convolution: conv2d's geometry with other weights.

All three have conv2d's geometry; only the weight layout differs, so they validate through
make_spec and then check their own weight axes.
"""

from __future__ import annotations

import numpy as np

from fastconv.geometry.conv import ConvSpec, make_spec

__all__ = ["make_local_spec", "make_separable_specs"]


def make_local_spec(input_shape, weight_shape, *, stride=1, padding=0, dilation=1, padding_mode="zeros",
                    tiled=False, dtype=np.float64, out_dtype=None, in_memory=True) -> ConvSpec:
    """Validate ``local_conv2d`` (or, with ``tiled=True``, ``tiled_conv2d``); return the ConvSpec.

    ``weight_shape`` is (H_out, W_out, K, C, kh, kw) for local convolution, (t_h, t_w, K, C, kh, kw)
    for tiled convolution (a tile larger than the output leaves its last filter banks unused).
    The returned spec is that of the shared-weight convolution with the same geometry (weight
    (K, C, kh, kw)).

    >>> make_local_spec((1, 2, 6, 6), (4, 4, 3, 2, 3, 3)).out_shape
    (1, 3, 4, 4)
    """
    op, layout = ("tiled_conv2d", "(t_h, t_w, K, C, kh, kw)") if tiled else ("local_conv2d", "(H_out, W_out, K, C, kh, kw)")
    if len(weight_shape) != 6:
        raise ValueError(f"{op}: weight must have 6 dimensions {layout}, got shape {tuple(weight_shape)}")
    weight_shape = tuple(int(s) for s in weight_shape)
    if min(weight_shape) < 1:
        raise ValueError(f"{op}: weight must have no empty dimension, got shape {weight_shape}")
    spec = make_spec(input_shape, weight_shape[2:], stride=stride, padding=padding, dilation=dilation,
                     padding_mode=padding_mode, dtype=dtype, out_dtype=out_dtype, in_memory=in_memory)
    rows, cols = weight_shape[:2]
    if not tiled and (rows, cols) != (spec.out_height, spec.out_width):
        raise ValueError(
            f"local_conv2d: weight {weight_shape} holds filters for {(rows, cols)} output positions but the "
            f"output is {(spec.out_height, spec.out_width)} for input {tuple(input_shape)} with padding "
            f"{spec.padding}, stride {spec.stride} and dilation {spec.dilation}: expected weight.shape[:2] == "
            f"{(spec.out_height, spec.out_width)}"
        )
    return spec


def make_separable_specs(input_shape, depthwise_shape, pointwise_shape, *, stride=1, padding=0, dilation=1,
                         padding_mode="zeros", dtype=np.float64, out_dtype=None, in_memory=True
                         ) -> tuple[ConvSpec, ConvSpec]:
    """Validate a depthwise-separable convolution; return (depthwise spec, pointwise spec).

    ``depthwise_shape`` is (C·m, 1, kh, kw) for a depth multiplier m; ``pointwise_shape`` is
    (K, C·m, 1, 1).

    >>> dw, pw = make_separable_specs((1, 32, 16, 16), (64, 1, 3, 3), (16, 64, 1, 1), padding=1)
    >>> dw.out_shape, pw.out_shape
    ((1, 64, 16, 16), (1, 16, 16, 16))
    """
    if len(input_shape) != 4:
        raise ValueError(f"input must have shape (N, C, H, W) or (C, H, W), got shape {tuple(input_shape)}")
    channels = int(input_shape[1])
    if len(depthwise_shape) != 4 or depthwise_shape[1] != 1 or channels < 1 or depthwise_shape[0] % channels:
        raise ValueError(
            f"depthwise_weight must have shape (C·m, 1, kh, kw) with C = {channels} input channels and a "
            f"depth multiplier m >= 1, got shape {tuple(depthwise_shape)}"
        )
    depthwise = make_spec(input_shape, depthwise_shape, stride=stride, padding=padding, dilation=dilation,
                          groups=channels, padding_mode=padding_mode, dtype=dtype, out_dtype=out_dtype,
                          in_memory=in_memory)
    if len(pointwise_shape) != 4 or tuple(pointwise_shape[1:]) != (depthwise.out_channels, 1, 1):
        raise ValueError(
            f"pointwise_weight must have shape (K, C·m, 1, 1) = (K, {depthwise.out_channels}, 1, 1) to follow "
            f"depthwise_weight {tuple(depthwise_shape)}, got shape {tuple(pointwise_shape)}"
        )
    pointwise = make_spec(depthwise.out_shape, pointwise_shape, dtype=dtype, out_dtype=out_dtype,
                          in_memory=in_memory)
    return depthwise, pointwise

