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
``cost_probe``             ``FASTCONV_COST_PROBE``         on (``0``/``false``/``off``: off)
=========================  ==============================  ===========================

``cache_dir`` holds what fastconv learns about this machine (autotuning results, fitted cost
constants, the cost probe's measurements, FFTW wisdom). By default it is ``$XDG_CACHE_HOME/fastconv`` (``~/.cache/fastconv`` when that is
unset) on Linux, ``~/Library/Caches/fastconv`` on macOS and ``%LOCALAPPDATA%\\fastconv\\Cache`` on
Windows, as platformdirs would choose.

``cost_probe``: the first time ``backend="auto"`` needs its cost constants, fastconv measures a
few speeds of this machine (about a second, once per machine: the result is kept in
``cache_dir``) and scales the shipped constants to them; off, the shipped constants are used as
they are (see :mod:`fastconv.auto.constants`).

Thread pools: fastconv mixes numba's parallel kernels (an OpenMP runtime, GNU libgomp) with BLAS
(OpenBLAS) and FFTW in one process. Idle OpenMP workers spin for a while (libgomp: 300 000 spins)
before they sleep, and on a machine with few cores they steal the cores the next BLAS call needs.
Measured on 2 cores (144-channel 56×56 depthwise ``numba_cpu`` call, then a 64-channel 28×28
``im2col`` call, and the other way round; medians of 30):

=============================  ==============  ==================  ==================
OpenMP setting                 depthwise alone depthwise after GEMM GEMM after depthwise
=============================  ==============  ==================  ==================
libgomp default                0.161 ms        3.87 ms             4.13 ms
``OMP_WAIT_POLICY=PASSIVE``    0.285 ms        0.309 ms            0.670 ms
``GOMP_SPINCOUNT=20000``       0.159 ms        0.284 ms            0.657 ms
=============================  ==============  ==================  ==================

Whole networks switch pools at every other layer, and there a shorter spin pays: every conv
layer of MobileNetV2 in sequence (batch 1, 224², float32, 2 threads; another 2-vCPU machine), with
``auto`` alternating ``numba_cpu`` and ``im2col``, and with ``numba_cpu`` alone:

=============================  =============  ==================
``GOMP_SPINCOUNT``             auto           numba_cpu alone
=============================  =============  ==================
libgomp default                152 ms         —
20000                          57.6 ms        7.5 ms
5000                           23.8 ms        7.7 ms
2000                           14.2 ms        7.5 ms
500                            10.6 ms        9.7 ms
0                              9.4 ms         12.3 ms
=============================  =============  ==================

So, unless the environment already sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, importing
fastconv sets ``GOMP_SPINCOUNT=2000`` (workers spin briefly, then sleep; back-to-back numba
kernels still find them awake) before numba's OpenMP layer starts. ``FASTCONV_LIMIT_OMP_SPIN=0`` (or ``false``/``no``/``off``) leaves the environment
alone. Benchmarks time peer
libraries in subprocesses with :func:`peer_environment`, so that torch's OpenMP pool keeps its own
default.

Settings are validated however they are made. A bad environment variable never stops
``import fastconv``: it costs a :class:`RuntimeWarning` naming the variable, its value and what
is accepted, and the default is used. Assigning an attribute (``fastconv.config.threads = 4``)
goes through the same checks as the ``set_*`` function, so a bad value raises there and then.

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
import types
import warnings
from pathlib import Path


def _environment_flag(variable: str, default: bool) -> bool:
    """A boolean environment variable; an unrecognised value warns and gives ``default``."""
    text = os.environ.get(variable)
    if text is None or text.strip() == "":
        return default
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    _warn_environment(variable, text, "1/0, true/false, yes/no or on/off", "on" if default else "off")
    return default


def _warn_environment(variable: str, text: str, accepted: str, default) -> None:
    warnings.warn(f"fastconv: ignoring environment variable {variable}={text!r}: accepted values are {accepted}; "
                  f"using the default ({default})", RuntimeWarning, stacklevel=3)


# Must happen before any OpenMP runtime starts (numba loads its OpenMP layer on the first parallel
# call, after this import); settings the user made win, and FASTCONV_LIMIT_OMP_SPIN=0 opts out.
_OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_OPENMP_BEFORE_IMPORT = {name: os.environ.get(name) for name in _OPENMP_VARIABLES}
if _environment_flag("FASTCONV_LIMIT_OMP_SPIN", True) and not any(_OPENMP_BEFORE_IMPORT.values()):
    os.environ["GOMP_SPINCOUNT"] = "2000"


def peer_environment(**overrides: str) -> dict:
    """``os.environ`` as it was before fastconv limited OpenMP spinning, plus ``overrides``.

    For timing another library (torch) in a subprocess: the OpenMP variables are what the user
    had, and FASTCONV_LIMIT_OMP_SPIN=0 keeps an ``import fastconv`` in that subprocess from
    changing them, so the peer runs with its own default thread-pool behaviour.
    """
    environment = dict(os.environ, FASTCONV_LIMIT_OMP_SPIN="0")
    for name, value in _OPENMP_BEFORE_IMPORT.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    environment.update(overrides)
    return environment

__all__ = ["threads", "workspace_bytes", "autotune", "cache_dir", "fftw_planner", "cost_probe", "set_threads",
           "set_workspace_bytes", "set_autotune", "set_cache_dir", "set_fftw_planner", "set_cost_probe"]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    value = value.__index__()
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_autotune(value) -> bool:
    return _check_flag("autotune", value)


