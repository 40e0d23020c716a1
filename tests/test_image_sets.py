"""The one rule of "done" and the claim of an image set (imgpipe/image_sets.py, bin/imgpipe-job).

The rule is applied in two places: by the planner (Python, ``image_set``) and by the
node-side wrapper before it runs a job (bash). Every case here puts the same image set
on disk, asks both, and checks they agree, with the images on disk as the evidence.
The wrapper runs as the engines run it (the arguments from ``attempt.wrapper_args``),
with real WSClean on a real MS, and the claim is a real flock.
"""

from __future__ import annotations

import fcntl
import json
import re
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, needs
from imgpipe import jobs_file
from imgpipe.image_sets import claim_path, image_set, image_sets, record_path
from imgpipe.attempt import share_resources, wrapper_args

pytestmark = needs("wsclean")

WRAPPER = REPO / "bin" / "imgpipe-job"
CONFIG = """
[worker]
nodes = 'localhost'
max_concurrent = 2
[wsclean]
name = 'img'
out-dir = '{out}'
size = '{size}'
scale = '5arcmin'
niter = {niter}
data-column = 'DATA'
no-update-model-required = true
{extra}
"""


def plan_of(run_cli, tmp_path: Path, ms: Path, extra: str = "", name: str = "img.toml", size: str = "64 64",
            niter: int = 10):
    cfg = tmp_path / name
    cfg.write_text(CONFIG.format(out=tmp_path / "images", extra=extra, size=size, niter=niter), encoding="utf-8")
    jobs = tmp_path / f"run-{name}" / "jobs.txt"
    r = run_cli("plan", cfg, ms, "--jobs-file", jobs, "--force")
    assert r.code == 0, r
    return jobs_file.read(jobs)


def wrapper(plan, job, tmp_path: Path, *, force: bool = False, env: dict | None = None, wait: bool = True,
            attempt: int | str = 0):
    """Run bin/imgpipe-job for ``job`` here, as an engine would; (exit status, its log).

    Its output goes to a file, not a pipe: a WSClean left running must not hold the test up."""
    args = wrapper_args(plan, job.id, job.command, share="1" if share_resources(job) else "0", force=force,
                        run=f"test:{tmp_path}", attempt=attempt)
    log = tmp_path / f"wrapper-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["perl", str(WRAPPER), "imgpipe-job", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    if not wait:
        return proc
    proc.wait(timeout=120)
    return proc.returncode, log.read_text()


def files_of(job) -> dict[str, int]:
    """The files of the job's image set now on disk -> their mtime (ns)."""
    folder, base = os.path.split(job.name)
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in sorted(os.listdir(folder))
            if n.startswith(base + "-") and n.endswith(".fits")}


@pytest.fixture
def made(run_cli, tmp_path, ms_factory):
    """A job whose image set the wrapper has just made: (plan, job)."""
    ms = ms_factory("obs.MS")
    plan = plan_of(run_cli, tmp_path, ms)
    (job,) = plan.jobs
    assert image_set(job).state == "absent"
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0, log
    return plan, job


def test_a_made_set_is_done_on_both_sides_and_its_record_lists_its_images(made, tmp_path):
    plan, job = made
    s = image_set(job)
    assert s.state == "done" and s.done, s
    record = json.loads(Path(record_path(job.name)).read_text())
    assert record["command"] == job.command and record["job"] == job.id
    assert sorted(record["images"]) == ["-dirty.fits", "-image.fits", "-model.fits", "-psf.fits", "-residual.fits"]
    assert record["run"] == f"test:{tmp_path}" and record["plan_digest"] == plan.digest[:12]
    assert not os.path.exists(claim_path(job.name))  # the claim is let go
    before = files_of(job)
    code, log = wrapper(plan, job, tmp_path)  # the node's rule agrees: nothing is made again
    assert code == 0 and "already done" in log, log
    assert files_of(job) == before


