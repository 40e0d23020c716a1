"""The make engine, for real: a generated Makefile runs WSClean jobs on sshd 'nodes' on loopback."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from imgpipe.joblog import read_rows
from procs import ctrl_c, job_processes, killed_on_exit
from sshcluster import SshCluster, missing_tools

pytestmark = pytest.mark.skipif(
    bool(missing_tools()) or shutil.which("wsclean") is None or shutil.which("make") is None,
    reason=f"needs sshd, ssh, parallel, make and wsclean (missing: {missing_tools()})",
)

FAST = """
[wsclean]
name = 'img'
out-dir = '{out}/$ms_basename$'
size = '64 64'
scale = '5arcmin'
niter = 10
data-column = 'DATA'
no-update-model-required = true
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SshCluster(tmp_path_factory.mktemp("make-cluster"), names=("node001", "node002")).start() as c:
        yield c


def imgpipe(args, cwd: Path, cluster: SshCluster, timeout=240):
    env = cluster.env(IMGPIPE_PROGRESS_INTERVAL="0.5")
    return subprocess.run([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path, cluster: SshCluster, extra_worker: str = "") -> Path:
    cfg = tmp_path / "img.toml"
    cfg.write_text(
        f"[worker]\nnodes = 'node001,node002'\nmax_concurrent = 1\nssh = {cluster.ssh_command!r}\n{extra_worker}\n"
        + FAST.format(out=tmp_path / "images"),
        encoding="utf-8",
    )
    return cfg


def make_data(ms_factory, tmp_path: Path, n: int, pinned: bool = False) -> list[Path]:
    out = []
    for i in range(n):
        node = f"node00{1 + i % 2}"
        where = tmp_path / "net" / node / "data" if pinned else tmp_path / "data"
        out.append(ms_factory(f"SW01_T{i:03d}.MS", where=where, nchan=4, ntimes=4, nant=6))
    return out


def run_dir_of(tmp_path: Path) -> Path:
    (jobs,) = list((tmp_path / "imgpipe-runs").glob("*/jobs.txt"))
    return jobs.parent


def rows_per_job(run_dir: Path) -> dict[str, list]:
    out = defaultdict(list)
    for r in read_rows(run_dir / "joblog.tsv"):
        out[r.job_id].append(r)
    return out


def test_make_engine_images_every_ms_and_respects_node_slots(cluster, ms_factory, tmp_path):
    data = make_data(ms_factory, tmp_path, 4)
    cfg = write_config(tmp_path, cluster)
    r = imgpipe([cfg, *data, "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 0, r.stderr
    assert "all 4 job(s) done" in r.stderr
    for ms in data:
        assert (tmp_path / "images" / ms.name / "img-image.fits").is_file()
        assert (tmp_path / "images" / ms.name / "img.imgpipe.json").is_file()
    run_dir = run_dir_of(tmp_path)
    makefile = (run_dir / "Makefile").read_text()
    assert makefile.count("\ndone/") == 4
    assert sorted(p.name for p in (run_dir / "done").iterdir()) == ["0001", "0002", "0003", "0004"]
    rows = [r for rs in rows_per_job(run_dir).values() for r in rs]
    assert len(rows) == 4 and all(r.ok for r in rows)
    by_host = defaultdict(list)
    for row in rows:
        by_host[row.host].append((row.start, row.start + row.runtime))
    assert set(by_host) == {"node001", "node002"}  # unpinned jobs spread over both nodes
    for host, spans in by_host.items():  # max_concurrent = 1: never two at once on a node
        spans.sort()
        assert all(a[1] <= b[0] + 0.05 for a, b in zip(spans, spans[1:])), (host, spans)


def test_make_engine_pins_jobs_and_resumes_only_the_failed_one(cluster, ms_factory, tmp_path):
    data = make_data(ms_factory, tmp_path, 4, pinned=True)
    cfg = write_config(tmp_path, cluster,
                       "run_on_file_host = true\nrun_on_file_host_pattern = '/net/(node\\d{3})/'")
    assert imgpipe(["plan", cfg, *data], tmp_path, cluster).returncode == 0
    run_dir = run_dir_of(tmp_path)
    hidden = data[2].with_name("hidden.MS")
    data[2].rename(hidden)  # removed between plan and run: a run-time WSClean failure
    r = imgpipe(["run", run_dir / "jobs.txt", "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 1, r.stderr
    assert "0003" in r.stderr and "WSClean failed" in r.stderr and "make -C" in r.stderr
    rows = rows_per_job(run_dir)
    for ms, jid in zip(data, ["0001", "0002", "0003", "0004"]):
        assert rows[jid][-1].host == ms.parts[ms.parts.index("net") + 1]  # ran on the node holding it
    hidden.rename(data[2])
    r = imgpipe(["run", run_dir / "jobs.txt", "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 0, r.stderr
    rows = rows_per_job(run_dir)
    assert {jid: len(rs) for jid, rs in rows.items()} == {"0001": 1, "0002": 1, "0003": 2, "0004": 1}
    assert (tmp_path / "images" / data[2].name / "img-image.fits").is_file()


def test_make_by_hand_and_parallel_then_make_share_what_is_done(cluster, ms_factory, tmp_path):
    data = make_data(ms_factory, tmp_path, 2)
    cfg = write_config(tmp_path, cluster)
    assert imgpipe([cfg, *data], tmp_path, cluster).returncode == 0  # GNU parallel engine
    run_dir = run_dir_of(tmp_path)
    before = {p: p.stat().st_mtime for p in (tmp_path / "images").rglob("img-image.fits")}
    r = imgpipe([cfg, *data, "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr
    assert {jid: len(rs) for jid, rs in rows_per_job(run_dir).items()} == {"0001": 1, "0002": 1}
    assert {p: p.stat().st_mtime for p in before} == before  # nothing recomputed
    # the images of job 0002 removed: make remakes them, and only them
    shutil.rmtree(tmp_path / "images" / data[1].name)
    r = imgpipe([cfg, *data, "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 0, r.stderr
    assert {jid: len(rs) for jid, rs in rows_per_job(run_dir).items()} == {"0001": 1, "0002": 2}
    assert (tmp_path / "images" / data[1].name / "img-image.fits").is_file()
    assert sorted(p.name for p in (run_dir / "done").iterdir()) == ["0001", "0002"]
    # the Makefile works by hand: remove one done marker, make runs only that job, which finds it done
    (run_dir / "done" / "0002").unlink()
    env = cluster.env()
    proc = subprocess.run(["make", "-C", str(run_dir), "-k", "-j", "2"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "done" / "0002").exists()
    log = (run_dir / "logs" / "0002").read_text()
    assert "already done" in log  # the record stops a recomputation even by hand
    assert {p: p.stat().st_mtime for p in before if data[0].name in str(p)} == \
        {p: t for p, t in before.items() if data[0].name in str(p)}


def test_make_engine_ctrl_c_stops_every_job_and_a_rerun_finishes(cluster, ms_factory, tmp_path):
    import time

    data = make_data(ms_factory, tmp_path, 4)
    cfg = write_config(tmp_path, cluster)
    cfg.write_text(cfg.read_text().replace("size = '64 64'", "size = '512 512'").replace("niter = 10", "niter = 3000"))
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", str(cfg), *map(str, data), "--engine", "make"],
                            cwd=tmp_path, env=cluster.env(IMGPIPE_PROGRESS_INTERVAL="0.5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_on_exit(proc):
        deadline = time.time() + 60
        while len([p for p in job_processes(tmp_path) if p.split()[1] == "wsclean"]) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert time.time() < deadline, "two WSClean jobs never ran at once"
        out, err, elapsed = ctrl_c(proc, 60)
    assert proc.returncode == 130, err
    assert elapsed < 35, (elapsed, err)
    assert "stopped." in err
    time.sleep(0.5)
    assert not job_processes(tmp_path), f"still running after Ctrl-C: {job_processes(tmp_path)}"
    assert not list(tmp_path.rglob("*.imgpipe-tmp")), "temp dirs left behind"
    run_dir = run_dir_of(tmp_path)
    stopped = [jid for jid in ("0001", "0002", "0003", "0004") if not (run_dir / "done" / jid).exists()]
    assert stopped, "every job finished before the stop: the test proves nothing"
    r = imgpipe([cfg, *data, "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 0, r.stderr
    assert all(len(rows) == 1 for rows in rows_per_job(run_dir).values())  # nothing ran twice


def test_make_by_hand_refuses_its_jobs_while_imgpipe_runs_the_plan(cluster, ms_factory, tmp_path):
    """Two writers of one run directory: a by-hand make's recipes take a share of the run's lock,
    and refuse while imgpipe holds it."""
    import time

    data = make_data(ms_factory, tmp_path, 4)
    cfg = write_config(tmp_path, cluster)
    cfg.write_text(cfg.read_text().replace("size = '64 64'", "size = '512 512'").replace("niter = 10", "niter = 3000"))
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", str(cfg), *map(str, data), "--engine", "make"],
                            cwd=tmp_path, env=cluster.env(IMGPIPE_PROGRESS_INTERVAL="0.5"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(p.split()[1] == "wsclean" for p in job_processes(tmp_path)):
            time.sleep(0.1)
        run_dir = run_dir_of(tmp_path)
        by_hand = subprocess.run(["make", "-C", str(run_dir), "-k", "-j", "2", "done/0004"], env=cluster.env(),
                                 capture_output=True, text=True, timeout=60)
        assert by_hand.returncode != 0, by_hand.stderr
        assert "job 0004 not started: this run is going on (imgpipe pid " in by_hand.stderr, by_hand.stderr
    finally:
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert {jid: len(rs) for jid, rs in rows_per_job(run_dir).items()} == {f"000{i}": 1 for i in range(1, 5)}


def test_hostile_paths_survive_the_make_engine_and_the_ssh_hop(cluster, ms_factory, tmp_path):
    """The names the parallel engine's test uses (quotes, $(...), '@', '%40', '%25'), through make's
    recipes and ssh: every image where the config says, each record naming its own MS."""
    from test_engine_parallel import HOSTILE, NASTY_DIR

    data = [ms_factory(name, where=tmp_path / NASTY_DIR, nchan=4, ntimes=4, nant=6) for name in HOSTILE]
    cfg = write_config(tmp_path, cluster)
    r = imgpipe([cfg, *data, "--engine", "make"], tmp_path, cluster)
    assert r.returncode == 0, r.stderr
    for ms in data:
        record = json.loads((tmp_path / "images" / ms.name / "img.imgpipe.json").read_text(encoding="utf-8"))
        assert shlex.split(record["command"])[-1] == str(ms), record["command"]
    assert not [p for p in tmp_path.rglob("*") if p.name == "PWNED"]
