"""``bare``: an engine that owes imgpipe only what docs/engines.md says an engine owes, and does
nothing more, to prove the contract (tests/test_engine_contract.py). It is not part of imgpipe.

It runs the round's jobs on this machine, ``max_concurrent`` at a time: each job's argv (the node
wrapper and its arguments) with its output in ``logs/<id>`` and ``logs/<id>.err``, by a small
Python runner that is the engine's process. SIGHUP (``hold``, ``halt``): it starts nothing more.
It writes no job-log row, asks no halt gate, and keeps the defaults of ``base.Engine`` for the
rest (``probe``, ``record``, ``stop`` reach ``localhost`` without ssh).
"""

from __future__ import annotations

import json
import shlex
import sys

from imgpipe.attempt import share_resources
from imgpipe.engines.base import Engine, Round
from imgpipe.run_dir import LOGS

RUNNER = r"""
import json, os, signal, subprocess, sys, time
spec, held, running = json.load(open(sys.argv[1])), [], []
signal.signal(signal.SIGHUP, lambda *_: held.append(1))
todo = spec["jobs"]
while (todo and not held) or running:
    running = [p for p in running if p.poll() is None]
    while todo and not held and len(running) < spec["slots"]:
        job_id, argv = todo.pop(0)
        with open(os.path.join(spec["logs"], job_id), "w") as out, open(out.name + ".err", "w") as err:
            running.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err))
    time.sleep(0.1)
"""


class Bare(Engine):
    name = "bare"
    tools = (("perl", "perl"),)
    output = "bare.stderr"

    def nodes(self) -> list[str]:
        return ["localhost"]

    def start(self, rnd: Round):
        run = self.ctx.run
        wrapper = str(run.install_wrapper())
        jobs = [(j.id, ["perl", wrapper, *self.wrapper_words(j.id, j.command, attempt=rnd.attempts.get(j.id, 0),
                                                             share="1" if share_resources(j) else "0")])
                for j in rnd.todo]
        (run / "bare.json").write_text(json.dumps({
            "jobs": jobs, "slots": self.ctx.plan.worker.max_concurrent, "logs": str(run / LOGS)}))
        return self.popen([sys.executable, "-c", RUNNER, str(run / "bare.json")])

    def end_round(self) -> None:
        super().end_round()
        (self.ctx.run / "bare.json").unlink(missing_ok=True)

    def resume_hint(self) -> str:
        return f"imgpipe run {shlex.quote(str(self.ctx.run.path))} --engine bare      # (no by-hand resume)"


ENGINE = Bare