def test_a_deleted_image_makes_the_set_incomplete_and_it_is_made_again(made, tmp_path):
    plan, job = made
    os.unlink(job.name + "-psf.fits")
    s = image_set(job)
    assert s.state == "incomplete" and s.missing == (job.name + "-psf.fits",), s
    before = files_of(job)
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0 and "are missing: making the set again" in log, log
    after = files_of(job)
    assert set(after) == set(before) | {"img-psf.fits"}
    assert all(after[n] != t for n, t in before.items())  # the whole set is new, not patched
    assert image_set(job).done


def test_images_of_another_command_are_refused_then_replaced_with_force(run_cli, made, tmp_path):
    plan, job = made
    # another plan for the same images: two output channels (img-0000-..., img-MFS-...)
    other_plan = plan_of(run_cli, tmp_path, Path(job.ms[0]), extra="channels-out = 2", name="other.toml")
    (other,) = other_plan.jobs
    assert other.name == job.name and other.command != job.command
    s = image_set(other)
    assert s.state == "foreign" and s.record.command == job.command, s
    before = files_of(job)
    code, log = wrapper(other_plan, other, tmp_path)
    assert code == 15 and "were made by another command" in log, log
    assert files_of(job) == before  # untouched

    code, log = wrapper(other_plan, other, tmp_path, force=True)
    assert code == 0 and "replacing the images of another command" in log, log
    after = set(files_of(other))
    assert "img-MFS-image.fits" in after and "img-0001-image.fits" in after
    assert "img-image.fits" not in after  # the old set was removed first: never mixed with the new one
    assert image_set(other).done and image_set(job).state == "foreign"


