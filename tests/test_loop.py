"""The images are the truth (imgpipe/engines/loop.py, image_sets.py, run_dir.py), as a user meets it.

Each test is one situation in which imgpipe used to answer wrongly with exit 0, run
with real WSClean on real MSs over real sshd "nodes" and real GNU parallel and make.
The evidence is what a user would look at: the images on disk, their records, the
exit code and the message; and, for the races, the process table, sampled every
50 ms for two WSClean processes writing the same image set (never allowed).

Two tests put a stand-in ``wsclean`` first on PATH through ``env_file`` (it says so):
one that fills the disk after the real WSClean wrote its images (a disk cannot be made
to fill on cue otherwise), none elsewhere.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from procs import WscleanSampler, ctrl_c, job_processes, killed_on_exit
from sshcluster import SshCluster
from test_engine_parallel import (
    NODES, Run, config, expect, image_of, imgpipe, make_ms_set, provenance_of, run_dir, start_imgpipe,
    tmp_dirs_left, toml_str, wait_for,
)

ENGINES = ("parallel", "make")
SLOW = {"size": "'512 512'", "niter": "3000"}  # a few seconds per job: long enough to be caught running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SshCluster(tmp_path_factory.mktemp("loop-cluster"), names=NODES) as c:
        yield c


def mtimes(tmp_path: Path, ms) -> dict:
    return {m.name: image_of(tmp_path, m).stat().st_mtime_ns for m in ms}


def rows(rdir: Path) -> dict[str, int]:
    from imgpipe.joblog import read_rows

    out: dict[str, int] = {}
    for r in read_rows(rdir / "joblog.tsv"):
        out[r.job_id] = out.get(r.job_id, 0) + 1
    return out


# ---------------------------------------------------------------- 1. deleted images are made again


@pytest.mark.parametrize("engine", ENGINES)
def test_deleted_images_are_made_again(cluster, tmp_path, ms_factory, engine):
    ms = make_ms_set(ms_factory, tmp_path, 3)
    cfg = config(tmp_path, cluster)
    expect(imgpipe(cluster, tmp_path, "image", "--engine", engine, cfg, *ms), 0)
    before = mtimes(tmp_path, ms)
    shutil.rmtree(tmp_path / "images" / ms[1].name)  # one MS's image directory, gone
    status = json.loads(expect(imgpipe(cluster, tmp_path, "status", "--json"), 3).out)  # 3: not all done
    assert [(j["state"], j["images"]) for j in status["jobs"]] == [
        ("done", "done"), ("not started", "absent"), ("done", "done")], status
    assert status["jobs"][1]["why"] == "ran before, but its images are gone"

    r = expect(imgpipe(cluster, tmp_path, "image", "--engine", engine, cfg, *ms), 0)
    assert "all 3 job(s) done" in r.err, r
    assert image_of(tmp_path, ms[1]).is_file() and provenance_of(tmp_path, ms[1]).is_file()
    after = mtimes(tmp_path, ms)
    assert after[ms[0].name] == before[ms[0].name] and after[ms[2].name] == before[ms[2].name]  # not remade
    assert rows(run_dir(tmp_path)) == {"0001": 1, "0002": 2, "0003": 1}

    # one image file of a set deleted: a partial set is not done either
    os.unlink(tmp_path / "images" / ms[2].name / "img-psf.fits")
    r = expect(imgpipe(cluster, tmp_path, "image", "--engine", engine, cfg, *ms), 0)
    assert (tmp_path / "images" / ms[2].name / "img-psf.fits").is_file()
    assert rows(run_dir(tmp_path)) == {"0001": 1, "0002": 2, "0003": 2}


# ---------------------------------------------------------------- 2. a reused run directory


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reused_jobs_file_images_the_new_plan(cluster, tmp_path, ms_factory, engine):
    a, b = make_ms_set(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, cluster)
    jobs = tmp_path / "r" / "jobs.txt"
    expect(imgpipe(cluster, tmp_path, "plan", cfg, a, "--jobs-file", jobs), 0)
    expect(imgpipe(cluster, tmp_path, "run", "--engine", engine, jobs), 0)
    assert image_of(tmp_path, a).is_file()

    expect(imgpipe(cluster, tmp_path, "plan", cfg, b, "--jobs-file", jobs), 0)  # job 0001 again, another MS
    r = expect(imgpipe(cluster, tmp_path, "run", "--engine", engine, jobs), 0)
    assert "all 1 job(s) done" in r.err, r
    assert image_of(tmp_path, b).is_file() and provenance_of(tmp_path, b).is_file(), r
    earlier = list((jobs.parent / "earlier").iterdir())
    assert len(earlier) == 1 and (earlier[0] / "joblog.tsv").is_file(), earlier  # the old plan's history, kept
    assert "held the files of another plan" in r.err, r
    status = json.loads(expect(imgpipe(cluster, tmp_path, "status", "--json", jobs), 0).out)
    assert [(j["ms"], j["state"]) for j in status["jobs"]] == [([str(b)], "done")]


# ---------------------------------------------------------------- 3. one plan over another's images


def test_combine_over_per_ms_images_is_refused_then_replaced_with_force(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster)
    expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)  # one by one
    per_ms = provenance_of(tmp_path, ms[-1]).read_text()
    runs_before = sorted(p.name for p in (tmp_path / "imgpipe-runs").iterdir())

    # --combine names its images after the last MS: the same images as that MS's own job
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--combine"), 2)
    last = tmp_path / "images" / ms[-1].name
    assert "were made by another command" in r.err and f"{last}/img-*" in r.err, r
    assert f"record {last}/img.imgpipe.json" in r.err and json.loads(per_ms)["command"] not in r.err, r
    assert f"what differs: the MSs: 1 -> 4 ({ms[0].name} .. {ms[-1].name})" in r.err, r  # not the whole command
    assert "--force" in r.err, r
    assert sorted(p.name for p in (tmp_path / "imgpipe-runs").iterdir()) == runs_before  # nothing written
    assert provenance_of(tmp_path, ms[-1]).read_text() == per_ms
    r = expect(imgpipe(cluster, tmp_path, "plan", cfg, *ms, "--combine"), 2)  # the plan alone says so too
    assert "were made by another command" in r.err, r

    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--combine", "--force"), 0)
    combined = json.loads(provenance_of(tmp_path, ms[-1]).read_text())
    assert all(str(m) in combined["command"] for m in ms)  # the combined image, from all four MSs

    # and the per-MS plan no longer takes the combined images for its own
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 2)
    assert "job 0004: its images" in r.err and "were made by another command" in r.err, r


# ---------------------------------------------------------------- 4. a killed imgpipe


def kill_and_restart(cluster, tmp_path: Path, args: list, *, also_guard: bool) -> tuple[Run, WscleanSampler]:
    """Start imgpipe, SIGKILL it (and its guard) once two WSClean run, start the same command at once."""
    import sys

    from test_engine_parallel import env_for

    with WscleanSampler(str(tmp_path)) as sampler, open(tmp_path / "first.out", "w") as out:
        # (output to a file: the first run's guard holds it while it stops the jobs)
        first = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=tmp_path,
                                 env=env_for(cluster, tmp_path), stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 2, 60,
                 "two running WSClean")
        victims = [first.pid]
        if also_guard:
            children = open(f"/proc/{first.pid}/task/{first.pid}/children").read().split()
            victims += [int(p) for p in children if b"imgpipe.cli" in open(f"/proc/{p}/cmdline", "rb").read()]
            assert len(victims) == 2, victims  # imgpipe and its guard (a fork of it)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        first.wait()
        second = imgpipe(cluster, tmp_path, *args, timeout=240)
    return second, sampler


@pytest.mark.parametrize("engine", ENGINES)
def test_a_killed_imgpipe_takes_its_engine_with_it_and_the_same_command_finishes(cluster, tmp_path, ms_factory,
                                                                                  engine):
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=SLOW)
    r, sampler = kill_and_restart(cluster, tmp_path, ["image", "--engine", engine, cfg, *ms], also_guard=False)
    expect(r, 0)
    assert "all 4 job(s) done" in r.err, r
    assert sampler.samples > 20 and not sampler.doubles, sampler.most
    assert all(image_of(tmp_path, m).is_file() for m in ms)
    assert not job_processes(tmp_path) and not tmp_dirs_left(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_rows_of_jobs_that_finished_before_a_kill_9_are_kept(cluster, tmp_path, ms_factory, engine):
    """imgpipe KILLed once two jobs have finished and two run: the next run keeps the finished
    jobs' rows (status names their host and start), and the stopped ones are 'stopped'."""
    import sys

    from test_engine_parallel import env_for

    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=SLOW)
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "image", "--engine", engine, str(cfg),
                                  *map(str, ms)], cwd=tmp_path, env=env_for(cluster, tmp_path), stdout=out,
                                 stderr=out, stdin=subprocess.DEVNULL)
        rdir = wait_for(lambda: (tmp_path / "imgpipe-runs").is_dir() and run_dir(tmp_path), 30, "the run directory")
        wait_for(lambda: len((rdir / "joblog.round.tsv").read_text().splitlines()) >= 3
                 if (rdir / "joblog.round.tsv").exists() else False, 120, "two finished jobs")
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 2, 60,
                 "two running WSClean")
        finished = {r.split("\t")[0] for r in (rdir / "joblog.round.tsv").read_text().splitlines()[1:]}
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    r = expect(imgpipe(cluster, tmp_path, "image", "--engine", engine, cfg, *ms, timeout=240), 0)
    assert "all 4 job(s) done" in r.err, r
    rows_of = rows(rdir)
    assert len(finished) == 2 and all(rows_of.get(f"{int(seq):04d}", 0) >= 1 for seq in finished), (finished, rows_of)
    status = json.loads(imgpipe(cluster, tmp_path, "status", "--json").out)
    assert all(j["host"] not in (None, "-") and j["start"] for j in status["jobs"]), status["jobs"]


