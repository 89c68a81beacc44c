"""The public ``conv2d`` entry point and backend selection.

``conv2d`` does the same few steps for every backend: check the arguments and build a
:class:`~fastconv.geometry.ConvSpec`, pick the backend, hand it contiguous arrays of the compute
dtype (already padded when the padding mode is not zeros), and cast the result back.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from fastconv import auto, backends, config
from fastconv.auto.choice import choose_for_call, remember_call, remembered_call, weight_decline_reason
from fastconv.auto.constants import constants_token
from fastconv.geometry import ConvSpec, backend_input, make_spec, resolve_dtypes
from fastconv.geometry import backend_spec as backend_spec_of
from fastconv.ops.operands import as_numeric_array, check_bias, in_gpu_memory, memory_layout
from fastconv.thread_pools import last_pool, note_pool

__all__ = ["conv2d", "use_backend", "choose_backend", "preferred_backend"]

# The backend that ``backend="auto"`` prefers inside ``use_backend`` blocks (None: no preference).
_preferred_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastconv_preferred_backend", default=None
)


def preferred_backend() -> str | None:
    """The backend a :func:`use_backend` block around this call prefers, or None."""
    return _preferred_backend.get()


def choose_backend(spec: ConvSpec, weight: np.ndarray | None = None) -> str:
    """The name of the backend ``backend="auto"`` runs for ``spec`` (honours :func:`use_backend`).

    ``spec`` is the spec a backend sees: build it with :func:`fastconv.geometry.make_spec` and
    pass it through :func:`fastconv.geometry.backend_spec`. ``weight`` lets the choice see the
    kernels' rank. The rules live in :mod:`fastconv.auto`.
    """
    return auto.choose(spec, weight, preferred=_preferred_backend.get())


@contextlib.contextmanager
def use_backend(name: str):
    """Make ``backend="auto"`` prefer backend ``name`` inside a ``with`` block.

    Calls that the preferred backend cannot run (it declines the dtype, say) still fall back to
    the usual automatic choice. The setting lives in a :mod:`contextvars` variable, so it is
    local to the current thread and asyncio task. Explicit ``backend=`` arguments win.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> with fastconv.use_backend("naive"):
    ...     y = fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))
    >>> y.shape
    (1, 1, 2, 2)
    """
    if name != "auto":
        backends.get(backends.check_name(name))  # unknown or unavailable: ValueError now
    token = _preferred_backend.set(None if name == "auto" else name)
    try:
        yield
    finally:
        _preferred_backend.reset(token)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros", backend="auto", tune=None):
    """2-D cross-correlation over a batch of multi-channel images, as torch's ``conv2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (C, H, W)
        Input images. An unbatched (C, H, W) input gives an unbatched result.
    weight : array_like, shape (K, C // groups, kh, kw)
        Filters. Not flipped: this is cross-correlation, as in every deep-learning library.
    bias : array_like, shape (K,), optional
        Added to every output value of channel k.
    stride : int or (int, int)
        Step between output samples, per axis. Positive.
    padding : int, (int, int), ((int, int), (int, int)) or {"valid", "same", "full"}
        Zero (or ``padding_mode``) border: the same on all sides, per axis, or
        ((top, bottom), (left, right)). ``"same"`` gives ``ceil(in / stride)`` outputs with the odd
        unit of padding at the bottom/right (TensorFlow's rule; any stride is allowed);
        ``"full"`` pads ``dilation * (k - 1)`` on every side.
    dilation : int or (int, int)
        Spacing between kernel taps. Positive.
    groups : int
        Split channels into ``groups`` independent convolutions; ``groups == C`` is depthwise.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        What the border holds, with torch's meanings. ``"reflect"`` needs padding < input size.
    backend : str
        A name from :func:`fastconv.list_backends` or ``"auto"`` (see :mod:`fastconv.auto` and
        :func:`fastconv.explain` for how auto chooses).
    tune : bool, optional
        With ``backend="auto"``: time the eligible backends on the first call of this problem
        signature and run the fastest (remembered across processes). Default
        :data:`fastconv.config.autotune` (``FASTCONV_AUTOTUNE``).

    Returns
    -------
    numpy.ndarray, shape (N, K, H_out, W_out) or (K, H_out, W_out)
        Float32 for float32 inputs, float64 for float64 (and for ints and bools), numpy's
        ``result_type`` for mixed inputs; float16 inputs are computed in float32 and returned as
        float16. Inputs are never modified.

    Raises
    ------
    TypeError
        For a non-numeric input or an unsupported dtype.
    ValueError
        For inconsistent shapes or geometry, an unknown backend, or a backend that declines.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 3, 3))
    >>> fastconv.conv2d(x, w, padding="valid")
    array([[[[45., 54.],
             [81., 90.]]]])
    >>> fastconv.conv2d(x, w, padding="same").shape
    (1, 1, 4, 4)
    """
    key = _call_signature(x, weight, bias, stride, padding, dilation, groups, padding_mode, backend, tune)
    plan = remembered_call(key) if key is not None else None
    if plan is not None:
        return plan.run(x, weight, bias)
    x = as_numeric_array("x", x)
    layout = memory_layout(x)
    weight = as_numeric_array("weight", weight)
    if x.ndim not in (3, 4):
        raise ValueError(f"x must have shape (N, C, H, W) or (C, H, W), got {x.ndim} dimensions: shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(
            f"weight must have shape (K, C // groups, kh, kw), got {weight.ndim} dimensions: shape {weight.shape}"
        )
    operand_dtypes = [x.dtype, weight.dtype]
    if bias is not None:
        bias = as_numeric_array("bias", bias)
        check_bias(bias, weight.shape[0], f"weight {weight.shape}")
        operand_dtypes.append(bias.dtype)
    unbatched = x.ndim == 3
    compute_dtype, out_dtype = resolve_dtypes(*operand_dtypes)
    spec = make_spec((1, *x.shape) if unbatched else x.shape, weight.shape, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, padding_mode=padding_mode, dtype=compute_dtype,
                     out_dtype=out_dtype)
    if any(in_gpu_memory(operand) for operand in (x, weight, bias)):
        # GPU operands stay on the GPU: only a GPU backend reads them, and it returns a device array.
        device = backends.device_backend()
        if backend not in ("auto", device.name):
            raise ValueError(f"backend {backend!r} cannot read arrays in GPU memory; use backend={device.name!r} "
                             f"or 'auto', or copy the arrays to the host first")
        out = device.run_on_device(x, weight, bias, spec)
        return out[0] if unbatched else out
    if tune is not None and (not isinstance(tune, (bool, np.bool_)) or (tune and backend != "auto")):
        raise ValueError(f"tune must be None, True or False, and True only with backend='auto'; "
                         f"got tune={tune!r} with backend={backend!r}")
    if backend != "auto":
        backends.get(backends.check_name(backend))  # unknown or unavailable: ValueError
    plan = _Plan(spec, backend, tune, layout, unbatched)
    out = plan.run(x, weight, bias)
    if key is not None:
        remember_call(key, plan)
    return out


class _Plan:
    """What conv2d validated and chose for one call signature, to run it again without re-checking."""

    __slots__ = ("called_spec", "spec", "backend", "tune", "layout", "unbatched", "gathers", "chosen",
                 "weight_dependent")

    def __init__(self, called_spec: ConvSpec, backend: str, tune, layout: str, unbatched: bool):
        self.called_spec, self.backend, self.tune, self.layout, self.unbatched = (called_spec, backend, tune, layout,
                                                                                  unbatched)
        # the input as the backends read it: padding other than zeros applied, and axes whose
        # padding dwarfs what the outputs read gathered (see fastconv.geometry.backend_input)
        self.spec = spec = backend_spec_of(called_spec)
        self.gathers = spec is not called_spec
        # (the backend's run, its thread pool) by the pool the previous call ran on: auto charges a
        # switch of pools, so its pick may differ after a call on another pool
        self.chosen, self.weight_dependent = {}, False

    def _operands(self, x, weight, bias):
        spec = self.called_spec
        if self.unbatched:
            x = x[None]
        x = np.ascontiguousarray(x, dtype=spec.dtype)
        if self.gathers:
            x = backend_input(x, spec)[0]
        weight = np.ascontiguousarray(weight, dtype=spec.dtype)
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=spec.dtype)
        return x, weight, bias

    def _choose(self, x, weight, bias, previous_pool) -> str:
        spec = self.spec
        if self.backend == "auto":
            name, weight_dependent = choose_for_call(spec, weight, preferred=_preferred_backend.get(),
                                                     tune=self.tune, operands=(x, weight, bias), layout=self.layout,
                                                     previous_pool=previous_pool)
            self.weight_dependent = self.weight_dependent or weight_dependent  # once it depended, always ask
            return name
        name = self.backend
        module = backends.get(name)
        self.weight_dependent = hasattr(module, "supports_weight")
        reason = module.supports(spec) or weight_decline_reason(name, weight, spec)
        if reason is not None:
            called = self.called_spec
            if (spec.stride, spec.dilation) != (called.stride, called.dilation):
                reason += (f" (the outputs read only {spec.in_height}x{spec.in_width} pixels of the input padded to "
                           f"{called.padded_height}x{called.padded_width}, which are gathered first and "
                           f"read with stride {spec.stride}, dilation {spec.dilation})")
            raise ValueError(f"backend {name!r} cannot run this convolution: {reason}")
        return name

    def _finish(self, out):
        if out.dtype != self.called_spec.out_dtype:
            out = out.astype(self.called_spec.out_dtype)
        return out[0] if self.unbatched else out

    def run(self, x, weight, bias):
        """Run the call; the backend is chosen on the first call after a call on each thread pool,
        and again only when the choice depends on the weight's values (those verdicts are
        remembered per weight content)."""
        x, weight, bias = self._operands(x, weight, bias)
        previous_pool = last_pool() if self.backend == "auto" else None
        chosen = self.chosen.get(previous_pool)
        if chosen is None or self.weight_dependent:
            # (a local: another thread's weight may choose differently for the plan meanwhile)
            module = backends.get(self._choose(x, weight, bias, previous_pool))
            chosen = self.chosen[previous_pool] = (module.run, getattr(module, "thread_pool", None))
        run_backend, pool = chosen
        out = run_backend(x, weight, bias, self.spec)
        note_pool(pool)
        return self._finish(out)


def _plain(value) -> bool:
    """An argument a call signature can hold: ints, strings and tuples of them, not bools or lists."""
    kind = type(value)
    return kind is int or kind is str or (kind is tuple and all(_plain(item) for item in value))


def _call_signature(x, weight, bias, stride, padding, dilation, groups, padding_mode, backend, tune):
    """The key under which a call's validation and backend choice are remembered, or None (not kept).

    Everything that changes what conv2d checks or picks is in it: the operands' shapes, dtypes and
    layout, every argument, the thread count, the use_backend preference, autotuning and, for
    ``backend="auto"``, the cost constants in use. Only plain numpy arrays and plain int/str/tuple
    arguments are kept (a bool where an int belongs must still be refused).
    """
    if type(x) is not np.ndarray or type(weight) is not np.ndarray or (bias is not None and type(bias) is not np.ndarray):
        return None
    if not (_plain(stride) and _plain(padding) and _plain(dilation) and _plain(groups) and _plain(padding_mode)
            and type(backend) is str and (tune is None or type(tune) is bool)):
        return None
    flags = x.flags
    return (x.shape, x.dtype, flags.c_contiguous, flags.f_contiguous, weight.shape, weight.dtype,
            None if bias is None else (bias.shape, bias.dtype), stride, padding, dilation, groups, padding_mode,
            backend, tune, config.threads, config.autotune, _preferred_backend.get(),
            # (only auto reads the constants: an explicit backend must not start the cost probe)
            constants_token() if backend == "auto" else None)
