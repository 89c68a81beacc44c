"""conv2d's gradients: ``conv2d_input`` and ``conv2d_weight`` (torch.nn.grad's), and ``conv2d_backward``.

Training a convolution layer takes three convolutions per step: the forward pass, the gradient
with respect to the input (backward-data) and the gradient with respect to the weight
(backward-filter). The two backward passes are rewritten into problems the backends already
solve (:mod:`fastconv.geometry.grad`) and ``backend="auto"`` picks, per pass, the backend whose
route is estimated cheapest (:mod:`fastconv.auto.passes`; ``fastconv.explain(...,
op="conv2d_input")`` shows the choice):

- backward-data: the transposed convolution of the output gradient (``col2im``: one GEMM and a
  scatter-add), or a stride-1 conv2d of the output gradient with the flipped weight on any conv2d
  backend (Winograd for 3×3 layers, ``numba_cpu`` for depthwise ones, FFT for large kernels);
- backward-filter: a conv2d with batch and channel axes swapped, whose kernel is the output
  gradient (``im2col``: unfold and GEMM; ``fft`` for large outputs...).

Padding modes other than zeros are applied to the input before the passes, as in the forward
call, and the input gradient of the padded border is folded back onto the pixels it copied.

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 2, 2)); g = np.ones((1, 1, 2, 2))
>>> fastconv.conv2d_input(x.shape, w, g)[0, 0]
array([[1., 2., 1.],
       [2., 4., 2.],
       [1., 2., 1.]])
>>> fastconv.conv2d_weight(x, w.shape, g)[0, 0]
array([[4., 4.],
       [4., 4.]])
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from fastconv import backends, config
from fastconv.auto import passes
from fastconv.auto.choice import remember_call, remembered_call, weight_decline_reason
from fastconv.auto.constants import constants_source
from fastconv.geometry import (ConvSpec, backend_input, backend_spec, cropped_rows, flipped_weight,
                               fold_input_gradient, make_grad_spec, resolve_dtypes, stuffed_grad_output,
                               swapped_grad_output, swapped_input)
from fastconv.ops.conv2d import preferred_backend
from fastconv.ops.operands import as_numeric_array, in_gpu_memory
from fastconv.thread_pools import reinitialise_after_fork, run_noting_pool

__all__ = ["conv2d_input", "conv2d_weight", "conv2d_backward", "check_needs", "host_array", "pass_backend", "pass_routes",
           "run_input_pass", "run_weight_pass"]


def host_array(name: str, value) -> np.ndarray:
    """``value`` as a numeric numpy array; gradients are computed on host arrays only."""
    if in_gpu_memory(value):
        raise ValueError(f"{name} is in GPU memory; gradients are computed on host arrays: copy it to the host first")
    return as_numeric_array(name, value)


def _check_ndim(name: str, array: np.ndarray, ndims, layout: str) -> None:
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have shape {layout}, got {array.ndim} dimensions: shape {array.shape}")


def check_needs(needs, count: int) -> tuple[bool, ...]:
    if (not isinstance(needs, (tuple, list)) or len(needs) != count
            or not all(isinstance(flag, (bool, np.bool_)) for flag in needs)):
        raise ValueError(f"needs must be a tuple of {count} bools (which gradients to compute), got {needs!r}")
    return tuple(bool(flag) for flag in needs)


def pass_backend(backend, pass_: str) -> str:
    """The backend asked for ``pass_``: ``backend`` itself, or its entry for the pass when a pair."""
    if isinstance(backend, tuple) and len(backend) == 2:
        return backend[0 if pass_ == "input" else 1]
    return backend


def pass_routes(read_spec: ConvSpec, backend, wanted) -> dict:
    """The route of each pass in ``wanted`` for ``read_spec`` (a backend spec): ``backend="auto"``'s
    choice, or the named backend's route (ValueError when it cannot run that pass)."""
    routes = {}
    for pass_ in wanted:
        name = pass_backend(backend, pass_)
        if not isinstance(name, str):
            raise ValueError(f"backend must be 'auto', a backend name or a pair (input pass, weight pass) of "
                             f"them, got {backend!r}")
        if name == "auto":
            routes[pass_] = passes.choose(pass_, read_spec, preferred=preferred_backend())
            continue
        route = passes.route(pass_, name, read_spec)  # unknown name: ValueError listing the valid ones
        reason = passes.decline_reason(route)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run the {pass_} pass ({passes.PASS_NAMES[pass_]}) of this "
                             f"convolution: {reason}")
        routes[pass_] = route
    return routes


