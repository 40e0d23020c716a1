"""The GNU parallel engine: the jobs run through ``parallel --sshlogin N/host``.

- Each node is a host group with ``max_concurrent`` slots (``-S @node/N/node``,
  ``:`` for this machine); a job pinned to a node carries ``@node`` at the end
  of its input line (``--hgrp``); an unpinned job may run on any node.
- The input line and GNU parallel's command line are ``gnu_parallel``'s (shared
  with the Slurm engine).
- The node-side wrapper is installed once per node and run (in the user's cache,
  ``~/.cache/imgpipe/imgpipe-job-<digest>``, by the probe that opens the run);
  parallel.sh, which runs without imgpipe, ships it with each job instead, in
  the environment variable IMGPIPE_JOB (``--env``): nothing needs to be
  installed on the nodes beforehand either way.

A round runs the lines of its jobs only; its job-log rows are appended to
``joblog.tsv`` under the Seq of the full input, so ``parallel --resume-failed``
over the full input (``parallel.sh``, for resuming by hand) agrees with imgpipe.
"""

from __future__ import annotations

import shlex

from ..joblog import JOBLOG, ROUND_JOBLOG
from .base import Engine, Round
from .gnu_parallel import INPUT, PROGRESS_BAR, ROUND_INPUT, GnuParallel, input_line, run_lock_lines, sshlogins, with_bar

SCRIPT = "parallel.sh"


class Parallel(Engine):
    name = "parallel"
    tools = (("parallel", "parallel"),)
    output = "parallel.stderr"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        plan = ctx.plan
        self.gnu = GnuParallel(self, logins=lambda nodes: sshlogins(nodes, plan.worker.max_concurrent),
                               ssh_text=lambda: shlex.join(ctx.ssh),
                               share=lambda: "1" if self.shares(plan.jobs) else "0", line=input_line, ship="install")

    def prepare(self) -> None:
        """parallel-input.tsv (byte-identical for the same plan) and parallel.sh, the by-hand resume."""
        run = self.ctx.run
        self.gnu.write_input(run / INPUT, self.ctx.plan.jobs)
        wrapper = run.install_wrapper()
        argv = self.gnu.argv(list(self.ctx.plan.worker.nodes), run / INPUT, run / JOBLOG, resume=True, ship="env")
        script = run / SCRIPT
        script.write_text(
            "#!/usr/bin/env bash\n"
            "# Resume this run with GNU parallel directly: runs the jobs whose last job-log row\n"
            "# failed or that never ran; each job checks its images on its node first, so what is\n"
            "# done is never made again. (`imgpipe run` also remakes images deleted since.)\n"
            "export PARALLEL_HOME=${PARALLEL_HOME:-$HOME/.parallel}\n"
            + run_lock_lines(run)
            + PROGRESS_BAR + f"IMGPIPE_JOB=\"$(cat {shlex.quote(str(wrapper))})\" {with_bar(argv)}\n",
            encoding="utf-8",
        )
        script.chmod(0o755)

    def start(self, rnd: Round):
        run, self.scale = self.ctx.run, rnd.scale
        self.gnu.write_input(run / ROUND_INPUT, rnd.todo, rnd.attempts)
        (run / ROUND_JOBLOG).unlink(missing_ok=True)
        return self.popen(self.gnu.argv(rnd.nodes, run / ROUND_INPUT, run / ROUND_JOBLOG, resume=False, gate=rnd.gate))

    def end_round(self) -> None:
        super().end_round()
        (self.ctx.run / ROUND_INPUT).unlink(missing_ok=True)

    def resume_hint(self) -> str:
        return f"bash {shlex.quote(str(self.ctx.run / SCRIPT))}      # or GNU parallel directly"


ENGINE = Parallel
