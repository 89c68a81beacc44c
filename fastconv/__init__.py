"""fastconv: 2-D convolution for NumPy, one API over interchangeable algorithms.

>>> import numpy as np, fastconv
>>> x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
>>> w = np.ones((8, 3, 3, 3), dtype=np.float32)
>>> fastconv.conv2d(x, w, padding="same").shape
(1, 8, 32, 32)
"""

from fastconv import config
from fastconv.auto import autotune, explain
from fastconv.backends import fftw, list_backends
from fastconv.geometry import ConvSpec, output_shape
from fastconv.ops import initializers as init
from fastconv.ops.conv2d import conv2d, use_backend
from fastconv.ops.depthwise import depthwise_separable_conv2d, depthwise_separable_conv2d_backward
from fastconv.ops.grad import conv2d_backward, conv2d_input, conv2d_weight
from fastconv.ops.local import local_conv2d, tiled_conv2d
from fastconv.ops.receptive_field import ReceptiveField, receptive_field
from fastconv.ops.signal import convolve2d, correlate2d

__version__ = "0.1.0"

__all__ = ["ConvSpec", "ReceptiveField", "autotune", "avg_pool2d", "avg_pool2d_backward", "config", "conv2d",
           "conv2d_backward", "conv2d_input", "conv2d_weight", "conv_transpose2d", "conv_transpose2d_backward",
           "convolve2d", "correlate2d", "depthwise_separable_conv2d", "depthwise_separable_conv2d_backward",
           "explain", "fftw", "init", "list_backends", "local_conv2d", "max_pool2d", "max_pool2d_backward",
           "output_shape", "receptive_field", "separable_conv2d", "separate", "tiled_conv2d", "use_backend"]

# Operations whose modules compile numba kernels at import are imported on first use (PEP 562),
# so that ``import fastconv`` does not import numba.
_LAZY = {"avg_pool2d": "fastconv.ops.pooling", "max_pool2d": "fastconv.ops.pooling",
         "avg_pool2d_backward": "fastconv.ops.pooling", "max_pool2d_backward": "fastconv.ops.pooling",
         "conv_transpose2d": "fastconv.ops.transpose", "conv_transpose2d_backward": "fastconv.ops.transpose",
         "separate": "fastconv.ops.separable", "separable_conv2d": "fastconv.ops.separable"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
