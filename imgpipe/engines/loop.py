"""The run loop: one for every engine.

``run(plan, jobs_path, engine=...)``:

1. takes the run directory's lock (waiting for an earlier run that is stopping its jobs),
   makes the directory this plan's (``RunDir.adopt``), and stops an engine an earlier,
   killed imgpipe left running;
2. asks the images what is left (``image_sets``): images of another command are a plan
   error unless ``force``; when nothing is left it says so and starts nothing;
3. probes the nodes, starts the guard (the engine never outlives imgpipe), and runs
   rounds: the engine runs the jobs left on the live nodes; connection failures, and
   WSClean failures when ``retries`` says so, run again in the next round, away from
   nodes that died;
4. on Ctrl-C / SIGTERM stops every job on every node (``control.stop_engine``), keeps
   the job log consistent and returns 130;
5. returns an ``Outcome`` that ``status.print_summary`` tells the user.
"""

from __future__ import annotations

import heapq
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ImgpipeError, PlanErrors
from ..image_sets import foreign_problems, image_sets, FORCE_HINT
from ..plan import Plan
from ..attempt import NO_IMAGES, RETRY_CONNECTION, RETRY_JOB, job_error, outcome_of, read_log, read_result
from ..hosts import plan_node
from ..joblog import (
    JOBLOG, ROUND_IDS, ROUND_JOBLOG, ROUND_STOPPED, RoundRows, append_rows, kept_at_stop, read_rows, round_rows,
)
from ..run_dir import GATE, HALT_GATE, LOGS, RunDir
from ..files import write_whole
from ..quality import Watch
from . import load
from .base import Context, Round, ssh_command
from .control import Guard, engine_alive, stop_recorded


