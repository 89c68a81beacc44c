"""fastconv: 2-D convolution for NumPy, one API over interchangeable algorithms.

>>> import numpy as np, fastconv
>>> x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
>>> w = np.ones((8, 3, 3, 3), dtype=np.float32)
>>> fastconv.conv2d(x, w, padding="same").shape
(1, 8, 32, 32)
"""

from fastconv import config, fft
from fastconv.backends import list_backends
from fastconv.dispatch import conv2d, use_backend
from fastconv.geometry import ConvSpec, output_shape
from fastconv import init
from fastconv.depthwise import depthwise_separable_conv2d
from fastconv.local import local_conv2d, tiled_conv2d
from fastconv.receptive_field import ReceptiveField, receptive_field
from fastconv.signal import convolve2d, correlate2d
from fastconv.tuning import autotune, explain

__version__ = "0.1.0"

__all__ = ["ConvSpec", "config", "conv2d", "list_backends", "output_shape", "use_backend"]
__all__ += ["ReceptiveField", "avg_pool2d", "conv_transpose2d", "convolve2d", "correlate2d",
            "depthwise_separable_conv2d", "init", "local_conv2d", "max_pool2d", "receptive_field",
            "tiled_conv2d"]
__all__ += ["autotune", "explain"]
__all__ += ["fft", "separable_conv2d", "separate"]

# Operations whose modules compile numba kernels are imported on first use (PEP 562), so that
# ``import fastconv`` does not import numba.
_LAZY = {"avg_pool2d": "fastconv.pooling", "max_pool2d": "fastconv.pooling",
         "conv_transpose2d": "fastconv.transpose",
         "separate": "fastconv.backends.separable", "separable_conv2d": "fastconv.backends.separable"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
