"""The cost probe: the speeds of this machine that the cost model's constants depend on.

``backend="auto"`` estimates each backend's time as work counts times constants, seconds per unit
of work, fitted once on one machine (:mod:`fastconv.auto.constants`). Another machine is not
uniformly faster or slower: it may have a faster BLAS but less memory bandwidth per core, or a
wider vector unit but slower Python. So the constants are rescaled resource by resource, by how
this machine compares with the one they were fitted on, and :func:`measure` measures those
resources, in a fraction of a second (plus, on a fresh install, compiling two small numba
kernels):

====================  ==============================================================  ============
resource              what is timed                                                   unit
====================  ==============================================================  ============
``gemm``              numpy float32 matrix products, 128² and 512² (BLAS on the       flop/s
                      probe's threads): the geometric mean of the two rates
``fft``               FFTW real-to-complex and complex-to-real transforms of eight    flop/s
                      128² float32 grids, planned as the ``fft`` backend plans them
                      (2.5·N·log2 N flops per transform)
``memory``            a streaming pass ``out += x * w`` over two 32 MiB float32       bytes/s
                      arrays, split between the probe's threads
``compute``           vectorised multiply-adds of a compiled row kernel (each row's   mult-adds/s
                      1-D convolution, the inner loop of a direct convolution) on
                      data in cache, on every probe thread at once
``serial_compute``    the same kernel on one thread                                   mult-adds/s
``call``              calls from Python of a compiled (numba) function                calls/s
====================  ==============================================================  ============

Every quantity is a rate (higher is faster). Each timing is the best of several calls, and each
resource is timed in up to three rounds, in turn with the others, keeping its best: a slow spell
of the machine then lowers no one resource against the others. The probe's threads are
:func:`~fastconv.auto.constants.probe_threads`: :data:`fastconv.config.threads`, at most the
number of cores. The rate kernels run on Python threads (they release the GIL); they are compiled
with ``cache=True``, so a later process loads them from disk.

:func:`measure_switches` then times what a call on each thread pool loses right after a call on
another (:mod:`fastconv.auto.pool_switches`): it runs one small call on numba's OpenMP threads,
BLAS's, Python threads and FFTW's, so those pools are started in a process that uses ``auto``
(as the backends ``auto`` picks would start them).

Examples
--------
>>> sorted(RESOURCES)
['call', 'compute', 'fft', 'gemm', 'memory', 'serial_compute']
"""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.auto.constants import RESOURCES, probe_threads
from fastconv.backends import FAST_MATH
from fastconv.thread_pools import ParallelKernel, blas_threads, run_on_threads

__all__ = ["POOLS", "RESOURCES", "measure", "measure_switches", "probe_threads"]

# Untimed calls before each timing, for this long: after an idle moment a 2-vCPU virtual machine
# runs the other core's thread several times slower for ~20 ms (see fastconv.auto.timing); the
# later rounds of measure run warm.
_WARMUP_SECONDS = 0.01
# Each timing is the best of the calls made in this long, and each resource is timed in this
# many rounds (see measure): together long enough to outlast a slow spell of the machine, short
# enough that the whole probe stays under a second.
_TIMED_SECONDS = 0.02
_ROUNDS = 3
# No round starts that would end past this (the first always runs): on a loaded machine, where
# one round takes seconds, the later rounds would multiply the wait for little.
_BUDGET_SECONDS = 1.0


@njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _row_multiply_adds(x, weights, out, repeats):  # pragma: no cover - compiled
    """``out[r, j] += sum_v x[r, j + v] * weights[v]``, ``repeats`` times: each row's 1-D
    convolution, the inner loop of a direct convolution kernel (vectorised along j)."""
    rows, columns = out.shape
    for r in range(rows):
        for _ in range(repeats):
            for v in range(weights.shape[0]):
                weight = weights[v]
                for j in range(columns):
                    out[r, j] += x[r, j + v] * weight


@njit(cache=True)
def _first_length(x):  # pragma: no cover - compiled
    """Next to nothing: what one call from Python costs."""
    return x.shape[0]


def _warm(call) -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < _WARMUP_SECONDS:
        call()


def _best(call, seconds: float = _TIMED_SECONDS, min_rounds: int = 5) -> float:
    """The shortest of the timed calls of ``call`` (at least ``min_rounds``, for at least
    ``seconds``), after warming up."""
    _warm(call)
    best, rounds, started = math.inf, 0, time.perf_counter()
    while rounds < min_rounds or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - begin)
        rounds += 1
    return best


