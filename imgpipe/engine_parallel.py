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
- The node-side wrapper travels in the environment variable IMGPIPE_JOB
  (``--env``): nothing needs to be installed on the nodes.
- ``--joblog`` and ``--results logs/{id}`` keep the outcome and output of every
  job in the run directory, whatever the nodes' file systems.

imgpipe runs the jobs in rounds: the first runs everything not yet done; later
rounds retry connection failures (and WSClean failures when ``retries`` asks)
on a subset of lines, and their job-log rows are appended to ``joblog.tsv``
under the Seq of the full input, so ``parallel --resume-failed`` over the full
input (``parallel.sh``) always agrees with imgpipe.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .engine import (
    Progress, Retries, RunLock, Stopper, archive_logs, drop_dead_nodes, install_wrapper, nodes_of,
    probe_hosts, parallel_home, share_resources, ssh_command, stop_engine, summary, tag_of, wait_engine,
)
from .errors import ImgpipeError
from .hosts import is_local
from .joblog import append_rows, last_rows, read_rows
from .plan import Job, Plan
from . import status as st

INPUT = "parallel-input.tsv"
ROUND_INPUT = "parallel-input.round.tsv"
SCRIPT = "parallel.sh"
PARALLEL_STDERR = "parallel.stderr"


def encode(command: str) -> str:
    return command.replace("%", "%25").replace("@", "%40")


def input_line(job: Job) -> str:
    line = f"{job.id}\t{encode(job.command)}"
    return f"{line}@{job.host}" if job.host else line


# {id} and {cmd}: the two halves of an input line (its @node already removed by --hgrp)
RPL = ["--rpl", r"{id} s/\t.*//s", "--rpl", r"{cmd} s/^[^\t]*\t//s"]


def sshlogins(nodes: list[str], slots: int) -> str:
    return ",".join(f"@{n}/{slots}/{':' if is_local(n) else n}" for n in nodes)


def job_template(plan: Plan, force: bool) -> str:
    """The command template: the wrapper from $IMGPIPE_JOB, the run settings, {id}, {cmd}."""
    w = plan.worker
    share = all(share_resources(j) for j in plan.jobs)
    settings = [
        tag_of(plan),
        "{id}",
        str(w["max_concurrent"]),
        w.get("env_file", ""),
        str(w.get("max_time", 0) or 0),
        "1" if share else "0",
        "1" if force else "0",
        plan.digest[:12],
        "{cmd}",
    ]
    words = [s if s in ("{id}", "{cmd}") else shlex.quote(s) for s in settings]
    return 'bash -c "$IMGPIPE_JOB" imgpipe-job ' + " ".join(words)


def parallel_argv(plan: Plan, run_dir: Path, nodes: list[str], input_file: Path, joblog: Path,
                  *, resume: bool, force: bool, ssh: list[str]) -> list[str]:
    argv = [
        "parallel", "--will-cite", "--hgrp", "-S", sshlogins(nodes, plan.worker["max_concurrent"]),
        "--ssh", shlex.join(ssh), "--env", "IMGPIPE_JOB", *RPL,
        "--joblog", str(joblog), "--results", str(run_dir / st.LOGS) + "/{id}",
    ]
    if resume:
        argv.append("--resume-failed")
    argv += [job_template(plan, force), "::::", str(input_file)]
    return argv


