"""The run directory: its files, its lock, the job log's format, and the node-side wrapper's protocol.

Each plan has a run directory, the jobs file's directory::

    jobs.txt            the plan (imgpipe plan)
    run.json            which plan the other files belong to, and the engine running it now
    run.lock            held (flock) while a run is going; says by whom
    joblog.tsv          GNU parallel's job log: one row per attempt (history, not truth)
    joblog.round.tsv    the rows of the round going on (merged into joblog.tsv after it)
    round.ids           the jobs of the round going on
    logs/<id>           each job's output (WSClean's log and the wrapper's lines); logs/<id>.err
    imgpipe-job         the node-side wrapper used by this run (a copy of bin/imgpipe-job)
    parallel-input.tsv, parallel.sh, Makefile, done/ ...   the engines' own files
    earlier/<digest12>/ the files of another plan that used this directory before

Whether a job is done is not decided here but by its images (``image_sets``): a
job-log row says what happened, never what is on disk now.

The wrapper (bin/imgpipe-job) is called as ``imgpipe-job TAG ID SLOTS ENV_FILE
MAX_TIME SHARE FORCE RUN COMMAND``: ``wrapper_args`` builds these words (the only
place that knows their order) and ``FAILURES`` reads its exit status.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ImgpipeError
from .files import write_whole

JOBLOG = "joblog.tsv"
ROUND_JOBLOG = "joblog.round.tsv"
ROUND_IDS = "round.ids"
HALT_GATE = "halt.gate"  # what the round's gate (bin/imgpipe-gate) lets start: written by the run loop
GATE = "imgpipe-gate"  # the gate itself, in the run directory
LOGS = "logs"
LOCK = "run.lock"
STATE = "run.json"
EARLIER = "earlier"
WRAPPER = "imgpipe-job"
LOCK_WAIT = 90.0  # seconds a new run waits for an earlier one that is stopping its jobs
STOPPING = "stopping its jobs"  # in the lock's holder text while a killed run's jobs are being stopped

# ---------------------------------------------------------------- the wrapper's protocol

# exit status of bin/imgpipe-job (and ssh) -> failure class, what it means in words
FAILURES = {
    10: ("wsclean", "WSClean failed"),
    11: ("env_file", "env_file could not be sourced"),
    12: ("setup", "job set-up failed (directories, wsclean not found)"),
    13: ("record", "the record could not be written next to the images (disk full?)"),
    14: ("busy", "another job was making the same images"),
    15: ("foreign", "images of another command are in the way (--force replaces them)"),
    # from bin/imgpipe-srun (the Slurm engine), which reads what srun's exit status does not say
    16: ("node", "the Slurm node failed"),
    17: ("memory", "out of memory: Slurm stopped it past the memory it asked for"),
    18: ("time-limit", "Slurm's time limit was reached"),
    19: ("slurm", "Slurm ended it (its allocation ended, or its step was refused or cancelled)"),
    # given by the run loop, not by a job: its attempt ended 0, but its images say it is not done
    20: ("no-images", "it ended without an error, but its images are not there (the job wrapper did not run "
                      "through: see its log)"),
    124: ("timeout", "max_time reached"),
    255: ("connection", "ssh could not reach the node (or the connection dropped)"),
}
NO_IMAGES = 20

# classes worth another attempt: the node, the network or Slurm (connection_retries), or the
# job itself (retries)
RETRY_CONNECTION = ("connection", "node", "slurm")
RETRY_JOB = ("wsclean", "signal", "timeout", "memory", "time-limit")


def classify(exitval: int, signal: int = 0) -> tuple[str, str]:
    """(failure class, reason in words) of a failed attempt."""
    if signal:
        return "signal", f"killed by signal {signal}"
    if exitval in FAILURES:
        return FAILURES[exitval]
    if exitval == -1:
        return "timeout", "stopped by GNU parallel's --timeout"
    if exitval > 128:
        sig = exitval - 128
        return "signal", f"WSClean killed by signal {sig}" + (" (KILL: out of memory?)" if sig == 9 else "")
    return "wsclean", f"exit status {exitval}"


def share_resources(job) -> bool:
    """Split cores and memory between co-located jobs unless the user set -j/-mem/-abs-mem."""
    return not any(flag in job.argv for flag in ("-j", "-mem", "-abs-mem"))


def run_label(run_dir: Path) -> str:
    """How a claim and a record name the run: ``host:/abs/run/dir``."""
    return f"{socket.gethostname()}:{run_dir}"


def wrapper_args(plan, job_id: str, command: str, *, share: str, force: bool, run: str) -> list[str]:
    """The words after ``imgpipe-job``; ``job_id`` and ``command`` may be an engine's placeholders.

    ``share``: '0' WSClean as the user set it; '1' split the node's cores and memory by
    max_concurrent; 'THREADS/GB' the cores and memory Slurm granted the job.
    """
    w = plan.worker
    max_time = w.max_time or 0
    return [
        plan.tag, job_id, str(w.max_concurrent), w.env_file,
        str(int(max_time)) if float(max_time).is_integer() else str(max_time),
        share, "1" if force else "0", run, command,
    ]


def installed_file(*parts: str) -> Path | None:
    """A file of the source tree (``bin/...``, ``Makefile.in``), or its installed copy.

    A wheel puts bin/ among the environment's scripts and Makefile.in in share/imgpipe, wherever
    the installer put the environment (a venv, pipx, ``--user``, ``--prefix``): the
    distribution's own list of its files (its RECORD) says where."""
    here = Path(__file__).resolve().parent.parent
    source = here.joinpath(*parts)
    if source.is_file():
        return source
    name = parts[-1]
    from importlib import metadata

    try:
        files = metadata.distribution("imgpipe").files or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == name and entry.parent.name in ("bin", "Scripts", "imgpipe"):
            path = Path(entry.locate()).resolve()
            if path.is_file():
                return path
    candidates = [Path(sys.prefix, "bin", name), Path(sys.prefix, "share", "imgpipe", name)]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    return next((c for c in candidates if c.is_file()), None)