def _best_concurrent(threads: int, call, seconds: float = _TIMED_SECONDS, min_rounds: int = 5) -> list[float]:
    """``call(i)`` on ``threads`` threads at once (i = 0 .. threads-1), in rounds that start
    together (at least ``min_rounds``, for at least ``seconds``): each thread's shortest time, so
    that a late start of one thread is not counted against it."""
    if threads == 1:
        return [_best(lambda: call(0), seconds, min_rounds)]
    barrier = threading.Barrier(threads)
    best = [math.inf] * threads
    go_on: list[bool] = []  # per round, decided by thread 0 before the round's barrier
    errors: list[BaseException] = []

    def worker(index):
        try:
            _warm(lambda: call(index))
            started = time.perf_counter()
            for round_index in itertools.count():
                if index == 0:
                    go_on.append(round_index < min_rounds or time.perf_counter() - started < seconds)
                barrier.wait(timeout=30)
                if not go_on[round_index]:
                    return
                begin = time.perf_counter()
                call(index)
                best[index] = min(best[index], time.perf_counter() - begin)
        except BaseException as error:  # noqa: BLE001 - re-raised below, once every thread has stopped
            errors.append(error)
            barrier.abort()

    others = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(1, threads)]
    for thread in others:
        thread.start()
    worker(0)
    for thread in others:
        thread.join()
    if errors:
        raise next((error for error in errors if not isinstance(error, threading.BrokenBarrierError)), errors[0])
    return best


def _call_rate():
    """Calls per second of a compiled function from Python."""
    x = np.zeros(1, np.float32)
    calls = 1000

    def many():
        for _ in range(calls):
            _first_length(x)

    return lambda: calls / _best(many)


def _compute_rates(threads: int):
    """(one thread's, all threads' together) multiply-adds per second, on data in cache."""
    rows, columns, taps, repeats = 16, 256, 8, 128
    weights = np.full(taps, 1.0 / taps, np.float32)
    inputs = [np.ones((rows, columns + taps - 1), np.float32) for _ in range(threads)]
    outputs = [np.zeros((rows, columns), np.float32) for _ in range(threads)]
    work = rows * columns * taps * repeats

    def run(index):
        _row_multiply_adds(inputs[index], weights, outputs[index], repeats)

    return (lambda: work / _best(lambda: run(0)),
            lambda: sum(work / seconds for seconds in _best_concurrent(threads, run)))


def _memory_rate(threads: int):
    """Bytes per second of a streaming pass over two 32 MiB arrays, split between the threads."""
    rows = 64 * threads
    columns = (32 << 20) // 4 // rows
    x = np.ones((rows, columns), np.float32)
    out = np.zeros((rows, columns), np.float32)
    weights = np.ones(1, np.float32)
    share = rows // threads

    def run(index):
        part = slice(index * share, (index + 1) * share)
        _row_multiply_adds(x[part], weights, out[part], 1)

    moved = 3 * share * columns * 4  # read x, read and write out
    return lambda: sum(moved / seconds for seconds in _best_concurrent(threads, run, min_rounds=3))


def _gemm_rate(threads: int):
    """The geometric mean of float32 matrix-product rates at two sizes, on ``threads`` BLAS threads."""
    rng = np.random.default_rng(0)
    products = []
    for size, count in ((128, 16), (512, 1)):
        a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
        out = np.empty((size, size), np.float32)

        def run(a=a, b=b, out=out, count=count):
            for _ in range(count):
                np.matmul(a, b, out=out)

        products.append((2.0 * size ** 3 * count, run))

    def rate():
        with blas_threads(threads):
            return math.sqrt(math.prod(flops / _best(run) for flops, run in products))

    return rate


