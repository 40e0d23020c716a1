"""The Slurm engine (imgpipe/engines/slurm.py) on a real Slurm: munged, slurmctld and three
slurmd (node001..node003) on this machine (tests/slurmcluster.py), real GNU parallel and srun,
real WSClean on real MSs. Nothing is mocked; the evidence is what a user sees: the images and
their records, the exit code and the summary, the job log, each job's log (the wrapper names
its Slurm job, step and node), and what Slurm itself still holds (squeue) after a run.

The nodes share this machine's file system and process table, so "WSClean left running" is
looked for once for all nodes.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from imgpipe.attempt import OUTCOMES
from procs import ctrl_c, job_processes, killed_on_exit
from slurmcluster import SlurmCluster, missing_tools
from test_story import summary_says, told_alike, views, views_agree
from test_engine_parallel import (
    Run, env_for, expect, image_of, imgpipe, max_overlap, provenance_of, run_dir, start_imgpipe, tmp_dirs_left, wait_for,
)

_missing = missing_tools()
pytestmark = [
    pytest.mark.skipif(bool(_missing), reason=f"needs Slurm: {', '.join(_missing)}"),
    pytest.mark.usefixtures("clean_cluster"),  # (conftest.py: every test leaves Slurm clean)
]
NODES = ("node001", "node002", "node003")
FAST = {"size": "'64 64'", "scale": "'5arcmin'", "niter": "10"}
SLOW = {"size": "'512 512'", "niter": "3000"}


def config(tmp_path: Path, *, worker: dict | None = None, wsclean: dict | None = None, pinned: bool = False,
           resources: dict | None = None, name: str = "img.toml") -> Path:
    """nenucal's spelling: nodes = 'slurm'. Values are TOML literals."""
    w = {"nodes": "'slurm'", "slurm_nodes": "2", "max_concurrent": "2"}
    if pinned:
        w["run_on_file_host"] = "true"
        w["run_on_file_host_pattern"] = r"'/net/(node\d{3})/'"
    w.update(worker or {})
    ws = {"name": "'img'", **FAST, "data-column": "'DATA'", "no-update-model-required": "true",
          "out-dir": json.dumps(f"{tmp_path}/images/$ms_basename$")}
    ws.update(wsclean or {})
    text = "[worker]\n" + "".join(f"{k} = {v}\n" for k, v in w.items())
    if resources:
        text += "[worker.resources.heavy]\n" + "".join(f"{k} = {v}\n" for k, v in resources.items())
    text += "[wsclean]\n" + "".join(f"{k} = {v}\n" for k, v in ws.items())
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def make_ms(ms_factory, tmp_path: Path, n: int, *, pinned: bool = False) -> list[Path]:
    """n MSs; pinned: under net/node001, net/node002, net/node003 in turn."""
    return [ms_factory(f"obs{i:02d}.MS", where=tmp_path / "net" / NODES[i % 3] if pinned else tmp_path / "data")
            for i in range(n)]


def slurm_of(rdir: Path, job_id: str) -> tuple[str, str | None, str]:
    """(Slurm job id, step id or None, node) of a job's last attempt, from the line its wrapper logs."""
    m = re.findall(r"Slurm job (\d+)(?: step (\d+))? on (\S+)", (rdir / "logs" / job_id).read_text())
    assert m, (rdir / "logs" / job_id).read_text()[:500]
    job, step, node = m[-1]
    return job, step or None, node


def rows(rdir: Path) -> list[dict]:
    from imgpipe.joblog import read_rows

    return [r.__dict__ for r in read_rows(rdir / "joblog.tsv")]


# ---------------------------------------------------------------- an allocation, pinned jobs


def test_pinned_jobs_run_as_steps_on_their_nodes_and_a_rerun_asks_slurm_for_nothing(slurm, tmp_path, ms_factory):
    ms = make_ms(ms_factory, tmp_path, 6, pinned=True)
    cfg = config(tmp_path, pinned=True, worker={"slurm_nodes": "3"}, wsclean={"size": "'256 256'", "niter": "500"})
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
    assert "all 6 job(s) done" in r.err, r
    rdir = run_dir(tmp_path)
    allocations = set()
    per_node = defaultdict(list)
    for i, m in enumerate(ms):
        job = f"{i + 1:04d}"
        assert image_of(tmp_path, m).is_file() and provenance_of(tmp_path, m).is_file()
        slurm_job, step, node = slurm_of(rdir, job)
        assert node == NODES[i % 3] and step is not None, (job, node)  # a step, on the node holding its MS
        allocations.add(slurm_job)
        assert json.loads(provenance_of(tmp_path, m).read_text())["host"] == node
        # -j and -abs-mem from what Slurm granted: 2 CPUs and 4000 MB per node, 2 jobs per node
        assert "start: wsclean -j 1 -abs-mem 1.8 " in (rdir / "logs" / job).read_text()
    assert len(allocations) == 1, allocations  # one allocation for the round
    for row in rows(rdir):
        per_node[row["host"]].append((row["start"] + 0.01, row["start"] + row["runtime"] - 0.01))
    assert set(per_node) == set(NODES)
    assert all(max_overlap(spans) <= 2 for spans in per_node.values()), per_node  # max_concurrent per node
    assert not slurm.jobs() and not tmp_dirs_left(tmp_path)

    before = slurm.jobs_ended()
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
    assert "nothing to do: all 6 job(s) done" in r.err, r
    assert slurm.jobs_ended() == before and not slurm.jobs()  # no allocation asked for

    status = expect(imgpipe(slurm, tmp_path, "status"), 0).out
    line = next(ln for ln in status.splitlines() if ln.startswith("0002 "))
    assert line.split()[1:4] == ["node002", f"{slurm_of(rdir, '0002')[0]}.{slurm_of(rdir, '0002')[1]}", "done"], status


