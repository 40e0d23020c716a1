"""The GNU parallel engine: the jobs run through ``parallel --sshlogin N/host``.

- Each node is a host group with ``max_concurrent`` slots (``-S @node/N/node``,
  ``:`` for this machine); a job pinned to a node carries ``@node`` at the end
  of its input line (``--hgrp``); an unpinned job may run on any node.
- The input line is ``ID<TAB>COMMAND[@node]`` with ``@``/``%`` percent-encoded
  in COMMAND, so an ``@`` in a path never reads as a host group; the wrapper
  decodes it. The line is ONE argument, split by the replacement strings
  ``{id}`` and ``{cmd}`` (``--rpl``): with ``--colsep``, GNU parallel 20221122
  strips the ``@node`` from the line but takes the job's host groups from the
  first column, so a pinned job would run on any node.
- The node-side wrapper is installed once per node and run (in the user's cache,
  ``~/.cache/imgpipe/imgpipe-job-<digest>``, by the probe that opens the run);
  parallel.sh, which runs without imgpipe, ships it with each job instead, in
  the environment variable IMGPIPE_JOB (``--env``): nothing needs to be
  installed on the nodes beforehand either way.
- ``--joblog`` and ``--results logs/{id}`` keep the outcome and output of every
  job in the run directory, whatever the nodes' file systems.

A round runs the lines of its jobs only; its job-log rows are appended to
``joblog.tsv`` under the Seq of the full input, so ``parallel --resume-failed``
over the full input (``parallel.sh``, for resuming by hand) agrees with imgpipe.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..attempt import encode_command
from ..hosts import is_local
from ..plan import Job
from ..joblog import JOBLOG, ROUND_JOBLOG
from ..run_dir import GATE, LOGS
from ..run_lock import LOCK
from .base import Engine, Round

INPUT = "parallel-input.tsv"
ROUND_INPUT = "parallel-input.round.tsv"
SCRIPT = "parallel.sh"

# {id} and {cmd}: the two halves of an input line (its @node already removed by --hgrp)
RPL = ["--rpl", r"{id} s/\t.*//s", "--rpl", r"{cmd} s/^[^\t]*\t//s"]


def input_line(job: Job) -> str:
    line = f"{job.id}\t{encode_command(job.command)}"
    return f"{line}@{job.host}" if job.host else line


# by-hand scripts: GNU parallel's progress bar in a terminal (elsewhere it would print a line per update)
PROGRESS_BAR = "bar=(); [[ -t 2 ]] && bar=(--bar)  # a progress bar when run in a terminal\n"


def run_lock_lines(run) -> str:
    """A by-hand script takes the run's lock (run.lock, as imgpipe does) or refuses: two writers of
    one run directory overwrite each other's job log and logs."""
    lock = shlex.quote(str(run / LOCK))
    return (
        f"exec 9>> {lock}\n"
        "if command -v flock > /dev/null && ! flock -n 9; then\n"
        f"  echo \"$0: this run is going on ($(cat {lock})): wait for it to end, or stop it, first\" >&2\n"
        "  exit 1\n"
        "fi\n"
        f"printf '%s pid %s on %s since %s\\n' \"$0\" \"$$\" \"$(hostname)\" \"$(date)\" > {lock}\n")


def with_bar(argv: list[str]) -> str:
    """``argv`` as a shell line, GNU parallel's words preceded by the script's "${bar[@]}"."""
    i = argv.index("parallel")
    return shlex.join(argv[: i + 1]) + ' "${bar[@]}" ' + shlex.join(argv[i + 1:])


def sshlogins(nodes: list[str], slots: int) -> str:
    return ",".join(f"@{n}/{slots}/{':' if is_local(n) else n}" for n in nodes)


class Parallel(Engine):
    name = "parallel"
    tools = (("parallel", "parallel"),)
    output = "parallel.stderr"
    ship = "install"  # how the wrapper reaches the nodes: installed by the probe, or "env": with each job

    # -- what an engine built on GNU parallel may change (the Slurm engine does)
    def logins(self, nodes: list[str]) -> str:
        """The -S list: each node a host group of max_concurrent slots."""
        return sshlogins(nodes, self.ctx.plan.worker.max_concurrent)

    def ssh_text(self) -> str:
        """What GNU parallel runs as ssh."""
        return shlex.join(self.ctx.ssh)

    def share(self) -> str:
        """The wrapper's SHARE word for every job (one template for all)."""
        return "1" if self.shares(self.ctx.plan.jobs) else "0"

    def line(self, job: Job) -> str:
        return input_line(job)

    def template(self, ship: str) -> str:
        """The command template: the node's wrapper (installed, or from $IMGPIPE_JOB), {id} and {cmd}."""
        words = self.wrapper_words("{id}", "{cmd}", share=self.share())
        quoted = " ".join(w if w in ("{id}", "{cmd}") else shlex.quote(w) for w in words)
        if ship == "env":
            return 'perl -e "$IMGPIPE_JOB" ' + quoted
        return f"perl {self.wrapper.path} {quoted}"

    def argv(self, logins: str, input_file: Path, joblog: Path, *, resume: bool, ship: str | None = None,
             gate: bool = False) -> list[str]:
        """GNU parallel's words; ``gate``: ask the round's gate before each job (bin/imgpipe-gate,
        for the halt rule: imgpipe's rounds, not parallel.sh, which runs without imgpipe)."""
        run, ship = self.ctx.run, ship or self.ship
        argv = [
            "parallel", "--will-cite", "--hgrp", "-S", logins, "--ssh", self.ssh_text(),
            *(["--env", "IMGPIPE_JOB"] if ship == "env" else []),
            *RPL, "--joblog", str(joblog), "--results", str(run / LOGS) + "/{id}",
        ]
        if gate:
            argv += ["--limit", f"perl {shlex.quote(str(run / GATE))} {shlex.quote(str(run.path))}"]
        if resume:
            argv.append("--resume-failed")
        return argv + [self.template(ship), "::::", str(input_file)]

    def write_input(self, path: Path, jobs) -> None:
        text = "".join(self.line(j) + "\n" for j in jobs)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")

    # -- the engine
    def prepare(self) -> None:
        """parallel-input.tsv (byte-identical for the same plan) and parallel.sh, the by-hand resume."""
        run = self.ctx.run
        self.write_input(run / INPUT, self.ctx.plan.jobs)
        wrapper = run.install_wrapper()
        argv = self.argv(self.logins(list(self.ctx.plan.worker.nodes)), run / INPUT, run / JOBLOG, resume=True,
                         ship="env")
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
        self.write_input(run / ROUND_INPUT, rnd.todo)
        (run / ROUND_JOBLOG).unlink(missing_ok=True)
        return self.popen(self.argv(self.logins(rnd.nodes), run / ROUND_INPUT, run / ROUND_JOBLOG, resume=False,
                                    gate=rnd.gate))

    def end_round(self) -> None:
        super().end_round()
        (self.ctx.run / ROUND_INPUT).unlink(missing_ok=True)

    def resume_hint(self) -> str:
        return f"bash {shlex.quote(str(self.ctx.run / SCRIPT))}      # or GNU parallel directly"


ENGINE = Parallel
