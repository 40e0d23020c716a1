"""What every engine shares: the run directory, its lock, the nodes, stopping, progress, the summary.

The run directory is the jobs file's directory; it holds::

    jobs.txt            the plan (imgpipe plan)
    joblog.tsv          GNU parallel's job log for jobs.txt (last row per job wins)
    logs/<id>           each job's output (WSClean's log and the wrapper's lines)
    imgpipe-job         the node-side wrapper used by this run (a copy of bin/imgpipe-job)
    parallel-input.tsv  the jobs as GNU parallel input;  parallel.sh  the resume command
    Makefile            the generated Makefile (engine make)
    run.lock            held while a run is going
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import ImgpipeError
from .hosts import is_local
from .joblog import last_rows
from .plan import Job, Plan
from . import status as st

WRAPPER = "imgpipe-job"
STOP_GRACE = 20.0  # seconds the node-side wrappers get to stop WSClean and clean up


def installed_file(*parts: str) -> Path | None:
    """A file of the source tree (``bin/...``, ``Makefile.in``), or its installed copy (scripts, share/imgpipe)."""
    here = Path(__file__).resolve().parent.parent
    candidates = [here.joinpath(*parts), Path(sys.prefix, "bin", parts[-1]), Path(sys.prefix, "share", "imgpipe", parts[-1])]
    found = shutil.which(parts[-1])
    if found:
        candidates.append(Path(found))
    return next((c for c in candidates if c.is_file()), None)


def wrapper_source(name: str = WRAPPER) -> Path:
    """bin/imgpipe-job (or another piece of bin/) from the source tree or the installation."""
    path = installed_file("bin", name)
    if path is None:
        raise ImgpipeError(f"bin/{name} is missing from the installation (reinstall imgpipe)")
    return path


def parallel_home() -> str:
    """One PARALLEL_HOME for all of this user's runs (apart from ~/.parallel and its config):
    GNU parallel caches there the command-line length it otherwise probes at every start."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgpipe", "parallel")


def tag_of(plan: Plan) -> str:
    """The mark each job's wrapper carries in its argv, to find and stop it on any node."""
    return f"imgpipe-{plan.digest[:12]}"


def share_resources(job: Job) -> bool:
    """Split cores and memory between co-located jobs unless the user set -j/-mem/-abs-mem."""
    return not any(flag in job.argv for flag in ("-j", "-mem", "-abs-mem"))


def ssh_command(plan: Plan) -> list[str]:
    """The ssh command: $IMGPIPE_SSH, else [worker] ssh (default 'ssh')."""
    text = os.environ.get("IMGPIPE_SSH") or plan.worker.get("ssh") or "ssh"
    return shlex.split(text)


