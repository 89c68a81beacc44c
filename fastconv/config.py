"""Run-time settings, read once from environment variables and settable from code.

Every tunable of fastconv lives here, so that there is one place to look (pyFFTW's
``pyfftw.config`` is the model).

=========================  ==============================  ===========================
attribute                  environment variable            default
=========================  ==============================  ===========================
``threads``                ``FASTCONV_NUM_THREADS``        all cores (``os.cpu_count()``)
``workspace_bytes``        ``FASTCONV_WORKSPACE_MB``       64 MiB
``autotune``               ``FASTCONV_AUTOTUNE``           off (``1``/``true``/``on``: on)
``cache_dir``              ``FASTCONV_CACHE_DIR``          the user cache directory (below)
=========================  ==============================  ===========================

``cache_dir`` holds what fastconv learns about this machine (autotuning results, fitted cost
constants). By default it is ``$XDG_CACHE_HOME/fastconv`` (``~/.cache/fastconv`` when that is
unset) on Linux, ``~/Library/Caches/fastconv`` on macOS and ``%LOCALAPPDATA%\\fastconv\\Cache`` on
Windows, as platformdirs would choose.

Examples
--------
>>> import fastconv
>>> previous = fastconv.config.threads
>>> fastconv.config.set_threads(1)
>>> fastconv.config.threads
1
>>> fastconv.config.set_threads(previous)
"""

from __future__ import annotations

import os
import sys

__all__ = ["threads", "workspace_bytes", "autotune", "cache_dir", "set_threads", "set_workspace_bytes",
           "set_autotune", "set_cache_dir"]


def _positive_int_from_env(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {variable}={text!r} is not an integer; "
            f"set it to a positive whole number or unset it"
        ) from None
    if value < 1:
        raise ValueError(f"environment variable {variable}={text!r} must be >= 1")
    return value


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    value = value.__index__()
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


#: Number of threads fastconv's own parallel kernels and the BLAS/FFTW calls it makes may use.
threads: int = _positive_int_from_env("FASTCONV_NUM_THREADS", os.cpu_count() or 1)

#: Upper bound, in bytes, of the scratch buffers that lowering backends (im2col) allocate.
workspace_bytes: int = _positive_int_from_env("FASTCONV_WORKSPACE_MB", 64) << 20


def _bool_from_env(variable: str, default: bool) -> bool:
    text = os.environ.get(variable)
    if text is None or text.strip() == "":
        return default
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {variable}={text!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _default_cache_dir() -> str:
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        return os.path.join(os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local"), "fastconv", "Cache")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "fastconv")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "fastconv")


#: Whether ``backend="auto"`` times the candidate backends on the first call of each new problem
#: signature (and remembers the winner) instead of trusting the cost model alone.
autotune: bool = _bool_from_env("FASTCONV_AUTOTUNE", False)

#: Directory for the autotuning cache and fitted cost constants (created on first write).
cache_dir: str = os.environ.get("FASTCONV_CACHE_DIR") or _default_cache_dir()


def set_threads(count: int) -> None:
    """Set the number of threads fastconv may use (``FASTCONV_NUM_THREADS`` at start-up)."""
    global threads
    threads = _check_positive_int("threads", count)


def set_workspace_bytes(size: int) -> None:
    """Set the scratch-buffer limit in bytes (``FASTCONV_WORKSPACE_MB`` at start-up, in MiB)."""
    global workspace_bytes
    workspace_bytes = _check_positive_int("workspace_bytes", size)


def set_autotune(enabled: bool) -> None:
    """Turn autotuning of ``backend="auto"`` on or off (``FASTCONV_AUTOTUNE`` at start-up)."""
    global autotune
    if not isinstance(enabled, (bool, int)) or enabled not in (0, 1):
        raise TypeError(f"autotune must be True or False, got {enabled!r}")
    autotune = bool(enabled)


def set_cache_dir(path) -> None:
    """Set the directory fastconv keeps its machine-specific caches in (``FASTCONV_CACHE_DIR``)."""
    global cache_dir
    if not isinstance(path, (str, os.PathLike)) or os.fspath(path) == "":
        raise TypeError(f"cache_dir must be a non-empty path (str or os.PathLike), got {path!r}")
    cache_dir = os.fspath(path)
