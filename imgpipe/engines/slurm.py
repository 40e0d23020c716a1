"""The Slurm engine: every job runs through Slurm (``nodes = 'slurm'``, or ``--engine slurm``).

GNU parallel still runs the jobs, with the same input, job log, ``--resume-failed`` and
pinning as the parallel engine (``gnu_parallel``, which both engines use; this one gives it
another "ssh", -S list, input line and SHARE word, and stands on ``base.Engine``): its ssh is
``bin/imgpipe-srun``, which runs each job with srun on the node GNU parallel chose.

- ``slurm_nodes = K > 0``: one allocation per round, ``salloc -N K --ntasks-per-node=S
  -c C --mem-per-cpu=M [-w PINNED]``, inside which ``bin/imgpipe-slurm-round`` runs GNU
  parallel over the allocated nodes (S = max_concurrent slots each), every job a step
  ``srun --exact -N1 -n1 -c C --mem-per-cpu=M -w NODE``. Pinned jobs run on their node
  (the allocation includes it), at most S per node.
- ``slurm_nodes = 0`` (nenucal's default mode): every job is a Slurm job of its own,
  ``srun -N1 -n1 -c C --mem=M [-w NODE]``; pinned jobs name their node, the others go
  where Slurm puts them (GNU parallel's pseudo-host ``slurm``). What bounds the jobs at
  once: S per node for pinned jobs (GNU parallel's slots), S x (usable nodes) in all, and
  what each job asks (a 1/S share of a node) keeps any node to S jobs.

C and M are the node's CPUs and memory divided by max_concurrent (from ``sinfo``: the
smallest node of the partition), or ``[worker.resources.heavy]``; they are always asked
of Slurm, and the wrapper gives WSClean ``-j C -abs-mem 0.9 x M`` (what Slurm granted,
with room for what WSClean uses beyond its own limit), unless the user set -j or a memory.

Facts this rests on (Slurm 22.05, measured: ../shared/spec/field-notes.md): srun exits 0
when its node fails, 1 when its allocation is gone (a node of it failed: the steps GNU
parallel starts after that never run) and 1 or 137 when a step goes past its memory, so the
shim has the job say on the node when it began and ended, asks Slurm (scontrol) what became
of a job that did not end by itself, and says which (node, memory, time limit, Slurm: node
and Slurm failures run again in the next round, a new allocation); a node that
failed is said live (``news``, from RUN_DIR/slurm.events); SIGTERM to srun kills
the step without its clean-up, so a stop is SIGHUP to GNU parallel, then (``StepShell``)
``scancel`` of the jobs still pending and TERM to the wrappers through ``srun --overlap``
steps of the jobs running (Slurm asked again at each round), then ``scancel``; control steps need
``--overlap``; every step asks for its memory; ``--no-kill`` is not used (after a node
failure the allocation ends, and the next round makes a new one without that node).

Why not job arrays (``sbatch --array=LIST%K -w NODE``, one array per node): measured
slower (60 trivial jobs on 6 slots: 6.0 s against 3.5 s with steps), they need a shared
file system for their output files, they outlive a Ctrl-C unless cancelled by name, and
the job log, resume and pinning would have to be rebuilt for them.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..commands import run as run_command
from ..errors import ImgpipeError
from ..hosts import print_nodes
from ..plan import Job
from ..joblog import JOBLOG, ROUND_JOBLOG, SLURM_PLACED
from . import control
from .base import Engine, Round
from .gnu_parallel import INPUT, PROGRESS_BAR, ROUND_INPUT, GnuParallel, input_line, run_lock_lines, with_bar

SHIM = "imgpipe-srun"
ROUND_SCRIPT = "imgpipe-slurm-round"
SCRIPT = "slurm.sh"
JOB_FILE = "slurm.job"  # the allocation's job id (written inside it)
PID_FILE = "slurm.pid"  # GNU parallel's pid inside the allocation
EVENTS = "slurm.events"  # what bin/imgpipe-srun saw Slurm do (a node that failed), one line each
ANY = SLURM_PLACED  # GNU parallel's host for a job Slurm places (slurm_nodes = 0)
USABLE = ("idle", "mixed", "allocated", "completing")  # what sinfo calls a node that takes jobs
MEM_FOR_WSCLEAN = 0.9  # of the memory Slurm granted, given to WSClean's -abs-mem
BATCH_JOB = "IMGPIPE_BATCH_JOB"  # set in the run's own batch job (imgpipe --submit: imgpipe/submit.py)


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    state: str
    reason: str = ""  # why it is down or drained, as sinfo says (%E)

    @property
    def usable(self) -> bool:
        """Slurm gives it now: a state of USABLE, responding (sinfo's '*': not responding)."""
        return "*" not in self.state and self.state.rstrip("~#!%$@^-") in USABLE

    def why_not(self) -> str:
        said = f"Slurm says it is {self.state}" + (" (not responding)" if "*" in self.state else "")
        return said + (f": {self.reason}" if self.reason else "")


def user_options(settings) -> list[str]:
    return shlex.split(settings.slurm_options)


def slurm_minutes(value: str) -> float | None:
    """A Slurm time limit (``--time``: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in minutes; None when it
    has none (UNLIMITED, INFINITE) or is not one of these forms (Slurm says so at the plan)."""
    days, dash, rest = value.partition("-")
    if not dash:
        days, rest = "0", value
    parts = rest.split(":")
    if not (days.isdigit() and all(p.isdigit() for p in parts)) or len(parts) > 3 or (dash and not parts[0]):
        return None
    n = [int(p) for p in parts]
    if dash:  # D-H, D-H:M, D-H:M:S
        h, m, s = (n + [0, 0])[:3]
    else:  # M, M:S, H:M:S
        h, m, s = [0, *n] if len(n) == 2 else n if len(n) == 3 else [0, n[0], 0]
    return int(days) * 1440 + h * 60 + m + s / 60


def time_words(options: list[str]) -> list[tuple[int, str, str]]:
    """Each time limit in sbatch-style ``options`` (``-t V``, ``--time V``, ``--time=V``, ``-tV``):
    (the index of the word holding its value, what comes before the value in that word, the value)."""
    found = []
    for i, word in enumerate(options):
        if word in ("-t", "--time") and i + 1 < len(options):
            found.append((i + 1, "", options[i + 1]))
        elif word.startswith("--time="):
            found.append((i, "--time=", word[len("--time="):]))
        elif word.startswith("-t") and not word.startswith("--") and len(word) > 2:
            found.append((i, "-t", word[2:]))
    return found


def scaled_time(options: list[str], scale: float) -> list[str]:
    """``options`` with the time limit the user set (``-t``/``--time``) times ``scale``, in whole
    minutes (a round of jobs stopped past their time, run again: retry_factor)."""
    out = list(options)
    for at, flag, value in time_words(options):
        minutes = slurm_minutes(value)
        if minutes is not None:
            out[at] = flag + str(max(1, math.ceil(minutes * scale)))
    return out


def partition_of(options: list[str]) -> str | None:
    for i, word in enumerate(options):
        if word in ("-p", "--partition") and i + 1 < len(options):
            return options[i + 1]
        if word.startswith("--partition="):
            return word.split("=", 1)[1]
        if word.startswith("-p") and len(word) > 2:
            return word[2:]
    return None


def has_option(options: list[str], *names: str) -> bool:
    return any(w == n or w.startswith(n + "=") or (len(n) == 2 and w.startswith(n) and len(w) > 2)
               for w in options for n in names)


def read_nodes(partition: str | None, env: dict) -> tuple[list[Node], list[str]]:
    """The nodes of the partition (the default one when None), as sinfo says; and every partition."""
    result = run_command(["sinfo", "-h", "-N", "-o", "%N|%c|%m|%T|%P|%E"], env=env, timeout=60)
    result.check("sinfo", hint="is Slurm reachable from here (SLURM_CONF, munge)?")
    nodes: dict[str, Node] = {}
    partitions: dict[str, None] = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|", 5)
        if len(parts) != 6:
            continue
        name, cpus, mem, state, part, reason = parts
        reason = "" if reason.strip() in ("none", "(null)") else reason.strip()
        partitions[part.rstrip("*")] = None
        default = part.endswith("*")
        if (partition is None and not default) or (partition is not None and part.rstrip("*") != partition):
            continue
        try:
            nodes.setdefault(name, Node(name, int(cpus), int(re.sub(r"\D.*", "", mem) or 0), state, reason))
        except ValueError:
            continue
    return list(nodes.values()), list(partitions)


def slurm_env(env: dict) -> dict:
    """The environment for Slurm's commands: no SLURM_* of an allocation imgpipe itself may run in
    (srun would make steps in it), SLURM_CONF kept."""
    return {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def squeue(env: dict, *args: str) -> list[list[str]]:
    r = run_command(["squeue", "-h", *args], env=env, timeout=30)
    return [line.split("|") for line in r.stdout.splitlines() if line.strip()] if r.ok else []


class StepShell:
    """control.stop_engine's "shell" under Slurm: a command on a node through an ``srun --overlap``
    step of one of our jobs running there. Slurm is asked again (squeue) for each round of stop
    connections (what was seen less than LOOK_AGAIN s before serves the whole round): a node whose
    jobs have ended since has nothing left to stop ('true'), where an ``srun --overlap`` into a job
    gone would fail, and the stop would try again until STOP_GRACE is over (20 s). With
    ``cancel_pending`` (slurm_nodes = 0), our jobs still pending are cancelled at each look: they
    have run nothing yet, GNU parallel would wait for them, and Slurm would start them as soon as the
    running ones stop."""

    LOOK_AGAIN = 0.3

    def __init__(self, job_name: str, env: dict, cancel_pending: bool) -> None:
        import threading

        self.job_name, self.env, self.cancel_pending = job_name, env, cancel_pending
        self.lock = threading.Lock()  # (on_nodes calls it from several threads at once)
        self.seen = -math.inf
        self.job_of: dict[str, str] = {}

    def look(self) -> None:
        from hostlist import expand_hostlist

        job_of: dict[str, str] = {}
        pending = []
        for job_id, state, nodelist in squeue(self.env, "-n", self.job_name, "-o", "%A|%T|%N"):
            if state == "RUNNING":
                for node in expand_hostlist(nodelist):
                    job_of.setdefault(node, job_id)
            elif state == "PENDING":
                pending.append(job_id)
        if pending and self.cancel_pending:
            run_command(["scancel", *pending], env=self.env, timeout=60)
        self.job_of = job_of

    def __call__(self, host: str, script: str) -> list[str]:
        with self.lock:
            if time.monotonic() - self.seen > self.LOOK_AGAIN:
                self.look()
                self.seen = time.monotonic()
            job = self.job_of.get(host)
        if job is None:
            return ["true"]  # no job of ours runs there: nothing to reach
        return ["srun", "--overlap", "--quiet", f"--jobid={job}", "-N1", "-n1", "-w", host, "sh", "-c", script]


class Slurm(Engine):
    name = "slurm"
    tools = tuple((t, "slurm-client") for t in ("sinfo", "salloc", "srun", "squeue", "scancel", "sbatch")) + (
        ("parallel", "parallel"),)
    output = "slurm.stderr"
    lost = ("is left out", "is left out from now on")  # (down or drained: Slurm would not give it)

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # GNU parallel runs the jobs, each through bin/imgpipe-srun (its "ssh"); the wrapper goes with
        # each job ("env": srun passes the environment to its node)
        self.gnu = GnuParallel(self, logins=self.logins, ssh_text=self.ssh_text, share=self.share, line=self.line,
                               ship="env")
        self.env = slurm_env(ctx.env)
        self.options = user_options(ctx.plan.worker)
        self.partition = partition_of(self.options)
        self.allocation = ctx.plan.worker.slurm_nodes > 0
        # the Slurm job name: the plan and the run directory (two runs of one plan from two places
        # never cancel each other's jobs)
        self.job_name = f"{ctx.plan.tag}-{hashlib.sha1(str(ctx.run.path).encode()).hexdigest()[:6]}"
        self.cpus = self.mem_mb = 0
        self.max_nodes = 0  # the most nodes Slurm gives an allocation, when fewer than asked (0: not known)
        self._max_said = ""
        self._known: list[Node] | None = None
        self.partitions: list[str] = []
        self._waiting: tuple[float, str | None] = (0.0, None)
        self._events = 0  # bytes of EVENTS told
        self._failed: dict[str, str] = {}  # node -> how it failed, told in this round
        self._unnamed: dict[str, str] = {}  # Slurm job -> its state, when the node that failed is not known
        self._round_over = False
        self._notes: list[str] = []  # what the engine has to say at the round's start
        self._told_count: int | None = None

    # ---------------------------------------------------------------- nodes and resources

    def known(self, fresh: bool = False) -> list[Node]:
        if self._known is None or fresh:
            self._known, self.partitions = read_nodes(self.partition, self.env)
        return self._known

    def nodes(self) -> list[str]:
        """The partition's nodes (only those of [worker] nodes when it lists some), and the nodes
        pinned jobs name (the probe says which of them cannot take jobs)."""
        names = [n.name for n in self.known()]
        wanted = self.ctx.plan.worker.nodes
        if wanted != (ANY,):
            names = [n for n in names if n in wanted]
        pinned = [j.host for j in self.ctx.plan.jobs if j.host and j.host not in names]
        return list(dict.fromkeys(names + pinned))

    def probe(self, nodes: list[str]) -> dict[str, str]:
        """The nodes Slurm would not give now (down, drained, draining, ...), with sinfo's reason."""
        known = {n.name: n for n in self.known(fresh=True)}
        out = {}
        for node in nodes:
            if node not in known:
                out[node] = f"not a node of the Slurm partition {self.partition or '(the default one)'}"
            elif not known[node].usable:
                out[node] = known[node].why_not()
            elif self.allocation and node == self.ctx.env.get("SLURMD_NODENAME") and self.ctx.env.get(BATCH_JOB):
                out[node] = (f"imgpipe itself runs there, in the run's batch job (Slurm job "
                             f"{self.ctx.env[BATCH_JOB]}), and an allocation takes every job slot of a node")
        return out

    def resources(self) -> tuple[int, int]:
        """(CPUs, memory MB) each job asks of Slurm."""
        w = self.ctx.plan.worker
        usable = [n for n in self.known() if n.usable] or self.known()
        if not usable:
            where = f"{self.ctx.plan.config_path}: [worker] slurm_options {w.slurm_options!r}"
            known = ", ".join(self.partitions) or "none"
            if self.partition is not None and self.partition not in self.partitions:
                raise ImgpipeError(f"Slurm has no partition {self.partition!r} (its partitions: {known})",
                                   where=where, hint="fix --partition= in slurm_options (or $LIBPIPE_SLURM_OPTIONS)")
            raise ImgpipeError(f"Slurm has no node in the partition {self.partition or '(the default one)'}",
                               where=where, hint=f"name a partition that has nodes ({known}) with --partition=...")
        cpus = w.slurm_cpus or max(1, min(n.cpus for n in usable) // w.max_concurrent)
        mem_mb = w.slurm_mem_mb or max(1, min(n.mem_mb for n in usable) // w.max_concurrent)
        return cpus, mem_mb

    def share(self) -> str:
        if not self.shares(self.ctx.plan.jobs):
            return "0"
        return f"{self.cpus}/{self.asked_mem_mb() * MEM_FOR_WSCLEAN / 1024:.1f}"

    def asked_mem_mb(self) -> int:
        """The memory (MB) each job of the round asks for: the plan's, times the round's ``scale``
        (a retry after a job went past its memory: retry_factor), up to retry_memory_max or the
        largest usable node's memory."""
        if self.scale == 1:
            return self.mem_mb
        cap = self.ctx.plan.worker.retry_memory_max_mb or max(
            (n.mem_mb for n in self.known() if n.usable), default=self.mem_mb)
        return max(self.mem_mb, min(math.ceil(self.mem_mb * self.scale), cap))

    # ---------------------------------------------------------------- what is asked of Slurm

    def round_options(self) -> list[str]:
        """slurm_options, a time limit the user set in them scaled as the round's max_time is (a
        round of jobs run again after a memory or time kill: retry_factor)."""
        return scaled_time(self.options, self.scale) if self.scale != 1 else self.options

    def time_limit(self) -> list[str]:
        """A job of its own gets max_time (+1 min for the wrapper's own stop) as its Slurm time limit,
        unless the user set one; an allocation lasts what slurm_options says."""
        max_time = self.max_time()
        if self.allocation or not max_time or has_option(self.options, "-t", "--time"):
            return []
        return [f"--time={math.ceil((max_time + 60) / 60)}"]

    def exclude(self) -> list[str]:
        """[worker] nodes naming some nodes (with --engine slurm): Slurm keeps away from the others."""
        wanted = self.ctx.plan.worker.nodes
        if wanted == (ANY,):
            return []
        others = [n.name for n in self.known() if n.name not in wanted]
        return [f"--exclude={print_nodes(others)}"] if others else []

    def step_options(self) -> list[str]:
        """srun's options for one job (bin/imgpipe-srun adds -w NODE)."""
        if self.allocation:
            mem_per_cpu = math.ceil(self.asked_mem_mb() / self.cpus)
            return ["srun", "--exact", "-N1", "-n1", f"-c{self.cpus}", f"--mem-per-cpu={mem_per_cpu}"]
        return ["srun", *self.round_options(), f"--job-name={self.job_name}", "-N1", "-n1", f"-c{self.cpus}",
                f"--mem={self.asked_mem_mb()}", *self.exclude(), *self.time_limit()]

    def node_count(self, nodes: list[str], pinned: list[str], jobs: list[Job]) -> int:
        """How many nodes an allocation for ``jobs`` asks for: the pinned jobs' nodes, and for the
        others up to slurm_nodes, but no more than the jobs can use (max_concurrent a node: a resume
        of one job asks for one node), than there are usable nodes (a drained or down node is never
        given), nor than Slurm gives one allocation here (``validate``)."""
        w = self.ctx.plan.worker
        free = [j for j in jobs if not j.host]
        need = max(len(pinned), math.ceil(len(jobs) / w.max_concurrent)) if free else len(pinned)
        count = min(w.slurm_nodes, need, len(nodes), self.max_nodes or len(nodes))
        return max(1, count, len(pinned))

    def allocation_options(self, nodes: int, pinned: list[str]) -> list[str]:
        mem_per_cpu = math.ceil(self.asked_mem_mb() / self.cpus)
        slots = self.ctx.plan.worker.max_concurrent
        words = [*self.round_options(), f"--job-name={self.job_name}", f"--nodes={nodes}", f"--ntasks-per-node={slots}",
                 f"--cpus-per-task={self.cpus}", f"--mem-per-cpu={mem_per_cpu}"]
        if pinned:
            words.append(f"--nodelist={print_nodes(pinned)}")
        return words + self.exclude()

    def usable_nodes(self) -> list[str]:
        """The nodes jobs may run on that Slurm would give now."""
        nodes = self.nodes()
        return [n for n in nodes if n not in self.probe(nodes)]

    def test_only(self, request: list[str]):
        return run_command(["sbatch", "--test-only", *request, "--wrap=true"], env=self.env, timeout=60)

    def validate(self) -> None:
        """Ask Slurm, before anything runs, whether it takes the request imgpipe will make (sbatch
        --test-only). An allocation asks for no more nodes than are usable (Slurm counts a drained
        node against a request: ``node_count``); when Slurm refuses that many but takes fewer (a
        partition's MaxNodes), imgpipe asks for the most it takes and says so, naming slurm_nodes,
        unless the pinned jobs need more nodes than that: then that is the error."""
        w = self.ctx.plan.worker
        if self.allocation:
            nodes = self.usable_nodes()
            pinned = sorted({j.host for j in self.ctx.plan.jobs if j.host and j.host in nodes})
            count = self.node_count(nodes, pinned, self.ctx.plan.jobs)
            request = self.allocation_options(count, pinned)
        else:
            request = self.step_options()[1:]
        r = self.test_only(request)
        if r.ok:
            return
        text = (r.stderr + r.stdout).strip().splitlines()
        said = next((ln for ln in text if "error" in ln.lower() or "unrecognized" in ln or "invalid" in ln.lower()),
                    text[-1] if text else r.reason)
        said = re.sub(r"^(sbatch: )?(error: )?", "", said.strip())
        most = self.most_nodes(count) if self.allocation and count > 1 else 0
        if most and len(pinned) <= most and self.test_only(self.allocation_options(most, pinned)).ok:
            self.max_nodes, self._max_said = most, f"asked for {count}: {said}"
            return
        if most:
            raise ImgpipeError(
                f"the pinned jobs run on {len(pinned)} nodes ({print_nodes(pinned)}), and Slurm gives an allocation "
                f"no more than {most} here (asked for {count}: {said})",
                where=f"{self.ctx.plan.config_path}: [worker] slurm_nodes = {w.slurm_nodes}",
                hint="set slurm_nodes = 0 (each job a Slurm job of its own, on its node), or a partition that gives "
                f"{len(pinned)} nodes (`scontrol show partition`: MaxNodes)")
        raise ImgpipeError(
            f"Slurm refuses the request: {said}",
            where=f"{self.ctx.plan.config_path}: [worker] slurm_options {w.slurm_options!r}",
            hint=f"imgpipe asked `sbatch --test-only {shlex.join(request)}`: fix the option it names in "
            "slurm_options (or $LIBPIPE_SLURM_OPTIONS); `sinfo` lists the partitions")

    def most_nodes(self, count: int) -> int:
        """The most nodes below ``count`` Slurm takes an allocation of (0: not even one), by bisection."""
        low, high = 0, count - 1
        while low < high:
            mid = (low + high + 1) // 2
            if self.test_only(self.allocation_options(mid, [])).ok:
                low = mid
            else:
                high = mid - 1
        return low

    # ---------------------------------------------------------------- the engine

    def line(self, job: Job, attempt: int = 0) -> str:
        return input_line(job, attempt) + ("" if job.host or self.allocation else f"@{ANY}")

    def logins(self, nodes: list[str]) -> str:
        slots = self.ctx.plan.worker.max_concurrent
        if self.allocation:
            return "@NODES@"  # the allocated nodes, filled in inside the allocation
        pinned = sorted({j.host for j in self.ctx.plan.jobs if j.host and j.host in nodes})
        return ",".join([f"@{ANY}/{slots * max(1, len(nodes))}/{ANY}", *(f"@{n}/{slots}/{n}" for n in pinned)])

    def ssh_text(self) -> str:
        return f"bash {shlex.quote(str(self.ctx.run / SHIM))}"

    def command(self, nodes: list[str], pinned: list[str], jobs: list[Job], input_file: Path, joblog: Path, *,
                resume: bool, gate: bool = False) -> list[str]:
        parallel = self.gnu.argv(nodes, input_file, joblog, resume=resume, gate=gate)
        if not self.allocation:
            return parallel
        count = self.node_count(nodes, pinned, jobs)
        return ["salloc", *self.allocation_options(count, pinned), "--",
                "bash", str(self.ctx.run / ROUND_SCRIPT), str(self.ctx.run.path),
                str(self.ctx.plan.worker.max_concurrent), *parallel]

    def prepare(self) -> None:
        self.cpus, self.mem_mb = self.resources()
        self.validate()
        run = self.ctx.run
        wrapper = run.install_wrapper()
        run.install(SHIM)
        run.install(ROUND_SCRIPT)
        self.gnu.write_input(run / INPUT, self.ctx.plan.jobs)
        nodes = self.usable_nodes()
        pinned = sorted({j.host for j in self.ctx.plan.jobs if j.host and j.host in nodes})
        argv = self.command(nodes, pinned, self.ctx.plan.jobs, run / INPUT, run / JOBLOG, resume=True)  # (ship: env)
        (run / SCRIPT).write_text(
            "#!/usr/bin/env bash\n"
            "# Resume this run through Slurm without imgpipe: GNU parallel runs, through Slurm, the jobs\n"
            "# whose last job-log row failed or that never ran; each checks its images first, so what\n"
            "# is done is never made again. (`imgpipe run` also remakes images deleted since.)\n"
            "export PARALLEL_HOME=${PARALLEL_HOME:-$HOME/.parallel}\n"
            f"export IMGPIPE_SRUN={shlex.quote(shlex.join(self.step_options()))}\n"
            + run_lock_lines(run)
            + PROGRESS_BAR + f"IMGPIPE_JOB=\"$(cat {shlex.quote(str(wrapper))})\" {with_bar(argv)}\n",
            encoding="utf-8")
        (run / SCRIPT).chmod(0o755)

    def start(self, rnd: Round):
        run, self.scale = self.ctx.run, rnd.scale
        self.gnu.write_input(run / ROUND_INPUT, rnd.todo, rnd.attempts)
        for name in (ROUND_JOBLOG, JOB_FILE, PID_FILE, EVENTS):
            (run / name).unlink(missing_ok=True)
        self._events, self._failed, self._unnamed, self._round_over = 0, {}, {}, False
        pinned = sorted({j.host for j in rnd.todo if j.host})
        if self.allocation:
            self.tell_count(self.node_count(rnd.nodes, pinned, rnd.todo), rnd.nodes, rnd.todo)
        env = {**self.env, "IMGPIPE_JOB": (run / "imgpipe-job").read_text(),
               "IMGPIPE_SRUN": shlex.join(self.step_options())}
        return self.popen(self.command(rnd.nodes, pinned, rnd.todo, run / ROUND_INPUT, run / ROUND_JOBLOG, resume=False,
                                       gate=rnd.gate), env=env)

    def tell_count(self, count: int, nodes: list[str], jobs: list[Job]) -> None:
        """Say why an allocation asks for fewer nodes than slurm_nodes (once, and again when it changes)."""
        wanted = self.ctx.plan.worker.slurm_nodes
        if count == self._told_count or (self._told_count is None and count >= wanted):
            self._told_count = count
            return
        self._told_count = count
        if count >= wanted:
            why = "as slurm_nodes says"
        elif self.max_nodes and count == self.max_nodes:
            why = f"Slurm gives an allocation no more than {count} here ({self._max_said})"
        elif count == len(nodes):
            why = f"{len(nodes)} node(s) usable"
        elif all(j.host for j in jobs):
            why = f"the {len(jobs)} job(s) left are pinned to {print_nodes(sorted({j.host for j in jobs}))}"
        else:
            why = (f"the {len(jobs)} job(s) left need no more, {self.ctx.plan.worker.max_concurrent} a node"
                   + (f" (and their pinned nodes, {print_nodes(sorted({j.host for j in jobs if j.host}))})"
                      if any(j.host for j in jobs) else ""))
        self._notes.append(f"asking Slurm for an allocation of {count} node(s) (slurm_nodes = {wanted}): {why}")

    def end_round(self) -> None:
        self._round_over = True
        super().end_round()
        for name in (JOB_FILE, PID_FILE, ROUND_INPUT):
            (self.ctx.run / name).unlink(missing_ok=True)

    def news(self) -> list[str]:
        """A node that failed, as bin/imgpipe-srun heard it from Slurm (RUN_DIR/slurm.events), said
        once a node and round. When Slurm no longer says which node of an allocation failed (it may
        be back already), that is said at the end of the round, unless a job named the node."""
        try:
            with open(self.ctx.run / EVENTS, "rb") as f:
                f.seek(self._events)
                data = f.read()
        except OSError:
            data = b""
        data = data[: data.rfind(b"\n") + 1]
        self._events += len(data)
        out, self._notes = self._notes, []
        again = ("Slurm ended the allocation; the jobs it stopped run again in a new one" if self.allocation
                 else "the jobs it stopped run again") + " (connection_retries)"
        for line in data.decode(errors="replace").splitlines():
            kind, node, job, state, how = (line.split("\t") + [""] * 5)[:5]
            if kind != "node-failed":
                continue
            if node == "?":
                self._unnamed.setdefault(job, state)
            elif node not in self._failed:
                self._failed[node] = job
                out.append(f"the Slurm node {node} failed (Slurm job {job}: {state}"
                           + (f"; {how}" if how and how != "None" else "") + f"): {again}")
        if self._round_over:
            named = set(self._failed.values())
            for job, state in self._unnamed.items():
                if job not in named:
                    out.append(f"a node of Slurm job {job} failed ({state}; Slurm no longer says which): {again}")
            self._unnamed = {}
        return out

    def waiting(self) -> str | None:
        """What Slurm keeps the jobs waiting for (asked of squeue at most every 2 s)."""
        when, said = self._waiting
        if self._round_over:
            return None  # (the round's jobs have all ended)
        if time.time() - when < 2:
            return said
        said = None
        if self.allocation:  # (the round's allocation bears the run's job name, as its jobs do)
            pending = squeue(self.env, "-n", self.job_name, "-t", "PD", "-o", "%i|%r")
            if pending and len(pending[0]) == 2:
                said = f"Slurm allocation {pending[0][0]} pending ({pending[0][1]})"
        else:
            pending = squeue(self.env, "-n", self.job_name, "-t", "PD", "-o", "%r")
            if pending:
                said = f"{len(pending)} job(s) pending in Slurm ({pending[0][0]})"
        self._waiting = (time.time(), said)
        return said

    def halt(self, proc) -> None:
        """SIGHUP to GNU parallel (inside the allocation: its pid is in slurm.pid), never to salloc or srun."""
        pid = proc.pid
        if self.allocation:
            try:
                pid = int((self.ctx.run / PID_FILE).read_text())
            except (OSError, ValueError):
                return  # the allocation is still pending: nothing has started
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass

    def record(self, proc, nodes: list[str]) -> dict:
        return control.engine_record(proc.pid, self.hold, self.ctx.plan.tag, nodes, self.name,
                                     run_dir=str(self.ctx.run.path), job_name=self.job_name,
                                     allocation=self.allocation)

    @classmethod
    def stop(cls, record: dict, alive) -> None:
        """SIGHUP to GNU parallel (never a signal to srun: its step would be killed without clean-up),
        TERM to the wrappers through ``srun --overlap`` steps, then ``scancel``: no job is left."""
        env = slurm_env(dict(os.environ))
        run = Path(record["run_dir"])
        hold_pid = None
        if record.get("allocation"):
            try:
                hold_pid = int((run / PID_FILE).read_text())
            except (OSError, ValueError):
                hold_pid = None  # the allocation is still pending: nothing runs yet
        if hold_pid is not None or not record.get("allocation"):
            control.stop_engine(record["pid"], alive, signal.SIGHUP, record["tag"], record["nodes"],
                                StepShell(record["job_name"], env, cancel_pending=not record.get("allocation")),
                                hold_pid=hold_pid)
        run_command(["scancel", f"--name={record['job_name']}"], env=env, timeout=60)
        for sig in (signal.SIGTERM, signal.SIGCONT):  # salloc, still pending, or parallel of no allocation
            try:
                os.killpg(record["pid"], sig)
            except (ProcessLookupError, PermissionError):
                pass

    def resume_hint(self) -> str:
        return f"bash {shlex.quote(str(self.ctx.run / SCRIPT))}      # or through Slurm directly"


ENGINE = Slurm
