"""The backend registry, and the protocol every backend follows.

A backend is a module in this package that holds one algorithm whole. Nothing outside a backend
names it: the operations, ``auto`` and the tools learn everything they need from these hooks.

Running (a backend defines at least one of ``run`` and ``run_transpose``)

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
    ValueError). Its answer is remembered per weight content. A backend with this hook is also
    costed with the weight's numerical rank (``cost_terms``'s ``rank``).
``run(x, weight, bias, spec) -> numpy.ndarray`` (conv2d)
    Compute the convolution. ``x`` is C-contiguous (N, C, H, W) and ``weight`` C-contiguous
    (K, C // groups, kh, kw), both of ``spec.dtype``; ``bias`` is None or (K,) of ``spec.dtype``.
    ``spec.padding_mode`` is always ``"zeros"`` here (the front end materialises the other modes)
    and ``spec.padding`` is still to be applied. Returns a new array of ``spec.out_shape`` and
    ``spec.dtype``. Inputs must not be modified.
``run_transpose(x, weight, bias, spec) -> numpy.ndarray`` (conv_transpose2d)
    The same for a :class:`~fastconv.geometry.TransposeSpec`: ``weight`` is (C, K // groups, kh,
    kw), the result ``spec.out_shape``.

Choosing (what ``backend="auto"`` and :func:`fastconv.explain` read)

``cost_terms(spec, rank) -> dict[str, float]``
    The work the backend does on ``spec``, as counts of named terms (``"call"``, ``"mac"``,
    ``"byte"``, ...); ``rank`` is the kernels' numerical rank or None. The estimated time is
    ``sum(COST_CONSTANTS[term] * count)`` (see :mod:`fastconv.auto.cost`).
``COST_CONSTANTS : dict[str, float]``
    Seconds per unit of each term, as shipped: fitted on one machine, whose speeds are in
    :data:`fastconv.auto.constants.REFERENCE_MACHINE`. On another machine each constant is
    scaled by how much faster or slower that machine is at the resource its term uses, measured
    by a short probe the first time ``auto`` runs there (``fastconv tune --calibrate`` refits
    them outright). A backend without ``cost_terms`` is still ranked, by its direct-convolution
    work at a generic rate, with a warning that says so.

    The term's name says which resource it uses: ``call`` and names ending ``_call`` are per-call
    overhead (Python calling compiled code), names ending ``byte`` are memory traffic, names
    containing ``gemm`` are BLAS matrix products, names containing ``fft`` are FFTW transforms,
    and everything else (multiply-adds of compiled kernels, per-tile or per-row work) is the
    vectorised compute of numba code on all threads (:func:`fastconv.auto.constants.term_resource`).
``COST_RESOURCES : dict[str, str]`` (optional)
    The resource of a term whose name does not say it: ``{"mac": "serial_compute"}`` for loops
    that run on one thread, ``{"piece": "call"}`` for a fixed cost per piece of work. Resources
    are the keys of :data:`fastconv.auto.constants.RESOURCES`: ``gemm``, ``fft``, ``memory``,
    ``compute``, ``serial_compute`` and ``call``.
``reference : bool`` (optional, default False)
    True for the plain reference loops (``naive``): ``auto`` runs them only where no other
    backend can run the call.

``thread_pool : str`` (optional, default None)
    The pool of threads the backend's work runs on: ``"openmp"`` (numba's parallel kernels),
    ``"blas"`` (BLAS's own threads), ``"python"`` (Python threads that sleep when idle, running
    code that releases the GIL) or ``"fftw"`` (FFTW's threads); None for a backend that runs on
    the calling thread alone. Idle pools spin for a while before they sleep, so a call on another
    pool than the previous call's pays for it: ``auto`` adds the switch's cost, measured on the
    machine (:func:`fastconv.auto.pool_switches.switch_seconds`), to the estimate.

Placement

``placement : str`` (optional, default ``"host"``)
    ``"device"`` for a backend whose arrays live in GPU memory. ``auto`` considers a device
    backend only for device arrays (or inside :func:`fastconv.use_backend`), and device arrays go
    to the first available device backend, which must also define
    ``as_device_array(value)`` (wrap an array that is already in GPU memory) and
    ``run_on_device(x, weight, bias, spec)`` (compute there, return a device array).

Caches

``clear_caches()`` (optional)
    Forget what the backend keeps between calls (plans, transformed filters);
    :func:`clear_caches` calls every backend's.

Registering a backend is one line in ``_MODULES`` below. Modules are imported lazily, on first
use, so ``import fastconv`` stays cheap; a module that fails to import is reported unavailable
with the import error as its reason rather than breaking the package.

Examples
--------
>>> from fastconv import backends
>>> backends.backend_names()[:2]
('naive', 'im2col')
>>> backends.backend_names("conv_transpose2d")
('naive', 'col2im')
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import NamedTuple

from fastconv.thread_pools import reinitialise_after_fork

__all__ = ["FAST_MATH", "BackendStatus", "OPERATIONS", "backend_names", "check_name", "clear_caches", "device_backend", "get",
           "is_reference", "list_backends", "placement", "unavailable_reason"]

#: numba's fast-math flags for the backends' kernels: reassociation and contraction (vectorised
#: sums, fused multiply-adds), never the no-NaN / no-infinity assumptions, so that NaN and inf
#: propagate as arithmetic says.
FAST_MATH = {"reassoc", "contract", "arcp", "nsz", "afn"}  # (numba wants a set, not a frozenset)

#: The operations backends implement, and the hook that runs each.
OPERATIONS = {"conv2d": "run", "conv_transpose2d": "run_transpose"}

# name -> (module, the operations it implements). The operations are listed here, not read from
# the module, so that naming backends does not import them (nor numba); a test checks that each
# module defines the hooks of the operations listed.
_MODULES = {
    "naive": ("fastconv.backends.naive", ("conv2d", "conv_transpose2d")),
    "im2col": ("fastconv.backends.im2col", ("conv2d",)),
    "numba_cpu": ("fastconv.backends.numba_cpu", ("conv2d",)),
    "cuda": ("fastconv.backends.cuda", ("conv2d",)),
    "fft": ("fastconv.backends.fft", ("conv2d",)),
    "separable": ("fastconv.backends.separable", ("conv2d",)),
    "winograd": ("fastconv.backends.winograd", ("conv2d",)),
    "col2im": ("fastconv.backends.col2im", ("conv_transpose2d",)),
}

_lock = reinitialise_after_fork(threading.Lock())
_loaded: dict[str, ModuleType] = {}
_unavailable: dict[str, str | None] = {}


class BackendStatus(NamedTuple):
    """One row of :func:`list_backends`."""

    name: str
    available: bool
    reason: str


def backend_names(op: str = "conv2d") -> tuple[str, ...]:
    """Names of the registered backends of operation ``op``, in registration order."""
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {tuple(OPERATIONS)}, got {op!r}")
    return tuple(name for name, (_, operations) in _MODULES.items() if op in operations)


def check_name(name, op: str = "conv2d") -> str:
    """``name`` when it is a registered backend of ``op``, else a ValueError listing the valid names."""
    names = backend_names(op)
    if not isinstance(name, str) or name not in names:
        what = "" if op == "conv2d" else f" for {op}"
        raise ValueError(f"Unknown backend {name!r}{what}; valid backends are {', '.join(names)} and 'auto'")
    return name


def _load(name: str) -> None:
    with _lock:
        if name in _unavailable:
            return
        try:
            module = importlib.import_module(_MODULES[name][0])
            reason = module.available()
        except Exception as error:  # an optional dependency missing or broken: report, don't crash
            module, reason = None, f"failed to load: {type(error).__name__}: {error}"
        if module is not None:
            _loaded[name] = module
        _unavailable[name] = reason


def unavailable_reason(name: str) -> str | None:
    """``None`` when backend ``name`` can run here, else why it cannot. Unknown names raise."""
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"Unknown backend {name!r}; valid backends are {', '.join(_MODULES)} and 'auto'")
    _load(name)
    return _unavailable[name]


def get(name: str) -> ModuleType:
    """The module of backend ``name``; ValueError (with the reason) when it is unavailable."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise ValueError(f"backend {name!r} is not available: {reason}")
    return _loaded[name]


