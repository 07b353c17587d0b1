"""Memory sizes for people (``--memory-budget 4GB``) and the peak memory a process used.

:func:`tuned_process` is for entry points only (the CLI's ``prepare``, the benchmarks): it
changes the whole process, which a library function must not do.

The peak is the kernel's high-water mark of this process's resident set (``VmHWM`` in
``/proc/self/status``). ``resource.getrusage().ru_maxrss`` is not used on Linux: it is kept
across ``execve``, so a child started by a big parent reports the parent's peak.
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from seqtwins.errors import SeqtwinsError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
MIN_BUDGET = 256 * 1000**2
"""The smallest ``--memory-budget`` accepted: below it the fixed costs (Python, polars,
numpy: about 150 MB) leave no room to work."""


def parse_size(text: str, flag: str = "--memory-budget") -> int:
    """Bytes in ``text`` like ``4GB``, ``512MB``, ``1.5GiB``, ``800000000`` (SI units are
    powers of 1000, ``KiB``/``MiB``/``GiB`` of 1024); a one-line error names ``flag``."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise SeqtwinsError(f"{flag}={text!r} is not a size; write it like 4GB, 512MB or 1.5GiB")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < MIN_BUDGET:
        raise SeqtwinsError(
            f"{flag}={text!r} is below the minimum of {format_size(MIN_BUDGET)}; "
            "give the process at least that much"
        )
    return value


def format_size(n: float) -> str:
    """``1.58 GB``-style text (SI units, as :func:`parse_size` reads them)."""
    for unit, scale in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def peak_rss() -> int:
    """The highest resident set size of this process so far, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, else kB


def current_rss() -> int:
    """This process's resident set size now, in bytes."""
    return int(psutil.Process().memory_info().rss)


def available_memory() -> int:
    """Memory the system can give without swapping, in bytes."""
    return int(psutil.virtual_memory().available)


@contextmanager
def tuned_process() -> Iterator[None]:
    """Tune this process for ``prepare`` on large logs, for the ``with`` block; for entry
    points only (CLI, benchmarks): a library function leaves the process as it found it.

    - The garbage collector is off inside the block (and back on after it, if it was on):
      ``prepare`` makes no reference cycles, and the collector would only walk the heap of
      many small polars / numpy objects.
    - glibc's malloc keeps freed memory instead of returning it to the OS between batches
      (from then on, for the process: glibc has no way to read the old values back).
      Batch by batch, the same few MiB are allocated and freed thousands of times; with
      glibc's defaults each block is mmapped fresh or trimmed off the heap, and the page
      faults that refill it cost as much as the work itself on a VM (measured: 300k faults
      and 2 s of system time for 20M rows, 50-65k and 1 s with this). The thresholds are
      glibc's own maxima for its dynamic tuning (mmap threshold 32 MiB), trim at 128 MiB.
      Nothing happens where the C library is not glibc.
    """
    _tune_malloc()
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_on:
            gc.enable()


def _tune_malloc() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 128 << 20)
