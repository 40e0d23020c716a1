"""Bad inputs, as a careless or hostile user gives them: each is one line of a table.

Every case must end in a clear error (exit 2) that names what is at fault and how to
fix it, with no traceback and nothing written; or, for what only shows at run time, in
the right failure class. The planner cases run ``imgpipe plan`` in-process on real MSs;
the run-time cases run real WSClean on this machine (nodes = 'localhost').

To add a case: a line in PLAN_CASES (config lines, inputs, words the message must hold).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs

BASE = "[wsclean]\nname = 'img'\ndata-column = 'DATA'\nsize = '64 64'\nscale = '5arcmin'\n"


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def config(tmp_path: Path, text: str, name: str = "img.toml") -> Path:
    """BASE, with the case's lines: its [wsclean] keys replace BASE's."""
    worker, _, ws = text.partition("[wsclean]\n")
    keys = {line.split("=")[0].strip() for line in ws.splitlines() if "=" in line}
    base = [line for line in BASE.splitlines()[1:] if line.split("=")[0].strip() not in keys]
    path = tmp_path / name
    path.write_text(worker + "[wsclean]\n" + "\n".join(base) + "\n" + ws, encoding="utf-8")
    return path


# (id, config lines, words the error must hold); the input is one good MS unless said otherwise
PLAN_CASES = [
    # [wsclean] values WSClean would refuse (or take, and fail on when imaging)
    ("scale-word", "[wsclean]\nscale = 'abc'\n", ["[wsclean] scale", "-scale takes an angle", "'abc'", "e.g."]),
    ("scale-unit", "[wsclean]\nscale = '3parsec'\n", ["[wsclean] scale", "an angle", "1amin"]),
    ("niter-negative", "[wsclean]\nniter = -5\n", ["[wsclean] niter", "a whole number, 0 or more", "-5"]),
    ("niter-nan", "[wsclean]\nniter = nan\n", ["[wsclean] niter", "a whole number", "nan"]),
    ("niter-huge", "[wsclean]\nniter = 1e300\n", ["[wsclean] niter", "a whole number"]),
    ("size-negative", "[wsclean]\nsize = '-128 0'\n", ["[wsclean] size", "a whole number, 1 or more", "'-128'"]),
    ("weight-briggs", "[wsclean]\nweight = 'briggs'\n", ["[wsclean] weight", "briggs and its robustness",
                                                          "'briggs 0'"]),
    ("threshold", "[wsclean]\nthreshold = 'lots'\n", ["[wsclean] threshold", "a flux density", "1mJy"]),
    ("grid-mode", "[wsclean]\ngrid-mode = 'fast'\n", ["[wsclean] grid-mode", "one of kb, nn"]),
    ("shift", "[wsclean]\nshift = '187.5deg 60deg'\n", ["[wsclean] shift", "a right ascension such as 12h30m00s"]),
    ("spws", "[wsclean]\nspws = '0,a'\n", ["[wsclean] spws", "comma-separated list"]),
    ("gain", "[wsclean]\ngain = -1\n", ["[wsclean] gain", "a number above 0"]),
    ("padding", "[wsclean]\npadding = 0.5\n", ["[wsclean] padding", "a number, 1 or more"]),
    # [worker] values
    ("max_time-nan", "[worker]\nmax_time = nan\n", ["[worker] max_time", "a number of seconds", "got nan"]),
    ("max_time-inf", "[worker]\nmax_time = inf\n", ["[worker] max_time", "got inf"]),
    ("max_concurrent-huge", "[worker]\nmax_concurrent = 1000000000000000000\n",
     ["[worker] max_concurrent", "from 1 to 1000"]),
    ("max_concurrent-float", "[worker]\nmax_concurrent = 1e18\n", ["[worker] max_concurrent", "a whole number"]),
    ("retries-huge", "[worker]\nretries = 100000\n", ["[worker] retries", "from 0 to 100"]),
    ("nodes-option", "[worker]\nnodes = '-Efoo'\n", ["[worker] nodes", "'-Efoo' is not a valid host name",
                                                     "starts with '-'"]),
    ("nodes-endless", "[worker]\nnodes = 'node[1-9999999]'\n", ["[worker] nodes", "more than 10,000 hosts"]),
    ("nodes-space", "[worker]\nnodes = 'node1 node2'\n", ["[worker] nodes", "contains a space"]),
    ("nodes-slurm-and-more", "[worker]\nnodes = 'slurm,node1'\n", ["[worker] nodes", "cannot be listed with"]),
    ("niter-float", "[wsclean]\nniter = 10.0\n", ["[wsclean] niter", "a whole number, 0 or more; got 10.0\n"]),
    ("slurm_options-quote", "[worker]\nslurm_options = '--partition=\"x'\n",
     ["[worker] slurm_options", "cannot read slurm_options", "No closing quotation"]),
    ("resources-mem", "[worker.resources.heavy]\nmem = 'lots'\n", ["[worker] resources.heavy mem",
                                                                   "an amount of memory per job"]),
    # where the images go
    ("name-escapes", "[wsclean]\nname = '../../../../escaped'\n",
     ["[wsclean] name", "puts the images outside out-dir", "no '..'"]),
    ("out-dir-file", "[wsclean]\nout-dir = '{tmp}/a-file'\n", ["cannot be made", "a-file is a file"]),
    ("out-dir-under-file", "[wsclean]\nout-dir = '{tmp}/a-file/images'\n", ["cannot be made", "a-file is a file"]),
    ("temp-dir-file", "[wsclean]\ntemp-dir = '{tmp}/a-file'\n", ["the temp-dir", "a-file is a file"]),
    # (the MSs are known directories: what is inside one is still looked at)
    ("out-dir-in-ms-under-file", "[wsclean]\nout-dir = '$ms_in$/table.dat/images'\n",
     ["cannot be made", "a.MS/table.dat is a file"]),
]


@pytest.mark.parametrize("case, text, parts", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
@pytest.mark.parametrize("check", [False, True], ids=["plan", "plan-check"])
def test_a_bad_value_is_a_plan_error(run_cli, ms_factory, tmp_path, case, text, parts, check):
    ms = ms_factory("a.MS")
    (tmp_path / "a-file").write_text("not a directory\n")
    cfg = config(tmp_path, text.replace("{tmp}", str(tmp_path)))
    before = tree(tmp_path)
    r = run_cli("plan", cfg, ms, *(["--check"] if check else []))
    assert r.code == 2, r
    assert r.err.startswith("imgpipe: error: ") and "Traceback" not in r.err, r
    for part in parts:
        assert part in r.err, (part, r.err)
    assert tree(tmp_path) == before  # nothing written
    assert not (tmp_path.parent / "escaped").exists()


def empty_ms(ms_factory, name: str) -> Path:
    """A real MS whose SPECTRAL_WINDOW table has no row (WSClean 3.1 segfaults on it)."""
    import casacore.tables as ct

    ms = ms_factory(name)
    with ct.table(str(ms / "SPECTRAL_WINDOW"), readonly=False, ack=False) as spw:
        spw.removerows(list(range(spw.nrows())))
    return ms


@pytest.mark.parametrize("channels", ["channels-out = 'all'\n", "channels-out = 'every 2'\n", "channels-out = 4\n",
                                      ""])
def test_an_ms_without_a_spectral_window_is_a_plan_error(run_cli, ms_factory, tmp_path, channels):
    ms = empty_ms(ms_factory, "empty.MS")
    r = run_cli("plan", config(tmp_path, "[wsclean]\n" + channels), ms)
    assert r.code == 2, r
    assert f"{ms}: has no spectral window" in r.err and "nothing WSClean can image" in r.err, r
    assert "use at most 0" not in r.err and "Traceback" not in r.err


def test_a_config_that_is_no_file_never_hangs_nor_fills_memory(run_imgpipe, ms_factory, tmp_path):
    ms = ms_factory("a.MS")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, said in (("/dev/zero", "is not a regular file"), (fifo, "is not a regular file"),
                       (tmp_path, "is a directory")):
        r = run_imgpipe("plan", path, ms, timeout=30)
        assert r.code == 2 and said in r.err and "Traceback" not in r.err, r
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)
    r = run_imgpipe("plan", big, ms, timeout=30)
    assert r.code == 2 and "not a config file (those are a few KB)" in r.err, r


def test_a_config_with_a_byte_order_mark_says_so(run_cli, ms_factory, tmp_path):
    cfg = tmp_path / "bom.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    r = run_cli("plan", cfg, ms_factory("a.MS"))
    assert r.code == 2 and "byte-order mark (BOM)" in r.err and "without BOM" in r.err, r


def test_a_default_settings_chain_too_deep(run_cli, ms_factory, tmp_path):
    for i in range(1500):
        (tmp_path / f"d{i}.toml").write_text(f"default_settings = 'd{i + 1}.toml'\n")
    (tmp_path / "d1500.toml").write_text("[worker]\nmax_concurrent = 2\n")
    cfg = tmp_path / "img.toml"
    cfg.write_text("default_settings = 'd0.toml'\n" + BASE)
    r = run_cli("plan", cfg, ms_factory("a.MS"))
    assert r.code == 2 and "default_settings lead through more than 50 files" in r.err, r


def test_an_ms_path_that_is_not_utf8(run_imgpipe, ms_factory, tmp_path):
    name = os.fsdecode(b"bad\xff\xfe.MS")
    ms = ms_factory(name)
    r = run_imgpipe("plan", config(tmp_path, ""), ms)
    assert r.code == 2 and "is not valid UTF-8" in r.err and "bad\\xff\\xfe.MS" in r.err, r
    assert "Traceback" not in r.err


def test_ms_paths_that_are_not_there_say_why(run_cli, ms_factory, tmp_path):
    loop = tmp_path / "loop.MS"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.MS"
    dangling.symlink_to(tmp_path / "gone.MS")
    r = run_cli("plan", config(tmp_path, ""), loop, dangling, tmp_path / "missing.MS")
    assert r.code == 2, r
    assert f"{loop}: is a symbolic link that leads nowhere" in r.err, r
    assert f"{dangling}: is a symbolic link that leads nowhere" in r.err, r
    assert f"{tmp_path / 'missing.MS'}: does not exist" in r.err, r


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_an_ms_that_cannot_be_read_says_permission_denied(tmp_path, ms_cache):
    """As another user (root reads everything): the MS exists but its directory is not readable."""
    here = Path(f"/tmp/imgpipe-perm-{os.getpid()}")
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(mode=0o755)
    try:
        ms = here / "locked.MS"
        shutil.copytree(ms_cache(), ms)
        ms.chmod(0o700)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from imgpipe.inputs import ms_problem; "
                "print(ms_problem(sys.argv[2]))")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                            code, str(Path(__file__).resolve().parents[1]), str(ms)],
                           capture_output=True, text=True, timeout=30)
        if r.returncode and "ModuleNotFoundError" in r.stderr:
            pytest.skip(f"the system python cannot import imgpipe: {r.stderr[-200:]}")
        assert r.stdout.strip() == f"{ms}: is not readable (permission denied)", r
    finally:
        shutil.rmtree(here, ignore_errors=True)


def test_jobs_file_at_a_directory(run_cli, ms_factory, tmp_path):
    r = run_cli("plan", config(tmp_path, ""), ms_factory("a.MS"), "--jobs-file", "/tmp")
    assert r.code == 2, r
    assert "/tmp: cannot write the jobs file: this is a directory" in r.err and "/tmp/jobs.txt" in r.err, r


def test_making_and_planning_an_ms_print_no_casacore_warnings(run_imgpipe, tmp_path, capfd):
    from msmaker import make_ms

    ms = make_ms(str(tmp_path / "fresh.MS"))
    made = capfd.readouterr()
    assert "SEVERE" not in made.err and "WARN" not in made.err, made.err
    r = run_imgpipe("plan", config(tmp_path, ""), ms)
    assert r.code == 0 and "SEVERE" not in r.err and "WARN" not in r.err, r


# ---------------------------------------------------------------- at run time

LOCAL = "[worker]\nnodes = 'localhost'\nmax_concurrent = 1\n"


def run(tmp_path: Path, cfg: Path, ms, *extra, timeout: float = 120):
    env = {**os.environ, "IMGPIPE_PROGRESS_INTERVAL": "0.5", "PARALLEL_HOME": str(tmp_path / "ph")}
    return subprocess.run([sys.executable, "-m", "imgpipe.cli", "image", str(cfg), str(ms), *extra], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def status_of(tmp_path: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "imgpipe.cli", "status", "--json"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode in (0, 1, 3), r.stderr  # (all done, some failed, not all done)
    return json.loads(r.stdout)["jobs"][0]


@needs("wsclean")
@needs("parallel")
@pytest.mark.parametrize("env_file, want, said", [
    # set -e in the env_file: it must not turn WSClean's own failure into a connection failure
    ("set -e\nset -u\nexport IMGPIPE_TEST_VAR=1\n", "wsclean", "WSClean failed with exit status 255"),
    ("echo preparing\nexit 3\n", "env_file", "sourcing it returned status 3"),
    ("false\n", "env_file", "sourcing it returned status 1"),
    ("sleep 100\n", "env_file", "still running after 2 s"),
])
def test_an_env_file_fails_as_an_env_file_whatever_it_does(tmp_path, ms_factory, env_file, want, said):
    ms = ms_factory("a.MS")
    script = tmp_path / "env.sh"
    script.write_text(env_file)
    cfg = config(tmp_path, LOCAL + f"env_file = '{script}'\nmax_time = 2\n")
    if want == "wsclean":  # WSClean itself fails (exit 255): the mask it is given is not there
        cfg = config(tmp_path, LOCAL + f"env_file = '{script}'\n[wsclean]\nfits-mask = '{tmp_path}/none.fits'\n"
                     "niter = 10\n")
    t0 = time.time()
    r = run(tmp_path, cfg, ms, timeout=60)
    assert r.returncode == 1, r.stderr
    assert time.time() - t0 < 30, r.stderr
    job = status_of(tmp_path)
    assert job["failure"] == want, (job, r.stderr)
    assert said in r.stderr, r.stderr
    assert not list(tmp_path.rglob("*.imgpipe-tmp")) and not list(tmp_path.rglob("*.imgpipe-claim"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a tmpfs)")
@needs("wsclean")
@needs("parallel")
def test_a_run_directory_on_a_full_disk_is_one_clear_error(run_cli, tmp_path, ms_factory):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        ms = ms_factory("a.MS")
        jobs = disk / "run" / "jobs.txt"
        cfg = config(tmp_path, LOCAL)
        assert run_cli("plan", cfg, ms, "--jobs-file", jobs).code == 0
        subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=4k"], capture_output=True)
        r = subprocess.run([sys.executable, "-m", "imgpipe.cli", "run", str(jobs)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r
        assert "No space left on device" in r.stderr and str(jobs.parent) in r.stderr, r.stderr
        assert "df -h" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not subprocess.run(["pgrep", "-f", f"imgpipe-job.*{tmp_path}"], capture_output=True).stdout
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@needs("wsclean")
@needs("parallel")
def test_a_damaged_job_log_never_crashes_status_or_report(tmp_path, ms_factory):
    ms = ms_factory("a.MS")
    cfg = config(tmp_path, LOCAL)
    r = run(tmp_path, cfg, ms)
    assert r.returncode == 0, r.stderr
    (joblog,) = tmp_path.glob("imgpipe-runs/*/joblog.tsv")
    good = joblog.read_text().splitlines()[1]
    fields = good.split("\t")
    for start in ("nan", "1e400", "-5", "inf", "garbage"):
        joblog.write_text(joblog.read_text() + "\t".join([fields[0], fields[1], start, *fields[3:]]) + "\n")
    joblog.write_text(joblog.read_text() + "half a line\twithout\n\x00\x01binary\n")
    for args in (["status"], ["status", "--json"], ["report"]):
        r = subprocess.run([sys.executable, "-m", "imgpipe.cli", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
    assert status_of(tmp_path)["state"] == "done"