def parallel_home() -> str:
    """One PARALLEL_HOME for all of this user's runs (apart from ~/.parallel and its config):
    GNU parallel caches there the command-line length it otherwise probes at every start."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgpipe", "parallel")


@dataclass
class Outcome:
    code: int  # 0 every job done, 1 some not, 130 stopped
    run: RunDir
    done: set[str]  # jobs done: by their images at the start, or by their node during the run
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> why
    hints: list[str] = field(default_factory=list)  # how to resume
    nothing_to_do: bool = False
    stopped: bool = False
    halted: str | None = None  # why no new job was started (the halt rule)
    flagged: dict[str, str] = field(default_factory=dict)  # job -> why the quality gate flagged its images


def say(text: str) -> None:
    print(f"imgpipe: {text}", file=sys.stderr)


class Stopper:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the wait loop checks."""

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
    """A live status line on a terminal; plain periodic lines otherwise (IMGPIPE_PROGRESS_INTERVAL).

    The ETA is the time the slots need for what is left, each job taking the mean runtime R of
    this session's finished jobs (before any, of the plan's earlier runs, from its job log):
    running jobs end R after they started, the waiting ones fill the first free slots. Jobs done
    in an earlier session do not count in R, and between two ends the ETA goes down with the clock.
    """

    def __init__(self, total: int, done: set[str], run: RunDir, stream=None, waiting=None,
                 history: list[float] = (), slots: int = 1):
        self.total, self.run = total, run
        self.waiting = waiting or (lambda: None)
        self.done, self.failed = done, set()  # (the loop's own sets: done grows as rounds end)
        self.round_ids: list[str] = []
        self.tail = RoundRows(run.path, "", ())  # the round's rows, read as they come (set for each round)
        self.history = list(history)  # runtimes of the plan's jobs done in earlier sessions
        self.session: list[float] = []  # runtimes of the jobs done in this session (rounds ended)
        self.slots = max(1, slots)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = float(os.environ.get("IMGPIPE_PROGRESS_INTERVAL", "1" if self.tty else "30"))
        self.started = time.time()
        self.last_print = 0.0
        self.last_text = ""

    def counts(self) -> tuple[int, int, dict[str, float], int, list, int]:
        """done, failed, running (job -> when it began on its node), waiting, the round's rows so far,
        and pending: started by the engine, not begun on a node yet (in Slurm's queue)."""
        rows = self.tail.read()
        ok = {r.job_id for r in rows if r.ok}
        ended = {r.job_id for r in rows}
        done = len(self.done | ok)
        failed = len((self.failed | (ended - ok)) - ok - self.done)
        running = {}
        launched = sorted(self.tail.running) if self.round_ids else []  # (a log, no end yet)
        for j in launched:  # a running job began at its log's start line
            started = read_log(self.run / LOGS / j).start
            if started is not None:
                running[j] = min(started, time.time())
        queued = len(launched) - len(running)
        return done, failed, running, self.total - done - failed - len(running) - queued, rows, queued

    def eta(self, running: dict[str, float], waiting: int, rows, now: float) -> float | None:
        runtimes = self.session + [r.runtime for r in rows if r.ok] or self.history
        if not runtimes or not (running or waiting):
            return None
        mean = sum(runtimes) / len(runtimes)
        free = sorted(max(0.0, mean - (now - t)) for t in running.values())
        free += [0.0] * max(0, self.slots - len(free))  # slots with nothing on them now
        if waiting > 10 * self.slots:  # (many left: the slots share them evenly)
            return max(free) + math.ceil(waiting / self.slots) * mean
        heapq.heapify(free)
        for _ in range(waiting):
            heapq.heappush(free, heapq.heappop(free) + mean)
        return max(free)

    def line(self) -> str:
        now = time.time()
        done, failed, running, waiting, rows, pending = self.counts()
        eta = self.eta(running, waiting + pending, rows, now)
        why = self.waiting()
        return (f"imgpipe: {done}/{self.total} done, {failed} failed, {len(running)} running, "
                + (f"{pending} pending, " if pending else "") + f"{waiting} waiting, "
                f"{_duration(now - self.started)} elapsed" + (f", ETA {_duration(eta)}" if eta is not None else "")
                + (f"; {why}" if why else ""))

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

    def clear(self) -> None:
        """Rub out the progress line on a terminal, so that a message takes its place (and the line
        is drawn again below it at the next tick)."""
        if self.tty and self.last_text:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.last_print = 0.0

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class Halt:
    """Start no new job once too many have failed (GNU parallel's --halt soon,fail=N, for any engine).

    ``limit`` N > 0: after N failures; 0: never; None ('auto'): when the first jobs of the run
    (FIRST, or all of them if fewer) have all failed the same way, e.g. one bad option.
    Only a job's last attempt counts: failures that run again (retries, connection_retries)
    or move to another node do not.
    """

    FIRST = 5
    COUNTED = ("wsclean", "env_file", "setup", "record", "foreign", "memory", "signal", "timeout", "time-limit",
               "truncated", "disk-full")

    def __init__(self, limit: int | None, run: RunDir, total: int, retries: "Retries") -> None:
        self.limit, self.run, self.total, self.retries = limit, run, total, retries
        self.reason: str | None = None
        self._settled = False  # (auto) the first jobs did not all fail: the rule cannot apply any more

    @property
    def applies(self) -> bool:
        """Can a failure still halt the run?"""
        return self.limit != 0 and not self._settled and not self.reason

    def check(self, rows) -> str | None:
        """The reason to halt, once there is one (rows: this session's, in order)."""
        if self.reason or self.limit == 0 or self._settled:
            return self.reason

        def counted(r) -> bool:
            return not r.ok and outcome_of(r.exitval, r.signal)[0] in self.COUNTED and self.retries.last_try(r)

        if self.limit:
            failed = sum(1 for r in rows if counted(r))  # (most rows are ok: counted stops at r.ok)
            if failed >= self.limit:
                self.reason = f"{failed} jobs failed (halt_after = {self.limit})"
            return self.reason
        first = heapq.nsmallest(self.FIRST, rows, key=lambda r: r.start + r.runtime)
        if len(first) < min(self.FIRST, self.total) or any(r.ok for r in first):
            # (rows come in the order jobs end: once many have, the first ones are known for good)
            self._settled = len(rows) >= 4 * self.FIRST
            return None
        ways = {(outcome_of(r.exitval, r.signal)[1], job_error(self.run / LOGS / (r.job_id or ""))) for r in first}
        if len(ways) == 1 and all(counted(r) for r in first):
            why, said = ways.pop()
            self.reason = (f"the first {len(first)} jobs all failed the same way ({why}"
                           + (f": {said}" if said else "") + "); fix that, then run again "
                           "(halt_after = 0 runs every job whatever fails)")
        return self.reason


