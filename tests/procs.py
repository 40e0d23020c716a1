"""Which job processes are alive: what the run tests check after a stop (no WSClean left behind)."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from sshcluster import _alive, stat_fields  # (_alive: running, not a zombie)


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
        except OSError:
            continue
        if text in cmd and _alive(int(entry)):
            found.append(f"{entry}: {cmd.replace(chr(0), ' ')[:300]}")
    return found


def job_processes(root: Path) -> list[str]:
    """WSClean processes (by any path, or a script named wsclean run by its interpreter), their
    ``timeout``, and job wrappers, whose command line names a path under ``root``."""
    return [p for p in processes_mentioning(str(root))
            if any(os.path.basename(w) in ("wsclean", "timeout") for w in p.split()[1:3])
            or "imgpipe-job imgpipe-" in p]


def wsclean_prefixes() -> list[str]:
    """The -name prefix of every live WSClean process (one entry per process)."""
    names = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = cmdline(int(entry)).split(b"\0")
        if argv and os.path.basename(argv[0]) == b"wsclean" and b"-name" in argv[:-1]:
            names.append(argv[argv.index(b"-name") + 1].decode(errors="replace"))
    return names


class WscleanSampler:
    """Samples the process table in the background: the most WSClean processes ever seen at
    once on one image set (-name prefix), which must never be more than 1."""

    def __init__(self, under: str, interval: float = 0.05):
        import threading

        self.under, self.interval = under, interval
        self.most: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from collections import Counter

        while not self._stop.is_set():
            for name, n in Counter(p for p in wsclean_prefixes() if p.startswith(self.under)).items():
                self.most[name] = max(self.most.get(name, 0), n)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "WscleanSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def doubles(self) -> dict[str, int]:
        return {name: n for name, n in self.most.items() if n > 1}


def none_alive(pids, within: float = 5.0) -> bool:
    """True once none of ``pids`` runs, waiting up to ``within`` seconds."""
    import time

    end = time.monotonic() + within
    while any(_alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def session_members(sid: int) -> list[int]:
    """The live processes (not zombies) of session ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        fields = stat_fields(int(entry)) if entry.isdigit() else None
        if fields and int(fields[3]) == sid and fields[0] != b"Z":
            found.append(int(entry))
    return found


@contextmanager
def killed_on_exit(proc):
    """A started imgpipe (or any process), killed and reaped if it still runs when the block ends:
    a test that fails while it waits for something leaves nothing running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def ctrl_c(proc, timeout: float):
    """Ctrl-C (SIGINT) to ``proc``, then its end: (stdout, stderr, seconds it took to end). The
    timeout only bounds a failure (TimeoutExpired)."""
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return out, err, time.time() - t0
