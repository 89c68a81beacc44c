"""conv2d's gradients as problems the backends already solve: the backward passes' geometry.

For ``y = conv2d(x, w)`` with spec S (stride s, dilation d, padding (p_before, p_after), groups G)
and the gradient ``g`` of a loss with respect to ``y``, training needs two other convolutions:

input pass (backward-data)
    ``dx[n, c, i] = sum over (k, o, u) with o·s + u·d = i + p_before of g[n, k, o] · w[k, c, u]``:
    every output gradient scatters a copy of its kernel back over the window it read. That is the
    transposed convolution of ``g`` with ``w`` (:func:`input_pass_as_transpose`), or, read as a
    gather, a stride-1 convolution of ``g`` with the *flipped, transposed* weight
    ``w'[c, k, u] = w[k, c, kh - 1 - u]`` once the stride is turned into input dilation: ``g``
    with ``s - 1`` zeros between its samples, framed by ``d·(k - 1) - p_before`` zeros
    (:func:`input_pass_as_conv`). The zeros cost ``s²`` times the useful work, so the second form
    pays at stride 1, where it runs on any conv2d backend (Winograd included).
weight pass (backward-filter)
    ``dw[k, c, u] = sum over (n, o) of g[n, k, o] · x_pad[n, c, o·s + u·d]``: a correlation of the
    input with the output gradient. With batch and channel axes swapped (the channels become the
    batch, the images the channels) it is a conv2d whose *kernel* is ``g`` (one Ho×Wo plane per
    image) and whose output is the kh×kw weight; stride and dilation trade places
    (:func:`weight_pass_as_conv`).

Both work on the spec the backends see (:func:`~fastconv.geometry.backend_spec`: zero padding
still to apply, far-off padding gathered); :func:`fold_input_gradient` carries the input pass's
result back through :func:`~fastconv.geometry.backend_input` (its adjoint: reflect, replicate and
circular padding fold the border's gradient back onto the pixels it copied).

Examples
--------
>>> from fastconv.geometry import make_spec
>>> spec = make_spec((1, 8, 16, 16), (4, 8, 3, 3), stride=2, padding=1)
>>> input_pass_as_conv(spec).input_shape, input_pass_as_conv(spec).out_shape   # g zero-stuffed, 18x18
((1, 4, 18, 18), (1, 8, 16, 16))
>>> weight_pass_as_conv(spec).out_shape                                       # (C // G, K, kh, kw)
(8, 4, 3, 3)
"""

from __future__ import annotations

import numpy as np

from fastconv.geometry.arguments import shape_tuple
from fastconv.geometry.conv import (ConvSpec, gathered_spec, make_spec, padded_source, read_positions)
from fastconv.geometry.transpose import TransposeSpec

__all__ = ["PASSES", "make_grad_spec", "input_pass_as_conv", "input_pass_as_transpose", "weight_pass_as_conv",
           "stuffed_grad_output", "flipped_weight", "swapped_input", "swapped_grad_output", "cropped_rows",
           "fold_input_gradient"]

#: The passes of a convolution layer, as ``fastconv.explain`` and ``fastconv bench`` name them.
PASSES = {"forward": "conv2d", "input": "conv2d_input", "weight": "conv2d_weight"}


