"""``naive``: the reference backend — the definition of convolution as plain loops.

For every output value, sum input × weight over the input channels of its group and over the
kernel taps, reading the zero-padded input at ``i * stride + u * dilation``::

    out[n, k, i, j] = bias[k] + sum_{c, u, v} x_pad[n, g*Cg + c, i*sh + u*dh, j*sw + v*dw] * w[k, c, u, v]

where ``g = k // (K / groups)`` is the group of output channel ``k`` and ``Cg = C / groups``.
No tiling, no vectorisation tricks, no parallelism: it is meant to be read and trusted, and is
compiled with numba only so that tests run in reasonable time. Supports every dtype fastconv
accepts (float32, float64, complex64, complex128).

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 2, 2))
>>> fastconv.conv2d(x, w, backend="naive")[0, 0]
array([[4., 4.],
       [4., 4.]])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastconv.geometry import ConvSpec, pad_input

name = "naive"


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    return None


@njit(cache=True)
def _naive_conv2d(x_padded, weight, out, stride_h, stride_w, dilation_h, dilation_w, groups):
    batch, _, _, _ = x_padded.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    _, _, out_h, out_w = out.shape
    out_channels_per_group = out_channels // groups
    for n in range(batch):
        for k in range(out_channels):
            group = k // out_channels_per_group
            for i in range(out_h):
                for j in range(out_w):
                    total = out[n, k, i, j]  # starts at the bias
                    for c in range(channels_per_group):
                        for u in range(kernel_h):
                            for v in range(kernel_w):
                                row = i * stride_h + u * dilation_h
                                col = j * stride_w + v * dilation_w
                                total += x_padded[n, group * channels_per_group + c, row, col] * weight[k, c, u, v]
                    out[n, k, i, j] = total


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    out = np.zeros(spec.out_shape, dtype=spec.dtype)
    if bias is not None:
        out += bias[None, :, None, None]
    _naive_conv2d(pad_input(x, spec), weight, out, *spec.stride, *spec.dilation, spec.groups)
    return out
