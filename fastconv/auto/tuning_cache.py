"""The autotuning cache: the backend measured fastest per problem signature, kept across processes.

One JSON file, ``autotune.json`` in :data:`fastconv.config.cache_dir`, tagged with the machine
and library versions (:func:`fastconv.cache_files.machine_key`): a file written elsewhere is
ignored. Writers lock, re-read, merge and replace it atomically, so processes tuning at once keep
each other's entries; a damaged file or entry is dropped with a warning and replaced by the next
write (:mod:`fastconv.cache_files`).

Examples
--------
>>> from fastconv.geometry import make_spec
>>> signature(make_spec((1, 3, 32, 32), (8, 3, 3, 3), padding=1, dtype="float32"), threads=2)
'x1x3x32x32 w8x3x3x3 s1,1 p1,1,1,1 d1,1 g1 float32 C t2'
"""

from __future__ import annotations

import os
import threading
import warnings

from fastconv import config
from fastconv.cache_files import NO_DOCUMENT, describe_write_error, file_lock, is_seconds, read_json
from fastconv.cache_files import write_json_atomically
from fastconv.auto.constants import machine_key
from fastconv.thread_pools import reinitialise_after_fork
from fastconv.geometry import ConvSpec

__all__ = ["CACHE_FILE", "signature", "cache_path", "lookup", "remember", "read_cache", "store_entries", "forget"]

CACHE_FILE = "autotune.json"
_FORMAT = "fastconv-autotune"
_FORMAT_VERSION = 1

_lock = reinitialise_after_fork(threading.RLock())
_tuned: dict[str, dict] = {}  # signature -> {"backend": name, "seconds": {...}}
_disk_loaded_from: str | None = None
_warned: set = set()


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


def cache_path() -> str:
    """Where autotuning results are kept: ``autotune.json`` in :data:`fastconv.config.cache_dir`."""
    return os.path.join(config.cache_dir, CACHE_FILE)


def _warn_once(path: str, problem: str) -> None:
    with _lock:
        first = (path, problem) not in _warned
        _warned.add((path, problem))
    if first:
        warnings.warn(f"fastconv: autotuning cache {path}: {problem}; ignored (the next write replaces it)",
                      RuntimeWarning, stacklevel=4)


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
    if document.get("machine") != machine_key():
        _warn_once(path, "written on another machine or with other library versions")
        return {}
    entries = {key: _clean_entry(entry) for key, entry in document["entries"].items()}
    malformed = [key for key, entry in entries.items() if entry is None]
    if malformed:
        _warn_once(path, f"{len(malformed)} malformed entries, e.g. {malformed[0][:80]!r}")
    return {key: entry for key, entry in entries.items() if entry is not None}


def lookup(key: str) -> dict | None:
    """The entry of signature ``key``, from memory or (once per cache directory) the file."""
    global _disk_loaded_from
    entry = _tuned.get(key)
    if entry is not None:
        return entry
    path = cache_path()
    if _disk_loaded_from != path:
        entries = read_cache(path)
        with _lock:
            for name, value in entries.items():
                _tuned.setdefault(name, value)
            _disk_loaded_from = path
    return _tuned.get(key)


def remember(key: str, entry: dict) -> None:
    """Keep ``entry`` for signature ``key`` in memory and merge it into the file."""
    with _lock:
        _tuned[key] = entry
    store_entries({key: entry})


def store_entries(entries: dict[str, dict], path: str | None = None) -> None:
    """Merge ``entries`` into the cache file (lock, re-read, merge, atomic replace).

    A file that cannot be written (read-only home, full disk) costs a warning, never the call.
    """
    path = path or cache_path()
    try:
        with _lock, file_lock(path):
            merged = read_cache(path)
            merged.update(entries)
            write_json_atomically(path, {"format": _FORMAT, "version": _FORMAT_VERSION,
                                         "machine": machine_key(), "entries": merged})
    except OSError as error:
        warnings.warn(f"fastconv: could not write the autotuning cache {path}: {describe_write_error(path, error)}",
                      RuntimeWarning, stacklevel=3)


def forget(*, disk: bool = False) -> bool:
    """Forget the tuning results in memory (and remove the file too with ``disk=True``).

    Returns False (with a warning) when the file exists but could not be removed, else True.
    """
    global _disk_loaded_from
    with _lock:
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
                              f"{describe_write_error(path, error)}", RuntimeWarning, stacklevel=3)
                return False
    return True
