"""--submit (imgpipe/submit.py) on a real Slurm: munged, slurmctld and three slurmd (node001..node003)
on this machine (tests/slurmcluster.py), real sbatch, GNU parallel, srun and WSClean on real MSs.

The run itself becomes a Slurm batch job: the submitting imgpipe plans, writes RUN/batch.sh, calls
sbatch and is gone at once (a logout); the batch job runs the plan inside Slurm. The evidence is
what a user sees: the images, `imgpipe status` and `imgpipe runs`, RUN/batch.out, and what Slurm
itself holds (squeue) and has run (its job completion log). The run directory's path holds spaces,
quotes, '%' (sbatch's --output pattern character) and '$': every word of batch.sh is data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import job_processes, session_members
from slurmcluster import SlurmCluster, missing_tools
from test_engine_parallel import Run, env_for, expect, image_of, imgpipe, provenance_of, tmp_dirs_left, wait_for

_missing = missing_tools() + [t for t in ("parallel", "wsclean") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(bool(_missing), reason=f"needs Slurm, GNU parallel and WSClean: {', '.join(_missing)}"),
    pytest.mark.usefixtures("clean_cluster"),  # (conftest.py: every test leaves Slurm clean)
]
FAST = {"size": "'64 64'", "scale": "'5arcmin'", "niter": "10"}
SLOW = {"size": "'512 512'", "scale": "'1arcmin'", "niter": "20000"}  # (~8 s a job here, two at once)
NASTY = "the run 'it's' \"q\" %x $HOME"  # the run directory's name: spaces, quotes, a sbatch pattern, a $


def config(tmp_path: Path, *, worker: dict | None = None, wsclean: dict | None = None) -> Path:
    """nodes = 'slurm'; values are TOML literals."""
    w = {"nodes": "'slurm'", "slurm_nodes": "2", "max_concurrent": "2", **(worker or {})}
    ws = {"name": "'img'", **FAST, "data-column": "'DATA'", "no-update-model-required": "true",
          "out-dir": json.dumps(f"{tmp_path}/images/$ms_basename$"), **(wsclean or {})}
    text = "[worker]\n" + "".join(f"{k} = {v}\n" for k, v in w.items())
    text += "[wsclean]\n" + "".join(f"{k} = {v}\n" for k, v in ws.items())
    text += "[quality]\non_fail = 'off'\n"  # (the long clean of SLOW diverges: not what is tested here)
    path = tmp_path / "img.toml"
    path.write_text(text, encoding="utf-8")
    return path


def make_ms(ms_factory, tmp_path: Path, n: int) -> list[Path]:
    return [ms_factory(f"obs{i:02d}.MS", where=tmp_path / "data") for i in range(n)]


def run_path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / NASTY


def submit(slurm, tmp_path: Path, cfg: Path, ms, *more) -> Run:
    """`imgpipe CONFIG MS... --submit --jobs-file RUN/jobs.txt`, in a session of its own, as a user's
    login shell runs it; it must have ended, and left no process of its session behind (what a
    logout would end)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", str(cfg), *map(str, ms), "--submit",
                             "--jobs-file", str(run_path(tmp_path) / "jobs.txt"), *more], cwd=tmp_path,
                            env=env_for(slurm, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    out, err = proc.communicate(timeout=120)
    assert not session_members(proc.pid), session_members(proc.pid)
    return Run(proc.returncode, out, err, time.time() - t0)


def batch_job(rdir: Path) -> str:
    return str(json.loads((rdir / "run.json").read_text())["batch"]["slurm_job"])


def queued(slurm: SlurmCluster, job: str) -> bool:
    """Does Slurm still hold the job (pending, running or completing)?"""
    return any(line.split()[0] == job for line in slurm.jobs(completing=True))


def ours(slurm: SlurmCluster) -> list[str]:
    """imgpipe's jobs Slurm still holds: the batch job, the allocations, the jobs of their own."""
    return [j for j in slurm.jobs(completing=True) if j.split()[1].startswith("imgpipe-")]


def wsclean_running(tmp_path: Path) -> int:
    return len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"])


def status(slurm, tmp_path: Path, code: int, *args) -> Run:
    return expect(imgpipe(slurm, tmp_path, "status", str(run_path(tmp_path)), *args), code)


def said(run: Run) -> str:
    """The job id the submitting imgpipe names."""
    m = re.search(r"submitted as Slurm job (\d+)", run.err)
    assert m, run
    return m.group(1)


# ---------------------------------------------------------------- submit and log out


@pytest.mark.parametrize("slurm_nodes", ["0", "2"])
def test_submit_and_log_out_the_batch_job_runs_every_job(slurm, tmp_path, ms_factory, slurm_nodes):
    ms = make_ms(ms_factory, tmp_path, 6)
    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes}, wsclean={"niter": "3000", "size": "'512 512'"})
    r = expect(submit(slurm, tmp_path, cfg, ms), 0)
    rdir = run_path(tmp_path)
    job = said(r)
    assert job == batch_job(rdir)
    assert f"follow it   imgpipe status {shlex_quote(rdir)}" in r.err, r
    assert f"scancel --batch --signal=TERM {job}" in r.err, r
    assert r.elapsed < 30, r  # (a failure bound: the submitting imgpipe plans and submits, it runs nothing)
    script = (rdir / "batch.sh").read_text()
    assert f"run {shlex_quote(rdir / 'jobs.txt')} --engine slurm" in script, script

    # while it runs, `imgpipe runs` says where it lives
    def listed():
        out = expect(imgpipe(slurm, tmp_path, "runs", str(rdir)), 0).out
        return f"Slurm job {job} (running on node" in out and out
    out = wait_for(listed, 120, f"`imgpipe runs` to show Slurm job {job} running")
    assert NASTY in out
    wait_for(lambda: not queued(slurm, job), 300, f"Slurm job {job} to end")

    log = (rdir / "batch.out").read_text()
    assert "all 6 job(s) done" in log, log
    assert all(image_of(tmp_path, m).is_file() for m in ms)
    first = status(slurm, tmp_path, 0).out.splitlines()[0]
    assert first.startswith(f"run {rdir}: it lives in Slurm job {job} (ended") and "imgpipe exit 0" in first, first
    doc = json.loads(status(slurm, tmp_path, 0, "--json").out)
    assert doc["batch"]["slurm_job"] == job and doc["batch"]["state"] == "ended" and doc["batch"]["exit"] == 0
    expect(imgpipe(slurm, tmp_path, "report", str(rdir)), 0)  # the report says it too, and links imgpipe's output
    page = (rdir / "report.html").read_text()
    assert f"This run lives in {first.split('it lives in ', 1)[1]}" in page and 'href="batch.out"' in page, first
    assert not ours(slurm) and not job_processes(tmp_path) and not tmp_dirs_left(tmp_path)
    if slurm_nodes == "2":  # (an allocation takes a node's every slot: the batch job's node is left out)
        assert re.search(r"node node00\d is left out \(imgpipe itself runs there, in the run's batch job "
                         rf"\(Slurm job {job}\)", log), log

    # nothing left to do: nothing is submitted
    before = slurm.jobs_ended()
    r = expect(submit(slurm, tmp_path, cfg, ms), 0)
    assert "nothing to do: all 6 job(s) done, their images are there; nothing was submitted" in r.err, r
    assert slurm.jobs_ended() == before and not ours(slurm)
    assert batch_job(rdir) == job