def placement(name: str) -> str:
    """``"host"`` or ``"device"``: where backend ``name`` keeps its arrays (its ``placement`` hook)."""
    unavailable_reason(name)  # loads it
    return getattr(_loaded.get(name), "placement", "host")


def is_reference(name: str) -> bool:
    """True for the reference loops (the ``reference`` hook): what the other backends are checked against."""
    unavailable_reason(name)  # loads it
    return bool(getattr(_loaded.get(name), "reference", False))


def device_backend() -> ModuleType:
    """The first available backend whose arrays live in GPU memory; ValueError saying why when none is."""
    reasons = []
    for name in _MODULES:
        if placement(name) == "device":
            reason = unavailable_reason(name)
            if reason is None:
                return _loaded[name]
            reasons.append(f"{name}: {reason}")
    raise ValueError("arrays in GPU memory need a GPU backend, and none is available"
                     + (f" ({'; '.join(reasons)})" if reasons else ""))


def clear_caches() -> None:
    """Forget every loaded backend's cached plans, transformed filters and factors."""
    for module in list(_loaded.values()):
        hook = getattr(module, "clear_caches", None)
        if hook is not None:
            hook()


def list_backends(op: str = "conv2d") -> list[BackendStatus]:
    """One row per registered backend of ``op``: name, whether it is available, and why not.

    Examples
    --------
    >>> import fastconv
    >>> [row.name for row in fastconv.list_backends()][:1]
    ['naive']
    """
    rows = []
    for name in backend_names(op):
        reason = unavailable_reason(name)
        rows.append(BackendStatus(name, reason is None, reason or ""))
    return rows
