"""The one timing rule of the autotuner and of ``fastconv bench``, and quiet-machine checks.

A backend is timed in its steady state, as a loop over images runs it (:func:`steady_state_times`):
after a settle pause (so the previous backend's thread pools stop spinning on the cores this one
needs), after untimed warm-up calls (JIT compilation, FFT plans, weight caches, and waking the
machine after the pause), and for short calls until the timed calls add up to 30 ms, so that a
few slow calls cannot decide. :func:`time_backends_quietly` redoes a timing during which other
processes used the CPU.

Examples
--------
>>> times = steady_state_times(lambda: sum(range(100)), repeats=3, budget=0.05, settle=0.0)
>>> len(times) >= 3
True
"""

from __future__ import annotations

import functools
import math
import os
import time

from fastconv import backends
from fastconv.geometry import ConvSpec

__all__ = ["format_seconds", "SETTLE_SECONDS", "WARMUP_SECONDS", "MIN_TIMED_SECONDS", "timed", "steady_state_times", "time_backends",
           "time_backends_quietly"]

# Pause before timing a backend, so the thread pools of the previous one have gone to sleep.
SETTLE_SECONDS = 0.15
# Timed calls of one backend add up to at least this much (time allowing): a sub-millisecond
# call's best-of is then taken over tens of calls, not 3, so one scheduler slice lost to another
# thread (4 ms here) or a cold cache in a few of them does not decide the winner.
MIN_TIMED_SECONDS = 0.03
# Untimed calls before timing last at least this long. After the process has idled (the settle
# pause) a parallel call here took ~0.45 ms instead of 16 us for the first ~20 ms of calls, each
# one paying to wake the other core's thread (a 2-vCPU virtual machine); a loop over images runs
# in the awake state, so that is the one to time.
WARMUP_SECONDS = 0.03
# Other processes' CPU use, as a fraction of a timing's wall time, above which it is redone.
_BUSY_FRACTION = 0.1


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def steady_state_times(call, *, repeats: int, budget: float, settle: float | None = None,
                       warmup_seconds: float | None = None, min_seconds: float | None = None,
                       first_is_warm: bool = False) -> list[float]:
    """Seconds taken by calls of ``call`` in its steady state, as a loop over images runs it.

    The one timing rule of the tuner and of ``fastconv bench``: sleep ``settle`` seconds (default
    ``SETTLE_SECONDS``) so the previous backend's thread pools stop spinning on the cores this
    one needs; call untimed until ``warmup_seconds`` (default ``WARMUP_SECONDS``) have passed
    (the first call absorbs JIT compilation, FFT plans and weight caches, the rest wake the
    machine after the pause) — unless ``first_is_warm`` (the caller has already run it) and that
    first call alone lasts the warm-up, when it is the first timing; then time at least
    ``repeats`` calls and, for short calls, more until they add up to ``min_seconds`` (default
    ``MIN_TIMED_SECONDS``), stopping once ``budget`` seconds have passed since the first timed
    call began (one call is always timed).
    """
    settle = SETTLE_SECONDS if settle is None else settle
    warmup_seconds = WARMUP_SECONDS if warmup_seconds is None else warmup_seconds
    min_seconds = MIN_TIMED_SECONDS if min_seconds is None else min_seconds
    time.sleep(settle)
    started = time.perf_counter()
    first = timed(call)
    times = [first] if first_is_warm and first >= warmup_seconds else []
    if not times:
        while time.perf_counter() - started < warmup_seconds:
            call()
        started = time.perf_counter()
        times.append(timed(call))
    total = times[0]  # a running sum: re-summing the list makes many short calls quadratic
    while (len(times) < repeats or total < min_seconds) and time.perf_counter() - started < budget:
        times.append(timed(call))
        total += times[-1]
    return times


def time_backends(names, operands, spec: ConvSpec, *, repeats: int = 5, budget: float = 1.0,
                  settle: float | None = None, min_seconds: float | None = None,
                  warmup_seconds: float | None = None) -> dict[str, float]:
    """Best-of wall time of each backend in ``names`` on ``operands`` = (x, weight, bias).

    Each backend is timed by :func:`steady_state_times` within ``budget / len(names)`` seconds.
    The settle pause matters on a machine with few cores: the thread pools of BLAS, OpenMP
    (numba) and FFTW keep spinning for up to ~0.1 s after a call, and a different backend's
    threads then wait for cores in whole scheduler time slices (4 ms here), so backends timed
    back to back would be charged for each other's pools.
    """
    x, weight, bias = operands
    share = budget / max(len(names), 1)
    return {name: min(steady_state_times(functools.partial(backends.get(name).run, x, weight, bias, spec),
                                         repeats=repeats, budget=share, settle=settle,
                                         warmup_seconds=warmup_seconds, min_seconds=min_seconds))
            for name in names}


def _cpu_snapshot():
    """(CPU seconds the whole machine has been busy, CPU seconds this process has used), or None."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None  # not Linux: cannot tell, assume quiet
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    times = os.times()
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), times.user + times.system


def _others_were_busy(before, after, elapsed: float) -> bool:
    """Did other processes use more than ``_BUSY_FRACTION`` of ``elapsed`` CPU seconds between
    two :func:`_cpu_snapshot` readings? (False when they cannot be read.) Both readings count
    whole clock ticks (10 ms), so two ticks of slack keep rounding from looking like a neighbour."""
    if before is None or after is None:
        return False
    others = (after[0] - before[0]) - (after[1] - before[1])
    return others > _BUSY_FRACTION * elapsed + 2.0 / os.sysconf("SC_CLK_TCK")


def time_backends_quietly(names, operands, spec: ConvSpec, *, attempts: int = 3, pause: float = 1.0,
                          passes: int = 1, **timing) -> dict[str, float]:
    """:func:`time_backends`, each backend's timing redone (after ``pause`` seconds) when other
    processes used the CPU meanwhile.

    On a shared machine a neighbour's burst inflates every time taken during it, and a best-of
    over repeats cannot undo a burst that lasts all of them. Other processes' CPU use is read from
    ``/proc/stat`` minus this process's own, around each backend's timing (a burst during one
    backend's few milliseconds is invisible in a whole problem's second); above 10% of the elapsed
    time that backend is timed again, keeping the best, up to ``attempts`` times.

    ``passes`` > 1 times all of ``names`` again, in reverse order each time, keeping each one's
    best: a backend caught in a slow state of the machine in one pass (on this 2-vCPU virtual
    machine a numba kernel of 16 µs sometimes ran at 250-450 µs for tens of calls after FFTW's
    OpenMP threads had run, then recovered) gets another chance later.
    """
    timing = {**timing, "budget": timing.get("budget", 1.0) / max(len(names), 1)}
    result = {}
    order = list(names)
    for name in [name for index in range(passes) for name in (order if index % 2 == 0 else order[::-1])]:
        for attempt in range(attempts):
            before, start = _cpu_snapshot(), time.perf_counter()
            seconds = time_backends([name], operands, spec, **timing)[name]
            result[name] = min(seconds, result.get(name, math.inf))
            if not _others_were_busy(before, _cpu_snapshot(), time.perf_counter() - start):
                break
            if attempt < attempts - 1:
                time.sleep(pause)
    return result


def format_seconds(value: float) -> str:
    """A duration in the unit that suits it: ``"1.5 ms"``, ``"230 us"``; ``"unmodelled"`` for inf."""
    if not math.isfinite(value):
        return "unmodelled"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value * 1e9:.3g} ns"