def make_grad_spec(input_shape, weight_shape, grad_output_shape, *, op: str, stride=1, padding=0, dilation=1,
                   groups=1, padding_mode="zeros", dtype=np.float64, out_dtype=None) -> ConvSpec:
    """Validate a backward pass of conv2d; return the forward :class:`ConvSpec` (batched shapes).

    ``input_shape`` and ``weight_shape`` are checked exactly as :func:`make_spec` checks conv2d's
    operands (``op`` names the call in errors: ``"conv2d_input"``...); ``grad_output_shape`` must
    then be the forward output's shape. Unbatched (C, H, W) input shapes go with unbatched
    (K, H_out, W_out) output gradients.

    >>> make_grad_spec((2, 3, 8, 8), (4, 3, 3, 3), (2, 4, 8, 8), op="conv2d_input", padding="same").padding
    ((1, 1), (1, 1))
    """
    input_shape = shape_tuple("input_shape", input_shape)
    weight_shape = shape_tuple("weight_shape", weight_shape)
    grad_output_shape = shape_tuple("grad_output.shape", grad_output_shape)
    if len(input_shape) not in (3, 4):
        raise ValueError(f"{op}: the input must have shape (N, C, H, W) or (C, H, W), got shape {input_shape}")
    if len(grad_output_shape) != len(input_shape):
        what = "(N, K, H_out, W_out) for a batched" if len(input_shape) == 4 else "(K, H_out, W_out) for an unbatched"
        raise ValueError(f"{op}: grad_output must have shape {what} input of shape {input_shape}, got shape "
                         f"{grad_output_shape}")
    unbatched = len(input_shape) == 3
    batched_input = (1, *input_shape) if unbatched else input_shape
    spec = make_spec(batched_input, weight_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, dtype=dtype, out_dtype=out_dtype)
    expected = spec.out_shape[1:] if unbatched else spec.out_shape
    if grad_output_shape != expected:
        raise ValueError(
            f"{op}: grad_output has shape {grad_output_shape}, but conv2d of an input of shape {input_shape} with a "
            f"weight of shape {weight_shape}, stride {spec.stride}, padding {spec.padding} and dilation "
            f"{spec.dilation} has output shape {expected}"
        )
    return spec


def _remainders(spec: ConvSpec) -> tuple[int, int]:
    """Per axis, the padded rows after the last window: ``padded - ((out - 1)·stride + extent)``."""
    return tuple(padded - ((out - 1) * stride + extent) for padded, out, stride, extent in zip(
        (spec.padded_height, spec.padded_width), (spec.out_height, spec.out_width), spec.stride,
        spec.dilated_kernel))


# --------------------------------------------------------------------------------------------
# the input pass


def input_pass_as_transpose(spec: ConvSpec) -> tuple[TransposeSpec, tuple[tuple[int, int], tuple[int, int]]]:
    """The transposed convolution of ``g`` whose output, cropped, is the input pass; and the crop.

    ``spec`` is a zero-padding spec (padding still to apply). The transposed convolution's padding
    is symmetric (torch's), ``min(before, after)`` per axis, with ``output_padding`` reaching the
    last input row; the crop ``((top, bottom), (left, right))`` removes what asymmetric padding
    leaves over (nothing for symmetric padding).

    >>> from fastconv.geometry import make_spec
    >>> transpose, crop = input_pass_as_transpose(make_spec((1, 2, 9, 9), (3, 2, 4, 4), padding="same"))
    >>> transpose.out_shape, crop
    ((1, 2, 10, 10), ((0, 1), (0, 1)))
    """
    pads, extras, crops = [], [], []
    for (before, after), remainder, size in zip(spec.padding, _remainders(spec), (spec.in_height, spec.in_width)):
        pad = min(before, after)
        extra = remainder if pad == after else max(0, remainder + pad - after)
        pads.append(pad)
        extras.append(extra)
        crops.append((before - pad, 0))  # the bottom crop is filled in from the output size below
    transpose = TransposeSpec(spec.batch, spec.out_channels, spec.out_height, spec.out_width, spec.in_channels,
                              spec.kernel_height, spec.kernel_width, spec.stride, tuple(pads), tuple(extras),
                              spec.dilation, spec.groups, spec.dtype, spec.out_dtype)
    crops = tuple((top, out - size - top) for (top, _), out, size in zip(
        crops, (transpose.out_height, transpose.out_width), (spec.in_height, spec.in_width)))
    return transpose, crops


def _stuffing(spec: ConvSpec):
    """Per axis: (offset of g's first sample in the stuffed array, stuffed length), and whether a
    plain zero padding of g (stride 1, no sample cropped) makes it."""
    axes = []
    for size, out, stride, extent, (before, _) in zip((spec.in_height, spec.in_width), (spec.out_height, spec.out_width),
                                                      spec.stride, spec.dilated_kernel, spec.padding):
        length = size + extent - 1
        axes.append((extent - 1 - before, length, out, stride))
    plain = all(stride == 1 and offset >= 0 and length - offset - out >= 0 for offset, length, out, stride in axes)
    return axes, plain


