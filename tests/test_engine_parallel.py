"""The GNU parallel engine, end to end: real sshd "nodes", real GNU parallel, real WSClean.

imgpipe runs as a separate process (``python -m imgpipe.cli``), so signals, exit codes
and what it prints are what a user gets. The "nodes" are sshd instances on loopback
ports (tests/sshcluster.py) with ControlMaster on; they share this machine's file
system, so the tests can look at the images, the job log and the processes directly.

Nothing is mocked. The images are tiny (64x64, 10 iterations: ~0.3 s each) except
where a test needs jobs that last (concurrency, Ctrl-C, max_time).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from procs import ctrl_c, job_processes, killed_on_exit
from sshcluster import SshCluster, missing_tools

_missing = missing_tools() + [t for t in ("parallel", "wsclean") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"needs: {', '.join(_missing)}")

NODES = ("node001", "node002")
FAST = {"size": "'64 64'", "scale": "'5arcmin'", "niter": "10"}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes with ControlMaster on, shared by the tests that do not stop a node."""
    with SshCluster(tmp_path_factory.mktemp("cluster"), names=NODES) as c:
        yield c


class Run:
    def __init__(self, code, out, err, elapsed):
        self.code, self.out, self.err, self.elapsed = code, out, err, elapsed

    def __repr__(self):
        return f"Run(code={self.code}, {self.elapsed:.1f}s,\nout={self.out[-3000:]}\nerr={self.err[-4000:]})"


def expect(r: Run, code: int) -> Run:
    """Fail with imgpipe's whole output (pytest would shorten an assert message)."""
    if os.environ.get("IMGPIPE_TEST_SHOW"):  # to read what a user sees: IMGPIPE_TEST_SHOW=1 pytest -s
        print(f"\n$ imgpipe ... -> {r.code}\n{r.out}{r.err}")
    if r.code != code:
        pytest.fail(f"expected exit {code}, got {r!r}", pytrace=False)
    return r


def env_for(cluster, tmp_path: Path, **extra) -> dict[str, str]:
    env = cluster.env(IMGPIPE_PROGRESS_INTERVAL="0.5", PARALLEL_HOME=str(tmp_path / "parallel-home"))
    env.pop("IMGPIPE_SSH", None)
    env.update(extra)
    return env


def imgpipe(cluster, tmp_path: Path, *args, timeout: float = 120, env: dict | None = None) -> Run:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=tmp_path,
                          env=env or env_for(cluster, tmp_path), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.time() - t0)


