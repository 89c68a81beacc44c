"""``conv_transpose2d``: transposed convolution (the adjoint of conv2d), with torch's semantics.

Where conv2d *gathers* a window of input pixels into each output pixel, the transposed
convolution *scatters*: input pixel (i, j) adds ``x[n, c, i, j] * weight[c, k, u, v]`` to output
pixel ``(i * stride - padding + u * dilation, j * stride - padding + v * dilation)``. It is what
conv2d's gradient with respect to its input computes, and the upsampling layer of decoders and
GAN generators. Two algorithms, chosen with ``backend=``:

``naive`` (:mod:`fastconv.backends.naive`)
    The definition read backwards, as a gather: plain loops, every dtype; the reference.
``col2im`` (:mod:`fastconv.backends.col2im`, what ``"auto"`` picks)
    One matrix product computes every scattered contribution at once, then a numba kernel adds
    each column into its output pixel (the inverse of im2col).

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 1, 2, 2)); w = np.ones((1, 1, 2, 2))
>>> fastconv.conv_transpose2d(x, w, stride=2)[0, 0]
array([[1., 1., 1., 1.],
       [1., 1., 1., 1.],
       [1., 1., 1., 1.],
       [1., 1., 1., 1.]])
"""

from __future__ import annotations

import numpy as np

from fastconv import backends
from fastconv.geometry import backend_input, backend_spec, make_transpose_spec
from fastconv.ops.conv2d import conv2d, preferred_backend
from fastconv.ops.grad import check_needs, pass_backend, pass_routes, run_weight_pass
from fastconv.ops.operands import batched_operands, check_bias
from fastconv.thread_pools import run_noting_pool

__all__ = ["conv_transpose2d", "conv_transpose2d_backward"]


def _pick_backend(backend) -> str:
    if backend == "auto":
        # a use_backend() block's preference when it has a transposed convolution, else the first
        # available backend that is not the reference loops
        names = backends.backend_names("conv_transpose2d")
        preferred = preferred_backend()
        if preferred in names:
            return preferred
        fallback = None
        for name in names:
            if backends.unavailable_reason(name) is None:
                if not getattr(backends.get(name), "reference", False):
                    return name
                fallback = fallback or name
        if fallback is None:
            raise ValueError("no backend can run conv_transpose2d here")
        return fallback
    return backends.check_name(backend, "conv_transpose2d")


def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     backend="auto"):
    """Transposed 2-D convolution ("deconvolution"), as torch's ``conv_transpose2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input. An unbatched input gives an unbatched result.
    weight : array_like, shape (C, K // groups, kh, kw)
        Filters, in torch's layout for transposed convolution (input channels first).
    bias : array_like, shape (K,), optional
        Added to every output value of channel k.
    stride, dilation : int or (int, int)
        Spacing of the scattered kernels, and of the taps inside each. Positive.
    padding : int or (int, int)
        Rows/columns removed from both sides of each axis of the full result, as in torch
        (``dilation * (k - 1) - padding`` of zero padding on the equivalent convolution).
    output_padding : int or (int, int)
        Extra rows/columns added at the bottom/right, to pick one of the output sizes that a
        strided convolution maps to the same input size. Smaller than ``max(stride, dilation)``.
    groups : int
        Divides C and K: ``groups`` independent transposed convolutions.
    backend : {"auto", "col2im", "naive"}
        The algorithm (see the module docstring); ``"auto"`` runs ``"col2im"``.

    Returns
    -------
    numpy.ndarray, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        ``H_out = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1``.
        Dtype rules as :func:`fastconv.conv2d`.

    Examples
    --------
    Upsample a 4×4 map to 8×8, DCGAN style:

    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 8, 4, 4), dtype=np.float32); w = np.ones((8, 3, 4, 4), dtype=np.float32)
    >>> fastconv.conv_transpose2d(x, w, stride=2, padding=1).shape
    (1, 3, 8, 8)
    """
    x, (weight,), bias, unbatched, compute_dtype, out_dtype = batched_operands(x, {"weight": weight}, bias)
    if weight.ndim != 4:
        raise ValueError(f"weight must have shape (C, K // groups, kh, kw), got {weight.ndim} dimensions: "
                         f"shape {weight.shape}")
    spec = make_transpose_spec(x.shape, weight.shape, stride=stride, padding=padding, output_padding=output_padding,
                               dilation=dilation, groups=groups, dtype=compute_dtype, out_dtype=out_dtype)
    check_bias(bias, spec.out_channels, f"weight {weight.shape} and groups={spec.groups}")
    module = backends.get(_pick_backend(backend))
    x = np.ascontiguousarray(x, dtype=compute_dtype)
    weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=compute_dtype)
    out = run_noting_pool(module, "run_transpose", x, weight, bias, spec).astype(out_dtype, copy=False)
    return out[0] if unbatched else out


