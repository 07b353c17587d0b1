"""What the benchmarks record about the CPU they ran on (shared by the bench_* scripts)."""

from __future__ import annotations

from pathlib import Path


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
