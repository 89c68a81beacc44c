"""An independent float64 reference for conv2d, written from the definition.

It shares no code with the package: padding through ``numpy.pad`` with torch's mode names
translated here, windows through ``sliding_window_view``, the sum through ``einsum``. It is itself
checked against ``scipy.signal.correlate2d`` in ``test_reference.py``.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

TORCH_TO_NUMPY_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def reference_conv2d(x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                     groups=1, padding_mode="zeros"):
    """conv2d on (N, C, H, W) input, computed in float64 (complex128 for complex inputs).

    ``padding`` must be explicit: ((top, bottom), (left, right)).
    """
    wide = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(weight) else np.float64
    x = np.asarray(x, dtype=wide)
    weight = np.asarray(weight, dtype=wide)
    x = np.pad(x, ((0, 0), (0, 0)) + tuple(map(tuple, padding)), mode=TORCH_TO_NUMPY_PAD[padding_mode])
    out_channels, channels_per_group, kh, kw = weight.shape
    dh, dw = dilation
    sh, sw = stride
    # windows of the dilated kernel extent, then keep every dilation-th tap and stride-th window
    windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    k_per_group = out_channels // groups
    outputs = []
    for g in range(groups):
        x_group = windows[:, g * channels_per_group:(g + 1) * channels_per_group]
        w_group = weight[g * k_per_group:(g + 1) * k_per_group]
        outputs.append(np.einsum("nchwuv,kcuv->nkhw", x_group, w_group))
    out = np.concatenate(outputs, axis=1)
    if bias is not None:
        out = out + np.asarray(bias, dtype=wide)[None, :, None, None]
    return out


def explicit_padding(padding, in_size, kernel, stride, dilation):
    """((top, bottom), (left, right)) for any accepted padding form, derived independently."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding in ("same", "full"):
        sides = []
        for n, k, s, d in zip(in_size, kernel, stride, dilation):
            span = d * (k - 1)
            if padding == "full":
                sides.append((span, span))
            else:
                out = (n + s - 1) // s
                total = max(0, (out - 1) * s + span + 1 - n)
                sides.append((total // 2, (total + 1) // 2))
        return tuple(sides)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (0 when both are all zeros)."""
    actual = np.asarray(actual, dtype=np.complex128 if np.iscomplexobj(actual) else np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    err = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return err / scale if scale > 0 else err


def _fold_padding(padded_gradient, shape, padding, padding_mode):
    """Each padded pixel's gradient added to the input pixel np.pad copied into it."""
    height, width = shape[2:]
    index = np.arange(height * width).reshape(height, width)
    if padding_mode == "zeros":
        index = np.pad(index, tuple(map(tuple, padding)), mode="constant", constant_values=-1)
    else:
        index = np.pad(index, tuple(map(tuple, padding)), mode=TORCH_TO_NUMPY_PAD[padding_mode])
    flat = padded_gradient.reshape(shape[0], shape[1], -1)
    source = index.ravel()
    keep = source >= 0
    out = np.zeros((shape[0], shape[1], height * width), dtype=padded_gradient.dtype)
    np.add.at(out, (slice(None), slice(None), source[keep]), flat[:, :, keep])
    return out.reshape(shape)


def reference_conv2d_gradients(x, weight, grad_output, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                               groups=1, padding_mode="zeros"):
    """(d input, d weight) of sum(conv2d(x, weight) * grad_output), from the definition, in float64.

    For complex operands, the gradients torch's autograd returns for a real loss: the conjugate
    of the weight (for the input) or of the input (for the weight). ``padding`` must be explicit.
    """
    wide = np.complex128 if any(np.iscomplexobj(a) for a in (x, weight, grad_output)) else np.float64
    x, weight, grad_output = (np.asarray(a, dtype=wide) for a in (x, weight, grad_output))
    padded = np.pad(x, ((0, 0), (0, 0)) + tuple(map(tuple, padding)), mode=TORCH_TO_NUMPY_PAD[padding_mode])
    out_channels, channels_per_group, kh, kw = weight.shape
    (dh, dw), (sh, sw) = dilation, stride
    windows = sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    out_h, out_w = grad_output.shape[2:]
    k_per_group = out_channels // groups
    grad_weight = np.empty_like(weight)
    grad_padded = np.zeros_like(padded)
    for g in range(groups):
        channels = slice(g * channels_per_group, (g + 1) * channels_per_group)
        outputs = slice(g * k_per_group, (g + 1) * k_per_group)
        grad_weight[outputs] = np.einsum("nkhw,nchwuv->kcuv", grad_output[:, outputs],
                                         windows[:, channels].conj())
        for u in range(kh):
            for v in range(kw):
                rows = slice(u * dh, u * dh + (out_h - 1) * sh + 1, sh)
                cols = slice(v * dw, v * dw + (out_w - 1) * sw + 1, sw)
                grad_padded[:, channels, rows, cols] += np.einsum("nkhw,kc->nchw", grad_output[:, outputs],
                                                                  weight[outputs, :, u, v].conj())
    return _fold_padding(grad_padded, x.shape, padding, padding_mode), grad_weight
