"""Status: each job's state, from the job log(s), the per-job logs and the provenance records.

Nothing here contacts a node. A job is
- ``done``: its last job-log row succeeded (or its provenance record says so),
- ``failed``: its last row failed (with a failure class read from the exit code),
- ``running``: a run holds the run directory and the job's log was started after its last row,
- ``not started``: none of the above.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .joblog import Row, last_rows, read_rows
from .plan import Job, Plan

JOBLOG = "joblog.tsv"
ROUND_JOBLOG = "joblog.round.tsv"
ROUND_IDS = "round.ids"
LOGS = "logs"
LOCK = "run.lock"

# exit status of bin/imgpipe-job (and ssh) -> failure class, human reason
CLASSES = {
    10: ("wsclean", "WSClean failed"),
    11: ("env_file", "env_file could not be sourced"),
    12: ("setup", "job set-up failed (directories, wsclean not found)"),
    124: ("timeout", "max_time reached"),
    255: ("connection", "ssh could not reach the node (or the connection dropped)"),
}


@dataclass(frozen=True)
class JobState:
    job: Job
    state: str  # done | failed | running | not started
    host: str | None = None
    start: float | None = None
    runtime: float | None = None
    exitval: int | None = None
    failure: str | None = None  # wsclean | env_file | setup | timeout | connection | signal
    why: str | None = None
    log: str | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.job.id,
            "state": self.state,
            "host": self.host,
            "planned_host": self.job.host,
            "start": self.start,
            "runtime": self.runtime,
            "exitval": self.exitval,
            "failure": self.failure,
            "why": self.why,
            "log": self.log,
            "name": self.job.name,
            "ms": list(self.job.ms),
        }


def classify(row: Row) -> tuple[str, str]:
    """(failure class, reason) for a failed row."""
    if row.signal:
        return "signal", f"killed by signal {row.signal}"
    if row.exitval in CLASSES:
        return CLASSES[row.exitval]
    if row.exitval == -1:
        return "timeout", "stopped by GNU parallel's --timeout"
    if row.exitval > 128:
        sig = row.exitval - 128
        extra = " (KILL: out of memory?)" if sig == 9 else ""
        return "signal", f"WSClean killed by signal {sig}{extra}"
    return "wsclean", f"exit status {row.exitval}"


def run_active(run_dir: Path) -> bool:
    """True while an imgpipe run holds the run directory's lock."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def log_path(run_dir: Path, job: Job) -> Path:
    return run_dir / LOGS / job.id


def provenance_path(job: Job) -> Path:
    return Path(job.name + ".imgpipe.json")


def job_states(plan: Plan, run_dir: Path) -> list[JobState]:
    run_dir = Path(run_dir)
    round_rows = last_rows(read_rows(run_dir / ROUND_JOBLOG))
    rows = {**last_rows(read_rows(run_dir / JOBLOG)), **round_rows}
    in_round: set[str] = set()
    if run_active(run_dir):
        try:
            in_round = set((run_dir / ROUND_IDS).read_text().split())
        except OSError:
            pass
    states = []
    for job in plan.jobs:
        log = log_path(run_dir, job)
        row = rows.get(job.id)
        if job.id in in_round and job.id not in round_rows:
            if log.exists():
                states.append(JobState(job, "running", host=job.host or host_from_log(log, plan),
                                       start=log.stat().st_ctime, log=str(log)))
            else:
                states.append(JobState(job, "not started"))
        elif row is not None and row.ok:
            states.append(JobState(job, "done", host=_host(row), start=row.start, runtime=row.runtime,
                                   exitval=0, log=str(log)))
        elif row is not None:
            failure, why = classify(row)
            states.append(JobState(job, "failed", host=_host(row), start=row.start, runtime=row.runtime,
                                   exitval=row.exitval, failure=failure, why=why, log=str(log)))
        elif provenance_path(job).is_file():
            states.append(JobState(job, "done", log=str(log) if log.exists() else None))
        else:
            states.append(JobState(job, "not started"))
    return states


_WRAPPER_LINE = re.compile(r"imgpipe-job \S+ \[(\S+) ")


def host_from_log(log: Path, plan: Plan) -> str | None:
    """The node a running job's wrapper names in its log's first line, as the plan names it."""
    from .hosts import is_local

    try:
        with open(log, "rb") as f:
            m = _WRAPPER_LINE.match(f.readline(4096).decode("utf-8", errors="replace"))
    except OSError:
        return None
    if not m:
        return None
    host, nodes = m.group(1), list(plan.worker.get("nodes", []))
    if is_local(host):
        return next((h for h in nodes if is_local(h)), "localhost")
    short = host.split(".")[0]
    return next((h for h in nodes if h == host or h.split(".")[0] == short), host)


def _host(row: Row) -> str:
    return "localhost" if row.host == ":" else row.host


def counts(states: list[JobState]) -> dict[str, int]:
    out = {"done": 0, "failed": 0, "running": 0, "not started": 0}
    for s in states:
        out[s.state] += 1
    out["total"] = len(states)
    return out


def host_summary(states: list[JobState]) -> dict[str, dict]:
    """host -> jobs done, failed, and busy seconds (sum of runtimes)."""
    out: dict[str, dict] = {}
    for s in states:
        if s.host is None or s.state not in ("done", "failed"):
            continue
        h = out.setdefault(s.host, {"done": 0, "failed": 0, "busy": 0.0})
        h[s.state] += 1
        h["busy"] += s.runtime or 0.0
    return out


def tail(path: str | None, n: int = 5) -> list[str]:
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("+ ")]
    return lines[-n:]


def now() -> float:
    return time.time()
