"""What an engine owes, proven by one that owes nothing more (docs/engines.md, "What an engine owes").

``bare`` (tests/bare_engine/bare.py, not part of imgpipe) runs each job's argv, N at a time on
this machine, with its output in ``logs/<id>``, and stops when asked. It writes no job-log row and
asks no halt gate. The run loop learns from the attempts' results how each ended, and derives
what an attempt that left no result was. Real WSClean, real MSs; ``imgpipe`` is run as a user
runs it, through ``tests/bare_engine/imgpipe_bare.py`` (the CLI, with ``bare`` among its engines).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import test_story as story
from imgpipe.attempt import OUTCOMES, outcome_of, read_result
from imgpipe.joblog import read_rows
from procs import ctrl_c, job_processes, killed_on_exit, processes_mentioning, wsclean_prefixes
from test_story import config, run_dir, wait_for

pytestmark = pytest.mark.skipif(shutil.which("wsclean") is None, reason="needs wsclean")


def imgpipe(root: Path, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    return story.imgpipe(root, *args, engine="bare", timeout=timeout)


def start(root: Path, *args) -> subprocess.Popen:
    return story.start(root, "bare", *args)


def image(root: Path, ms: Path) -> Path:
    return root / "images" / ms.name / "img-image.fits"


def states(root: Path) -> dict[str, dict]:
    r = imgpipe(root, "status", run_dir(root), "--json")
    assert r.returncode in (0, 1, 3), r.stderr
    return {j["id"]: j for j in json.loads(r.stdout)["jobs"]}


def test_the_bare_engine_is_an_engine_like_the_others():
    r = imgpipe(Path.cwd(), "run", "--help")
    assert r.returncode == 0 and "bare" in r.stdout, r.stdout


def test_an_engine_writing_no_row_runs_a_night_and_every_view_tells_its_failure_alike(tmp_path, ms_factory):
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(4)]
    cfg = config(tmp_path)
    assert imgpipe(tmp_path, "plan", cfg, *ms).returncode == 0
    saved = tmp_path / "saved.MS"
    shutil.move(ms[1], saved)  # gone between planning and running: WSClean fails on it

    jobs = run_dir(tmp_path) / "jobs.txt"
    r = imgpipe(tmp_path, "run", jobs, "--engine", "bare")
    assert r.returncode == 1, r.stderr
    assert "3 of 4 job(s) done" in r.stderr and "1 failed" in r.stderr, r.stderr
    failed_line = [ln for ln in r.stderr.splitlines() if ln.split()[:1] == ["0002"]]
    assert len(failed_line) == 1 and OUTCOMES["wsclean"].words in failed_line[0], r.stderr
    assert all(image(tmp_path, m).exists() for m in (ms[0], ms[2], ms[3])) and not image(tmp_path, ms[1]).exists()
    rdir = run_dir(tmp_path)
    assert not (rdir / "joblog.round.tsv").exists()  # (the engine wrote none)
    # the job log holds a row per attempt, made from the results: the story of each
    rows = {r.job_id: r for r in read_rows(rdir / "joblog.tsv")}
    assert sorted(rows) == ["0001", "0002", "0003", "0004"], rows
    assert outcome_of(rows["0002"].exitval, rows["0002"].signal)[0] == "wsclean"
    assert all(rows[j].ok and rows[j].host == "localhost" and rows[j].runtime > 0 for j in ("0001", "0003", "0004"))

    # status, runs and report tell the same
    told = states(tmp_path)
    assert {j: s["state"] for j, s in told.items()} == {"0001": "done", "0002": "failed", "0003": "done",
                                                        "0004": "done"}
    assert told["0002"]["failure"] == "wsclean" and told["0002"]["why"].startswith(OUTCOMES["wsclean"].words)
    assert "SW01_T001.MS does not exist" in told["0002"]["why"]  # WSClean's own words
    assert told["0001"]["host"] == "localhost"
    r = imgpipe(tmp_path, "runs", "--json")
    (run,) = json.loads(r.stdout)["runs"]
    assert run["counts"]["done"] == 3 and run["counts"]["failed"] == 1, run
    r = imgpipe(tmp_path, "report", rdir)
    assert r.returncode == 0, r.stderr
    page = (rdir / "report.html").read_text()
    assert OUTCOMES["wsclean"].words in page and "SW01_T001.MS does not exist" in page

    # the same command again: only the failed job runs, and every job is done
    shutil.move(saved, ms[1])
    made = image(tmp_path, ms[0]).stat().st_mtime_ns
    r = imgpipe(tmp_path, "run", jobs, "--engine", "bare")
    assert r.returncode == 0 and "all 4 job(s) done" in r.stderr, r.stderr
    assert image(tmp_path, ms[0]).stat().st_mtime_ns == made
    assert [r.job_id for r in read_rows(rdir / "joblog.tsv")].count("0002") == 2


def test_an_attempt_whose_wrapper_vanished_is_lost_and_runs_again(tmp_path, ms_factory):
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(2)]
    cfg = config(tmp_path, size="512 512", niter=2000, slots=1)
    proc = start(tmp_path, cfg, *ms, "--engine", "bare")
    with killed_on_exit(proc):
        wait_for(lambda: proc.poll() is not None or any(p.startswith(str(tmp_path)) for p in wsclean_prefixes()),
                 120, "the first job's WSClean")
        assert proc.poll() is None, proc.communicate()
        # its wrapper and WSClean are killed outright: no result is written, and the engine writes no row
        for line in processes_mentioning(str(tmp_path)):
            pid, cmd = line.split(": ", 1)
            if " 0001 " in cmd and ("imgpipe-job imgpipe-" in cmd or os.path.basename(cmd.split()[0]) == "wsclean"):
                os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "all 2 job(s) done" in err, err
    rdir = run_dir(tmp_path)
    rows = [r for r in read_rows(rdir / "joblog.tsv") if r.job_id == "0001"]
    assert [outcome_of(r.exitval, r.signal)[0] for r in rows] == ["lost", "done"], rows
    assert (rdir / "logs" / "0001.1").exists() and "imgpipe-result" not in (rdir / "logs" / "0001.1").read_text()
    assert read_result(rdir / "logs" / "0001").attempt == 2  # (the engine passed on which attempt it ran)
    assert all(image(tmp_path, m).exists() for m in ms)
    assert not job_processes(tmp_path)


def test_ctrl_c_stops_the_bare_engine_s_jobs_and_they_are_stopped_everywhere(tmp_path, ms_factory):
    ms = [ms_factory(f"SW01_T00{i}.MS", nchan=4, ntimes=4, nant=6) for i in range(2)]
    cfg = config(tmp_path, size="512 512", niter=5000)
    proc = start(tmp_path, cfg, *ms, "--engine", "bare")
    with killed_on_exit(proc):
        wait_for(lambda: proc.poll() is not None or len([p for p in wsclean_prefixes() if p.startswith(str(tmp_path))]) == 2,
                 120, "two running WSCleans")
        assert proc.poll() is None, proc.communicate()
        out, err, _ = ctrl_c(proc, 60)
    assert proc.returncode == 130, err
    assert "stopped. 0 of 2 job(s) done" in err, err
    assert wait_for(lambda: not job_processes(tmp_path), 10, "no job process left")
    jobs = states(tmp_path)
    assert {j: s["state"] for j, s in jobs.items()} == {"0001": "stopped", "0002": "stopped"}, jobs
    assert all(s["failure"] == "stopped" for s in jobs.values())
    r = imgpipe(tmp_path, "status", run_dir(tmp_path))
    assert r.returncode == 3, r.stdout  # not done yet, but no failure (that would be 1)
    r = imgpipe(tmp_path, cfg, *ms, "--engine", "bare", "--halt-after", "0")
    assert r.returncode == 0 and "all 2 job(s) done" in r.stderr, r.stderr