def test_an_engine_left_running_is_found_and_stopped_by_the_next_run(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=SLOW)
    r, sampler = kill_and_restart(cluster, tmp_path, [cfg, *ms], also_guard=True)
    expect(r, 0)
    assert "engine of an earlier run (pid" in r.err and "is still running: stopping it" in r.err, r
    assert "all 4 job(s) done" in r.err, r
    assert sampler.samples > 20 and not sampler.doubles, sampler.most
    assert all(image_of(tmp_path, m).is_file() for m in ms)
    assert not job_processes(tmp_path) and not tmp_dirs_left(tmp_path)


# ---------------------------------------------------------------- 5. two working directories


def test_the_same_images_from_two_directories_are_made_once(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, wsclean=SLOW)
    here, there = tmp_path / "alice", tmp_path / "bob"
    here.mkdir()
    there.mkdir()
    with WscleanSampler(str(tmp_path)) as sampler:
        one = start_imgpipe(cluster, here, cfg, *ms)
        two = start_imgpipe(cluster, there, cfg, *ms)
        results = [Run(p.wait(timeout=240), *p.communicate(), 0) for p in (one, two)]
    for r in results:
        expect(r, 0)
        assert "all 4 job(s) done" in r.err, r
    assert sampler.samples > 20 and not sampler.doubles, sampler.most
    logs = [p.read_text() for d in (here, there) for p in (run_dir(d) / "logs").glob("000?")]
    assert sum("record " in text for text in logs) == 4, logs  # each image set made once, by one of the two
    for text in logs:
        if "record " not in text:  # the other run's job: it waited for the holder, or found the set done
            assert "already done" in text, text
            assert "waiting up to" not in text or "held by job 000" in text, text
    runs = {f"{d}/{run_dir(d).relative_to(d)}" for d in (here, there)}
    assert {json.loads(provenance_of(tmp_path, m).read_text())["run"].split(":", 1)[1] for m in ms} <= runs


