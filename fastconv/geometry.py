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

import functools
import math
import operator
import os
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "ConvSpec",
    "OUTPUT_SHAPE_OPS",
    "PoolSpec",
    "TransposeSpec",
    "backend_input",
    "backend_spec",
    "gathered_spec",
    "padded_source",
    "read_positions",
    "make_local_spec",
    "make_pool_spec",
    "make_separable_specs",
    "make_transpose_spec",
    "signal_geometry",
    "PADDING_MODES",
    "check_dtype",
    "check_extent",
    "check_fits",
    "PADDING_STRINGS",
    "make_spec",
    "memory_limit_bytes",
    "output_shape",
    "pad_input",
    "resolve_dtypes",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("valid", "same", "full")
OUTPUT_SHAPE_OPS = ("conv2d", "conv_transpose2d", "depthwise_separable_conv2d", "local_conv2d", "tiled_conv2d",
                    "max_pool2d", "avg_pool2d", "convolve2d", "correlate2d")

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


_GEOMETRY_LIMIT = 2**62  # far beyond any array that fits in memory; sums of a few stay in int64


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
    if max(pair) >= _GEOMETRY_LIMIT:  # numba kernels index with int64: larger values fail to compile
        raise ValueError(f"{name} must be below 2**62 (an int or a pair of such ints), got {value!r}")
    return pair


