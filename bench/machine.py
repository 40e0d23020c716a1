"""What the benchmarks share: how busy the machine is, so that a disturbed run can be redone."""

from __future__ import annotations

import os
import time


def cpu_busy() -> float:
    """CPU-seconds spent busy by the whole machine so far (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use under ``threshold`` CPUs; return their load."""
    deadline = time.monotonic() + max_wait
    while True:
        b0 = cpu_busy()
        time.sleep(0.5)
        load = (cpu_busy() - b0) / 0.5
        if load < threshold or time.monotonic() >= deadline:
            return load