class HaltGate:
    """What the round's gate (bin/imgpipe-gate, asked by the engine before every job starts) lets
    start: once a job of the round has failed, nothing starts until the halt rule has judged that
    failure; once the run is halted, nothing. So no job starts after the halt decision, however
    fast jobs fail: the engine waits on the gate, not on how often this loop looks."""

    def __init__(self, run: RunDir) -> None:
        self.path = run / HALT_GATE
        self.said: str | None = None

    def set(self, halt: Halt, judged: int) -> None:
        """``judged``: the bytes of the round's job log the halt rule has read."""
        state = "halt" if halt.reason else "open" if not halt.applies else str(judged)
        if state != self.said:
            write_whole(self.path, f"{os.getpid()} {state}\n")
            self.said = state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.said = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Retries:
    """Which failed jobs run again: connection failures up to ``connection_retries`` times,
    WSClean failures (and signals, max_time) up to ``retries`` times, anything else never."""

    def __init__(self, worker) -> None:
        self.limits = {"connection": worker.connection_retries, "job": worker.retries}
        self.factor = worker.retry_factor
        self.tries: Counter = Counter()
        self.more: Counter = Counter()  # job -> its attempts stopped past their memory or time (MORE)
        self.final: set[str] = set()  # failed for good in this invocation
        self.counted: set[int] = set()  # rows already counted (by id())

    @staticmethod
    def kind(row) -> str | None:
        failure, _ = outcome_of(row.exitval, row.signal)
        return "connection" if failure in RETRY_CONNECTION else ("job" if failure in RETRY_JOB else None)

    def last_try(self, row) -> bool:
        """Is this failed attempt its job's last one in this invocation (no retry will follow)?"""
        kind = self.kind(row)
        if kind is None:
            return True
        tries = self.tries[kind, row.job_id] + (0 if id(row) in self.counted else 1)
        return tries > self.limits[kind]

    def after_round(self, rows) -> bool:
        """Count the round's failures; True when some job is to run again."""
        again = False
        for row in rows:
            if row.ok or row.job_id is None:
                continue
            kind = self.kind(row)
            self.counted.add(id(row))
            if kind is not None:
                self.tries[kind, row.job_id] += 1
            if outcome_of(row.exitval, row.signal)[0] in MORE:
                self.more[row.job_id] += 1
            if kind is not None and self.tries[kind, row.job_id] <= self.limits[kind]:
                again = True
            else:
                self.final.add(row.job_id)
        return again

    def scale(self, job_id: str) -> float:
        """How many times the plan's memory and time the job's next attempt asks for: retry_factor
        for each of its attempts stopped past its memory or its time (1 with retry_factor = 1)."""
        return self.factor ** self.more[job_id] if self.factor != 1 else 1.0


MORE = ("memory", "time-limit", "timeout")  # the outcomes a retry meets with more (retry_factor)
TICK = 0.2  # s between two looks at the round (progress, halt rule, Ctrl-C)


def _wait(proc: subprocess.Popen, stopper: Stopper, progress: Progress, halt: Halt, gate: HaltGate, eng,
          rows: list, watch: Watch) -> bool:
    """Wait for the engine, ticking the progress line and minding the halt rule (judging each
    failure, then opening the gate or halting); False as soon as the user asks to stop."""
    halted = False
    ended = ExitWait(proc)
    try:
        while proc.poll() is None:
            if stopper.signal is not None:
                return False
            progress.tick()
            now = progress.tail.read(fresh=False)
            watch.add(r.job_id for r in now if r.ok)
            for line in [*eng.news(), *watch.news()]:
                progress.clear()  # (on a terminal the progress line is redrawn at the next tick)
                say(line)
            if not halted:
                if halt.check(rows + now):
                    halted = True
                    gate.set(halt, 0)
                    say(f"halting: no new job is started: {halt.reason}")
                    eng.halt(proc)
                else:
                    gate.set(halt, progress.tail.offset)
            ended.wait(TICK)  # returns as soon as the engine exits
    finally:
        ended.close()
    return True


