"""Run-time settings, read once from environment variables and settable from code.

Every tunable of fastconv lives here, so that there is one place to look (pyFFTW's
``pyfftw.config`` is the model).

=========================  ==============================  ===========================
attribute                  environment variable            default
=========================  ==============================  ===========================
``threads``                ``FASTCONV_NUM_THREADS``        all cores (``os.cpu_count()``)
``workspace_bytes``        ``FASTCONV_WORKSPACE_MB``       64 MiB
``autotune``               ``FASTCONV_AUTOTUNE``           off (``1``/``true``/``on``: on)
``fftw_planner``           ``FASTCONV_FFTW_PLANNER``       ``"FFTW_ESTIMATE"``
``cache_dir``              ``FASTCONV_CACHE_DIR``          the user cache directory (below)
=========================  ==============================  ===========================

``cache_dir`` holds what fastconv learns about this machine (autotuning results, fitted cost
constants, FFTW wisdom). By default it is ``$XDG_CACHE_HOME/fastconv`` (``~/.cache/fastconv`` when that is
unset) on Linux, ``~/Library/Caches/fastconv`` on macOS and ``%LOCALAPPDATA%\\fastconv\\Cache`` on
Windows, as platformdirs would choose.

Thread pools: fastconv mixes numba's parallel kernels (an OpenMP runtime) with BLAS (OpenBLAS) and
FFTW in one process. Idle OpenMP workers spin by default, and on a machine with few cores they
steal the cores the next BLAS call needs, and spinning BLAS workers steal them back: measured on 2
cores, a single-channel 128×128 ``numba_cpu`` call took 4.5 ms right after an ``im2col`` call
instead of 0.03 ms alone (0.15 ms with passive waiting). So, unless the environment already says
otherwise, importing fastconv sets ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP workers sleep) before
numba's OpenMP layer starts. Set ``OMP_WAIT_POLICY=ACTIVE`` (or ``FASTCONV_OMP_PASSIVE=0``) before
importing fastconv to keep spinning workers (a little faster for back-to-back calls of one backend
only). Benchmarks time peer libraries in subprocesses with :func:`peer_environment`, so that torch's
OpenMP pool keeps its own default.

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
from pathlib import Path

# Must happen before any OpenMP runtime starts (numba loads its OpenMP layer on the first parallel
# call, after this import); a value the user set wins, and FASTCONV_OMP_PASSIVE=0 opts out.
_OMP_WAIT_POLICY_BEFORE_IMPORT = os.environ.get("OMP_WAIT_POLICY")
if os.environ.get("FASTCONV_OMP_PASSIVE", "1") != "0":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def peer_environment(**overrides: str) -> dict:
    """``os.environ`` as it was before fastconv chose an OpenMP wait policy, plus ``overrides``.

    For timing another library (torch) in a subprocess: OMP_WAIT_POLICY is what the user had, and
    FASTCONV_OMP_PASSIVE=0 keeps an ``import fastconv`` in that subprocess from changing it, so the
    peer runs with its own default thread-pool behaviour.
    """
    environment = dict(os.environ, FASTCONV_OMP_PASSIVE="0")
    if _OMP_WAIT_POLICY_BEFORE_IMPORT is None:
        environment.pop("OMP_WAIT_POLICY", None)
    else:
        environment["OMP_WAIT_POLICY"] = _OMP_WAIT_POLICY_BEFORE_IMPORT
    environment.update(overrides)
    return environment

__all__ = ["threads", "workspace_bytes", "autotune", "cache_dir", "fftw_planner", "set_threads",
           "set_workspace_bytes", "set_autotune", "set_cache_dir", "set_fftw_planner"]


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


def _default_cache_dir() -> Path:
    """``FASTCONV_CACHE_DIR``, else the user cache directory as platformdirs would choose it."""
    if os.environ.get("FASTCONV_CACHE_DIR"):
        return Path(os.environ["FASTCONV_CACHE_DIR"])
    try:
        home = Path.home()
    except RuntimeError:  # no home directory (some containers): a per-user temporary one
        import tempfile

        return Path(tempfile.gettempdir()) / f"fastconv-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "fastconv" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "fastconv"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "fastconv"


#: Whether ``backend="auto"`` times the candidate backends on the first call of each new problem
#: signature (and remembers the winner) instead of trusting the cost model alone.
autotune: bool = _bool_from_env("FASTCONV_AUTOTUNE", False)

#: Directory for what fastconv learns about this machine: autotuning results, fitted cost
#: constants, FFTW wisdom (created on first write).
cache_dir: Path = _default_cache_dir()


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
    cache_dir = Path(path)


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

def set_fftw_planner(effort: str) -> None:
    """Set FFTW's planner effort (``FASTCONV_FFTW_PLANNER`` at start-up), e.g. ``"measure"``."""
    global fftw_planner
    fftw_planner = _check_planner("fftw_planner", effort)
