"""Pooling's geometry (max_pool2d, avg_pool2d): :class:`PoolSpec` and its validation.

Windows of ``kernel_size`` taps (spread by ``dilation`` for max pooling) every ``stride``
pixels over an input padded by ``padding`` on both sides. Output size per axis (torch's)::

    out = floor_or_ceil((in + 2 * padding - dilation * (k - 1) - 1) / stride) + 1

and with ceil_mode the last window must start inside the input or its left padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastconv.geometry.arguments import int_pair
from fastconv.geometry.limits import check_extent, check_fits

__all__ = ["PoolSpec", "make_pool_spec"]


@dataclass(frozen=True)
class PoolSpec:
    """A validated 2-D pooling problem (hashable, immutable).

    Examples
    --------
    >>> make_pool_spec((1, 64, 112, 112), 3, stride=2, padding=1).out_shape
    (1, 64, 56, 56)
    """

    batch: int
    channels: int
    in_height: int
    in_width: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    out_height: int
    out_width: int

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.out_height, self.out_width)


def _pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding: torch drops it
    return out


def make_pool_spec(input_shape, kernel_size, *, stride=None, padding=0, dilation=1, ceil_mode=False,
                   op="max_pool2d", dtype=np.float64, in_memory=True) -> PoolSpec:
    """Validate a pooling call (torch's rules) and return its :class:`PoolSpec`.

    ``stride=None`` means ``stride = kernel_size``. Padding may be at most half the kernel size
    (torch's rule, so that every window touches the input). With ``in_memory`` the result (of
    ``dtype``) must fit in :func:`memory_limit_bytes`.

    >>> make_pool_spec((1, 1, 5, 5), 2, ceil_mode=True).out_shape
    (1, 1, 3, 3)
    """
    if len(input_shape) != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W) or (C, H, W), got shape {tuple(input_shape)}")
    batch, channels, in_height, in_width = (int(s) for s in input_shape)
    if min(channels, in_height, in_width) < 1:
        raise ValueError(f"{op}: x must have non-empty C, H and W, got shape {tuple(input_shape)}")
    kernel = int_pair("kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None else int_pair("stride", stride, minimum=1)
    padding = int_pair("padding", padding, minimum=0)
    dilation = int_pair("dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be True or False, got {ceil_mode!r}")
    for axis, k, p in zip(("height", "width"), kernel, padding):
        if p > k // 2:
            raise ValueError(
                f"{op}: padding must be at most half the kernel size, got padding {p} for kernel size {k} "
                f"on the {axis} axis (torch's rule: every window must overlap the input)"
            )

    def cause():
        return (f"{op}: kernel_size={kernel_size!r}, stride={stride}, padding={padding}, dilation={dilation} on "
                f"input {tuple(input_shape)}")

    for axis, size, p in zip(("height", "width"), (in_height, in_width), padding):
        check_extent(f"the padded input's {axis}", size + 2 * p, cause)
    out = tuple(_pool_output_size(size, k, s, p, d, bool(ceil_mode))
                for size, k, s, p, d in zip((in_height, in_width), kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(
            f"{op}: window of kernel_size {kernel} with dilation {dilation} does not fit the input "
            f"{(in_height, in_width)} padded by {padding}: the output would be {out}"
        )
    spec = PoolSpec(batch, channels, in_height, in_width, kernel, stride, padding, dilation, bool(ceil_mode), *out)
    if in_memory:
        check_fits("the output", spec.out_shape, dtype, cause, "use a larger stride")
    return spec

