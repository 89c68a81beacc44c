"""Size limits: every extent representable, every array of an in-memory call within this machine's memory.

Geometry is judged from the shapes alone, before anything is allocated, so every backend gives
the same answer. Two rules:

- Every extent is representable: each argument, and each padded extent (input plus padding),
  is below 2**62, so that the int64 index arithmetic of the kernels (``i * stride + u *
  dilation``, never past the padded extent) cannot overflow.
- A call computed in memory fits this machine: its result, and its input as the backends read it
  (padded, or gathered: see :func:`fastconv.geometry.backend_spec`), each take at most
  :func:`memory_limit_bytes`. A larger array could only fail later, in numpy ("Unable to
  allocate"), or get the process killed once its pages are written.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from fastconv.geometry.arguments import GEOMETRY_LIMIT

__all__ = ["memory_limit_bytes", "check_extent", "check_fits", "ALWAYS_FITS"]


def _cgroup_memory() -> int | None:
    """The memory (plus swap) a Linux control group (a container) allows, or None where it sets no limit."""
    values = []
    for name in ("memory.max", "memory.swap.max"):
        try:
            with open(os.path.join("/sys/fs/cgroup", name)) as file:
                values.append(file.read().strip())
        except OSError:
            values.append("")
    memory, swap = values
    if not memory.isdigit():
        return None
    return int(memory) + (int(swap) if swap.isdigit() else 0)  # (unlimited swap counted as none)


@functools.lru_cache(maxsize=1)
def _machine_memory() -> int | None:
    """RAM plus swap in bytes (capped by a container's limit), or None where the platform does not say."""
    memory = None
    try:
        with open("/proc/meminfo") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
        memory = (int(fields["MemTotal"].split()[0]) + int(fields.get("SwapTotal", "0").split()[0])) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            pass
    container = _cgroup_memory()
    if container is not None:
        memory = container if memory is None else min(memory, container)
    return memory if memory is not None and memory > 0 else None


def _process_usage() -> tuple[int, int] | None:
    """(address space, data segment) this process uses now, in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as file:
            fields = file.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[0]) * page, int(fields[5]) * page
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def memory_limit_bytes() -> int:
    """The most memory one array of a call may take: RAM plus swap, or less where the process is limited.

    The smallest of this machine's RAM plus swap, a container's (cgroup's) memory limit and what
    the process's ``RLIMIT_AS`` and ``RLIMIT_DATA`` leave it; 2**47 bytes (a 64-bit address
    space) where the platform reports none of them. Calls whose result, or whose input as the
    backends read it, would be larger are refused with a ``ValueError`` before anything is
    allocated.

    >>> memory_limit_bytes() > 2**20
    True
    """
    limit = _machine_memory() or 2**47
    try:
        import resource
    except ImportError:  # Windows
        return limit
    for which, used in ((resource.RLIMIT_AS, 0), (resource.RLIMIT_DATA, 1)):
        soft = resource.getrlimit(which)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            usage = _process_usage()  # read only when limited, which is rare
            limit = min(limit, max(soft - (usage[used] if usage else 0), 0))
    return limit


def _format_bytes(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count} bytes" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _text(cause) -> str:
    return cause() if callable(cause) else cause


def check_extent(what: str, extent: int, cause, hint: str = "use less padding") -> None:
    """Raise ValueError naming ``cause`` (the arguments, as passed) when an extent reaches 2**62.

    ``cause`` is a string or a function returning one (built only for the message).
    """
    if extent >= GEOMETRY_LIMIT:
        raise ValueError(f"{_text(cause)}: {what} would be {extent} pixels long, beyond 2**62 (the longest extent "
                         f"fastconv indexes); {hint}")


# Arrays this small are never refused: their check then costs no system calls (every call checks).
ALWAYS_FITS = 64 << 20


def check_fits(what: str, shape, dtype, cause, hint: str = "use less padding or dilation, or a larger stride") -> None:
    """Raise ValueError when an array of ``shape`` and ``dtype`` is larger than :func:`memory_limit_bytes`.

    ``what`` names the array ("the output"), ``cause`` the arguments that made it so large, as
    the caller passed them (a string, or a function returning one), and ``hint`` what would help.
    Arrays up to 64 MiB always pass.

    >>> check_fits("the output", (1, 1, 2**40, 2**40), np.float64, "padding=2**39 on input (1, 1, 4, 4)")
    Traceback (most recent call last):
    ...
    ValueError: padding=2**39 on input (1, 1, 4, 4): the output would have shape (1, 1, 1099511627776, ...
    """
    nbytes = math.prod([int(size) for size in shape]) * np.dtype(dtype).itemsize
    if nbytes <= ALWAYS_FITS:
        return
    limit = memory_limit_bytes()
    if nbytes > limit:
        shape = tuple(int(size) for size in shape)
        raise ValueError(
            f"{_text(cause)}: {what} would have shape {shape} ({_format_bytes(nbytes)} of {np.dtype(dtype)}), more than "
            f"the {_format_bytes(limit)} this machine can hold (RAM and swap, or the process's memory limit); "
            f"{hint}")

