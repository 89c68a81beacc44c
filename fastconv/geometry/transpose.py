"""conv_transpose2d's geometry: :class:`TransposeSpec` and its validation.

The adjoint of conv2d: every input pixel scatters a copy of the kernel, scaled by its value,
into the output at ``i * stride - padding + u * dilation``. Output size per axis (torch's)::

    out = (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastconv.geometry.arguments import as_int, int_pair
from fastconv.geometry.conv import ConvSpec
from fastconv.geometry.limits import check_extent, check_fits

__all__ = ["TransposeSpec", "make_transpose_spec"]


@dataclass(frozen=True)
class TransposeSpec:
    """A validated transposed-convolution problem in NCHW layout (hashable, immutable).

    ``weight_shape`` is torch's ``(C_in, K // groups, kh, kw)``; ``padding`` is (ph, pw), removed
    from both sides of each axis of the full scatter; ``output_padding`` extra rows/columns at the
    bottom/right.

    Examples
    --------
    >>> make_transpose_spec((1, 512, 4, 4), (512, 256, 4, 4), stride=2, padding=1).out_shape
    (1, 256, 8, 8)
    """

    batch: int
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel_height: int
    kernel_width: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: np.dtype = np.dtype(np.float64)
    out_dtype: np.dtype = np.dtype(np.float64)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.in_channels, self.out_channels // self.groups, self.kernel_height, self.kernel_width)

    @property
    def out_height(self) -> int:
        return ((self.in_height - 1) * self.stride[0] - 2 * self.padding[0]
                + self.dilation[0] * (self.kernel_height - 1) + self.output_padding[0] + 1)

    @property
    def out_width(self) -> int:
        return ((self.in_width - 1) * self.stride[1] - 2 * self.padding[1]
                + self.dilation[1] * (self.kernel_width - 1) + self.output_padding[1] + 1)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def forward(self) -> ConvSpec:
        """The convolution whose adjoint this is: it maps this spec's output shape back to its input shape.

        Its weight is this spec's weight, read as conv2d's (K, C // groups, kh, kw); its padding is
        ``padding`` on both sides. (With ``output_padding`` at least the stride, possible when the
        dilation is larger, the forward convolution has more outputs than this spec has inputs.)

        >>> make_transpose_spec((1, 8, 5, 5), (8, 4, 3, 3), stride=2, padding=1, output_padding=1).forward.input_shape
        (1, 4, 10, 10)
        """
        (ph, pw) = self.padding
        return ConvSpec(self.batch, self.out_channels, self.out_height, self.out_width, self.in_channels,
                        self.kernel_height, self.kernel_width, self.stride, ((ph, ph), (pw, pw)), self.dilation,
                        self.groups, "zeros", self.dtype, self.out_dtype)

    @property
    def flops(self) -> int:
        """Multiply-adds of the scatter, counted as two flops each."""
        taps = (self.out_channels // self.groups) * self.kernel_height * self.kernel_width
        return 2 * self.batch * self.in_channels * self.in_height * self.in_width * taps


def _check_shapes(input_shape, weight_shape, weight_layout: str):
    """Both shapes 4-D and non-empty; returns them as tuples of int."""
    if len(input_shape) != 4:
        raise ValueError(f"input must have shape (N, C, H, W) or (C, H, W), got shape {tuple(input_shape)}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must have 4 dimensions {weight_layout}, got shape {tuple(weight_shape)}")
    input_shape, weight_shape = tuple(int(s) for s in input_shape), tuple(int(s) for s in weight_shape)
    if min(input_shape[1:]) < 1:
        raise ValueError(f"input must have non-empty C, H and W, got shape {input_shape}")
    if min(weight_shape) < 1:
        raise ValueError(f"weight must have no empty dimension, got shape {weight_shape}")
    return input_shape, weight_shape


def make_transpose_spec(input_shape, weight_shape, *, stride=1, padding=0, output_padding=0, dilation=1,
                        groups=1, dtype=np.float64, out_dtype=None, in_memory=True) -> TransposeSpec:
    """Validate a ``conv_transpose2d`` call (torch's rules) and return its :class:`TransposeSpec`.

    ``padding`` and ``output_padding`` are an int or an (h, w) pair, as in torch;
    ``output_padding`` must be smaller than ``max(stride, dilation)`` on each axis. With
    ``in_memory`` the result must fit in :func:`memory_limit_bytes`.

    >>> make_transpose_spec((1, 4, 5, 5), (4, 3, 3, 3), stride=2, padding=1, output_padding=1).out_shape
    (1, 3, 10, 10)
    """
    (batch, in_channels, in_height, in_width), (weight_in, out_per_group, kh, kw) = _check_shapes(
        input_shape, weight_shape, "(in_channels, out_channels // groups, kh, kw)")
    groups = as_int("groups", groups)
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups}")
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({in_channels})")
    if weight_in != in_channels:
        raise ValueError(
            f"weight has {weight_in} input channels (shape {tuple(weight_shape)}) but input has {in_channels}: "
            f"conv_transpose2d's weight is (in_channels, out_channels // groups, kh, kw), expected "
            f"weight.shape[0] == {in_channels}"
        )
    stride = int_pair("stride", stride, minimum=1)
    dilation = int_pair("dilation", dilation, minimum=1)
    if isinstance(padding, str) or (isinstance(padding, (tuple, list)) and any(
            isinstance(p, (tuple, list)) for p in padding)):
        raise ValueError(f"padding of conv_transpose2d must be an int or a pair (ph, pw) of ints >= 0, "
                         f"as in torch, got {padding!r}")
    padding = int_pair("padding", padding, minimum=0)
    output_padding = int_pair("output_padding", output_padding, minimum=0)
    for axis, extra, s, d in zip(("height", "width"), output_padding, stride, dilation):
        if extra >= max(s, d):
            raise ValueError(
                f"output_padding must be smaller than max(stride, dilation) on each axis, got "
                f"output_padding={extra} on the {axis} axis with stride {s} and dilation {d}"
            )
    spec = TransposeSpec(batch, in_channels, in_height, in_width, out_per_group * groups, kh, kw, stride, padding,
                         output_padding, dilation, groups, np.dtype(dtype),
                         np.dtype(out_dtype if out_dtype is not None else dtype))
    if spec.out_height < 1 or spec.out_width < 1:
        raise ValueError(
            f"padding={padding} removes the whole output: the transposed convolution of input "
            f"{(in_height, in_width)} with kernel {(kh, kw)}, stride {stride} and dilation {dilation} would have "
            f"size {(spec.out_height, spec.out_width)}; use less padding"
        )

    def cause():
        return (f"stride={stride}, dilation={dilation}, output_padding={output_padding}, padding={padding} on "
                f"input {tuple(input_shape)} and weight {tuple(weight_shape)}")

    hint = "use a smaller stride, dilation or output_padding"
    check_extent("the output's height", spec.out_height, cause, hint)
    check_extent("the output's width", spec.out_width, cause, hint)
    if in_memory:
        widest = spec.dtype if spec.dtype.itemsize >= spec.out_dtype.itemsize else spec.out_dtype
        check_fits("the output", spec.out_shape, widest, cause, hint)
    return spec

