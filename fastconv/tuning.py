"""How ``backend="auto"`` chooses: hard rules, the cost model, and measurement when asked.

The choice for one call, in order:

1. Device arrays (``__cuda_array_interface__``) go to ``cuda``; host arrays never do unless
   :func:`fastconv.use_backend` asks for it.
2. A backend that :func:`fastconv.use_backend` prefers runs when it can.
3. With autotuning on (:func:`autotune`, ``FASTCONV_AUTOTUNE=1`` or ``conv2d(..., tune=True)``)
   the first call of each problem signature times every eligible backend and remembers the
   fastest, in memory and in a JSON file in :data:`fastconv.config.cache_dir`, so later processes
   on the same machine reuse it (as FFTW's wisdom and cuDNN's benchmark mode do).
4. Otherwise the backend with the lowest time estimated by :mod:`fastconv.cost`.

Only backends that are available and do not decline the call (their ``supports(spec)``) are ever
candidates. Ties go to the backend registered first, so the choice is deterministic. Decisions
are cached per problem signature, so auto costs a dictionary look-up on repeated calls.

:func:`explain` shows the whole reasoning as a table.

Examples
--------
>>> import fastconv
>>> report = fastconv.explain((1, 1, 64, 64), (1, 1, 3, 3), padding="same")
>>> report.choice in [row.name for row in report.rows if row.supported]
True
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from fastconv import backends, config, cost
from fastconv.backends._thread_pools import reinitialise_after_fork
from fastconv.geometry import ConvSpec, backend_input, backend_spec, make_spec, resolve_dtypes

__all__ = ["autotune", "choose", "explain", "Explanation", "clear_cache", "kernel_rank", "main"]

CACHE_FILE = "autotune.json"
_FORMAT = "fastconv-autotune"
_FORMAT_VERSION = 1

#: Soft bound on the wall time one autotuning measurement spends (all backends together).
TUNE_BUDGET_SECONDS = 2.0
# A backend whose estimate is this many times the best measured time is not worth timing.
_SKIP_FACTOR = 10.0
# Pause before timing a backend, so the thread pools of the previous one have gone to sleep.
_SETTLE_SECONDS = 0.15
# Timed calls of one backend add up to at least this much (time allowing): a sub-millisecond
# call's best-of is then taken over tens of calls, not 3, so one scheduler slice lost to another
# thread (4 ms here) or a cold cache in a few of them does not decide the winner.
_MIN_TIMED_SECONDS = 0.03
# Untimed calls before timing last at least this long. After the process has idled (the settle
# pause) a parallel call here took ~0.45 ms instead of 16 us for the first ~20 ms of calls, each
# one paying to wake the other core's thread (a 2-vCPU virtual machine); a loop over images runs
# in the awake state, so that is the one to time.
_WARMUP_SECONDS = 0.03
# Backends measured within this factor of the fastest are timed again (in the opposite order).
_CONTENDER_FACTOR = 1.5
# Other processes' CPU use, as a fraction of a timing's wall time, above which it is redone.
_BUSY_FRACTION = 0.1

_lock = reinitialise_after_fork(threading.RLock())
_decisions: dict = {}  # (spec, threads, constants source) -> ranked candidates
_ranks: dict = {}  # weight fingerprint -> numerical rank
_weight_verdicts: dict = {}  # (backend, spec, weight fingerprint) -> supports_weight's answer
_tuned: dict[str, dict] = {}  # signature -> {"backend": name, "seconds": {...}}
_disk_loaded_from: str | None = None
_warned: set[str] = set()


def autotune(enabled: bool = True) -> None:
    """Turn autotuning of ``backend="auto"`` on or off for this process.

    With it on, the first call of every new problem signature (shapes, stride, padding, dilation,
    groups, dtype, memory layout, thread count) times each eligible backend — within a bounded
    time, after one untimed call that absorbs JIT compilation — and later calls run the winner.
    Winners persist in ``autotune.json`` in :data:`fastconv.config.cache_dir`.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.autotune(False)
    >>> fastconv.config.autotune
    False
    """
    config.set_autotune(enabled)


# --------------------------------------------------------------------------------------------
# eligibility and the cost model


def decline_reason(name: str, spec: ConvSpec) -> str | None:
    """Why backend ``name`` cannot run ``spec`` here (unavailable or declines), or None."""
    reason = backends.unavailable_reason(name)
    if reason is None:
        reason = backends.get(name).supports(spec)
    return reason


def kernel_rank(weight: np.ndarray) -> int:
    """The largest numerical rank of the 2-D kernels in ``weight`` (K, C // groups, kh, kw).

    Singular values below ``max(kh, kw) * eps * s_max`` count as zero (numpy's ``matrix_rank``
    rule, as the ``separable`` backend uses). An all-zero weight counts as rank 1.

    >>> import numpy as np
    >>> g = np.exp(-np.linspace(-2, 2, 5) ** 2)
    >>> kernel_rank(np.outer(g, g)[None, None])
    1
    >>> kernel_rank(np.eye(4)[None, None])
    4
    """
    weight = np.asarray(weight)
    kernels = weight.reshape(-1, weight.shape[-2], weight.shape[-1])
    if kernels.dtype.kind not in "fc":
        kernels = kernels.astype(np.float64)
    singular = np.linalg.svd(kernels, compute_uv=False)
    tolerance = max(kernels.shape[-2:]) * np.finfo(kernels.dtype).eps * singular[:, :1]
    return max(int((singular > tolerance).sum(axis=1).max()), 1)


def _fingerprint(weight: np.ndarray):
    # content, not identity: a weight mutated in place must not keep a stale verdict
    return weight.shape, weight.dtype.str, hash(weight.tobytes())


def _remember(table: dict, key, value):
    with _lock:
        if len(table) > 1024:
            table.clear()
        table[key] = value
    return value


def _weight_rank(weight: np.ndarray | None) -> int | None:
    if weight is None:
        return None
    key = _fingerprint(weight)
    rank = _ranks.get(key)
    return rank if rank is not None else _remember(_ranks, key, kernel_rank(weight))


def _weight_dependent(name: str) -> bool:
    """True for backends whose fitness or cost depends on the weight values, not just the spec."""
    return name in _RANK_DEPENDENT or hasattr(backends.get(name), "supports_weight")


_RANK_DEPENDENT = ("separable",)
_UNKNOWN = object()  # a verdict not yet remembered (None is a verdict: "accepted")


def weight_decline_reason(name: str, weight: np.ndarray | None, spec: ConvSpec) -> str | None:
    """The reason of backend ``name``'s optional ``supports_weight(weight, spec)`` hook, or None.

    Verdicts are remembered per weight content, so repeated calls with the same filters do not
    pay the hook (the separable backend's SVD) again.
    """
    hook = getattr(backends.get(name), "supports_weight", None)
    if hook is None or weight is None:
        return None
    key = (name, spec, _fingerprint(weight))
    # one read: another thread's _remember may empty the table between a check and a second read
    verdict = _weight_verdicts.get(key, _UNKNOWN)
    return _remember(_weight_verdicts, key, hook(weight, spec)) if verdict is _UNKNOWN else verdict


def _host_candidates(spec: ConvSpec) -> list[str]:
    return [name for name in backends.backend_names() if name != "cuda" and decline_reason(name, spec) is None]


def _estimate(name: str, spec: ConvSpec, rank: int | None) -> float:
    module = backends.get(name)
    return cost.estimate_seconds(name, spec, rank=rank, module=module)


def _ranked(spec: ConvSpec, rank: int | None) -> list[tuple[float, int, str]]:
    """(estimated seconds, registration index, name) of every eligible host backend, best first."""
    order = backends.backend_names()
    return sorted((_estimate(name, spec, rank), order.index(name), name) for name in _host_candidates(spec))


def _model_choice(spec: ConvSpec, weight: np.ndarray | None) -> str:
    key = (spec, config.threads, cost.load_constants()[1])
    ranking = _decisions.get(key)
    if ranking is None:
        # ranked per spec with weight-dependent backends at their best case (rank 1, accepted):
        # the weight only needs looking at when such a backend comes out on top
        ranking = _remember(_decisions, key, _ranked(spec, 1))
    best = None
    for seconds, index, name in ranking:
        if best is not None and (seconds, index) >= best[:2]:
            break  # the rest are no better: rescoring below only ever raises an estimate
        if _weight_dependent(name):
            if weight_decline_reason(name, weight, spec) is not None:
                continue
            if name in _RANK_DEPENDENT:
                seconds = _estimate(name, spec, _weight_rank(weight))
        if best is None or (seconds, index) < best[:2]:
            best = (seconds, index, name)
    if best is None:
        raise ValueError(f"no backend can run this convolution: {spec}")
    return best[2]


def choose(spec: ConvSpec, weight: np.ndarray | None = None, *, preferred: str | None = None,
           on_device: bool = False, tune: bool | None = None, operands=None, layout: str = "C") -> str:
    """The backend ``backend="auto"`` runs for ``spec``.

    Parameters
    ----------
    spec : ConvSpec
        What the backend will see (zero padding mode, padding still to apply).
    weight : numpy.ndarray, optional
        The filters; their rank decides whether ``separable`` pays. Without them a full rank is
        assumed.
    preferred : str, optional
        The :func:`fastconv.use_backend` preference, honoured when that backend can run the call.
    on_device : bool
        True for GPU arrays: only ``cuda`` can take them.
    tune : bool, optional
        Measure instead of estimating (default :data:`fastconv.config.autotune`). Needs
        ``operands`` = ``(x, weight, bias)`` as the backend receives them.
    layout : str
        The caller's memory layout, part of the tuning signature (copies cost time too).

    Examples
    --------
    >>> from fastconv.geometry import make_spec
    >>> choose(make_spec((1, 1, 8, 8), (1, 1, 3, 3))) in [b.name for b in __import__("fastconv").list_backends()]
    True
    """
    if on_device:
        if "cuda" not in backends.backend_names():
            raise ValueError("device (GPU) arrays need the 'cuda' backend, which is not registered")
        reason = decline_reason("cuda", spec)
        if reason is not None:
            raise ValueError(f"device (GPU) arrays need the 'cuda' backend, which cannot run this call: {reason}")
        return "cuda"
    if preferred is not None and decline_reason(preferred, spec) is None \
            and weight_decline_reason(preferred, weight, spec) is None:
        return preferred
    if tune is None:
        tune = config.autotune
    if tune and operands is not None:
        return _tuned_choice(spec, operands, layout)
    return _model_choice(spec, weight)


# --------------------------------------------------------------------------------------------
# measurement


def signature(spec: ConvSpec, layout: str = "C", threads: int | None = None) -> str:
    """The autotuning cache key of a problem: everything that changes which backend wins.

    >>> from fastconv.geometry import make_spec
    >>> signature(make_spec((1, 3, 32, 32), (8, 3, 3, 3), padding=1, dtype="float32"), threads=2)
    'x1x3x32x32 w8x3x3x3 s1,1 p1,1,1,1 d1,1 g1 float32 C t2'
    """
    (top, bottom), (left, right) = spec.padding
    return (f"x{spec.batch}x{spec.in_channels}x{spec.in_height}x{spec.in_width} "
            f"w{'x'.join(map(str, spec.weight_shape))} s{spec.stride[0]},{spec.stride[1]} "
            f"p{top},{bottom},{left},{right} d{spec.dilation[0]},{spec.dilation[1]} g{spec.groups} "
            f"{spec.dtype.name} {layout} t{threads or config.threads}")


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def steady_state_times(call, *, repeats: int, budget: float, settle: float | None = None,
                       warmup_seconds: float | None = None, min_seconds: float | None = None,
                       first_is_warm: bool = False) -> list[float]:
    """Seconds taken by calls of ``call`` in its steady state, as a loop over images runs it.

    The one timing rule of the tuner and of ``fastconv bench``: sleep ``settle`` seconds (default
    ``_SETTLE_SECONDS``) so the previous backend's thread pools stop spinning on the cores this
    one needs; call untimed until ``warmup_seconds`` (default ``_WARMUP_SECONDS``) have passed
    (the first call absorbs JIT compilation, FFT plans and weight caches, the rest wake the
    machine after the pause) — unless ``first_is_warm`` (the caller has already run it) and that
    first call alone lasts the warm-up, when it is the first timing; then time at least
    ``repeats`` calls and, for short calls, more until they add up to ``min_seconds`` (default
    ``_MIN_TIMED_SECONDS``), stopping once ``budget`` seconds have passed since the first timed
    call began (one call is always timed).
    """
    settle = _SETTLE_SECONDS if settle is None else settle
    warmup_seconds = _WARMUP_SECONDS if warmup_seconds is None else warmup_seconds
    min_seconds = _MIN_TIMED_SECONDS if min_seconds is None else min_seconds
    time.sleep(settle)
    started = time.perf_counter()
    first = _timed(call)
    times = [first] if first_is_warm and first >= warmup_seconds else []
    if not times:
        while time.perf_counter() - started < warmup_seconds:
            call()
        started = time.perf_counter()
        times.append(_timed(call))
    total = times[0]  # a running sum: re-summing the list makes many short calls quadratic
    while (len(times) < repeats or total < min_seconds) and time.perf_counter() - started < budget:
        times.append(_timed(call))
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


def measure(spec: ConvSpec, operands, budget: float | None = None) -> dict[str, float | str]:
    """Time each eligible host backend on ``operands`` = (x, weight, bias) as backends receive them.

    Backends are timed in order of estimated cost, each in its steady state (see
    :func:`time_backends`: sub-millisecond calls are timed tens of times, and a timing during
    which other processes used the CPU is redone); one estimated at more than 10× the best time
    measured so far, or reached once the budget is spent, is skipped (its entry says why). Those
    within 50% of the fastest, and those the cost model expected to beat it, are then timed
    again in the opposite order, keeping each one's best, and again (up to twice more) while the
    two fastest are within 10% of each other.
    ``budget`` (default :data:`TUNE_BUDGET_SECONDS`) bounds the whole: a pass starts only
    while it lasts.
    """
    budget = TUNE_BUDGET_SECONDS if budget is None else budget
    rank = _weight_rank(operands[1])
    ranking = [entry for entry in _ranked(spec, rank) if weight_decline_reason(entry[2], operands[1], spec) is None]
    results: dict[str, float | str] = {}
    started = time.perf_counter()
    best = math.inf
    share = budget / (3 * max(len(ranking), 1))

    def timed(name, seconds_allowed):
        # a neighbour's burst during the timing gets it redone once, time allowing
        quiet_attempts = 2 if time.perf_counter() - started < budget / 2 else 1
        return time_backends_quietly([name], operands, spec, attempts=quiet_attempts, pause=_SETTLE_SECONDS,
                                     repeats=3, budget=seconds_allowed)[name]

    for estimate, _, name in ranking:
        if results and estimate > _SKIP_FACTOR * best:
            results[name] = f"skipped: estimated {_seconds(estimate)}, > {_SKIP_FACTOR:g}x the best measured"
            continue
        if results and time.perf_counter() - started > budget:
            results[name] = f"skipped: tuning budget of {budget:g} s spent"
            continue
        results[name] = timed(name, share)
        best = min(best, results[name])
    # Close contenders are timed again, in the opposite order, so that one unlucky pass does not
    # decide; while the two fastest stay within 10% of each other (where one pass's noise can
    # swap them), once more, as long as the budget lasts.
    estimates = {name: estimate for estimate, _, name in ranking}
    for rounds in range(3):
        # contenders: measured close to the best, or (first round) estimated faster than the best
        # measured time -- a backend the model expected to win that measured slow may have been
        # caught in a slow state of the machine, so it gets a second chance
        contenders = sorted((seconds, name) for name, seconds in results.items()
                            if isinstance(seconds, float) and (seconds <= _CONTENDER_FACTOR * best
                                                               or (rounds == 0 and estimates[name] < best)))
        if len(contenders) < 2 or time.perf_counter() - started > budget \
                or (rounds > 0 and contenders[1][0] > 1.1 * contenders[0][0]):
            break
        for _, name in contenders[::-1]:
            results[name] = min(results[name], timed(name, share))
        best = min(seconds for seconds in results.values() if isinstance(seconds, float))
    return results


def _fastest(results: dict) -> str:
    order = backends.backend_names()
    timed = [(seconds, order.index(name), name) for name, seconds in results.items()
             if isinstance(seconds, float) and name in order]
    return min(timed)[2]


def _tuned_choice(spec: ConvSpec, operands, layout: str) -> str:
    key = signature(spec, layout)
    entry = _tuned.get(key) or _disk_entries().get(key)
    if entry is not None and entry.get("backend") in backends.backend_names() \
            and decline_reason(entry["backend"], spec) is None \
            and weight_decline_reason(entry["backend"], operands[1], spec) is None:
        _tuned[key] = entry
        return entry["backend"]
    results = measure(spec, operands)
    entry = {"backend": _fastest(results), "seconds": results}
    with _lock:
        _tuned[key] = entry
    store_entries({key: entry})
    return entry["backend"]


# --------------------------------------------------------------------------------------------
# the persistent cache: one JSON file, atomically replaced, tagged with machine and versions


def cache_path() -> str:
    """Where autotuning results are kept: ``autotune.json`` in :data:`fastconv.config.cache_dir`."""
    return os.path.join(config.cache_dir, CACHE_FILE)


def atomic_write_json(path: str, document) -> None:
    """Write ``document`` to ``path`` so that readers only ever see a complete file.

    The text goes to a temporary file in the same directory, then ``os.replace`` swaps it in
    (atomic on POSIX and Windows): concurrent writers cannot interleave, the last one wins.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def describe_write_error(path, error: OSError) -> str:
    """What went wrong writing ``path``, in words: a parent that is a file is named as such (the
    OSError itself says "File exists" or "Not a directory", naming neither the path nor why)."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while ancestor and not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if os.path.exists(ancestor) and not os.path.isdir(ancestor):
        return f"{ancestor} is a file, not a directory"
    if os.path.isdir(path):
        return f"{path} is a directory"
    return f"{type(error).__name__}: {error.strerror or error}"


@contextlib.contextmanager
def _file_lock(path: str):
    """Serialise read-merge-write cycles between processes (best effort where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: os.replace still keeps the file whole; an update may be lost
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _warn_once(path: str, problem: str) -> None:
    with _lock:
        first = (path, problem) not in _warned
        _warned.add((path, problem))
    if first:
        warnings.warn(f"fastconv: autotuning cache {path}: {problem}; ignored (the next write replaces it)",
                      RuntimeWarning, stacklevel=4)


NO_DOCUMENT = object()  # what read_json returns when there is no document to use


def read_json(path: str, warn) -> object:
    """The JSON document in ``path``; :data:`NO_DOCUMENT` when it is missing, or (after
    ``warn(problem)``) when it cannot be read or parsed: a directory, no permission, binary garbage,
    truncated, nested too deeply for the parser (a RecursionError)."""
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (FileNotFoundError, NotADirectoryError):
        return NO_DOCUMENT
    except (OSError, ValueError, RecursionError) as error:
        warn(f"unreadable: {type(error).__name__}: {str(error)[:200]}")
        return NO_DOCUMENT


def is_seconds(value) -> bool:
    """A measured time as files hold it: a finite, non-negative int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _clean_entry(entry) -> dict | None:
    """A cache entry as the tuner writes it, numbers as floats; None when it is anything else."""
    if not isinstance(entry, dict) or not isinstance(entry.get("backend"), str):
        return None
    seconds = entry.get("seconds", {})
    if not isinstance(seconds, dict) or not all(isinstance(value, str) or is_seconds(value)
                                                for value in seconds.values()):
        return None
    return {"backend": entry["backend"],
            "seconds": {name: value if isinstance(value, str) else float(value) for name, value in seconds.items()}}


def read_cache(path: str | None = None) -> dict[str, dict]:
    """The tuning entries in the cache file; ``{}`` (with a warning) when it is missing, corrupt,
    from another machine or from other library versions. Malformed entries are dropped (with a
    warning); the next write replaces the file with the entries that were valid."""
    path = path or cache_path()
    document = read_json(path, lambda problem: _warn_once(path, problem))
    if document is NO_DOCUMENT:
        return {}
    if not isinstance(document, dict) or document.get("format") != _FORMAT \
            or document.get("version") != _FORMAT_VERSION or not isinstance(document.get("entries"), dict):
        _warn_once(path, "not a fastconv autotuning file of this version")
        return {}
    if document.get("machine") != cost.machine_key():
        _warn_once(path, "written on another machine or with other library versions")
        return {}
    entries = {key: _clean_entry(entry) for key, entry in document["entries"].items()}
    malformed = [key for key, entry in entries.items() if entry is None]
    if malformed:
        _warn_once(path, f"{len(malformed)} malformed entries, e.g. {malformed[0][:80]!r}")
    return {key: entry for key, entry in entries.items() if entry is not None}


def _disk_entries() -> dict[str, dict]:
    global _disk_loaded_from
    path = cache_path()
    if _disk_loaded_from != path:
        entries = read_cache(path)
        with _lock:
            for key, entry in entries.items():
                _tuned.setdefault(key, entry)
            _disk_loaded_from = path
    return _tuned


def store_entries(entries: dict[str, dict], path: str | None = None) -> None:
    """Merge ``entries`` into the cache file (lock, re-read, merge, atomic replace).

    A file that cannot be written (read-only home, full disk) costs a warning, never the call.
    """
    path = path or cache_path()
    try:
        with _lock, _file_lock(path):
            merged = read_cache(path)
            merged.update(entries)
            atomic_write_json(path, {"format": _FORMAT, "version": _FORMAT_VERSION,
                                     "machine": cost.machine_key(), "entries": merged})
    except OSError as error:
        warnings.warn(f"fastconv: could not write the autotuning cache {path}: {describe_write_error(path, error)}",
                      RuntimeWarning, stacklevel=3)


def clear_cache(*, disk: bool = False) -> bool:
    """Forget decisions and tuning results in memory (and the cache file too with ``disk=True``).

    Returns False (with a warning) when the file exists but could not be removed, else True.
    """
    global _disk_loaded_from
    with _lock:
        _decisions.clear()
        _ranks.clear()
        _weight_verdicts.clear()
        _tuned.clear()
        _disk_loaded_from = None
        if disk:
            path = cache_path()
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as error:
                warnings.warn(f"fastconv: could not remove the autotuning cache {path}: "
                              f"{describe_write_error(path, error)}", RuntimeWarning, stacklevel=2)
                return False
    return True


# --------------------------------------------------------------------------------------------
# explain


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return "unmodelled"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value * 1e9:.3g} ns"


@dataclass
class ExplainRow:
    """One backend's line of :class:`Explanation`."""

    name: str
    supported: bool
    reason: str  # why not, when not supported
    estimated_seconds: float | None
    measured_seconds: float | None = None
    note: str = ""  # e.g. why it was not measured


@dataclass
class Explanation:
    """What ``backend="auto"`` would do for one call, and why; ``repr`` prints it as a table."""

    spec: ConvSpec
    rows: list[ExplainRow]
    choice: str
    why: str
    constants_source: str
    rank: int | None = None
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        spec = self.spec
        lines = [f"conv2d input {spec.input_shape} weight {spec.weight_shape} stride {spec.stride} "
                 f"padding {spec.padding} dilation {spec.dilation} groups {spec.groups} {spec.dtype}"
                 + ("" if self.rank is None else f", kernel rank {self.rank}"),
                 f"{'backend':<11} {'supported':<40} {'estimated':>11} {'measured':>11}"]
        for row in self.rows:
            status = "yes" if row.supported else f"no: {row.reason}"
            if len(status) > 40:
                status = status[:37] + "..."
            estimated = "" if row.estimated_seconds is None else _seconds(row.estimated_seconds)
            measured = row.note if row.measured_seconds is None else _seconds(row.measured_seconds)
            mark = "  <- auto" if row.name == self.choice else ""
            lines.append(f"{row.name:<11} {status:<40} {estimated:>11} {measured:>11}{mark}")
        lines.append(f"auto picks {self.choice!r}: {self.why}")
        lines.append(f"cost constants: {self.constants_source}")
        return "\n".join(lines)

    __str__ = __repr__


def _shape_or_array(name, value):
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in value):
        return tuple(int(v) for v in value), None
    array = np.asarray(value)
    return array.shape, array


def explain(x_or_shape, weight_or_shape, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
            padding_mode="zeros", dtype=None, tune=False) -> Explanation:
    """Show how ``backend="auto"`` chooses for a call: every backend, supported or why not, its
    estimated time, its measured time if tuned, and the pick with its reason.

    Parameters
    ----------
    x_or_shape, weight_or_shape : array_like or tuple of int
        The operands of :func:`fastconv.conv2d`, or just their shapes. With arrays the kernels'
        rank is known (it decides whether ``separable`` pays); with shapes full rank is assumed.
    bias, stride, padding, dilation, groups, padding_mode
        As for :func:`fastconv.conv2d`.
    dtype : dtype, optional
        Compute dtype when only shapes are given (default float64, numpy's default).
    tune : bool
        Time every eligible backend now (on the arrays, or on random data of the shapes) and
        record the result in the autotuning cache.

    Returns
    -------
    Explanation
        ``.rows`` (one :class:`ExplainRow` per backend), ``.choice``, ``.why``; ``repr`` is a table.

    Examples
    --------
    >>> import fastconv
    >>> report = fastconv.explain((1, 3, 32, 32), (8, 3, 3, 3), padding=1, dtype="float32")
    >>> [row.name for row in report.rows][0]
    'naive'
    >>> print(repr(report).splitlines()[-2].startswith("auto picks"))
    True
    """
    x_shape, x = _shape_or_array("x", x_or_shape)
    w_shape, weight = _shape_or_array("weight", weight_or_shape)
    if len(x_shape) == 3:
        x_shape = (1,) + x_shape
        x = None if x is None else x[None]
    if x is not None and weight is not None:
        operand_dtypes = [x.dtype, weight.dtype] + ([] if bias is None else [np.asarray(bias).dtype])
        compute_dtype, _ = resolve_dtypes(*operand_dtypes)
    else:
        compute_dtype = np.dtype(dtype if dtype is not None else
                                 (x.dtype if x is not None else weight.dtype if weight is not None else np.float64))
        compute_dtype = resolve_dtypes(compute_dtype)[0]
    spec = make_spec(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, dtype=compute_dtype)
    spec = backend_spec(spec)
    if weight is not None:
        weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    rank = _weight_rank(weight)

    measured: dict = {}
    if tune:
        rng = np.random.default_rng(0)
        x_run = x if x is not None else rng.standard_normal(x_shape)
        w_run = weight if weight is not None else rng.standard_normal(w_shape).astype(compute_dtype)
        full_spec = make_spec(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, padding_mode=padding_mode, dtype=compute_dtype)
        x_run, _ = backend_input(np.ascontiguousarray(x_run, dtype=compute_dtype), full_spec)
        operands = (x_run, np.ascontiguousarray(w_run, dtype=compute_dtype),
                    None if bias is None else np.ascontiguousarray(bias, dtype=compute_dtype))
        measured = measure(spec, operands)
        entry = {"backend": _fastest(measured), "seconds": measured}
        _tuned[signature(spec)] = entry
        store_entries({signature(spec): entry})
    else:
        entry = _tuned.get(signature(spec)) or _disk_entries().get(signature(spec))
        if entry is not None:
            measured = entry.get("seconds", {})

    rows = []
    for name in backends.backend_names():
        reason = decline_reason(name, spec) or weight_decline_reason(name, weight, spec)
        if name == "cuda" and reason is None:
            reason = "host arrays: auto picks cuda only for device arrays or via use_backend('cuda')"
            estimated = None
        else:
            estimated = None if reason is not None else _estimate(name, spec, rank)
        value = measured.get(name)
        rows.append(ExplainRow(name, reason is None, reason or "", estimated,
                               value if isinstance(value, float) else None,
                               value if isinstance(value, str) else ""))

    candidates = [row for row in rows if row.supported and (row.name != "cuda")]
    if not candidates:
        raise ValueError(f"no backend can run this convolution: {spec}")
    timed = {name: seconds for name, seconds in measured.items() if isinstance(seconds, float)
             and any(row.name == name for row in candidates)}
    if timed and (tune or config.autotune):
        choice = _fastest(timed)
        why = f"fastest measured ({_seconds(timed[choice])})"
    else:
        choice = _model_choice(spec, weight)
        estimates = sorted((row.estimated_seconds, row.name) for row in candidates)
        runner_up = [f"{name} {_seconds(seconds)}" for seconds, name in estimates if name != choice][:1]
        chosen = next(row for row in candidates if row.name == choice)
        why = f"lowest estimated time ({_seconds(chosen.estimated_seconds)}"
        why += f"; next best {runner_up[0]})" if runner_up else "; the only candidate)"
        if timed:
            why += "; measurements above are not used unless autotuning is on"
    return Explanation(spec, rows, choice, why, cost.load_constants()[1], rank)


# --------------------------------------------------------------------------------------------
# calibration and the `fastconv tune` command


def _calibration_grid():
    """(input shape, weight shape, conv2d keywords, dtype, rank-1 weights?) covering every work term."""
    grid = []
    for dtype in ("float32", "float64"):
        grid += [
            ((1, 1, 8, 8), (1, 1, 3, 3), {}, dtype, True),
            ((1, 4, 16, 16), (4, 4, 3, 3), {"padding": 1}, dtype, False),
            ((1, 32, 28, 28), (32, 32, 3, 3), {"padding": 1}, dtype, False),
            ((1, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}, dtype, False),
            ((1, 64, 28, 28), (128, 64, 1, 1), {}, dtype, False),
            ((1, 32, 32, 32), (32, 32, 5, 5), {"padding": 2}, dtype, False),
            ((1, 1, 256, 256), (1, 1, 5, 5), {"padding": "same"}, dtype, True),
            ((1, 1, 256, 256), (1, 1, 15, 15), {"padding": "same"}, dtype, True),
            ((1, 32, 56, 56), (32, 1, 3, 3), {"padding": 1, "groups": 32}, dtype, False),
        ]
    grid += [
        ((1, 3, 112, 112), (16, 3, 7, 7), {"padding": 3, "stride": 2}, "float32", False),
        ((2, 16, 24, 24), (16, 16, 3, 3), {"padding": 2, "dilation": 2}, "float32", False),
        ((1, 64, 32, 32), (64, 64, 3, 3), {"padding": 1, "stride": 2}, "float32", False),
        ((1, 64, 28, 28), (64, 1, 5, 5), {"padding": 2, "groups": 64, "stride": 2}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 3, 3), {"padding": "same"}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 31, 31), {"padding": "same"}, "float32", True),
        ((1, 1, 512, 512), (1, 1, 31, 31), {"padding": "same"}, "float32", False),
        ((1, 1, 256, 256), (1, 1, 63, 63), {"padding": "same"}, "float32", False),
        ((1, 8, 64, 64), (8, 8, 11, 11), {"padding": 5}, "float32", False),
        ((4, 16, 32, 32), (32, 16, 3, 3), {"padding": 1}, "float32", False),
        ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, "float32", False),
        ((1, 128, 28, 28), (128, 128, 3, 3), {"padding": 1}, "float32", False),
        ((1, 256, 14, 14), (256, 256, 1, 1), {}, "float32", False),
        ((1, 32, 32, 32), (64, 8, 3, 3), {"padding": 1, "groups": 4}, "float32", False),
        ((1, 1, 1024, 1024), (1, 1, 9, 9), {"padding": "same"}, "float32", False),
        ((1, 1, 1024, 1024), (1, 1, 9, 9), {"padding": "same"}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 5, 5), {"padding": "same", "stride": 2}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 7, 7), {"padding": "same", "dilation": 2}, "float32", False),
        ((1, 3, 256, 256), (8, 3, 5, 5), {"padding": 2}, "float32", False),
        ((1, 1, 256, 256), (1, 1, 63, 63), {"padding": "same"}, "float32", True),
        ((1, 1, 512, 512), (1, 1, 15, 15), {"padding": "same"}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 31, 31), {"padding": "same"}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 3, 3), {"padding": "same"}, "float32", True),
        ((1, 3, 96, 96), (64, 3, 9, 9), {"padding": 4}, "float32", False),
        ((1, 64, 33, 33), (64, 64, 3, 3), {"padding": 4, "dilation": 4}, "float32", False),
        # small images under large rank-1 kernels, and many small ones: separable's SVD terms
        ((1, 1, 32, 32), (1, 1, 31, 31), {"padding": "same"}, "float32", True),
        ((1, 1, 64, 64), (1, 1, 63, 63), {"padding": "same"}, "float32", True),
        ((1, 1, 64, 64), (1, 1, 101, 101), {"padding": "same"}, "float32", True),
        ((1, 16, 32, 32), (16, 1, 15, 15), {"padding": 7, "groups": 16}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 5, 5), {"padding": "same"}, "float32", True),
        ((1, 1, 512, 512), (1, 1, 11, 11), {"padding": "same", "stride": 2}, "float32", False),
        # image filters and small-input layers near the boundaries where two backends trade places
        # (direct vs fft vs separable; fft vs im2col on few input channels)
        ((1, 1, 512, 512), (1, 1, 9, 9), {"padding": "same"}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 63, 63), {"padding": "same"}, "float32", True),
        ((1, 1, 1536, 1536), (1, 1, 5, 5), {"padding": "same"}, "float32", False),
        ((1, 1, 1536, 1536), (1, 1, 5, 5), {"padding": "same"}, "float32", True),
        ((1, 1, 1536, 1536), (1, 1, 9, 9), {"padding": "same"}, "float32", False),
        ((1, 1, 1536, 1536), (1, 1, 15, 15), {"padding": "same"}, "float32", False),
        ((1, 1, 3072, 3072), (1, 1, 5, 5), {"padding": "same"}, "float32", True),  # beyond the caches
        ((1, 3, 128, 128), (32, 3, 11, 11), {"padding": 5, "stride": 2}, "float32", False),
        ((1, 3, 384, 384), (8, 3, 7, 7), {"padding": 3}, "float32", False),
        ((1, 128, 14, 14), (128, 16, 3, 3), {"padding": 1, "groups": 8}, "float32", False),
    ]
    return grid


