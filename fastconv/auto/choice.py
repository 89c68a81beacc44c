"""How ``backend="auto"`` chooses: hard rules, the cost model, and measurement when asked.

The choice for one call, in order:

1. Device arrays (``__cuda_array_interface__``) go to the GPU backend; host arrays never do
   unless :func:`fastconv.use_backend` asks for it.
2. A backend that :func:`fastconv.use_backend` prefers runs when it can.
3. With autotuning on (:func:`autotune`, ``FASTCONV_AUTOTUNE=1`` or ``conv2d(..., tune=True)``)
   the first call of each problem signature times every eligible backend and remembers the
   fastest, in memory and in a JSON file in :data:`fastconv.config.cache_dir`, so later processes
   on the same machine reuse it (as FFTW's wisdom and cuDNN's benchmark mode do).
4. Otherwise the backend with the lowest time estimated by :mod:`fastconv.auto.cost`, plus,
   for a backend on another thread pool than the previous call's, what switching pools costs
   (:mod:`fastconv.auto.pool_switches`).

Only backends that are available and do not decline the call (their ``supports(spec)``) are ever
candidates. Ties go to the backend registered first, so the choice is deterministic. Decisions
are cached per problem signature, so auto costs a dictionary look-up on repeated calls.

:func:`fastconv.explain` shows the whole reasoning as a table.

Examples
--------
>>> import fastconv
>>> report = fastconv.explain((1, 1, 64, 64), (1, 1, 3, 3), padding="same")
>>> report.choice in [row.name for row in report.rows if row.supported]
True
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from fastconv import backends, config
from fastconv.auto import cost, timing, tuning_cache
from fastconv.auto.constants import constants_token
from fastconv.auto.pool_switches import switch_seconds
from fastconv.auto.timing import format_seconds
from fastconv.thread_pools import reinitialise_after_fork
from fastconv.geometry import ConvSpec

__all__ = ["autotune", "choose", "choose_for_call", "clear_cache", "remember_call", "remembered_call", "decline_reason", "estimate", "fastest", "kernel_rank", "measure",
           "model_choice", "weight_decline_reason", "weight_rank", "TUNE_BUDGET_SECONDS"]

#: Soft bound on the wall time one autotuning measurement spends (all backends together).
TUNE_BUDGET_SECONDS = 2.0
# A backend whose estimate is this many times the best measured time is not worth timing.
_SKIP_FACTOR = 10.0
# Backends measured within this factor of the fastest are timed again (in the opposite order).
_CONTENDER_FACTOR = 1.5

_lock = reinitialise_after_fork(threading.RLock())
_decisions: dict = {}  # (spec, threads, constants token) -> ranked candidates
_ranks: dict = {}  # weight fingerprint -> numerical rank
_weight_verdicts: dict = {}  # (backend, spec, weight fingerprint) -> supports_weight's answer


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


def weight_rank(weight: np.ndarray | None) -> int | None:
    if weight is None:
        return None
    key = _fingerprint(weight)
    rank = _ranks.get(key)
    return rank if rank is not None else _remember(_ranks, key, kernel_rank(weight))


def _weight_dependent(name: str) -> bool:
    """True for backends whose fitness and cost depend on the weight values (their ``supports_weight``)."""
    return hasattr(backends.get(name), "supports_weight")


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
    """The host backends that can run ``spec``; the reference loops only when no other can."""
    names = [name for name in backends.backend_names()
             if backends.placement(name) == "host" and decline_reason(name, spec) is None]
    compiled = [name for name in names if not backends.is_reference(name)]
    return compiled or names


def estimate(name: str, spec: ConvSpec, rank: int | None) -> float:
    module = backends.get(name)
    return cost.estimate_seconds(name, spec, rank=rank, module=module)


def _ranked(spec: ConvSpec, rank: int | None) -> list[tuple[float, int, str]]:
    """(estimated seconds, registration index, name) of every eligible host backend, best first."""
    order = backends.backend_names()
    return sorted((estimate(name, spec, rank), order.index(name), name) for name in _host_candidates(spec))


def model_choice(spec: ConvSpec, weight: np.ndarray | None, previous_pool: str | None = None) -> str:
    """The backend with the lowest estimated time for ``spec`` (and this weight, where it matters),
    counting the cost of switching from thread pool ``previous_pool`` (:mod:`fastconv.auto.pool_switches`)."""
    return _model_choice(spec, weight, previous_pool)[0]


def _model_choice(spec: ConvSpec, weight: np.ndarray | None, previous_pool: str | None = None) -> tuple[str, bool]:
    """(the model's pick, whether the weight's values took part in it)."""
    key = (spec, config.threads, constants_token())
    ranking = _decisions.get(key)
    if ranking is None:
        # ranked per spec with weight-dependent backends at their best case (rank 1, accepted):
        # the weight only needs looking at when such a backend comes out on top
        ranking = _remember(_decisions, key, _ranked(spec, 1))
    best, consulted = None, False
    for seconds, index, name in ranking:
        if best is not None and (seconds, index) >= best[:2]:
            break  # the rest are no better: rescoring below only ever raises an estimate
        if _weight_dependent(name):
            consulted = True
            if weight_decline_reason(name, weight, spec) is not None:
                continue
            seconds = estimate(name, spec, weight_rank(weight))
        seconds += switch_seconds(previous_pool, name)
        if best is None or (seconds, index) < best[:2]:
            best = (seconds, index, name)
    if best is None:
        raise ValueError(f"no backend can run this convolution: {spec}")
    return best[2], consulted


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
        True for GPU arrays: only a GPU backend (``placement == "device"``) can take them.
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
    return choose_for_call(spec, weight, preferred=preferred, on_device=on_device, tune=tune, operands=operands,
                           layout=layout)[0]


def choose_for_call(spec: ConvSpec, weight: np.ndarray | None = None, *, preferred: str | None = None,
                    on_device: bool = False, tune: bool | None = None, operands=None,
                    layout: str = "C", previous_pool: str | None = None) -> tuple[str, bool]:
    """:func:`choose`'s pick, and whether it depends on the weight's values (not just on the spec).

    ``previous_pool`` is the thread pool the previous call ran on
    (:func:`fastconv.thread_pools.last_pool`): the model charges a backend on another pool the
    switch (:mod:`fastconv.auto.pool_switches`), so a close call stays on the pool that is awake.
    A call that repeats a problem whose pick did not depend on the weight can reuse the pick;
    :func:`fastconv.conv2d` keeps such picks per call signature and previous pool (see
    :func:`remembered_call`).
    """
    if on_device:
        device = backends.device_backend()  # ValueError (why) when no GPU backend is available
        reason = device.supports(spec)
        if reason is not None:
            raise ValueError(f"arrays in GPU memory need the {device.name!r} backend, which cannot run this call: "
                             f"{reason}")
        return device.name, False
    if preferred is not None and decline_reason(preferred, spec) is None \
            and weight_decline_reason(preferred, weight, spec) is None:
        return preferred, _weight_dependent(preferred)
    if tune is None:
        tune = config.autotune
    if tune and operands is not None:
        name = _tuned_choice(spec, operands, layout)
        return name, _weight_dependent(name)
    return _model_choice(spec, weight, previous_pool)


# --------------------------------------------------------------------------------------------
# remembered calls: what conv2d validated and chose for a call signature

_calls: dict = {}  # call signature (shapes, dtypes, layout, arguments, settings) -> conv2d's plan


def remembered_call(key):
    """What :func:`remember_call` kept for call signature ``key``, or None."""
    return _calls.get(key)


def remember_call(key, plan) -> None:
    """Keep ``plan`` for call signature ``key`` until :func:`clear_cache` (at most 1024 signatures)."""
    _remember(_calls, key, plan)


# --------------------------------------------------------------------------------------------
# measurement


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
    rank = weight_rank(operands[1])
    ranking = [entry for entry in _ranked(spec, rank) if weight_decline_reason(entry[2], operands[1], spec) is None]
    results: dict[str, float | str] = {}
    started = time.perf_counter()
    best = math.inf
    share = budget / (3 * max(len(ranking), 1))

    def timed(name, seconds_allowed):
        # a neighbour's burst during the timing gets it redone once, time allowing
        quiet_attempts = 2 if time.perf_counter() - started < budget / 2 else 1
        return timing.time_backends_quietly([name], operands, spec, attempts=quiet_attempts, pause=timing.SETTLE_SECONDS,
                                     repeats=3, budget=seconds_allowed)[name]

    for estimate, _, name in ranking:
        if results and estimate > _SKIP_FACTOR * best:
            results[name] = f"skipped: estimated {format_seconds(estimate)}, > {_SKIP_FACTOR:g}x the best measured"
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


def fastest(results: dict) -> str:
    order = backends.backend_names()
    timed = [(seconds, order.index(name), name) for name, seconds in results.items()
             if isinstance(seconds, float) and name in order]
    return min(timed)[2]


def _tuned_choice(spec: ConvSpec, operands, layout: str) -> str:
    key = tuning_cache.signature(spec, layout)
    entry = tuning_cache.lookup(key)
    if entry is not None and entry.get("backend") in backends.backend_names() \
            and decline_reason(entry["backend"], spec) is None \
            and weight_decline_reason(entry["backend"], operands[1], spec) is None:
        return entry["backend"]
    results = measure(spec, operands)
    entry = {"backend": fastest(results), "seconds": results}
    tuning_cache.remember(key, entry)
    return entry["backend"]


def clear_cache(*, disk: bool = False) -> bool:
    """Forget decisions and tuning results in memory (and the cache file too with ``disk=True``).

    Returns False (with a warning) when the file exists but could not be removed, else True.
    """
    with _lock:
        _decisions.clear()
        _ranks.clear()
        _weight_verdicts.clear()
        _calls.clear()
    return tuning_cache.forget(disk=disk)