# ---------------------------------------------------------------- 6. a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (root only): a disk that fills."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_record_that_cannot_be_written_fails_the_job(cluster, tmp_path, ms_factory, small_disk):
    (ms,) = make_ms_set(ms_factory, tmp_path, 1)
    bindir = tmp_path / "stand-in"
    bindir.mkdir()
    (bindir / "wsclean").write_text(
        "#!/usr/bin/env bash\n"
        "# stand-in for WSClean, written by tests/test_loop.py: the real WSClean, then the disk fills up\n"
        f"[[ $1 == --version ]] && exec {shutil.which('wsclean')} --version\n"
        f"{shutil.which('wsclean')} \"$@\" || exit\n"
        f"dd if=/dev/zero of={small_disk}/filler bs=64k 2> /dev/null\n"
        "exit 0\n")
    (bindir / "wsclean").chmod(0o755)
    env_file = tmp_path / "env.sh"
    env_file.write_text(f"export PATH={bindir}:$PATH\n")
    cfg = config(tmp_path, cluster, worker={"env_file": toml_str(str(env_file)), "nodes": "'node001'"},
                 wsclean={"out-dir": toml_str(f"{small_disk}/$ms_basename$")})
    r = expect(imgpipe(cluster, tmp_path, cfg, ms), 1)
    out = small_disk / ms.name
    assert (out / "img-image.fits").is_file()  # the images were written...
    assert not (out / "img.imgpipe.json").exists()  # ...but not their record: not done
    assert not list(out.glob("*.tmp.*")) and not list(out.glob("*.imgpipe-claim")), list(out.iterdir())
    row = [ln for ln in r.err.splitlines() if ln.strip().startswith("0001")]
    assert row and "the record could not be written" in row[0], r
    assert "cannot write the record" in r.err and "No space left on device" in r.err, r
    assert "free on" in r.err, r

    (small_disk / "filler").unlink()  # space again: the job runs again and is done
    (bindir / "wsclean").unlink()
    r = expect(imgpipe(cluster, tmp_path, cfg, ms), 0)
    assert json.loads((out / "img.imgpipe.json").read_text())["images"]