def _fft_rate(threads: int):
    """Flops per second of FFTW's real 2-D transforms (None when pyFFTW is not installed)."""
    try:
        import pyfftw
    except ImportError:
        return None
    batch, side = 8, 128
    real = pyfftw.empty_aligned((batch, side, side), np.float32)
    spectrum = pyfftw.empty_aligned((batch, side, side // 2 + 1), np.complex64)
    effort = config.fftw_planner  # as the fft backend plans: its flags, its threads
    forward = pyfftw.FFTW(real, spectrum, axes=(-2, -1), direction="FFTW_FORWARD", flags=(effort,),
                          threads=threads)
    inverse = pyfftw.FFTW(spectrum, real, axes=(-2, -1), direction="FFTW_BACKWARD",
                          flags=(effort, "FFTW_DESTROY_INPUT"), threads=threads)
    real[:] = 0  # planning may have written anything; zeros keep every value finite and normal

    def run():
        forward.execute()
        inverse.execute()

    points = side * side
    return lambda: 2 * batch * 2.5 * points * math.log2(points) / _best(run)


@njit(cache=True, parallel=True, fastmath=FAST_MATH)
def _parallel_row_multiply_adds(x, weights, out, repeats):  # pragma: no cover - compiled
    """:func:`_row_multiply_adds` with its rows spread over numba's OpenMP threads."""
    for r in prange(out.shape[0]):
        for _ in range(repeats):
            for v in range(weights.shape[0]):
                weight = weights[v]
                for j in range(out.shape[1]):
                    out[r, j] += x[r, j + v] * weight


#: The thread pools whose switches :func:`measure_switches` times (see ``thread_pool`` in
#: :mod:`fastconv.backends`).
POOLS = ("openmp", "blas", "python", "fftw")
# Times each ordered pair of pools is timed (interleaved); the median is kept.
_SWITCH_REPEATS = 15


def _pool_calls(threads: int) -> dict:
    """A call of about 0.1-0.3 ms on each pool (``threads`` threads), by pool name."""
    rows, columns, taps, repeats = 16 * threads, 256, 8, 48
    weights = np.full(taps, 1.0 / taps, np.float32)
    x = np.ones((rows, columns + taps - 1), np.float32)
    out = np.zeros((rows, columns), np.float32)
    share = rows // threads
    parallel = ParallelKernel(_parallel_row_multiply_adds)
    a, b = np.ones((128, 256), np.float32), np.ones((256, 512), np.float32)
    product = np.empty((128, 512), np.float32)

    def on_openmp():
        parallel(x, weights, out, repeats)

    def on_blas():
        with blas_threads(threads):
            np.matmul(a, b, out=product)

    def on_python():
        parts = iter(range(threads))
        lock = threading.Lock()

        def task():
            with lock:
                part = slice(next(parts) * share, None)
            _row_multiply_adds(x[part][:share], weights, out[part][:share], repeats)

        run_on_threads(threads, task)

    calls = {"openmp": on_openmp, "blas": on_blas, "python": on_python}
    try:
        import pyfftw
    except ImportError:
        return calls
    real = pyfftw.empty_aligned((4, 128, 128), np.float32)
    spectrum = pyfftw.empty_aligned((4, 128, 65), np.complex64)
    forward = pyfftw.FFTW(real, spectrum, axes=(-2, -1), flags=(config.fftw_planner,), threads=threads)
    real[:] = 0
    calls["fftw"] = forward.execute
    return calls


def measure_switches(threads: int | None = None, repeats: int = _SWITCH_REPEATS) -> dict[str, float]:
    """Seconds a call on one thread pool loses when the call before it ran on another, per
    ordered pair ``"previous>next"`` of :data:`POOLS` (pools missing here are left out).

    Each pool's call is timed right after a call on every pool, itself included, the pairs
    interleaved; a switch costs the median time after the other pool minus the median after the
    same pool (never below zero). On two cores this is mostly the previous pool's idle threads
    still spinning on a core the next pool's threads need.
    """
    threads = probe_threads() if threads is None else threads
    calls = _pool_calls(threads)
    for call in calls.values():  # compile, plan, start each pool
        call()
    times = {(first, then): [] for first in calls for then in calls}
    for _ in range(repeats):
        for first, then in times:
            calls[first]()
            started = time.perf_counter()
            calls[then]()
            times[first, then].append(time.perf_counter() - started)
    median = {pair: float(np.median(values)) for pair, values in times.items()}
    return {f"{first}>{then}": max(0.0, median[first, then] - median[then, then])
            for first, then in times if first != then}


def measure(threads: int | None = None, rounds: int = _ROUNDS) -> dict[str, float]:
    """This machine's speed at each of :data:`RESOURCES` (rates: higher is faster).

    Every resource is measured ``rounds`` times, in turn, and its best rate kept: a slow spell
    of the machine (another process, a busy neighbour of a virtual machine) then lowers no one
    resource against the others, which is what the scaled constants' ranking depends on. A round
    that would end more than a second after the start is not begun (the first always is), so a
    loaded machine pays for one round only.
    ``threads`` defaults to :func:`probe_threads`. ``fft`` is left out when pyFFTW is not
    installed (the ``fft`` backend is unavailable then too).
    """
    threads = probe_threads() if threads is None else threads
    measurers = {"call": _call_rate()}
    measurers["serial_compute"], measurers["compute"] = _compute_rates(threads)
    measurers["memory"] = _memory_rate(threads)
    fft = _fft_rate(threads)
    if fft is not None:
        measurers["fft"] = fft
    # BLAS last in a round: OpenBLAS's idle threads spin for a while after a product and would take
    # the cores from what follows (the next round's first measurements warm up past that)
    measurers["gemm"] = _gemm_rate(threads)
    quantities: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(rounds):
        round_started = time.perf_counter()
        for resource, rate in measurers.items():
            quantities[resource] = max(quantities.get(resource, 0.0), rate())
        now = time.perf_counter()
        if now - started + (now - round_started) > _BUDGET_SECONDS:
            break
    return quantities
