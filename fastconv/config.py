"""Run-time settings, read once from environment variables and settable from code.

Every tunable of fastconv lives here, so that there is one place to look (pyFFTW's
``pyfftw.config`` is the model).

=========================  ==============================  ===========================
attribute                  environment variable            default
=========================  ==============================  ===========================
``threads``                ``FASTCONV_NUM_THREADS``        all cores (``os.cpu_count()``)
``workspace_bytes``        ``FASTCONV_WORKSPACE_MB``       64 MiB
``fftw_planner``           ``FASTCONV_FFTW_PLANNER``       ``"FFTW_ESTIMATE"``
``cache_dir``              ``FASTCONV_CACHE_DIR``          ``$XDG_CACHE_HOME/fastconv``
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
from pathlib import Path

__all__ = ["threads", "workspace_bytes", "set_threads", "set_workspace_bytes",
           "fftw_planner", "set_fftw_planner", "cache_dir"]


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


# --------------------------------------------------------------------------------------------
# FFT backend: planner effort and where wisdom is kept

FFTW_PLANNER_EFFORTS = ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE")


def _check_planner(source: str, value) -> str:
    text = str(value).strip().upper() if isinstance(value, str) else None
    if text is not None and not text.startswith("FFTW_"):
        text = "FFTW_" + text
    if text not in FFTW_PLANNER_EFFORTS:
        raise ValueError(
            f"{source} must be one of {', '.join(FFTW_PLANNER_EFFORTS)} (case-insensitive, the "
            f"FFTW_ prefix optional), got {value!r}"
        )
    return text


#: How hard FFTW plans the transforms of the ``fft`` backend. ``FFTW_ESTIMATE`` plans instantly
#: from heuristics; ``FFTW_MEASURE`` times candidate algorithms (seconds per new size, faster
#: transforms after; keep the result with :func:`fastconv.fft.save_wisdom`).
fftw_planner: str = _check_planner(
    "environment variable FASTCONV_FFTW_PLANNER", os.environ.get("FASTCONV_FFTW_PLANNER") or "FFTW_ESTIMATE"
)

def _default_cache_dir() -> Path:
    if os.environ.get("FASTCONV_CACHE_DIR"):
        return Path(os.environ["FASTCONV_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fastconv"
    try:
        return Path.home() / ".cache" / "fastconv"
    except RuntimeError:  # no home directory (some containers): a per-user temporary one
        import tempfile

        return Path(tempfile.gettempdir()) / f"fastconv-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


#: Directory for fastconv's persistent files (FFTW wisdom). Created on first write.
cache_dir: Path = _default_cache_dir()


def set_fftw_planner(effort: str) -> None:
    """Set FFTW's planner effort (``FASTCONV_FFTW_PLANNER`` at start-up), e.g. ``"measure"``."""
    global fftw_planner
    fftw_planner = _check_planner("fftw_planner", effort)
