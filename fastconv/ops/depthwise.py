"""``depthwise_separable_conv2d``: the MobileNet / Xception block in one call.

A k×k convolution from C to K channels costs ``C·K·k²`` multiply-adds per output pixel. The
depthwise-separable factorisation replaces it with a depthwise convolution (each input channel
filtered on its own by m filters, ``C·m·k²``) followed by a pointwise 1×1 convolution that mixes
channels (``C·m·K``) — roughly ``k²`` times cheaper for large K. No activation is applied in
between (add one yourself by calling the two convolutions separately).

Both steps are :func:`fastconv.conv2d` calls (depthwise: ``groups = C``; pointwise: a 1×1
kernel), so ``backend=`` reaches every backend. The intermediate result stays in the compute
dtype (float16 inputs are not rounded between the steps).

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 3, 8, 8), dtype=np.float32)
>>> depthwise = np.ones((6, 1, 3, 3), dtype=np.float32)   # depth multiplier 2
>>> pointwise = np.ones((4, 6, 1, 1), dtype=np.float32)
>>> fastconv.depthwise_separable_conv2d(x, depthwise, pointwise, padding=1).shape
(1, 4, 8, 8)
"""

from __future__ import annotations

import numpy as np

from fastconv.geometry import make_separable_specs
from fastconv.ops.operands import batched_operands, check_bias
from fastconv.ops.conv2d import conv2d
from fastconv.ops.grad import check_needs, conv2d_backward, conv2d_input, pass_backend

__all__ = ["depthwise_separable_conv2d", "depthwise_separable_conv2d_backward"]


def depthwise_separable_conv2d(x, depthwise_weight, pointwise_weight, bias=None, *, stride=1, padding=0,
                               dilation=1, padding_mode="zeros", backend="auto"):
    """Depthwise convolution then pointwise (1×1) convolution, with no activation between.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input; an unbatched input gives an unbatched result.
    depthwise_weight : array_like, shape (C·m, 1, kh, kw)
        m filters per input channel (the depth multiplier m is inferred from the shape); channel
        ``c·m + r`` of the intermediate result is input channel c filtered by filter ``c·m + r``,
        torch's order for ``groups = C``.
    pointwise_weight : array_like, shape (K, C·m, 1, 1)
        Mixes the C·m intermediate channels into K outputs.
    bias : array_like, shape (K,), optional
        Added after the pointwise step.
    stride, padding, dilation, padding_mode
        Of the depthwise step, as for :func:`fastconv.conv2d`.
    backend : str
        The conv2d backend for both steps, or "auto".

    Returns
    -------
    numpy.ndarray, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        Dtype rules as :func:`fastconv.conv2d`.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(2 * 3 * 3.0).reshape(2, 3, 3)
    >>> depthwise = np.ones((2, 1, 3, 3)); pointwise = np.array([[[[1.0]], [[-1.0]]]])
    >>> fastconv.depthwise_separable_conv2d(x, depthwise, pointwise)  # sum(channel 0) - sum(channel 1)
    array([[[-81.]]])
    """
    x, (depthwise_weight, pointwise_weight), bias, unbatched, compute_dtype, out_dtype = batched_operands(
        x, {"depthwise_weight": depthwise_weight, "pointwise_weight": pointwise_weight}, bias)
    _, pointwise = make_separable_specs(x.shape, depthwise_weight.shape, pointwise_weight.shape, stride=stride,
                                        padding=padding, dilation=dilation, padding_mode=padding_mode)
    check_bias(bias, pointwise.out_channels, f"pointwise_weight {pointwise_weight.shape}")
    cast = {"dtype": compute_dtype}
    hidden = conv2d(np.asarray(x, **cast), np.asarray(depthwise_weight, **cast), stride=stride, padding=padding,
                    dilation=dilation, groups=x.shape[1], padding_mode=padding_mode, backend=backend)
    out = conv2d(hidden, np.asarray(pointwise_weight, **cast), None if bias is None else np.asarray(bias, **cast),
                 backend=backend)
    out = out.astype(out_dtype, copy=False)
    return out[0] if unbatched else out


