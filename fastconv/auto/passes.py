"""How ``backend="auto"`` runs conv2d's backward passes: routes, their estimated cost, the choice.

A backward pass (see :mod:`fastconv.geometry.grad`) reaches a backend along a *route*: the problem
rewritten into an operation the backend implements.

================  ===============================================  ====================================
pass              route                                            backends
================  ===============================================  ====================================
input             the transposed convolution of the output         those of ``conv_transpose2d``
                  gradient (``"transpose"``)                       (``col2im``, ``naive``)
input             conv2d of the output gradient (zero-stuffed      every other conv2d backend
                  when strided) with the flipped weight
                  (``"conv"``)
weight            the backend's own weight gradient                those with ``run_weight_grad``
                  (``"native"``)                                   (``im2col``, ``numba_cpu``)
weight            conv2d with batch and channel axes swapped,      every other conv2d backend
                  the output gradient as the kernel (``"conv"``)
================  ===============================================  ====================================

Each route is estimated as its backend's own cost model says for the problem it receives (the
backend's ``cost_terms``, ``weight_grad_cost_terms`` for a native weight gradient, or
``transpose_cost_terms`` for a transposed convolution, times its
constants) plus the bytes the rewrite copies (:data:`COPY_SECONDS_PER_BYTE`); ``auto`` takes the
cheapest route a backend accepts. Backends whose fitness depends on the kernel's values
(``supports_weight``: ``separable``) and backends of GPU arrays are left to explicit requests:
the weight pass's kernel is the output gradient, new every call, and gradients are computed on
host arrays. Choices are remembered per problem.

Examples
--------
>>> from fastconv.geometry import make_spec
>>> spec = make_spec((1, 16, 32, 32), (16, 16, 3, 3), padding=1, dtype="float32")
>>> choose("weight", spec).backend in pass_backends("weight")
True
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from fastconv import backends, config
from fastconv.auto import cost
from fastconv.auto.constants import constants_for, constants_source, constants_threads
from fastconv.backends.work import is_double
from fastconv.geometry import (ConvSpec, TransposeSpec, input_pass_as_conv, input_pass_as_transpose,
                               weight_pass_as_conv)
from fastconv.thread_pools import reinitialise_after_fork

__all__ = ["COPY_SECONDS_PER_BYTE", "PASS_NAMES", "Route", "choose", "clear_cache", "decline_reason", "estimate",
           "pass_backends", "route"]

#: The backward passes, by the name of the function that runs each.
PASS_NAMES = {"input": "conv2d_input", "weight": "conv2d_weight"}

#: Seconds per byte a rewrite copies (zero-stuffing, swapping axes, cropping): numpy's strided
#: copies ran at 5-10 GB/s on the machines the shipped constants come from; 2e-10 charges each
#: byte as read once and written once at about 10 GB/s.
COPY_SECONDS_PER_BYTE = 2e-10


@dataclass(frozen=True)
class Route:
    """One way to run a pass: ``backend`` running ``spec`` (a ConvSpec for ``form == "conv"``, a
    TransposeSpec for ``"transpose"``); ``crop`` trims a transposed result to the input;
    ``copied_bytes`` is what the rewrite copies around the backend's call."""

    pass_: str
    backend: str
    form: str
    spec: ConvSpec | TransposeSpec
    crop: tuple = ((0, 0), (0, 0))
    copied_bytes: float = 0.0

    def describe(self) -> str:
        """How the route runs the pass, in a few words (for :func:`fastconv.explain`)."""
        if self.form == "native":
            hook = getattr(backends.get(self.backend), f"run_{self.pass_}_grad")
            return "its own " + (hook.__doc__ or "kernels").strip().split("\n")[0].rstrip(".")
        if self.form == "transpose":
            return "transposed convolution of the output gradient"
        if self.pass_ == "weight":
            return (f"conv2d with batch and channels swapped: the output gradient as a {self.spec.kernel_height}x"
                    f"{self.spec.kernel_width} kernel, stride {self.spec.stride}, dilation {self.spec.dilation}")
        return "conv2d of the output gradient with the flipped weight" + (
            "" if self.copied_bytes == 0 else ", zero-stuffed to stride 1")


def _check_pass(pass_: str) -> None:
    if pass_ not in PASS_NAMES:
        raise ValueError(f"pass must be one of {tuple(PASS_NAMES)}, got {pass_!r}")


def pass_backends(pass_: str) -> tuple[str, ...]:
    """The backends that can run pass ``"input"`` or ``"weight"``, in registration order (the
    transposed convolution's first for the input pass).

    >>> pass_backends("input")[:2]
    ('naive', 'col2im')
    """
    _check_pass(pass_)
    names = backends.backend_names("conv_transpose2d") if pass_ == "input" else ()
    return tuple(dict.fromkeys((*names, *backends.backend_names("conv2d"))))


