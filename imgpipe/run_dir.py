"""The run directory: where its files are, and installing the wrapper and the gate there.

Each plan has a run directory, the jobs file's directory::

    jobs.txt            the plan (imgpipe plan)
    run.json            which plan the other files belong to, and the engine running it now
    run.lock            held (flock) while a run is going; says by whom
    joblog.tsv          GNU parallel's job log: one row per attempt (history, not truth)
    joblog.round.tsv    the engine's rows of the round going on, if it writes any (merged into joblog.tsv after it)
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
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ImgpipeError
from .files import write_whole
from .joblog import JOBLOG, LOGS, read_rows
from .run_lock import LOCK, RunLock

HALT_GATE = "halt.gate"  # what the round's gate (bin/imgpipe-gate) lets start: written by the run loop
GATE = "imgpipe-gate"  # the gate itself, in the run directory
STATE = "run.json"
EARLIER = "earlier"
WRAPPER = "imgpipe-job"


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

    def archive_logs(self, job_ids) -> dict[str, int]:
        """Keep the log of each earlier attempt (logs/ID -> logs/ID.1, .2, ...) before a job runs
        again; job id -> the number of the attempt about to run (its log's place: one more than
        the logs kept)."""
        logs = self / LOGS
        try:
            names = set(os.listdir(logs))  # (one listing, not a stat per job)
        except OSError:
            names = set()
        attempts = {}
        for jid in job_ids:
            n = 1
            while f"{jid}.{n}" in names:
                n += 1
            log = logs / jid
            if jid in names:
                log.rename(logs / f"{jid}.{n}")
                if f"{jid}.err" in names:
                    (logs / f"{jid}.err").rename(logs / f"{jid}.{n}.err")
                n += 1
            attempts[jid] = n
        return attempts

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
