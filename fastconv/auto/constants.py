"""The cost model's constants: shipped with the backends, or fitted on this machine.

Each backend ships ``COST_CONSTANTS``, seconds per unit of each of its cost terms
(``float64_factor``: how much more a float64 problem's work costs than a float32 one's). The
shipped values were fitted with ``fastconv tune --calibrate`` (the grid of
:func:`fastconv.auto.calibrate.calibration_grid`, each backend timed in two passes, 2 threads) on
a 2-core Intel Xeon (Cascade Lake, AVX-512) with numpy 2.4 / OpenBLAS, numba 0.68 and pyFFTW 0.15,
under an exclusive CPU lock (see docs/performance/auto.md). Refit them, and paste them into the
backends, whenever a backend's speed changes.

``fastconv tune --calibrate`` fits them on the user's machine instead and stores them in
``cost-constants.json`` in :data:`fastconv.config.cache_dir`, tagged with the machine
(:func:`machine_key`): a file fitted elsewhere, by other library versions, or damaged is ignored
with a warning.

Examples
--------
>>> from fastconv import backends
>>> constants_for("naive", backends.get("naive"))["mac"] > 0
True
"""

from __future__ import annotations

import math
import os
import threading
import warnings

from fastconv import config
from fastconv.cache_files import NO_DOCUMENT, describe_write_error, read_json, write_json_atomically
from fastconv.thread_pools import reinitialise_after_fork

__all__ = ["DEFAULT_THREADS", "CONSTANTS_FILE", "machine_key", "constants_for", "constants_source",
           "constants_threads", "fitted_constants", "shipped_constants", "save_constants"]

CONSTANTS_FILE = "cost-constants.json"
_FORMAT = "fastconv-cost-constants"
_FORMAT_VERSION = 1

#: Threads the shipped constants were measured with: compute terms scale with min(threads, this) / this.
DEFAULT_THREADS = 2

_loaded: dict | None = None  # {"constants": fitted tables, "threads": ..., "source": ..., "dir": ...}
_lock = reinitialise_after_fork(threading.Lock())


def machine_key() -> dict:
    """What identifies this machine and software for cached measurements (CPU, cores, versions)."""
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in ("fastconv", "numpy", "numba", "scipy", "pyfftw"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    import fastconv

    versions["fastconv"] = fastconv.__version__  # the source tree's, even when not installed
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "versions": versions}


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


def _load() -> dict:
    global _loaded
    current = _loaded  # one read: save_constants may reset it from another thread
    if current is not None and current["dir"] == config.cache_dir:
        return current
    loaded = {"constants": {}, "threads": DEFAULT_THREADS, "source": "shipped defaults", "dir": config.cache_dir}
    path = constants_path()

    def warn(problem):
        warnings.warn(f"fastconv: ignoring cost constants in {path} ({problem}); using the shipped defaults. "
                      f"Run `fastconv tune --calibrate` to refit them.", RuntimeWarning, stacklevel=5)

    document = read_json(path, warn)
    if document is not NO_DOCUMENT:
        try:
            constants, threads = _constants_from(document)
        except ValueError as error:
            warn(error)
        else:
            loaded = {"constants": constants, "threads": threads, "source": path, "dir": config.cache_dir}
    _loaded = loaded
    return loaded


def constants_for(name: str, module=None) -> dict | None:
    """The constants in use for backend ``name``: fitted on this machine, else its shipped ones."""
    fitted = _load()["constants"].get(name)
    if fitted is not None:
        return fitted
    return getattr(module, "COST_CONSTANTS", None)


def fitted_constants() -> dict:
    """The constants fitted on this machine, by backend (empty when the shipped ones are in use)."""
    return dict(_load()["constants"])


def shipped_constants() -> dict:
    """Each available backend's shipped ``COST_CONSTANTS``, by name."""
    from fastconv import backends

    return {name: module.COST_CONSTANTS for name in backends.backend_names()
            if backends.unavailable_reason(name) is None
            and hasattr(module := backends.get(name), "COST_CONSTANTS")}


def constants_source() -> str:
    """Where the constants in use come from: a file path, or ``"shipped defaults"``."""
    return _load()["source"]


def constants_threads() -> int:
    """The thread count the constants in use were measured with."""
    return _load()["threads"]


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