# ---------------------------------------------------------------- a job of its own per job


def test_with_slurm_nodes_0_every_job_is_a_slurm_job_placed_by_slurm(slurm, tmp_path, ms_factory):
    """Also with no $SHELL, as under cron or a CI job: srun carries the environment to the node,
    where GNU parallel's worker runs the command with $SHELL (without one it ran nothing, exit 0)."""
    ms = make_ms(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, worker={"slurm_nodes": "0"})
    no_shell = {k: v for k, v in env_for(slurm, tmp_path).items() if k != "SHELL"}
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms, env=no_shell), 0)
    assert "all 4 job(s) done" in r.err, r
    rdir = run_dir(tmp_path)
    ids = [slurm_of(rdir, f"{i:04d}") for i in range(1, 5)]
    assert len({job for job, _, _ in ids}) == 4, ids  # four Slurm jobs
    assert all(node in NODES for _, _, node in ids)
    doc = json.loads(expect(imgpipe(slurm, tmp_path, "status", "--json"), 0).out)
    assert [j["host"] for j in doc["jobs"]] == [node for _, _, node in ids]  # the node, not GNU parallel's 'slurm'
    assert all(j["slurm"] for j in doc["jobs"])
    page = Path(expect(imgpipe(slurm, tmp_path, "report"), 0).out.strip()).read_text()
    assert f"{ids[0][2]} (Slurm {doc['jobs'][0]['slurm']})" in page
    assert not slurm.jobs()


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("slurm_nodes", ["2", "0"])
def test_ctrl_c_stops_every_job_gracefully_and_leaves_nothing_in_slurm(slurm, tmp_path, ms_factory, slurm_nodes):
    ms = make_ms(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes}, wsclean={"size": "'512 512'", "niter": "20000"})
    proc = start_imgpipe(slurm, tmp_path, cfg, *ms)
    with killed_on_exit(proc):
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 4, 60,
                 "four running WSClean")
        assert slurm.steps(), "no step in Slurm"
        out, err, elapsed = ctrl_c(proc, 60)
    r = expect(Run(proc.returncode, out, err, elapsed), 130)
    assert "stopped. 0 of 4 job(s) done" in r.err and elapsed < 30, r
    assert not job_processes(tmp_path), job_processes(tmp_path)
    assert not tmp_dirs_left(tmp_path) and not list(tmp_path.rglob("*.imgpipe-claim"))
    assert not slurm.jobs() and not slurm.steps()
    rdir = run_dir(tmp_path)
    assert all("stopped (SIGTERM): WSClean stopped, temp dir removed" in (rdir / "logs" / f"000{i}").read_text()
               for i in range(1, 5))  # the wrapper's own clean-up ran: no KILL from Slurm
    told_alike(views(tmp_path), "stopped", "stopped", OUTCOMES["stopped"].words, 4)  # (status, runs, report)

    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes})  # (quicker jobs: nothing was recorded)
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
    assert all(image_of(tmp_path, m).is_file() for m in ms)


def started(rdir: Path) -> set[str]:
    """The jobs whose current attempt began on a node (its log's start line)."""
    from imgpipe.attempt import read_log

    logs = rdir / "logs"
    return {p.name for p in (logs.iterdir() if logs.is_dir() else ())
            if re.fullmatch(r"\d{4}", p.name) and read_log(p).start is not None}


def our_jobs(slurm: SlurmCluster, state: str = "") -> list[str]:
    return [j for j in slurm.jobs(completing=True) if j.split()[1].startswith("imgpipe-") and j.endswith(state)]


@pytest.mark.parametrize("how, waiting", [("SIGINT", False), ("SIGTERM", True), ("SIGKILL", False),
                                          ("SIGKILL", True)])
