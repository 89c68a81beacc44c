"""What ``auto`` charges a backend for running on another thread pool than the call before it.

fastconv's backends run on different pools of threads (each backend's ``thread_pool``:
``"openmp"`` for numba's parallel kernels, ``"blas"`` for BLAS's own threads, ``"python"`` for
Python threads running code that releases the GIL, ``"fftw"`` for FFTW's threads). An idle pool's
threads spin for a while before they sleep, and on a machine with few cores the next pool's
threads wait for those cores; a network whose layers alternate between pools pays that at every
switch. So ``auto`` adds the switches' cost, there and back, to the estimate of a backend on
another pool than the previous call's (:func:`fastconv.thread_pools.last_pool`), and a close
call stays on the pool that is awake. The costs are measured on the machine by the cost probe
(:func:`fastconv.auto.probe.measure_switches`), or else are the reference machine's
(:data:`SHIPPED_SWITCH_SECONDS`).

Examples
--------
>>> switch_seconds("openmp", "numba_cpu"), switch_seconds(None, "im2col")
(0.0, 0.0)
"""

from __future__ import annotations

from fastconv import backends
from fastconv.auto.constants import probe_result

__all__ = ["SHIPPED_SWITCH_SECONDS", "pool_switch_seconds", "switch_seconds"]

#: Seconds a call loses when the call before it ran on another thread pool, per ordered pair
#: ``"previous>next"`` of pools, as :func:`fastconv.auto.probe.measure_switches` measured them on
#: the reference machine (the mean of three probes): used where the probe did not measure them.
SHIPPED_SWITCH_SECONDS = {"openmp>blas": 2.0e-05, "openmp>python": 1.7e-05, "openmp>fftw": 6e-06,
                          "blas>openmp": 2.6e-05, "blas>python": 5.0e-05, "blas>fftw": 1.4e-05,
                          "python>openmp": 2.7e-05, "python>blas": 1.2e-05, "python>fftw": 9e-06,
                          "fftw>openmp": 2.9e-05, "fftw>blas": 1.6e-05, "fftw>python": 1.2e-05}


def pool_switch_seconds(previous: str | None, pool: str | None) -> float:
    """Seconds a call on thread pool ``pool`` loses right after a call on pool ``previous``: 0 for
    the same pool or where either is None (the calling thread alone, or no call yet); else the
    probe's measurement on this machine, or :data:`SHIPPED_SWITCH_SECONDS` where the probe did not
    measure it (probe off, constants fitted on this machine, or a probe file from before).

    >>> pool_switch_seconds("blas", "blas")
    0.0
    """
    if previous is None or pool is None or previous == pool:
        return 0.0
    pair = f"{previous}>{pool}"
    probe = probe_result()
    measured = probe.get("switches", {}) if probe is not None else {}
    return measured.get(pair, SHIPPED_SWITCH_SECONDS.get(pair, 0.0))


def switch_seconds(previous_pool: str | None, name: str) -> float:
    """What running backend ``name`` costs in switches when the call before it ran on thread pool
    ``previous_pool``: the switch to its pool and the switch back. Calls in a sequence (a network's
    layers) mostly stay on the pool that has been winning, so a call on another pool is a detour
    whose way back the next call pays; charging both ways keeps ``auto`` from detours that save
    less than they cost.

    >>> switch_seconds("openmp", "im2col") == (pool_switch_seconds("openmp", "blas")
    ...                                        + pool_switch_seconds("blas", "openmp"))
    True
    """
    pool = getattr(backends.get(name), "thread_pool", None)
    return pool_switch_seconds(previous_pool, pool) + pool_switch_seconds(pool, previous_pool)
