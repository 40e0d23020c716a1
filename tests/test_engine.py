"""What both engines share (imgpipe/engines/loop.py): failed jobs run again as the config says.

Real sshd "nodes" on loopback, real GNU parallel and make, real WSClean for every image.
Two things cannot be made to happen on cue with a real WSClean, so for them a stand-in
``wsclean`` (a bash script that ``env_file`` puts first on PATH on the node) comes
before the real one, and says so:

- a transient failure: its first call for an MS fails, as on a node whose scratch
  disk was full; later calls run the real WSClean;
- a long phase in which WSClean writes nothing (reading a large MS): its first call
  sleeps silently, so that a dropped connection is noticed by nothing but imgpipe's
  node-side wrapper; later calls run the real WSClean.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imgpipe.attempt import read_result
from imgpipe.joblog import read_rows
from procs import cmdline, job_processes, processes_mentioning
from sshcluster import _alive
from test_engine_parallel import (
    Run, config, expect, image_of, imgpipe, make_ms_set, provenance_of, run_dir, start_imgpipe,
    tmp_dirs_left, toml_str, wait_for,
)

ENGINES = ("parallel", "make")
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def stand_in(tmp_path: Path, first_call: str) -> Path:
    """An env_file putting a stand-in ``wsclean`` first on PATH: ``first_call`` (bash) runs
    on the first call for each MS, the real WSClean on every other call."""
    real = shutil.which("wsclean")
    bindir = tmp_path / "stand-in"
    bindir.mkdir()
    script = bindir / "wsclean"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "# stand-in for WSClean, written by tests/test_engine.py (see its docstring)\n"
        f"[[ $1 == --version ]] && exec {real} --version\n"
        f"mark={bindir}/called-for-$(basename -- \"${{@: -1}}\")\n"
        f"[[ -e $mark ]] && exec {real} \"$@\"\n"
        "touch -- \"$mark\"\n"
        f"{first_call}\n",
        encoding="utf-8")
    script.chmod(0o755)
    env_file = tmp_path / "env.sh"
    env_file.write_text(f"export PATH={bindir}:$PATH\n", encoding="utf-8")
    return env_file


def run_while(cluster, tmp_path: Path, args: list, during) -> Run:
    """Run imgpipe; call ``during()`` while it runs (it waits for its moment); return the Run."""
    proc = start_imgpipe(cluster, tmp_path, *args)
    try:
        during()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return Run(proc.returncode, out, err, 0.0)


def rows_of(rdir: Path) -> dict[str, list[int]]:
    """job id -> exit status of each attempt, in order (both engines write the same job log)."""
    out: dict[str, list[int]] = {}
    for row in read_rows(rdir / "joblog.tsv"):
        out.setdefault(row.job_id, []).append(row.exitval)
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_a_wsclean_failure_runs_again_only_when_retries_say_so(own_cluster, tmp_path, ms_factory, engine):
    cluster = own_cluster
    for retries, code in ((1, 0), (0, 1)):
        work = tmp_path / f"retries-{retries}"
        work.mkdir()
        env_file = stand_in(work, "echo 'stand-in: simulated transient failure' >&2; exit 3")
        ms = make_ms_set(ms_factory, work, 2)
        cfg = config(work, cluster, worker={"env_file": toml_str(str(env_file)), "retries": str(retries)})
        r = expect(imgpipe(cluster, work, "image", "--engine", engine, cfg, *ms), code)
        rows = rows_of(run_dir(work))
        if retries:
            assert rows == {"0001": [10, 0], "0002": [10, 0]}, r
            assert "all 2 job(s) done" in r.err, r
            # each attempt's result says which it was: the first one's log kept as logs/ID.1
            logs = run_dir(work) / "logs"
            assert [(read_result(logs / f"{jid}.1").attempt, read_result(logs / jid).attempt)
                    for jid in ("0001", "0002")] == [(1, 2), (1, 2)]
            assert all(image_of(work, m).exists() and provenance_of(work, m).exists() for m in ms)
        else:
            assert rows == {"0001": [10], "0002": [10]}, r
            assert "0 of 2 job(s) done, 2 failed" in r.err, r
            assert "2 jobs failed: WSClean failed" in r.err, r  # the same failure, said once for both
            assert r.err.count("stand-in: simulated transient failure") == 1, r  # the first one's stderr
            assert not any(image_of(work, m).exists() for m in ms)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_dropped_connection_stops_the_job_on_the_node_and_it_runs_again(own_cluster, tmp_path, ms_factory,
                                                                         engine):
    cluster = own_cluster
    env_file = stand_in(tmp_path, 'exec -a "$0" sleep 60  # silent, like a long read of a large MS')
    (ms,) = make_ms_set(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, cluster, worker={"env_file": toml_str(str(env_file)), "nodes": "'node001'"})

    def cut():
        quiet = wait_for(lambda: [int(p.split(":")[0]) for p in processes_mentioning(str(tmp_path))
                                  if p.split()[1].endswith("stand-in/wsclean")], 30, "the silent first call")
        cluster.drop_connections("node001")
        # nothing reaches the node but the lost connection: the job must stop itself there
        wait_for(lambda: not any(_alive(p) for p in quiet), 15, "the job on the node to stop itself")

    r = expect(run_while(cluster, tmp_path, ["image", "--engine", engine, cfg, ms], cut), 0)
    assert "all 1 job(s) done" in r.err, r
    assert rows_of(run_dir(tmp_path)) == {"0001": [255, 0]}  # the connection failure, then the retry
    assert image_of(tmp_path, ms).exists() and provenance_of(tmp_path, ms).exists()
    assert not job_processes(tmp_path), job_processes(tmp_path)
    assert not tmp_dirs_left(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_node_dying_mid_run_sends_its_unpinned_job_to_the_other_node(own_cluster, tmp_path, ms_factory, engine):
    cluster = own_cluster
    env_file = stand_in(tmp_path, f'sleep 3; exec {shutil.which("wsclean")} "$@"  # a slow start')
    ms = make_ms_set(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, cluster, worker={"env_file": toml_str(str(env_file)), "max_concurrent": "1"})

    def kill_node002():
        wait_for(lambda: any(b"stand-in/wsclean" in cmdline(p) for p in cluster.host_pids("node002")), 30,
                 "a job to start on node002")
        cluster.stop_host("node002")

    r = expect(run_while(cluster, tmp_path, ["image", "--engine", engine, cfg, *ms], kill_node002), 0)
    assert "node node002 cannot be reached any more" in r.err, r
    assert "all 2 job(s) done" in r.err, r
    rows = read_rows(run_dir(tmp_path) / "joblog.tsv")
    moved = [row.job_id for row in rows if row.exitval == 255]
    assert len(moved) == 1, rows
    assert [(row.host, row.exitval) for row in rows if row.job_id == moved[0]] == [("node002", 255), ("node001", 0)]
    assert all(image_of(tmp_path, m).exists() for m in ms)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_connection_lost_for_good_is_told_alike_by_every_view(own_cluster, tmp_path, ms_factory, engine):
    """connection_retries = 0: the dropped connection is the job's last attempt, and the summary,
    status, runs and report all say so, in the same words (test_story.py: the other ways)."""
    from imgpipe.attempt import OUTCOMES
    from test_story import summary_says, told_alike, views

    cluster = own_cluster
    env_file = stand_in(tmp_path, 'exec -a "$0" sleep 60  # silent, like a long read of a large MS')
    (ms,) = make_ms_set(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, cluster, worker={"env_file": toml_str(str(env_file)), "nodes": "'node001'",
                                            "connection_retries": "0"})

    def cut():
        wait_for(lambda: [p for p in processes_mentioning(str(tmp_path)) if p.split()[1].endswith("stand-in/wsclean")],
                 30, "the silent first call")
        cluster.drop_connections("node001")

    r = expect(run_while(cluster, tmp_path, ["image", "--engine", engine, cfg, ms], cut), 1)
    summary_says(r.err, OUTCOMES["connection"].words, 1)
    told_alike(views(tmp_path), "failed", "connection", OUTCOMES["connection"].words, 1)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_stopped_or_killed_imgpipe_over_ssh_leaves_its_jobs_stopped_or_not_started_in_every_view(
        own_cluster, tmp_path, ms_factory, engine, how):
    """kill -9 of imgpipe while jobs run on two sshd nodes and others wait for a slot: its guard
    stops the engine and the jobs over ssh. Whatever that stop ends (a wrapper told to stop, an
    ssh connection cut) is no failure: every view (status, runs, report) gives the jobs that
    began 'stopped', the others 'not started' (test_story.py, here over real ssh)."""
    import signal

    from procs import killed_on_exit
    from test_story import views, views_agree

    cluster = own_cluster
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean={"size": "'512 512'", "niter": "100000"})
    proc = start_imgpipe(cluster, tmp_path, "image", "--engine", engine, cfg, *ms)
    with killed_on_exit(proc):
        wait_for(lambda: proc.poll() is not None
                 or len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) == 2, 120,
                 "a WSClean on each node")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=60)
    wait_for(lambda: not job_processes(tmp_path) and not processes_mentioning(f"{run_dir(tmp_path)}/"), 60,
             "the guard to stop every job and the engine")
    states = views_agree(views(tmp_path))
    assert sorted(states.values()) == ["not started", "not started", "stopped", "stopped"], states
    assert not tmp_dirs_left(tmp_path)
