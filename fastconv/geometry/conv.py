"""conv2d's geometry: :class:`ConvSpec`, the one validating function that builds it, and padding.

Every argument of :func:`fastconv.conv2d` is checked by :func:`make_spec` and turned into a
:class:`ConvSpec`, an immutable, hashable description of the problem. Backends receive a
``ConvSpec`` that is already valid and never re-check or re-derive padding rules.

Output size per spatial axis (torch's formula)::

    out = floor((in + pad_before + pad_after - dilation * (k - 1) - 1) / stride) + 1

Examples
--------
>>> spec = make_spec((1, 3, 64, 64), (2, 3, 5, 5), padding="same")
>>> spec.out_shape, spec.padding
((1, 2, 64, 64), ((2, 2), (2, 2)))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastconv.geometry.arguments import as_int, int_pair
from fastconv.geometry.limits import ALWAYS_FITS, check_extent, check_fits

__all__ = ["ConvSpec", "PADDING_MODES", "PADDING_STRINGS", "NUMPY_PAD_MODE", "make_spec", "pad_input",
           "interior_range", "backend_input", "backend_spec", "gathered_spec", "padded_source", "read_positions"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("valid", "same", "full")

# numpy.pad's name for each of torch's padding modes.
NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@dataclass(frozen=True)
class ConvSpec:
    """A validated 2-D convolution problem in NCHW layout (hashable, immutable).

    ``padding`` is ``((top, bottom), (left, right))`` in input pixels. ``dtype`` is the dtype the
    computation runs in (see :func:`resolve_dtypes`), ``out_dtype`` the one returned to the caller.

    Examples
    --------
    >>> spec = make_spec((1, 3, 8, 8), (4, 3, 3, 3), padding=1)
    >>> spec.out_shape
    (1, 4, 8, 8)
    >>> spec.flops  # two flops (multiply + add) per weight tap per output value
    13824
    """

    batch: int
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel_height: int
    kernel_width: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"
    dtype: np.dtype = np.dtype(np.float64)
    out_dtype: np.dtype = np.dtype(np.float64)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_height, self.in_width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_height, self.kernel_width)

    @property
    def padded_height(self) -> int:
        return self.in_height + self.padding[0][0] + self.padding[0][1]

    @property
    def padded_width(self) -> int:
        return self.in_width + self.padding[1][0] + self.padding[1][1]

    @property
    def dilated_kernel(self) -> tuple[int, int]:
        """Extent of the kernel on the input once dilation spreads its taps apart."""
        return (
            self.dilation[0] * (self.kernel_height - 1) + 1,
            self.dilation[1] * (self.kernel_width - 1) + 1,
        )

    @property
    def out_height(self) -> int:
        return (self.padded_height - self.dilated_kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.padded_width - self.dilated_kernel[1]) // self.stride[1] + 1

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def in_channels_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        """True for depthwise convolution: every input channel is its own group."""
        return self.groups == self.in_channels and self.groups > 1

    @property
    def flops(self) -> int:
        """Floating-point operations of direct convolution (one multiply and one add per tap)."""
        taps = self.in_channels_per_group * self.kernel_height * self.kernel_width
        return 2 * self.batch * self.out_channels * self.out_height * self.out_width * taps

    def zero_padded(self) -> "ConvSpec":
        """The spec that remains once the input has been padded explicitly (no padding left)."""
        return replace(
            self,
            in_height=self.padded_height,
            in_width=self.padded_width,
            padding=((0, 0), (0, 0)),
            padding_mode="zeros",
        )


# --------------------------------------------------------------------------------------------
# validation


def _resolve_padding(padding, in_size, kernel, stride, dilation):
    """Turn every accepted form of ``padding`` into ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise ValueError(
                f"padding must be an int, a pair, a pair of pairs or one of {PADDING_STRINGS}, "
                f"got the string {padding!r}"
            )
        if padding == "valid":
            return ((0, 0), (0, 0))
        sides = []
        for size, k, s, d in zip(in_size, kernel, stride, dilation):
            extent = d * (k - 1) + 1
            if padding == "full":
                sides.append((extent - 1, extent - 1))
            else:  # "same": output = ceil(in / stride); the odd unit goes after (TensorFlow's rule)
                out = -(-size // s)
                total = max((out - 1) * s + extent - size, 0)
                sides.append((total // 2, total - total // 2))
        return tuple(sides)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
        isinstance(p, (tuple, list)) for p in padding
    ):
        sides = tuple(int_pair("padding", p, minimum=0) for p in padding)
        return sides
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        raise ValueError(
            f"padding must be an int, (ph, pw), ((top, bottom), (left, right)) or one of "
            f"{PADDING_STRINGS}, got {padding!r}"
        )
    ph, pw = int_pair("padding", padding, minimum=0)
    return ((ph, ph), (pw, pw))


def make_spec(
    input_shape,
    weight_shape,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    dtype=np.float64,
    out_dtype=None,
    in_memory=True,
) -> ConvSpec:
    """Validate shapes and geometry arguments and return the :class:`ConvSpec`.

    ``input_shape`` is (N, C, H, W); ``weight_shape`` is (K, C // groups, kh, kw). Every error
    names the offending argument, the value received and what is accepted. With ``in_memory``
    (a call computed at once, not block by block) the result and the input as the backends read
    it (:func:`backend_spec`) must each fit in :func:`memory_limit_bytes`.

    >>> make_spec((2, 4, 9, 9), (6, 2, 3, 3), groups=2, padding="same").out_shape
    (2, 6, 9, 9)
    """
    if len(input_shape) != 4:
        raise ValueError(f"input must have shape (N, C, H, W) or (C, H, W), got shape {tuple(input_shape)}")
    if len(weight_shape) != 4:
        raise ValueError(
            f"weight must have 4 dimensions (out_channels, in_channels // groups, kh, kw), "
            f"got shape {tuple(weight_shape)}"
        )
    batch, in_channels, in_height, in_width = (int(s) for s in input_shape)
    out_channels, channels_per_group, kernel_height, kernel_width = (int(s) for s in weight_shape)
    if min(in_channels, in_height, in_width) < 1:
        raise ValueError(f"input must have non-empty C, H and W, got shape {tuple(input_shape)}")
    if min(out_channels, channels_per_group, kernel_height, kernel_width) < 1:
        raise ValueError(f"weight must have no empty dimension, got shape {tuple(weight_shape)}")

    groups = as_int("groups", groups)
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels ({in_channels}) "
            f"and the output channels ({out_channels})"
        )
    if channels_per_group * groups != in_channels:
        raise ValueError(
            f"weight has {channels_per_group} input channels per group (shape {tuple(weight_shape)}) "
            f"but input has {in_channels} channels with groups={groups}: expected weight.shape[1] == "
            f"{in_channels // groups}"
        )

    stride = int_pair("stride", stride, minimum=1)
    dilation = int_pair("dilation", dilation, minimum=1)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    kernel = (kernel_height, kernel_width)
    sides = _resolve_padding(padding, (in_height, in_width), kernel, stride, dilation)

    for axis, size, (before, after) in (("height", in_height, sides[0]), ("width", in_width, sides[1])):
        if padding_mode == "reflect" and max(before, after) >= size:
            raise ValueError(
                f"padding_mode='reflect' needs padding < input {axis} ({size}) on each side, got padding "
                f"{(before, after)} from padding={padding!r}"
            )
        if padding_mode == "circular" and max(before, after) > size:
            raise ValueError(
                f"padding_mode='circular' needs padding <= input {axis} ({size}) on each side, got "
                f"padding {(before, after)} from padding={padding!r}"
            )

    spec = ConvSpec(
        batch=batch,
        in_channels=in_channels,
        in_height=in_height,
        in_width=in_width,
        out_channels=out_channels,
        kernel_height=kernel_height,
        kernel_width=kernel_width,
        stride=stride,
        padding=sides,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        dtype=np.dtype(dtype),
        out_dtype=np.dtype(out_dtype if out_dtype is not None else dtype),
    )
    def cause():
        return (f"padding={padding!r}, stride={spec.stride}, dilation={spec.dilation} on input "
                f"{tuple(input_shape)} and weight {tuple(weight_shape)}")

    padded_height, padded_width = in_height + sum(sides[0]), in_width + sum(sides[1])
    check_extent("the padded input's height", padded_height, cause)
    check_extent("the padded input's width", padded_width, cause)
    out_height = (padded_height - dilation[0] * (kernel_height - 1) - 1) // stride[0] + 1
    out_width = (padded_width - dilation[1] * (kernel_width - 1) - 1) // stride[1] + 1
    if out_height < 1 or out_width < 1:
        raise ValueError(
            f"kernel of extent {spec.dilated_kernel} (weight {kernel} with dilation {dilation}) is larger "
            f"than the padded input {(spec.padded_height, spec.padded_width)} (input {(in_height, in_width)} "
            f"with padding {sides}); use a smaller kernel or dilation, or more padding"
        )
    if in_memory:
        if (padded_height > _GATHER_RATIO * out_height * kernel_height
                or padded_width > _GATHER_RATIO * out_width * kernel_width):  # as _gathered_axes, from the locals
            read = gathered_spec(spec)
            padded_height, padded_width = read.padded_height, read.padded_width
        widest = spec.dtype if spec.dtype.itemsize >= spec.out_dtype.itemsize else spec.out_dtype
        if max(out_height * out_width * out_channels * widest.itemsize,
               padded_height * padded_width * in_channels * spec.dtype.itemsize) * batch > ALWAYS_FITS:
            check_fits("the output", (batch, out_channels, out_height, out_width), widest, cause)
            check_fits("the input as the backends read it (padded)",
                       (batch, in_channels, padded_height, padded_width), spec.dtype, cause)
    return spec


# The backends read a padded axis whole unless it is this many times longer than the rows the
# outputs' taps touch; then they read those rows, gathered (see gathered_spec). Ordinary layers
# (stride at most the kernel size) never come near it.
_GATHER_RATIO = 8


def _gathered_axes(spec: ConvSpec) -> tuple[bool, bool]:
    # (from the fields, not the properties: every call asks this)
    gathered = []
    for size, (before, after), kernel, stride, dilation in (
            (spec.in_height, spec.padding[0], spec.kernel_height, spec.stride[0], spec.dilation[0]),
            (spec.in_width, spec.padding[1], spec.kernel_width, spec.stride[1], spec.dilation[1])):
        padded = size + before + after
        out = (padded - dilation * (kernel - 1) - 1) // stride + 1
        gathered.append(padded > _GATHER_RATIO * out * kernel)
    return tuple(gathered)


def read_positions(spec: ConvSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per spatial axis, the rows a gathered axis holds (see :func:`gathered_spec`), or None.

    Positions count from the input's first row (the padding before it is negative): output i's
    taps, ``i * stride + u * dilation - pad_before`` for u = 0 .. k - 1, output after output.

    >>> read_positions(make_spec((1, 1, 4, 4), (1, 1, 2, 1), padding=((100, 100), (0, 0)), stride=(100, 1)))
    (array([-100,  -99,    0,    1,  100,  101]), None)
    """
    positions = []
    for gather, out, kernel, stride, dilation, (before, _) in zip(
            _gathered_axes(spec), (spec.out_height, spec.out_width), (spec.kernel_height, spec.kernel_width),
            spec.stride, spec.dilation, spec.padding):
        positions.append((np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation).ravel() - before
                         if gather else None)
    return tuple(positions)


def gathered_spec(spec: ConvSpec) -> ConvSpec:
    """``spec`` with each axis whose padded extent dwarfs what its outputs read replaced by those rows.

    Huge padding with a stride larger than the kernel, or a dilation that spreads the taps far
    into the padding, leaves the outputs reading a few rows of an enormous padded axis. Such an
    axis is *gathered*: the rows that output i's taps read (:func:`read_positions`) are copied one
    after another, so the axis becomes ``out * k`` rows read with stride k and dilation 1, without
    padding. The result is the same, padding taps included (they read the padding's values
    explicitly), and no backend pads or transforms the whole span. Other axes, and the padding
    mode, are unchanged.

    >>> gathered_spec(make_spec((1, 1, 4, 4), (1, 1, 3, 3), padding=10**6, stride=10**6)).input_shape
    (1, 1, 9, 9)
    >>> gathered_spec(make_spec((1, 1, 8, 8), (1, 1, 3, 3), padding=1)).input_shape
    (1, 1, 8, 8)
    """
    gathered = _gathered_axes(spec)
    if not any(gathered):
        return spec
    sizes, strides, dilations, sides = [], [], [], []
    for gather, size, out, kernel, stride, dilation, pads in zip(
            gathered, (spec.in_height, spec.in_width), (spec.out_height, spec.out_width),
            (spec.kernel_height, spec.kernel_width), spec.stride, spec.dilation, spec.padding):
        sizes.append(out * kernel if gather else size)
        strides.append(kernel if gather else stride)
        dilations.append(1 if gather else dilation)
        sides.append((0, 0) if gather else pads)
    return replace(spec, in_height=sizes[0], in_width=sizes[1], stride=tuple(strides), dilation=tuple(dilations),
                   padding=tuple(sides))


def backend_spec(spec: ConvSpec) -> ConvSpec:
    """The spec the backends receive for ``spec``, the problem as :func:`backend_input` rewrites it.

    Axes are gathered (:func:`gathered_spec`), and padding other than zeros is applied explicitly
    (:meth:`ConvSpec.zero_padded`).
    """
    spec = gathered_spec(spec)
    return spec.zero_padded() if spec.padding_mode != "zeros" else spec


def padded_source(positions: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """For positions on an axis of ``size`` padded by ``mode``: the input row each one holds.

    Returns ``(rows, outside)``; for zero padding ``outside`` marks the positions that hold zeros
    (their ``rows`` entry is any valid row), for the other modes it is None.

    >>> padded_source(np.array([-2, -1, 0, 3, 4]), 4, "reflect")
    (array([2, 1, 0, 3, 2]), None)
    """
    if mode == "reflect":  # torch's rule leaves at most size - 1 rows of padding: one reflection suffices
        rows = np.abs(positions)
        return np.where(rows >= size, 2 * (size - 1) - rows, rows), None
    if mode == "circular":  # at most size rows of padding
        return positions % size, None
    rows = np.clip(positions, 0, size - 1)
    return rows, ((positions < 0) | (positions >= size) if mode == "zeros" else None)


def backend_input(x: np.ndarray, spec: ConvSpec) -> tuple[np.ndarray, ConvSpec]:
    """``x`` (N, C, H, W) as the backends read it, and its spec (:func:`backend_spec`).

    A new array when padding is applied or axes are gathered, else ``x`` itself; ``x`` is never
    modified.

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> spec = make_spec(x.shape, (1, 1, 1, 1), stride=(50, 1), padding=((100, 100), (0, 0)))
    >>> read, read_spec = backend_input(x + 1, spec)
    >>> read[0, 0, :, 0], read_spec.stride
    (array([0., 0., 1., 0., 0.]), (1, 1))
    """
    if not any(_gathered_axes(spec)):
        return (pad_input(x, spec), spec.zero_padded()) if spec.padding_mode != "zeros" else (x, spec)
    for axis, positions in enumerate(read_positions(spec)):
        if positions is None:
            continue
        rows, outside = padded_source(positions, x.shape[axis + 2], spec.padding_mode)
        x = np.take(x, rows, axis=axis + 2)
        if outside is not None:
            x[(slice(None),) * (axis + 2) + (outside,)] = 0  # assigned, not multiplied: inf * 0 would be NaN
    spec = gathered_spec(spec)
    if spec.padding_mode != "zeros":
        return pad_input(x, spec), spec.zero_padded()
    return np.ascontiguousarray(x), spec


def pad_input(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Return ``x`` (N, C, H, W) padded as ``spec`` says, using ``spec.padding_mode``.

    The result is a new C-contiguous array; ``x`` is never modified.

    >>> x = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> pad_input(x, make_spec(x.shape, (1, 1, 3, 3), padding=1, padding_mode="circular"))[0, 0]
    array([[3., 2., 3., 2.],
           [1., 0., 1., 0.],
           [3., 2., 3., 2.],
           [1., 0., 1., 0.]])
    """
    pad_width = ((0, 0), (0, 0)) + tuple(spec.padding)
    if pad_width == ((0, 0),) * 4:
        return np.ascontiguousarray(x)
    check_fits("the padded input", x.shape[:2] + (spec.padded_height, spec.padded_width), x.dtype,
               lambda: f"padding {spec.padding} on input {x.shape}")
    return np.pad(x, pad_width, mode=NUMPY_PAD_MODE[spec.padding_mode])


def interior_range(out_size, size, kernel, stride, dilation, pad_before):
    """Outputs ``[lo, hi)`` along one axis whose every tap falls inside ``[0, size)``.

    Direct kernels loop over these without bounds checks (``numba_cpu`` compiles this very
    function) and run the rest, whose taps reach into the zero padding, in a checked loop; the
    cost model counts the two kinds of work apart.

    >>> interior_range(out_size=8, size=8, kernel=3, stride=1, dilation=1, pad_before=1)
    (1, 7)
    """
    lo = min(out_size, (pad_before + stride - 1) // stride)
    last_start = size - 1 - (kernel - 1) * dilation + pad_before  # largest allowed output * stride
    if last_start < 0:
        return lo, lo
    return lo, max(lo, min(out_size, last_start // stride + 1))