def depthwise_separable_conv2d_backward(x, depthwise_weight, pointwise_weight, grad_output, *, stride=1, padding=0,
                                        dilation=1, padding_mode="zeros", needs=(True, True, True, True),
                                        backend="auto"):
    """The gradients of :func:`depthwise_separable_conv2d` with respect to its four operands.

    The chain rule through the two convolutions: the pointwise step's gradients (its input is the
    depthwise result, computed again here when the pointwise weight's gradient is needed), then
    the depthwise step's, each with :func:`fastconv.conv2d_backward`.

    Parameters
    ----------
    x, depthwise_weight, pointwise_weight : array_like
        The forward call's operands.
    grad_output : array_like, shape of ``depthwise_separable_conv2d``'s result
        The gradient of the loss with respect to its output.
    stride, padding, dilation, padding_mode
        Those of the forward call (of its depthwise step).
    needs : (bool, bool, bool, bool)
        Which of (input, depthwise weight, pointwise weight, bias) gradients to compute.
    backend : str or (str, str)
        As for :func:`fastconv.conv2d_backward`, for both steps.

    Returns
    -------
    (grad_input, grad_depthwise_weight, grad_pointwise_weight, grad_bias)
        Shaped as the operands (the bias's as (K,)); None where ``needs`` says so.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 2, 4, 4)); depthwise = np.ones((2, 1, 3, 3)); pointwise = np.ones((3, 2, 1, 1))
    >>> grads = fastconv.depthwise_separable_conv2d_backward(x, depthwise, pointwise, np.ones((1, 3, 2, 2)))
    >>> [g.shape for g in grads]
    [(1, 2, 4, 4), (2, 1, 3, 3), (3, 2, 1, 1), (3,)]
    """
    needs = check_needs(needs, 4)
    x, (depthwise_weight, pointwise_weight, grad_output), _, unbatched, compute_dtype, out_dtype = batched_operands(
        x, {"depthwise_weight": depthwise_weight, "pointwise_weight": pointwise_weight, "grad_output": grad_output},
        None)
    depthwise, pointwise = make_separable_specs(x.shape, depthwise_weight.shape, pointwise_weight.shape, stride=stride,
                                                padding=padding, dilation=dilation, padding_mode=padding_mode)
    expected = pointwise.out_shape[1:] if unbatched else pointwise.out_shape
    if grad_output.shape != expected:
        raise ValueError(f"depthwise_separable_conv2d_backward: grad_output has shape {grad_output.shape}, but the "
                         f"forward call's output has shape {expected}")
    cast = {"dtype": compute_dtype}
    g = np.asarray(grad_output[None] if unbatched else grad_output, **cast)
    x, depthwise_weight = np.asarray(x, **cast), np.asarray(depthwise_weight, **cast)
    pointwise_weight = np.asarray(pointwise_weight, **cast)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=depthwise.groups,
                    padding_mode=padding_mode)
    grad_input = grad_depthwise = grad_pointwise = grad_bias = None
    if needs[2]:
        hidden = conv2d(x, depthwise_weight, backend=pass_backend(backend, "input"), **geometry)
        _, grad_pointwise, _ = conv2d_backward(hidden, pointwise_weight, g, needs=(False, True, False),
                                               backend=backend)
    if needs[3]:
        grad_bias = g.sum(axis=(0, 2, 3))
    if needs[0] or needs[1]:
        grad_hidden = conv2d_input(depthwise.out_shape, pointwise_weight, g, backend=pass_backend(backend, "input"))
        grad_input, grad_depthwise, _ = conv2d_backward(x, depthwise_weight, grad_hidden, needs=(needs[0], needs[1], False),
                                                        backend=backend, **geometry)
    results = [grad_input, grad_depthwise, grad_pointwise, grad_bias]
    results = [None if value is None else value.astype(out_dtype, copy=False) for value in results]
    if unbatched and results[0] is not None:
        results[0] = results[0][0]
    return tuple(results)