class ExitWait:
    """Waits for a process to exit, up to a timeout at a time, through a pidfd: the wait wakes only
    when the process exits. (Popen.wait(timeout) polls instead, waking ~45 times a second: over a
    night of long jobs, CPU taken from them, ~5 ms a second here.) Popen.wait where there is no
    pidfd (Linux < 5.3, not Linux)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        try:
            self.fd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.fd = None

    def wait(self, timeout: float) -> None:
        """Return when the process has exited (not reaped: Popen.poll does that) or after ``timeout`` s."""
        if self.fd is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            return
        import select

        select.select([self.fd], [], [], timeout)  # (readable once the process has exited)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _engine_said(path: Path, start: int, todo, rows, name: str) -> None:
    """The engine ended without running some jobs (its own error): say so, with its messages."""
    missing = {j.id for j in todo} - {r.job_id for r in rows}
    if not missing:
        return
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()][-8:]
    say(f"the {name} engine ended without running {len(missing)} job(s)" + ("; it said:" if lines else f"; see {path}"))
    for line in lines:
        print(f"  | {line}", file=sys.stderr)


def check_tools(engine_cls) -> None:
    for tool, package in engine_cls.tools:
        if shutil.which(tool) is None:
            raise ImgpipeError(f"{tool} is not installed (the {engine_cls.name} engine needs it)",
                               hint=f"install it (Debian: apt-get install {package})")


def run(plan: Plan, jobs_path: Path, *, engine: str = "parallel", force: bool = False,
        halt_after: int | None = None) -> Outcome:
    """Run every job of the plan that is not done (every job with ``force``). ``halt_after``
    (the command line's) wins over the plan's [worker] halt_after."""
    engine_cls = load(engine)
    check_tools(engine_cls)
    run_dir = RunDir(jobs_path.parent)
    halt = plan.worker.halt_after if halt_after is None else halt_after
    try:
        return _run(plan, run_dir, jobs_path, engine_cls, force, halt)
    except OSError as e:  # the run directory's disk, mostly: full, or gone read-only
        where = f" ({e.filename})" if e.filename else ""
        raise ImgpipeError(
            f"cannot write in the run directory: {e.strerror or e}{where}", where=str(run_dir.path),
            hint=f"make room on its disk (df -h {shlex.quote(str(run_dir.path))}), or plan with --jobs-file "
            "on another disk; then run the same command again: what is done stays done") from None


def _run(plan: Plan, run_dir: RunDir, jobs_path: Path, engine_cls, force: bool, halt_after) -> Outcome:
    ssh = ssh_command(plan)
    with run_dir.lock() as lock, Stopper() as stopper:
        moved = run_dir.adopt(plan)
        if moved:
            say(f"{run_dir.path} held the files of another plan: they are now in earlier/{moved[:12]}/")
        left = run_dir.state().get("engine")
        if engine_alive(left):
            say(f"the {left['name']} engine of an earlier run (pid {left['pid']}, started by imgpipe pid "
                f"{left['imgpipe']}, which is gone) is still running: stopping it and its jobs first")
            stop_recorded(left, run_dir.path)
        run_dir.write_state(engine=None)
        _keep_rows_of_a_killed_round(plan, run_dir)
        sets = image_sets(plan.jobs)
        foreign = foreign_problems(plan.jobs, sets)
        if foreign and not force:
            raise PlanErrors(foreign, hint=FORCE_HINT)
        forced = run_dir.forced_jobs(plan, force)  # (a stopped forced run: what it had not made yet)
        run_dir.write_state(forcing=sorted(forced) if forced else None)
        done = {jid for jid, s in sets.items() if s.done and jid not in forced}
        hints = [f"imgpipe run {shlex.quote(str(jobs_path))}      # the same jobs, with imgpipe"]
        (run_dir / LOGS).mkdir(exist_ok=True)
        say(f"run directory {run_dir.path}")
        if len(done) == len(plan.jobs):
            say(f"nothing to do: all {len(plan.jobs)} job(s) done, their images are there")
            flagged = Watch(plan).kept({j: sets[j] for j in done})
            if flagged:
                say(f"the quality gate flagged {len(flagged)} of them "
                    f"({'failed' if plan.quality.on_fail == 'fail' else 'suspect'}): `imgpipe status {shlex.quote(str(run_dir.path))} --state "
                    f"{'failed' if plan.quality.on_fail == 'fail' else 'suspect'}` lists them")
            failing = bool(flagged) and plan.quality.on_fail == "fail"
            return Outcome(1 if failing else 0, run_dir, done, nothing_to_do=True, flagged=flagged)
        env = dict(os.environ)
        env.setdefault("PARALLEL_HOME", parallel_home())
        eng = engine_cls(Context(plan, run_dir, Path(os.path.abspath(jobs_path)), ssh, force, env))
        eng.prepare()
        run_dir.install(GATE)
        hints.append(eng.resume_hint())
        guard = Guard(lock, run_dir.path).start()  # forked before any thread runs
        try:
            return _rounds(plan, run_dir, eng, guard, stopper, done, hints, halt_after)
        finally:
            guard.close()
            (run_dir / HALT_GATE).unlink(missing_ok=True)


def _rounds(plan: Plan, run_dir: RunDir, eng, guard: Guard, stopper: Stopper, done: set[str],
            hints: list[str], halt_after: int | None) -> Outcome:
    nodes = eng.nodes()
    unreachable = eng.probe(nodes)
    live = [n for n in nodes if n not in unreachable]
    for host, why in unreachable.items():
        say(f"warning: node {host} {eng.lost[0]} ({why}); its pinned jobs will not run, "
            "the others go to the remaining nodes")
    history = [r.runtime for r in read_rows(run_dir / JOBLOG) if r.ok and r.tag == plan.tag]
    progress = Progress(len(plan.jobs), done, run_dir, waiting=eng.waiting, history=history,
                        slots=plan.worker.max_concurrent * max(1, len(live)))
    retries = Retries(plan.worker)
    watch = Watch(plan)
    for line in watch.start(done):
        say(line)
    halt = Halt(halt_after, run_dir, len(plan.jobs) - len(done), retries)
    gate = HaltGate(run_dir)
    session: list = []  # this session's rows
    progress.failed = retries.final
    seq_of = {j.id: n for n, j in enumerate(plan.jobs, start=1)}
    node_of = lambda name: plan_node(name, plan.worker.nodes)  # noqa: E731
    number = 0
    while live:
        todo = [j for j in plan.jobs
                if j.id not in done and j.id not in retries.final and (j.host is None or j.host in live)]
        if not todo:
            break
        scale = min(retries.scale(j.id) for j in todo)  # a round at a time for each size of request
        later = [j for j in todo if retries.scale(j.id) != scale]
        todo = [j for j in todo if retries.scale(j.id) == scale]
        if scale != 1:
            say(f"{len(todo)} job(s) stopped past their memory or time run again with {scale:g} times the "
                "memory and time (retry_factor)")
        number += 1
        attempts = run_dir.archive_logs(j.id for j in todo)
        (run_dir / ROUND_IDS).write_text("\n".join(j.id for j in todo) + "\n")
        output = run_dir / eng.output
        output_start = output.stat().st_size if output.exists() else 0
        gate.set(halt, 0)  # (the round's job log starts empty)
        proc = eng.start(Round(number, todo, list(live), frozenset(done), gate=halt.applies, scale=scale,
                               attempts=attempts))
        record = eng.record(proc, live)
        guard.watch(record)
        try:
            run_dir.write_state(engine=record)
            progress.round_ids = [j.id for j in todo]
            progress.tail = RoundRows(run_dir.path, plan.tag, progress.round_ids, node_of)
            if not _wait(proc, stopper, progress, halt, gate, eng, session, watch):
                watch.finish(stopping=lambda: True)
                return _stop(plan, run_dir, eng, guard, proc, record, progress, done, unreachable, hints)
        except BaseException:  # (the run directory's disk filled up, say): no engine is left behind
            if proc.poll() is None:
                say("stopping the jobs: imgpipe cannot go on")
                eng.stop(record, lambda: proc.poll() is None)
                proc.wait()
            raise
        rows = confirmed(plan, run_dir, progress.tail.final())
        if not halt.reason:
            _engine_said(output, output_start, todo, rows, eng.name)
        _end_round(run_dir, eng, guard, rows, seq_of, done)
        for line in eng.news():  # (what the round's last moments told)
            say(line)
        session += rows
        progress.session += [r.runtime for r in rows if r.ok]
        if not (retries.after_round(rows) or later) or halt.check(session):
            break
        if not any(j.id not in done and j.id not in retries.final and (j.host is None or j.host in live)
                   for j in plan.jobs):
            break  # nothing for another round: no need to ask the nodes again
        # a node that died during the round: stop sending jobs there
        newly = eng.probe(live)
        for host, why in newly.items():
            say(f"warning: node {host} {eng.lost[1]} ({why})")
        live = [n for n in live if n not in newly]
        unreachable.update(newly)
    progress.round_ids = []
    progress.tick(force=True)
    progress.close()
    watch.add(done)
    watch.finish(stopping=lambda: stopper.signal is not None)
    for line in watch.news():
        say(line)
    if not live:
        say("no node can be reached")
    failing = set(watch.flagged) if plan.quality.on_fail == "fail" else set()
    code = 0 if len(done) == len(plan.jobs) and not failing else 1
    return Outcome(code, run_dir, done - failing, unreachable, hints, halted=halt.reason, flagged=dict(watch.flagged))


def confirmed(plan: Plan, run_dir: RunDir, rows: list) -> list:
    """The round's rows, each success checked against the rule: a job whose attempt ended 0 is done
    when its images, seen from here, say so, or, when its image directory cannot be seen from here
    (a disk of the node's own), when its log says its wrapper finished. Any other success is turned
    into a failure (NO_IMAGES): something ended 0 without running the job through (an empty
    wrapper, a shell that ate the command...), and "done" is never said of images that are not there."""
    by_id = {j.id: j for j in plan.jobs}
    ok = [by_id[r.job_id] for r in rows if r.ok and r.job_id in by_id]
    if not ok:
        return rows
    sets = image_sets(ok)
    bad = {j.id for j in ok
           if not sets[j.id].done and (os.path.isdir(os.path.dirname(j.name)) or not _wrapper_finished(run_dir, j.id))}
    if not bad:
        return rows
    for jid in sorted(bad)[:3]:
        say(f"job {jid}: its attempt ended without an error, but its images are not there "
            f"(log {run_dir / LOGS / jid}): counted as failed")
    if len(bad) > 3:
        say(f"... and {len(bad) - 3} more such job(s)")
    return [replace(r, exitval=NO_IMAGES) if r.ok and r.job_id in bad else r for r in rows]


def _wrapper_finished(run_dir: RunDir, job_id: str) -> bool:
    """Whether the job's attempt ended with its wrapper's result saying its images are done."""
    result = read_result(run_dir / LOGS / job_id)
    return result is not None and result.job == job_id and result.outcome in ("done", "already-done")


def _keep_rows_of_a_killed_round(plan: Plan, run_dir: RunDir) -> None:
    """The rows of a round whose imgpipe was killed (its guard stopped the engine, but nobody
    merged them) go to the job log now: the attempts that finished then are history too."""
    path = run_dir / ROUND_JOBLOG
    rows = round_rows(run_dir.path, plan.tag, lambda name: plan_node(name, plan.worker.nodes))
    if rows:
        append_rows(run_dir / JOBLOG, rows, {j.id: n for n, j in enumerate(plan.jobs, start=1)})
    path.unlink(missing_ok=True)
    (run_dir / ROUND_IDS).unlink(missing_ok=True)
    (run_dir / ROUND_STOPPED).unlink(missing_ok=True)


def _end_round(run_dir: RunDir, eng, guard: Guard, rows, seq_of: dict[str, int], done: set[str]) -> None:
    """The round's rows go to the job log (under the Seq of the full input); the engine is no more."""
    append_rows(run_dir / JOBLOG, rows, seq_of)
    eng.end_round()
    (run_dir / ROUND_IDS).unlink(missing_ok=True)
    run_dir.write_state(engine=None)
    guard.watch(None)
    # a row that succeeded is the node's word, a moment ago, that the job's images are done
    done.update(r.job_id for r in rows if r.ok and r.job_id)
    forcing = run_dir.state().get("forcing")
    if isinstance(forcing, list) and forcing:  # what --force made again is done for good: not made again on resume
        run_dir.write_state(forcing=sorted(set(forcing) - done) or None)


def _stop(plan: Plan, run_dir: RunDir, eng, guard: Guard, proc: subprocess.Popen, record: dict,
          progress: Progress, done: set[str], unreachable: dict[str, str], hints: list[str]) -> Outcome:
    """Ctrl-C / SIGTERM: stop the engine and every job on every node; keep the job log consistent."""
    stopped_at = time.time()
    progress.close()
    say("stopping: telling every job to stop (WSClean is stopped, temp dirs removed)...")
    eng.stop(record, lambda: proc.poll() is None)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = confirmed(plan, run_dir, kept_at_stop(progress.tail.read(), stopped_at))
    _end_round(run_dir, eng, guard, rows, {j.id: n for n, j in enumerate(plan.jobs, start=1)}, done)
    say(f"stopped. {len(done)} of {len(plan.jobs)} job(s) done; run the same command again to resume.")
    return Outcome(130, run_dir, done, unreachable, hints, stopped=True)