def bin_file(name: str) -> Path:
    """A piece of bin/ from the source tree or the installation."""
    path = installed_file("bin", name)
    if path is None:
        raise ImgpipeError(f"bin/{name} is missing from the installation (reinstall imgpipe)")
    return path


# ---------------------------------------------------------------- the job log's format

JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
SLURM_PLACED = "slurm"  # the Host of a job Slurm placed (its node is in its log: see status)
_JOB_RE = re.compile(r"imgpipe-job (imgpipe-[0-9a-f]{12}) (\S+) ")


@dataclass(frozen=True)
class Row:
    """One attempt, in GNU parallel's ``--joblog`` format. ``job_id`` and ``tag`` (the plan)
    are read from the command, which runs ``imgpipe-job TAG ID ...``."""

    seq: int
    host: str
    start: float
    runtime: float
    exitval: int
    signal: int
    command: str
    job_id: str | None = None
    tag: str | None = None

    @property
    def ok(self) -> bool:
        return self.exitval == 0 and self.signal == 0


def read_rows(path: str | os.PathLike) -> list[Row]:
    """All rows, in file order; a missing file is an empty log. A half-written last line is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return _parse_rows(text.split("\n")[1:])


def _parse_rows(lines) -> list[Row]:
    """The rows of job-log lines; lines that are not rows (the header, damage) are skipped."""
    rows = []
    for line in lines:
        parts = line.split("\t", 8)
        if len(parts) < 9:
            continue
        m = _JOB_RE.search(parts[8])
        try:
            start, runtime = float(parts[2]), float(parts[3])
            row = Row(seq=int(parts[0]), host=parts[1], start=start, runtime=runtime, exitval=int(parts[6]),
                      signal=int(parts[7]), command=parts[8], job_id=m.group(2) if m else None,
                      tag=m.group(1) if m else None)
        except ValueError:
            continue
        if not (0 <= start < 1e11 and 0 <= runtime < 1e9):  # nan, inf, or a time no clock gave: damaged
            continue
        rows.append(row)
    return rows


class RowTail:
    """The rows of a job log being written (the round's, by GNU parallel or make), read as they
    come: each ``read`` parses only the whole lines added since the last one, so watching a round
    of 50,000 jobs costs what is new, not the whole file again and again."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.rows: list[Row] = []
        self._offset = 0
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read so far

    def read(self) -> list[Row]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != self._file or st.st_size < self._offset:  # another file
                    self._file, self._offset, self.rows = (st.st_dev, st.st_ino), 0, []
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            self._file, self._offset, self.rows = None, 0, []
            return self.rows
        end = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
        if end:
            self._offset += end
            self.rows.extend(_parse_rows(data[:end].decode("utf-8", errors="replace").split("\n")))
        return self.rows

    @property
    def offset(self) -> int:
        """How many bytes of the file ``read`` has read (whole lines)."""
        return self._offset


def append_rows(path: str | os.PathLike, rows: list[Row], seq_of: dict[str, int]) -> None:
    """Append rows to a job log under the Seq of the full input (as --resume-failed would)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(JOBLOG_HEADER + "\n")
        for r in rows:
            seq = seq_of.get(r.job_id or "", r.seq)
            f.write(f"{seq}\t{r.host}\t{r.start:.3f}\t{r.runtime:10.3f}\t0\t0\t{r.exitval}\t{r.signal}\t{r.command}\n")


# ---------------------------------------------------------------- a job's log

LOG_PEEK = 4096  # bytes read at each end of a log: the wrapper's lines are there (thousands of logs stay cheap)
STOP_MATCH = 30.0  # s: a row accounts for a log when it spans the log's times within this (clocks, ssh)
_SAID = re.compile(r"imgpipe-job (\S+) \[(\S+) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]: (.*)")
_STOPPED = re.compile(r"stopped \((SIG\w+)\)")
_WSCLEAN_STATUS = re.compile(r"WSClean failed with exit status (\d+)")
_EXCEPTION = re.compile(r"An exception occurr?ed")


@dataclass(frozen=True)
class LogFacts:
    """What a job's log (one attempt) says in the wrapper's lines, and WSClean's error if any."""

    path: str
    job_id: str
    host: str | None = None  # as the node names itself
    start: float | None = None  # its "start:" line, else its first wrapper line
    end: float | None = None  # its last wrapper line
    stopped: str | None = None  # 'SIGTERM' when it ends with the wrapper's "stopped (SIG...)" line
    wsclean_status: int | None = None  # "WSClean failed with exit status N"
    wsclean_error: str | None = None  # WSClean's last ">>> message" after "An exception occured"


def log_ends(path: str | os.PathLike, size: int = LOG_PEEK) -> tuple[str, str]:
    """The first and the last ``size`` bytes of a file, as text, the tail from its first whole line."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
            end = f.seek(0, os.SEEK_END)
            if end <= size:
                tail = head
            else:
                f.seek(max(size, end - size))
                tail = f.read()
                tail = tail[tail.find(b"\n") + 1:]
    except OSError:
        return "", ""
    return head.decode("utf-8", errors="replace"), tail.decode("utf-8", errors="replace")


def _said(line: str) -> tuple[str, float | None, str] | None:
    """(host, time, message) of a wrapper line ``imgpipe-job ID [HOST YYYY-MM-DD HH:MM:SS]: MESSAGE``."""
    m = _SAID.match(line)
    if not m:
        return None
    try:
        when = time.mktime(time.strptime(m.group(3), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        when = None
    return m.group(2), when, m.group(4)


def log_facts(path: str, job_id: str, head: str, tail: str) -> LogFacts:
    """What the two ends of a job's log say (see LogFacts)."""
    first = [w for w in map(_said, head.splitlines()) if w]
    lines = [ln.rstrip() for ln in tail.splitlines() if ln.strip()]
    last = [w for w in map(_said, lines) if w]
    began = next((w for w in first if w[2].startswith("start: ")), first[0] if first else None)
    host = began[0] if began else (last[-1][0] if last else None)
    final = _said(lines[-1]) if lines else None
    stopped = _STOPPED.match(final[2]) if final else None
    status = _WSCLEAN_STATUS.match(final[2]) if final else None
    return LogFacts(path, job_id, host, began[1] if began else None, last[-1][1] if last else None,
                    stopped.group(1) if stopped else None, int(status.group(1)) if status else None,
                    wsclean_error(lines))


def wsclean_error(lines: list[str]) -> str | None:
    """WSClean's last error message: the last ``>>> message`` line after "An exception occured"."""
    marks = [i for i, ln in enumerate(lines) if _EXCEPTION.search(ln)]
    if not marks:
        return None
    said = [ln.split(">>>", 1)[1].strip() for ln in lines[marks[-1]:] if ">>>" in ln]
    return next((m for m in reversed(said) if m), None)


def read_log(path, job_id: str = "") -> LogFacts:
    """What one attempt's log says (its two ends only: cheap for thousands of logs)."""
    return log_facts(str(path), job_id, *log_ends(path))


def job_error(path) -> str | None:
    """What a failed job's log says went wrong, in one line: WSClean's own error, else the
    wrapper's last words; None when the log says nothing."""
    head, tail = log_ends(path)
    lines = [ln.rstrip() for ln in tail.splitlines() if ln.strip()]
    said = wsclean_error(lines)
    if said:
        return said
    for words in reversed([w for w in map(_said, lines) if w]):
        if not words[2].startswith(("start:", "Slurm job")):
            return words[2]
    return None


# ---------------------------------------------------------------- the lock


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
                    print(f"imgpipe: waiting for the earlier run to finish stopping its jobs ({holder})",
                          file=sys.stderr)
                    said = True
                time.sleep(0.5)
        self.say(f"imgpipe pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}")
        return self

    @staticmethod
    def _stopping(holder: str) -> bool:
        """The lock is held by the guard of a run that died: it said so, or the imgpipe it names
        (on this machine) is gone and the guard has not said so yet."""
        if STOPPING in holder:
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


# ---------------------------------------------------------------- the directory


@dataclass(frozen=True)
class NodeWrapper:
    """bin/imgpipe-job as each node keeps it, in its user's cache (``~/.cache/imgpipe``), installed once
    per node and run rather than shipped with every job. Its name holds its digest: runs of another
    imgpipe version each find their own."""

    name: str  # imgpipe-job-<sha256[:12]>
    data: bytes

    @property
    def path(self) -> str:
        """Its path on a node, as a (double-quoted) shell word the node's shell expands."""
        return f'"${{XDG_CACHE_HOME:-$HOME/.cache}}/imgpipe/{self.name}"'

    def install_script(self) -> str:
        """A shell script that installs it on a node from its stdin, unless it is there (also a probe)."""
        return (f'f={self.path}; [ -s "$f" ] && exit 0; mkdir -p "${{f%/*}}" && cat > "$f.$$" '
                '&& mv -f "$f.$$" "$f"')


class RunDir:
    """One run directory: where its files are, and the few operations on them that engines share."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(os.path.abspath(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def label(self) -> str:
        return run_label(self.path)

    def lock(self) -> RunLock:
        return RunLock(self.path)

    # run.json: which plan the files belong to, and which engine process runs it
    def state(self) -> dict:
        try:
            data = json.loads((self / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, **changes) -> None:
        data = {**self.state(), **changes}
        write_whole(self / STATE, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def adopt(self, plan) -> str | None:
        """Make the directory this plan's: the files of another plan that used it (its job log,
        logs, engine files) move to ``earlier/<its digest12>/``. Returns that digest, if any."""
        before = self.state().get("digest")
        if before is None:  # a directory older than run.json: its job log's rows say which plan
            tags = {r.tag for r in read_rows(self / JOBLOG) if r.tag} - {plan.tag}
            before = min(tags)[len("imgpipe-"):] if tags else None
        if before is None or before == plan.digest:
            self.write_state(digest=plan.digest)
            return None
        dest = self / EARLIER / before[:12]
        dest.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.path.iterdir()):
            if entry.name in ("jobs.txt", LOCK, STATE, EARLIER) or entry.name.startswith("."):
                continue
            target = dest / entry.name
            if target.exists():
                target = dest / f"{entry.name}.{int(time.time())}"
            entry.rename(target)
        self.write_state(digest=plan.digest, engine=None)
        return before

    def archive_logs(self, job_ids) -> None:
        """Keep the log of each earlier attempt (logs/ID -> logs/ID.1, .2, ...) before a job runs again."""
        logs = self / LOGS
        for jid in job_ids:
            log = logs / jid
            if not log.exists():
                continue
            n = 1
            while (logs / f"{jid}.{n}").exists():
                n += 1
            log.rename(logs / f"{jid}.{n}")
            err = logs / f"{jid}.err"
            if err.exists():
                err.rename(logs / f"{jid}.{n}.err")

    def install_wrapper(self) -> Path:
        """``imgpipe-job`` in the run directory: what the engines send to the nodes."""
        return self.install(WRAPPER)

    def node_wrapper(self) -> NodeWrapper:
        """The wrapper as the nodes keep it: once per node, under a name that is its digest."""
        data = self.install_wrapper().read_bytes()
        return NodeWrapper(f"{WRAPPER}-{hashlib.sha256(data).hexdigest()[:12]}", data)

    def install(self, name: str) -> Path:
        dest = self / name
        src = bin_file(name)
        if not dest.exists() or dest.read_bytes() != src.read_bytes():
            from .jobs_file import umask_mode  # (not at the top: `imgpipe status` needs no plan module)

            shutil.copyfile(src, dest)
            dest.chmod(umask_mode(0o777))
        return dest