def test_with_slurm_nodes_0_a_stop_never_waits_out_the_stop_grace(slurm, tmp_path, ms_factory, how, waiting):
    """Issue 25.4: with slurm_nodes = 0, Ctrl-C or SIGTERM while jobs run took 20 s (STOP_GRACE) in 3
    of 5 tries, 21 s while jobs were pending, and the guard lingered 20 s after a kill -9, Slurm
    clean within 1 s: the stop's "srun --overlap" into a job that had ended (the first node's stop
    had stopped it) failed, again and again until STOP_GRACE, and GNU parallel waited for the sruns
    of pending jobs. Now Slurm is asked again at each round of the stop, and pending jobs are
    cancelled first (they never start). The bound below is a failure bound, well under STOP_GRACE."""
    from imgpipe.engines.control import STOP_GRACE
    from procs import processes_mentioning

    ms = make_ms(ms_factory, tmp_path, 9)
    # waiting: each job asks for a whole node (2 CPUs), so 3 run and 3 wait in Slurm's queue
    cfg = config(tmp_path, worker={"slurm_nodes": "0"}, wsclean=SLOW, resources={"cpus": "2"} if waiting else None)
    running = 3 if waiting else 6
    bound = STOP_GRACE * 0.75
    proc = start_imgpipe(slurm, tmp_path, cfg, *ms)
    try:
        while_running(proc, lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= running
                      and len(our_jobs(slurm, "PENDING")) == (3 if waiting else 0), 120,
                      f"{running} running WSClean" + (" and 3 jobs pending in Slurm" if waiting else ""))
        rdir = run_dir(tmp_path)
        began = started(rdir)
        proc.send_signal(getattr(signal, how))
        out, err = proc.communicate(timeout=bound)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if how == "SIGKILL":  # its guard stops the jobs, then goes
        wait_for(lambda: not processes_mentioning(str(cfg)), bound, "imgpipe's guard to stop the jobs and go")
    else:
        r = expect(Run(proc.returncode, out, err, 0), 130)
        assert "stopped. 0 of 9 job(s) done" in r.err, r
    # (Slurm may still be completing a job it was told to cancel a moment before)
    wait_for(lambda: not our_jobs(slurm), bound, "Slurm to hold no job of the run")
    assert not job_processes(tmp_path), job_processes(tmp_path)
    assert started(rdir) == began  # a job pending at the stop never started
    assert not tmp_dirs_left(tmp_path)
    # every view: the jobs that began are stopped, the others not started (tests/test_story.py)
    states = views_agree(views(tmp_path))
    assert {j for j, s in states.items() if s == "stopped"} == began, (states, began)
    assert {s for j, s in states.items() if j not in began} == {"not started"}, states


# ---------------------------------------------------------------- failures told apart


def running_on(rdir: Path, node: str) -> list[str]:
    """The jobs whose current attempt runs on ``node`` now: its log's start line names the node and
    no result ends it yet (the wrapper's structured lines, as imgpipe reads them)."""
    from imgpipe.attempt import read_log

    logs = rdir / "logs"
    found = []
    for path in sorted(logs.iterdir()) if logs.is_dir() else ():
        if re.fullmatch(r"\d{4}", path.name):
            facts = read_log(path)
            if facts.host == node and facts.result is None:
                found.append(path.name)
    return found


def read_log_host(path: Path) -> str | None:
    from imgpipe.attempt import read_log

    return read_log(path).host


def while_running(proc, predicate, timeout: float, what: str):
    """wait_for, failing with imgpipe's output at once if it ends first."""
    def seen():
        value = predicate()
        if not value and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"imgpipe ended (exit {proc.returncode}) before {what}:\n{out}{err}", pytrace=False)
        return value

    return wait_for(seen, timeout, what)


@pytest.mark.parametrize("slurm_nodes", ["3", "0"])
def test_a_node_that_fails_during_the_run_loses_no_job(slurm, tmp_path, ms_factory, slurm_nodes):
    """Issue 25.1: node002 is set down while jobs run on it and others still wait. Slurm ends the
    allocation (slurm_nodes > 0: every step of it, and the steps GNU parallel starts after into it
    fail at once) or the jobs on node002 (0). Every job Slurm did not run through runs again in a
    new round: every image is made, exit 0, and the live output names the node that failed."""
    ms = make_ms(ms_factory, tmp_path, 9)
    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes}, wsclean=SLOW)
    proc = start_imgpipe(slurm, tmp_path, cfg, *ms)
    with killed_on_exit(proc):
        rdir = while_running(proc, lambda: list(tmp_path.glob("imgpipe-runs/*/logs")), 60, "the run directory")
        rdir = rdir[0].parent
        while_running(proc, lambda: running_on(rdir, "node002"), 120, "a job running on node002")
        slurm.set_state("node002", "down", "test: node002 lost")
        out, err = proc.communicate(timeout=600)
    r = expect(Run(proc.returncode, out, err, 0), 0)
    assert "all 9 job(s) done" in r.err, r
    assert all(image_of(tmp_path, m).is_file() for m in ms)
    assert re.search(r"Slurm node node002 failed", r.err), r
    assert not slurm.jobs()

    # issue 25.5: what the user is told of the failed attempts: their own node, never GNU parallel's
    # placeholder 'slurm' (slurm_nodes = 0), in their logs and on the report's timeline
    said = "".join(p.read_text() for p in (rdir / "logs").glob("*.err"))
    assert "the Slurm node node002 failed" in said and "node slurm" not in said, said
    page = Path(expect(imgpipe(slurm, tmp_path, "report"), 0).out.strip()).read_text()
    failed = re.findall(r'<g class="bar failed" data-job="(\d+)"><title>job \1 .*?\nhost ([^,]+),', page)
    assert failed, page
    if slurm_nodes == "0":  # the node its own log names (it was another attempt's, done elsewhere), or none
        # when node002 failed before the wrapper said where it began (in an allocation, the rows name
        # the nodes GNU parallel ran the steps on)
        assert "node002" in {host for _, host in failed} <= {"node002", "(node not known)"}, failed
        for job, host in failed:
            hosts = {read_log_host(p) for p in (rdir / "logs").glob(f"{job}.[0-9]")}
            assert host in hosts or (host == "(node not known)" and None in hosts), (job, host, hosts)


