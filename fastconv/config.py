"""Run-time settings, read once from environment variables and settable from code.

Every tunable of fastconv lives here, so that there is one place to look (pyFFTW's
``pyfftw.config`` is the model).

=========================  ==============================  ===========================
attribute                  environment variable            default
=========================  ==============================  ===========================
``threads``                ``FASTCONV_NUM_THREADS``        all cores (``os.cpu_count()``)
``workspace_bytes``        ``FASTCONV_WORKSPACE_MB``       64 MiB
=========================  ==============================  ===========================

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

__all__ = ["threads", "workspace_bytes", "set_threads", "set_workspace_bytes"]


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


def set_threads(count: int) -> None:
    """Set the number of threads fastconv may use (``FASTCONV_NUM_THREADS`` at start-up)."""
    global threads
    threads = _check_positive_int("threads", count)


def set_workspace_bytes(size: int) -> None:
    """Set the scratch-buffer limit in bytes (``FASTCONV_WORKSPACE_MB`` at start-up, in MiB)."""
    global workspace_bytes
    workspace_bytes = _check_positive_int("workspace_bytes", size)
