"""fastconv: 2-D convolution for NumPy, one API over interchangeable algorithms.

>>> import numpy as np, fastconv
>>> x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
>>> w = np.ones((8, 3, 3, 3), dtype=np.float32)
>>> fastconv.conv2d(x, w, padding="same").shape
(1, 8, 32, 32)
"""

from fastconv import config
from fastconv.backends import list_backends
from fastconv.dispatch import conv2d, use_backend
from fastconv.geometry import ConvSpec, output_shape
from fastconv.tuning import autotune, explain

__version__ = "0.1.0"

__all__ = ["ConvSpec", "config", "conv2d", "list_backends", "output_shape", "use_backend"]
__all__ += ["autotune", "explain"]