def test_a_node_going_down_fails_its_jobs_as_node_failures_and_a_rerun_completes_them(slurm, tmp_path, ms_factory):
    ms = make_ms(ms_factory, tmp_path, 4, pinned=True)[:2]  # node001, node002
    cfg = config(tmp_path, pinned=True, worker={"connection_retries": "0"}, wsclean=SLOW)

    def down_node002():
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 2, 60,
                 "both jobs running")
        slurm.set_state("node002", "down", "test: node002 lost")

    proc = start_imgpipe(slurm, tmp_path, cfg, *ms)
    with killed_on_exit(proc):
        down_node002()
        out, err = proc.communicate(timeout=120)
    r = expect(Run(proc.returncode, out, err, 0), 1)
    table = {ln.split()[0]: ln for ln in r.err.splitlines() if ln.strip()[:4] in ("0001", "0002")}
    assert "the Slurm node failed" in table["0002"], r  # srun exited 0 here: never taken for done
    assert "Node failure on node002" in (run_dir(tmp_path) / "logs" / "0002.err").read_text()
    assert not provenance_of(tmp_path, ms[1]).exists()
    assert not slurm.jobs()
    # a lost node, told alike by status (table, JSON, exit), runs and the report (tests/test_story.py)
    # (node001's job was in the same allocation, which Slurm ended: 'slurm')
    v = views(tmp_path)
    assert v["exit"] == 1 and v["runs"]["failed"] == 2 and v["report"] == {"0001": "failed", "0002": "failed"}, v
    for job, failure in (("0001", "slurm"), ("0002", "node")):
        words = OUTCOMES[failure].words
        assert v["json"][job][:2] == ("failed", failure) and words in v["json"][job][2], v["json"]
        (line,) = [ln for ln in v["table"].splitlines() if ln.startswith(job)]
        assert " failed " in line and words in line and words in table[job], (v["table"], r)
        assert words in v["page"]

    slurm.set_state("node002", "resume")
    wait_for(lambda: slurm.states()["node002"].startswith("idle"), 30, "node002 back")
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
    assert all(provenance_of(tmp_path, m).is_file() for m in ms)


def test_a_job_past_its_memory_and_a_job_past_max_time_say_so(slurm, tmp_path, ms_factory):
    (ms,) = make_ms(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, worker={"slurm_nodes": "0"}, resources={"mem": "'60M'"},
                 wsclean={"size": "'2048 2048'"})
    r = expect(imgpipe(slurm, tmp_path, cfg, ms), 1)
    row = next(ln for ln in r.err.splitlines() if ln.strip().startswith("0001"))
    assert "out of memory: Slurm stopped it past the memory it asked for" in row, r
    doc = json.loads(expect(imgpipe(slurm, tmp_path, "status", "--json"), 1).out)  # 1: a job failed
    assert doc["jobs"][0]["failure"] == "memory"

    other = tmp_path / "timed"
    other.mkdir()
    cfg = config(other, worker={"slurm_nodes": "0", "max_time": "2"}, wsclean={"size": "'1024 1024'",
                                                                                "niter": "1000000"})
    r = expect(imgpipe(slurm, other, cfg, ms), 1)
    row = next(ln for ln in r.err.splitlines() if ln.strip().startswith("0001"))
    assert "max_time reached" in row, r
    assert not job_processes(other) and not tmp_dirs_left(other) and not slurm.jobs()
    told_alike(views(other), "failed", "timeout", OUTCOMES["timeout"].words, 1)  # (status, runs, report)


def test_slurms_time_limit_says_so(slurm, tmp_path, ms_factory):
    """Slurm's own time limit (whole minutes, checked every 30 s: this test takes ~1.5 min)."""
    (ms,) = make_ms(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, worker={"slurm_nodes": "0", "slurm_options": "'--time=1'"},
                 wsclean={"size": "'1024 1024'", "niter": "100000000", "auto-threshold": "0.0001"})
    r = expect(imgpipe(slurm, tmp_path, cfg, ms, timeout=240), 1)
    row = next(ln for ln in r.err.splitlines() if ln.strip().startswith("0001"))
    assert "Slurm's time limit was reached" in row, r