def _calibration_operands(x_shape, w_shape, dtype, rank_one, rng):
    x = rng.standard_normal(x_shape).astype(dtype)
    if rank_one:
        column = rng.standard_normal(w_shape[:2] + (w_shape[2], 1))
        row = rng.standard_normal(w_shape[:2] + (1, w_shape[3]))
        weight = (column * row).astype(dtype)
    else:
        weight = rng.standard_normal(w_shape).astype(dtype)
    return x, weight


def calibrate(names=None, *, grid=None, max_seconds_per_call: float = 0.5, budget_per_problem: float = 1.5,
              progress=print) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Time each backend on a small grid and fit its cost constants (see :mod:`fastconv.cost`).

    ``grid`` defaults to :func:`_calibration_grid`. Calls the shipped constants estimate above
    ``max_seconds_per_call`` are skipped (``naive`` on large problems). Returns the fitted
    constants (:func:`fastconv.cost.save_constants` stores them) and the samples they were
    fitted to, ``{backend: [(spec, rank, seconds), ...]}``.
    """
    from fastconv.geometry import pad_input

    rng = np.random.default_rng(0)
    names = names or [name for name in backends.backend_names()
                      if name in cost.FORMULAS and backends.unavailable_reason(name) is None]
    samples = {name: [] for name in names}
    for x_shape, w_shape, keywords, dtype, rank_one in grid or _calibration_grid():
        full = make_spec(x_shape, w_shape, dtype=dtype, **keywords)
        x, weight = _calibration_operands(x_shape, w_shape, dtype, rank_one, rng)
        spec = full.zero_padded() if full.padding_mode != "zeros" else full
        x = pad_input(x, full) if full.padding_mode != "zeros" else x
        rank = kernel_rank(weight)
        runnable = []
        for name in names:
            if decline_reason(name, spec) is not None or weight_decline_reason(name, weight, spec) is not None:
                continue
            if cost.estimate_seconds(name, spec, rank=rank, constants=cost.DEFAULT_CONSTANTS) > max_seconds_per_call:
                continue
            runnable.append(name)
        for name, seconds in time_backends_quietly(runnable, (x, weight, None), spec, budget=budget_per_problem,
                                                   passes=2).items():
            samples[name].append((spec, rank, seconds))
            progress(f"  {name:<10} {str(x_shape):<18} {str(w_shape):<16} {dtype:<8} {_seconds(seconds):>10}")
    fitted = {}
    for name, rows in samples.items():
        if len(rows) >= 2:
            fitted[name] = cost.fit_constants(name, rows, cost.DEFAULT_CONSTANTS.get(name), module=backends.get(name))
            errors = sorted(abs(cost.estimate_seconds(name, spec, rank=rank, constants=fitted, module=backends.get(name),
                                                      threads=cost.DEFAULT_THREADS) / seconds - 1)
                            for spec, rank, seconds in rows)
            progress(f"{name}: fitted on {len(rows)} problems; estimate off by {100 * errors[len(errors) // 2]:.0f}% "
                     f"(median), {100 * errors[-1]:.0f}% (worst)")
    return fitted, samples


def main(argv=None) -> int:
    """``fastconv tune``: calibrate the cost model, show or clear the autotuning cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="fastconv tune", description=main.__doc__)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def add_arguments(parser) -> None:
    """Add ``fastconv tune``'s options to an argparse parser (the CLI's subcommand uses this)."""
    parser.add_argument("--calibrate", action="store_true",
                        help="time each backend on a small grid, fit the cost model's constants for this machine "
                             "and store them in the cache directory")
    parser.add_argument("--backends", nargs="+", metavar="NAME", help="backends to calibrate (default: all)")
    parser.add_argument("--show", action="store_true", help="print the cost constants in use and the cache entries")
    parser.add_argument("--clear", action="store_true", help="delete the autotuning cache file")
    parser.set_defaults(run=run_command)


def run_command(args) -> int:
    status = 0
    if args.clear:
        if clear_cache(disk=True):
            print(f"removed {cache_path()}")
        else:
            status = 1
    if args.calibrate:
        print(f"calibrating the cost model on this machine ({config.threads} threads)...")
        fitted, _ = calibrate(args.backends)
        path = cost.save_constants({**cost.current_constants(), **fitted}, config.threads)
        clear_cache()
        for name, table in fitted.items():
            print(f"{name:<10} " + ", ".join(f"{term}={value:.3g}" for term, value in sorted(table.items())))
        if path is None:
            status = 1  # save_constants warned why
        else:
            print(f"wrote {path}")
    if args.show or not (args.calibrate or args.clear):
        constants, source = cost.load_constants()
        print(f"cost constants ({source}):")
        for name, table in constants.items():
            print(f"  {name:<10} " + ", ".join(f"{term}={value:.3g}" for term, value in sorted(table.items())))
        entries = read_cache()
        print(f"autotuning cache {cache_path()}: {len(entries)} entries")
        for key, entry in sorted(entries.items()):
            print(f"  {key}: {entry['backend']}")
    return status