def start_imgpipe(cluster, tmp_path: Path, *args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=tmp_path,
                            env=env or env_for(cluster, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def config(tmp_path: Path, cluster, *, worker: dict | None = None, wsclean: dict | None = None,
           pinned: bool = False, name: str = "img.toml") -> Path:
    """A config for the cluster; values are TOML literals (strings already quoted)."""
    w = {"nodes": "'node001,node002'", "ssh": toml_str(cluster.ssh_command), "max_concurrent": "2"}
    if pinned:
        w["run_on_file_host"] = "true"
        w["run_on_file_host_pattern"] = r"'/net/(node\d{3})/'"
    w.update(worker or {})
    ws = {"name": "'img'", **FAST, "data-column": "'DATA'", "no-update-model-required": "true",
          "out-dir": toml_str(f"{tmp_path}/images/$ms_basename$")}
    ws.update(wsclean or {})
    text = "[worker]\n" + "".join(f"{k} = {v}\n" for k, v in w.items())
    text += "[wsclean]\n" + "".join(f"{k} = {v}\n" for k, v in ws.items())
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def make_ms_set(ms_factory, tmp_path: Path, n: int, *, pinned: bool = False, prefix: str = "obs") -> list[Path]:
    """n MSs; pinned: alternately under net/node001 and net/node002."""
    out = []
    for i in range(n):
        if pinned:
            node = NODES[i % len(NODES)]
            out.append(ms_factory(f"{prefix}{i:02d}.MS", where=tmp_path / "net" / node))
        else:
            out.append(ms_factory(f"{prefix}{i:02d}.MS", where=tmp_path / "data"))
    return out


def run_dir(tmp_path: Path) -> Path:
    dirs = list((tmp_path / "imgpipe-runs").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def joblog(rdir: Path) -> list[dict[str, str]]:
    """The job log's rows as dicts, with a 'job' key (the job id from the command)."""
    path = rdir / "joblog.tsv"
    if not path.exists():
        return []
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    keys = header.split("\t")
    out = []
    for row in rows:
        d = dict(zip(keys, (f.strip() for f in row.split("\t", len(keys) - 1))))
        d["job"] = job_of(d["Command"])
        out.append(d)
    return out


def job_of(command: str) -> str:
    """The job id in a job-log row's command (bash WRAPPER imgpipe-job TAG ID ...)."""
    import re

    return re.search(r"imgpipe-job imgpipe-[0-9a-f]{12} (\S+) ", command).group(1)


def image_of(tmp_path: Path, ms: Path) -> Path:
    return tmp_path / "images" / ms.name / "img-image.fits"


def provenance_of(tmp_path: Path, ms: Path) -> Path:
    return tmp_path / "images" / ms.name / "img.imgpipe.json"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tmp_dirs_left(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.imgpipe-tmp")]


# ----------------------------------------------------------------------------- tests


def test_images_provenance_joblog_and_summary(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 3)
    r = imgpipe(cluster, tmp_path, config(tmp_path, cluster), *ms)
    expect(r, 0)
    assert "all 3 job(s) done" in r.err, r
    for m in ms:
        assert image_of(tmp_path, m).stat().st_size > 0, r
        prov = json.loads(provenance_of(tmp_path, m).read_text())
        assert prov["exit_status"] == 0
        assert prov["command"].endswith(str(m)), prov
        assert prov["host"]
    rows = joblog(run_dir(tmp_path))
    assert sorted(x["job"] for x in rows) == ["0001", "0002", "0003"]  # one row per job
    assert all(x["Exitval"] == "0" and x["Signal"] == "0" for x in rows), rows
    assert {x["Host"] for x in rows} <= set(NODES), rows
    assert not tmp_dirs_left(tmp_path), "a job's temp dir was left behind"


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (touching ends do not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same instant
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_per_node_concurrency_stays_within_max_concurrent(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 8)
    cfg = config(tmp_path, cluster, wsclean={"size": "'256 256'", "niter": "5000"})
    r = imgpipe(cluster, tmp_path, cfg, *ms)
    expect(r, 0)
    rows = joblog(run_dir(tmp_path))
    assert len(rows) == 8 and all(x["Exitval"] == "0" for x in rows), rows
    per_host = defaultdict(list)
    for x in rows:
        start, runtime = float(x["Starttime"]), float(x["JobRuntime"])
        # the log rounds to ms: shave 10 ms off each end so back-to-back jobs do not count as overlapping
        per_host[x["Host"]].append((start + 0.01, start + runtime - 0.01))
    overlaps = {h: max_overlap(iv) for h, iv in per_host.items()}
    assert set(overlaps) <= set(NODES), overlaps
    assert all(n <= 2 for n in overlaps.values()), f"more than max_concurrent=2 jobs at once: {overlaps}"
    assert max(overlaps.values()) == 2, f"no two jobs ever ran at once on a node: {overlaps}"
    # and both nodes took work
    assert len(overlaps) == 2, overlaps


def test_pinned_jobs_run_on_the_node_holding_their_ms(cluster, tmp_path, ms_factory):
    ms = [ms_factory("a.MS", where=tmp_path / "net/node002/x"),
          ms_factory("b.MS", where=tmp_path / "net/node002/y"),
          ms_factory("c.MS", where=tmp_path / "net/node001/z"),
          ms_factory("d.MS", where=tmp_path / "net/node002/w")]
    r = imgpipe(cluster, tmp_path, config(tmp_path, cluster, pinned=True), *ms)
    expect(r, 0)
    rows = {x["job"]: x for x in joblog(run_dir(tmp_path))}
    want = {"0001": "node002", "0002": "node002", "0003": "node001", "0004": "node002"}
    assert {j: x["Host"] for j, x in rows.items()} == want
    for m, job in zip(ms, sorted(want)):
        prov = json.loads(provenance_of(tmp_path, m).read_text())
        assert prov["job"] == job


def plan_jobs(cluster, tmp_path: Path, cfg: Path, *ms) -> Path:
    r = expect(imgpipe(cluster, tmp_path, "plan", cfg, *ms), 0)
    line = [ln for ln in r.out.splitlines() if ln.startswith("Jobs file: ")]
    assert line, r
    return tmp_path / line[0].removeprefix("Jobs file: ")


def rows_per_job(rdir: Path) -> Counter:
    return Counter(x["job"] for x in joblog(rdir))


def test_a_job_failing_on_the_node_is_reported_and_only_it_runs_again(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 3)
    jobs = plan_jobs(cluster, tmp_path, config(tmp_path, cluster), *ms)
    saved = tmp_path / "saved.MS"
    shutil.move(ms[1], saved)  # gone between planning and running

    r = expect(imgpipe(cluster, tmp_path, "run", jobs), 1)
    rdir = jobs.parent
    log = rdir / "logs" / "0002"
    lines = r.err.splitlines()
    row = [ln for ln in lines if ln.split()[:1] == ["0002"]]
    assert len(row) == 1, r
    assert "WSClean failed" in row[0] and str(log) in row[0], r
    # the table shows the end of the job's log: here WSClean's own error about the missing MS
    shown = "\n".join(lines[lines.index(row[0]) + 1:])
    assert "| imgpipe-job 0002" in shown and "WSClean failed with exit status 255" in shown, r
    assert "1 failed" in r.err and "2 of 3 job(s) done" in r.err, r
    assert f"imgpipe run {jobs}" in r.err, r  # how to resume
    assert image_of(tmp_path, ms[0]).exists() and not image_of(tmp_path, ms[1]).exists()
    assert not tmp_dirs_left(tmp_path), "the failed job left its temp dir"

    shutil.move(saved, ms[1])
    r = expect(imgpipe(cluster, tmp_path, "run", jobs), 0)
    assert "all 3 job(s) done" in r.err, r
    assert rows_per_job(rdir) == {"0001": 1, "0002": 2, "0003": 1}
    assert image_of(tmp_path, ms[1]).exists()
    # the failed attempt's log is kept beside the new one
    assert "WSClean failed with exit status 255" in (rdir / "logs" / "0002.1").read_text()
    assert "record" in (rdir / "logs" / "0002").read_text()


def test_a_dead_node_is_reported_once_and_the_other_node_does_the_work(own_cluster, tmp_path, ms_factory):
    cluster = own_cluster
    cluster.stop_host("node002")
    # unpinned jobs: all done on node001
    ms = make_ms_set(ms_factory, tmp_path, 4)
    r = expect(imgpipe(cluster, tmp_path, config(tmp_path, cluster), *ms), 0)
    assert sum("node002" in ln and "cannot be reached" in ln for ln in r.err.splitlines()) == 1, r
    assert "all 4 job(s) done" in r.err, r
    rows = joblog(run_dir(tmp_path))
    assert {x["Host"] for x in rows} == {"node001"} and len(rows) == 4, rows
    assert all(image_of(tmp_path, m).exists() for m in ms)

    # pinned jobs: those of node002 are not run, those of node001 are
    pinned_dir = tmp_path / "pinned"
    pinned_dir.mkdir()
    ms = make_ms_set(ms_factory, pinned_dir, 4, pinned=True)
    r = expect(imgpipe(cluster, pinned_dir, config(pinned_dir, cluster, pinned=True), *ms), 1)
    assert sum("node002" in ln and "cannot be reached" in ln for ln in r.err.splitlines()) == 1, r
    assert "  2 jobs not run: not run: node node002 unreachable" in r.err, r  # one line for both
    assert "    jobs 0002, 0004; the first, 0002 on node002" in r.err, r
    assert "2 of 4 job(s) done" in r.err, r
    assert sorted(x["job"] for x in joblog(run_dir(pinned_dir))) == ["0001", "0003"]
    assert image_of(pinned_dir, ms[0]).exists() and not image_of(pinned_dir, ms[1]).exists()


def round_rows(rdir: Path) -> list[str]:
    try:
        return (rdir / "joblog.round.tsv").read_text().splitlines()[1:]
    except FileNotFoundError:
        return []


def test_ctrl_c_stops_every_job_on_every_node_and_a_rerun_finishes(cluster, tmp_path, ms_factory):
    assert cluster.control_master  # the hard case: remote jobs outlive a killed parallel
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"},
                 wsclean={"size": "'512 512'", "niter": "2000"})
    proc = start_imgpipe(cluster, tmp_path, cfg, *ms)
    with killed_on_exit(proc):
        rdir = wait_for(lambda: (tmp_path / "imgpipe-runs").is_dir() and run_dir(tmp_path), 30, "the run directory")
        # two jobs finished, the other two running WSClean
        wait_for(lambda: len(round_rows(rdir)) >= 2, 60, "two finished jobs")
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 2,
                 30, "two running WSCleans")
        finished = {job_of(ln.split("\t")[8]) for ln in round_rows(rdir)}
        assert len(finished) == 2, round_rows(rdir)
        started = {j: provenance_of(tmp_path, m).read_text() for j, m in zip(["0001", "0002", "0003", "0004"], ms)
                   if j in finished}
        out, err, elapsed = ctrl_c(proc, 40)
    r = Run(proc.returncode, out, err, elapsed)
    expect(r, 130)
    assert elapsed < 30, r
    assert "stopped. 2 of 4 job(s) done" in err, r
    left = job_processes(tmp_path)
    assert not left, f"still running after Ctrl-C: {left}"
    assert not tmp_dirs_left(tmp_path), "temp dirs left behind"
    assert not (rdir / "joblog.round.tsv").exists()

    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
    assert "all 4 job(s) done" in r.err, r
    counts = rows_per_job(rdir)
    assert counts == {"0001": 1, "0002": 1, "0003": 1, "0004": 1}, counts
    for j, text in started.items():  # the finished ones were not imaged again
        assert provenance_of(tmp_path, ms[int(j) - 1]).read_text() == text


def test_parallel_sh_resumes_by_hand_after_a_failure(cluster, tmp_path, ms_factory):
    from imgpipe import jobs_file
    from imgpipe.status import job_states

    ms = make_ms_set(ms_factory, tmp_path, 3)
    jobs = plan_jobs(cluster, tmp_path, config(tmp_path, cluster), *ms)
    saved = tmp_path / "saved.MS"
    shutil.move(ms[2], saved)
    r = expect(imgpipe(cluster, tmp_path, "run", jobs), 1)
    rdir = jobs.parent
    script = rdir / "parallel.sh"
    assert f"bash {script}" in r.err, r  # the summary tells how
    plan = jobs_file.read(jobs)
    assert [s.state for s in job_states(plan, rdir)] == ["done", "done", "failed"]

    shutil.move(saved, ms[2])
    env = env_for(cluster, tmp_path)
    env.pop("PARALLEL_SSH")  # the script must carry its own ssh command
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert rows_per_job(rdir) == {"0001": 1, "0002": 1, "0003": 2}  # only the failed job ran again
    last = [x for x in joblog(rdir) if x["job"] == "0003"][-1]
    assert last["Exitval"] == "0" and last["Host"] in NODES, last
    assert [s.state for s in job_states(plan, rdir)] == ["done"] * 3
    assert image_of(tmp_path, ms[2]).exists()
    # and imgpipe agrees: nothing left to do
    r = expect(imgpipe(cluster, tmp_path, "run", jobs), 0)
    assert "all 3 job(s) done" in r.err, r
    assert rows_per_job(rdir) == {"0001": 1, "0002": 1, "0003": 2}


def test_parallel_sh_refuses_while_imgpipe_runs_the_same_plan(cluster, tmp_path, ms_factory):
    """Two writers of one run directory overwrite each other's job log and logs: the by-hand
    script takes the run's lock as imgpipe does, or refuses, naming who holds it."""
    ms = make_ms_set(ms_factory, tmp_path, 4)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1"}, wsclean={"size": "'512 512'", "niter": "2000"})
    proc = start_imgpipe(cluster, tmp_path, cfg, *ms)
    try:
        rdir = wait_for(lambda: (tmp_path / "imgpipe-runs").is_dir() and run_dir(tmp_path), 30, "the run directory")
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) >= 1, 60,
                 "a running WSClean")
        before = (rdir / "joblog.tsv").read_bytes() if (rdir / "joblog.tsv").exists() else b""
        r = subprocess.run(["bash", str(rdir / "parallel.sh")], cwd=tmp_path, env=env_for(cluster, tmp_path),
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "this run is going on (imgpipe pid " in r.stderr, r.stderr
        assert ((rdir / "joblog.tsv").read_bytes() if (rdir / "joblog.tsv").exists() else b"") == before
    finally:
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err


# CFITSIO (which writes WSClean's images) reads '(' and '[' in a file name as its extended
# file-name syntax and cannot write there: such names go in the MS's directory (never part
# of an image path here) -- see test_image_paths_cfitsio_cannot_write_are_refused_when_planning.
HOSTILE = [
    "with space.MS",
    "it's.MS",
    'say "hi".MS',
    "$HOME`touch PWNED`.MS",
    "a;touch PWNED;.MS",
    "x && touch PWNED | y.MS",
    "user@host.MS",
    "pct%40 %25 %.MS",
    "$HOME${HOME}.MS",
    "tab\there.MS",
    "Ωμέγα Ünïcødé.MS",
]
NASTY_DIR = "d $(touch PWNED) [x] '\"`;@%40 ü"
NASTY_OUT = "out `touch PWNED` ;@%40 'q' \"dq\" $HOME Ω"


def test_hostile_paths_survive_the_ssh_hop(cluster, tmp_path, ms_factory):
    ms = [ms_factory(name, where=tmp_path / "net" / NODES[i % 2] / NASTY_DIR) for i, name in enumerate(HOSTILE)]
    out_root = tmp_path / NASTY_OUT
    cfg = config(tmp_path, cluster, pinned=True,
                 wsclean={"out-dir": toml_str(f"{tmp_path}/out `touch PWNED` ;@%40 'q' \"dq\" ${{HOME_}} Ω/$ms_basename$")})
    home = Path.home()
    before = set(home.iterdir())
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, env=env_for(cluster, tmp_path, HOME_="$HOME")), 0)
    assert f"all {len(ms)} job(s) done" in r.err, r
    for m in ms:
        assert (out_root / m.name / "img-image.fits").is_file(), (m, r)
        prov = json.loads((out_root / m.name / "img.imgpipe.json").read_text(encoding="utf-8"))
        assert prov["command"].endswith(" " + shlex.quote(str(m))), prov["command"]
        assert shlex.split(prov["command"])[-1] == str(m)
    rows = {x["job"]: x["Host"] for x in joblog(run_dir(tmp_path))}
    assert rows == {f"{i + 1:04d}": NODES[i % 2] for i in range(len(ms))}  # an '@' in a path did not re-pin
    pwned = [p for p in tmp_path.rglob("*") if p.name == "PWNED"]
    assert not pwned and not (home / "PWNED").exists(), pwned
    assert set(home.iterdir()) == before  # remote commands start in $HOME: nothing was written there
    # every image is where the config says, and nowhere else
    assert sorted(tmp_path.rglob("*-image.fits")) == sorted(out_root / m.name / "img-image.fits" for m in ms)