# ---------------------------------------------------------------- 8. what plan and dry run say


def test_plan_and_dry_run_say_what_is_done_and_nothing_runs_when_all_is(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster)
    expect(imgpipe(cluster, tmp_path, cfg, *ms[:2]), 0)

    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--dry-run"), 0)
    assert "dry run: 4 job(s): 2 done, 2 to run; nothing was started or written" in r.err, r
    marks = [ln.split("]")[0] for ln in r.out.splitlines()]
    assert marks == ["[0001 on any node, done", "[0002 on any node, done", "[0003 on any node", "[0004 on any node"]
    r = expect(imgpipe(cluster, tmp_path, "plan", cfg, *ms), 0)
    assert "4 job(s): 2 done, 2 to run" in r.out, r
    states = [ln.split()[2] for ln in r.out.splitlines() if ln.strip()[:4] in ("0001", "0002", "0003", "0004")]
    assert states == ["done", "done", "to", "to"], r.out

    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
    rdir = Path(r.err.split("run directory ", 1)[1].split()[0])
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--dry-run"), 0)
    assert "4 job(s): 4 done, 0 to run; nothing to do" in r.err, r
    before = (rdir / "joblog.tsv").read_text()
    t0 = time.time()
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
    assert "nothing to do: all 4 job(s) done" in r.err, r
    assert (rdir / "joblog.tsv").read_text() == before  # no engine was asked
    assert "cannot be reached" not in r.err and time.time() - t0 < 10, r


# ---------------------------------------------------------------- what a user reads (issue 12)

BAD_MASK = {"fits-mask": "'/no/such/mask.fits'"}  # the planner cannot know: WSClean fails on it, every job


def test_thirty_identical_failures_are_one_short_group(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 30)
    cfg = config(tmp_path, cluster, worker={"halt_after": "0"}, wsclean=BAD_MASK)  # (0: every job runs)
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 1)
    summary = r.err[r.err.index("imgpipe: 0 of 30 job(s) done"):]
    assert "  30 jobs failed: WSClean failed: " in summary and "mask.fits" in summary, summary
    assert "    jobs 0001-0030; the first, 0001 on node00" in summary, summary
    assert len(summary.splitlines()) <= 12, summary  # (it was 129 lines)
    hints = summary[summary.index("To resume"):].splitlines()[1:]
    assert hints[0].startswith("  imgpipe run imgpipe-runs/") and all(len(h) < 160 for h in hints), hints
    assert not any(m.name in summary for m in ms[1:]), summary  # no list of every MS path


