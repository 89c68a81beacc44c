"""FFTW wisdom and the caches of the ``fft`` backend (public as ``fastconv.fftw``).

FFTW plans a transform size once per process; with ``fastconv.config.fftw_planner`` set to
``"FFTW_MEASURE"`` (or ``FASTCONV_FFTW_PLANNER=measure``) planning times candidate algorithms and
can take seconds per new size. *Wisdom* is what FFTW learned: save it once and load it in later
processes to plan instantly. Nothing is read or written unless you call these functions.

The file is ``fastconv.config.cache_dir / "fftw_wisdom"`` unless a path is given. A file that
is corrupt, not fastconv's, or written by another FFTW version or build is ignored with a
:class:`RuntimeWarning`, and a place that cannot be written or read is reported the same way,
never by an exception: wisdom only ever makes planning faster.

Examples
--------
>>> import fastconv, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "wisdom"
>>> fastconv.fftw.save_wisdom(path) == path
True
>>> fastconv.fftw.load_wisdom(path)
True
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

from fastconv import config
from fastconv.cache_files import describe_write_error, write_atomically

__all__ = ["save_wisdom", "load_wisdom", "forget_wisdom", "clear_caches", "cache_info", "wisdom_path"]

_MAGIC = b"fastconv-fftw-wisdom 1\n"
_PRECISIONS = 3  # FFTW keeps double, single and long-double wisdom apart


def wisdom_path() -> Path:
    """Where :func:`save_wisdom` and :func:`load_wisdom` go by default."""
    return Path(config.cache_dir) / "fftw_wisdom"


def save_wisdom(path=None) -> Path | None:
    """Write FFTW's accumulated wisdom to ``path`` (default :func:`wisdom_path`) and return it.

    The file is replaced atomically, so a concurrent reader sees the old or the new file whole.
    A place that cannot be written (a read-only directory, a file where a directory should be,
    a directory at ``path``) costs a :class:`RuntimeWarning` saying why, and None is returned.
    """
    import pyfftw

    path = Path(path) if path is not None else wisdom_path()
    parts = pyfftw.export_wisdom()
    payload = _MAGIC + b"".join(struct.pack("<Q", len(part)) + part for part in parts)
    try:
        write_atomically(path, payload)
    except OSError as error:
        warnings.warn(f"could not write FFTW wisdom to {path}: {describe_write_error(path, error)}; not saved",
                      RuntimeWarning, stacklevel=2)
        return None
    return path


def _parse(payload: bytes) -> tuple[bytes, ...] | None:
    if not payload.startswith(_MAGIC):
        return None
    parts, offset = [], len(_MAGIC)
    for _ in range(_PRECISIONS):
        if offset + 8 > len(payload):
            return None
        (length,) = struct.unpack_from("<Q", payload, offset)
        offset += 8
        if offset + length > len(payload):
            return None
        parts.append(payload[offset:offset + length])
        offset += length
    return tuple(parts) if offset == len(payload) else None


def load_wisdom(path=None) -> bool:
    """Load wisdom saved by :func:`save_wisdom`; True when it was accepted.

    A missing file returns False quietly. A corrupt or foreign file, or wisdom FFTW rejects (another
    FFTW version or build), returns False with a :class:`RuntimeWarning`.
    """
    import pyfftw

    path = Path(path) if path is not None else wisdom_path()
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as error:
        warnings.warn(f"could not read FFTW wisdom file {path}: {type(error).__name__}: {error.strerror or error}; "
                      f"planning from scratch", RuntimeWarning, stacklevel=2)
        return False
    parts = _parse(payload)
    if parts is None:
        warnings.warn(f"{path} is not a fastconv FFTW wisdom file (corrupt or foreign); ignored",
                      RuntimeWarning, stacklevel=2)
        return False
    accepted = pyfftw.import_wisdom(parts)
    rejected = [precision for precision, part, ok in zip(("double", "single", "long double"), parts, accepted)
                if part and not ok]
    if rejected:
        warnings.warn(f"FFTW rejected the {', '.join(rejected)} wisdom in {path} (another FFTW version or "
                      f"build?); ignored", RuntimeWarning, stacklevel=2)
        return False
    return True


def forget_wisdom() -> None:
    """Drop all wisdom FFTW holds in this process (plans already built are kept)."""
    import pyfftw

    pyfftw.forget_wisdom()


def clear_caches() -> None:
    """Forget the ``fft`` backend's cached plans and filter spectra."""
    from fastconv.backends import fft

    fft.clear_caches()


def cache_info() -> dict:
    """Counters of the ``fft`` backend's caches: plans built, spectrum hits and misses."""
    from fastconv.backends import fft

    return fft.cache_info()