def shlex_quote(path) -> str:
    import shlex

    return shlex.quote(str(path))


def test_slurm_nodes_of_every_node_runs_beside_the_batch_job(slurm, tmp_path, ms_factory):
    """slurm_nodes = 3 on 3 nodes: the batch job holds a CPU of one of them, where an allocation
    asking for every job slot of 3 nodes would wait for ever. The batch job's own node is left out
    (said with why), the allocation takes the other two, every job is done."""
    ms = make_ms(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, worker={"slurm_nodes": "3"})
    job = said(expect(submit(slurm, tmp_path, cfg, ms), 0))
    wait_for(lambda: not queued(slurm, job), 300, f"Slurm job {job} to end")
    log = (run_path(tmp_path) / "batch.out").read_text()
    assert "all 4 job(s) done" in log, log
    assert "asking Slurm for an allocation of 2 node(s) (slurm_nodes = 3): 2 node(s) usable" in log, log
    assert all(image_of(tmp_path, m).is_file() for m in ms)


# ---------------------------------------------------------------- stopping it


def done_records(tmp_path: Path, ms) -> dict[str, tuple[int, str]]:
    """MS name -> (mtime_ns, content) of each job's record, for the jobs done."""
    return {m.name: (provenance_of(tmp_path, m).stat().st_mtime_ns, provenance_of(tmp_path, m).read_text())
            for m in ms if provenance_of(tmp_path, m).is_file()}