def test_a_request_slurm_refuses_is_a_clear_error_before_anything_runs(slurm, tmp_path, ms_factory):
    (ms,) = make_ms(ms_factory, tmp_path, 1)
    before = slurm.jobs_ended()
    for options, said in (("'--partition=nope'", "no partition 'nope'"),
                          ("'--bogus'", "unrecognized option '--bogus'"),
                          ("'--time=soon'", "Invalid --time specification")):
        cfg = config(tmp_path, worker={"slurm_options": options})
        r = expect(imgpipe(slurm, tmp_path, cfg, ms), 2)
        assert said in r.err and f"{cfg}: [worker] slurm_options" in r.err, r
        assert "Traceback" not in r.err
    assert slurm.jobs_ended() == before and not slurm.jobs()
    assert not (tmp_path / "images").exists()


def test_a_drained_node_is_left_out_with_slurms_reason_and_the_allocation_asks_for_what_can_be_had(
        slurm, tmp_path, ms_factory):
    """Issue 25.2: node003 drained at the start. slurm_nodes = 3, unpinned: an allocation of the 2
    usable nodes (sbatch --test-only counted the drained one: 'Requested node configuration is not
    available', blamed on slurm_options); pinned to the 3 nodes with slurm_nodes = 2: node003's jobs
    are not run, said with sinfo's reason, the others are, and once node003 is back a rerun makes them."""
    slurm.set_state("node003", "drain", "test: disk replaced")
    ms = make_ms(ms_factory, tmp_path, 4)
    r = expect(imgpipe(slurm, tmp_path, config(tmp_path, worker={"slurm_nodes": "3"}), *ms), 0)
    assert "node node003 is left out (Slurm says it is drained: test: disk replaced)" in r.err, r
    assert "asking Slurm for an allocation of 2 node(s) (slurm_nodes = 3): 2 node(s) usable" in r.err, r
    assert all(image_of(tmp_path, m).is_file() for m in ms)
    assert {slurm_of(run_dir(tmp_path), f"{i:04d}")[2] for i in range(1, 5)} <= {"node001", "node002"}

    pinned = tmp_path / "pinned"
    pinned.mkdir()
    ms = make_ms(ms_factory, pinned, 6, pinned=True)  # node001, node002, node003 in turn
    cfg = config(pinned, pinned=True, worker={"slurm_nodes": "2"})
    r = expect(imgpipe(slurm, pinned, cfg, *ms), 1)
    assert "node node003 is left out (Slurm says it is drained: test: disk replaced)" in r.err, r
    assert "2 jobs not run: not run: node node003 unreachable (Slurm says it is drained: test: disk replaced)" \
        in r.err, r
    assert [image_of(pinned, m).is_file() for m in ms] == [True, True, False] * 2
    assert "slurm_options" not in r.err

    slurm.set_state("node003", "resume")
    wait_for(lambda: slurm.states()["node003"] == "idle", 30, "node003 back")
    r = expect(imgpipe(slurm, pinned, cfg, *ms), 0)
    assert all(image_of(pinned, m).is_file() for m in ms)
    assert not slurm.jobs()


def test_slurm_nodes_beyond_what_slurm_gives_asks_for_what_can_be_had_and_says_so(slurm, tmp_path, ms_factory):
    """Issue 25.2: slurm_nodes = 5 on a 3-node cluster runs on the 3; in a partition whose MaxNodes
    is 2 (tests/slurmcluster.py: 'small'), slurm_nodes = 3 runs on 2 and says why, naming
    slurm_nodes; jobs pinned to 3 nodes there cannot be run in one allocation: an error that names
    slurm_nodes, not slurm_options, before anything is asked of Slurm."""
    ms = make_ms(ms_factory, tmp_path, 6)  # (6 jobs, 2 a node: 3 nodes' worth)
    r = expect(imgpipe(slurm, tmp_path, config(tmp_path, worker={"slurm_nodes": "5"}), *ms), 0)
    assert "asking Slurm for an allocation of 3 node(s) (slurm_nodes = 5): 3 node(s) usable" in r.err, r

    small = tmp_path / "small"
    small.mkdir()
    cfg = config(small, worker={"slurm_nodes": "3", "slurm_options": "'--partition=small'"})
    r = expect(imgpipe(slurm, small, cfg, *ms), 0)
    assert re.search(r"asking Slurm for an allocation of 2 node\(s\) \(slurm_nodes = 3\): Slurm gives an "
                     r"allocation no more than 2 here \(asked for 3: .*not available\)", r.err), r
    assert all(image_of(small, m).is_file() for m in ms)

    pinned = tmp_path / "pinned"
    pinned.mkdir()
    ms = make_ms(ms_factory, pinned, 3, pinned=True)
    cfg = config(pinned, pinned=True, worker={"slurm_nodes": "3", "slurm_options": "'--partition=small'"})
    before = slurm.jobs_ended()
    r = expect(imgpipe(slurm, pinned, cfg, *ms), 2)
    assert f"{cfg}: [worker] slurm_nodes = 3" in r.err and "pinned jobs run on 3 nodes (node[001-003])" in r.err, r
    assert "no more than 2" in r.err and "Traceback" not in r.err, r
    assert slurm.jobs_ended() == before and not slurm.jobs()


