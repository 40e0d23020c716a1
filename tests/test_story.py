"""One story per attempt: the run's summary, ``status``, ``runs`` and ``report`` give the same state,
in the same words, for the same attempt, after each way a night can go wrong here: Ctrl-C, a
``kill -9`` of imgpipe, max_time, a job that fails, WSClean killed out of memory, an attempt whose
wrapper vanished, a busy image set (a lost node: tests/test_engine.py, over sshd).

Real WSClean jobs on this machine (GNU parallel's ``:``), and on an engine that writes no row
(``bare``, tests/bare_engine): the story must not depend on who ran the jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgpipe.attempt import OUTCOMES
from procs import job_processes, killed_on_exit, processes_mentioning, wsclean_prefixes

pytestmark = pytest.mark.skipif(shutil.which("wsclean") is None or shutil.which("parallel") is None,
                                reason="needs wsclean and GNU parallel")

BARE = Path(__file__).parent / "bare_engine" / "imgpipe_bare.py"
ENGINES = ("parallel", "make", "bare")
LONG = {"size": "512 512", "niter": 100000}  # a job that runs until it is stopped (here, minutes)


def config(root: Path, *, worker: str = "", size: str = "64 64", niter: int = 10, slots: int = 2) -> Path:
    cfg = root / "img.toml"
    cfg.write_text(f"[worker]\nnodes = 'localhost'\nmax_concurrent = {slots}\n{worker}\n"
                   f"[wsclean]\nname = 'img'\nout-dir = '{root}/images/$ms_basename$'\nsize = '{size}'\n"
                   f"scale = '5arcmin'\nniter = {niter}\ndata-column = 'DATA'\nno-update-model-required = true\n")
    return cfg


def argv(engine: str, *args) -> list[str]:
    head = [sys.executable, str(BARE)] if engine == "bare" else [sys.executable, "-m", "imgpipe.cli"]
    return [*head, *map(str, args)]


def env_of(root: Path) -> dict:
    env = {**os.environ, "PARALLEL_HOME": str(root / "parallel-home"), "IMGPIPE_PROGRESS_INTERVAL": "0.5"}
    env.pop("IMGPIPE_SSH", None)
    return env


def imgpipe(root: Path, *args, engine: str = "parallel", timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv(engine, *args), cwd=root, env=env_of(root), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def start(root: Path, engine: str, *args) -> subprocess.Popen:
    return subprocess.Popen(argv(engine, *args), cwd=root, env=env_of(root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_dir(root: Path) -> Path:
    (jobs,) = (root / "imgpipe-runs").glob("*/jobs.txt")
    return jobs.parent


def views(root: Path) -> dict:
    """What status (table and JSON), runs and report say of each job of the run."""
    rdir = run_dir(root)
    st = imgpipe(root, "status", rdir, "--json")
    doc = json.loads(st.stdout)
    table = imgpipe(root, "status", rdir).stdout
    (run,) = json.loads(imgpipe(root, "runs", "--json").stdout)["runs"]
    assert imgpipe(root, "report", rdir).returncode == 0
    page = (rdir / "report.html").read_text()
    report = dict(re.findall(r'data-job="(\d+)" data-state="([a-z ]+)"', page))
    return {"json": {j["id"]: (j["state"], j["failure"], j["why"]) for j in doc["jobs"]},
            "exit": st.returncode, "table": table, "runs": run["counts"], "report": report, "page": page}


def summary_says(err: str, words: str, n: int) -> None:
    """The end-of-run summary gives the n failed jobs these words (jobs failing alike are one group)."""
    lines = [ln.strip() for ln in err.splitlines()]
    assert f"{n} jobs failed: {words}" in "\n".join(lines) or (
        sum(ln.split()[:1] in (["0001"], ["0002"]) and words in ln for ln in lines) == n), err


def told_alike(v: dict, state: str, failure: str | None, words: str, n: int) -> None:
    """Every view gives these n jobs ``state``, with ``words`` where it gives words."""
    jobs = v["json"]
    assert len(jobs) == n and all(s == state and f == failure and words in (w or "") for s, f, w in jobs.values()), jobs
    assert v["runs"][state] == n and v["runs"]["total"] == n, v["runs"]
    assert v["report"] == {j: state for j in jobs}, v["report"]
    rows = [ln for ln in v["table"].splitlines() if ln.split()[:1] and ln.split()[0] in jobs]
    assert len(rows) == n and all(f" {state} " in ln and words in ln for ln in rows), v["table"]
    assert v["page"].count(words) >= n, "the report does not give each job's words"
    assert v["exit"] == (1 if OUTCOMES.get(failure or "done", OUTCOMES["done"]).failed else 3), v["exit"]


def views_agree(v: dict) -> dict[str, str]:
    """Every view gives each job the same state (a run where jobs end in different states);
    the stopped ones in the stopped words. Returns job id -> state."""
    states = {job: state for job, (state, _, _) in v["json"].items()}
    assert v["report"] == states, (v["report"], states)
    for state in set(states.values()) | {"done", "failed", "stopped", "not started"}:
        assert v["runs"][state] == list(states.values()).count(state), (v["runs"], states)
    for line in v["table"].splitlines():
        job = line.split()[0] if line.split() else None
        if job in states:
            assert f" {states[job]} " in line, (line, states[job])
            if states[job] == "stopped":
                assert OUTCOMES["stopped"].words in line and OUTCOMES["stopped"].words in v["json"][job][2], line
    return states


def two_long_jobs(root: Path, ms_factory, engine: str, worker: str = "") -> tuple[subprocess.Popen, list[Path]]:
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(2)]
    cfg = config(root, worker=worker, **LONG)
    proc = start(root, engine, cfg, *ms, "--engine", engine)
    wait_for(lambda: proc.poll() is not None or len([p for p in wsclean_prefixes() if p.startswith(str(root))]) == 2,
             120, "two running WSCleans")
    assert proc.poll() is None, proc.communicate()
    return proc, ms


@pytest.mark.parametrize("engine", ENGINES)
def test_ctrl_c_is_stopped_in_every_view(tmp_path, ms_factory, engine):
    proc, _ = two_long_jobs(tmp_path, ms_factory, engine)
    with killed_on_exit(proc):
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped. 0 of 2 job(s) done" in err, err
    told_alike(views(tmp_path), "stopped", "stopped", OUTCOMES["stopped"].words, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_killed_imgpipe_leaves_its_jobs_stopped_in_every_view(tmp_path, ms_factory, engine):
    proc, _ = two_long_jobs(tmp_path, ms_factory, engine)
    with killed_on_exit(proc):
        proc.send_signal(signal.SIGKILL)  # its guard stops the engine and every job
        proc.communicate(timeout=60)
    wait_for(lambda: not job_processes(tmp_path) and not processes_mentioning(f"{run_dir(tmp_path)}/"),
             60, "every job and the engine stopped by the guard")
    told_alike(views(tmp_path), "stopped", "stopped", OUTCOMES["stopped"].words, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_max_time_is_a_timeout_in_every_view(tmp_path, ms_factory, engine):
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(2)]
    cfg = config(tmp_path, worker="max_time = 2\nretries = 0", **LONG)
    r = imgpipe(tmp_path, cfg, *ms, "--engine", engine, engine=engine)
    assert r.returncode == 1, r.stderr
    summary_says(r.stderr, OUTCOMES["timeout"].words, 2)
    told_alike(views(tmp_path), "failed", "timeout", OUTCOMES["timeout"].words, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_wsclean_failure_is_the_same_failure_in_every_view(tmp_path, ms_factory, engine):
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(2)]
    cfg = config(tmp_path, worker="retries = 0")
    assert imgpipe(tmp_path, "plan", cfg, *ms).returncode == 0
    for m in ms:  # gone between planning and running: WSClean fails on them
        shutil.rmtree(m)
    r = imgpipe(tmp_path, "run", run_dir(tmp_path) / "jobs.txt", "--engine", engine, engine=engine)
    assert r.returncode == 1, r.stderr
    summary_says(r.stderr, OUTCOMES["wsclean"].words, 2)
    v = views(tmp_path)
    told_alike(v, "failed", "wsclean", OUTCOMES["wsclean"].words, 2)
    assert all("does not exist" in why for _, _, why in v["json"].values())  # WSClean's own line


def test_a_lost_wrapper_is_lost_in_every_view(tmp_path, ms_factory):
    proc, _ = two_long_jobs(tmp_path, ms_factory, "bare", worker="connection_retries = 0")
    with killed_on_exit(proc):
        for line in processes_mentioning(str(tmp_path)):  # both wrappers and their WSClean, killed outright
            pid, cmd = line.split(": ", 1)
            if "imgpipe-job imgpipe-" in cmd or os.path.basename(cmd.split()[0]) == "wsclean":
                os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    summary_says(err, OUTCOMES["lost"].words, 2)
    told_alike(views(tmp_path), "failed", "lost", OUTCOMES["lost"].words, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_wsclean_killed_out_of_memory_is_the_same_in_every_view(tmp_path, ms_factory, engine):
    """The kernel's OOM killer ends WSClean with SIGKILL. No memory limit can be counted on here (the
    CI machine's cgroups are not ours), so the test sends that SIGKILL itself, to WSClean alone: the
    wrapper, the engine and imgpipe then see what they see after an OOM kill. (Slurm's own memory
    limit: tests/test_engines_slurm.py.)"""
    proc, _ = two_long_jobs(tmp_path, ms_factory, engine, worker="retries = 0")
    with killed_on_exit(proc):
        for line in processes_mentioning(str(tmp_path)):
            pid, cmd = line.split(": ", 1)
            if os.path.basename(cmd.split()[0]) == "wsclean":
                os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    words = "WSClean killed by signal 9 (KILL: out of memory?)"
    summary_says(err, words, 2)
    told_alike(views(tmp_path), "failed", "signal", words, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_busy_image_set_is_busy_in_every_view(tmp_path, ms_factory, engine):
    """Two runs of the same images from two directories: the second finds them held by the first."""
    first, second = tmp_path / "alice", tmp_path / "bob"
    first.mkdir()
    second.mkdir()
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(2)]
    cfg = config(tmp_path, worker="retries = 0", **LONG)
    holder = start(first, engine, cfg, *ms, "--engine", engine)
    with killed_on_exit(holder):
        wait_for(lambda: holder.poll() is not None
                 or len([p for p in wsclean_prefixes() if p.startswith(str(tmp_path))]) == 2, 120, "two running WSCleans")
        assert holder.poll() is None, holder.communicate()
        env = {**env_of(second), "IMGPIPE_CLAIM_WAIT": "0"}  # (the holder's jobs last: no need to wait for them)
        r = subprocess.run(argv(engine, cfg, *ms, "--engine", engine), cwd=second, env=env, capture_output=True,
                           text=True, timeout=240, stdin=subprocess.DEVNULL)
        assert r.returncode == 1, r.stderr
        summary_says(r.stderr, OUTCOMES["busy"].words, 2)
        told_alike(views(second), "failed", "busy", OUTCOMES["busy"].words, 2)
        holder.send_signal(signal.SIGINT)
        holder.communicate(timeout=60)
