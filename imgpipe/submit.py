"""``--submit``: the run itself as a Slurm batch job, so that the night goes on when the user logs out.

Without it, imgpipe drives salloc/srun from the machine it was started on (a login node), and its
guard stops everything when it dies: that machine must stay up all night. With ``imgpipe CONFIG
INPUT... --submit`` (or ``imgpipe run RUN --submit``) the login node plans as usual (every plan
error is said there, and nothing is submitted when the plan is wrong, nor when nothing is left to
do), then writes ``RUN/batch.sh`` and submits it with sbatch; the command ends at once. The batch
job runs ``imgpipe run JOBS_FILE`` inside its allocation: the same lock, run.json, guard and engine
as a run started by hand, and the same resume (``--submit`` again, or the command without it once
the batch job has ended).

What it asks of Slurm for itself: 1 CPU and a little memory (imgpipe, GNU parallel and one srun
client per job running at once), ``--job-name=<plan tag>-batch``, its output in ``RUN/batch.out``,
the partition, account, QOS and reservation of ``slurm_options``, the partition's longest time
limit (``slurm_options``' --time is what each job, or each round's allocation, asks: the batch job
lives the whole night). It is steered away from the nodes the run needs whole (with ``slurm_nodes >
0``, an allocation takes every job slot of a node: the engine leaves the batch job's own node out,
``engines/slurm.py``), and told ``SIGTERM`` 2 minutes before its time limit (``--signal=B:TERM``:
imgpipe alone, which stops every job as for Ctrl-C; a resume goes on).

Stopping it: ``scancel --batch --signal=TERM N`` signals imgpipe alone, which stops every job
gracefully (WSClean told to stop, temp dirs removed), exit 130. A plain ``scancel N`` stops it
too, but Slurm then sends SIGTERM to every process of the batch job at once, srun included, and
srun answers SIGTERM by killing its job's tasks (SIGKILL, measured on Slurm 22.05; srun's own
source: ``case SIGTERM: launch_g_fwd_signal(SIGKILL)``): the jobs end at once, without their
clean-up (the next attempt of each removes its leftovers). imgpipe, told at the same moment, has
Slurm's KillWait (30 s by default) to end the round: it cancels what is left of its jobs in Slurm
and writes down, for each job Slurm killed so, that it was stopped (not failed).

run.json keeps ``{"batch": {"slurm_job": N, "submitted": ..., "script": ..., "output": ...}}``
(and, once the batch job's imgpipe has ended, ``"ended"`` and its ``"exit"``): ``imgpipe runs``
and ``imgpipe status`` say the run lives in Slurm job N and its state (one squeue for every run
listed); a second ``--submit`` while job N is pending or running is refused, naming it, and so is
a run started by hand.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path

from .commands import run as run_command
from .errors import ImgpipeError
from .hosts import print_nodes
from .run_dir import RunDir
from .run_lock import SUBMITTING, RunLock

# (the engines' modules are imported where they are needed: `imgpipe status` and `imgpipe runs`
# import this module, and need no plan module to say how a batch job is)

BATCH_SCRIPT = "batch.sh"
BATCH_OUTPUT = "batch.out"
CPUS = 1
MEM_BASE_MB = 500  # imgpipe (with the quality gate's numpy), its guard and GNU parallel
MEM_PER_JOB_MB = 16  # an srun client (and its shepherd) and the shell around it, per job running at once
MEM_MOST_MB = 4000
TIME_SIGNAL = 120  # seconds before its time limit the batch job's imgpipe is told to stop (SIGTERM)
# of slurm_options, what the batch job asks too: where and on whose account it runs (its time limit is
# the partition's longest: slurm_options' --time is what each job, or each round's allocation, asks)
KEPT = (("-p", "--partition"), ("-A", "--account"), ("-q", "--qos"), (None, "--reservation"))
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED")


# ---------------------------------------------------------------- what Slurm says of batch jobs


def slurm_states(job_ids, env: dict | None = None) -> dict[str, str] | None:
    """Slurm job id -> its state (PENDING, RUNNING, COMPLETED, CANCELLED...; with its reason when
    pending, 'PENDING Resources'), from one squeue for all of them; a job Slurm no longer knows is
    left out. None when Slurm cannot be asked from here."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    from .engines.slurm import slurm_env

    env = slurm_env(dict(os.environ) if env is None else env)
    r = run_command(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%N", "-j", ",".join(ids)], env=env, timeout=30)
    if not r.ok:
        if "Invalid job id" in r.stderr:  # (a single job id Slurm no longer knows)
            return {}
        return None
    out = {}
    for line in r.stdout.splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, rest = rest.partition("|")
        reason, _, nodes = rest.partition("|")
        if job in ids:
            out[job] = state + (f" {reason}" if state == "PENDING" and reason not in ("", "None") else "") + \
                (f" @{nodes}" if state == "RUNNING" and nodes else "")
    return out


def batch_record(run_dir: Path) -> dict | None:
    """run.json's record of the run's batch job, if it was submitted (and not run by hand since)."""
    record = RunDir(run_dir).state().get("batch")
    return record if isinstance(record, dict) and record.get("slurm_job") else None


def batch_state(record: dict, states: dict[str, str] | None) -> dict:
    """What is known of a batch job: {"slurm_job", "state": pending | running | ending | ended | None
    (Slurm not reachable, and imgpipe's end not recorded), "slurm_state", "node", "reason", "exit"}."""
    job = str(record["slurm_job"])
    said = states.get(job) if states is not None else None
    out = {"slurm_job": job, "state": None, "slurm_state": None, "node": None, "reason": None,
           "exit": record.get("exit"), "output": record.get("output")}
    if said:
        word, _, more = said.partition(" ")
        out["slurm_state"] = word
        if word == "PENDING":
            out["state"], out["reason"] = "pending", more or None
        elif word == "RUNNING":
            out["state"], out["node"] = "running", more[1:] if more.startswith("@") else None
        elif word in ("COMPLETING", "STAGE_OUT", "SIGNALING"):
            out["state"] = "ending"
        elif word in ACTIVE:
            out["state"] = word.lower()
        else:
            out["state"] = "ended"
    elif states is not None or "ended" in record:  # (Slurm no longer knows it: it ended, MinJobAge ago)
        out["state"] = "ended"
    return out


def batch_now(run_dir: Path) -> dict | None:
    """The run's batch job as Slurm has it now (``batch_state``, one squeue); None when the run
    was not submitted."""
    record = batch_record(run_dir)
    return batch_state(record, slurm_states([record["slurm_job"]])) if record else None


def batch_words(state: dict) -> str:
    """'Slurm job 12 (running on node001)', 'Slurm job 12 (pending: Resources)', 'Slurm job 12
    (ended: CANCELLED)', or 'Slurm job 12' when Slurm cannot be asked."""
    job, what = state["slurm_job"], state["state"]
    if what is None:
        return f"Slurm job {job}"
    if what == "running":
        return f"Slurm job {job} (running" + (f" on {state['node']}" if state["node"] else "") + ")"
    if what == "pending":
        return f"Slurm job {job} (pending" + (f": {state['reason']}" if state["reason"] else "") + ")"
    if what == "ended":
        how = [state["slurm_state"]] if state["slurm_state"] else []
        if state["exit"] is not None:
            how.append(f"imgpipe exit {state['exit']}")
        return f"Slurm job {job} (ended" + (f": {', '.join(how)}" if how else "") + ")"
    return f"Slurm job {job} ({what})"


def live(state: dict) -> bool:
    """Is the batch job still queued or running (not known: no)?"""
    return state["state"] not in (None, "ended")


def stop_words(job: str) -> str:
    return f"scancel --batch --signal=TERM {job}"


# ---------------------------------------------------------------- runs by hand, and the batch job's own


def refuse_if_submitted(jobs_path: Path) -> None:
    """A run started by hand, outside the run's batch job: refused while that job is pending or
    running (it would run the plan beside it); once it has ended, its record goes (the run lives
    here now). Inside the batch job itself: nothing."""
    run = RunDir(Path(jobs_path).parent)
    record = batch_record(run.path)
    if record is None or batch_job() == str(record["slurm_job"]):
        return
    states = slurm_states([record["slurm_job"]])
    state = batch_state(record, states)
    if live(state):
        raise ImgpipeError(
            f"this plan is submitted: it lives in {batch_words(state)}, which runs it",
            where=str(run.path),
            hint=f"follow it with `imgpipe status {shlex.quote(str(run.path))}`; to run it here instead, stop it first "
            f"({stop_words(state['slurm_job'])})")
    if states is not None:
        run.write_state(batch=None)


def batch_job() -> str | None:
    """The Slurm job id when this imgpipe is a run's own batch job (its batch.sh says so), else None."""
    from .engines.slurm import BATCH_JOB

    return os.environ.get(BATCH_JOB) or None


def batch_ended(jobs_path: Path, job: str, code: int) -> None:
    """The batch job's imgpipe ends: run.json says so (Slurm forgets a job MinJobAge after its end)."""
    run = RunDir(Path(jobs_path).parent)
    record = run.state().get("batch")
    if not isinstance(record, dict) or str(record.get("slurm_job")) != job:
        record = {"slurm_job": int(job) if job.isdigit() else job}  # (batch.sh submitted by hand)
    run.write_state(batch={**record, "ended": time.time(), "exit": code})


# ---------------------------------------------------------------- submitting


def head_options(plan, usable: list, placement: list[str], limit: str | None) -> tuple[list[str], str]:
    """sbatch's options for the batch job itself, and what it asks, in words. Its memory: what
    imgpipe needs, and an srun client for each job that may run at once (max_concurrent a node on
    each of the ``usable`` nodes, engines.slurm.Node), no more than half the smallest node's.
    Its time limit: ``limit``, the partition's longest (the night's length is not known; a round's
    allocation, or each job, asks for its own); told SIGTERM TIME_SIGNAL s before it, when it has one."""
    from .engines.slurm import partition_of, slurm_minutes

    options = shlex.split(plan.worker.slurm_options)
    kept = []
    i = 0
    while i < len(options):
        word = options[i]
        for short, long in KEPT:
            if word == long or (short and word == short):
                kept += options[i:i + 2]
                i += 1
                break
            if word.startswith(long + "=") or (short and word.startswith(short) and len(word) > 2):
                kept.append(word)
                break
        i += 1
    nodes = usable if plan.worker.nodes == ("slurm",) else [n for n in usable if n.name in plan.worker.nodes]
    slots = plan.worker.max_concurrent * max(1, len(nodes))
    mem = min(MEM_MOST_MB, MEM_BASE_MB + MEM_PER_JOB_MB * slots, *(n.mem_mb // 2 for n in usable if n.mem_mb))
    words = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={CPUS}", f"--mem={mem}", *kept, *placement]
    if limit is not None:
        words.append(f"--time={limit}")
        if (slurm_minutes(limit) or 0) >= 10:  # (a limit Slurm keeps in whole minutes, checked every ~30 s)
            words.append(f"--signal=B:TERM@{TIME_SIGNAL}")
    partition = partition_of(kept)
    said = (f"{CPUS} CPU, {mem} MB, " + (f"partition {partition}" if partition else "the default partition")
            + ", time limit " + ("none" if limit == "UNLIMITED" else limit or "the partition's default"))
    return words, said


def partition_limit(partition: str | None, env: dict) -> str | None:
    """The partition's longest time limit as sinfo says it ('UNLIMITED' for infinite), None when
    it does not say."""
    r = run_command(["sinfo", "-h", "-o", "%P|%l"], env=env, timeout=60)
    for line in r.stdout.splitlines() if r.ok else ():
        name, _, limit = line.strip().partition("|")
        if (partition is None and name.endswith("*")) or (partition is not None and name.rstrip("*") == partition):
            limit = limit.strip()
            if limit.lower() in ("infinite", "unlimited"):
                return "UNLIMITED"
            return limit if re.fullmatch(r"[\d:-]+", limit) else None
    return None


def placement(plan, usable: list[str], allocation: bool) -> list[str]:
    """Where the batch job is not to go: with slurm_nodes > 0, the nodes the run may use (an
    allocation takes a node's every job slot), else the nodes jobs are pinned to (they keep their
    slots), when Slurm has other usable nodes for it; [] when it has none."""
    named = plan.worker.nodes != ("slurm",)
    pinned = {j.host for j in plan.jobs if j.host}
    for avoid in ([n for n in usable if not named or n in plan.worker.nodes] if allocation else [], sorted(pinned)):
        avoid = [n for n in avoid if n in usable]
        if avoid and set(usable) - set(avoid):
            return [f"--exclude={print_nodes(avoid)}"]
    return []


def output_pattern(path: Path) -> str:
    """``path`` as sbatch's --output takes it: '%' is a pattern there ('%%' a '%'); a path holding a
    backslash is taken as it is (Slurm then replaces no pattern)."""
    text = str(path)
    return text if "\\" in text else text.replace("%", "%%")


def batch_script(run_args: list[str]) -> str:
    """RUN/batch.sh: imgpipe runs the plan inside the batch job (every word quoted: a path is data)."""
    from .engines.slurm import BATCH_JOB

    argv = [sys.executable, "-m", "imgpipe.cli", "run", *run_args]
    return ("#!/bin/bash\n"
            "# The run's own Slurm batch job, written by `imgpipe ... --submit`: imgpipe runs the plan here,\n"
            "# inside the allocation (`imgpipe status` follows it; `imgpipe run RUN --submit` submits it again).\n"
            f'export {BATCH_JOB}="$SLURM_JOB_ID"\n'
            f"exec {shlex.join(argv)}\n")


def submit(plan, jobs_path: Path, *, run_args: list[str], env: dict | None = None) -> int:
    """Submit the run of ``jobs_path`` (planned, something left to do) as a Slurm batch job that
    runs ``imgpipe run`` with ``run_args``; say where it goes, how to follow it and stop it."""
    from .engines.base import Context, ssh_command
    from .engines.slurm import Slurm, slurm_env

    if shutil.which("sbatch") is None:
        raise ImgpipeError("sbatch is not installed here: --submit runs the run as a Slurm batch job",
                           hint="run it on a machine with Slurm's client commands (Debian: apt-get install "
                           "slurm-client), or leave out --submit")
    env = slurm_env(dict(os.environ) if env is None else env)
    run = RunDir(Path(jobs_path).parent)
    jobs_path = Path(os.path.abspath(jobs_path))
    _refuse_live(run)
    try:
        lock = RunLock(run.path).__enter__()
    except ImgpipeError as e:
        raise ImgpipeError(f"{e.message}: nothing was submitted", where=e.where, hint=e.hint) from None
    try:
        lock.say(f"imgpipe pid {os.getpid()} on {socket.gethostname()} {SUBMITTING} since {time.ctime()}")
        _refuse_live(run)  # (again, holding the lock: two --submit at once submit once)
        # what the batch job will ask of Slurm for the jobs, asked now: a bad option is said here
        engine = Slurm(Context(plan, run, jobs_path, ssh_command(plan), False, dict(os.environ)))
        engine.cpus, engine.mem_mb = engine.resources()
        engine.validate()
        script = run / BATCH_SCRIPT
        script.write_text(batch_script(run_args), encoding="utf-8")
        script.chmod(0o755)
        usable = [n for n in engine.known(fresh=True) if n.usable]
        words, said = head_options(plan, usable, placement(plan, [n.name for n in usable], engine.allocation),
                                   partition_limit(engine.partition, env))
        argv = ["sbatch", "--parsable", f"--job-name={plan.tag}-batch",
                f"--output={output_pattern(run / BATCH_OUTPUT)}", "--open-mode=append", "--export=ALL", *words,
                str(script)]
        r = run_command(argv, env=env, timeout=60, cwd=os.getcwd())
        if not r.ok:
            raise ImgpipeError(f"sbatch refused the run's batch job: {r.reason}", where=str(run.path),
                               hint=f"imgpipe asked `{shlex.join(argv)}`; nothing was submitted")
        job = r.stdout.strip().split(";")[0].strip()
        if not job.isdigit():
            raise ImgpipeError(f"sbatch said {r.stdout.strip()!r}, not a job id", where=str(run.path))
        run.write_state(batch={"slurm_job": int(job), "submitted": time.time(), "script": str(script),
                               "output": str(run / BATCH_OUTPUT), "host": socket.gethostname(),
                               "request": said})
    finally:
        lock.__exit__(None, None, None)
    where = shlex.quote(str(run.path))
    out = sys.stderr
    print(f"imgpipe: submitted as Slurm job {job} ({said}): imgpipe runs the plan there; you may log out",
          file=out)
    print(f"  its output  {run / BATCH_OUTPUT}", file=out)
    print(f"  follow it   imgpipe status {where}      (`imgpipe runs` says: Slurm job {job})", file=out)
    print(f"  stop it     {stop_words(job)}      (every job stopped gracefully, as Ctrl-C; `scancel {job}` "
          "stops it too, but Slurm kills the running jobs at once)", file=out)
    print(f"  resume      imgpipe run {where} --submit", file=out)
    return 0


def _refuse_live(run: RunDir) -> None:
    record = batch_record(run.path)
    if record is None:
        return
    state = batch_state(record, slurm_states([record["slurm_job"]]))
    if live(state):
        raise ImgpipeError(f"this run is already submitted: {batch_words(state)}; nothing was submitted",
                           where=str(run.path),
                           hint=f"follow it with `imgpipe status {shlex.quote(str(run.path))}`, or stop it "
                           f"({stop_words(state['slurm_job'])}) and submit again")


def mark_killed(plan, jobs_path: Path, since: float, job: str) -> list[str]:
    """After a stop of the batch job: the jobs whose attempt (begun in this session, ``since``) left
    no result get one saying they were stopped. A plain ``scancel`` of the batch job sends SIGTERM to
    its srun clients too, and srun answers it with SIGKILL to the job on its node: the wrapper could
    not say so itself. (What it left, a temp dir and a claim, the next attempt removes.)"""
    import json

    from .attempt import RESULT_FORMAT, RESULT_MARK, read_log
    from .image_sets import image_sets
    from .run_dir import LOGS

    run = RunDir(Path(jobs_path).parent)
    sets = image_sets(plan.jobs)
    marked = []
    now = time.time()
    for j in plan.jobs:
        log = run / LOGS / j.id
        if sets[j.id].done or not log.is_file():
            continue
        facts = read_log(log, j.id)
        if facts.result is not None or facts.start is None or facts.start < since:
            continue
        doc = {"format": RESULT_FORMAT, "job": j.id, "outcome": "stopped", "tag": plan.tag, "run": run.label,
               "host": facts.host, "start": facts.start, "end": now, "exit_status": 128 + 9, "signal": "SIGKILL",
               "message": f"stopped: Slurm killed it (SIGKILL) when the run's batch job {job} was cancelled; this "
               "line is imgpipe's, not the wrapper's, which could not write it", "slurm": facts.slurm}
        with open(log, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
            newline = end > 0 and f.read(1) != b"\n"
            f.write((("\n" if newline else "") + RESULT_MARK + json.dumps(doc) + "\n").encode())
        marked.append(j.id)
    return marked
