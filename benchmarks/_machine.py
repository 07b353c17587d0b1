"""What the benchmarks record about the CPU they ran on (shared by the bench_* scripts)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU model name and feature flags from /proc/cpuinfo ("unknown", {} elsewhere)."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return cpu, flags


def machine_info(*packages: str) -> dict[str, Any]:
    """Cores, CPU model, memory, Python, platform and the versions of ``packages``."""
    cpu, _ = cpu_model_and_flags()
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in packages:
        info[package] = metadata.version(package)
    return info