_flipped_lock = reinitialise_after_fork(threading.Lock())
_flipped: OrderedDict = OrderedDict()  # (id, shape, dtype, groups) -> (copy of the weight, flipped weight)
_FLIPPED_ENTRIES, _FLIPPED_BYTES = 8, 64 << 20


def _flipped_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """:func:`flipped_weight`, the same array again while the weight's values are unchanged.

    Backends cache what they derive from a weight (Winograd's transformed filters) by the array's
    identity and check its values: handing them one flipped array per weight lets a repeated
    input pass reuse that work, as a repeated forward call does. A weight changed in place is
    flipped anew (its stored copy no longer equals it).
    """
    key = (id(weight), weight.shape, weight.dtype.str, groups)
    with _flipped_lock:
        entry = _flipped.get(key)
    if entry is not None and np.array_equal(entry[0], weight):
        return entry[1]
    flipped = flipped_weight(weight, groups)
    if 2 * weight.nbytes <= _FLIPPED_BYTES:
        with _flipped_lock:
            _flipped[key] = (weight.copy(), flipped)
            _flipped.move_to_end(key)
            while len(_flipped) > _FLIPPED_ENTRIES or sum(2 * saved.nbytes for saved, _ in _flipped.values()) \
                    > _FLIPPED_BYTES:
                _flipped.popitem(last=False)
    return flipped


def _run_conv(route, x, kernel):
    reason = weight_decline_reason(route.backend, kernel, route.spec)
    if reason is not None:
        raise ValueError(f"backend {route.backend!r} cannot run the {route.pass_} pass of this convolution: {reason}")
    return run_noting_pool(backends.get(route.backend), "run", x, kernel, None, route.spec)


def run_input_pass(route, read_spec: ConvSpec, weight: np.ndarray, grad_output: np.ndarray) -> np.ndarray:
    """The input pass along ``route``: the transpose (not conjugated) of ``read_spec``'s convolution
    applied to ``grad_output``; the gradient of the input *as the backends read it* (see
    :func:`~fastconv.geometry.fold_input_gradient`). Arrays C-contiguous, of ``read_spec.dtype``."""
    if route.form == "native":
        return run_noting_pool(backends.get(route.backend), "run_input_grad", grad_output, weight, route.spec)
    if route.form == "transpose":
        out = run_noting_pool(backends.get(route.backend), "run_transpose", grad_output, weight, None, route.spec)
        return cropped_rows(out, route.crop)
    kernel = _flipped_weight(weight, read_spec.groups)
    return _run_conv(route, stuffed_grad_output(grad_output, read_spec), kernel)


def run_weight_pass(route, read_spec: ConvSpec, x_read: np.ndarray, grad_output: np.ndarray) -> np.ndarray:
    """The weight pass along ``route``: ``sum g · x_read`` over images and outputs (not conjugated),
    of the weight's shape. ``x_read`` is the input as the backends read it (``backend_input``)."""
    if route.form == "native":
        return run_noting_pool(backends.get(route.backend), "run_weight_grad", x_read, grad_output, route.spec)
    out = _run_conv(route, swapped_input(x_read, read_spec), swapped_grad_output(grad_output))
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3))


class _Plan:
    """What one call signature validated and chose: the spec, the spec the backends read, the routes."""

    __slots__ = ("spec", "read_spec", "routes", "unbatched")

    def __init__(self, spec: ConvSpec, backend, wanted, unbatched: bool):
        self.spec, self.unbatched = spec, unbatched
        self.read_spec = backend_spec(spec)
        self.routes = pass_routes(self.read_spec, backend, wanted)

    def operand(self, array):
        return np.ascontiguousarray(array[None] if self.unbatched else array, dtype=self.spec.dtype)

    def finish(self, array):
        if array.dtype != self.spec.out_dtype:
            array = array.astype(self.spec.out_dtype)
        return array[0] if self.unbatched else array

    def input_gradient(self, weight, grad_output):
        if weight.dtype.kind == "c":  # the gradient of a real loss (torch's convention): the adjoint
            weight = weight.conj()
        dx = run_input_pass(self.routes["input"], self.read_spec, weight, grad_output)
        return self.finish(fold_input_gradient(dx, self.spec))

    def weight_gradient(self, x, grad_output):
        x_read = backend_input(x, self.spec)[0]
        if x_read.dtype.kind == "c":
            x_read = x_read.conj()
        dw = run_weight_pass(self.routes["weight"], self.read_spec, x_read, grad_output)
        if dw.dtype != self.spec.out_dtype:
            dw = dw.astype(self.spec.out_dtype)
        return dw


