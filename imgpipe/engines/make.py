"""The make engine: the jobs run as the targets of a Makefile generated from ``Makefile.in``.

- One target ``done/<id>`` per job, created when the job succeeds; ``-k`` keeps going
  past failed jobs. Before each round imgpipe sets ``done/`` to what the images say
  (a marker for each job whose images are done, none for the others), so running
  make by hand (``make -C RUN_DIR -k -j N``) runs what imgpipe would.
- Per-node concurrency: every recipe takes one of its node's ``max_concurrent``
  slots, a file lock in ``slots/`` (``sem`` cost 0.1-0.26 s a job); make's ``-j`` is
  the total of all slots.
- A pinned job runs on its node; the others are spread over the reachable nodes
  when the Makefile is written (make cannot move a job between nodes). It is
  written again each round, so unpinned jobs leave a node that died.
- The recipe (``bin/imgpipe-make-job``) runs the same node-side wrapper as the
  parallel engine (over ssh, the script travels on stdin) and appends a row in
  GNU parallel's job-log format to the round's job log.
"""

from __future__ import annotations

import shlex
import signal
from collections import Counter

from ..errors import ImgpipeError
from ..hosts import is_local
from ..plan import Job
from ..attempt import share_resources
from ..run_dir import installed_file
from .base import Engine, Round

MAKEFILE = "Makefile"
RECIPE = "imgpipe-make-job"
DONE = "done"
HALT = "halt"  # while it exists, recipes start no job (the halt rule)


def assign_hosts(jobs: list[Job], live: list[str]) -> dict[str, str]:
    """job id -> node: pinned jobs keep theirs; the others go to the least loaded live node."""
    load = Counter({n: 0 for n in live})
    for j in jobs:
        if j.host:
            load[j.host] += 1
    out = {}
    for j in jobs:
        if j.host:
            out[j.id] = j.host
        else:
            node = min(live, key=lambda n: (load[n], live.index(n)))
            load[node] += 1
            out[j.id] = node
    return out


def _make_escape(text: str) -> str:
    return text.replace("$", "$$")


class Make(Engine):
    name = "make"
    tools = (("make", "make"), ("flock", "util-linux"))
    hold = signal.SIGSTOP  # make has no "start nothing more" signal: it is stopped, then its group killed
    output = "make.stderr"

    def job_command(self, job: Job, host: str, attempt: int = 0) -> str:
        """The shell command that runs the wrapper for ``job`` on ``host`` (from the run directory)."""
        words = self.wrapper_words(job.id, job.command, share="1" if share_resources(job) else "0", attempt=attempt)
        if is_local(host):
            return "perl ./imgpipe-job " + shlex.join(words)
        # exec: the wrapper's parent is then sshd itself, whatever the login shell, so the wrapper
        # sees its connection go (bin/imgpipe-job, watch_parent); the wrapper is the one the probe
        # installed on the node
        remote = f"exec perl {self.wrapper.path} " + shlex.join(words)
        return shlex.join([*self.ctx.ssh, "-o", "BatchMode=yes", "--", host, remote]) + " < /dev/null"

    def makefile(self, hosts: dict[str, str], attempts: dict[str, int] | None = None) -> str:
        """The Makefile of every job of the plan; ``attempts``: the round's (the others' recipes,
        which only a by-hand make runs, say 0: not counted)."""
        attempts = attempts or {}
        plan, run = self.ctx.plan, self.ctx.run
        slots = plan.worker.max_concurrent
        rules = []
        for seq, job in enumerate(plan.jobs, start=1):
            host = hosts[job.id]
            recipe = "bash ./imgpipe-make-job " + shlex.join(
                [str(seq), job.id, "localhost" if is_local(host) else host, str(slots),
                 self.job_command(job, host, attempts.get(job.id, 0))])
            rules.append(f"{DONE}/{job.id}:\n\t@{_make_escape(recipe)}\n")
        path = installed_file("Makefile.in")
        if path is None:
            raise ImgpipeError("Makefile.in is missing from the installation (reinstall imgpipe)")
        text = path.read_text(encoding="utf-8")
        for key, value in {
            "@JOBS_FILE@": str(self.ctx.jobs_path),
            "@RUN_DIR_Q@": shlex.quote(str(run.path)),
            "@SLOTS@": str(slots * (len(set(hosts.values())) or 1)),
            "@PER_NODE@": str(slots),
            "@TARGETS@": " ".join(f"{DONE}/{j.id}" for j in plan.jobs),
            "@RULES@": "\n".join(rules),
        }.items():
            text = text.replace(key, value)
        return text

    def write(self, nodes: list[str], done: frozenset[str], attempts: dict[str, int] | None = None) -> None:
        """The Makefile for these nodes, and done/ as the images say."""
        run, plan = self.ctx.run, self.ctx.plan
        run.install_wrapper()
        run.install(RECIPE)
        (run / MAKEFILE).write_text(self.makefile(assign_hosts(list(plan.jobs), nodes), attempts), encoding="utf-8")
        markers = run / DONE
        markers.mkdir(exist_ok=True)
        for job in plan.jobs:
            marker = markers / job.id
            if job.id in done:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)

    def prepare(self) -> None:
        pass  # the Makefile depends on the live nodes: written by each round

    def start(self, rnd: Round):
        self.scale = rnd.scale
        self.write(rnd.nodes, rnd.done, rnd.attempts)
        slots = self.ctx.plan.worker.max_concurrent * len(rnd.nodes)
        return self.popen(["make", "-C", str(self.ctx.run.path), "-k", "-j", str(slots),
                           *(f"{DONE}/{j.id}" for j in rnd.todo)],
                          env={**self.ctx.env, "IMGPIPE_RUN": "1"})  # (imgpipe holds the run's lock)

    def halt(self, proc) -> None:
        """make has no "start nothing more": each recipe looks for this file first (bin/imgpipe-make-job)."""
        (self.ctx.run / HALT).touch()

    def end_round(self) -> None:
        super().end_round()
        (self.ctx.run / HALT).unlink(missing_ok=True)

    def resume_hint(self) -> str:
        return f"make -C {shlex.quote(str(self.ctx.run.path))} -k -j N      # or make directly"


ENGINE = Make