class RunLock:
    """An exclusive lock on the run directory; says who holds it when it is taken."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / st.LOCK
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise ImgpipeError(
                f"this plan is already being run by {holder}",
                where=str(self.path.parent),
                hint="wait for it to finish, or stop it (Ctrl-C, or kill that process) first",
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"imgpipe pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def nodes_of(plan: Plan) -> list[str]:
    return list(plan.worker["nodes"])


def probe_hosts(hosts: list[str], ssh: list[str], timeout: float = 15.0) -> dict[str, str]:
    """host -> why it cannot be reached, for every remote host that fails ``ssh host true``."""
    remote = [h for h in hosts if not is_local(h)]

    def probe(host: str) -> tuple[str, str | None]:
        try:
            proc = subprocess.run(
                [*ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", host, "true"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return host, f"no answer within {timeout:.0f} s"
        except OSError as e:
            return host, f"cannot run {ssh[0]}: {e}"
        if proc.returncode == 0:
            return host, None
        reason = (proc.stderr.strip().splitlines() or [f"ssh exit status {proc.returncode}"])[-1]
        return host, reason

    if not remote:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
        return {h: why for h, why in pool.map(probe, remote) if why}


def wrapper_pattern(tag: str) -> str:
    """The ``pkill -f`` regex of a running wrapper: ``imgpipe-job TAG ID ...``.

    The brackets keep it from matching the shell that runs pkill; ``[^{]`` keeps it from
    matching GNU parallel itself, whose command template says ``imgpipe-job TAG {id}``
    (a TERM would make parallel kill its ssh clients, cutting the wrappers' output
    before they have stopped WSClean).
    """
    return f"[i]mgpipe-job {tag} [^{{]"


def stop_jobs(tag: str, hosts: list[str], ssh: list[str], sig: str = "TERM") -> None:
    """Signal every wrapper carrying ``tag`` on every host (the wrapper stops WSClean and cleans up).

    With ``KILL`` the wrappers' children (WSClean, or ``timeout`` and its process group) are
    killed first: a KILLed wrapper cannot stop them, and they would run on, orphaned.
    """
    pattern = wrapper_pattern(tag)
    quoted = shlex.quote(pattern)
    if sig == "KILL":
        script = (f"for p in $(pgrep -f {quoted}); do for c in $(pgrep -P $p); do kill -KILL -- -$c $c; done; "
                  "kill -KILL $p; done 2>/dev/null; true")
    else:
        script = f"pkill -{sig} -f {quoted}"
    local_done = False

    def one(host: str) -> None:
        nonlocal local_done
        if is_local(host):
            if not local_done:
                local_done = True
                subprocess.run(["sh", "-c", script], capture_output=True)
            return
        try:
            subprocess.run([*ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", host, script],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            pass

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        list(pool.map(one, hosts))


def jobs_running(tag: str, hosts: list[str], ssh: list[str]) -> list[str]:
    """Hosts where a wrapper carrying ``tag`` still runs."""
    pattern = wrapper_pattern(tag)
    busy = []
    for host in hosts:
        cmd = ["pgrep", "-f", pattern] if is_local(host) else [
            *ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", host, f"pgrep -f {shlex.quote(pattern)}"]
        try:
            if subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode == 0:
                busy.append(host)
        except (subprocess.TimeoutExpired, OSError):
            pass
    return busy


def stop_engine(plan: Plan, proc: subprocess.Popen, live: list[str], ssh: list[str], hold: int) -> None:
    """Ctrl-C / SIGTERM: stop the engine process ``proc`` and every job of the run on every node.

    1. ``hold`` stops the engine from starting jobs while it keeps its ssh clients, so the
       wrappers' output still reaches logs/ (GNU parallel: SIGHUP; make: SIGSTOP).
    2. The wrappers get TERM (again every 2 s: a job just starting has no wrapper to signal yet):
       they stop WSClean, remove their temp dirs and exit. Killing the engine first would not do:
       with ssh multiplexing (ControlMaster) remote jobs outlive their ssh clients, and the
       wrappers would lose their output in the middle of stopping WSClean.
    3. After STOP_GRACE, whatever is left gets KILL (the wrappers' children first), then the engine.
    """
    tag = tag_of(plan)
    try:
        os.kill(proc.pid, hold)
    except ProcessLookupError:
        pass
    deadline = time.time() + STOP_GRACE
    next_term = 0.0
    while proc.poll() is None and time.time() < deadline:
        if time.time() >= next_term:
            stop_jobs(tag, live, ssh, "TERM")
            next_term = time.time() + 2.0
            if hold == signal.SIGSTOP and not jobs_running(tag, live, ssh):
                break  # a stopped make does not exit by itself
        time.sleep(0.2)
    if proc.poll() is None or jobs_running(tag, live, ssh):
        stop_jobs(tag, live, ssh, "KILL")
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Stopper:
    """Turns SIGINT/SIGTERM into a flag the engine's wait loop checks."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            print("imgpipe: still stopping the jobs, please wait", file=sys.stderr)
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Progress:
    """A live status line on a terminal; plain periodic lines otherwise."""

    def __init__(self, plan: Plan, run_dir: Path, stream=None):
        self.plan, self.run_dir = plan, run_dir
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = float(os.environ.get("IMGPIPE_PROGRESS_INTERVAL", "1" if self.tty else "30"))
        self.started = time.time()
        self.last_print = 0.0
        self.last_text = ""

    def line(self) -> str:
        c = st.counts(st.job_states(self.plan, self.run_dir))
        finished = c["done"] + c["failed"]
        left = c["total"] - finished
        eta = ""
        elapsed = time.time() - self.started
        if finished and left:
            eta = f", ETA {_duration(elapsed / finished * left)}"
        return (f"imgpipe: {c['done']}/{c['total']} done, {c['failed']} failed, {c['running']} running, "
                f"{c['not started']} waiting, {_duration(elapsed)} elapsed{eta}")

    def tick(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_print < self.interval:
            return
        self.last_print = now
        text = self.line()
        if self.tty:
            self.stream.write("\r\033[K" + text)
        elif text != self.last_text or force:
            self.stream.write(text + "\n")
        self.last_text = text
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def summary(plan: Plan, run_dir: Path, unreachable: dict[str, str], resume_hint: list[str],
            out=None) -> int:
    """Print the end-of-run report; return the exit code (0 all done, 1 otherwise)."""
    out = out or sys.stderr
    states = st.job_states(plan, run_dir)
    c = st.counts(states)
    # unreachable nodes were reported (with the reason) when found; the table names them per job
    if c["done"] == c["total"]:
        print(f"imgpipe: all {c['total']} job(s) done. Run directory: {run_dir}", file=out)
        return 0
    bad = [s for s in states if s.state != "done"]
    print(f"imgpipe: {c['done']} of {c['total']} job(s) done, {c['failed']} failed, "
          f"{c['total'] - c['done'] - c['failed']} not run. Run directory: {run_dir}", file=out)
    print(f"  {'job':<6} {'host':<12} {'why':<50} log", file=out)
    for s in sorted(bad, key=lambda s: (s.state != "failed", s.job.id)):
        host = s.host or s.job.host or "-"
        if s.state == "failed":
            why = s.why or "failed"
        elif s.job.host in unreachable:
            why = f"not run: node {s.job.host} unreachable"
        else:
            why = "not run"
        print(f"  {s.job.id:<6} {host:<12} {why:<50} {s.log or '-'}", file=out)
        if s.state == "failed":  # the end of its log; and of its stderr (a crash, a missing library...)
            for line in st.tail(s.log, 3):
                print(f"         | {line}", file=out)
            for line in st.tail(f"{s.log}.err" if s.log else None, 3):
                print(f"  stderr | {line}", file=out)
    print("To resume (runs only what is not done):", file=out)
    for hint in resume_hint:
        print(f"  {hint}", file=out)
    return 1


def wait_engine(proc: subprocess.Popen, stopper: "Stopper", progress: "Progress") -> bool:
    """Wait for the engine, ticking the progress line; False as soon as the user asks to stop."""
    while proc.poll() is None:
        if stopper.signal is not None:
            return False
        progress.tick()
        try:
            proc.wait(timeout=0.2)  # returns as soon as the engine exits
        except subprocess.TimeoutExpired:
            pass
    return True


class Retries:
    """Which failed jobs run again, for both engines: connection failures up to
    ``connection_retries`` times, WSClean failures (and signals, max_time) up to
    ``retries`` times, anything else (env_file, set-up) never."""

    def __init__(self, worker: dict) -> None:
        self.limits = {"connection": worker.get("connection_retries", 3), "job": worker.get("retries", 0)}
        self.tries: Counter = Counter()
        self.final: set[str] = set()  # failed for good in this invocation

    def after_round(self, rows) -> bool:
        """Count the round's failures; True when some job is to run again."""
        again = False
        for jid, row in last_rows(rows).items():
            if row.ok:
                continue
            failure, _ = st.classify(row)
            kind = "connection" if failure == "connection" else (
                "job" if failure in ("wsclean", "signal", "timeout") else None)
            if kind is not None:
                self.tries[kind, jid] += 1
            if kind is not None and self.tries[kind, jid] <= self.limits[kind]:
                again = True
            else:
                self.final.add(jid)
        return again


def drop_dead_nodes(live: list[str], ssh: list[str]) -> tuple[list[str], dict[str, str]]:
    """After a round with failures: probe the nodes still in use; (nodes alive, newly unreachable)."""
    newly = probe_hosts(live, ssh)
    for host, why in newly.items():
        print(f"imgpipe: warning: node {host} cannot be reached any more ({why})", file=sys.stderr)
    return [n for n in live if n not in newly], newly


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def archive_logs(run_dir: Path, job_ids) -> None:
    """Keep the log of each earlier attempt (logs/ID -> logs/ID.1, .2, ...) before a job runs again."""
    logs = run_dir / st.LOGS
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


def install_wrapper(run_dir: Path) -> Path:
    dest = run_dir / WRAPPER
    src = wrapper_source()
    if not dest.exists() or dest.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dest)
        dest.chmod(0o755)
    return dest