def test_image_paths_cfitsio_cannot_write_are_refused_when_planning(cluster, tmp_path, ms_factory):
    """WSClean 3.1 fails only AFTER gridding ('CFITSIO ... file open failed (parser)') when the
    -name prefix holds '(' or '['; imgpipe should say so before anything runs (exit 2)."""
    ms = ms_factory("$(date).MS", where=tmp_path / "data")
    r = imgpipe(cluster, tmp_path, config(tmp_path, cluster), ms)
    assert r.code == 2, r
    assert "CFITSIO" in r.err and "(" in r.err, r
    assert not (tmp_path / "imgpipe-runs").exists()


def test_dry_run_writes_nothing_and_shows_each_job_with_its_host(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 3, pinned=True)
    cfg = config(tmp_path, cluster, pinned=True)
    before = sorted(tmp_path.rglob("*"))
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--dry-run"), 0)
    lines = r.out.splitlines()
    assert len(lines) == 3, r
    assert lines[0].startswith("[0001 on node001]") or lines[0].startswith("[0003 on node001]"), r  # node001's
    # two jobs first: the busier node's pinned jobs start first (plan.longest_first)
    for i, (line, m) in enumerate(zip(sorted(lines), ms)):
        assert line.startswith(f"[{i + 1:04d} on {NODES[i % 2]}] wsclean "), line
        assert line.endswith(str(m)), line
    assert "nothing was started or written" in r.err, r
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, no image directory
    assert not (tmp_path / "imgpipe-runs").exists() and not (tmp_path / "images").exists()

    # `imgpipe run --dry-run JOBS_FILE` after a plan: the run directory gains nothing
    jobs = plan_jobs(cluster, tmp_path, cfg, *ms)
    listing = sorted(jobs.parent.rglob("*"))
    r = expect(imgpipe(cluster, tmp_path, "run", "--dry-run", jobs), 0)
    assert r.out.splitlines() == lines  # (the same order: the plan's)
    assert sorted(jobs.parent.rglob("*")) == listing
    assert not (tmp_path / "images").exists()