@pytest.mark.parametrize("slurm_nodes", ["0", "2"])
def test_scancel_stops_every_job_and_a_second_submit_resumes(slurm, tmp_path, ms_factory, slurm_nodes):
    """`scancel N` (N: the batch job) while jobs run, some done before: Slurm sends SIGTERM to every
    process of the batch job, imgpipe's srun clients too (which kill their jobs at once). Every job
    stops, nothing of the run is left in Slurm, no WSClean runs, and status says the jobs stopped,
    not failed. A second --submit makes the rest, and nothing done again."""
    ms = make_ms(ms_factory, tmp_path, 6)
    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes, "max_concurrent": "1"}, wsclean=SLOW)
    job = said(expect(submit(slurm, tmp_path, cfg, ms), 0))
    rdir = run_path(tmp_path)
    wait_for(lambda: len(done_records(tmp_path, ms)) >= 2 and wsclean_running(tmp_path) >= 1
             or not queued(slurm, job), 300, "two jobs done and one running")
    assert queued(slurm, job), (rdir / "batch.out").read_text()
    done = done_records(tmp_path, ms)
    slurm.run("scancel", job)
    wait_for(lambda: not ours(slurm), 60, "Slurm to hold nothing of the run")
    wait_for(lambda: not job_processes(tmp_path), 30, "no job process left")
    log = (rdir / "batch.out").read_text()
    assert re.search(r"stopped\. \d of 6 job\(s\) done", log), log
    doc = json.loads(status(slurm, tmp_path, 3, "--json").out)  # (3: jobs stopped, none failed)
    states = {j["id"]: j["state"] for j in doc["jobs"]}
    assert "failed" not in states.values() and "stopped" in states.values(), states
    assert set(states.values()) <= {"done", "stopped", "not started"}, states
    assert doc["batch"]["state"] == "ended" and doc["batch"]["exit"] == 130, doc["batch"]
    text = status(slurm, tmp_path, 3).out
    assert text.splitlines()[0].startswith(f"run {rdir}: it lives in Slurm job {job} (ended: CANCELLED"), text

    r = expect(imgpipe(slurm, tmp_path, "run", str(rdir), "--submit"), 0)
    again = said(r)
    assert again != job
    wait_for(lambda: not queued(slurm, again), 300, f"Slurm job {again} to end")
    assert "all 6 job(s) done" in (rdir / "batch.out").read_text().split(f"Slurm job {again} on")[-1]
    assert all(image_of(tmp_path, m).is_file() for m in ms)
    now = done_records(tmp_path, ms)
    assert all(now[name] == done[name] for name in done), "a job done before the scancel was made again"
    assert not ours(slurm) and not tmp_dirs_left(tmp_path)
    status(slurm, tmp_path, 0)


