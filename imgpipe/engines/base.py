"""What an engine is: the small interface between the run loop and a tool that runs jobs.

The run loop (``loop.run``) decides everything: which jobs are left (the images say),
on which nodes, how many rounds, what to retry, when to stop. An engine only runs
one round of jobs with its tool, on the nodes it is given, no more than
``max_concurrent`` at once per node, each job through the node-side wrapper
(``imgpipe-job``, called with ``attempt.wrapper_args``), its output in ``logs/<id>``, and
stops when asked (docs/engines.md). How each attempt ended is the wrapper's result, read by
the loop (``joblog.RoundRows``); an engine may also leave rows in GNU parallel's job-log
format in ``joblog.round.tsv`` (GNU parallel and make do), which say more of an attempt that
left no result and feed the halt gate.

An engine says which nodes there are and which answer (by default the ``[worker]
nodes``, probed over ssh), what run.json must record to stop it, and how it is
stopped (by default ``control.stop_engine`` over ssh); ``waiting`` says what it
waits for, if anything (a Slurm allocation pending), and ``news`` what befell it (a Slurm
node that failed).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..commands import ssh_shell
from ..config import MAX_TIME
from ..plan import Job, Plan
from ..attempt import share_resources, wrapper_args
from ..joblog import ROUND_JOBLOG
from ..run_dir import RunDir
from . import control


def ssh_command(plan: Plan) -> list[str]:
    """The ssh command: $IMGPIPE_SSH, else [worker] ssh (default 'ssh')."""
    return shlex.split(os.environ.get("IMGPIPE_SSH") or plan.worker.ssh or "ssh")


@dataclass(frozen=True)
class Context:
    """What every round of a run shares."""

    plan: Plan
    run: RunDir
    jobs_path: Path
    ssh: list[str]
    force: bool
    env: dict  # the environment engines start with (PARALLEL_HOME set)


@dataclass(frozen=True)
class Round:
    number: int
    todo: list[Job]  # the jobs to run, in plan order
    nodes: list[str]  # the nodes that answer
    done: frozenset[str]  # the jobs whose images are done (for engines that keep their own record of it)
    gate: bool = True  # ask the halt gate before each job (bin/imgpipe-gate): False when no failure can halt
    scale: float = 1.0  # the jobs ask for this many times the plan's memory and max_time (retry_factor)
    attempts: dict[str, int] = field(default_factory=dict)  # job id -> which attempt of it this round runs (ATTEMPT)


class Engine:
    """One tool that runs jobs. Subclasses set the class attributes and implement ``start``."""

    name = ""
    tools: tuple[tuple[str, str], ...] = ()  # (program, Debian package) it needs here
    hold = signal.SIGHUP  # the signal that stops it from starting jobs, keeping the running ones
    output = "engine.stderr"  # where its own messages go, in the run directory
    lost = ("cannot be reached", "cannot be reached any more")  # a node the probe finds unusable: at the start, later
    scale = 1.0  # the round's Round.scale (set by start): more memory and time for jobs run again after a kill

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._wrapper = None

    @property
    def wrapper(self):
        """The node-side wrapper as the nodes keep it (run_dir.NodeWrapper)."""
        if self._wrapper is None:
            self._wrapper = self.ctx.run.node_wrapper()
        return self._wrapper

    # -- what each engine does
    def nodes(self) -> list[str]:
        """The nodes jobs may run on."""
        return list(self.ctx.plan.worker.nodes)

    def probe(self, nodes: list[str]) -> dict[str, str]:
        """node -> why it cannot take jobs now, for each of ``nodes`` that cannot; the others get the
        node-side wrapper installed (once per node: see run_dir.NodeWrapper)."""
        return control.probe(nodes, self.ctx.ssh, wrapper=self.wrapper)

    def prepare(self) -> None:
        """Write the files that resume this plan by hand (parallel.sh, the Makefile...)."""

    def start(self, rnd: Round) -> subprocess.Popen:
        """Start running ``rnd.todo`` on ``rnd.nodes``; the process is waited for by the loop."""
        raise NotImplementedError

    def resume_hint(self) -> str:
        """The command that resumes the run with the tool alone."""
        raise NotImplementedError

    def halt(self, proc: subprocess.Popen) -> None:
        """Start no new job; the running ones finish (GNU parallel: SIGHUP)."""
        try:
            os.kill(proc.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass

    def waiting(self) -> str | None:
        """What the engine waits for before its jobs can start, in words (None: nothing)."""
        return None

    def news(self) -> list[str]:
        """What happened since last asked that the user should hear now (a node that failed), in words."""
        return []

    def record(self, proc: subprocess.Popen, nodes: list[str]) -> dict:
        """What run.json records of the engine running a round: what ``stop`` needs, later, elsewhere."""
        return control.engine_record(proc.pid, self.hold, self.ctx.plan.tag, nodes, self.name, ssh=self.ctx.ssh)

    @classmethod
    def stop(cls, record: dict, alive) -> None:
        """Stop the engine a record names, and every job it runs (Ctrl-C, a killed imgpipe, a leftover)."""
        control.stop_engine(record["pid"], alive, record["hold"], record["tag"], record["nodes"],
                            ssh_shell(record["ssh"]))

    # -- shared by the engines
    def end_round(self) -> None:
        """Remove the round's own files."""
        (self.ctx.run / ROUND_JOBLOG).unlink(missing_ok=True)

    def wrapper_words(self, job_id: str, command: str, *, share: str, attempt: int | str = 0) -> list[str]:
        """``imgpipe-job`` and its arguments for one job (or for an engine's placeholders), with the
        round's max_time (``scale``); ``attempt``: ``Round.attempts``' (0 in a by-hand script)."""
        return ["imgpipe-job", *wrapper_args(self.ctx.plan, job_id, command, share=share, force=self.ctx.force,
                                             run=self.ctx.run.label, max_time=self.max_time(), attempt=attempt)]

    def max_time(self) -> float:
        """The jobs' max_time in this round: the plan's, times the round's ``scale`` (0: no limit)."""
        return min(self.ctx.plan.worker.max_time * self.scale, MAX_TIME)

    def popen(self, argv: list[str], env: dict | None = None, cwd=None) -> subprocess.Popen:
        """Start the engine's process in a session of its own (the loop stops it as a group);
        its messages go to ``output`` in the run directory."""
        with open(self.ctx.run / self.output, "a") as err:
            return subprocess.Popen(argv, env=env or self.ctx.env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=err,
                                    stderr=err, start_new_session=True)

    @staticmethod
    def shares(jobs) -> bool:
        return all(share_resources(j) for j in jobs)