@pytest.mark.parametrize("engine", ENGINES)
def test_the_halt_rule_stops_starting_jobs_when_the_first_ones_all_fail_alike(cluster, tmp_path, ms_factory,
                                                                              engine):
    ms = make_ms_set(ms_factory, tmp_path, 20)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=BAD_MASK)
    r = expect(imgpipe(cluster, tmp_path, "image", "--engine", engine, cfg, *ms), 1)
    assert "halting: no new job is started: the first 5 jobs all failed the same way" in r.err, r
    assert "mask.fits" in r.err.split("halting:", 1)[1].splitlines()[0], r
    ran = rows(run_dir(tmp_path))
    # the first five, and at most the one job the other slot was running when the fifth failed:
    # after each failure no job starts before the rule has judged it (bin/imgpipe-gate)
    assert 5 <= len(ran) <= 6, ran
    assert "jobs not run: not started: the run was halted" in r.err, r
    assert "imgpipe: halted: the first 5 jobs all failed the same way" in r.err, r

    # --halt-after N: after N failures, whatever they are
    other = tmp_path / "n"
    other.mkdir()
    ms = make_ms_set(ms_factory, other, 12)
    cfg = config(other, cluster, worker={"max_concurrent": "1"}, wsclean=BAD_MASK)
    r = expect(imgpipe(cluster, other, "image", "--engine", engine, "--halt-after", "2", cfg, *ms), 1)
    ran = len(rows(run_dir(other)))
    assert 2 <= ran <= 3  # the two, and the one the other slot started before the second had failed
    # (the count said is what had failed when the rule judged: the third may have failed by then)
    assert re.search(r"halting: no new job is started: [23] jobs failed \(halt_after = 2\)", r.err), r


@pytest.mark.parametrize("engine", ENGINES)
def test_no_job_starts_after_the_halt_decision_however_fast_jobs_fail(cluster, tmp_path, ms_factory, engine):
    """One slot, --halt-after 1: the first failure halts the run, and the jobs fail in well under
    the loop's look at the round (0.2 s). Exactly one job may have run, on every engine."""
    ms = make_ms_set(ms_factory, tmp_path, 6)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1", "nodes": "'node001'"}, wsclean=BAD_MASK)
    r = expect(imgpipe(cluster, tmp_path, "image", "--engine", engine, "--halt-after", "1", cfg, *ms), 1)
    assert "halting: no new job is started: 1 jobs failed (halt_after = 1)" in r.err, r
    ran = rows(run_dir(tmp_path))
    assert len(ran) == 1, ran
    assert "5 jobs not run: not started: the run was halted" in r.err, r
    assert not (run_dir(tmp_path) / "halt.gate").exists()


def test_the_eta_of_a_resumed_run_is_close_to_the_truth(cluster, tmp_path, ms_factory):
    """Equal jobs, one slot: stopped after two, resumed. The ETA each progress line gives must be
    within a factor 2 of the time the run still took (read from the lines themselves)."""
    ms = make_ms_set(ms_factory, tmp_path, 6)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1", "nodes": "'node001'"},
                 wsclean={"size": "'512 512'", "niter": "1500"})
    proc = start_imgpipe(cluster, tmp_path, cfg, *ms)
    with killed_on_exit(proc):
        wait_for(lambda: sum(provenance_of(tmp_path, m).exists() for m in ms) >= 2, 120, "two jobs done")
        ctrl_c(proc, 60)
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, timeout=300), 0)
    lines = [ln for ln in r.err.splitlines() if " elapsed" in ln]

    def seconds(text: str) -> int:
        m = __import__("re").fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
        h, mi, se = (int(x) if x else 0 for x in m.groups())
        return h * 3600 + mi * 60 + se

    end = seconds(lines[-1].split(", ")[-1].split()[0]) if "ETA" not in lines[-1] else None
    end = seconds(next(p for p in lines[-1].split(", ") if p.endswith(" elapsed")).split()[0])
    etas = []
    for ln in lines:
        parts = ln.split(", ")
        elapsed = seconds(next(p for p in parts if p.endswith(" elapsed")).split()[0])
        eta = next((p for p in parts if p.startswith("ETA ")), None)
        if eta:
            etas.append((elapsed, seconds(eta.split()[1].rstrip(";")), end - elapsed))
    assert len(etas) >= 5, lines  # an ETA from the first line on: the two jobs done earlier tell how long one takes
    # (the lines give whole seconds: the truth read from them is ±1 s, whatever the ETA)
    bad = [(at, eta, truth) for at, eta, truth in etas if truth >= 3 and not (truth - 1) / 2 <= eta <= 2 * (truth + 1)]
    assert not bad, (bad, lines)