def route(pass_: str, name: str, spec: ConvSpec) -> Route:
    """The route of backend ``name`` for pass ``pass_`` of ``spec`` (a spec as the backends see it:
    :func:`~fastconv.geometry.backend_spec`). Unknown names raise ValueError listing the valid ones."""
    _check_pass(pass_)
    if name not in pass_backends(pass_):
        raise ValueError(f"Unknown backend {name!r} for the {pass_} pass ({PASS_NAMES[pass_]}); valid backends are "
                         f"{', '.join(pass_backends(pass_))} and 'auto'")
    size = spec.dtype.itemsize
    module = backends.get(name) if backends.unavailable_reason(name) is None else None
    if hasattr(module, f"run_{pass_}_grad"):  # the backend runs the pass itself
        return Route(pass_, name, "native", spec)
    if pass_ == "weight":
        swapped = weight_pass_as_conv(spec)
        copied = size * (2 * swapped.batch * swapped.in_channels * swapped.in_height * swapped.in_width
                         + 2 * spec.batch * spec.out_channels * spec.out_height * spec.out_width)
        return Route(pass_, name, "conv", swapped, copied_bytes=float(copied))
    if name in backends.backend_names("conv_transpose2d"):
        transpose, crop = input_pass_as_transpose(spec)
        copied = 0 if crop == ((0, 0), (0, 0)) else 2 * size * spec.batch * spec.in_channels * spec.in_height \
            * spec.in_width
        return Route(pass_, name, "transpose", transpose, crop, float(copied))
    conv = input_pass_as_conv(spec)
    stuffed = conv.padding == ((0, 0), (0, 0)) and (conv.in_height, conv.in_width) != (spec.out_height, spec.out_width)
    copied = size * conv.batch * conv.in_channels * conv.in_height * conv.in_width if stuffed else 0
    return Route(pass_, name, "conv", conv, copied_bytes=float(copied))


def decline_reason(route_: Route, *, auto: bool = False) -> str | None:
    """Why ``route_``'s backend cannot run it here (unavailable, declines its problem), or None.

    With ``auto``, also the reasons ``backend="auto"`` leaves a backend out of a pass.
    """
    name = route_.backend
    reason = backends.unavailable_reason(name)
    if reason is not None:
        return reason
    module = backends.get(name)
    if getattr(module, "placement", "host") == "device":
        return "gradients are computed on host arrays"
    if auto and hasattr(module, "supports_weight"):
        return ("its fitness depends on the kernel's values, which auto does not examine for gradients "
                "(the weight pass's kernel is the output gradient); ask for it by name")
    if route_.form == "transpose":
        return None  # transposed convolution backends run every geometry and dtype
    return module.supports(route_.spec)


def _speedup() -> float:
    # as fastconv.auto.cost.estimate_seconds: more threads speed up the work terms
    return max(min(config.threads, os.cpu_count() or 1), 1) / constants_threads()


def estimate(route_: Route) -> float:
    """Estimated seconds of ``route_``: its backend's estimate of the problem it runs, plus the copies."""
    name = route_.backend
    module = backends.get(name)
    if route_.form == "native":
        table = constants_for(name, module) or cost.GENERIC_CONSTANTS
        terms = getattr(module, f"{route_.pass_}_grad_cost_terms")(route_.spec, None)
        return cost.predict(table, terms, is_double(route_.spec.dtype), _speedup())
    if route_.form == "transpose":
        hook = getattr(module, "transpose_cost_terms", None)
        spec = route_.spec
        if hook is None:  # charged as the direct work of the forward convolution, at the generic rate
            seconds = cost.predict(cost.GENERIC_CONSTANTS, {"call": 1.0, "mac": float(spec.flops // 2)},
                                   is_double(spec.dtype), _speedup())
        else:
            table = constants_for(name, module) or cost.GENERIC_CONSTANTS
            seconds = cost.predict(table, hook(spec), is_double(spec.dtype), _speedup())
    else:
        seconds = cost.estimate_seconds(name, route_.spec, module=module)
    return seconds + COPY_SECONDS_PER_BYTE * route_.copied_bytes


_lock = reinitialise_after_fork(threading.Lock())
_choices: dict = {}


def ranked(pass_: str, spec: ConvSpec) -> list[tuple[float, Route]]:
    """(estimated seconds, route) of every route ``auto`` may take for the pass, cheapest first."""
    order = pass_backends(pass_)
    candidates = []
    for name in order:
        if backends.unavailable_reason(name) is not None:
            continue
        candidate = route(pass_, name, spec)
        if decline_reason(candidate, auto=True) is None:
            reference = backends.is_reference(name)
            candidates.append((reference, estimate(candidate), order.index(name), candidate))
    # the reference loops only where nothing else runs, as for conv2d
    return [(seconds, candidate) for _, seconds, _, candidate in sorted(candidates, key=lambda item: item[:3])]


def choose(pass_: str, spec: ConvSpec, preferred: str | None = None) -> Route:
    """The route ``backend="auto"`` takes for pass ``pass_`` of ``spec`` (a backend spec).

    ``preferred`` (a :func:`fastconv.use_backend` preference) wins when that backend can run the pass.
    """
    _check_pass(pass_)
    if preferred is not None and preferred in pass_backends(pass_):
        candidate = route(pass_, preferred, spec)
        if decline_reason(candidate) is None:
            return candidate
    key = (pass_, spec, config.threads, constants_source())
    chosen = _choices.get(key)
    if chosen is None:
        ranking = ranked(pass_, spec)
        if not ranking:
            raise ValueError(f"no backend can run the {pass_} pass of this convolution: {spec}")
        chosen = ranking[0][1]
        with _lock:
            if len(_choices) > 1024:
                _choices.clear()
            _choices[key] = chosen
    return chosen


def clear_cache() -> None:
    """Forget the remembered choices."""
    with _lock:
        _choices.clear()