def _plain(value) -> bool:
    kind = type(value)
    return kind is int or kind is str or (kind is tuple and all(_plain(item) for item in value))


def _plan(op, shapes, dtypes, arguments, backend, wanted, make):
    """The remembered plan of this call signature, or a new one from ``make()`` (then remembered).

    Only signatures of plain ints, strings and tuples are remembered (a bool where an int belongs
    must still be refused by the validation).
    """
    key = None
    if _plain(shapes) and _plain(arguments) and _plain(backend):
        key = (op, shapes, dtypes, arguments, backend, wanted, config.threads, preferred_backend(),
               constants_source())
        plan = remembered_call(key)
        if plan is not None:
            return plan
    plan = make()
    if key is not None:
        remember_call(key, plan)
    return plan


def _grad_spec(op, input_shape, weight_shape, grad_output_shape, dtypes, stride, padding, dilation, groups,
               padding_mode):
    compute_dtype, out_dtype = resolve_dtypes(*dtypes)
    return make_grad_spec(input_shape, weight_shape, grad_output_shape, op=op, stride=stride, padding=padding,
                          dilation=dilation, groups=groups, padding_mode=padding_mode, dtype=compute_dtype,
                          out_dtype=out_dtype)


def conv2d_input(input_shape, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                 padding_mode="zeros", backend="auto"):
    """The gradient of conv2d with respect to its input, as ``torch.nn.grad.conv2d_input``.

    Parameters
    ----------
    input_shape : tuple of int
        The input's shape, (N, C, H, W) or (C, H, W) (with a strided convolution several input
        sizes give one output size: this one decides).
    weight : array_like, shape (K, C // groups, kh, kw)
        The forward call's weight.
    grad_output : array_like, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        The gradient of the loss with respect to conv2d's output.
    stride, padding, dilation, groups, padding_mode
        Those of the forward :func:`fastconv.conv2d` call (every padding form and mode; string
        paddings are resolved as the forward call resolves them).
    backend : str
        ``"auto"``, a ``conv_transpose2d`` backend (the transposed convolution) or a ``conv2d``
        backend (run on the flipped weight); see :func:`fastconv.explain` with
        ``op="conv2d_input"``.

    Returns
    -------
    numpy.ndarray of ``input_shape``
        Dtype as conv2d's rules give for ``weight`` and ``grad_output``. For complex dtypes, the
        gradient torch's autograd returns (the adjoint, with the conjugate weight).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> w = np.ones((1, 1, 3, 3)); g = np.ones((1, 1, 2, 2))
    >>> fastconv.conv2d_input((1, 1, 4, 4), w, g, stride=2, padding=1)[0, 0]
    array([[1., 2., 1., 1.],
           [2., 4., 2., 2.],
           [1., 2., 1., 1.],
           [1., 2., 1., 1.]])
    """
    weight = host_array("weight", weight)
    grad_output = host_array("grad_output", grad_output)
    _check_ndim("weight", weight, (4,), "(K, C // groups, kh, kw)")
    arguments = (stride, padding, dilation, groups, padding_mode)

    def make():
        spec = _grad_spec("conv2d_input", input_shape, weight.shape, grad_output.shape,
                          (weight.dtype, grad_output.dtype), *arguments)
        return _Plan(spec, backend, ("input",), len(tuple(input_shape)) == 3)

    plan = _plan("conv2d_input", (input_shape, weight.shape, grad_output.shape), (weight.dtype, grad_output.dtype),
                 arguments, backend, ("input",), make)
    return plan.input_gradient(np.ascontiguousarray(weight, plan.spec.dtype), plan.operand(grad_output))