def test_a_second_run_of_the_same_plan_is_refused_and_names_the_first(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, cluster, wsclean={"size": "'512 512'", "niter": "2000"})
    first = start_imgpipe(cluster, tmp_path, cfg, *ms)
    try:
        lock = wait_for(lambda: (tmp_path / "imgpipe-runs").is_dir() and (run_dir(tmp_path) / "run.lock"),
                        30, "the run lock")
        wait_for(lambda: lock.exists() and lock.read_text().strip(), 30, "the lock holder")
        r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 2)
        assert f"already being run by imgpipe pid {first.pid} on " in r.err, r
        assert str(run_dir(tmp_path)) in r.err, r
        assert first.poll() is None  # the first run was not disturbed
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert rows_per_job(run_dir(tmp_path)) == {"0001": 1, "0002": 1}


def test_force_recomputes_and_a_plain_rerun_does_not(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, cluster)
    expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
    rdir = run_dir(tmp_path)
    prov = {m: provenance_of(tmp_path, m).read_text() for m in ms}
    mtime = {m: image_of(tmp_path, m).stat().st_mtime_ns for m in ms}

    time.sleep(1.1)  # the provenance times have a resolution of one second
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
    assert "all 2 job(s) done" in r.err, r
    assert rows_per_job(rdir) == {"0001": 1, "0002": 1}  # nothing was run
    assert all(provenance_of(tmp_path, m).read_text() == prov[m] for m in ms)
    assert all(image_of(tmp_path, m).stat().st_mtime_ns == mtime[m] for m in ms)

    # the run directory lost (say, removed to save space): the images and their records still say done
    shutil.rmtree(tmp_path / "imgpipe-runs")
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
    assert "nothing to do: all 2 job(s) done" in r.err, r
    assert all(provenance_of(tmp_path, m).read_text() == prov[m] for m in ms)
    assert all(image_of(tmp_path, m).stat().st_mtime_ns == mtime[m] for m in ms)
    rdir = run_dir(tmp_path)
    assert rows_per_job(rdir) == {}  # no engine was asked

    r = expect(imgpipe(cluster, tmp_path, cfg, *ms, "--force"), 0)
    assert "all 2 job(s) done" in r.err, r
    for m in ms:
        new = json.loads(provenance_of(tmp_path, m).read_text())
        assert new["start"] != json.loads(prov[m])["start"], "--force did not recompute"
        assert image_of(tmp_path, m).stat().st_mtime_ns != mtime[m]
    assert rows_per_job(rdir) == {"0001": 1, "0002": 1}  # the forced run's attempts


