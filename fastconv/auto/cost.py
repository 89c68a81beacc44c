"""The cost model behind ``backend="auto"``: how long each backend should take on a problem.

Each backend's time is modelled as a sum of *work terms*, each a count derived from the
:class:`~fastconv.geometry.ConvSpec` alone (and, for ``separable``, the kernels' rank), times a
constant measured on a machine::

    seconds = sum(constant[term] * count[term])

The counts live with the algorithms: each backend's ``cost_terms(spec, rank)`` says what it does
(its docstring explains the terms), and its ``COST_CONSTANTS`` what each unit cost where the
shipped constants were fitted. In short:

``naive``, ``numba_cpu`` (direct)
    one multiply-add per kernel tap per output value, scalar or vectorised, with numba_cpu's
    kernels (plane, 3×3 depthwise, channel-blocked) at their own rates.
``im2col``
    unfold every receptive field into a column matrix, then one GEMM at BLAS speed.
``fft``
    transform every input and output channel per tile, multiply spectra bin by bin: the kernel
    size does not appear at all, which is why FFT wins for large kernels.
``separable``
    a rank-``r`` kernel is ``r`` horizontal and ``r`` vertical passes, fused: ``r * (kh + kw)`` taps per output
    instead of ``kh * kw``, after an SVD of every kernel.
``winograd``
    F(m×m, 3×3): transforms per tile, then (m+2)² small GEMMs, ``(m+2)² / (9 m²)`` of direct
    convolution's multiplies.

Terms in :data:`UNSCALED_TERMS` (the per-call overhead, separable's float64 SVD) cost the same
whatever the dtype and thread count; the others scale by the backend's ``float64_factor`` for
double precision and by the thread count the constants were measured with. Constants come from
``fastconv tune --calibrate`` (fitted on this machine), or else are the backends' shipped ones
scaled to this machine's speeds by the cost probe, or the shipped ones as they are (see
:mod:`fastconv.auto.constants`).

Examples
--------
>>> from fastconv.geometry import make_spec
>>> spec = make_spec((1, 1, 512, 512), (1, 1, 31, 31), padding="same", dtype="float32")
>>> sorted(work_terms("fft", spec))
['bin_flop', 'byte', 'call', 'fft_flop', 'tile']
>>> strided = make_spec((1, 1, 512, 512), (1, 1, 31, 31), padding="same", stride=2, dtype="float32")
>>> work_terms("fft", strided)["fft_flop"] == work_terms("fft", spec)["fft_flop"]  # no gain from stride
True
>>> estimate_seconds("naive", spec) > estimate_seconds("fft", spec)
True
"""

from __future__ import annotations

import os
import threading
import warnings

from fastconv import backends, config
from fastconv.auto.constants import DEFAULT_THREADS, constants_for, constants_threads
from fastconv.backends.work import direct_macs, dtype_work, io_bytes, is_double
from fastconv.geometry import ConvSpec

__all__ = ["UNSCALED_TERMS", "GENERIC_CONSTANTS", "work_terms", "estimate_seconds", "predict"]

#: Terms whose cost depends neither on the compute dtype nor on the thread count: the per-call
#: overhead, and separable's kernel factorisation (a float64 LAPACK SVD whatever the dtype).
UNSCALED_TERMS = frozenset({"call", "parallel_call", "kernel", "svd_entry", "svd_flop"})

#: What a backend without ``cost_terms`` is charged: its direct-convolution work at the rate of
#: a modest compiled kernel (10 GMAC/s), so that auto ranks it rather than ignoring it.
GENERIC_CONSTANTS = {"call": 1e-5, "mac": 1e-10, "byte": 1e-10, "float64_factor": 2.0}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _generic_terms(name: str, spec: ConvSpec) -> dict[str, float]:
    with _warned_lock:
        first = name not in _warned
        _warned.add(name)
    if first:
        warnings.warn(f"fastconv: backend {name!r} defines no cost_terms(spec, rank), so auto ranks it by its "
                      f"direct-convolution work at a generic rate ({1 / GENERIC_CONSTANTS['mac'] / 1e9:g} GMAC/s); "
                      f"give it cost_terms and COST_CONSTANTS (see fastconv.backends) to be ranked by what it does",
                      RuntimeWarning, stacklevel=5)
    return {"call": 1.0, "mac": float(direct_macs(spec)) * dtype_work(spec.dtype), "byte": io_bytes(spec)}


def work_terms(name: str, spec: ConvSpec, *, rank: int | None = None, module=None) -> dict[str, float]:
    """Work counts of backend ``name`` on ``spec``: its ``cost_terms``, or generic direct-convolution work.

    ``rank`` is the kernels' numerical rank (None: unknown). ``module`` is the backend module
    (default: the registered one).
    """
    module = backends.get(name) if module is None else module
    if spec.batch == 0:  # an empty batch: nothing to compute, only the call itself
        return {"call": 1.0}
    own_terms = getattr(module, "cost_terms", None)
    if own_terms is None:
        return _generic_terms(name, spec)
    return {term: float(count) for term, count in own_terms(spec, rank).items()}


def predict(table: dict, terms: dict, double: bool, speedup: float = 1.0) -> float:
    """Seconds from work counts: the unscaled terms, plus the rest scaled for float64 and threads."""
    scale = (table.get("float64_factor", 2.0) if double else 1.0) / speedup
    return sum(table[term] * count * (1.0 if term in UNSCALED_TERMS else scale)
               for term, count in terms.items() if term in table)


def estimate_seconds(name: str, spec: ConvSpec, *, rank: int | None = None, module=None,
                     constants: dict | None = None, threads: int | None = None,
                     measured_threads: int | None = None) -> float:
    """Estimated run time of backend ``name`` on ``spec``, in seconds.

    ``constants`` maps backend names to constant tables (default: those in use, see
    :func:`fastconv.auto.constants.constants_for`); ``threads`` the thread count (default
    :data:`fastconv.config.threads`); ``measured_threads`` the thread count the constants were
    measured with (default: :data:`~fastconv.auto.constants.DEFAULT_THREADS` for a table from
    ``constants``, that of the constants in use otherwise).

    Examples
    --------
    >>> from fastconv.geometry import make_spec
    >>> estimate_seconds("naive", make_spec((1, 1, 8, 8), (1, 1, 3, 3))) < 1e-3
    True
    """
    module = backends.get(name) if module is None else module
    terms = work_terms(name, spec, rank=rank, module=module)
    if constants is not None and name in constants:
        table = constants[name]
        measured_threads = measured_threads or DEFAULT_THREADS
    else:
        table = constants_for(name, module)
        measured_threads = measured_threads or constants_threads(name)
    if table is None:
        table = GENERIC_CONSTANTS
    # extra threads speed up the work terms, not the fixed per-call term
    speedup = max(min(threads or config.threads, os.cpu_count() or 1), 1) / measured_threads
    return predict(table, terms, is_double(spec.dtype), speedup)