@pytest.mark.parametrize("damage", ["truncated", "not json", "no images", "no command"])
def test_a_damaged_record_is_not_done_on_either_side(made, tmp_path, damage):
    plan, job = made
    path = Path(record_path(job.name))
    text = path.read_text()
    record = json.loads(text)
    path.write_text({"truncated": text[: len(text) // 2], "not json": "\x00\x01garbage",
                     "no images": json.dumps({**record, "images": []}, indent=2),
                     "no command": json.dumps({k: v for k, v in record.items() if k != "command"}, indent=2),
                     }[damage])
    s = image_set(job)
    assert s.state in ("damaged", "incomplete") and not s.done, s
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0 and "already done" not in log and "start: wsclean" in log, log
    assert image_set(job).done


def test_image_sets_agrees_with_image_set(made, tmp_path):
    plan, job = made
    assert image_sets(plan.jobs) == {job.id: image_set(job)}


def hold_claim(job, text: str = "job 0009 of imgpipe-feedfeedfeed (run elsewhere:/x), wrapper pid 1 on nodeX"):
    """Hold the job's claim from this test process, as another job's wrapper would."""
    fd = os.open(claim_path(job.name), os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, text.encode() + b"\n")
    return fd


def test_a_held_claim_keeps_a_second_job_off_the_images_and_names_the_holder(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    os.makedirs(os.path.dirname(job.name), exist_ok=True)
    fd = hold_claim(job)
    try:
        t0 = time.time()
        code, log = wrapper(plan, job, tmp_path, env={"IMGPIPE_CLAIM_WAIT": "2"})
        waited = time.time() - t0
    finally:
        os.close(fd)
    assert code == 14, log
    assert "being made by another job (job 0009 of imgpipe-feedfeedfeed (run elsewhere:/x)" in log, log
    assert "waiting up to 2 s" in log and waited >= 2, (waited, log)
    assert "start: wsclean" not in log and not files_of(job)


def test_a_claim_let_go_while_waiting_is_taken_and_the_job_runs(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    os.makedirs(os.path.dirname(job.name), exist_ok=True)
    fd = hold_claim(job)

    def let_go():
        time.sleep(1.5)
        os.unlink(claim_path(job.name))  # as a wrapper lets go: the file goes first, then the lock
        os.close(fd)

    t = threading.Thread(target=let_go)
    t.start()
    code, log = wrapper(plan, job, tmp_path, env={"IMGPIPE_CLAIM_WAIT": "20"})
    t.join()
    assert code == 0 and "waiting up to" in log and "start: wsclean" in log, log
    assert "took over" not in log  # it was let go properly
    assert image_set(job).done and not os.path.exists(claim_path(job.name))


def test_a_claim_left_by_a_dead_holder_is_taken_over_and_says_so(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    os.makedirs(os.path.dirname(job.name), exist_ok=True)
    # a wrapper KILLed with its WSClean: the claim file stays, nobody holds its lock
    Path(claim_path(job.name)).write_text("job 0001 of imgpipe-0123456789ab (run vm:/old), wrapper pid 99999\n")
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0, log
    assert "took over the claim on" in log and "left by job 0001 of imgpipe-0123456789ab" in log, log
    assert image_set(job).done


def test_wsclean_holds_the_claim_as_long_as_it_runs(run_cli, tmp_path, ms_factory):
    """WSClean holds the claim itself (the wrapper's descriptor, inherited): a wrapper KILLed mid-job
    cannot let another job start on the same images while its WSClean lives. And its WSClean does
    not run on for nothing: its output goes to a pipe nobody reads any more, so it ends at its next
    write; then the claim is free."""
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"), size="1024 1024", niter=100000)
    (job,) = plan.jobs
    proc = wrapper(plan, job, tmp_path, wait=False)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not _wsclean_of(job):
            time.sleep(0.1)
        (ws,) = _wsclean_of(job)
        claim = os.path.realpath(claim_path(job.name))
        held = [fd for fd in os.listdir(f"/proc/{ws}/fd") if os.path.realpath(f"/proc/{ws}/fd/{fd}") == claim]
        assert held, "WSClean does not hold the claim's descriptor"
        with open(claim) as f:
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc.kill()  # the wrapper only
        proc.wait()
        deadline = time.time() + 60
        while time.time() < deadline and _wsclean_of(job):
            time.sleep(0.1)
        assert not _wsclean_of(job), "WSClean runs on after its wrapper was killed"
        with open(claim) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    finally:
        for pid in _wsclean_of(job):
            os.kill(pid, 9)


def _wsclean_of(job) -> list[int]:
    from procs import cmdline

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = cmdline(int(entry)).split(b"\0")
            if argv and os.path.basename(argv[0]) == b"wsclean" and job.name.encode() in argv:
                out.append(int(entry))
    return out


def test_a_wsclean_that_writes_no_image_fails_the_job(run_cli, tmp_path, ms_factory):
    """WSClean 3.1 exits 0 having written nothing in some cases (-pol it does not know): not done."""
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "wsclean").write_text("#!/bin/sh\n# stand-in: WSClean exiting 0 without an image\nexit 0\n")
    (bindir / "wsclean").chmod(0o755)
    code, log = wrapper(plan, job, tmp_path, env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert code == 10 and "wrote no image" in log, log
    assert image_set(job).state == "absent"


def test_the_wrapper_compiles_under_strict_and_loads_only_core_modules():
    """The wrapper needs perl alone on a node: the modules it loads are perl's core modules of
    5.14 (the README's claim). strict and warnings are checked here, at compile time."""
    check = subprocess.run(["perl", "-Mstrict", "-Mwarnings", "-c", str(WRAPPER)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr.strip().endswith("syntax OK"), check.stderr
    assert "warn" not in check.stderr.lower() and check.stderr.count("\n") == 1, check.stderr
    used = set(re.findall(r"^\s*(?:use|require)\s+([A-Z][\w:]+)", WRAPPER.read_text(), re.M))
    assert used, used
    for module in sorted(used):
        core = subprocess.run(["perl", "-MModule::CoreList", "-e",
                               "exit(Module::CoreList::is_core($ARGV[0], undef, 5.014) ? 0 : 1)", module])
        assert core.returncode == 0, f"{module} is not a core module of perl 5.14"


def test_a_wrapper_sent_in_the_environment_runs_as_the_file_does(made, tmp_path):
    """parallel.sh and the Slurm engine send the wrapper in $IMGPIPE_JOB (`perl -e`): it runs
    from there as from its file (here: a set made before, a command with a quoted word)."""
    plan, job = made
    args = wrapper_args(plan, job.id, job.command.replace(" -pol I ", " -pol 'I' "), share="0", force=False,
                        run=f"test:{tmp_path}")
    env = {**os.environ, "IMGPIPE_JOB": WRAPPER.read_text()}
    proc = subprocess.run(["perl", "-e", env["IMGPIPE_JOB"], "imgpipe-job", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    # (the quoted word is read as the bare one: same command words, so the record's command is another text)
    assert proc.returncode == 15 and "were made by another command" in proc.stdout, proc
    args = wrapper_args(plan, job.id, job.command, share="0", force=False, run=f"test:{tmp_path}")
    proc = subprocess.run(["perl", "-e", env["IMGPIPE_JOB"], "imgpipe-job", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "already done" in proc.stdout, proc


def test_a_wrapper_removed_while_its_job_runs_still_says_how_it_ended(run_cli, tmp_path, ms_factory):
    """A node's ~/.cache cleaned while a job runs: the wrapper was compiled whole when it started,
    so WSClean's failure is said as such (exit 10), not as a set-up failure (12). No handle on the
    wrapper's file is inherited by WSClean."""
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    copy = tmp_path / "imgpipe-job-copy"
    shutil.copy(WRAPPER, copy)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stand_in = bindir / "wsclean"  # (fails, after removing the wrapper that started it)
    stand_in.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "WSClean version 3.1.0"; exit 0; }}\n'
                        f'ls -l /proc/$$/fd > {tmp_path}/fds\nrm -f {copy}\nexit 1\n')
    stand_in.chmod(0o755)
    args = wrapper_args(plan, job.id, job.command, share="0", force=False, run=f"test:{tmp_path}")
    proc = subprocess.run(["perl", str(copy), "imgpipe-job", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert not copy.exists()
    assert proc.returncode == 10 and "WSClean failed with exit status 1" in proc.stdout, proc
    assert "cannot compile" not in proc.stdout
    fds = (tmp_path / "fds").read_text()
    assert str(copy) not in fds and claim_path(job.name) in fds, fds  # (the claim is inherited, on purpose)


@pytest.mark.parametrize("word", ["$(touch {p})", "`touch {p}`", "; touch {p}", "| touch {p}", "&& touch {p}",
                                  "> {p}", '"$(touch {p})"', "*"])
def test_a_command_with_anything_a_shell_would_run_is_refused_not_run(made, tmp_path, word):
    """The wrapper splits the jobs file's command into words itself: what a shell would expand or
    run (a hand-edited jobs file, a bug) is refused (exit 12), and nothing of it runs."""
    plan, job = made
    pwned = tmp_path / "pwned"
    command = job.command + " " + word.format(p=pwned)
    args = wrapper_args(plan, job.id, command, share="0", force=False, run=f"test:{tmp_path}")
    proc = subprocess.run(["perl", str(WRAPPER), "imgpipe-job", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 12 and "cannot read the command line" in proc.stdout, proc
    assert not pwned.exists()
    assert image_set(job).done  # and the images made before are untouched


def test_job_commands_with_hostile_names_are_compared_exactly(run_cli, tmp_path, ms_factory):
    """The node reads the record's command as text: quotes, backslashes, tabs and $ must not fool it."""
    ms = ms_factory('a "b" \\c\t$HOME `x`.MS')
    plan = plan_of(run_cli, tmp_path, ms)
    (job,) = plan.jobs
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0, log
    assert image_set(job).done
    assert json.loads(Path(record_path(job.name)).read_text())["command"] == job.command
    assert shlex.split(job.command)[-1] == str(ms)
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0 and "already done" in log, log


def test_image_sets_asks_the_same_rule_whether_it_lists_a_directory_or_stats_each_image(tmp_path):
    """Many sets in one directory (listed once) and one set alone (each image asked): the same
    states as one set at a time, with the same missing images."""
    from types import SimpleNamespace

    from imgpipe import image_sets as sets_module

    jobs = []
    for folder, n in (("many", sets_module.LISTED + 3), ("alone", 1)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            prefix = str(tmp_path / folder / f"img{i}")
            job = SimpleNamespace(id=f"{folder}{i}", name=prefix, command=f"wsclean -name {prefix} x.MS")
            images = ["-MFS-image.fits", "-MFS-dirty.fits"]
            for suffix in images:
                Path(prefix + suffix).write_bytes(b"")
            Path(prefix + ".imgpipe.json").write_text(json.dumps({"command": job.command, "images": images}))
            jobs.append(job)
    os.unlink(jobs[1].name + "-MFS-dirty.fits")
    os.unlink(jobs[-1].name + "-MFS-image.fits")
    Path(jobs[2].name + ".imgpipe.json").write_text("{")
    Path(jobs[3].name + ".imgpipe.json").unlink()
    together = image_sets(jobs)
    assert together == {j.id: image_set(j) for j in jobs}
    assert together[jobs[1].id].state == "incomplete"
    assert together[jobs[1].id].missing == (jobs[1].name + "-MFS-dirty.fits",)
    assert together[jobs[-1].id].missing == (jobs[-1].name + "-MFS-image.fits",)
    assert [together[j.id].state for j in jobs[2:4]] == ["damaged", "absent"]
    assert [together[j.id].state for j in jobs].count("done") == len(jobs) - 4


# ---------------------------------------------------------------- sizes: a set cut short is never done

def _result_of(log: str):
    from imgpipe.attempt import parse_result

    return parse_result(log.strip().splitlines()[-1])


def test_an_image_cut_short_after_the_run_makes_the_set_incomplete_on_both_sides(made, tmp_path):
    plan, job = made
    record = json.loads(Path(record_path(job.name)).read_text())
    assert record["format"] == 3 and len(record["sizes"]) == len(record["images"])
    assert record["sizes"] == [os.path.getsize(job.name + i) for i in record["images"]]
    image = job.name + "-image.fits"
    os.truncate(image, os.path.getsize(image) - 2880)  # whole FITS blocks still: only the record tells
    s = image_set(job)
    assert s.state == "incomplete" and s.missing == (image,), s
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0 and "already done" not in log and _result_of(log).outcome == "done", log
    assert image_set(job).done


def test_a_record_from_before_sizes_counts_by_its_files(made, tmp_path):
    plan, job = made
    path = Path(record_path(job.name))
    record = json.loads(path.read_text())
    del record["sizes"]
    record["format"] = 2
    path.write_text(json.dumps(record))
    assert image_set(job).done
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0 and _result_of(log).outcome == "already-done", log


def tmpfs_at(path: Path, options: str):
    """A tmpfs mounted at ``path`` (made) with ``options`` while the fixture lives (root only:
    the test is skipped elsewhere)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/images: a tmpfs of 4 MB, to be filled up (fill)."""
    yield from tmpfs_at(tmp_path / "images", "size=4m")


def fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_a_full_disk_is_a_failure_of_its_own_and_its_partial_set_is_removed(run_cli, tmp_path, ms_factory,
                                                                           small_disk):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"), extra="channels-out = 2", size="128 128")
    (job,) = plan.jobs
    filler = fill(small_disk, 160_000)  # room for about two of its 15 images of 72,000 bytes
    code, log = wrapper(plan, job, tmp_path)
    r = _result_of(log)
    assert code == 22 and r.outcome == "disk-full", log[-3000:]
    assert str(small_disk) in r.message and "MB free on " in r.message, r.message
    assert image_set(job).state == "absent"
    left = [n for n in os.listdir(small_disk) if n != "filler"]
    assert not [n for n in left if n.endswith(".fits")], left  # the partial set is gone
    filler.unlink()  # room made: the same job runs through
    code, log = wrapper(plan, job, tmp_path)
    assert code == 0 and _result_of(log).outcome == "done", log[-3000:]
    assert image_set(job).done


def test_a_fits_file_cut_short_is_never_recorded(run_cli, tmp_path, ms_factory):
    """WSClean 3.1 can exit 0 on a nearly full disk with a short image: a stand-in WSClean that
    does just that (the real one runs first, to write a whole set)."""
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("wsclean")
    (bindir / "wsclean").write_text(
        "#!/bin/bash\n# stand-in: the real WSClean, then its image cut short, and exit 0\n"
        f"{shlex.quote(real)} \"$@\" || exit $?\n"
        f"truncate -s 69632 {shlex.quote(job.name)}-image.fits\n")
    (bindir / "wsclean").chmod(0o755)
    code, log = wrapper(plan, job, tmp_path, env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    r = _result_of(log)
    assert code in (21, 22) and r.outcome in ("truncated", "disk-full"), log[-2000:]
    assert "-image.fits (69632 bytes: not a whole number of 2880-byte FITS blocks)" in r.message, r.message
    assert image_set(job).state == "absent" and not os.path.exists(job.name + "-psf.fits")


def test_a_job_log_keeps_the_two_ends_of_a_flood_of_output(run_cli, tmp_path, ms_factory):
    """A WSClean that prints megabytes: the log keeps its first and last IMGPIPE_LOG_KEEP bytes
    and says how much it left out between them; WSClean's error line is found all the same."""
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "wsclean").write_text(
        "#!/usr/bin/env python3\n# stand-in: 3 MB of output, then WSClean's way of failing\n"
        "import sys\n"
        "for i in range(60000):\n    sys.stdout.write(f'gridding line {i:06d} ' + 'x' * 30 + '\\n')\n"
        "sys.stdout.write('+ An exception occured:\\n+ >>> the last error\\n')\nsys.exit(255)\n")
    (bindir / "wsclean").chmod(0o755)
    keep = 100_000
    code, log = wrapper(plan, job, tmp_path, env={"PATH": f"{bindir}:{os.environ['PATH']}",
                                                  "IMGPIPE_LOG_KEEP": str(keep)})
    assert code == 10, log[-2000:]
    assert len(log) < 2 * keep + 20_000, len(log)
    assert "gridding line 000000 " in log and "gridding line 059999 " in log
    m = re.search(r"\[\.\.\. (\d+) bytes of WSClean's output left out here: the log keeps its first and last "
                  rf"{keep} bytes \.\.\.\]\n(gridding line \d+ )", log)
    assert m and int(m.group(1)) > 2_000_000, log[keep - 200: keep + 400]
    assert _result_of(log).wsclean_error == "the last error"


def test_one_option_changed_is_said_as_old_and_new_value(run_cli, made, tmp_path):
    """Changing one option and planning again: the refusal names that option, old -> new, and
    the two ways out; not the whole old command."""
    plan, job = made
    cfg = tmp_path / "img.toml"
    cfg.write_text(cfg.read_text().replace("niter = 10", "niter = 20\nchannels-out = 2"), encoding="utf-8")
    r = run_cli("plan", cfg, job.ms[0], "--jobs-file", tmp_path / "again" / "jobs.txt")
    assert r.code == 2, r
    assert "what differs: -niter 10 -> 20; -channels-out 2 (new)" in r.err, r.err
    assert "run again with --force" in r.err and "change out-dir or name" in r.err
    old = json.loads(Path(record_path(job.name)).read_text())["command"]
    assert old not in r.err


def test_command_changes_in_words():
    from imgpipe.image_sets import command_changes

    old = "wsclean -name /i/img -size 64 64 -j 2 -multiscale -temp-dir /t /d/a.MS"
    new = ["wsclean", "-name", "/i/img", "-size", "128", "128", "-niter", "5", "-temp-dir", "/t", "/d/a.MS", "/d/b.MS"]
    assert command_changes(old, new) == ("-size 64 64 -> 128 128; -j 2 (not any more); -multiscale (on) (not any "
                                         "more); -niter 5 (new); the MSs: 1 -> 2 (a.MS .. b.MS)")
    assert command_changes("wsclean 'unclosed", new).startswith("the command that made them cannot be read")


@pytest.fixture
def read_only(tmp_path):
    """tmp_path/ro: a read-only tmpfs."""
    yield from tmpfs_at(tmp_path / "ro", "ro,size=1m")


def test_an_out_dir_that_cannot_be_written_is_a_plan_error(run_cli, tmp_path, ms_factory, read_only):
    ms = ms_factory("obs.MS")
    cfg = tmp_path / "ro.toml"
    cfg.write_text(CONFIG.format(out=read_only / "images", extra="", size="64 64", niter=10), encoding="utf-8")
    r = run_cli("plan", cfg, ms, "--jobs-file", tmp_path / "r" / "jobs.txt")
    assert r.code == 2, r
    assert (f"the image directory {read_only}/images cannot be made: {read_only} cannot be written from here "
            "(a read-only file system)") in r.err, r.err
    assert not (tmp_path / "r").exists()


def test_a_job_whose_out_dir_cannot_be_made_says_why_in_the_system_s_words(run_cli, tmp_path, ms_factory,
                                                                          read_only):
    """(the planning machine may not see the nodes' disks: the job finds it, and says why)"""
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    from dataclasses import replace

    argv = list(job.argv)
    argv[argv.index("-name") + 1] = str(read_only / "images" / "img")
    job = replace(job, argv=tuple(argv), name=str(read_only / "images" / "img"))
    code, log = wrapper(plan, job, tmp_path)
    r = _result_of(log)
    assert code == 12 and r.outcome == "setup", log
    assert r.message == f"cannot create the output directory {read_only}/images: Read-only file system", r.message


def test_the_libraries_wsclean_calls_get_the_job_s_threads(run_cli, tmp_path, ms_factory):
    """With its share of the node (-j added by the wrapper), WSClean's process also has OMP, OpenBLAS
    and MKL thread counts of that share, whatever the node's environment says; with the user's own
    -j they are left alone. (A shim before the real WSClean on PATH writes down the environment it
    is given: nothing else can show a process's environment after it has ended.)"""
    bindir = tmp_path / "shim"
    bindir.mkdir()
    seen = tmp_path / "environment"
    real = shutil.which("wsclean")
    (bindir / "wsclean").write_text(f'#!/bin/sh\nenv > "{seen}"\nexec "{real}" "$@"\n')
    (bindir / "wsclean").chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "64"}
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    code, log = wrapper(plan, job, tmp_path, env=env)
    assert code == 0, log
    given = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    threads = log.split(" -j ", 1)[1].split()[0]
    assert [given[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")] == [threads] * 3
    assert int(threads) == max(1, len(os.sched_getaffinity(0)) // 2)  # max_concurrent = 2
    own = plan_of(run_cli, tmp_path, ms_factory("own.MS"), extra="j = 1", name="own.toml")
    (job,) = own.jobs
    code, log = wrapper(own, job, tmp_path, env=env, force=True)  # (the same images, by another command)
    assert code == 0, log
    given = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert given["OMP_NUM_THREADS"] == "64" and "OPENBLAS_NUM_THREADS" not in given
