"""Hypothesis strategies for convolution problems, shared by every backend's tests.

A drawn problem is valid by construction (its input is large enough for the kernel, reflect
padding is smaller than the input), covers every padding form and mode, stride, dilation, groups
(including depthwise), dtype and memory layout, and stays small so that the naive loops are fast.
"""

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from reference import explicit_padding

REAL_DTYPES = (np.float32, np.float64)
COMPLEX_DTYPES = (np.complex64, np.complex128)


@dataclass
class Problem:
    x: np.ndarray
    weight: np.ndarray
    bias: object
    kwargs: dict  # stride, padding, dilation, groups, padding_mode as passed to conv2d
    explicit_padding: tuple

    def __repr__(self):  # hypothesis prints this for a failing example
        return (f"Problem(x {self.x.shape} {self.x.dtype} strides {self.x.strides}, weight {self.weight.shape}, "
                f"bias {None if self.bias is None else self.bias.shape}, {self.kwargs})")


def _layout(draw, array):
    """The same values in C order, Fortran order, a strided view or a negatively strided view."""
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed"]))
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        big = np.zeros(tuple(2 * s for s in array.shape), dtype=array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "reversed":
        return np.flip(np.flip(array, axis=-1).copy(), axis=-1)
    return array


@st.composite
def conv_problems(draw, dtypes=REAL_DTYPES, max_size=10, max_kernel=4, max_channels=3, max_batch=2,
                  kernels=None, strides=None):
    """A random valid problem; ``kernels`` / ``strides`` (lists of (h, w)) restrict those draws."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    batch = draw(st.integers(1, max_batch))
    depthwise = draw(st.booleans()) and draw(st.booleans())
    if depthwise:
        groups = draw(st.integers(2, 4))
        channels_per_group, out_per_group = 1, draw(st.integers(1, 2))
    else:
        groups = draw(st.integers(1, 3))
        channels_per_group = draw(st.integers(1, max_channels))
        out_per_group = draw(st.integers(1, max_channels))
    kernel = (draw(st.sampled_from(kernels)) if kernels
              else (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))))
    stride = draw(st.sampled_from(strides)) if strides else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    size = (draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    form = draw(st.sampled_from(["int", "pair", "pairs", "valid", "same", "full"]))
    if form == "int":
        padding = draw(st.integers(0, 3))
    elif form == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    elif form == "pairs":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    else:
        padding = form
    size = list(size)

    def fits(axis):
        before, after = explicit_padding(padding, size, kernel, stride, dilation)[axis]
        if size[axis] + before + after < dilation[axis] * (kernel[axis] - 1) + 1:
            return False
        if padding_mode == "reflect":
            return max(before, after) < size[axis]
        if padding_mode == "circular":
            return max(before, after) <= size[axis]
        return True

    for axis in range(2):  # grow the input until the kernel fits and the padding mode is legal
        while not fits(axis):
            size[axis] += 1
    sides = explicit_padding(padding, size, kernel, stride, dilation)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    def sample(shape):
        values = rng.standard_normal(shape)
        if dtype.kind == "c":
            values = values + 1j * rng.standard_normal(shape)
        return values.astype(dtype)

    channels = groups * channels_per_group
    x = _layout(draw, sample((batch, channels, *size)))
    weight = _layout(draw, sample((groups * out_per_group, channels_per_group, *kernel)))
    bias = sample((groups * out_per_group,)) if draw(st.booleans()) else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode)
    return Problem(x, weight, bias, kwargs, sides)