def test_scancel_batch_signal_term_stops_every_job_gracefully(slurm, tmp_path, ms_factory):
    """The stop imgpipe prints, `scancel --batch --signal=TERM N`: SIGTERM to imgpipe alone, which
    stops every job as for Ctrl-C (each wrapper stops WSClean and removes its temp dir), exit 130."""
    ms = make_ms(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, worker={"slurm_nodes": "2"}, wsclean=SLOW)
    job = said(expect(submit(slurm, tmp_path, cfg, ms), 0))
    rdir = run_path(tmp_path)
    wait_for(lambda: wsclean_running(tmp_path) >= 4 or not queued(slurm, job), 120, "four running WSClean")
    slurm.run("scancel", "--batch", "--signal=TERM", job)
    wait_for(lambda: not ours(slurm), 60, "Slurm to hold nothing of the run")
    assert not job_processes(tmp_path) and not tmp_dirs_left(tmp_path)
    assert all("stopped (SIGTERM): WSClean stopped, temp dir removed" in (rdir / "logs" / f"000{i}").read_text()
               for i in range(1, 5))
    assert "stopped. 0 of 4 job(s) done" in (rdir / "batch.out").read_text()
    doc = json.loads(status(slurm, tmp_path, 3, "--json").out)
    assert [j["state"] for j in doc["jobs"]] == ["stopped"] * 4 and doc["batch"]["exit"] == 130, doc


# ---------------------------------------------------------------- what is refused, and submits nothing


def test_a_plan_error_submits_nothing(slurm, tmp_path, ms_factory):
    ms = make_ms(ms_factory, tmp_path, 2)
    before = slurm.jobs_ended()
    r = expect(submit(slurm, tmp_path, config(tmp_path), [*ms, tmp_path / "data" / "missing.MS"]), 2)
    assert "missing.MS" in r.err and "Traceback" not in r.err, r
    # what the batch job would ask of Slurm is asked here: a bad partition is a plan error too
    r = expect(submit(slurm, tmp_path, config(tmp_path, worker={"slurm_options": "'--partition=nope'"}), ms), 2)
    assert "no partition 'nope'" in r.err and "[worker] slurm_options" in r.err, r
    # the nodes are not Slurm's
    r = expect(submit(slurm, tmp_path, config(tmp_path, worker={"nodes": "'node001'"}), ms), 2)
    assert "--submit runs the run as a Slurm batch job" in r.err and "nodes = 'slurm'" in r.err, r
    # no sbatch here
    env = env_for(slurm, tmp_path)
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sinfo", "squeue"):
        (bare / tool).symlink_to(shutil.which(tool))
    env["PATH"] = f"{bare}:{os.path.dirname(sys.executable)}"
    r = expect(imgpipe(slurm, tmp_path, config(tmp_path), *ms, "--submit", env=env), 2)
    assert "sbatch is not installed here" in r.err, r
    assert not list(tmp_path.rglob("batch.sh")) and not ours(slurm) and slurm.jobs_ended() == before
    assert not (tmp_path / "images").exists()


def test_a_second_submit_while_the_first_is_queued_or_running_is_refused_naming_it(slurm, tmp_path, ms_factory):
    ms = make_ms(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, wsclean=SLOW)
    # another user's job holds every node: the batch job waits in Slurm's queue
    blocker = slurm.run("sbatch", "--parsable", "-N3", "--exclusive", "--job-name=someone-else", "--output=/dev/null",
                        f"--wrap=while [ ! -e {tmp_path / 'release'} ]; do sleep 0.1; done").stdout.strip()
    wait_for(lambda: any(j.endswith("someone-else RUNNING") for j in slurm.jobs()), 30, "the other user's job")
    job = said(expect(submit(slurm, tmp_path, cfg, ms), 0))
    rdir = run_path(tmp_path)
    r = expect(submit(slurm, tmp_path, cfg, ms), 2)
    assert f"this run is already submitted: Slurm job {job} (pending" in r.err and "nothing was submitted" in r.err, r
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms, "--jobs-file", str(rdir / "jobs.txt")), 2)  # (by hand)
    assert f"Slurm job {job} (pending" in r.err and f"scancel --batch --signal=TERM {job}" in r.err, r
    assert status(slurm, tmp_path, 3).out.startswith(f"run {rdir}: it lives in Slurm job {job} (pending")
    (tmp_path / "release").touch()
    wait_for(lambda: not queued(slurm, blocker) and queued(slurm, job) and wsclean_running(tmp_path), 120,
             "the batch job's jobs running")
    r = expect(imgpipe(slurm, tmp_path, "run", str(rdir), "--submit"), 2)
    assert f"this run is already submitted: Slurm job {job} (running on node" in r.err, r
    assert [line.split()[0] for line in ours(slurm) if line.split()[1].endswith("-batch")] == [job]
    wait_for(lambda: not queued(slurm, job), 300, f"Slurm job {job} to end")
    assert all(image_of(tmp_path, m).is_file() for m in ms)


