"""The run directory's lock: one run at a time per plan (flock on ``run.lock``, which says who holds it)."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path

from .errors import ImgpipeError

LOCK = "run.lock"
LOCK_WAIT = 90.0  # seconds a new run waits for an earlier one that is stopping its jobs
STOPPING = "stopping its jobs"  # in the lock's holder text while a killed run's jobs are being stopped
SUBMITTING = "submitting the run to Slurm"  # ... while `imgpipe --submit` writes batch.sh and calls sbatch


class RunLock:
    """An exclusive lock on the run directory (flock on run.lock); its file says who holds it.

    A lock dies with the processes holding it. A run killed outright leaves its jobs to a
    guard process (engines/loop.py) that holds the lock while it stops them and says so
    (``STOPPING``): a new run waits for it, up to LOCK_WAIT seconds, rather than refusing.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        said = False
        deadline = time.time() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                holder = self.holder() or "another process"
                if not self._stopping(holder) or time.time() > deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise ImgpipeError(
                        f"this plan is already being run by {holder}",
                        where=str(self.path.parent),
                        hint="wait for it to finish, or stop it (Ctrl-C, or kill that process) first",
                    ) from None
                if not said:
                    print(f"imgpipe: waiting for the earlier run to finish stopping its jobs ({holder})"
                          if SUBMITTING not in holder else f"imgpipe: waiting for {holder}", file=sys.stderr)
                    said = True
                time.sleep(0.5)
        self.say(f"imgpipe pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}")
        return self

    @staticmethod
    def _stopping(holder: str) -> bool:
        """The lock is held by the guard of a run that died: it said so, or the imgpipe it names
        (on this machine) is gone and the guard has not said so yet."""
        if STOPPING in holder or SUBMITTING in holder:  # (a moment: the lock is soon free)
            return True
        m = re.match(r"imgpipe pid (\d+) on (\S+) ", holder)
        if not m or m.group(2) != socket.gethostname():
            return False
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read(4096).strip()
        except OSError:
            return ""

    def say(self, text: str) -> None:
        """Replace the holder text (the lock itself is unchanged)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (text + "\n").encode(), 0)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def run_active(run_dir: Path) -> bool:
    """True while a run (or the guard stopping a killed one) holds the run directory's lock."""
    import fcntl

    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
