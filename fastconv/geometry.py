"""Geometry and validation: the one place that knows what a convolution call means.

Every public argument of :func:`fastconv.conv2d` is checked here and turned into a
:class:`ConvSpec`, an immutable, hashable description of the problem. Backends receive a
``ConvSpec`` that is already valid and never re-check or re-derive padding rules.

Output size per spatial axis (torch's formula)::

    out = floor((in + pad_before + pad_after - dilation * (k - 1) - 1) / stride) + 1

Examples
--------
>>> from fastconv.geometry import output_shape
>>> output_shape((1, 3, 64, 64), (2, 3, 5, 5))
(1, 2, 60, 60)
>>> output_shape((3, 10, 10), (4, 3, 3, 3), stride=2, padding="same")
(4, 5, 5)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "ConvSpec",
    "PADDING_MODES",
    "check_dtype",
    "PADDING_STRINGS",
    "make_spec",
    "output_shape",
    "pad_input",
    "resolve_dtypes",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("valid", "same", "full")

# numpy.pad's name for each of torch's padding modes.
_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


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
# argument normalisation


def _as_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}") from None


def _pair(name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or a (h, w) pair of ints, each >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r} with {len(value)} entries")
        pair = (_as_int(name, value[0]), _as_int(name, value[1]))
    else:
        try:
            single = _as_int(name, value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {value!r}") from None
        pair = (single, single)
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what} (an int or a pair of such ints), got {value!r}")
    return pair


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
        sides = tuple(_pair("padding", p, minimum=0) for p in padding)
        return sides
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        raise ValueError(
            f"padding must be an int, (ph, pw), ((top, bottom), (left, right)) or one of "
            f"{PADDING_STRINGS}, got {padding!r}"
        )
    ph, pw = _pair("padding", padding, minimum=0)
    return ((ph, ph), (pw, pw))


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
) -> ConvSpec:
    """Validate shapes and geometry arguments and return the :class:`ConvSpec`.

    ``input_shape`` is (N, C, H, W); ``weight_shape`` is (K, C // groups, kh, kw). Every error
    names the offending argument, the value received and what is accepted.

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

    groups = _as_int("groups", groups)
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

    stride = _pair("stride", stride, minimum=1)
    dilation = _pair("dilation", dilation, minimum=1)
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
    if spec.out_height < 1 or spec.out_width < 1:
        raise ValueError(
            f"kernel of extent {spec.dilated_kernel} (weight {kernel} with dilation {dilation}) is larger "
            f"than the padded input {(spec.padded_height, spec.padded_width)} (input {(in_height, in_width)} "
            f"with padding {sides}); use a smaller kernel or dilation, or more padding"
        )
    return spec


def output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> tuple[int, ...]:
    """Shape of ``conv2d``'s result, computed without touching any data.

    Parameters
    ----------
    input_shape : tuple of int
        (N, C, H, W), or (C, H, W) for an unbatched input (then the result is unbatched too).
    weight_shape : tuple of int
        (K, C // groups, kh, kw).
    stride, padding, dilation, groups
        As for :func:`fastconv.conv2d`.

    Returns
    -------
    tuple of int
        (N, K, H_out, W_out), or (K, H_out, W_out) for an unbatched input.

    Examples
    --------
    A 64×64 RGB image and two 5×5 filters, no padding:

    >>> output_shape((1, 3, 64, 64), (2, 3, 5, 5))
    (1, 2, 60, 60)
    """
    input_shape = tuple(input_shape)
    unbatched = len(input_shape) == 3
    spec = make_spec((1,) + input_shape if unbatched else input_shape, tuple(weight_shape),
                     stride=stride, padding=padding, dilation=dilation, groups=groups)
    return spec.out_shape[1:] if unbatched else spec.out_shape


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
    return np.pad(x, pad_width, mode=_NUMPY_PAD_MODE[spec.padding_mode])