def _check_cache_dir(value) -> Path:
    if not isinstance(value, (str, os.PathLike)) or os.fspath(value) == "":
        raise TypeError(f"cache_dir must be a non-empty path (str or os.PathLike), got {value!r}")
    return Path(value)


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


def _from_environment(variable: str, parse, accepted: str, default):
    """``parse(text)`` of environment variable ``variable``, or ``default`` when it is unset or
    empty, or (with a RuntimeWarning) when ``parse`` rejects it."""
    text = os.environ.get(variable)
    if text is None or text.strip() == "":
        return default
    try:
        return parse(text.strip())
    except (TypeError, ValueError):
        _warn_environment(variable, text, accepted, default)
        return default


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


def _positive_whole_number(text: str) -> int:
    return _check_positive_int("value", int(text))  # int() rejects "1.5" and "abc"


# The values behind the module's attributes (see _ConfigModule below): reading
# ``fastconv.config.threads`` returns _settings["threads"]; assigning it validates first.
_settings = {
    "threads": _from_environment("FASTCONV_NUM_THREADS", _positive_whole_number, "whole numbers >= 1",
                                 os.cpu_count() or 1),
    "workspace_bytes": _from_environment("FASTCONV_WORKSPACE_MB", _positive_whole_number,
                                         "whole numbers of MiB >= 1", 64) << 20,
    "autotune": _environment_flag("FASTCONV_AUTOTUNE", False),
    "fftw_planner": _from_environment("FASTCONV_FFTW_PLANNER", lambda text: _check_planner("planner", text),
                                      "estimate, measure, patient or exhaustive (case-insensitive, FFTW_ prefix "
                                      "optional)", "FFTW_ESTIMATE"),
    "cache_dir": _default_cache_dir(),
    "cost_probe": _environment_flag("FASTCONV_COST_PROBE", True),
}
_CHECKS = {"threads": lambda value: _check_positive_int("threads", value),
           "workspace_bytes": lambda value: _check_positive_int("workspace_bytes", value),
           "autotune": _check_autotune, "fftw_planner": lambda value: _check_planner("fftw_planner", value),
           "cache_dir": _check_cache_dir, "cost_probe": lambda value: _check_flag("cost_probe", value)}


def set_threads(count: int) -> None:
    """Set the number of threads fastconv may use (``FASTCONV_NUM_THREADS`` at start-up)."""
    _settings["threads"] = _CHECKS["threads"](count)


def set_workspace_bytes(size: int) -> None:
    """Set the scratch-buffer limit in bytes (``FASTCONV_WORKSPACE_MB`` at start-up, in MiB)."""
    _settings["workspace_bytes"] = _CHECKS["workspace_bytes"](size)


def set_autotune(enabled: bool) -> None:
    """Turn autotuning of ``backend="auto"`` on or off (``FASTCONV_AUTOTUNE`` at start-up)."""
    _settings["autotune"] = _check_autotune(enabled)


def set_cache_dir(path) -> None:
    """Set the directory fastconv keeps its machine-specific caches in (``FASTCONV_CACHE_DIR``)."""
    _settings["cache_dir"] = _check_cache_dir(path)


def set_fftw_planner(effort: str) -> None:
    """Set FFTW's planner effort (``FASTCONV_FFTW_PLANNER`` at start-up), e.g. ``"measure"``."""
    _settings["fftw_planner"] = _CHECKS["fftw_planner"](effort)


def set_cost_probe(enabled: bool) -> None:
    """Let ``backend="auto"`` scale its cost constants to this machine's measured speeds, or not
    (``FASTCONV_COST_PROBE`` at start-up)."""
    _settings["cost_probe"] = _CHECKS["cost_probe"](enabled)


def _setting(name: str, doc: str) -> property:
    def get(module):
        return _settings[name]

    def set_(module, value):
        _settings[name] = _CHECKS[name](value)

    return property(get, set_, doc=doc)


class _ConfigModule(types.ModuleType):
    """This module's type: its settings are properties, so assigning one is validated."""

    threads = _setting("threads", "Number of threads fastconv's own parallel kernels and the BLAS/FFTW "
                                  "calls it makes may use.")
    workspace_bytes = _setting("workspace_bytes", "Upper bound, in bytes, of the scratch buffers that "
                                                  "lowering backends (im2col) allocate.")
    autotune = _setting("autotune", "Whether ``backend=\"auto\"`` times the candidate backends on the first "
                                    "call of each new problem signature (and remembers the winner) instead of "
                                    "trusting the cost model alone.")
    fftw_planner = _setting("fftw_planner", "How hard FFTW plans the transforms of the ``fft`` backend. "
                                            "``FFTW_ESTIMATE`` plans instantly from heuristics; ``FFTW_MEASURE`` "
                                            "times candidate algorithms (seconds per new size, faster transforms "
                                            "after; keep the result with :func:`fastconv.fft.save_wisdom`).")
    cache_dir = _setting("cache_dir", "Directory for what fastconv learns about this machine: autotuning "
                                      "results, fitted cost constants, the cost probe's measurements, FFTW "
                                      "wisdom (created on first write).")
    cost_probe = _setting("cost_probe", "Whether ``backend=\"auto\"`` scales the shipped cost constants to this "
                                        "machine's speeds, measured once by a short probe and kept in "
                                        "``cache_dir`` (False: the shipped constants as they are).")


sys.modules[__name__].__class__ = _ConfigModule
