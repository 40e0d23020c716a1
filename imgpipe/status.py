"""Status: each job's state, from its images (the rule), its attempts and its log.

Nothing here contacts a node. A job is

- ``done``: its images say so (``image_sets``: record of its command, every image there),
  whatever the job log says;
- ``running``: a run holds the run directory, the job is in its round, and its log was
  started (no row yet);
- ``failed``: not done, and its last attempt failed (its outcome: ``attempt.story``);
- ``stopped``: not done, and its last attempt was stopped by the user (Ctrl-C, SIGTERM, a killed
  imgpipe): it runs again on resume;
- ``not started``: none of the above (never run, or its images are gone since).

A done job whose main image the quality gate flagged (``quality``: its measures, kept next to
its images, judged against the night) is ``suspect``, with its reasons, under ``[quality]
on_fail = 'warn'``; under ``'fail'`` it is ``failed``, of class ``quality`` (its images are
kept; resume leaves it, ``--force`` makes it again). ``status`` reads the kept measures and
never measures an image itself: the run measures them as they land, and ``report`` measures
those it finds unmeasured.

``print_summary`` is the end-of-run report of ``imgpipe run`` and ``imgpipe CONFIG ...``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from . import status_memo
from .attempt import OUTCOMES, job_error, outcome_of, read_log
from .hosts import is_local, plan_node
from .image_sets import ImageSet, image_sets
from .quality import main_image, night
from .joblog import ROUND_JOBLOG, SLURM_PLACED, Row, last_attempts
from .run_dir import LOGS
from .run_lock import run_active
from .submit import batch_record, batch_state, slurm_states

if TYPE_CHECKING:  # (the plan's module is not needed to show a memo's rows)
    from .plan import Job, Plan


@dataclass(frozen=True)
class JobState:
    job: Job
    state: str  # done | suspect | failed | running | stopped | not started
    host: str | None = None
    start: float | None = None
    runtime: float | None = None
    exitval: int | None = None
    failure: str | None = None  # wsclean | env_file | ... | signal (attempt.OUTCOMES), or quality
    why: str | None = None
    log: str | None = None
    images: ImageSet | None = None
    slurm: str | None = None  # its Slurm job (and step) id, 'JOB' or 'JOB.STEP', when it ran through Slurm
    pending: float | None = None  # seconds it waited in Slurm's queue before it began (runtime: after it began)

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
            "obs_id": self.job.obs_id,
            "sw": self.job.sw,
            "images": self.images.state if self.images else None,
            "slurm": self.slurm,
            "pending": self.pending,
        }


def job_states(plan: Plan, run_dir: Path, *, measure: bool = False) -> list[JobState]:
    """Each job's state. ``measure``: the quality gate measures the done jobs' images it finds
    unmeasured (``report`` does; ``status`` only reads what is kept)."""
    run_dir = Path(run_dir)
    rows, in_round = last_attempts(run_dir, plan.tag, lambda name: node_name(name, plan),
                                   going_on=run_active(run_dir))  # (in_round: the round's jobs not ended)
    sets = image_sets(plan.jobs)
    slurm = (run_dir / "slurm.sh").exists()  # (this run went through Slurm: its logs name jobs and steps)
    logs = os.path.join(run_dir, LOGS)
    try:
        have_log = set(os.listdir(logs))  # (one listing, not a stat per job)
    except OSError:
        have_log = set()
    states = []
    for job in plan.jobs:
        log = os.path.join(logs, job.id)
        log_str = log if job.id in have_log else None  # (its path when there is one)
        row = rows.get(job.id)
        images = sets[job.id]
        began = read_log(log, job.id) if slurm and log_str else None  # (through Slurm: its job id, when it began)
        ids = began.slurm if began else None
        if job.id in in_round:
            if os.path.exists(log):  # its start: the wrapper's "start:" line (the log's times move with each line)
                facts = began or read_log(log, job.id)
                if slurm and facts.start is None:  # (srun was started; Slurm has not run it on a node yet)
                    states.append(JobState(job, "running", host=job.host, log=log, images=images,
                                           why="pending in Slurm's queue: not begun on a node yet"))
                    continue
                start = facts.start if facts.start is not None else os.stat(log).st_ctime
                states.append(JobState(job, "running", host=job.host or node_name(facts.host, plan), start=start,
                                       log=log, images=images, slurm=ids))
            else:
                states.append(JobState(job, "not started", images=images))
        elif images.done:
            ok = row if row is not None and row.ok else None
            start, runtime, pending = _ran(ok, began)
            states.append(JobState(job, "done", host=_host(ok, log, plan) if ok else None,
                                   start=start, runtime=runtime, exitval=0, why=_pending_words(pending),
                                   log=log_str, images=images, slurm=ids, pending=pending))
        elif row is not None and not row.ok:
            failure, why = outcome_of(row.exitval, row.signal)
            start, runtime, pending = _ran(row, began)
            states.append(JobState(job, "stopped" if failure == "stopped" else "failed", host=_host(row, log, plan),
                                   start=start, runtime=runtime, exitval=row.exitval, failure=failure,
                                   why=why + (f"; {_pending_words(pending)}" if _pending_words(pending) else ""),
                                   log=log_str, images=images, slurm=ids, pending=pending))
        elif log_str and images.state != "foreign" and (facts := read_log(log, job.id)).stopped:
            # its last attempt was stopped (the loop keeps no row of it): its result says so
            states.append(JobState(job, "stopped", host=node_name(facts.host, plan), start=facts.start,
                                   runtime=(facts.end - facts.start) if facts.end and facts.start else None,
                                   failure="stopped", why=f"{OUTCOMES['stopped'].words} ({facts.stopped})",
                                   log=log_str, images=images, slurm=ids))
        else:
            why = None
            if images.state == "foreign":
                why = "images of another command are there (--force replaces them)"
            elif row is not None:  # it succeeded, but its images are not (all) there now
                why = f"ran before, but its images are {'incomplete' if images.state == 'incomplete' else 'gone'}"
            states.append(JobState(job, "not started", why=why, log=log_str, images=images))
    return judged(plan, states, measure_now=measure)


PENDING_SAID = 1.0  # seconds in Slurm's queue worth a word in the why column


def _ran(row: Row | None, began) -> tuple[float | None, float | None, float | None]:
    """(start, runtime, pending) of an attempt: through Slurm, GNU parallel's row counts from srun's
    start, the time the job waited in Slurm's queue included; its log's start line says when it
    began on its node. Without it (or when it is not this row's attempt), the row's times."""
    if row is None:
        return None, None, None
    if began is None or began.start is None or not row.start - 1 <= began.start <= row.start + row.runtime + 1:
        return row.start, row.runtime, None
    pending = min(max(0.0, began.start - row.start), row.runtime)
    return row.start + pending, row.runtime - pending, pending


def _pending_words(pending: float | None) -> str | None:
    if pending is None or pending < PENDING_SAID:
        return None
    p = int(pending)
    return f"pending {p // 3600}:{p % 3600 // 60:02d}:{p % 60:02d} in Slurm's queue before it ran"


def judged(plan: Plan, states: list[JobState], *, measure_now: bool = False) -> list[JobState]:
    """The done jobs the quality gate flags, ``suspect`` (or ``failed``, class quality, under
    ``on_fail = 'fail'``) with their reasons; the others as they are."""
    done = [(s.job.id, s.job.name, s.images.record.images, s.images.record.command) for s in states
            if s.state == "done"]
    verdicts = night(done, plan.quality, measure_now=measure_now) if done else {}
    if not any(not v.ok for v in verdicts.values()):
        return states
    failing = plan.quality.on_fail == "fail"
    return [replace(s, state="failed" if failing else "suspect", failure="quality", why=verdicts[s.job.id].why)
            if s.job.id in verdicts and not verdicts[s.job.id].ok else s for s in states]


def status_rows(jobs_path: Path, plan: Plan | None = None,
                every_row: bool = True) -> tuple[str, list[dict], status_memo.DoneJobs | None]:
    """(the plan's digest, one row per job: ``JobState.as_dict()`` and its MS ``label``, None).

    The rows are ``job_states`` itself, or its memo (``status_memo``) when nothing they were made
    from has changed since. Without ``every_row``, the memo may give the rows of the jobs not
    done only, and the done ones in brief (``DoneJobs``) in place of None.
    """
    jobs_path = Path(jobs_path)
    run_dir = jobs_path.parent
    kept = status_memo.load(run_dir, jobs_path, every_row)
    if kept is not None:
        return kept
    started = time.time()
    if plan is None:
        from . import jobs_file  # (the plan is read only on this path)

        plan = jobs_file.read(jobs_path)
    states = job_states(plan, run_dir)
    rows = [{**s.as_dict(), "label": ms_label(s.job)} for s in states]
    # directories other than its prefix's that a record lists images in (images are "-...": rare)
    others = {os.path.dirname(s.job.name + i) for s in states if s.images and s.images.record
              for i in s.images.record.images if "/" in i}
    others = sorted(others - {os.path.dirname(s.job.name) for s in states}) if others else []
    images = [s.images.record.images if s.images and s.images.record and s.images.state != "foreign" else ()
              for s in states]
    status_memo.save(run_dir, jobs_path, plan.digest, rows, others, started, images)
    return plan.digest, rows, None


def node_name(host: str | None, plan: Plan) -> str | None:
    """A node as the plan names it, from the name its wrapper gave itself (this machine: its local node)."""
    return plan_node(host, plan.worker.nodes)


def host_from_log(log: str | os.PathLike, plan: Plan) -> str | None:
    """The node a job's wrapper names in its log, as the plan names it."""
    return node_name(read_log(log).host, plan)


def _host(row: Row, log: str | os.PathLike, plan: Plan) -> str:
    """The node of an attempt: GNU parallel's ':' is this machine; a job Slurm placed names its node
    in its log."""
    if row.host == ":":  # (this machine, under the name the plan gives it: --nodes vm shows vm)
        return next((h for h in plan.worker.nodes if is_local(h)), "localhost")
    if row.host == SLURM_PLACED:
        return host_from_log(log, plan) or row.host
    return row.host


def counts(states: Iterable[str]) -> dict[str, int]:
    """How many jobs are in each state (the states as words: ``JobState.state`` or a row's "state")."""
    out = {"done": 0, "suspect": 0, "failed": 0, "running": 0, "stopped": 0, "not started": 0}
    for state in states:
        out[state] += 1
    out["total"] = sum(out.values())
    return out


def host_summary(rows: list[dict], done: status_memo.DoneJobs | None = None) -> dict[str, dict]:
    """host -> jobs done, failed, and busy seconds (sum of runtimes), from status rows (and the
    done jobs in brief)."""
    out: dict[str, dict] = {}
    for host, (n, busy) in sorted(done.hosts.items()) if done else ():
        out[host] = {"done": n, "failed": 0, "busy": busy}
    for r in rows:
        if r["host"] is None or r["state"] not in ("done", "suspect", "failed"):
            continue
        h = out.setdefault(r["host"], {"done": 0, "failed": 0, "busy": 0.0})
        h["failed" if r["state"] == "failed" else "done"] += 1
        h["busy"] += r["runtime"] or 0.0
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


GROUPS_SHOWN = 10  # ways of failing shown at the end of a run (the rest: imgpipe status)


def why_words(s: JobState) -> str:
    """Why a job failed, in words: its class's reason, and WSClean's (or the wrapper's) own words."""
    return failure_words(s.why, s.log)


def failure_words(why: str | None, log: str | None) -> str:
    said = job_error(log) if log else None
    if why and said and said.lower() not in why.lower():
        return f"{why}: {said}"
    return why or said or "failed"


def id_ranges(ids: list[str], width: int = 70) -> str:
    """'0001-0004, 0007' for a sorted list of job ids, cut to ``width`` with ', ...'."""
    out: list[str] = []
    first = last = None  # the run of consecutive ids going on
    last_n = -2
    length = 0
    for jid in ids:
        n = int(jid) if jid.isdigit() else -2
        if last is not None and n == last_n + 1 and n >= 0 and len(jid) == len(last):
            last, last_n = jid, n
            continue
        if last is not None:
            out.append(first if first == last else f"{first}-{last}")
            length += len(out[-1]) + 2
            if length > width + 2:  # (what follows would be cut anyway)
                first = last = None
                break
        first = last = jid
        last_n = n
    if last is not None:
        out.append(first if first == last else f"{first}-{last}")
    text = ", ".join(out)
    return text if len(text) <= width else text[: width - 3].rsplit(",", 1)[0] + ", ..."


def print_summary(plan: Plan, outcome, out=None) -> int:
    """The end-of-run report of an engine run (``engines.loop.Outcome``); returns its exit code.

    Failures that share their class and their words are one line ("30 jobs failed: WSClean
    failed: ..."), with the first job's log and the end of it; not-run jobs likewise.
    """
    out = out or sys.stderr
    run_dir = outcome.run.path
    if outcome.nothing_to_do or outcome.stopped:
        return outcome.code  # (the loop said it)
    total = len(plan.jobs)
    if len(outcome.done) == total:
        suspect = sorted(outcome.flagged)
        print(f"imgpipe: all {total} job(s) done" + (f", {len(suspect)} suspect" if suspect else "")
              + f". Run directory: {run_dir}", file=out)
        if suspect:
            _print_suspects(plan, outcome.flagged, run_dir, out)
        return outcome.code
    states = [s for s in job_states(plan, run_dir) if s.job.id not in outcome.done]
    failed = [s for s in states if s.state == "failed"]
    print(f"imgpipe: {len(outcome.done)} of {total} job(s) done, {len(failed)} failed, "
          f"{total - len(outcome.done) - len(failed)} not run. Run directory: {run_dir}", file=out)
    groups: dict[tuple[str, str], list[JobState]] = {}
    for s in sorted(states, key=lambda s: s.job.id):
        if s.state == "failed":
            key = ("failed", why_words(s))
        elif s.job.host in outcome.unreachable:
            key = ("not run", f"not run: node {s.job.host} unreachable ({outcome.unreachable[s.job.host]})")
        elif outcome.halted:
            key = ("not run", "not started: the run was halted")
        else:
            key = ("not run", s.why or "not run")
        groups.setdefault(key, []).append(s)
    for n, ((state, why), members) in enumerate(sorted(groups.items(), key=lambda g: (g[0][0] != "failed",
                                                                                        -len(g[1])))):
        if n == GROUPS_SHOWN:
            print(f"  ... and {len(groups) - n} more way(s): `imgpipe status {run_dir}` lists every job", file=out)
            break
        first = members[0]
        host = first.host or first.job.host or "-"
        if len(members) == 1:
            print(f"  {first.job.id:<6} {host:<12} {why}" + (f" (log {first.log})" if first.log else ""), file=out)
        else:
            print(f"  {len(members)} jobs {state}: {why}", file=out)
            print(f"    jobs {id_ranges([m.job.id for m in members])}; the first, {first.job.id} on {host}: "
                  f"{first.log or 'no log'}", file=out)
        if state == "failed" and first.failure == "quality":
            print(f"         | its images: {first.job.name}{quality_image(first)}", file=out)
        elif state == "failed":  # the end of its log; and of its stderr (a crash, a missing library...)
            for line in tail(first.log, 3):
                print(f"         | {line}", file=out)
            for line in tail(f"{first.log}.err" if first.log else None, 3):
                print(f"  stderr | {line}", file=out)
    if outcome.halted:
        print(f"imgpipe: halted: {outcome.halted}", file=out)
    if any(s.failure == "quality" for s in failed):
        print("imgpipe: the images of the jobs that failed the quality gate are kept for a look; a resume "
              "leaves them, --force makes them again", file=out)
    print("To resume (runs only what is not done):", file=out)
    for hint in outcome.hints:
        print(f"  {hint}", file=out)
    return outcome.code


def quality_image(s: JobState) -> str:
    """The suffix of the image the quality gate judged (its main image)."""
    return main_image(s.job.name, s.images.record.images if s.images and s.images.record else ()) or "-image.fits"


def _print_suspects(plan: Plan, flagged: dict[str, str], run_dir, out) -> None:
    """The jobs whose images the quality gate flagged (done, kept on record), one line each."""
    names = {j.id: j.name for j in plan.jobs}
    for n, job_id in enumerate(sorted(flagged)):
        if n == GROUPS_SHOWN:
            print(f"  ... and {len(flagged) - n} more: `imgpipe status {run_dir} --state suspect` lists them", file=out)
            break
        print(f"  {job_id:<6} suspect: {flagged[job_id]} ({names.get(job_id, '')})", file=out)


def exit_status(c: dict[str, int]) -> int:
    """`imgpipe status`'s exit status from ``counts``: 0 every job done (suspect ones too: their
    images are there), 1 some failed, 3 some running, stopped or not started."""
    if c["failed"]:
        return 1
    return 0 if c["done"] + c["suspect"] == c["total"] else 3


def ms_label(job: Job) -> str:
    """The job's data in a few words: obs_id/SW when the data handler named them, else the MS name."""
    if job.obs_id and job.sw:
        return f"{job.obs_id}/{job.sw}" + (f" ({len(job.ms)} MSs)" if len(job.ms) > 1 else "")
    names = [os.path.basename(m.rstrip("/")) for m in job.ms]
    if not names:
        return "-"
    return names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")


def last_activity(jobs_path: Path) -> float:
    """When a run last did something: its jobs file, job logs, logs or run.json changed."""
    times = []
    for p in (jobs_path, *(jobs_path.parent / n for n in ("joblog.tsv", ROUND_JOBLOG, LOGS, "run.json"))):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def run_overview(jobs_path: Path) -> dict:
    """One run for `imgpipe runs`: where, its config, its inputs in a few words, last activity, counts,
    and its batch job's record when it was submitted (``batch_states`` says how that job is)."""
    from . import jobs_file
    from .errors import ImgpipeError

    row = {"run_dir": str(jobs_path.parent), "jobs_file": str(jobs_path), "last_activity": last_activity(jobs_path),
           "batch": batch_record(jobs_path.parent)}
    try:
        plan = jobs_file.read(jobs_path)
    except ImgpipeError as e:
        return {**row, "config": "-", "inputs": f"(unreadable: {e.message})",
                "counts": {"done": 0, "suspect": 0, "failed": 0, "running": 0, "stopped": 0, "not started": 0,
                           "total": 0}}
    rows = status_rows(jobs_path, plan)[1]  # (every row)
    ms = [m for j in plan.jobs for m in j.ms]
    names = sorted({os.path.basename(m.rstrip("/")) for m in ms})
    obs = sorted({j.obs_id for j in plan.jobs if j.obs_id})
    if obs:
        inputs = f"{len(ms)} MSs of {obs[0]}" + (f" .. {obs[-1]}" if len(obs) > 1 else "")
    elif len(names) > 2:
        inputs = f"{len(ms)} MSs: {names[0]} .. {names[-1]}"
    else:
        inputs = ", ".join(names)
    return {**row, "config": plan.config_path, "inputs": inputs, "counts": counts(r["state"] for r in rows)}


def batch_states(rows: list[dict]) -> None:
    """Each submitted run's batch job as Slurm has it now (``submit.batch_state``), asked of squeue
    once for every run: ``row["batch"]`` becomes that state (None for a run not submitted)."""
    records = [r["batch"] for r in rows if r.get("batch")]
    states = slurm_states([rec["slurm_job"] for rec in records]) if records else {}
    for r in rows:
        if r.get("batch"):
            r["batch"] = batch_state(r["batch"], states)
