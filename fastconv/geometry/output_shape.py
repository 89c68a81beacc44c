"""``output_shape``: the shape of any operation's result, from shapes alone.

>>> output_shape((1, 3, 64, 64), (2, 3, 5, 5))
(1, 2, 60, 60)
"""

from __future__ import annotations

from fastconv.geometry.arguments import shape_tuple
from fastconv.geometry.conv import make_spec
from fastconv.geometry.pooling import make_pool_spec
from fastconv.geometry.signal import signal_geometry
from fastconv.geometry.transpose import make_transpose_spec
from fastconv.geometry.variants import make_local_spec, make_separable_specs

__all__ = ["output_shape", "OUTPUT_SHAPE_OPS"]


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
    shape_of, weight_kind, allowed = _OPERATIONS[op]
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"output_shape(op={op!r}) got unexpected arguments {sorted(unknown)}; "
                        f"it accepts {sorted(allowed) or 'none'} besides stride, padding, dilation, groups")
    input_shape = shape_tuple("input_shape", input_shape)
    if weight_kind == "pair":
        if not (isinstance(weight_shape, (tuple, list)) and len(weight_shape) == 2):
            raise TypeError(f"weight_shape of {op} must be a pair (depthwise shape, pointwise shape), "
                            f"got {weight_shape!r}")
        weight_shape = tuple(shape_tuple("weight_shape", shape) for shape in weight_shape)
    elif weight_kind == "shape":
        weight_shape = shape_tuple("weight_shape", weight_shape)
    if op in ("convolve2d", "correlate2d"):  # 2-D arrays, no batch axis
        return shape_of(input_shape, weight_shape, stride, padding, dilation, groups, op, options)
    unbatched = len(input_shape) == 3
    batched = (1,) + input_shape if unbatched else input_shape
    shape = shape_of(batched, weight_shape, stride, padding, dilation, groups, op, options)
    return shape[1:] if unbatched else shape


# One function per operation: (input shape, weight shape, stride, padding, dilation, groups, op,
# options) -> output shape. Shapes are judged without the in-memory size limit: a shape is asked
# for, nothing is allocated.

def _conv2d(shape, weight, stride, padding, dilation, groups, op, options):
    return make_spec(shape, weight, stride=1 if stride is None else stride, padding=padding, dilation=dilation,
                     groups=groups, in_memory=False).out_shape


def _conv_transpose2d(shape, weight, stride, padding, dilation, groups, op, options):
    return make_transpose_spec(shape, weight, stride=1 if stride is None else stride, padding=padding,
                               dilation=dilation, groups=groups, in_memory=False,
                               output_padding=options.get("output_padding", 0)).out_shape


def _depthwise_separable_conv2d(shape, weight, stride, padding, dilation, groups, op, options):
    depthwise_shape, pointwise_shape = weight
    return make_separable_specs(shape, depthwise_shape, pointwise_shape, stride=1 if stride is None else stride,
                                padding=padding, dilation=dilation, in_memory=False)[1].out_shape


def _local_conv2d(shape, weight, stride, padding, dilation, groups, op, options):
    return make_local_spec(shape, weight, stride=1 if stride is None else stride, padding=padding,
                           dilation=dilation, tiled=op == "tiled_conv2d", in_memory=False).out_shape


def _pool2d(shape, weight, stride, padding, dilation, groups, op, options):
    # stride defaults to the kernel size, as in torch
    if "kernel_size" not in options:
        raise TypeError(f"output_shape(op={op!r}) needs kernel_size=")
    if op == "avg_pool2d" and dilation != 1:
        raise TypeError(f"output_shape(op='avg_pool2d') takes no dilation (avg_pool2d has none), got {dilation!r}")
    return make_pool_spec(shape, options["kernel_size"], stride=stride, padding=padding, dilation=dilation,
                          ceil_mode=options.get("ceil_mode", False), op=op, in_memory=False).out_shape


def _signal(shape, weight, stride, padding, dilation, groups, op, options):
    return signal_geometry(shape, weight, options.get("mode", "full"), flip=op == "convolve2d", op=op)[2]


# op -> (its shape function, how weight_shape is given: "shape", "pair" or "none", its own options)
_OPERATIONS = {
    "conv2d": (_conv2d, "shape", set()),
    "conv_transpose2d": (_conv_transpose2d, "shape", {"output_padding"}),
    "depthwise_separable_conv2d": (_depthwise_separable_conv2d, "pair", set()),
    "local_conv2d": (_local_conv2d, "shape", set()),
    "tiled_conv2d": (_local_conv2d, "shape", set()),
    "max_pool2d": (_pool2d, "none", {"kernel_size", "ceil_mode"}),
    "avg_pool2d": (_pool2d, "none", {"kernel_size", "ceil_mode"}),
    "convolve2d": (_signal, "shape", {"mode"}),
    "correlate2d": (_signal, "shape", {"mode"}),
}
OUTPUT_SHAPE_OPS = tuple(_OPERATIONS)
