"""GNU parallel as the parallel and the Slurm engines run it: its input, its command line, and the
by-hand scripts' lines. Each of the two engines has one ``GnuParallel`` and gives it what differs
between them (the -S list, what runs as "ssh", the wrapper's SHARE word, a job's input line, how
the wrapper reaches the nodes); neither engine is built on the other.

- The input line is ``ID<TAB>ATTEMPT<TAB>COMMAND[@node]`` with ``@``/``%`` percent-encoded in
  COMMAND (``attempt.encode_command``), so an ``@`` in a path never reads as a host group; the
  wrapper decodes it. ATTEMPT is the round's (``Round.attempts``), 0 in the by-hand scripts' input.
  The line is ONE argument, split by the replacement strings ``{id}``, ``{attempt}`` and ``{cmd}``
  (``--rpl``): with ``--colsep``, GNU parallel 20221122 strips the ``@node`` from the line but
  takes the job's host groups from the first column, so a pinned job would run on any node.
- ``--joblog`` and ``--results logs/{id}`` keep the outcome and output of every job in the run
  directory, whatever the nodes' file systems.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

from ..attempt import encode_command
from ..hosts import is_local
from ..plan import Job
from ..run_dir import GATE, LOGS
from ..run_lock import LOCK

INPUT = "parallel-input.tsv"
ROUND_INPUT = "parallel-input.round.tsv"

# {id}, {attempt} and {cmd}: the three parts of an input line (its @node already removed by --hgrp)
RPL = ["--rpl", r"{id} s/\t.*//s", "--rpl", r"{attempt} s/^[^\t]*\t([^\t]*)\t.*/$1/s",
       "--rpl", r"{cmd} s/^[^\t]*\t[^\t]*\t//s"]
FIELDS = ("{id}", "{attempt}", "{cmd}")


def input_line(job: Job, attempt: int = 0) -> str:
    line = f"{job.id}\t{attempt}\t{encode_command(job.command)}"
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


class GnuParallel:
    """GNU parallel's command for one engine's jobs."""

    def __init__(self, engine, *, logins: Callable[[list[str]], str], ssh_text: Callable[[], str],
                 share: Callable[[], str], line: Callable[[Job, int], str], ship: str) -> None:
        self.engine = engine  # (its context, its wrapper words, its node-side wrapper)
        self.logins, self.ssh_text, self.share, self.line = logins, ssh_text, share, line
        self.ship = ship  # how the wrapper reaches the nodes: "install"ed by the probe, or "env": with each job

    def template(self, ship: str) -> str:
        """The command template: the node's wrapper (installed, or from $IMGPIPE_JOB), {id}, {attempt}
        and {cmd}."""
        words = self.engine.wrapper_words("{id}", "{cmd}", share=self.share(), attempt="{attempt}")
        quoted = " ".join(w if w in FIELDS else shlex.quote(w) for w in words)
        if ship == "env":
            return 'perl -e "$IMGPIPE_JOB" ' + quoted
        return f"perl {self.engine.wrapper.path} {quoted}"

    def argv(self, nodes: list[str], input_file: Path, joblog: Path, *, resume: bool, ship: str | None = None,
             gate: bool = False) -> list[str]:
        """GNU parallel's words; ``gate``: ask the round's gate before each job (bin/imgpipe-gate,
        for the halt rule: imgpipe's rounds, not the by-hand scripts, which run without imgpipe)."""
        run, ship = self.engine.ctx.run, ship or self.ship
        argv = [
            "parallel", "--will-cite", "--hgrp", "-S", self.logins(nodes), "--ssh", self.ssh_text(),
            *(["--env", "IMGPIPE_JOB"] if ship == "env" else []),
            *RPL, "--joblog", str(joblog), "--results", str(run / LOGS) + "/{id}",
        ]
        if gate:
            argv += ["--limit", f"perl {shlex.quote(str(run / GATE))} {shlex.quote(str(run.path))}"]
        if resume:
            argv.append("--resume-failed")
        return argv + [self.template(ship), "::::", str(input_file)]

    def write_input(self, path: Path, jobs, attempts: dict[str, int] | None = None) -> None:
        """One line per job; ``attempts``: the round's (none: the by-hand scripts' input, 0)."""
        attempts = attempts or {}
        text = "".join(self.line(j, attempts.get(j.id, 0)) + "\n" for j in jobs)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