def conv_transpose2d_backward(x, weight, grad_output, *, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, needs=(True, True, True), backend="auto"):
    """The gradients of :func:`conv_transpose2d` with respect to its input, weight and bias.

    A transposed convolution is the adjoint of a convolution, so its input gradient *is* that
    convolution (:func:`fastconv.conv2d` of the output gradient with the same weight, stride,
    padding and dilation), and its weight gradient is that convolution's weight pass with the
    roles of input and output exchanged (see :func:`fastconv.conv2d_weight`).

    Parameters
    ----------
    x, weight : array_like
        The forward call's operands: (N, C, H, W) or (C, H, W), and (C, K // groups, kh, kw).
    grad_output : array_like, shape of ``conv_transpose2d``'s result
        The gradient of the loss with respect to the transposed convolution's output.
    stride, padding, output_padding, groups, dilation
        Those of the forward call.
    needs : (bool, bool, bool)
        Which of (input, weight, bias) gradients to compute; the others are returned as None.
    backend : str or (str, str)
        ``"auto"``, a conv2d backend for both gradients, or a pair (input gradient, weight
        gradient): the input gradient is a conv2d, the weight gradient a conv2d weight pass.

    Returns
    -------
    (grad_input, grad_weight, grad_bias)
        Shaped as ``x``, ``weight`` and (K,); None where ``needs`` says so. Dtype rules as
        :func:`fastconv.conv2d`; for complex dtypes, the gradients torch's autograd returns.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 2, 3, 3)); w = np.ones((2, 1, 2, 2)); g = np.ones((1, 1, 6, 6))
    >>> dx, dw, db = fastconv.conv_transpose2d_backward(x, w, g, stride=2)
    >>> dx[0, 0], dw[0, 0], db
    (array([[4., 4., 4.],
           [4., 4., 4.],
           [4., 4., 4.]]), array([[9., 9.],
           [9., 9.]]), array([36.]))
    """
    needs = check_needs(needs, 3)
    x, (weight, grad_output), _, unbatched, compute_dtype, out_dtype = batched_operands(
        x, {"weight": weight, "grad_output": grad_output}, None)
    if weight.ndim != 4:
        raise ValueError(f"weight must have shape (C, K // groups, kh, kw), got {weight.ndim} dimensions: "
                         f"shape {weight.shape}")
    spec = make_transpose_spec(x.shape, weight.shape, stride=stride, padding=padding, output_padding=output_padding,
                               dilation=dilation, groups=groups, dtype=compute_dtype, out_dtype=out_dtype)
    expected = spec.out_shape[1:] if unbatched else spec.out_shape
    if grad_output.shape != expected:
        raise ValueError(f"conv_transpose2d_backward: grad_output has shape {grad_output.shape}, but the transposed "
                         f"convolution of an input of shape {x.shape[1:] if unbatched else x.shape} with a weight of "
                         f"shape {weight.shape} has output shape {expected}")
    forward = spec.forward  # the convolution this is the adjoint of: grad_output's shape -> x's shape (or more)
    routes = pass_routes(backend_spec(forward), backend, ("weight",)) if needs[1] else {}
    cast = {"dtype": compute_dtype}
    g = np.ascontiguousarray(grad_output[None] if unbatched else grad_output, **cast)
    w = np.ascontiguousarray(weight, **cast)
    conjugate = compute_dtype.kind == "c"  # gradients of a real loss: the adjoint (torch's convention)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        full = conv2d(g, w.conj() if conjugate else w, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                      groups=spec.groups, backend=pass_backend(backend, "input"))
        grad_input = np.ascontiguousarray(full[:, :, :spec.in_height, :spec.in_width]).astype(out_dtype, copy=False)
        grad_input = grad_input[0] if unbatched else grad_input
    if needs[1]:
        # the forward convolution's outputs beyond x's rows (output_padding >= stride) had no input
        images = np.zeros(forward.out_shape, **cast)
        images[:, :, :spec.in_height, :spec.in_width] = x.conj() if conjugate else x
        g_read = backend_input(g, forward)[0]
        grad_weight = run_weight_pass(routes["weight"], backend_spec(forward), g_read, images)
        grad_weight = grad_weight.astype(out_dtype, copy=False)
    if needs[2]:
        grad_bias = g.sum(axis=(0, 2, 3)).astype(out_dtype, copy=False)
    return grad_input, grad_weight, grad_bias
