"""Geometry and validation: the one place that knows what a call means.

Every operation's arguments are checked here, before any data is touched, and turned into an
immutable, hashable spec that backends receive already valid:

=====================  ===========================================  ==========================
module                 what                                         spec
=====================  ===========================================  ==========================
``arguments``          ints, (h, w) pairs, shapes, dtypes           —
``limits``             representable extents, memory per array      —
``conv``               conv2d: padding rules, what backends read    :class:`ConvSpec`
``transpose``          conv_transpose2d                             :class:`TransposeSpec`
``pooling``            max_pool2d, avg_pool2d                       :class:`PoolSpec`
``grad``               conv2d's backward passes as conv2d / the     :class:`ConvSpec`
                       transposed convolution
``signal``             scipy-style convolve2d / correlate2d         —
``variants``           local, tiled, depthwise-separable weights    :class:`ConvSpec`
``output_shape``       the result's shape of any operation          —
=====================  ===========================================  ==========================

Examples
--------
>>> from fastconv.geometry import output_shape
>>> output_shape((1, 3, 64, 64), (2, 3, 5, 5))
(1, 2, 60, 60)
>>> output_shape((3, 10, 10), (4, 3, 3, 3), stride=2, padding="same")
(4, 5, 5)
"""

from fastconv.geometry.arguments import GEOMETRY_LIMIT, as_int, check_dtype, int_pair, resolve_dtypes, shape_tuple
from fastconv.geometry.conv import (NUMPY_PAD_MODE, PADDING_MODES, PADDING_STRINGS, ConvSpec, backend_input,
                                    backend_spec, gathered_spec, interior_range, make_spec, pad_input,
                                    padded_source, read_positions)
from fastconv.geometry.grad import (PASSES, cropped_rows, flipped_weight, fold_input_gradient, input_pass_as_conv,
                                    input_pass_as_transpose, make_grad_spec, stuffed_grad_output,
                                    swapped_grad_output, swapped_input, weight_pass_as_conv)
from fastconv.geometry.limits import check_extent, check_fits, memory_limit_bytes
from fastconv.geometry.output_shape import OUTPUT_SHAPE_OPS, output_shape
from fastconv.geometry.pooling import PoolSpec, make_pool_spec
from fastconv.geometry.signal import SIGNAL_BOUNDARIES, SIGNAL_MODES, signal_geometry
from fastconv.geometry.transpose import TransposeSpec, make_transpose_spec
from fastconv.geometry.variants import make_local_spec, make_separable_specs

__all__ = [
    "ConvSpec", "PoolSpec", "TransposeSpec", "make_spec", "make_transpose_spec", "make_pool_spec",
    "make_local_spec", "make_separable_specs", "signal_geometry", "output_shape", "OUTPUT_SHAPE_OPS",
    "PADDING_MODES", "PADDING_STRINGS", "NUMPY_PAD_MODE", "SIGNAL_MODES", "SIGNAL_BOUNDARIES",
    "GEOMETRY_LIMIT", "as_int", "int_pair", "shape_tuple", "resolve_dtypes", "check_dtype",
    "check_extent", "check_fits", "memory_limit_bytes",
    "backend_input", "backend_spec", "gathered_spec", "padded_source", "read_positions", "pad_input",
    "interior_range", "PASSES", "make_grad_spec", "input_pass_as_conv", "input_pass_as_transpose",
    "weight_pass_as_conv", "stuffed_grad_output", "flipped_weight", "swapped_input", "swapped_grad_output",
    "cropped_rows", "fold_input_gradient",
]