def allocations_since(slurm: SlurmCluster, before: int) -> list[dict[str, str]]:
    """The allocations (imgpipe's Slurm jobs) that ended since ``before`` (slurm.jobs_ended()), as Slurm's own
    job completion log records them (NodeList, NodeCnt...), once it has recorded one."""
    def records():
        lines = (slurm.dir / "jobcomp.txt").read_text().splitlines()[before:]
        found = [dict(w.split("=", 1) for w in line.split() if "=" in w) for line in lines]
        return [r for r in found if r.get("Name", "").startswith("imgpipe-")]

    return wait_for(records, 30, "Slurm's record of the allocation")


def test_a_resume_asks_for_no_more_nodes_than_the_jobs_left_can_use(slurm, tmp_path, ms_factory):
    """Issue 25.3: slurm_nodes = 3, max_concurrent = 2. After a whole run, images of some jobs are
    removed: a resume of 1 job asks Slurm for 1 node, of 3 jobs for 2; pinned jobs left on node002
    alone, for node002 only (it took node[001-003] for one job, and another user's job waited)."""
    ms = make_ms(ms_factory, tmp_path, 6)
    cfg = config(tmp_path, worker={"slurm_nodes": "3"})
    before = slurm.jobs_ended()
    expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
    assert [a["NodeCnt"] for a in allocations_since(slurm, before)] == ["3"]
    for left, nodes in ((ms[:1], "1"), (ms[:3], "2")):
        for m in left:
            shutil.rmtree(image_of(tmp_path, m).parent)
        before = slurm.jobs_ended()
        r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
        assert [a["NodeCnt"] for a in allocations_since(slurm, before)] == [nodes], r
        assert (f"asking Slurm for an allocation of {nodes} node(s) (slurm_nodes = 3): the {len(left)} job(s) left "
                "need no more, 2 a node") in r.err, r
        assert all(image_of(tmp_path, m).is_file() for m in ms)

    pinned = tmp_path / "pinned"
    pinned.mkdir()
    ms = make_ms(ms_factory, pinned, 6, pinned=True)  # node001, node002, node003 in turn
    cfg = config(pinned, pinned=True, worker={"slurm_nodes": "3"})
    expect(imgpipe(slurm, pinned, cfg, *ms), 0)
    for m in (ms[1], ms[4]):  # node002's
        shutil.rmtree(image_of(pinned, m).parent)
    before = slurm.jobs_ended()
    r = expect(imgpipe(slurm, pinned, cfg, *ms), 0)
    assert [(a["NodeCnt"], a["NodeList"]) for a in allocations_since(slurm, before)] == [("1", "node002")], r
    assert "the 2 job(s) left are pinned to node002" in r.err, r
    assert all(image_of(pinned, m).is_file() for m in ms)


def test_jobs_pending_in_slurms_queue_are_said_pending_and_their_wait_is_not_their_runtime(
        slurm, tmp_path, ms_factory):
    """Issue 25.5, slurm_nodes = 0: another user's job holds every node, so imgpipe's two jobs wait in
    Slurm's queue. The progress line says them pending (it said '2 running'), status too; once they
    ran, status gives how long they ran and, apart, how long they waited (the runtime included it:
    1:13 for an 8 s job that waited 65 s)."""
    release = tmp_path / "release"
    blocker = slurm.run("sbatch", "-N3", "--exclusive", "--job-name=someone-else", "--output=/dev/null",
                        f"--wrap=while [ ! -e {release} ]; do sleep 0.1; done").stdout
    assert "Submitted batch job" in blocker
    wait_for(lambda: any(j.endswith("someone-else RUNNING") for j in slurm.jobs()), 30, "the other user's job")
    ms = make_ms(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, worker={"slurm_nodes": "0"})
    proc = start_imgpipe(slurm, tmp_path, cfg, *ms)
    try:
        def pending_for(seconds: float) -> bool:  # (Slurm's own submit times of our jobs)
            r = slurm.run("squeue", "-h", "-t", "PD", "-o", "%j %V", check=False)
            submitted = [time.mktime(time.strptime(ln.split()[1], "%Y-%m-%dT%H:%M:%S"))
                         for ln in r.stdout.splitlines() if ln.startswith("imgpipe-")]
            return len(submitted) == 2 and time.time() - max(submitted) >= seconds

        while_running(proc, lambda: pending_for(3), 60, "both jobs pending in Slurm for 3 s")
        doc = json.loads(expect(imgpipe(slurm, tmp_path, "status", "--json"), 3).out)  # (3: jobs running)
        assert [(j["state"], j["why"]) for j in doc["jobs"]] == \
            [("running", "pending in Slurm's queue: not begun on a node yet")] * 2, doc["jobs"]
        release.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    r = expect(Run(proc.returncode, out, err, 0), 0)
    assert "0/2 done, 0 failed, 0 running, 2 pending, 0 waiting" in r.err, r
    assert not re.search(r"0/2 done, 0 failed, [12] running", r.err.split("0 running, 2 pending")[0]), r

    from imgpipe.joblog import read_rows

    row_time = {row.job_id: row.runtime for row in read_rows(run_dir(tmp_path) / "joblog.tsv")}
    doc = json.loads(expect(imgpipe(slurm, tmp_path, "status", "--json"), 0).out)
    for j in doc["jobs"]:
        assert j["state"] == "done" and j["pending"] >= 2, j
        assert abs(j["runtime"] + j["pending"] - row_time[j["id"]]) < 0.01 and j["runtime"] < row_time[j["id"]], j
    table = expect(imgpipe(slurm, tmp_path, "status"), 0).out
    assert len(re.findall(r"pending 0:00:\d\d in Slurm's queue before it ran", table)) == 2, table