def test_env_file_missing_fails_clearly_and_tilde_is_expanded_on_the_node(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 1)
    missing = tmp_path / "no-such-env.sh"
    cfg = config(tmp_path, cluster, worker={"env_file": toml_str(str(missing))})
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 1)
    row = [ln for ln in r.err.splitlines() if ln.strip().startswith("0001")]
    assert row and "env_file could not be sourced" in row[0], r
    assert f"env_file {missing}: not found or not readable on" in r.err, r  # the log line, shown in the table
    assert not image_of(tmp_path, ms[0]).exists()
    from imgpipe import jobs_file
    from imgpipe.status import job_states
    plan = jobs_file.read(run_dir(tmp_path) / "jobs.txt")
    assert job_states(plan, run_dir(tmp_path))[0].failure == "env_file"

    # '~/...' is the node's home: sshd sets HOME from the password file; imgpipe's own HOME is elsewhere
    name = f".imgpipe-test-env-{os.getpid()}-{time.monotonic_ns()}.sh"
    node_file = Path.home() / name
    marker = tmp_path / "sourced-on"
    node_file.write_text(f'printf %s "$SSHCLUSTER_HOST" > {json.dumps(str(marker))}\n')
    try:
        other = tmp_path / "tilde"
        other.mkdir()
        ms = make_ms_set(ms_factory, other, 1)
        cfg = config(other, cluster, worker={"env_file": toml_str(f"~/{name}")})
        fake_home = other / "home"
        fake_home.mkdir()
        r = expect(imgpipe(cluster, other, cfg, *ms, env=env_for(cluster, other, HOME=str(fake_home))), 0)
        assert marker.read_text() in NODES
        assert image_of(other, ms[0]).exists()
    finally:
        node_file.unlink()


