"""The run directory: its files, its lock, and the job log's format.

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

The wrapper (bin/imgpipe-job), its arguments, its outcomes and the result it ends each
attempt with are the contract of ``attempt.py``.
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

def run_label(run_dir: Path) -> str:
    """How a claim and a record name the run: ``host:/abs/run/dir``."""
    return f"{socket.gethostname()}:{run_dir}"


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
    cut = False  # a log whose last line was cut (a crash, a full disk): the rows start on a line of their own
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(JOBLOG_HEADER + "\n")
        elif cut:
            f.write("\n")
        for r in rows:
            seq = seq_of.get(r.job_id or "", r.seq)
            f.write(f"{seq}\t{r.host}\t{r.start:.3f}\t{r.runtime:10.3f}\t0\t0\t{r.exitval}\t{r.signal}\t{r.command}\n")


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

    def forced_jobs(self, plan, force: bool) -> frozenset[str]:
        """The jobs --force makes again: none without it; with it, every job of the plan, or, when a
        forced run of this plan was stopped, the jobs it had not made yet (run.json "forcing"): so
        the same command resumes it, and never makes again what it made."""
        if not force:
            return frozenset()
        ids = [j.id for j in plan.jobs]
        state = self.state()
        left = state.get("forcing")
        if state.get("digest") == plan.digest and isinstance(left, list):
            return frozenset(ids) & frozenset(left)
        return frozenset(ids)

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
