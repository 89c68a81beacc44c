"""``naive``: the reference backend — the definition of convolution as plain loops.

For every output value, sum input × weight over the input channels of its group and over the
kernel taps, reading the zero-padded input at ``i * stride + u * dilation``::

    out[n, k, i, j] = bias[k] + sum_{c, u, v} x_pad[n, g*Cg + c, i*sh + u*dh, j*sw + v*dw] * w[k, c, u, v]

where ``g = k // (K / groups)`` is the group of output channel ``k`` and ``Cg = C / groups``.
No tiling, no vectorisation tricks, no parallelism: it is meant to be read and trusted, and is
compiled with numba only so that tests run in reasonable time. Supports every dtype fastconv
accepts (float32, float64, complex64, complex128).

The transposed convolution (``conv_transpose2d``) is the same definition read backwards, as a
gather: for each output pixel, visit every kernel tap and keep those whose source
``(oy + padding - u * dilation) / stride`` is a whole input pixel.

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

from fastconv.backends.work import direct_macs
from fastconv.geometry import ConvSpec, TransposeSpec, pad_input

name = "naive"

#: The plain loops are what every other backend is checked against: auto runs them only where
#: no other backend can run the call.
reference = True

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"call": 1.88e-06, "float64_factor": 1.22, "mac": 9.13e-10}

#: The resource each term's constant scales with where the term's name does not say (see
#: :func:`fastconv.auto.constants.term_resource`): the loops run on one thread.
COST_RESOURCES = {"mac": "serial_compute"}


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    return None


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """One multiply-add per tap per output, as scalar loops (no SIMD width to lose to float64)."""
    return {"call": 1.0, "mac": float(direct_macs(spec))}


def transpose_cost_terms(spec: TransposeSpec) -> dict[str, float]:
    """The gather visits every tap of every output pixel, and multiplies where a source pixel lies."""
    visits = spec.batch * spec.out_channels * spec.out_height * spec.out_width * (spec.in_channels // spec.groups)
    return {"call": 1.0, "mac": float(visits * spec.kernel_height * spec.kernel_width)}


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
    out = output_with_bias(bias, spec)
    _naive_conv2d(pad_input(x, spec), weight, out, *spec.stride, *spec.dilation, spec.groups)
    return out


@njit(cache=True)
def _naive_conv_transpose2d(x, weight, out, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups):
    batch, in_channels, in_h, in_w = x.shape
    _, out_per_group, kernel_h, kernel_w = weight.shape
    _, out_channels, out_h, out_w = out.shape
    in_per_group = in_channels // groups
    for n in range(batch):
        for k in range(out_channels):
            group = k // out_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    total = out[n, k, oy, ox]  # starts at the bias
                    for c in range(group * in_per_group, (group + 1) * in_per_group):
                        for u in range(kernel_h):
                            row = oy + pad_h - u * dilation_h  # = i * stride for the source row i
                            if row < 0 or row % stride_h != 0 or row // stride_h >= in_h:
                                continue
                            for v in range(kernel_w):
                                col = ox + pad_w - v * dilation_w
                                if col < 0 or col % stride_w != 0 or col // stride_w >= in_w:
                                    continue
                                total += x[n, c, row // stride_h, col // stride_w] * weight[c, k % out_per_group, u, v]
                    out[n, k, oy, ox] = total


def run_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: TransposeSpec) -> np.ndarray:
    out = output_with_bias(bias, spec)
    _naive_conv_transpose2d(x, weight, out, *spec.stride, *spec.padding, *spec.dilation, spec.groups)
    return out


def output_with_bias(bias, spec: ConvSpec | TransposeSpec) -> np.ndarray:
    """A new array of ``spec.out_shape`` holding ``bias`` (or zeros), to accumulate the result into."""
    out = np.zeros(spec.out_shape, dtype=spec.dtype)
    if bias is not None:
        out += bias[None, :, None, None]
    return out
