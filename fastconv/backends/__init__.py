"""The backend registry.

A backend is a module in this package that holds one algorithm whole and exposes:

``name : str``
    Its registered name.
``available() -> str | None``
    ``None`` when the backend can run on this machine, else the reason it cannot
    (e.g. ``"no CUDA GPU found"``). Called once per process; the answer is cached.
``supports(spec) -> str | None``
    ``None`` when it can run this :class:`~fastconv.geometry.ConvSpec`, else the reason it declines
    (dtype, groups, kernel size...). ``backend="auto"`` never picks a backend that declines.
``supports_weight(weight, spec) -> str | None`` (optional)
    For backends whose fitness depends on the weight *values* (``separable`` needs low-rank
    kernels): called after ``supports`` accepted, with the C-contiguous weight in ``spec.dtype``;
    a reason declines exactly as ``supports`` does (``auto`` moves on, an explicit choice raises
    ValueError). Not cached, so keep it cheap relative to ``run``.
``run(x, weight, bias, spec) -> numpy.ndarray``
    Compute the convolution. ``x`` is C-contiguous (N, C, H, W) and ``weight`` C-contiguous
    (K, C // groups, kh, kw), both of ``spec.dtype``; ``bias`` is None or (K,) of ``spec.dtype``.
    ``spec.padding_mode`` is always ``"zeros"`` here (the front end materialises the other modes)
    and ``spec.padding`` is still to be applied. Returns a new array of ``spec.out_shape`` and
    ``spec.dtype``. Inputs must not be modified.

Registering a backend is one line in ``_MODULES`` below. Modules are imported lazily, on first
use, so ``import fastconv`` stays cheap; a module that fails to import is reported unavailable
with the import error as its reason rather than breaking the package.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import NamedTuple

# registers its fork handlers now, so a child forked before any backend loads is covered too
from fastconv.backends import _thread_pools  # noqa: F401

__all__ = ["BackendStatus", "backend_names", "get", "list_backends", "unavailable_reason"]

_MODULES = {
    "naive": "fastconv.backends.naive",
    "im2col": "fastconv.backends.im2col",
    "numba_cpu": "fastconv.backends.numba_cpu",
    "cuda": "fastconv.backends.cuda",
    "fft": "fastconv.backends.fft",
    "separable": "fastconv.backends.separable",
    "winograd": "fastconv.backends.winograd",
}

_lock = _thread_pools.reinitialise_after_fork(threading.Lock())
_loaded: dict[str, ModuleType] = {}
_unavailable: dict[str, str | None] = {}


class BackendStatus(NamedTuple):
    """One row of :func:`list_backends`."""

    name: str
    available: bool
    reason: str


def backend_names() -> tuple[str, ...]:
    """Names of all registered backends, in registration order."""
    return tuple(_MODULES)


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"Unknown backend {name!r}; valid backends are {', '.join(_MODULES)} and 'auto'")
    return name


def _load(name: str) -> None:
    with _lock:
        if name in _unavailable:
            return
        try:
            module = importlib.import_module(_MODULES[name])
            reason = module.available()
        except Exception as error:  # an optional dependency missing or broken: report, don't crash
            module, reason = None, f"failed to load: {type(error).__name__}: {error}"
        if module is not None:
            _loaded[name] = module
        _unavailable[name] = reason


def unavailable_reason(name: str) -> str | None:
    """``None`` when backend ``name`` can run here, else why it cannot. Unknown names raise."""
    _check_name(name)
    _load(name)
    return _unavailable[name]


def get(name: str) -> ModuleType:
    """The module of backend ``name``; ValueError (with the reason) when it is unavailable."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise ValueError(f"backend {name!r} is not available: {reason}")
    return _loaded[name]


def list_backends() -> list[BackendStatus]:
    """One row per registered backend: name, whether it is available, and why not.

    Examples
    --------
    >>> import fastconv
    >>> [row.name for row in fastconv.list_backends()][:1]
    ['naive']
    """
    rows = []
    for name in _MODULES:
        reason = unavailable_reason(name)
        rows.append(BackendStatus(name, reason is None, reason or ""))
    return rows