def test_max_time_stops_a_long_job(cluster, tmp_path, ms_factory):
    ms = make_ms_set(ms_factory, tmp_path, 1)
    cfg = config(tmp_path, cluster, worker={"max_time": "2"},
                 wsclean={"size": "'1024 1024'", "niter": "100000"})  # ~1 min without the limit
    r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 1)
    assert r.elapsed < 20, r
    row = [ln for ln in r.err.splitlines() if ln.strip().startswith("0001")]
    assert row and "max_time reached" in row[0], r
    assert "stopped: max_time of 2 s reached" in r.err, r
    rows = joblog(run_dir(tmp_path))
    assert [x["Exitval"] for x in rows] == ["124"], rows
    from imgpipe import jobs_file
    from imgpipe.status import job_states
    plan = jobs_file.read(run_dir(tmp_path) / "jobs.txt")
    assert job_states(plan, run_dir(tmp_path))[0].failure == "timeout"
    assert not job_processes(tmp_path), job_processes(tmp_path)
    assert not tmp_dirs_left(tmp_path)
    assert not provenance_of(tmp_path, ms[0]).exists()


def test_a_job_that_ends_0_without_its_images_is_a_failure_not_done(tmp_path, ms_factory):
    """The images are the truth, also against the engine's own word: a node whose cached job
    wrapper does nothing (here: one that only says `exit 0`) gives rows that succeeded; the jobs
    must come out failed, with a reason, and run for real once the node's wrapper is whole again."""
    import hashlib

    from imgpipe.run_dir import WRAPPER, bin_file

    cache = tmp_path / "node-cache"
    with SshCluster(tmp_path / "c", names=("node001",), remote_env={"XDG_CACHE_HOME": str(cache)}) as cluster:
        name = f"{WRAPPER}-{hashlib.sha256(bin_file(WRAPPER).read_bytes()).hexdigest()[:12]}"
        (cache / "imgpipe").mkdir(parents=True)
        (cache / "imgpipe" / name).write_text("exit 0\n")  # (a non-empty file is not installed again)
        ms = make_ms_set(ms_factory, tmp_path, 2)
        cfg = config(tmp_path, cluster, worker={"nodes": "'node001'"})
        r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 1)
        assert "job 0001: its attempt ended without an error, but its images are not there" in r.err, r
        assert "all 2 job(s) done" not in r.err and "0 of 2 job(s) done" in r.err, r
        assert [x["Exitval"] for x in joblog(run_dir(tmp_path))] == ["20", "20"]
        s = expect(imgpipe(cluster, tmp_path, "status", cwd_jobs(tmp_path)), 1)
        assert "images are not there" in s.out + s.err, s
        assert not any(image_of(tmp_path, m).exists() for m in ms)

        (cache / "imgpipe" / name).unlink()  # the next run's probe installs the real one
        r = expect(imgpipe(cluster, tmp_path, cfg, *ms), 0)
        assert "all 2 job(s) done" in r.err, r
        assert all(image_of(tmp_path, m).exists() and provenance_of(tmp_path, m).exists() for m in ms)