@pytest.mark.parametrize("pidfd", [True, False])
def test_the_wait_for_the_engine_ends_when_it_exits_not_at_the_tick(monkeypatch, pidfd):
    """The run loop waits for its engine a tick at a time, and wakes when the engine exits (with a
    pidfd, or Popen.wait where there is none), not at the end of the tick."""
    from imgpipe.engines import loop

    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    proc = subprocess.Popen(["sleep", "0.3"])
    ended = loop.ExitWait(proc)
    if pidfd and ended.fd is None:
        pytest.skip("this kernel has no pidfd_open (Linux < 5.3)")
    assert (ended.fd is not None) == pidfd
    t0 = time.monotonic()
    ended.wait(30)
    assert time.monotonic() - t0 < 10  # (it ended after 0.3 s: a wait to the tick's end would be 30 s)
    assert proc.poll() == 0
    ended.wait(30)  # an ended process: at once
    ended.close()
    assert time.monotonic() - t0 < 20


# ---------------------------------------------------------------- a stop never depends on printing (issue 23)

def _imgpipe_argv(engine: str, cfg: Path, ms) -> list[str]:
    import sys

    return [sys.executable, "-m", "imgpipe.cli", "image", "--engine", engine, str(cfg), *map(str, ms)]


def _drain(fd: int, seen: list) -> object:
    """Read ``fd`` to its end in the background (a terminal or pipe that is not read fills up)."""
    import threading

    def read():
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            seen.append(data)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def run_on_a_terminal_that_hangs_up(argv: list[str], cwd: Path, env: dict, ready,
                                    timeout: float = 60) -> tuple[int, bytes]:
    """Run ``argv`` as the session leader of a real pseudo-terminal (its controlling terminal), hang
    the terminal up once ``ready()`` (SIGHUP to it, and EIO on every write after), and return its exit
    status and what it wrote."""
    import fcntl
    import termios

    master, slave = os.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    seen: list = []
    _drain(master, seen)
    try:
        wait_for(ready, timeout, "the run to be under way")
        os.close(master)  # the terminal hangs up
        return proc.wait(timeout=timeout), b"".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _two_running(tmp_path: Path) -> bool:
    return len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 2


def _stopped_cleanly(tmp_path: Path) -> None:
    rdir = run_dir(tmp_path)
    assert not job_processes(tmp_path), job_processes(tmp_path)
    assert not (rdir / "joblog.round.tsv").exists()
    assert json.loads((rdir / "run.json").read_text()).get("engine") is None


@pytest.mark.parametrize("engine", ENGINES)
def test_a_terminal_that_hangs_up_stops_every_job(cluster, tmp_path, ms_factory, engine):
    """imgpipe on a real pseudo-terminal, which then hangs up (the ssh session dropped): SIGHUP,
    and every write to the terminal fails (EIO). Every job is stopped, the job log is whole, 130."""
    from test_engine_parallel import env_for

    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=SLOW)
    code, seen = run_on_a_terminal_that_hangs_up(_imgpipe_argv(engine, cfg, ms), tmp_path,
                                                 env_for(cluster, tmp_path), lambda: _two_running(tmp_path))
    assert code == 130, (code, seen[-2000:])
    _stopped_cleanly(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_ctrl_c_through_a_pipe_whose_reader_dies_stops_every_job(cluster, tmp_path, ms_factory, engine):
    """`imgpipe ... 2>&1 | tee night.log` and Ctrl-C: tee dies with imgpipe's SIGINT, so each
    of imgpipe's writes fails (EPIPE). It stops every job all the same, and says 130, not 0."""
    from test_engine_parallel import env_for

    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=SLOW)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(_imgpipe_argv(engine, cfg, ms), cwd=tmp_path, env=env_for(cluster, tmp_path),
                            stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end)
    os.close(write_end)
    with killed_on_exit(proc):
        wait_for(lambda: _two_running(tmp_path), 60, "two running WSCleans")
        os.close(read_end)  # the reader is gone
        ctrl_c(proc, 60)
        code = proc.returncode
    assert code == 130, code
    _stopped_cleanly(tmp_path)