# ---------------------------------------------------------------- what the batch job asks for itself


def test_what_the_batch_job_asks_of_slurm_for_itself():
    from types import SimpleNamespace

    from imgpipe.engines.slurm import Node
    from imgpipe.engines.slurm import slurm_minutes
    from imgpipe.submit import head_options, output_pattern, placement

    worker = SimpleNamespace(slurm_options="--partition=imaging -A nenufar --time=12:00:00 --mem=30G -q long "
                             "--exclusive --reservation night", max_concurrent=2, nodes=("slurm",))
    plan = SimpleNamespace(worker=worker, jobs=[SimpleNamespace(host="node002"), SimpleNamespace(host=None)])
    nodes = [Node(f"node00{i}", 2, 4000, "idle") for i in (1, 2, 3)]
    words, said = head_options(plan, nodes, ["--exclude=node002"], "7-00:00:00")
    # where and on whose account, as slurm_options says; not its --time (each job's), --mem, --exclusive
    assert words == ["--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--mem=596", "--partition=imaging", "-A",
                     "nenufar", "-q", "long", "--reservation", "night", "--exclude=node002", "--time=7-00:00:00",
                     "--signal=B:TERM@120"], words
    assert said == "1 CPU, 596 MB, partition imaging, time limit 7-00:00:00"
    assert "--signal=B:TERM@120" not in head_options(plan, nodes, [], "UNLIMITED")[0]
    assert "--signal=B:TERM@120" not in head_options(plan, nodes, [], "5:00")[0]  # (5 min: no time for it)
    assert [slurm_minutes(t) for t in ("30", "1:30", "2:00:00", "1-0", "1-2:30", "UNLIMITED")] == \
        [30, 1.5, 120, 1440, 1440 + 150, None]
    # the batch job keeps away from pinned nodes (their slots), and with slurm_nodes > 0 from the run's nodes
    assert placement(plan, ["node001", "node002", "node003"], False) == ["--exclude=node002"]
    assert placement(plan, ["node001", "node002", "node003"], True) == ["--exclude=node002"]  # (no node is free)
    worker.nodes = ("node001", "node002")
    assert placement(plan, ["node001", "node002", "node003"], True) == ["--exclude=node[001-002]"]
    assert output_pattern(Path("/r/a %x 100%/batch.out")) == "/r/a %%x 100%%/batch.out"
    assert output_pattern(Path("/r/a\\b %x/batch.out")) == "/r/a\\b %x/batch.out"  # (Slurm replaces nothing then)


def test_runs_names_the_batch_job_even_when_slurm_cannot_be_asked(slurm, tmp_path, ms_factory):
    """A run's record names Slurm job N: `imgpipe runs` says 'Slurm job N' and how it is when squeue
    answers (a job it no longer knows has ended), and 'Slurm job N' alone when Slurm cannot be asked."""
    ms = make_ms(ms_factory, tmp_path, 1)
    rdir = run_path(tmp_path)
    expect(imgpipe(slurm, tmp_path, "plan", config(tmp_path), *ms, "--jobs-file", str(rdir / "jobs.txt")), 0)
    (rdir / "run.json").write_text(json.dumps({"batch": {"slurm_job": 987654}}))
    out = expect(imgpipe(slurm, tmp_path, "runs", str(rdir)), 0).out
    assert re.search(r"  Slurm job 987654 \(ended\)$", out, flags=re.M), out
    env = env_for(slurm, tmp_path)
    env["PATH"] = os.path.dirname(sys.executable)  # (no squeue here)
    out = expect(imgpipe(slurm, tmp_path, "runs", str(rdir), env=env), 0).out
    assert re.search(r"  Slurm job 987654$", out, flags=re.M), out
    first = expect(imgpipe(slurm, tmp_path, "status", str(rdir), env=env), 3).out.splitlines()[0]
    assert first == f"run {rdir}: it lives in Slurm job 987654", first
