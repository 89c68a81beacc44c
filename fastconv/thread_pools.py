"""Sharing the process's thread pools: BLAS thread counts, numba's parallel kernels, and fork.

fastconv runs inside other people's processes, next to their threads, their BLAS calls and their
``multiprocessing`` pools. Three things here keep it a good neighbour.

**BLAS thread counts** (:func:`blas_threads`). OpenBLAS (its pthreads build), MKL and BLIS keep
one thread count for the whole process, and a backend that wants another count for its GEMMs
(``im2col``: :data:`fastconv.config.threads`; ``winograd``: 1, because it runs its GEMMs on threads
of its own) has to set it and set it back. A limiter that saves the count on entry and restores
it on exit goes wrong when calls overlap in several threads: the second saves the first's limit
as "the original" and, leaving last, restores that, so BLAS stays limited for good (the user's own
matrix products then run on one thread). :func:`blas_threads` is one reference-counted limiter
for the process: the first of overlapping users saves the counts, the count in force is the
smallest any current user asked for, and the last one to leave restores the saved counts.
OpenBLAS built on OpenMP keeps a count per thread; each user limits and restores its own.

**numba's parallel kernels** (:class:`ParallelKernel`). A ``parallel=True`` kernel runs on
numba's threading layer, chosen once per process: ``tbb`` when the ``tbb`` package is installed
(safe under threads and fork), else ``omp`` (GNU OpenMP on Linux: safe under threads, *not* after
fork), else ``workqueue`` (safe after fork, but two threads inside it at once abort the process).
Wrapped in :class:`ParallelKernel`, a kernel

- runs on :data:`fastconv.config.threads` threads and leaves the calling thread's
  ``numba.get_num_threads()`` as it found it;
- on the ``workqueue`` layer, runs one call at a time (a lock), so threads never abort it;
- in a child forked from a process whose numba had started GNU OpenMP (a ``multiprocessing``
  fork pool started after fastconv ran), runs a serial build of the same function: GNU OpenMP
  cannot run in such a child (numba terminates it, and a pool then waits forever for its task).
  The serial build is compiled once (numba's disk cache keeps it) and uses one core per
  process, which is what a pool of worker processes wants anyway.

**Which pool ran last** (:func:`note_pool`, :func:`last_pool`). Every operation notes the pool of
each backend it runs (the backend's ``thread_pool``): :func:`fastconv.conv2d` itself, the other
operations through :func:`run_noting_pool`, so that after a training step's backward passes the
next call sees the pool they left awake; ``backend="auto"`` charges a backend on another pool
what the switch costs (:mod:`fastconv.auto.pool_switches`).

**Locks after fork** (:func:`reinitialise_after_fork`). A lock that another thread held when the
process forked stays held forever in the child; fastconv's caches register their locks here and
get fresh ones in a forked child.

The ``fft`` backend handles its own OpenMP pool (pyFFTW's FFTW threads) the same way: in a child
forked after threaded transforms ran it plans single-threaded transforms (see
:mod:`fastconv.backends.fft`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
import weakref

from fastconv import config

__all__ = ["ParallelKernel", "blas_threads", "last_pool", "note_pool", "reinitialise_after_fork", "parallel_unusable_after_fork",
           "run_noting_pool", "run_on_threads"]


# --------------------------------------------------------------------------------------------
# locks that a forked child gets fresh

_fork_locks: weakref.WeakSet = weakref.WeakSet()


def reinitialise_after_fork(lock):
    """Register ``lock`` (a ``threading.Lock``/``RLock``) to be released in a forked child; return it."""
    _fork_locks.add(lock)
    return lock


def _reinitialise_locks() -> None:
    for lock in list(_fork_locks):
        reinit = getattr(lock, "_at_fork_reinit", None)  # what the standard library uses (3.9+)
        if reinit is not None:
            reinit()


# --------------------------------------------------------------------------------------------
# Python worker threads, for work that releases the GIL (FFTW transforms, large numpy operations)

_workers = None
_workers_pid = None
_workers_lock = reinitialise_after_fork(threading.Lock())


def run_on_threads(threads: int, task) -> None:
    """Run ``task()`` on ``threads`` threads at once (the caller's among them); re-raise the first error.

    The extra threads come from one process-wide pool whose idle workers sleep; a forked child,
    whose copy of the pool has no threads behind it, builds its own.
    """
    global _workers, _workers_pid
    if threads <= 1:
        task()
        return
    with _workers_lock:
        if _workers is None or _workers._max_workers < threads - 1 or _workers_pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            _workers = ThreadPoolExecutor(threads - 1, thread_name_prefix="fastconv-worker")
            _workers_pid = os.getpid()
        pool = _workers
    futures = [pool.submit(task) for _ in range(threads - 1)]
    try:
        task()
    finally:
        for future in futures:
            future.result()


# --------------------------------------------------------------------------------------------
# which pool ran last

_last_pool: str | None = None


def note_pool(pool: str | None) -> None:
    """Record that work just ran on thread pool ``pool`` (a backend's ``thread_pool``)."""
    global _last_pool
    _last_pool = pool


def run_noting_pool(module, hook: str, *args):
    """Call backend ``module``'s ``hook`` (``"run"``, ``"run_transpose"``, ``"run_weight_grad"``...)
    with ``args``, note the backend's ``thread_pool`` as the pool that ran last, and return the result."""
    out = getattr(module, hook)(*args)
    note_pool(getattr(module, "thread_pool", None))
    return out


def last_pool() -> str | None:
    """The thread pool of the last backend call in this process (None before any, or for a
    backend that runs on the calling thread alone): what ``auto`` compares a candidate's pool with."""
    return _last_pool


# --------------------------------------------------------------------------------------------
# BLAS thread counts

_blas_lock = reinitialise_after_fork(threading.Lock())
_blas_controller = None
_blas_requests: list[int] = []  # the counts asked for by the users inside blas_threads now
_blas_saved: list | None = None  # (library, count) pairs as the first of them found them
_blas_applied: int | None = None  # the count set on the shared libraries now
_blas_saved_by_parent: list | None = None  # a forked child's baseline (see _after_fork_in_child)


def _blas_libraries():
    """(process-wide, per-thread) lists of threadpoolctl's BLAS library controllers."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    libraries = _blas_controller.select(user_api="blas").lib_controllers
    per_thread = [library for library in libraries
                  if library.internal_api == "openblas" and getattr(library, "threading_layer", None) == "openmp"]
    return [library for library in libraries if library not in per_thread], per_thread


def _set_count(library, count: int) -> None:
    library.set_num_threads(count)
    # recent threadpoolctl (3.8) lets only a "controlling" Python thread change OpenBLAS's count (others
    # are silently ignored); let go of that role so the thread that restores later can.
    release = getattr(type(library), "clear_controlling_thread", None)
    if release is not None:
        release()


@contextlib.contextmanager
def blas_threads(count: int):
    """Run the block with BLAS limited to ``count`` threads, safely when blocks overlap in threads.

    The count in force is the smallest any block running now asked for; the counts found before the
    first of overlapping blocks began are restored when the last one ends.
    """
    global _blas_saved, _blas_applied, _blas_saved_by_parent
    with _blas_lock:
        shared, per_thread = _blas_libraries()
        if not _blas_requests:
            _blas_saved = _blas_saved_by_parent or [(library, library.num_threads) for library in shared]
            _blas_saved_by_parent = None
            _blas_applied = None
        _blas_requests.append(count)
        wanted = min(_blas_requests)
        if wanted != _blas_applied:
            for library, saved in _blas_saved:
                if saved is not None and (_blas_applied is not None or saved != wanted):
                    _set_count(library, wanted)
            _blas_applied = wanted
    own = [(library, library.num_threads) for library in per_thread]
    for library, saved in own:
        if saved is not None and saved != count:
            _set_count(library, count)
    try:
        yield
    finally:
        for library, saved in own:
            if saved is not None and saved != count:
                _set_count(library, saved)
        with _blas_lock:
            _blas_requests.remove(count)
            if not _blas_requests:
                for library, saved in _blas_saved:
                    if saved is not None and saved != _blas_applied:
                        _set_count(library, saved)
                _blas_saved = _blas_applied = None
            elif min(_blas_requests) != _blas_applied:
                _blas_applied = min(_blas_requests)
                for library, saved in _blas_saved:
                    if saved is not None:
                        _set_count(library, _blas_applied)


# --------------------------------------------------------------------------------------------
# numba's parallel kernels

_parallel_unusable = False  # True in a child forked from a process whose numba started GNU OpenMP
_workqueue_lock = reinitialise_after_fork(threading.Lock())
_layer: str | None = None


def parallel_unusable_after_fork() -> bool:
    """True in a forked child where numba's parallel kernels cannot run (they run serially there)."""
    return _parallel_unusable


def _numba_layer_uses_gnu_openmp() -> bool:
    """Whether this process's numba has started its threading layer on GNU OpenMP (Linux ``omp``)."""
    numba = sys.modules.get("numba")
    if numba is None:
        return False
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run: the layer is not started
        return False
    if layer != "omp":
        return False
    omppool = sys.modules.get("numba.np.ufunc.omppool")
    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


class ParallelKernel:
    """A numba ``parallel=True`` kernel made safe to call from threads and forked children.

    Call it as the kernel itself. See the module docstring for what it does around the call.
    """

    def __init__(self, dispatcher):
        self.parallel = dispatcher
        self._serial = None
        self._lock = reinitialise_after_fork(threading.Lock())
        self.__doc__ = dispatcher.__doc__
        self.__name__ = getattr(dispatcher, "__name__", "kernel")

    def serial(self):
        """The same function compiled without ``parallel`` (built on first use)."""
        with self._lock:
            if self._serial is None:
                import numba

                function = self.parallel.py_func
                # a function of its own name: numba's disk cache keys files by qualified name, so
                # the serial build must not share (and overwrite) the parallel build's file
                twin = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial",
                                          function.__defaults__, function.__closure__)
                twin.__qualname__ = function.__qualname__ + "_serial"
                twin.__module__ = function.__module__
                options = {key: value for key, value in self.parallel.targetoptions.items()
                           if key not in ("parallel", "nopython")}
                from numba.core.caching import NullCache

                cached = not isinstance(getattr(self.parallel, "_cache", None), NullCache)  # as the original
                self._serial = numba.njit(cache=cached, **options)(twin)
            return self._serial

    def __call__(self, *args):
        if _parallel_unusable:
            return self.serial()(*args)
        import numba

        previous = numba.get_num_threads()  # starts the threading layer on first use
        global _layer
        if _layer is None:
            _layer = numba.threading_layer()
        wanted = min(config.threads, numba.config.NUMBA_NUM_THREADS)
        with _workqueue_lock if _layer == "workqueue" else contextlib.nullcontext():
            if wanted == previous:
                return self.parallel(*args)
            numba.set_num_threads(wanted)
            try:
                return self.parallel(*args)
            finally:
                numba.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# fork


def _after_fork_in_child() -> None:
    global _parallel_unusable, _blas_saved_by_parent, _blas_saved, _blas_applied
    _reinitialise_locks()
    if _numba_layer_uses_gnu_openmp():
        _parallel_unusable = True
    # BLAS users of the parent do not exist here: the next user starts afresh and restores the
    # counts the parent had before its users began
    if _blas_requests:
        _blas_saved_by_parent = _blas_saved
    _blas_requests.clear()
    _blas_saved = _blas_applied = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
