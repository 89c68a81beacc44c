"""Files in the cache directory: written whole or not at all, read without ever raising.

fastconv keeps what it learns about the machine in :data:`fastconv.config.cache_dir`: autotuning
results (``autotune.json``), fitted cost constants (``cost-constants.json``), the cost probe's
measurements (``cost-probe.json``) and FFTW wisdom. The
directory may be shared by several processes, written by another version, unwritable, or hold
anything at all; every reader and writer of those files goes through this module, whose rules
are:

- writes go to a temporary file in the same directory, then ``os.replace`` swaps it in
  (atomic on POSIX and Windows): a reader sees the old file or the new one, whole;
- read-merge-write cycles hold an exclusive lock file (``fcntl``, where it exists);
- reads return :data:`NO_DOCUMENT` when there is nothing usable, after a warning when a file
  was there but unreadable (a directory, no permission, binary garbage, truncated, nested too
  deeply to parse);
- a failed write is described in words (:func:`describe_write_error`) for the caller's warning;
- what a file learnt holds for one machine and set of library versions only, which
  :func:`machine_key` identifies.

Examples
--------
>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "example.json"
>>> write_json_atomically(path, {"a": 1})
>>> read_json(path, warn=print)
{'a': 1}
>>> read_json(path.with_name("missing.json"), warn=print) is NO_DOCUMENT
True
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time

__all__ = ["NO_DOCUMENT", "describe_write_error", "file_lock", "is_seconds", "machine_key", "read_json", "write_atomically",
           "write_json_atomically"]

#: What :func:`read_json` returns when there is no document to use.
NO_DOCUMENT = object()


def write_atomically(path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers only ever see a complete file (OSError on failure)."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_json_atomically(path, document) -> None:
    """:func:`write_atomically` of ``document`` as indented, key-sorted JSON."""
    write_atomically(path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"))


def describe_write_error(path, error: OSError) -> str:
    """What went wrong writing ``path``, in words: a parent that is a file is named as such (the
    OSError itself says "File exists" or "Not a directory", naming neither the path nor why)."""
    path = os.fspath(path)
    ancestor = os.path.dirname(os.path.abspath(path))
    while ancestor and not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if os.path.exists(ancestor) and not os.path.isdir(ancestor):
        return f"{ancestor} is a file, not a directory"
    if os.path.isdir(path):
        return f"{path} is a directory"
    return f"{type(error).__name__}: {error.strerror or error}"


@contextlib.contextmanager
def file_lock(path, timeout: float | None = None):
    """Serialise read-merge-write cycles on ``path`` between processes (``path + ".lock"``).

    Yields True once the lock is held. With ``timeout`` (seconds), gives up waiting after that
    long and yields False: the caller goes on without the lock (the atomic replace still keeps
    the file whole). Best effort where ``fcntl`` is missing (Windows): yields False at once, and an
    update may be lost. Making the lock file in an unwritable place raises OSError.
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as lock_file:
        if timeout is None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.02)
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def read_json(path, warn) -> object:
    """The JSON document in ``path``; :data:`NO_DOCUMENT` when it is missing, or (after
    ``warn(problem)``) when it cannot be read or parsed."""
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
