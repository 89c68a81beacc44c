"""The cost model's constants: fitted on this machine, or the shipped ones scaled to its speeds.

Each backend ships ``COST_CONSTANTS``, seconds per unit of each of its cost terms
(``float64_factor``: how much more a float64 problem's work costs than a float32 one's), all
fitted by :func:`fastconv.auto.calibrate.calibrate` on one machine, a 2-core AMD EPYC VM (AVX-512;
numpy 2.4 / OpenBLAS, numba 0.68, pyFFTW 0.15), at 2 threads under an exclusive CPU lock (``separable``'s SVD
terms, which its grid does not exercise, by timing ``factor_kernels`` on 3×3 to 101×101 stacks). :data:`REFERENCE_MACHINE` holds that machine's probe figures (the median of three). When
a backend's speed changes, refit all on one machine and paste the constants and that machine's
probe figures here (``fastconv tune --calibrate`` prints both; see docs/performance/auto.md).

The constants ``backend="auto"`` uses, for each backend, are the first of:

1. **fitted** on this machine by ``fastconv tune --calibrate``: ``cost-constants.json`` in
   :data:`fastconv.config.cache_dir`, tagged with the machine (:func:`machine_key`); a file
   fitted elsewhere, by other library versions, or damaged is ignored with a warning;
2. **probed**: the shipped constants scaled to this machine. The first time ``auto`` needs
   constants, the cost probe (:mod:`fastconv.auto.probe`, about a second plus a one-off
   compilation) measures this machine's speed at each resource of :data:`RESOURCES`, and what
   switching between thread pools costs (:mod:`fastconv.auto.pool_switches`); each constant is multiplied by
   (the reference machine's speed / this machine's speed) at the resource its term uses
   (:func:`term_resource`), less the spread two probes of one machine show
   (:func:`resource_factors`). So a machine three times as fast at GEMM halves the constants of
   the GEMM terms and leaves the others alone. The measurements are kept in
   ``cost-probe.json`` in the cache directory, per machine (:func:`machine_key`) and thread
   count, so later processes read them instead of probing: processes that start at once take a
   file lock, one probes, the others wait and read its result. A damaged file is a warning and a
   new probe; a file from another machine or other library versions is probed again quietly;
   ``fastconv tune --probe`` (or :func:`rerun_probe`) measures again;
3. **shipped**, as they are: when the probe is off (``FASTCONV_COST_PROBE=0``,
   :data:`fastconv.config.cost_probe`) or failed.

Nothing is probed in a process that never uses ``auto`` (explicit backends, ``import fastconv``).
:func:`constants_source` (shown by :func:`fastconv.explain` and ``fastconv tune --show``) says
which of the three is in use.

Examples
--------
>>> from fastconv import backends
>>> constants_for("naive", backends.get("naive"))["mac"] > 0
True
>>> reference = REFERENCE_MACHINE["quantities"]
>>> three_times_the_gemm = dict(reference, gemm=3 * reference["gemm"])
>>> scaled = scale_constants({"gemm_flop": 4e-12, "mac": 1e-10}, three_times_the_gemm, reference)
>>> round(scaled["gemm_flop"], 15), scaled["mac"]
(2e-12, 1e-10)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
import warnings

from fastconv import config
from fastconv.cache_files import NO_DOCUMENT, describe_write_error, file_lock, is_seconds, machine_key, read_json
from fastconv.cache_files import write_json_atomically
from fastconv.thread_pools import reinitialise_after_fork

__all__ = ["DEFAULT_THREADS", "CONSTANTS_FILE", "PROBE_FILE", "PROBE_SPREAD", "REFERENCE_MACHINE", "RESOURCES", "machine_key",
           "constants_for", "constants_source", "constants_threads", "constants_token", "fitted_constants", "format_quantity", "probe_path",
           "probe_result", "probe_threads", "rerun_probe", "resource_factors", "save_constants", "scale_constants",
           "shipped_constants", "term_resource"]

CONSTANTS_FILE = "cost-constants.json"
_FORMAT = "fastconv-cost-constants"
_FORMAT_VERSION = 1

PROBE_FILE = "cost-probe.json"
_PROBE_FORMAT = "fastconv-cost-probe"
_PROBE_FORMAT_VERSION = 1
# How long a process waits for another one's probe before probing itself.
_PROBE_LOCK_WAIT_SECONDS = 30.0

#: Threads the shipped constants were measured with: compute terms scale with min(threads, this) / this.
DEFAULT_THREADS = 2

#: The resources a cost term can use, with what the probe measures for each and its unit (every
#: quantity is a rate: higher is faster). See :mod:`fastconv.auto.probe` for how.
RESOURCES = {
    "gemm": ("BLAS float32 matrix products", "flop/s"),
    "fft": ("FFTW real 2-D transforms", "flop/s"),
    "memory": ("a streaming pass over 2 x 32 MiB", "B/s"),
    "compute": ("numba vectorised multiply-adds, all threads", "mult-add/s"),
    "serial_compute": ("numba vectorised multiply-adds, one thread", "mult-add/s"),
    "call": ("Python calls of a numba function", "call/s"),
}

#: The cost probe's measurements (:mod:`fastconv.auto.probe`) on the machine the shipped
#: constants were fitted on, at ``threads`` threads: the constants are scaled by these divided by
#: this machine's.
REFERENCE_MACHINE = {
    "name": "2-core AMD EPYC virtual machine (AVX-512); numpy 2.4 / OpenBLAS, numba 0.68, pyFFTW 0.15",
    "threads": DEFAULT_THREADS,
    "quantities": {"gemm": 1.65e11, "fft": 4.11e10, "memory": 9.98e10, "compute": 3.46e10,
                   "serial_compute": 2.05e10, "call": 6.91e6},
}

_loaded: dict | None = None  # what is in use; see _load
_lock = reinitialise_after_fork(threading.RLock())
_generations = itertools.count(1)  # numbers each _load, for constants_token


def probe_threads() -> int:
    """The threads the cost probe measures with: :data:`fastconv.config.threads`, at most the cores."""
    return max(min(config.threads, os.cpu_count() or 1), 1)


def format_quantity(resource: str, value: float) -> str:
    """``value`` of ``resource`` in words with an SI prefix.

    >>> format_quantity("gemm", 8.24e10)
    '82.4 Gflop/s'
    """
    unit = RESOURCES[resource][1]
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


# --------------------------------------------------------------------------------------------
# scaling the shipped constants


def term_resource(term: str, declared: dict | None = None) -> str | None:
    """The resource (a key of :data:`RESOURCES`) whose speed cost term ``term`` scales with.

    A backend's ``COST_RESOURCES`` (``declared``: term -> resource) wins; otherwise the name
    decides: ``call`` or a name ending in ``_call`` -> ``call`` (per-call overhead); a name ending
    in ``byte`` -> ``memory``; containing ``gemm`` -> ``gemm``; containing ``fft`` -> ``fft``;
    anything else (multiply-adds, per-tile and per-row work of compiled kernels) -> ``compute``.
    ``float64_factor`` is a ratio, not a time: None (never scaled).

    >>> [term_resource(term) for term in ("call", "gemm_call", "unfold_byte", "gemm_flop", "fft_flop", "mac")]
    ['call', 'call', 'memory', 'gemm', 'fft', 'compute']
    >>> term_resource("piece", {"piece": "call"})
    'call'
    """
    if term == "float64_factor":
        return None
    if declared and term in declared:
        return declared[term]
    if term == "call" or term.endswith("_call"):
        return "call"
    if term.endswith("byte"):
        return "memory"
    if "gemm" in term:
        return "gemm"
    if "fft" in term:
        return "fft"
    return "compute"


#: How far apart two probes of one machine measure a resource: three probes of one 2-vCPU virtual
#: machine within an hour measured BLAS at 107-165 Gflop/s, memory at 72-144 GB/s.
PROBE_SPREAD = 1.5


def resource_factors(quantities: dict, reference: dict | None = None) -> dict[str, float]:
    """Per resource, the factor the constants of its terms are multiplied by: about reference / here.

    A ratio within :data:`PROBE_SPREAD` of 1 is noise and counts as 1 (rescaling on noise would
    swing picks between near-equal backends from one probe to the next); a larger one is shrunk
    by that spread (3× faster: constants halved). ``reference`` defaults to
    :data:`REFERENCE_MACHINE`'s quantities; a resource missing from either side keeps factor 1.

    >>> reference = REFERENCE_MACHINE["quantities"]
    >>> factors = resource_factors(dict(reference, gemm=1.2 * reference["gemm"], memory=reference["memory"] / 3))
    >>> round(factors["gemm"], 3), round(factors["memory"], 3), factors["fft"]
    (1.0, 2.0, 1.0)
    """
    reference = REFERENCE_MACHINE["quantities"] if reference is None else reference
    spread = math.log(PROBE_SPREAD)
    factors = {}
    for resource in RESOURCES:
        if resource not in quantities or resource not in reference:
            factors[resource] = 1.0
            continue
        ratio = math.log(reference[resource] / quantities[resource])
        factors[resource] = math.exp(math.copysign(max(abs(ratio) - spread, 0.0), ratio))
    return factors


def scale_constants(table: dict, quantities: dict, reference: dict | None = None,
                    declared: dict | None = None) -> dict[str, float]:
    """``table`` (a backend's constants) scaled from the reference machine to one of ``quantities``.

    Each constant is multiplied by the :func:`resource_factors` of its term's resource
    (:func:`term_resource`, with the backend's ``COST_RESOURCES`` as ``declared``).
    """
    factors = resource_factors(quantities, reference)
    return {term: value * factors.get(term_resource(term, declared), 1.0) for term, value in table.items()}


# --------------------------------------------------------------------------------------------
# constants fitted on this machine


def constants_path() -> str:
    """Where fitted constants are kept: ``cost-constants.json`` in :data:`fastconv.config.cache_dir`."""
    return os.path.join(config.cache_dir, CONSTANTS_FILE)


def _constants_from(document) -> tuple[dict, int]:
    """(constants, threads) of a cost-constants document; ValueError saying what is wrong with it."""
    if not isinstance(document, dict) or document.get("format") != _FORMAT \
            or document.get("version") != _FORMAT_VERSION:
        raise ValueError("not a fastconv cost-constants file of this version")
    if document.get("machine") != machine_key():
        raise ValueError("fitted on another machine or other library versions")
    threads, tables = document.get("threads"), document.get("constants")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"'threads' must be a positive integer, not {threads!r:.60}")
    if not isinstance(tables, dict):
        raise ValueError(f"'constants' must be an object, not {type(tables).__name__}")
    constants = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"constants of {name!r:.40} must be an object, not {type(table).__name__}")
        for term, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"constant {name!r:.40}.{term!r:.40} must be a finite number >= 0, "
                                 f"not {value!r:.60}")
        constants[name] = {term: float(value) for term, value in table.items()}
    return constants, threads


def _load_fitted(path: str) -> tuple[dict, int]:
    def warn(problem):
        warnings.warn(f"fastconv: ignoring cost constants in {path} ({problem}); using the shipped defaults. "
                      f"Run `fastconv tune --calibrate` to refit them.", RuntimeWarning, stacklevel=6)

    document = read_json(path, warn)
    if document is not NO_DOCUMENT:
        try:
            return _constants_from(document)
        except ValueError as error:
            warn(error)
    return {}, DEFAULT_THREADS


# --------------------------------------------------------------------------------------------
# the probe's measurements


def probe_path() -> str:
    """Where the cost probe's measurements are kept: ``cost-probe.json`` in :data:`fastconv.config.cache_dir`."""
    return os.path.join(config.cache_dir, PROBE_FILE)


def _is_rate(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _clean_probe_entry(entry) -> dict | None:
    """A probe entry as :func:`_measure` writes it, numbers as floats; None when it is anything else."""
    if not isinstance(entry, dict) or not isinstance(entry.get("date"), str) or not is_seconds(entry.get("seconds")):
        return None
    quantities = entry.get("quantities")
    if not isinstance(quantities, dict) or not quantities \
            or not all(resource in RESOURCES and _is_rate(value) for resource, value in quantities.items()):
        return None
    switches = entry.get("switches", {})  # (what switching thread pools costs; files from before lack it)
    if not isinstance(switches, dict) or not all(isinstance(pair, str) and pair.count(">") == 1 and (
            value == 0 or _is_rate(value)) and value < 1 for pair, value in switches.items()):
        return None
    return {"date": entry["date"], "seconds": float(entry["seconds"]),
            "quantities": {resource: float(value) for resource, value in quantities.items()},
            "switches": {pair: float(value) for pair, value in switches.items()}}


def _probe_entries(document, warn) -> dict[str, dict]:
    """This machine's valid entries (thread count as text -> entry) of a probe document; a
    document or entry that is not what the probe writes costs ``warn(problem)``."""
    if document is NO_DOCUMENT:
        return {}
    if not isinstance(document, dict) or document.get("format") != _PROBE_FORMAT \
            or document.get("version") != _PROBE_FORMAT_VERSION or not isinstance(document.get("entries"), dict) \
            or not isinstance(document.get("machine"), dict):
        warn("not a fastconv cost-probe file of this version")
        return {}
    if document["machine"] != machine_key():
        return {}  # measured on another machine or with other library versions: measure again, quietly
    entries = {}
    for key, raw in document["entries"].items():
        entry = _clean_probe_entry(raw)
        if entry is None or not key.isdigit() or int(key) < 1:
            warn(f"its entry {key[:20]!r} is not one the probe writes")
            continue
        entries[key] = entry
    return entries


def _measure(threads: int) -> dict:
    from fastconv.auto import probe

    started = time.perf_counter()
    quantities = probe.measure(threads)
    switches = probe.measure_switches(threads)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 3), "quantities": quantities, "switches": switches}


def _store_probe(path: str, threads: int, entry: dict) -> None:
    """Merge ``entry`` into the probe file (call with its lock held); a warning when it cannot be written."""
    entries = _probe_entries(read_json(path, lambda problem: None), lambda problem: None)
    entries[str(threads)] = entry
    try:
        write_json_atomically(path, {"format": _PROBE_FORMAT, "version": _PROBE_FORMAT_VERSION,
                                     "machine": machine_key(), "entries": entries})
    except OSError as error:
        warnings.warn(f"fastconv: could not keep the cost probe's measurements in {path}: "
                      f"{describe_write_error(path, error)}; a later process measures again", RuntimeWarning,
                      stacklevel=5)


@contextlib.contextmanager
def _probe_file_lock(path: str):
    """The probe file's lock, waited for at most a while; no lock where none can be made (an
    unwritable place: the write afterwards says why)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, timeout=_PROBE_LOCK_WAIT_SECONDS))
        except OSError:
            pass
        yield


def _probe_entry(threads: int) -> tuple[dict | None, str]:
    """(this machine's probe entry for ``threads``, from the file or measured now; or None, and why)."""
    path = probe_path()

    def damaged(problem):
        warnings.warn(f"fastconv: ignoring the cost probe's file {path} ({problem}); measuring again",
                      RuntimeWarning, stacklevel=7)

    entry = _probe_entries(read_json(path, damaged), damaged).get(str(threads))
    if entry is not None:
        return entry, ""
    with _probe_file_lock(path):
        # another process may have probed while this one waited for the lock
        entry = _probe_entries(read_json(path, lambda problem: None), lambda problem: None).get(str(threads))
        if entry is not None:
            return entry, ""
        try:
            entry = _measure(threads)
        except Exception as error:  # noqa: BLE001 - a broken probe must not break auto: shipped constants
            warnings.warn(f"fastconv: the cost probe failed ({type(error).__name__}: {error}); using the shipped "
                          f"cost constants", RuntimeWarning, stacklevel=6)
            return None, f"the cost probe failed: {type(error).__name__}: {error}"
        _store_probe(path, threads, entry)
    return entry, ""


def rerun_probe() -> dict:
    """Measure this machine's speeds again now, keep them in the cache directory and use them.

    Returns the new measurements: ``{"date", "seconds", "quantities"}``. ``fastconv tune --probe``
    runs this. With the probe off (:data:`fastconv.config.cost_probe`), the measurements are kept
    but the shipped constants stay in use.
    """
    global _loaded
    threads = probe_threads()
    path = probe_path()
    with _lock, _probe_file_lock(path):
        entry = _measure(threads)
        _store_probe(path, threads, entry)
        _loaded = None
    return dict(entry, threads=threads)


# --------------------------------------------------------------------------------------------
# what is in use


def shipped_constants() -> dict:
    """Each available backend's shipped ``COST_CONSTANTS``, by name."""
    from fastconv import backends

    return {name: module.COST_CONSTANTS for name in backends.backend_names()
            if backends.unavailable_reason(name) is None
            and hasattr(module := backends.get(name), "COST_CONSTANTS")}


def _describe(state: dict) -> str:
    fitted, probe = state["fitted"], state["probe"]
    if probe is not None:
        others = (f"probed on {probe['date']}: the shipped constants scaled to this machine's measured speeds "
                  f"({state['probe_path']})")
    else:
        others = f"shipped defaults ({state['why_not_probed']})"
    if not fitted:
        return others
    here = f"fitted on this machine ({state['fitted_path']})"
    if state["fitted_covers_all"]:
        return here
    return f"{here} for {', '.join(sorted(fitted))}; the others {others}"


def _load() -> dict:
    global _loaded
    with _lock:
        current = _loaded
        if _still_valid(current):
            return current
        threads_setting, cache_dir, probe_on = config.threads, config.cache_dir, config.cost_probe
        path = constants_path()
        fitted, fitted_threads = _load_fitted(path)
        covers_all = bool(fitted) and set(shipped_constants()) <= set(fitted)
        probe, why_not = None, ""
        if not probe_on:
            why_not = "the cost probe is off"
        elif not covers_all:
            probe, why_not = _probe_entry(probe_threads())
        state = {"threads_setting": threads_setting, "dir": cache_dir, "probe_on": probe_on,
                 "fitted": fitted, "fitted_threads": fitted_threads, "fitted_path": path,
                 "fitted_covers_all": covers_all, "probe": probe, "probe_threads": probe_threads(),
                 "probe_path": probe_path(), "why_not_probed": why_not, "scaled": {},
                 "generation": next(_generations)}
        state["source"] = _describe(state)
        _loaded = state
        return state


def _still_valid(state) -> bool:
    if state is None:
        return False
    cache_dir = config.cache_dir
    return state["threads_setting"] == config.threads and (state["dir"] is cache_dir or state["dir"] == cache_dir) \
        and state["probe_on"] == config.cost_probe


def _current() -> dict:
    state = _loaded  # one read: save_constants may reset it from another thread
    return state if _still_valid(state) else _load()


def constants_for(name: str, module=None) -> dict | None:
    """The constants in use for backend ``name``: fitted on this machine, else its shipped ones
    scaled to this machine's speeds (the probe), else its shipped ones as they are."""
    state = _current()
    fitted = state["fitted"].get(name)
    if fitted is not None:
        return fitted
    if module is None:
        from fastconv import backends

        module = backends.get(name)
    table = getattr(module, "COST_CONSTANTS", None)
    probe = state["probe"]
    if table is None or probe is None:
        return table
    scaled = state["scaled"].get(name)
    if scaled is None or scaled[0] is not table:  # (a module registered anew under that name: rescale)
        scaled = (table, scale_constants(table, probe["quantities"], REFERENCE_MACHINE["quantities"],
                                         getattr(module, "COST_RESOURCES", None)))
        state["scaled"][name] = scaled
    return scaled[1]


def fitted_constants() -> dict:
    """The constants fitted on this machine, by backend (empty when none are)."""
    return dict(_current()["fitted"])


def probe_result() -> dict | None:
    """The probe's measurements in use, ``{"date", "seconds", "threads", "quantities"}``, or None
    (the probe is off or failed, or constants fitted on this machine cover every backend)."""
    state = _current()
    return None if state["probe"] is None else dict(state["probe"], threads=state["probe_threads"])


def constants_source() -> str:
    """Where the constants in use come from, in words: starts with ``"fitted on this machine"``,
    ``"probed on <date>"`` or ``"shipped defaults"``."""
    return _current()["source"]


def constants_token() -> int:
    """A number that changes whenever the constants in use may have (a new probe, new fitted
    constants, another cache directory or setting): what decisions made with them are kept under."""
    return _current()["generation"]


def constants_threads(name: str | None = None) -> int:
    """The thread count the constants in use (of backend ``name``) were measured with."""
    state = _current()
    if state["fitted"] and (name in state["fitted"] or (name is None and state["probe"] is None)):
        return state["fitted_threads"]
    if state["probe"] is not None:
        return state["probe_threads"]
    return DEFAULT_THREADS


def save_constants(constants: dict, threads: int) -> str | None:
    """Write fitted constants for this machine to the cache directory (atomically); return the path.

    A place that cannot be written (read-only, a file where a directory should be) costs a
    RuntimeWarning saying why, and None is returned; the constants in use do not change.
    """
    global _loaded
    document = {"format": _FORMAT, "version": _FORMAT_VERSION, "machine": machine_key(), "threads": threads,
                "constants": constants}
    path = constants_path()
    try:
        write_json_atomically(path, document)
    except OSError as error:
        warnings.warn(f"fastconv: could not write the cost constants to {path}: {describe_write_error(path, error)}",
                      RuntimeWarning, stacklevel=2)
        return None
    _loaded = None
    return path