def input_pass_as_conv(spec: ConvSpec) -> ConvSpec:
    """The stride-1 conv2d of the stuffed output gradient with the flipped weight: the input pass.

    Its input is :func:`stuffed_grad_output` (g itself, padded by the backend, at stride 1 when no
    padding exceeds the kernel's extent), its weight :func:`flipped_weight`, its output ``dx`` of
    ``spec``'s input shape. ``spec`` is a zero-padding spec (padding still to apply).
    """
    axes, plain = _stuffing(spec)
    if plain:
        padding = tuple((offset, length - offset - out) for offset, length, out, _ in axes)
        height, width = spec.out_height, spec.out_width
    else:
        padding = ((0, 0), (0, 0))
        height, width = axes[0][1], axes[1][1]
    return ConvSpec(spec.batch, spec.out_channels, height, width, spec.in_channels, spec.kernel_height,
                    spec.kernel_width, (1, 1), padding, spec.dilation, spec.groups, "zeros", spec.dtype, spec.out_dtype)


def stuffed_grad_output(grad_output: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """``grad_output`` as :func:`input_pass_as_conv`'s input: itself when a padding does, else
    its samples ``stride`` apart in zeros, shifted so that the flipped kernel lines up."""
    axes, plain = _stuffing(spec)
    if plain:
        return grad_output
    (offset_h, length_h, out_h, stride_h), (offset_w, length_w, out_w, stride_w) = axes
    stuffed = np.zeros(grad_output.shape[:2] + (length_h, length_w), dtype=grad_output.dtype)
    picks = []
    for offset, length, out, stride in axes:
        first = max(0, -(offset // stride))  # the first sample that lands at index >= 0
        last = min(out, (length - 1 - offset) // stride + 1)
        picks.append((first, max(first, last), offset, stride))
    (first_h, last_h, _, _), (first_w, last_w, _, _) = picks
    stuffed[:, :, first_h * stride_h + offset_h:last_h * stride_h + offset_h:stride_h,
            first_w * stride_w + offset_w:last_w * stride_w + offset_w:stride_w] = \
        grad_output[:, :, first_h:last_h, first_w:last_w]
    return stuffed


def flipped_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """conv2d's weight (K, C // G, kh, kw) as the input pass's: (C, K // G, kh, kw), rotated by 180°.

    >>> flipped_weight(np.arange(4.0).reshape(1, 1, 2, 2), 1)[0, 0]
    array([[3., 2.],
           [1., 0.]])
    """
    out_channels, per_group, kernel_h, kernel_w = weight.shape
    by_group = weight.reshape(groups, out_channels // groups, per_group, kernel_h, kernel_w)
    swapped = by_group.transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(swapped).reshape(groups * per_group, out_channels // groups, kernel_h, kernel_w)


def cropped_rows(array: np.ndarray, crops) -> np.ndarray:
    """``array`` (N, C, H, W) without ``crops`` = ((top, bottom), (left, right)) rows and columns; C-contiguous."""
    (top, bottom), (left, right) = crops
    if not (top or bottom or left or right):
        return array
    height, width = array.shape[2:]
    return np.ascontiguousarray(array[:, :, top:height - bottom, left:width - right])


# --------------------------------------------------------------------------------------------
# the weight pass


def _weight_pass_rows(spec: ConvSpec):
    """Per axis: input rows the windows read, and the padding after them (the remainder dropped)."""
    rows = []
    for size, (before, after), remainder in zip((spec.in_height, spec.in_width), spec.padding, _remainders(spec)):
        dropped = min(remainder, after)
        rows.append((size - (remainder - dropped), after - dropped))
    return rows


def weight_pass_as_conv(spec: ConvSpec) -> ConvSpec:
    """The conv2d with batch and channel axes swapped whose output is the weight pass.

    Input :func:`swapped_input` (C // G, G·N, H', W'): the channels of a group as the batch, the
    images as channels; weight :func:`swapped_grad_output` (K, N, H_out, W_out); stride ``spec``'s
    dilation and dilation ``spec``'s stride; output (C // G, K, kh, kw), the weight gradient with
    its two channel axes swapped. Input rows after the last window are dropped (H' <= H).
    """
    (height, after_h), (width, after_w) = _weight_pass_rows(spec)
    (top, _), (left, _) = spec.padding
    groups = spec.groups
    return ConvSpec(spec.in_channels_per_group, groups * spec.batch, height, width, spec.out_channels,
                    spec.out_height, spec.out_width, spec.dilation, ((top, after_h), (left, after_w)), spec.stride,
                    groups, "zeros", spec.dtype, spec.out_dtype)


def swapped_input(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """``x`` (N, C, H, W) as :func:`weight_pass_as_conv`'s input: (C // G, G·N, H', W'), C-contiguous."""
    (height, _), (width, _) = _weight_pass_rows(spec)
    batch, channels = x.shape[:2]
    groups = spec.groups
    by_group = x[:, :, :height, :width].reshape(batch, groups, channels // groups, height, width)
    return np.ascontiguousarray(by_group.transpose(2, 1, 0, 3, 4)).reshape(channels // groups, groups * batch,
                                                                            height, width)


def swapped_grad_output(grad_output: np.ndarray) -> np.ndarray:
    """``grad_output`` (N, K, H_out, W_out) as :func:`weight_pass_as_conv`'s weight: (K, N, H_out, W_out)."""
    return np.ascontiguousarray(grad_output.transpose(1, 0, 2, 3))


# --------------------------------------------------------------------------------------------
# back through backend_input


def _scatter_rows(values: np.ndarray, rows: np.ndarray, size: int, axis: int) -> np.ndarray:
    """The adjoint of ``np.take(x, rows, axis)`` for an axis of ``size``: each value added to its row."""
    shape = list(values.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=values.dtype)
    np.add.at(out, (slice(None),) * axis + (rows,), values)
    return out


def _fold_padding(dx_padded: np.ndarray, spec: ConvSpec, size_h: int, size_w: int) -> np.ndarray:
    """The adjoint of ``pad_input``: each padded row's gradient added to the input row it copies."""
    dx = dx_padded
    for axis, size, (before, after) in ((2, size_h, spec.padding[0]), (3, size_w, spec.padding[1])):
        if not (before or after):
            continue
        inner = dx[(slice(None),) * axis + (slice(before, before + size),)].copy()  # rows that are themselves
        border = np.r_[0:before, before + size:before + size + after]
        rows, outside = padded_source(border - before, size, spec.padding_mode)
        values = np.take(dx, border, axis=axis)
        if outside is not None:  # zero padding copies nothing
            keep = ~outside
            rows, values = rows[keep], np.compress(keep, values, axis=axis)
        np.add.at(inner, (slice(None),) * axis + (rows,), values)
        dx = inner
    return dx


def fold_input_gradient(dx_read: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The input's gradient from the gradient of the input as the backends read it.

    The adjoint of :func:`~fastconv.geometry.backend_input` for the called ``spec``: padding
    applied explicitly (``reflect``, ``replicate``, ``circular``) folds back onto the pixels it
    copied, and gathered rows add back onto the rows they were read from. Returns ``dx_read``
    itself when the backends read the input as it is.

    >>> from fastconv.geometry import make_spec
    >>> spec = make_spec((1, 1, 1, 3), (1, 1, 1, 3), padding=(0, 1), padding_mode="replicate")
    >>> fold_input_gradient(np.ones((1, 1, 1, 5)), spec)[0, 0]
    array([[2., 1., 2.]])
    """
    gathered = gathered_spec(spec)
    dx = dx_read
    if spec.padding_mode != "zeros":
        dx = _fold_padding(dx, gathered, gathered.in_height, gathered.in_width)
    for axis, positions in ((2, read_positions(spec)[0]), (3, read_positions(spec)[1])):
        if positions is None:
            continue
        size = spec.input_shape[axis]
        rows, outside = padded_source(positions, size, spec.padding_mode)
        values = dx
        if outside is not None:
            keep = ~outside
            rows, values = rows[keep], np.compress(keep, dx, axis=axis)
        dx = _scatter_rows(values, rows, size, axis)
    return dx

