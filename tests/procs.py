"""Which job processes are alive: what the run tests check after a stop (no WSClean left behind)."""

from __future__ import annotations

import os
from pathlib import Path


def cmdline(pid: int) -> bytes:
    """The NUL-separated argv of ``pid`` (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (not zombies) whose argv contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3] == b"Z":
            continue
        if text in cmd:
            found.append(f"{entry}: {cmd.replace(chr(0), ' ')[:300]}")
    return found


def job_processes(root: Path) -> list[str]:
    """WSClean processes and job wrappers whose command line names a path under ``root``."""
    return [p for p in processes_mentioning(str(root))
            if p.split()[1] in ("wsclean", "timeout") or "imgpipe-job imgpipe-" in p]