def cwd_jobs(tmp_path: Path) -> Path:
    return run_dir(tmp_path) / "jobs.txt"


def test_ctrl_c_stops_a_wsclean_run_by_a_site_script_and_its_children(cluster, tmp_path, ms_factory):
    """Sites often put WSClean behind a script (modules, apptainer) that runs it as a child, not with
    exec. Ctrl-C must stop the script and WSClean under it: the wrapper signals WSClean's process
    group, not one pid (a TERM to the script alone waited for WSClean, which ran on)."""
    site = tmp_path / "site-bin"
    site.mkdir()
    real = shutil.which("wsclean")
    (site / "wsclean").write_text(f"#!/bin/sh\n# a site's wrapper: WSClean as a child\n{shlex.quote(real)} \"$@\"\n")
    (site / "wsclean").chmod(0o755)
    env_file = tmp_path / "site.sh"
    env_file.write_text(f"export PATH={shlex.quote(str(site))}:$PATH\n")
    ms = make_ms_set(ms_factory, tmp_path, 2)
    cfg = config(tmp_path, cluster, worker={"max_concurrent": "1", "env_file": toml_str(str(env_file))},
                 wsclean={"size": "'512 512'", "niter": "100000"})
    proc = start_imgpipe(cluster, tmp_path, cfg, *ms)
    with killed_on_exit(proc):
        wait_for(lambda: len([p for p in job_processes(tmp_path) if p.split()[1] == real]) >= 2, 60,
                 "two WSCleans under their site script")
        assert any(p.split()[1:3] == ["/bin/sh", str(site / "wsclean")] for p in job_processes(tmp_path))
        out, err, _ = ctrl_c(proc, 60)
    assert proc.returncode == 130, err
    left = job_processes(tmp_path)
    assert not left, f"still running after Ctrl-C: {left}"
    assert not tmp_dirs_left(tmp_path), "temp dirs left behind"