def write_inputs(plan: Plan, run_dir: Path, ssh: list[str]) -> Path:
    """parallel-input.tsv (byte-identical for the same plan) and parallel.sh, the by-hand resume."""
    path = run_dir / INPUT
    text = "".join(input_line(j) + "\n" for j in plan.jobs)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    wrapper = install_wrapper(run_dir)
    argv = parallel_argv(plan, run_dir, nodes_of(plan), path, run_dir / st.JOBLOG,
                         resume=True, force=False, ssh=ssh)
    script = run_dir / SCRIPT
    script.write_text(
        "#!/usr/bin/env bash\n"
        "# Resume this run with GNU parallel directly: runs the jobs that are not done\n"
        "# (the job log keeps what finished). Same as running imgpipe again.\n"
        f"export PARALLEL_HOME=${{PARALLEL_HOME:-$HOME/.parallel}}\n"
        f"IMGPIPE_JOB=\"$(cat {shlex.quote(str(wrapper))})\" {shlex.join(argv)}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return path


def resume_hints(run_dir: Path, rerun: list[str] | None) -> list[str]:
    hints = []
    if rerun:
        hints.append(shlex.join(rerun) + "      # the same command again")
    hints.append(f"bash {shlex.quote(str(run_dir / SCRIPT))}      # or GNU parallel directly (parallel --resume-failed)")
    return hints


def run(plan: Plan, jobs_path: Path, *, force: bool = False, rerun: list[str] | None = None) -> int:
    """Run every job not yet done; return 0 when all are done, 1 otherwise, 130 when stopped."""
    if shutil.which("parallel") is None:
        raise ImgpipeError("GNU parallel is not installed", hint="install it (Debian: apt-get install parallel)")
    run_dir = jobs_path.parent.resolve()
    ssh = ssh_command(plan)
    (run_dir / st.LOGS).mkdir(exist_ok=True)
    with RunLock(run_dir), Stopper() as stopper:
        write_inputs(plan, run_dir, ssh)
        joblog = run_dir / st.JOBLOG
        if force and joblog.exists():
            joblog.rename(run_dir / f"joblog.before-force-{int(time.time())}.tsv")
        lines = {j.id: input_line(j) for j in plan.jobs}
        seq_of = {j.id: n for n, j in enumerate(plan.jobs, start=1)}
        nodes = nodes_of(plan)
        print(f"imgpipe: run directory {run_dir}", file=sys.stderr)
        unreachable = probe_hosts(nodes, ssh)
        live = [n for n in nodes if n not in unreachable]
        for host, why in unreachable.items():
            print(f"imgpipe: warning: node {host} cannot be reached ({why}); its pinned jobs will not run, "
                  "the others go to the remaining nodes", file=sys.stderr)
        progress = Progress(plan, run_dir)
        retries = Retries(plan.worker)
        round_no = 0
        while live:
            done = {jid for jid, row in last_rows(read_rows(joblog)).items() if row.ok}
            todo = [j for j in plan.jobs
                    if j.id not in done and j.id not in retries.final and (j.host is None or j.host in live)]
            if not todo:
                break
            round_no += 1
            archive_logs(run_dir, (j.id for j in todo))
            round_input = run_dir / ROUND_INPUT
            round_input.write_text("".join(lines[j.id] + "\n" for j in todo), encoding="utf-8")
            round_log = run_dir / st.ROUND_JOBLOG
            round_log.unlink(missing_ok=True)
            (run_dir / st.ROUND_IDS).write_text("\n".join(j.id for j in todo) + "\n")
            argv = parallel_argv(plan, run_dir, live, round_input, round_log, resume=False, force=force, ssh=ssh)
            env = {**os.environ, "IMGPIPE_JOB": (run_dir / "imgpipe-job").read_text()}
            env.setdefault("PARALLEL_HOME", parallel_home())
            err_path = run_dir / PARALLEL_STDERR
            err_start = err_path.stat().st_size if err_path.exists() else 0
            with open(err_path, "a") as err:
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err, start_new_session=True)
            if not wait_engine(proc, stopper, progress):
                return _stop(plan, run_dir, proc, live, ssh, joblog, seq_of, progress, time.time())
            rows = read_rows(round_log)
            _report_parallel_failure(proc.returncode, todo, rows, err_path, err_start)
            append_rows(joblog, rows, seq_of)
            round_log.unlink(missing_ok=True)
            if not retries.after_round(rows):
                break
            # a node that died during the round: stop sending jobs there
            live, newly = drop_dead_nodes(live, ssh)
            unreachable.update(newly)
        (run_dir / st.ROUND_IDS).unlink(missing_ok=True)
        (run_dir / ROUND_INPUT).unlink(missing_ok=True)
        progress.tick(force=True)
        progress.close()
        if not live:
            print("imgpipe: no node can be reached", file=sys.stderr)
        return summary(plan, run_dir, unreachable, resume_hints(run_dir, rerun))


def _report_parallel_failure(code: int, todo: list[Job], rows: list, err_path: Path, err_start: int) -> None:
    """GNU parallel ended without running some jobs (its own error): say so, with its messages."""
    missing = {j.id for j in todo} - {r.job_id for r in rows}
    if not missing:
        return
    try:
        with open(err_path, "rb") as f:
            f.seek(err_start)
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()][-8:]
    print(f"imgpipe: GNU parallel (exit status {code}) ended without running {len(missing)} job(s)"
          + ("; it said:" if lines else f"; see {err_path}"), file=sys.stderr)
    for line in lines:
        print(f"  | {line}", file=sys.stderr)


def _stop(plan: Plan, run_dir: Path, proc: subprocess.Popen, live: list[str], ssh: list[str],
          joblog: Path, seq_of: dict[str, int], progress: Progress, stopped_at: float) -> int:
    """Ctrl-C / SIGTERM: stop GNU parallel and every job on every node; keep the job log consistent."""
    progress.close()
    print("imgpipe: stopping: telling every job to stop (WSClean is stopped, temp dirs removed)...",
          file=sys.stderr)
    stop_engine(plan, proc, live, ssh, signal.SIGHUP)
    # rows of jobs that ended before the stop, or succeeded anyway, are kept; the stopped ones
    # are dropped: they run again
    round_log = run_dir / st.ROUND_JOBLOG
    rows = [r for r in read_rows(round_log) if r.ok or r.start + r.runtime <= stopped_at]
    append_rows(joblog, rows, seq_of)
    round_log.unlink(missing_ok=True)
    (run_dir / st.ROUND_IDS).unlink(missing_ok=True)
    (run_dir / ROUND_INPUT).unlink(missing_ok=True)
    c = st.counts(st.job_states(plan, run_dir))
    print(f"imgpipe: stopped. {c['done']} of {c['total']} job(s) done; run the same command again to resume.",
          file=sys.stderr)
    return 130
