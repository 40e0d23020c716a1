"""The make engine: the jobs run as the targets of a Makefile generated from ``Makefile.in``.

- One target ``done/<id>`` per job, created when the job succeeds: running make
  again (by imgpipe, or by hand with ``make -C RUN_DIR -k -j N``) runs only what
  is not done; ``-k`` keeps going past failed jobs.
- Per-node concurrency: every recipe takes one of its node's ``max_concurrent``
  slots with GNU parallel's ``sem``; make's ``-j`` is the total of all slots.
- A pinned job runs on its node; the others are spread over the reachable nodes
  when the Makefile is generated (make cannot move a job between nodes).
- Failures are retried as with the parallel engine (``connection_retries``,
  ``retries``): make runs again for those jobs, in rounds, and the Makefile is
  written again before each round, so unpinned jobs leave a node that died.
- The recipe (``bin/imgpipe-make-job``) runs the same node-side wrapper as the
  parallel engine (over ssh, the script travels on stdin) and appends a row in
  GNU parallel's job-log format to ``joblog.tsv``: status reads both engines alike.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .engine import (
    Progress, Retries, RunLock, Stopper, archive_logs, drop_dead_nodes, install_wrapper, installed_file,
    nodes_of, probe_hosts, parallel_home, share_resources, ssh_command, stop_engine, summary, tag_of,
    wait_engine, wrapper_source,
)
from .errors import ImgpipeError
from .hosts import is_local
from .joblog import append_rows, last_rows, read_rows
from .plan import Job, Plan
from . import status as st

MAKEFILE = "Makefile"
RECIPE = "imgpipe-make-job"


def template_path() -> Path:
    path = installed_file("Makefile.in")
    if path is None:
        raise ImgpipeError("Makefile.in is missing from the installation (reinstall imgpipe)")
    return path


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


def wrapper_args(plan: Plan, job: Job, force: bool) -> list[str]:
    w = plan.worker
    return [
        "imgpipe-job", tag_of(plan), job.id, str(w["max_concurrent"]), w.get("env_file", ""),
        str(w.get("max_time", 0) or 0), "1" if share_resources(job) else "0", "1" if force else "0",
        plan.digest[:12], job.command,
    ]


def job_command(plan: Plan, job: Job, host: str, ssh: list[str], force: bool) -> str:
    """The shell command that runs the wrapper for ``job`` on ``host`` (from the run directory)."""
    args = wrapper_args(plan, job, force)
    if is_local(host):
        return "bash ./imgpipe-job " + shlex.join(args)
    # exec: the wrapper's parent is then sshd itself, whatever the login shell, so the wrapper
    # sees its connection go (bin/imgpipe-job, watch_parent)
    remote = "exec bash -s " + shlex.join(args)
    return shlex.join([*ssh, "-o", "BatchMode=yes", host, remote]) + " < ./imgpipe-job"


def _make_escape(text: str) -> str:
    return text.replace("$", "$$")


def render_makefile(plan: Plan, jobs_path: Path, run_dir: Path, todo: list[Job], hosts: dict[str, str],
                    ssh: list[str], force: bool) -> str:
    seq_of = {j.id: n for n, j in enumerate(plan.jobs, start=1)}
    slots = plan.worker["max_concurrent"]
    rules = []
    for job in todo:
        host = hosts[job.id]
        recipe = "bash ./imgpipe-make-job " + shlex.join(
            [str(seq_of[job.id]), job.id, "localhost" if is_local(host) else host, str(slots),
             job_command(plan, job, host, ssh, force)])
        rules.append(f"done/{job.id}:\n\t@{_make_escape(recipe)}\n")
    n_nodes = len(set(hosts.values())) or 1
    text = template_path().read_text(encoding="utf-8")
    for key, value in {
        "@JOBS_FILE@": str(jobs_path),
        "@RUN_DIR_Q@": shlex.quote(str(run_dir)),
        "@SLOTS@": str(slots * n_nodes),
        "@PER_NODE@": str(slots),
        "@TARGETS@": " ".join(f"done/{j.id}" for j in todo),
        "@RULES@": "\n".join(rules),
    }.items():
        text = text.replace(key, value)
    return text


def run(plan: Plan, jobs_path: Path, *, force: bool = False, rerun: list[str] | None = None) -> int:
    """Run every job not yet done through make; 0 all done, 1 otherwise, 130 when stopped."""
    for tool, pkg in (("make", "make"), ("sem", "parallel")):
        if shutil.which(tool) is None:
            raise ImgpipeError(f"{tool} is not installed", hint=f"install it (Debian: apt-get install {pkg})")
    run_dir = jobs_path.parent.resolve()
    ssh = ssh_command(plan)
    with RunLock(run_dir), Stopper() as stopper:
        install_wrapper(run_dir)
        recipe = run_dir / RECIPE
        shutil.copyfile(wrapper_source(RECIPE), recipe)
        recipe.chmod(0o755)
        (run_dir / st.LOGS).mkdir(exist_ok=True)
        done_dir = run_dir / "done"
        if force and done_dir.exists():
            shutil.rmtree(done_dir)
            joblog = run_dir / st.JOBLOG
            if joblog.exists():
                joblog.rename(run_dir / f"joblog.before-force-{int(time.time())}.tsv")
        done_dir.mkdir(exist_ok=True)
        nodes = nodes_of(plan)
        print(f"imgpipe: run directory {run_dir}", file=sys.stderr)
        unreachable = probe_hosts(nodes, ssh)
        for host, why in unreachable.items():
            print(f"imgpipe: warning: node {host} cannot be reached ({why}); its pinned jobs will not run, "
                  "the others go to the remaining nodes", file=sys.stderr)
        live = [n for n in nodes if n not in unreachable]
        _merge_round(run_dir)  # rows left by a by-hand `make` run
        for jid, row in last_rows(read_rows(run_dir / st.JOBLOG)).items():
            if row.ok:  # done by any engine
                (done_dir / jid).touch()
        progress = Progress(plan, run_dir)
        retries = Retries(plan.worker)
        env = {**os.environ}
        env.setdefault("PARALLEL_HOME", parallel_home())
        while True:
            # the Makefile lists every job (by hand, `make` skips the done ones); imgpipe asks for the
            # rest. Written again each round: unpinned jobs leave a node that died.
            hosts = assign_hosts(plan.jobs, live or nodes)
            (run_dir / MAKEFILE).write_text(
                render_makefile(plan, jobs_path.resolve(), run_dir, list(plan.jobs), hosts, ssh, force),
                encoding="utf-8")
            todo = [j for j in plan.jobs if live and not (done_dir / j.id).exists()
                    and j.id not in retries.final and (j.host is None or j.host in live)]
            if not todo:
                break
            archive_logs(run_dir, (j.id for j in todo))
            (run_dir / st.ROUND_IDS).write_text("\n".join(j.id for j in todo) + "\n")
            # status reads this round's rows from joblog.tsv; jobs done before stay as they were
            slots = plan.worker["max_concurrent"] * len(live)
            with open(run_dir / "make.stderr", "a") as err:
                proc = subprocess.Popen(["make", "-C", str(run_dir), "-k", "-j", str(slots),
                                         *(f"done/{j.id}" for j in todo)], env=env,
                                        stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
            if not wait_engine(proc, stopper, progress):
                return _stop(plan, run_dir, proc, live, ssh, progress, time.time())
            (run_dir / st.ROUND_IDS).unlink(missing_ok=True)
            if not retries.after_round(_merge_round(run_dir)):
                break
            live, newly = drop_dead_nodes(live, ssh)  # a node that died during the round
            unreachable.update(newly)
        progress.tick(force=True)
        progress.close()
        if not live:
            print("imgpipe: no node can be reached", file=sys.stderr)
        return summary(plan, run_dir, unreachable, _hints(run_dir, rerun))


def _hints(run_dir: Path, rerun: list[str] | None) -> list[str]:
    hints = [shlex.join(rerun) + "      # the same command again"] if rerun else []
    hints.append(f"make -C {shlex.quote(str(run_dir))} -k -j N      # or make directly")
    return hints


def _merge_round(run_dir: Path, before: float | None = None) -> list:
    """Move the recipes' rows into joblog.tsv (dropping those of jobs stopped by a stop at ``before``);
    return the rows moved."""
    round_log = run_dir / st.ROUND_JOBLOG
    rows = read_rows(round_log)
    if before is not None:
        rows = [r for r in rows if r.start + r.runtime <= before]
    append_rows(run_dir / st.JOBLOG, rows, {})
    round_log.unlink(missing_ok=True)
    return rows


def _stop(plan: Plan, run_dir: Path, proc: subprocess.Popen, live: list[str], ssh: list[str],
          progress: Progress, stopped_at: float) -> int:
    progress.close()
    print("imgpipe: stopping: telling every job to stop (WSClean is stopped, temp dirs removed)...",
          file=sys.stderr)
    stop_engine(plan, proc, live, ssh, signal.SIGSTOP)
    (run_dir / st.ROUND_IDS).unlink(missing_ok=True)
    _merge_round(run_dir, before=stopped_at)
    c = st.counts(st.job_states(plan, run_dir))
    print(f"imgpipe: stopped. {c['done']} of {c['total']} job(s) done; run the same command again to resume.",
          file=sys.stderr)
    return 130
