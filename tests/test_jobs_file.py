"""The jobs file: format, determinism, location, round trip, and what planning writes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from imgpipe import jobs_file
from imgpipe.errors import ImgpipeError

CONFIG = """
[worker]
nodes = 'node[001-002]'
dry_run = true
run_on_file_host = true
run_on_file_host_pattern = '/net/(node\\d{3})/'

[wsclean]
name = 'img'
data-column = false
size = '64 64'
scale = '1amin'
channels-out = 'all'
"""


@pytest.fixture
def two_ms(ms_factory, tmp_path):
    a = ms_factory("SW01.MS", where=tmp_path / "net" / "node001", nchan=12)
    b = ms_factory("SW02.MS", where=tmp_path / "net" / "node002", nchan=12, nspw=2)
    return a, b


def tree(root: Path) -> set[str]:
    """Every file and directory under root, except inside the MSs (casacore may touch lock files)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.endswith(".MS")]
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def job_lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln and not ln.startswith("#")]


def test_one_job_per_line_id_host_command(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    jf = tmp_path / "jobs.txt"
    r = run_cli("plan", cfg, *two_ms, "--jobs-file", jf)
    assert r.code == 0, r
    text = jf.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = sorted(job_lines(text))  # (by id: the file lists them longest first)
    assert len(lines) == 2
    for line, host, ms in zip(lines, ["node001", "node002"], two_ms):
        job_id, h, command = line.split("\t")
        assert h == host
        argv = shlex.split(command)
        assert argv[0] == "wsclean" and argv[-1] == str(ms)
    assert [ln.split("\t")[0] for ln in lines] == ["0001", "0002"]


def test_any_host_is_a_star(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    jf = tmp_path / "jobs.txt"
    assert run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", jf).code == 0
    (line,) = job_lines(jf.read_text())
    assert line.split("\t")[1] == "*"


def test_header_has_the_config_path_and_the_digest(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    jf = tmp_path / "jobs.txt"
    r = run_cli("plan", cfg, *two_ms, "--jobs-file", jf, "--json")
    assert r.code == 0, r
    digest = json.loads(r.out)["digest"]
    header = [ln for ln in jf.read_text().split("\n") if ln.startswith("#")]
    assert header[0] == jobs_file.FORMAT_LINE
    assert f"# config: {cfg}" in header
    assert f"# plan-digest: {digest}" in header
    assert len(digest) == 64


def test_same_inputs_give_a_byte_identical_file(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    first, second = tmp_path / "1.txt", tmp_path / "2.txt"
    assert run_cli("plan", cfg, *two_ms, "--jobs-file", first).code == 0
    assert run_cli("plan", cfg, *two_ms, "--jobs-file", second).code == 0
    assert first.read_bytes() == second.read_bytes()


def test_a_different_plan_gives_a_different_digest(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    r1 = run_cli("plan", cfg, *two_ms, "--json", "--jobs-file", tmp_path / "1.txt")
    r2 = run_cli("plan", cfg, *two_ms, "--json", "-c", "--jobs-file", tmp_path / "2.txt")
    r3 = run_cli("plan", cfg, *two_ms, "--json", "--max-concurrent", "2", "--jobs-file", tmp_path / "3.txt")
    digests = {json.loads(r.out)["digest"] for r in (r1, r2, r3)}
    assert len(digests) == 3


def test_default_location_is_printed_by_the_summary(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG, name="deep-field.toml")
    r = run_cli("plan", cfg, *two_ms)
    assert r.code == 0, r
    (runs,) = (tmp_path / "imgpipe-runs").iterdir()
    digest12 = runs.name.rsplit("-", 1)[1]
    assert runs.name == f"deep-field-{digest12}" and len(digest12) == 12
    jf = runs / "jobs.txt"
    assert jf.is_file()
    assert f"Jobs file: imgpipe-runs/deep-field-{digest12}/jobs.txt" in r.out
    assert f"# plan-digest: {digest12}" in jf.read_text()
    # the summary: one row per job with host and -name prefix
    assert "0001" in r.out and "node001" in r.out and f"{two_ms[0]}/images/img" in r.out


def test_read_round_trips(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    jf = tmp_path / "jobs.txt"
    r = run_cli("plan", cfg, *two_ms, "--jobs-file", jf, "--json")
    planned = json.loads(r.out)
    plan = jobs_file.read(jf)
    assert plan.digest == planned["digest"]
    assert plan.config_path == str(cfg)
    assert plan.worker.as_dict() == planned["worker"]
    for job, want in zip(plan.jobs, planned["jobs"], strict=True):
        assert job.id == want["id"]
        assert job.host == want["host"]
        assert list(job.argv) == want["argv"]
        assert list(job.ms) == want["ms"]
        assert job.name == want["name"]
        assert job.temp_dir == want["temp_dir"]
        assert job.channels_out == want["channels_out"]
    # and a read plan renders to the very same bytes
    assert jobs_file.render(plan) == jf.read_text(encoding="utf-8")


def test_read_round_trips_combined_and_unpinned(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    paths = [ms_factory(f"{i} x.MS") for i in range(3)]
    jf = tmp_path / "jobs.txt"
    assert run_cli("plan", cfg, *paths, "-c", "--jobs-file", jf).code == 0
    (job,) = jobs_file.read(jf).jobs
    assert job.host is None
    assert list(job.ms) == [str(p) for p in paths]


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("-size 64 64", "-size 128 128"),
    lambda t: t.replace("-size 64 64", "-size 64 64 $(touch /tmp/imgpipe-pwned)"),  # (read at once, then refused)
    lambda t: t.replace("\tnode002\t", "\tnode001\t"),
    lambda t: t.replace('"max_concurrent": 4', '"max_concurrent": 8'),
    lambda t: "\n".join(ln for ln in t.split("\n") if not ln.startswith("0002")),
])
def test_read_refuses_an_edited_file(run_cli, write_config, two_ms, tmp_path, edit):
    cfg = write_config(CONFIG)
    jf = tmp_path / "jobs.txt"
    assert run_cli("plan", cfg, *two_ms, "--jobs-file", jf).code == 0
    text = jf.read_text()
    edited = edit(text)
    assert edited != text
    jf.write_text(edited)
    with pytest.raises(ImgpipeError) as e:
        jobs_file.read(jf)
    assert "edited" in str(e.value) and "imgpipe plan" in str(e.value)


def test_read_refuses_what_is_not_a_jobs_file(tmp_path):
    other = tmp_path / "x.txt"
    other.write_text("0001\t*\twsclean a.MS\n")
    with pytest.raises(ImgpipeError, match="not an imgpipe jobs file"):
        jobs_file.read(other)
    with pytest.raises(ImgpipeError, match="not found"):
        jobs_file.read(tmp_path / "nope.txt")


def test_json_output(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    r = run_cli("plan", cfg, *two_ms, "--json")
    assert r.code == 0, r
    doc = json.loads(r.out)  # stdout is the JSON document alone
    jobs = sorted(doc["jobs"], key=lambda j: j["id"])  # (listed longest first)
    assert [j["id"] for j in jobs] == ["0001", "0002"]
    for j, host, ms in zip(jobs, ["node001", "node002"], two_ms):
        assert {"id", "host", "argv", "ms", "name"} <= set(j)
        assert j["host"] == host
        assert j["ms"] == [str(ms)]
        assert j["argv"][0] == "wsclean"
        assert j["name"] == f"{ms}/images/img"
    assert Path(doc["jobs_file"]).is_file()
    assert os.path.isabs(doc["jobs_file"])


def test_planning_writes_nothing_but_the_jobs_file(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    before = tree(tmp_path)
    r = run_cli("plan", cfg, *two_ms)
    assert r.code == 0, r
    created = tree(tmp_path) - before
    (runs,) = (tmp_path / "imgpipe-runs").iterdir()
    assert created == {"imgpipe-runs", f"imgpipe-runs/{runs.name}", f"imgpipe-runs/{runs.name}/jobs.txt"}
    # no output or temp dirs, not even inside the MSs
    for ms in two_ms:
        assert not (ms / "images").exists()


def test_planning_with_an_explicit_jobs_file_writes_only_it(run_cli, write_config, two_ms, tmp_path):
    cfg = write_config(CONFIG)
    before = tree(tmp_path)
    assert run_cli("plan", cfg, *two_ms, "--jobs-file", "plans/a/jobs.txt").code == 0
    assert tree(tmp_path) - before == {"plans", "plans/a", "plans/a/jobs.txt"}


@pytest.mark.parametrize("bad", ["missing-ms", "bad-column", "collision", "channels"])
def test_on_any_error_nothing_is_written(run_cli, write_config, ms_factory, tmp_path, bad):
    a = ms_factory("a.MS", nchan=12)
    b = ms_factory("b.MS", nchan=12)
    wsclean = {"missing-ms": "", "bad-column": "data-column = 'CORRECTED_DATA'",
               "collision": f"out-dir = '{tmp_path}/o'", "channels": "channels-out = 13"}[bad]
    if "data-column" not in wsclean:
        wsclean += "\ndata-column = false"
    cfg = write_config(f"[wsclean]\nname = 'img'\n{wsclean}\n")
    args = [a, b] + ([tmp_path / "gone.MS"] if bad == "missing-ms" else [])
    before = tree(tmp_path)
    r = run_cli("plan", cfg, *args)
    assert r.code == 2, r
    r2 = run_cli("plan", cfg, *args, "--jobs-file", tmp_path / "j" / "jobs.txt")
    assert r2.code == 2, r2
    assert tree(tmp_path) == before
    assert not (tmp_path / "imgpipe-runs").exists()


def test_a_failed_write_leaves_nothing_behind(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    target = tmp_path / "plans"
    target.mkdir()
    (target / "jobs.txt").mkdir()  # a directory where the file should go
    r = run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", target / "jobs.txt")
    assert r.code == 2 and "cannot write the jobs file" in r.err, r
    assert sorted(p.name for p in target.iterdir()) == ["jobs.txt"]


def test_a_write_cut_by_ctrl_c_leaves_no_temp_file(run_cli, write_config, ms_factory, tmp_path, monkeypatch):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    target = tmp_path / "plans"

    real = os.replace

    def interrupted(src, dst, *args, **kwargs):
        if os.fspath(dst) == str(target / "jobs.txt"):
            raise KeyboardInterrupt  # (as Ctrl-C between the temp file's writing and its renaming)
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", interrupted)
    r = run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", target / "jobs.txt")
    assert (r.code, r.err) == (130, "imgpipe: interrupted\n")
    assert list(target.iterdir()) == []


def test_dry_run_in_the_config_does_not_stop_plan(run_cli, write_config, two_ms, tmp_path):
    assert "dry_run = true" in CONFIG
    cfg = write_config(CONFIG)
    jf = tmp_path / "jobs.txt"
    r = run_cli("plan", cfg, *two_ms, "--jobs-file", jf)
    assert r.code == 0, r
    assert len(job_lines(jf.read_text())) == 2


def test_render_refuses_a_newline(run_cli, write_config, ms_factory, tmp_path):
    # the last guard: whatever slipped past the planner, a job never spans two lines
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    assert run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", tmp_path / "j.txt").code == 0
    plan = jobs_file.read(tmp_path / "j.txt")
    job = replace(plan.jobs[0], argv=plan.jobs[0].argv[:-1] + ("/data/x\ntouch PWNED",))
    with pytest.raises(ImgpipeError, match="newline"):
        jobs_file.render(replace(plan, jobs=(job,)))


@pytest.mark.parametrize("what", ["device", "symlink to a file", "dangling symlink", "directory", "another file",
                                  "fifo"])
def test_jobs_file_replaces_nothing_but_a_jobs_file(run_cli, write_config, ms_factory, tmp_path, what):
    """--jobs-file only ever writes a regular file that is (or will be) a jobs file; as root too."""
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    ms = ms_factory("a.MS")
    notes = tmp_path / "notes.txt"
    notes.write_text("my observing notes\n")
    target = tmp_path / "target"
    if what == "device":
        target = Path("/dev/null")
    elif what == "symlink to a file":
        target.symlink_to(notes)
    elif what == "dangling symlink":
        target.symlink_to(tmp_path / "elsewhere" / "jobs.txt")
    elif what == "directory":
        target.mkdir()
    elif what == "another file":
        target = notes
    else:
        os.mkfifo(target)
    before = os.lstat(target)
    r = run_cli("plan", cfg, ms, "--jobs-file", target)
    assert r.code == 2, r
    assert r.err.startswith(f"imgpipe: error: {target}: cannot write the jobs file: "), r
    assert "Traceback" not in r.err
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_size) == (before.st_mode, before.st_ino, before.st_size)
    assert notes.read_text() == "my observing notes\n"
    assert not (tmp_path / "elsewhere").exists()
    assert not list(tmp_path.glob(".*")) and not list(Path("/dev").glob(".jobs*"))  # (no temp file left)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_jobs_file_gets_the_mode_of_the_runs_other_files(run_cli, write_config, ms_factory, tmp_path, umask):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    old = os.umask(umask)
    try:
        r = run_cli("plan", cfg, ms_factory("a.MS"))
        other = tmp_path / "other-file"
        other.write_text("")
    finally:
        os.umask(old)
    assert r.code == 0, r
    (jobs,) = (tmp_path / "imgpipe-runs").glob("*/jobs.txt")
    assert jobs.stat().st_mode & 0o777 == 0o666 & ~umask == other.stat().st_mode & 0o777


def test_an_existing_jobs_file_is_replaced(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    jobs = tmp_path / "jobs.txt"
    assert run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", jobs).code == 0
    assert run_cli("plan", cfg, ms_factory("b.MS"), "--jobs-file", jobs).code == 0
    assert jobs_file.read(jobs).jobs[0].ms == (str(tmp_path / "b.MS"),)


HOSTILE_WORDS = ["", " ", "'", "''", '"', "a b", "it's", "$(touch /tmp/pwned)", "`id`", "a;b", "x\\y", "*", "~",
                 "#c", "-name", "é ü", "a\tb", "'\"'\"'", "--", "=", "%", "a'b'c", "\"'\"", "' '"]


@pytest.mark.parametrize("seed", range(3))
def test_split_command_reads_what_shlex_quote_wrote(seed):
    """The fast reader of the jobs file gives exactly shlex.split's words, hostile words included."""
    import random

    rng = random.Random(seed)
    for _ in range(2000):
        words = [rng.choice(HOSTILE_WORDS) + rng.choice(HOSTILE_WORDS) for _ in range(rng.randint(1, 6))]
        line = shlex.join(words)
        assert jobs_file.split_command(line) == words == shlex.split(line)


def test_a_long_line_imgpipe_would_not_write_is_read_at_once():
    """A hand-edited command of the usual length with one word the fast reader does not take (an
    unquoted $(...)) is read as shlex reads it. The fast reader's pattern once backtracked
    exponentially on such a line: `imgpipe run` and `imgpipe status` hung at 100 % CPU. (A hang
    check in a child with a generous timeout, not a speed test: the old pattern took hours.)"""
    line = ("wsclean -name /data/night/images/SW01_T001.MS/img -pol I $(touch /tmp/x) -weight briggs 0 "
            "-data-column CORRECTED_DATA -size 256 256 -scale 3arcmin -niter 200 -auto-threshold 3 "
            "-channels-out 4 -no-update-model-required -temp-dir /data/night/images/SW01_T001.MS/"
            "img-bd985a9e.imgpipe-tmp /data/night/data/SW01_T001.MS")
    code = ("import shlex, sys; from imgpipe.jobs_file import split_command; "
            "line = sys.argv[1]; assert split_command(line) == shlex.split(line); "
            "assert split_command(line + ' `id`') == shlex.split(line + ' `id`')")
    proc = subprocess.run([sys.executable, "-c", code, line], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("line", ["a  b", " a", "a ", "'a'\"b\"", "a\\ b", "\"a b\"", "a 'b", "a\tb", "$x 'y'"])
def test_split_command_of_other_lines_is_shlex_split(line):
    """A line imgpipe would not write (hand-made) is read as a shell would, or refused alike."""
    try:
        expected = shlex.split(line)
    except ValueError:
        with pytest.raises(ValueError):
            jobs_file.split_command(line)
    else:
        assert jobs_file.split_command(line) == expected