def test_a_pending_allocation_is_said_with_slurms_reason(slurm, tmp_path, ms_factory):
    ms = make_ms(ms_factory, tmp_path, 2)
    blocker = slurm.run("sbatch", "-N3", "--exclusive", "--job-name=someone-else", "--output=/dev/null",
                        "--wrap=sleep 6").stdout
    assert "Submitted batch job" in blocker
    cfg = config(tmp_path)
    r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 0)
    assert re.search(r"Slurm allocation \d+ pending \((Resources|Priority)\)", r.err), r
    assert "all 2 job(s) done" in r.err


def test_a_second_run_of_the_plan_refuses_before_it_asks_slurm_anything(slurm, tmp_path, ms_factory):
    ms = make_ms(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, wsclean=SLOW)
    first = start_imgpipe(slurm, tmp_path, cfg, *ms)
    try:
        wait_for(lambda: slurm.jobs(), 30, "the first run's allocation")
        ours = slurm.jobs()
        r = expect(imgpipe(slurm, tmp_path, cfg, *ms), 2)
        assert f"already being run by imgpipe pid {first.pid}" in r.err, r
        assert slurm.jobs() == ours  # nothing asked of Slurm
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err


def test_engine_slurm_with_named_nodes_keeps_to_them(slurm, tmp_path, ms_factory):
    """`--engine slurm` on a config that names its nodes: Slurm runs the jobs, on those nodes only."""
    ms = make_ms(ms_factory, tmp_path, 4)
    for slurm_nodes in ("0", "1"):
        cfg = config(tmp_path, worker={"nodes": "'node001,node003'", "slurm_nodes": slurm_nodes},
                     name=f"named-{slurm_nodes}.toml", wsclean={"name": f"'img{slurm_nodes}'"})
        r = expect(imgpipe(slurm, tmp_path, "image", "--engine", "slurm", cfg, *ms), 0)
        rdir = Path(r.err.split("run directory ", 1)[1].split()[0])
        nodes = {slurm_of(rdir, f"{i:04d}")[2] for i in range(1, 5)}
        assert nodes <= {"node001", "node003"}, (slurm_nodes, nodes)
    r = expect(imgpipe(slurm, tmp_path, "image", "--engine", "make", config(tmp_path), *ms), 2)
    assert "nodes = 'slurm' runs the jobs through Slurm; --engine make needs the nodes by name" in r.err, r


# ---------------------------------------------------------------- the halt rule

@pytest.mark.parametrize("slurm_nodes", ["1", "0"])
def test_no_job_starts_through_slurm_after_the_halt_decision(slurm, tmp_path, ms_factory, slurm_nodes):
    """One slot, --halt-after 1, jobs that fail at once: GNU parallel asks the round's gate
    (bin/imgpipe-gate) before each srun, so exactly one job ran, in an allocation or not."""
    ms = make_ms(ms_factory, tmp_path, 5)
    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes, "max_concurrent": "1", "nodes": "'node001'"},
                 wsclean={"fits-mask": "'/no/such/mask.fits'"})
    r = expect(imgpipe(slurm, tmp_path, "image", "--engine", "slurm", "--halt-after", "1", cfg, *ms), 1)
    assert "halting: no new job is started: 1 jobs failed (halt_after = 1)" in r.err, r
    assert len(rows(run_dir(tmp_path))) == 1, rows(run_dir(tmp_path))
    assert "4 jobs not run: not started: the run was halted" in r.err, r
    assert not slurm.jobs()


# ---------------------------------------------------------------- a stop never depends on printing

@pytest.mark.parametrize("slurm_nodes", ["2", "0"])
def test_a_terminal_that_hangs_up_stops_every_slurm_job(slurm, tmp_path, ms_factory, slurm_nodes):
    """imgpipe on a real pseudo-terminal that hangs up: every job is stopped and nothing is left in
    Slurm, although nothing can be written any more (EIO)."""
    import sys

    from test_loop import _two_running, run_on_a_terminal_that_hangs_up

    ms = make_ms(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, worker={"slurm_nodes": slurm_nodes, "max_concurrent": "1"}, wsclean=SLOW)
    code, seen = run_on_a_terminal_that_hangs_up([sys.executable, "-m", "imgpipe.cli", str(cfg), *map(str, ms)],
                                                 tmp_path, env_for(slurm, tmp_path), lambda: _two_running(tmp_path),
                                                 timeout=90)
    assert code == 130, (code, seen[-2000:])
    assert not job_processes(tmp_path), job_processes(tmp_path)
    wait_for(lambda: not slurm.jobs(), 30, "Slurm to hold no job of the run")