def _shape(name: str, value) -> tuple[int, ...]:
    """A shape given by the caller (not taken from an array): a sequence of ints >= 0."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    shape = tuple(_as_int(f"{name}[{index}]", size) for index, size in enumerate(value))
    if shape and min(shape) < 0:
        raise ValueError(f"{name} must hold sizes >= 0, got {value!r}")
    return shape


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


# --------------------------------------------------------------------------------------------
# size limits
#
# Geometry is judged from the shapes alone, before anything is allocated, so every backend gives
# the same answer. Two rules:
#
# - Every extent is representable: each argument, and each padded extent (input plus padding),
#   is below 2**62, so that the int64 index arithmetic of the kernels (``i * stride + u *
#   dilation``, never past the padded extent) cannot overflow.
# - A call computed in memory fits this machine: its result, and its input as the backends read it
#   (padded, or gathered: see :func:`backend_spec`), each take at most
#   :func:`memory_limit_bytes`. A larger array could only fail later, in numpy ("Unable to
#   allocate"), or get the process killed once its pages are written.


def _cgroup_memory() -> int | None:
    """The memory (plus swap) a Linux control group (a container) allows, or None where it sets no limit."""
    values = []
    for name in ("memory.max", "memory.swap.max"):
        try:
            with open(os.path.join("/sys/fs/cgroup", name)) as file:
                values.append(file.read().strip())
        except OSError:
            values.append("")
    memory, swap = values
    if not memory.isdigit():
        return None
    return int(memory) + (int(swap) if swap.isdigit() else 0)  # (unlimited swap counted as none)


@functools.lru_cache(maxsize=1)
def _machine_memory() -> int | None:
    """RAM plus swap in bytes (capped by a container's limit), or None where the platform does not say."""
    memory = None
    try:
        with open("/proc/meminfo") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
        memory = (int(fields["MemTotal"].split()[0]) + int(fields.get("SwapTotal", "0").split()[0])) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            pass
    container = _cgroup_memory()
    if container is not None:
        memory = container if memory is None else min(memory, container)
    return memory if memory is not None and memory > 0 else None


def _process_usage() -> tuple[int, int] | None:
    """(address space, data segment) this process uses now, in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as file:
            fields = file.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[0]) * page, int(fields[5]) * page
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def memory_limit_bytes() -> int:
    """The most memory one array of a call may take: RAM plus swap, or less where the process is limited.

    The smallest of this machine's RAM plus swap, a container's (cgroup's) memory limit and what
    the process's ``RLIMIT_AS`` and ``RLIMIT_DATA`` leave it; 2**47 bytes (a 64-bit address
    space) where the platform reports none of them. Calls whose result, or whose input as the
    backends read it, would be larger are refused with a ``ValueError`` before anything is
    allocated.

    >>> memory_limit_bytes() > 2**20
    True
    """
    limit = _machine_memory() or 2**47
    try:
        import resource
    except ImportError:  # Windows
        return limit
    for which, used in ((resource.RLIMIT_AS, 0), (resource.RLIMIT_DATA, 1)):
        soft = resource.getrlimit(which)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            usage = _process_usage()  # read only when limited, which is rare
            limit = min(limit, max(soft - (usage[used] if usage else 0), 0))
    return limit


def _format_bytes(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count} bytes" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _text(cause) -> str:
    return cause() if callable(cause) else cause


def check_extent(what: str, extent: int, cause, hint: str = "use less padding") -> None:
    """Raise ValueError naming ``cause`` (the arguments, as passed) when an extent reaches 2**62.

    ``cause`` is a string or a function returning one (built only for the message).
    """
    if extent >= _GEOMETRY_LIMIT:
        raise ValueError(f"{_text(cause)}: {what} would be {extent} pixels long, beyond 2**62 (the longest extent "
                         f"fastconv indexes); {hint}")


# Arrays this small are never refused: their check then costs no system calls (every call checks).
_ALWAYS_FITS = 64 << 20


def check_fits(what: str, shape, dtype, cause, hint: str = "use less padding or dilation, or a larger stride") -> None:
    """Raise ValueError when an array of ``shape`` and ``dtype`` is larger than :func:`memory_limit_bytes`.

    ``what`` names the array ("the output"), ``cause`` the arguments that made it so large, as
    the caller passed them (a string, or a function returning one), and ``hint`` what would help.
    Arrays up to 64 MiB always pass.

    >>> check_fits("the output", (1, 1, 2**40, 2**40), np.float64, "padding=2**39 on input (1, 1, 4, 4)")
    Traceback (most recent call last):
    ...
    ValueError: padding=2**39 on input (1, 1, 4, 4): the output would have shape (1, 1, 1099511627776, ...
    """
    nbytes = math.prod([int(size) for size in shape]) * np.dtype(dtype).itemsize
    if nbytes <= _ALWAYS_FITS:
        return
    limit = memory_limit_bytes()
    if nbytes > limit:
        shape = tuple(int(size) for size in shape)
        raise ValueError(
            f"{_text(cause)}: {what} would have shape {shape} ({_format_bytes(nbytes)} of {np.dtype(dtype)}), more than "
            f"the {_format_bytes(limit)} this machine can hold (RAM and swap, or the process's memory limit); "
            f"{hint}")


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
               padded_height * padded_width * in_channels * spec.dtype.itemsize) * batch > _ALWAYS_FITS:
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


def output_shape(input_shape, weight_shape=None, stride=None, padding=0, dilation=1, groups=1, *, op="conv2d",
                 **options) -> tuple[int, ...]:
    """Shape of the result of ``conv2d`` (or of another operation, ``op``), without touching any data.

    Parameters
    ----------
    input_shape : tuple of int
        (N, C, H, W), or (C, H, W) for an unbatched input (then the result is unbatched too).
        For ``op="convolve2d"``/``"correlate2d"`` the 2-D shape of ``in1``.
    weight_shape : tuple of int
        The weight's shape as that operation takes it: (K, C // groups, kh, kw) for conv2d,
        (C, K // groups, kh, kw) for conv_transpose2d, a pair (depthwise shape, pointwise shape)
        for depthwise_separable_conv2d, the 6-D weight of local_conv2d/tiled_conv2d, the shape of
        ``in2`` for convolve2d/correlate2d; unused for pooling (pass ``kernel_size=``).
    stride, padding, dilation, groups
        As for :func:`fastconv.conv2d` (and the same-named arguments of the other operations);
        ``stride=None`` means 1, or the kernel size for pooling.
    op : str
        One of ``OUTPUT_SHAPE_OPS``: "conv2d", "conv_transpose2d", "depthwise_separable_conv2d",
        "local_conv2d", "tiled_conv2d", "max_pool2d", "avg_pool2d", "convolve2d", "correlate2d".
    **options
        That operation's other geometry arguments: ``output_padding`` (conv_transpose2d),
        ``kernel_size``, ``ceil_mode`` (pooling; pooling's ``stride`` defaults to the kernel
        size), ``mode`` (convolve2d/correlate2d).

    Returns
    -------
    tuple of int
        (N, K, H_out, W_out), or (K, H_out, W_out) for an unbatched input.

    Examples
    --------
    A 64×64 RGB image and two 5×5 filters, no padding:

    >>> output_shape((1, 3, 64, 64), (2, 3, 5, 5))
    (1, 2, 60, 60)
    >>> output_shape((1, 512, 4, 4), (512, 256, 4, 4), stride=2, padding=1, op="conv_transpose2d")
    (1, 256, 8, 8)
    >>> output_shape((64, 112, 112), op="max_pool2d", kernel_size=3, stride=2, padding=1)
    (64, 56, 56)
    >>> output_shape((10, 10), (3, 4), op="convolve2d", mode="full")
    (12, 13)
    """
    if not isinstance(op, str) or op not in OUTPUT_SHAPE_OPS:
        raise ValueError(f"op must be one of {OUTPUT_SHAPE_OPS}, got {op!r}")
    allowed = {"conv_transpose2d": {"output_padding"}, "max_pool2d": {"kernel_size", "ceil_mode"},
               "avg_pool2d": {"kernel_size", "ceil_mode"}, "convolve2d": {"mode"},
               "correlate2d": {"mode"}}.get(op, set())
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"output_shape(op={op!r}) got unexpected arguments {sorted(unknown)}; "
                        f"it accepts {sorted(allowed) or 'none'} besides stride, padding, dilation, groups")
    input_shape = _shape("input_shape", input_shape)
    if op == "depthwise_separable_conv2d":
        if not (isinstance(weight_shape, (tuple, list)) and len(weight_shape) == 2):
            raise TypeError(f"weight_shape of depthwise_separable_conv2d must be a pair (depthwise shape, "
                            f"pointwise shape), got {weight_shape!r}")
        weight_shape = tuple(_shape("weight_shape", shape) for shape in weight_shape)
    elif op not in ("max_pool2d", "avg_pool2d"):
        weight_shape = _shape("weight_shape", weight_shape)
    if op in ("convolve2d", "correlate2d"):
        return signal_geometry(input_shape, tuple(weight_shape), options.get("mode", "full"),
                               flip=op == "convolve2d", op=op)[2]
    unbatched = len(input_shape) == 3
    batched = (1,) + input_shape if unbatched else input_shape
    if stride is None and op not in ("max_pool2d", "avg_pool2d"):
        stride = 1  # (pooling's default stride is its kernel size)
    if op == "conv2d":
        shape = make_spec(batched, tuple(weight_shape), stride=stride, padding=padding, dilation=dilation,
                          groups=groups, in_memory=False).out_shape
    elif op == "conv_transpose2d":
        shape = make_transpose_spec(batched, tuple(weight_shape), stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, in_memory=False,
                                    output_padding=options.get("output_padding", 0)).out_shape
    elif op == "depthwise_separable_conv2d":
        depthwise_shape, pointwise_shape = weight_shape
        shape = make_separable_specs(batched, tuple(depthwise_shape), tuple(pointwise_shape), stride=stride,
                                     padding=padding, dilation=dilation, in_memory=False)[1].out_shape
    elif op in ("local_conv2d", "tiled_conv2d"):
        shape = make_local_spec(batched, tuple(weight_shape), stride=stride, padding=padding, dilation=dilation,
                                tiled=op == "tiled_conv2d", in_memory=False).out_shape
    else:  # pooling: stride defaults to the kernel size, as in torch
        if "kernel_size" not in options:
            raise TypeError(f"output_shape(op={op!r}) needs kernel_size=")
        if op == "avg_pool2d" and dilation != 1:
            raise TypeError(f"output_shape(op='avg_pool2d') takes no dilation (avg_pool2d has none), got {dilation!r}")
        shape = make_pool_spec(batched, options["kernel_size"], stride=stride, padding=padding, dilation=dilation,
                               ceil_mode=options.get("ceil_mode", False), op=op, in_memory=False).out_shape
    return shape[1:] if unbatched else shape


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
    return np.pad(x, pad_width, mode=_NUMPY_PAD_MODE[spec.padding_mode])


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


# --------------------------------------------------------------------------------------------
# transposed convolution (conv_transpose2d)
#
# The adjoint of conv2d: every input pixel scatters a copy of the kernel, scaled by its value,
# into the output at ``i * stride - padding + u * dilation``. Output size per axis (torch's)::
#
#     out = (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1


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
    groups = _as_int("groups", groups)
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
    stride = _pair("stride", stride, minimum=1)
    dilation = _pair("dilation", dilation, minimum=1)
    if isinstance(padding, str) or (isinstance(padding, (tuple, list)) and any(
            isinstance(p, (tuple, list)) for p in padding)):
        raise ValueError(f"padding of conv_transpose2d must be an int or a pair (ph, pw) of ints >= 0, "
                         f"as in torch, got {padding!r}")
    padding = _pair("padding", padding, minimum=0)
    output_padding = _pair("output_padding", output_padding, minimum=0)
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


# --------------------------------------------------------------------------------------------
# pooling (max_pool2d, avg_pool2d)
#
# Windows of ``kernel_size`` taps (spread by ``dilation`` for max pooling) every ``stride``
# pixels over an input padded by ``padding`` on both sides. Output size per axis (torch's)::
#
#     out = floor_or_ceil((in + 2 * padding - dilation * (k - 1) - 1) / stride) + 1
#
# and with ceil_mode the last window must start inside the input or its left padding.


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
    kernel = _pair("kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None else _pair("stride", stride, minimum=1)
    padding = _pair("padding", padding, minimum=0)
    dilation = _pair("dilation", dilation, minimum=1)
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


# --------------------------------------------------------------------------------------------
# scipy.signal's convolve2d / correlate2d
#
# Both are a correlation of ``in1``, extended past its edges by the boundary rule, with ``in2``
# (flipped for convolution, conjugated for correlation). Only the amount of extension differs
# between the modes.

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


# --------------------------------------------------------------------------------------------
# unshared (local) and tiled convolution, depthwise-separable convolution
#
# All three have conv2d's geometry; only the weight layout differs, so they validate through
# make_spec and then check their own weight axes.


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