def test_a_closed_output_stops_the_writing_not_the_run(cluster, tmp_path, ms_factory):
    """The reader of imgpipe's output goes away mid-run and nobody stops it: the run goes on to
    its end (documented: the images, the job log and `imgpipe status` say what it did)."""
    from test_engine_parallel import env_for

    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean={"size": "'256 256'", "niter": "300"})
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(_imgpipe_argv("parallel", cfg, ms), cwd=tmp_path, env=env_for(cluster, tmp_path),
                            stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end)
    os.close(write_end)
    try:
        wait_for(lambda: _two_running(tmp_path) or all(provenance_of(tmp_path, m).exists() for m in ms), 60,
                 "jobs running")
        os.close(read_end)
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0 and all(image_of(tmp_path, m).is_file() for m in ms), code
    assert not job_processes(tmp_path)


# ---------------------------------------------------------------- a stopped --force run resumes (issue 24)

def test_a_stopped_force_run_resumes_without_making_again_what_it_made(cluster, tmp_path, ms_factory):
    """`imgpipe ... --force`, Ctrl-C after two jobs: "run the same command again to resume" (with
    --force) makes the four others, not all six again; a finished forced run starts over."""
    ms = make_ms_set(ms_factory, tmp_path, 6)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean=SLOW)
    expect(imgpipe(cluster, tmp_path, cfg, *ms, timeout=300), 0)
    proc = start_imgpipe(cluster, tmp_path, cfg, *ms, "--force")
    with killed_on_exit(proc):
        rdir = run_dir(tmp_path)
        wait_for(lambda: (rdir / "joblog.round.tsv").exists()
                 and len((rdir / "joblog.round.tsv").read_text().splitlines()) >= 3, 120, "two jobs made again")
        out, err, _ = ctrl_c(proc, 60)
    assert proc.returncode == 130, err
    made = int(re.search(r"stopped\. (\d+) of 6 job\(s\) done; run the same command again to resume", err).group(1))
    assert made >= 2, err
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--force", "--dry-run"), 0)
    assert f"6 job(s): {made} done, {6 - made} to run" in r.err, r
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--force", timeout=300), 0)
    assert "all 6 job(s) done" in r.err, r
    assert sum(rows(rdir).values()) == 6 + 6, rows(rdir)  # each job made once by each of the two runs
    assert "forcing" not in {k for k, v in json.loads((rdir / "run.json").read_text()).items() if v}
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--force", "--dry-run"), 0)
    assert "6 job(s): 0 done, 6 to run" in r.err, r  # a new --force starts over


# ---------------------------------------------------------------- retry with more


@pytest.mark.parametrize("engine", ENGINES)
def test_a_job_stopped_at_max_time_runs_again_with_more_time_and_its_record_says_so(cluster, tmp_path, ms_factory,
                                                                                     engine):
    """retries = 1, retry_factor = 16: jobs stopped by max_time (2 s) run again with 32 s and are
    done, each after two attempts; their records say the max_time they got."""
    ms = make_ms_set(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, cluster, worker={"max_time": "2", "retries": "1", "retry_factor": "16",
                                            "max_concurrent": "1"},
                 wsclean={"size": "'1024 1024'", "scale": "'1arcmin'", "niter": "6000"})
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--engine", engine), 0)
    assert "2 job(s) stopped past their memory or time run again with 16 times the memory and time" in r.err, r
    records = [json.loads(provenance_of(tmp_path, m).read_text()) for m in ms]
    assert [p["max_time"] for p in records] == [32, 32], records
    assert rows(run_dir(tmp_path)) == {p["job"]: 2 for p in records}  # stopped at max_time, then done