def test_ctrl_c_through_a_pipe_whose_reader_died_stops_every_slurm_job(slurm, tmp_path, ms_factory):
    """`imgpipe ... | tee night.log` and Ctrl-C: tee is gone, every write fails (EPIPE); every job
    is stopped all the same, nothing is left in Slurm, and the exit status is 130, not 0."""
    import os
    import subprocess
    import sys

    from test_loop import _two_running

    ms = make_ms(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, worker={"slurm_nodes": "2", "max_concurrent": "1"}, wsclean=SLOW)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", str(cfg), *map(str, ms)], cwd=tmp_path,
                            env=env_for(slurm, tmp_path), stdin=subprocess.DEVNULL, stdout=write_end,
                            stderr=write_end)
    os.close(write_end)
    with killed_on_exit(proc):
        wait_for(lambda: _two_running(tmp_path), 90, "two running WSCleans")
        os.close(read_end)
        ctrl_c(proc, 90)
        code = proc.returncode
    assert code == 130, code
    assert not job_processes(tmp_path), job_processes(tmp_path)
    wait_for(lambda: not slurm.jobs(), 30, "Slurm to hold no job of the run")


def test_a_time_limit_set_in_slurm_options_is_scaled_for_a_retry_in_whole_minutes():
    from imgpipe.engines.slurm import scaled_time, slurm_minutes

    forms = {"90": 90, "1:30": 1.5, "2:00:00": 120, "1-0": 1440, "1-2:30": 1590, "1-2:30:30": 1590.5}
    assert {v: slurm_minutes(v) for v in forms} == forms
    assert [slurm_minutes(v) for v in ("UNLIMITED", "INFINITE", "soon", "", "1-", "-5", "1:2:3:4")] == [None] * 7
    assert scaled_time(["-p", "debug", "--time=1"], 16) == ["-p", "debug", "--time=16"]
    assert scaled_time(["-t", "1:30"], 2) == ["-t", "3"] and scaled_time(["-t45"], 1.5) == ["-t68"]
    assert scaled_time(["--time", "2-0"], 1.5) == ["--time", "4320"]
    # what is not a time limit, or has none, is left as it is
    assert scaled_time(["--time=UNLIMITED", "--time-min=5", "--tmp=10"], 2) == ["--time=UNLIMITED", "--time-min=5",
                                                                               "--tmp=10"]


def test_a_job_past_its_memory_is_told_alike_by_every_view(slurm, tmp_path, ms_factory):
    """retries = 0: Slurm stopped the job past its 60 MB, and the summary, status, runs and report
    all say so, in the same words (tests/test_story.py: the other ways a night goes wrong)."""
    (ms,) = make_ms(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, worker={"slurm_nodes": "0", "retries": "0"}, resources={"mem": "'60M'"},
                 wsclean={"size": "'1024 1024'"})
    r = expect(imgpipe(slurm, tmp_path, cfg, ms), 1)
    summary_says(r.err, OUTCOMES["memory"].words, 1)
    told_alike(views(tmp_path), "failed", "memory", OUTCOMES["memory"].words, 1)


def test_a_job_past_its_memory_runs_again_with_more_and_its_record_says_what_it_got(slurm, tmp_path, ms_factory):
    """retries = 1, retry_factor = 16: a job Slurm stopped past its 60 MB runs again asking for 960 MB
    (retry_memory_max: the node's 4000 MB is above), and is done; its record says what WSClean got.
    The time limit set in slurm_options (1 minute) is asked 16 times too, as Slurm's own record says."""
    (ms,) = make_ms(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, worker={"slurm_nodes": "0", "retries": "1", "retry_factor": "16",
                                   "slurm_options": "'--time=1'"},
                 resources={"mem": "'60M'"}, wsclean={"size": "'1024 1024'"})
    before = slurm.jobs_ended()
    r = expect(imgpipe(slurm, tmp_path, cfg, ms), 0)
    records = wait_for(lambda: (lambda found: found if len(found) >= 2 else None)(allocations_since(slurm, before)),
                       30, "Slurm's records of both jobs")
    asked = [(a["TimeLimit"], a["Tres"].split("mem=")[1].split(",")[0]) for a in records]
    assert asked == [("1", "60M"), ("16", "960M")], asked  # (minutes)
    assert "1 job(s) stopped past their memory or time run again with 16 times the memory and time" in r.err, r
    record = json.loads(provenance_of(tmp_path, ms).read_text())
    assert record["abs_mem_gb"] == 0.8, record  # 0.9 x 960 MB, in GB, rounded down to a tenth
    assert [x["exitval"] for x in rows(run_dir(tmp_path))] == [17, 0]  # out of memory, then done
    from imgpipe.attempt import read_result

    assert read_result(run_dir(tmp_path) / "logs" / "0001").attempt == 2  # (its result says which attempt)
