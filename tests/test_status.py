"""`imgpipe status` on real runs: every state (done, failed, not started, running), table and JSON.

The run (``make_run``, shared with test_report.py) is real: GNU parallel runs WSClean on
this machine over tiny casacore MSs, with nodes 'localhost' and 'node999':

- SW01_T001.MS and a hostile-named MS are imaged (done);
- SW01_T002.MS is deleted after planning, so WSClean fails on it (failed);
- SW01_T004.MS lies under data/node999/ and its job is pinned there (run_on_file_host),
  but node999 cannot be reached: our ssh config sends it to a closed loopback port, ssh
  is refused at once, and imgpipe reports that node and does not run its job (not started).

The running state is caught during a run of a long WSClean job, which is then stopped
with SIGINT as a user would (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import needs

HOSTILE = 'evil"><img src=x onerror=alert`1`>&amp;.MS'  # no '(' nor '[': CFITSIO would refuse the image name

pytestmark = [needs("wsclean"), needs("parallel"), needs("ssh")]


@dataclass
class RealRun:
    root: Path
    run_dir: Path
    jobs_file: Path
    env: dict
    ids: dict = field(default_factory=dict)  # role -> job id: done, hostile, failed, not_started
    code: int = 0
    output: str = ""


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def imgpipe(*args, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_env(root: Path) -> dict:
    env = {**os.environ, "PARALLEL_HOME": str(root / "parallel-home"), "IMGPIPE_PROGRESS_INTERVAL": "1"}
    env.pop("IMGPIPE_SSH", None)
    return env


def write_config(root: Path, *, nodes: str, wsclean: dict, pinned: bool) -> Path:
    ssh_config = root / "ssh_config"
    ssh_config.write_text(f"Host node999\n  HostName 127.0.0.1\n  Port {closed_port()}\n")
    worker = {"nodes": nodes, "max_concurrent": 2, "ssh": f"ssh -F {ssh_config}"}
    if pinned:
        worker.update(run_on_file_host=True, run_on_file_host_pattern=r"/data/(localhost|node\d+)/")
    ws = {"name": "img", "out-dir": f"{root}/images/$ms_basename$", "data-column": "DATA",
          "no-update-model-required": True, **wsclean}
    lines = ["[worker]"] + [f"{k} = {json.dumps(v)}" for k, v in worker.items()]
    lines += ["[wsclean]"] + [f"{k} = {json.dumps(v)}" for k, v in ws.items()]
    path = root / "img.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")  # JSON scalars are valid TOML values
    return path


def make_run(root: Path, ms_cache) -> RealRun:
    """Plan 4 jobs, break one, run for real: 2 done, 1 failed, 1 not started."""
    names = {"done": ("localhost", "SW01_T001.MS"), "hostile": ("localhost", HOSTILE),
             "failed": ("localhost", "SW01_T002.MS"), "not_started": ("node999", "SW01_T004.MS")}
    paths = {}
    for role, (node, name) in names.items():
        dest = root / "data" / node / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ms_cache(), dest)
        paths[role] = dest
    config = write_config(root, nodes="localhost,node999", pinned=True,
                          wsclean={"size": "64 64", "scale": "5arcmin", "niter": 10, "channels-out": 2})
    env = run_env(root)
    jobs_file = root / "run" / "jobs.txt"
    p = imgpipe("plan", config, *paths.values(), "--jobs-file", jobs_file, "--json", cwd=root, env=env)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    by_ms = {job["ms"][0]: job["id"] for job in plan["jobs"]}
    run = RealRun(root, jobs_file.parent, jobs_file, env, {role: by_ms[str(path)] for role, path in paths.items()})
    shutil.rmtree(paths["failed"])  # gone before it is imaged: WSClean fails on it
    r = imgpipe("run", jobs_file, cwd=root, env=env)
    run.code, run.output = r.returncode, r.stdout + r.stderr
    return run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, ms_cache) -> RealRun:
    return make_run(tmp_path_factory.mktemp("real-run"), ms_cache)


def status_json(run: RealRun) -> dict:
    r = imgpipe("status", run.run_dir, "--json", cwd=run.root, env=run.env)
    assert r.returncode == 1, r.stderr  # a job failed: a script can tell
    doc = json.loads(r.stdout)
    assert doc["exit_status"] == 1
    return doc


def test_the_run_itself_went_as_planned(real_run):
    assert real_run.code == 1, real_run.output  # some jobs failed or could not run
    assert "node node999 cannot be reached" in real_run.output
    assert "Connection refused" in real_run.output


def test_status_json_every_state(real_run):
    doc = status_json(real_run)
    assert doc["run_dir"] == str(real_run.run_dir.resolve())
    assert doc["counts"] == {"done": 2, "suspect": 0, "failed": 1, "running": 0, "stopped": 0, "not started": 1,
                             "total": 4}
    jobs = {j["id"]: j for j in doc["jobs"]}
    ids = real_run.ids
    for role in ("done", "hostile"):
        j = jobs[ids[role]]
        assert j["state"] == "done" and j["host"] == "localhost" and j["exitval"] == 0
        assert j["failure"] is None and j["why"] is None
        assert j["runtime"] > 0 and j["start"] > 0
        assert Path(j["log"]).is_file()
        assert Path(j["name"] + ".imgpipe.json").is_file()  # the provenance record
    assert os.path.basename(jobs[ids["hostile"]]["ms"][0]) == HOSTILE
    failed = jobs[ids["failed"]]
    assert failed["state"] == "failed" and failed["host"] == "localhost"
    assert failed["exitval"] == 10 and failed["failure"] == "wsclean" and failed["why"].startswith("WSClean failed: Table ")
    assert failed["why"].endswith("SW01_T002.MS does not exist")  # WSClean's own words
    assert "does not exist" in Path(failed["log"]).read_text()
    ns = jobs[ids["not_started"]]
    assert ns["state"] == "not started" and ns["planned_host"] == "node999"
    assert ns["host"] is None and ns["start"] is None and ns["runtime"] is None and ns["log"] is None
    assert doc["hosts"]["localhost"]["done"] == 2 and doc["hosts"]["localhost"]["failed"] == 1
    assert "node999" not in doc["hosts"]


def test_status_table_every_state(real_run):
    r = imgpipe("status", real_run.jobs_file, cwd=real_run.root, env=real_run.env)
    assert r.returncode == 1, r.stderr  # a job failed
    lines = r.stdout.splitlines()
    assert lines[0] == f"run {real_run.run_dir.resolve()}"
    rows = {ln.split()[0]: ln for ln in lines[2:] if ln[:4].isdigit()}
    ids = real_run.ids
    assert len(rows) == 4
    order = [ln.split()[0] for ln in lines[2:] if ln[:4].isdigit()]
    assert order[:2] == [ids["failed"], ids["not_started"]]  # failures first, then what did not run
    assert rows[ids["failed"]].split()[1:3] == ["localhost", "failed"]
    assert "WSClean failed" in rows[ids["failed"]] and f"logs/{ids['failed']}" in rows[ids["failed"]]
    assert "SW01_T002.MS does not exist" in rows[ids["failed"]]  # WSClean's own words
    assert " SW01_T002.MS " in rows[ids["failed"]] and "images/SW01_T002.MS/img" in rows[ids["failed"]]
    assert rows[ids["not_started"]].split()[1:4] == ["node999", "not", "started"]
    for role in ("done", "hostile"):
        assert rows[ids[role]].split()[1:3] == ["localhost", "done"]
    assert any(" ".join(ln.split()).startswith("host localhost 2 done, 1 failed, busy ") for ln in lines)
    assert lines[-1] == "total: 2/4 done, 1 failed, 0 running, 1 not started"


def test_status_finds_the_latest_run_from_its_directory(real_run):
    """No argument: the most recent run under ./imgpipe-runs."""
    here = real_run.root / "elsewhere"
    shutil.rmtree(here, ignore_errors=True)
    (here / "imgpipe-runs").mkdir(parents=True)
    shutil.copytree(real_run.run_dir, here / "imgpipe-runs" / "img-copy")
    r = imgpipe("status", "--json", cwd=here, env=real_run.env)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["counts"]["done"] == 2


def test_status_running_then_stopped(tmp_path, ms_cache):
    """A long WSClean job shows as running (table, JSON and report) while it runs; Ctrl-C stops it."""
    ms = tmp_path / "data" / "localhost" / "SW01_T009.MS"
    shutil.copytree(ms_cache(), ms)
    config = write_config(tmp_path, nodes="localhost", pinned=False,
                          wsclean={"size": "1024 1024", "scale": "1arcmin", "niter": 1000000})
    env = run_env(tmp_path)
    jobs_file = tmp_path / "run" / "jobs.txt"
    assert imgpipe("plan", config, ms, "--jobs-file", jobs_file, cwd=tmp_path, env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "run", str(jobs_file)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        doc = None
        while time.time() < deadline:
            doc = json.loads(imgpipe("status", jobs_file.parent, "--json", cwd=tmp_path, env=env).stdout)
            if doc["counts"]["running"]:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert doc and doc["counts"] == {"done": 0, "suspect": 0, "failed": 0, "running": 1, "stopped": 0,
                                         "not started": 0, "total": 1}, doc
        assert doc["exit_status"] == 3  # running: not done yet
        assert doc["jobs"][0]["elapsed"] > 0
        job = doc["jobs"][0]
        assert job["state"] == "running" and job["start"] > time.time() - 60 and Path(job["log"]).is_file()
        assert job["runtime"] is None and job["exitval"] is None
        table = imgpipe("status", jobs_file.parent, cwd=tmp_path, env=env).stdout
        row = next(ln for ln in table.splitlines() if ln.startswith(job["id"] + " "))
        assert row.split()[1:3] == ["localhost", "running"]  # an unpinned job: its node, from its log
        assert row.split()[5] != "-" and row.split()[5].startswith("0:00:")  # its elapsed time
        assert table.splitlines()[-1] == "total: 0/1 done, 0 failed, 1 running, 0 not started"

        # the report of a run in progress: the running job is a (blue) bar of its own on the timeline
        from imgpipe.report import write_report
        from test_report import parse, svg_bars

        page = parse(write_report(jobs_file))
        bars = svg_bars(page)
        assert [b.get("class") for b in bars] == ["bar running"]
        title = "".join(page.find(".//{http://www.w3.org/2000/svg}g[@data-job='%s']" % job["id"]).itertext())
        assert "host localhost" in title and "running" in title  # its node, read from the wrapper's first line
        assert page.find(".//*[@id='summary']//*[@data-state='running']/b").text == "1"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped" in err
    doc = json.loads(imgpipe("status", jobs_file.parent, "--json", cwd=tmp_path, env=env).stdout)
    assert doc["jobs"][0]["state"] == "stopped"  # by the user: not failed, and it runs again on resume
    assert doc["jobs"][0]["failure"] == "stopped" and doc["exit_status"] == 3


def test_runs_lists_every_run_here_newest_activity_first(tmp_path, ms_cache):
    data = tmp_path / "data" / "localhost"
    data.mkdir(parents=True)
    ms = []
    for i in range(3):
        ms.append(data / f"SW01_T00{i}.MS")
        shutil.copytree(ms_cache(), ms[-1])
    env = run_env(tmp_path)
    configs = []
    for i, size in enumerate(("64 64", "96 96", "128 128")):
        cfg = write_config(tmp_path, nodes="localhost", pinned=False,
                           wsclean={"size": size, "scale": "5arcmin", "name": f"img{i}"})
        configs.append(cfg.rename(tmp_path / f"cfg{i}.toml"))
    assert imgpipe(configs[0], *ms, cwd=tmp_path, env=env).returncode == 0  # run: 3 jobs done
    time.sleep(1.1)
    assert imgpipe("plan", configs[1], ms[0], cwd=tmp_path, env=env).returncode == 0  # planned only
    time.sleep(1.1)
    assert imgpipe("plan", configs[2], *ms[:2], cwd=tmp_path, env=env).returncode == 0  # the newest
    assert imgpipe(configs[1], ms[0], cwd=tmp_path, env=env).returncode == 0  # the plan of cfg1 run too
    r = imgpipe("runs", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [ln for ln in lines[1:-1] if ln.strip()]
    assert [ln.split()[8] for ln in rows] == ["cfg1.toml", "cfg0.toml"], r.stdout  # runs only, newest first
    assert len({ln.index(" /") if " /" in ln else ln.rindex(" ") for ln in lines[:-1]}) == 1, r.stdout  # aligned
    assert rows[1].split()[2:8] == ["3", "3", "0", "0", "0", "0"], r.stdout  # jobs, done, suspect, failed, running, to run
    assert "3 MSs: SW01_T000.MS .. SW01_T002.MS" in rows[1], r.stdout
    assert lines[-1].startswith("1 plan(s) here never run: ") and "cfg2-" in lines[-1], r.stdout
    doc = json.loads(imgpipe("runs", "--json", cwd=tmp_path, env=env).stdout)
    assert [os.path.basename(x["config"]) for x in doc["runs"]] == ["cfg1.toml", "cfg0.toml"]
    assert len(doc["planned"]) == 1 and "cfg2-" in doc["planned"][0]
    assert doc["runs"][0]["counts"] == {"done": 1, "suspect": 0, "failed": 0, "running": 0, "stopped": 0,
                                              "not started": 0, "total": 1}
    # status with no argument: the newest, and it says there are others
    r = imgpipe("status", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "(the latest of 3 runs here: `imgpipe runs` lists them)" in r.stdout, r.stdout
    assert "cfg1-" in r.stdout.splitlines()[0]  # (cfg1 ran last)


@pytest.mark.parametrize("no_color", [None, "1"])
def test_states_are_coloured_on_a_terminal_only_and_never_with_no_color(real_run, no_color, tmp_path):
    """On a real terminal: failed red, done green (NO_COLOR: none); in a pipe: never."""
    import os
    import pty
    import sys

    env = {**os.environ, "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    if no_color:
        env["NO_COLOR"] = no_color
    argv = [sys.executable, "-m", "imgpipe.cli", "status", str(real_run.run_dir)]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    text = b"".join(chunks).decode()
    if no_color:
        assert "\x1b[" not in text, text
    else:
        assert "\x1b[31mfailed" in text and "\x1b[32mdone" in text, text
    piped = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "\x1b[" not in piped.stdout and "failed" in piped.stdout


def test_this_machine_by_its_own_name_is_shown_by_that_name(tmp_path, ms_cache):
    """--nodes vm (this machine's name): status and the report say vm, not localhost."""
    import socket

    me = socket.gethostname()
    ms = tmp_path / "data" / "SW01_T001.MS"
    ms.parent.mkdir()
    shutil.copytree(ms_cache(), ms)
    config = write_config(tmp_path, nodes=me, pinned=False,
                          wsclean={"size": "64 64", "scale": "5arcmin", "niter": 10})
    env = run_env(tmp_path)
    r = imgpipe(config, ms, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(imgpipe("status", "--json", cwd=tmp_path, env=env).stdout)
    assert [j["host"] for j in doc["jobs"]] == [me], doc["jobs"]