def conv2d_weight(input, weight_shape, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                  padding_mode="zeros", backend="auto"):
    """The gradient of conv2d with respect to its weight, as ``torch.nn.grad.conv2d_weight``.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W) or (C, H, W)
        The forward call's input.
    weight_shape : tuple of int
        (K, C // groups, kh, kw).
    grad_output : array_like, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        The gradient of the loss with respect to conv2d's output.
    stride, padding, dilation, groups, padding_mode
        Those of the forward :func:`fastconv.conv2d` call.
    backend : str
        ``"auto"`` or a conv2d backend, run on the correlation of the input with the output
        gradient (see :func:`fastconv.explain` with ``op="conv2d_weight"``).

    Returns
    -------
    numpy.ndarray of ``weight_shape``
        Summed over the batch. Dtype as conv2d's rules give for ``input`` and ``grad_output``; for
        complex dtypes, the gradient torch's autograd returns (the conjugate input).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3); g = np.ones((1, 1, 2, 2))
    >>> fastconv.conv2d_weight(x, (1, 1, 2, 2), g)[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    """
    x = host_array("input", input)
    grad_output = host_array("grad_output", grad_output)
    _check_ndim("input", x, (3, 4), "(N, C, H, W) or (C, H, W)")
    arguments = (stride, padding, dilation, groups, padding_mode)

    def make():
        spec = _grad_spec("conv2d_weight", x.shape, weight_shape, grad_output.shape, (x.dtype, grad_output.dtype),
                          *arguments)
        return _Plan(spec, backend, ("weight",), x.ndim == 3)

    plan = _plan("conv2d_weight", (x.shape, weight_shape, grad_output.shape), (x.dtype, grad_output.dtype), arguments,
                 backend, ("weight",), make)
    return plan.weight_gradient(plan.operand(x), plan.operand(grad_output))


def conv2d_backward(x, weight, grad_output, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                    needs=(True, True, True), backend="auto"):
    """The gradients of conv2d with respect to its input, weight and bias, in one call.

    Validation, backend choices and the output gradient's cast are done once for all passes,
    and the result of a repeated call signature (a training loop) reuses them.

    Parameters
    ----------
    x, weight : array_like
        The forward call's operands.
    grad_output : array_like, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        The gradient of the loss with respect to conv2d's output.
    stride, padding, dilation, groups, padding_mode
        Those of the forward :func:`fastconv.conv2d` call.
    needs : (bool, bool, bool)
        Which of (input, weight, bias) gradients to compute; the others are returned as None.
    backend : str or (str, str)
        ``"auto"``, a backend for both passes, or a pair (input pass, weight pass).

    Returns
    -------
    (grad_input, grad_weight, grad_bias)
        Shaped as ``x``, ``weight`` and (K,); None where ``needs`` says so.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((2, 3, 8, 8)); w = np.ones((4, 3, 3, 3)); g = np.ones((2, 4, 8, 8))
    >>> dx, dw, db = fastconv.conv2d_backward(x, w, g, padding=1)
    >>> dx.shape, dw.shape, db
    ((2, 3, 8, 8), (4, 3, 3, 3), array([128., 128., 128., 128.]))
    """
    needs = check_needs(needs, 3)
    x = host_array("x", x)
    weight = host_array("weight", weight)
    grad_output = host_array("grad_output", grad_output)
    _check_ndim("x", x, (3, 4), "(N, C, H, W) or (C, H, W)")
    _check_ndim("weight", weight, (4,), "(K, C // groups, kh, kw)")
    wanted = tuple(pass_ for pass_, need in zip(("input", "weight"), needs) if need)
    arguments = (stride, padding, dilation, groups, padding_mode)
    dtypes = (x.dtype, weight.dtype, grad_output.dtype)

    def make():
        spec = _grad_spec("conv2d_backward", x.shape, weight.shape, grad_output.shape, dtypes, *arguments)
        return _Plan(spec, backend, wanted, x.ndim == 3)

    plan = _plan("conv2d_backward", (x.shape, weight.shape, grad_output.shape), dtypes, arguments, backend, wanted,
                 make)
    g = plan.operand(grad_output)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = plan.input_gradient(np.ascontiguousarray(weight, plan.spec.dtype), g)
    if needs[1]:
        grad_weight = plan.weight_gradient(plan.operand(x), g)
    if needs[2]:
        grad_bias = g.sum(axis=(0, 2, 3))
        if grad_bias.dtype != plan.spec.out_dtype:
            grad_bias = grad_bias.astype(plan.spec.out_dtype)
    return grad_input, grad_weight, grad_bias
