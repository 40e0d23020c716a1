"""The status memo (imgpipe/status_memo.py) on a real run (test_status.make_run: 2 done, 1
failed, 1 not started): it gives the same answer as reading everything, and it is never used once
anything it was made from has changed (an image deleted, a record edited in place, a job-log row
added, the jobs file replaced), nor written while files are too fresh to be keyed by their times.

To tell a status that used the memo from one that read everything, a test edits a host in the
memo (keeping its stamp): a status that prints the edited host used it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import needs
from test_status import HOSTILE, imgpipe, make_run

from imgpipe.status_memo import MEMO, MEMO_ROWS, SETTLED

pytestmark = [needs("wsclean"), needs("parallel"), needs("ssh")]


@pytest.fixture(scope="module")
def run(tmp_path_factory, ms_cache):
    return make_run(tmp_path_factory.mktemp("memo-run"), ms_cache)


def age(root: Path, seconds: float = 60) -> None:
    """Every file and directory of the run and its images, as if written ``seconds`` ago."""
    then = time.time() - seconds
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            os.utime(os.path.join(folder, name), (then, then), follow_symlinks=False)
        os.utime(folder, (then, then))


def forget(run) -> None:
    for name in (MEMO, MEMO_ROWS):
        (run.run_dir / name).unlink(missing_ok=True)


def status(run, *args) -> tuple[int, str]:
    r = imgpipe("status", run.run_dir, *args, cwd=run.root, env=run.env)
    assert r.returncode in (0, 1, 3), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout


def mark_memo(run) -> None:
    """Edit the memo's done jobs' host (not its stamp): a status that uses the memo prints it."""
    path = run.run_dir / MEMO
    memo = json.loads(path.read_text())
    memo["done"][1] = {"memo-host": [len(memo["done"][0]), 1.0]}
    path.write_text(json.dumps(memo))
    rows_path = run.run_dir / MEMO_ROWS
    rows = json.loads(rows_path.read_text())
    host, state = rows["keys"].index("host"), rows["keys"].index("state")
    rows["rows"] = [[*r[:host], "memo-host", *r[host + 1:]] if r[state] == "done" else r for r in rows["rows"]]
    rows_path.write_text(json.dumps(rows))


def memo_used(run) -> bool:
    code, out = status(run, "--all")
    return "memo-host" in out


@pytest.fixture
def settled(run):
    """The run as it was made, its files aged, a fresh memo written and marked."""
    forget(run)
    age(run.root)
    before = status(run, "--all"), status(run, "--json")
    assert (run.run_dir / MEMO).is_file() and (run.run_dir / MEMO_ROWS).is_file()
    return before


def test_the_memo_gives_what_reading_everything_gives(run, settled):
    (code, table), (_, doc) = settled  # these read everything (and wrote the memo)
    assert code == 1 and "total: 2/4 done, 1 failed, 0 running, 1 not started" in table
    assert status(run, "--all") == (code, table)  # from the memo
    assert status(run, "--json") == (code, doc)
    assert status(run) == (code, table)  # (4 jobs: every one listed)
    json.loads(doc)
    mark_memo(run)
    assert memo_used(run)


def test_a_deleted_image_is_seen_at_once(run, settled):
    mark_memo(run)
    done = json.loads(settled[1][1])["jobs"]
    job = next(j for j in done if j["ms"][0].endswith("SW01_T001.MS"))
    image = Path(job["name"] + "-MFS-image.fits")
    kept = image.read_bytes()
    image.unlink()
    try:
        assert not memo_used(run)
        doc = json.loads(status(run, "--json")[1])
        now = next(j for j in doc["jobs"] if j["id"] == job["id"])
        assert now["state"] == "not started" and now["why"] == "ran before, but its images are incomplete"
    finally:
        image.write_bytes(kept)


def test_an_image_cut_short_in_place_is_seen_at_once(run, settled):
    """Truncated in place (a full disk, a careless cp): neither its directory nor its record
    changes; the record's size of it tells, and the memo stamps each image too."""
    mark_memo(run)
    done = json.loads(settled[1][1])["jobs"]
    job = next(j for j in done if j["ms"][0].endswith("SW01_T001.MS"))
    image = Path(job["name"] + "-MFS-image.fits")
    kept = image.read_bytes()
    folder_time = image.parent.stat().st_mtime_ns
    os.truncate(image, 0)
    assert image.parent.stat().st_mtime_ns == folder_time
    try:
        assert not memo_used(run)
        doc = json.loads(status(run, "--json")[1])
        now = next(j for j in doc["jobs"] if j["id"] == job["id"])
        assert now["state"] == "not started" and now["why"] == "ran before, but its images are incomplete"
    finally:
        image.write_bytes(kept)


def test_a_record_edited_in_place_is_seen(run, settled):
    """Same size, same directory: only the record's own time tells (an in-place edit does not
    touch its directory)."""
    mark_memo(run)
    job = next(j for j in json.loads(settled[1][1])["jobs"] if j["ms"][0].endswith(HOSTILE))
    record = Path(job["name"] + ".imgpipe.json")
    text = record.read_text()
    with open(record, "r+") as f:  # in place: no rename, no new inode
        f.write(text.replace('"command": "wsclean ', '"command": "wsclean2', 1)[: len(text)])
    try:
        assert not memo_used(run)
        doc = json.loads(status(run, "--json")[1])
        assert next(j for j in doc["jobs"] if j["id"] == job["id"])["images"] == "foreign"
    finally:
        record.write_text(text)


def test_a_new_job_log_row_is_seen(run, settled):
    mark_memo(run)
    joblog = run.run_dir / "joblog.tsv"
    text = joblog.read_text()
    row = next(ln for ln in text.splitlines() if f" {run.ids['failed']} " in ln)
    ns = row.replace(f" {run.ids['failed']} ", f" {run.ids['not_started']} ").split("\t")
    ns[2] = f"{time.time():.3f}"
    with open(joblog, "a") as f:
        f.write("\t".join(ns) + "\n")
    try:
        assert not memo_used(run)
        doc = json.loads(status(run, "--json")[1])
        assert next(j for j in doc["jobs"] if j["id"] == run.ids["not_started"])["state"] == "failed"
        line = next(ln for ln in status(run)[1].splitlines() if ln.startswith(run.ids["not_started"] + " "))
        assert line.endswith("(no log)"), line  # its attempt never reached its node: no log to name
    finally:
        joblog.write_text(text)


def test_a_replaced_jobs_file_is_seen(run, settled):
    mark_memo(run)
    text = run.jobs_file.read_bytes()
    tmp = run.jobs_file.with_name("jobs.new")
    tmp.write_bytes(text)
    os.replace(tmp, run.jobs_file)  # same bytes, another file: the memo no longer holds
    assert not memo_used(run)


def test_no_memo_of_fresh_files(run):
    """Files changed less than SETTLED seconds before a status began: no memo (a change within
    the same clock tick would not show in their times)."""
    forget(run)
    age(run.root)
    done = next(j for j in json.loads(status(run, "--json")[1])["jobs"] if j["state"] == "done")
    forget(run)
    os.utime(os.path.dirname(done["name"]))  # now
    status(run)
    assert not (run.run_dir / MEMO).exists()
    assert SETTLED >= 2


def test_a_damaged_memo_is_not_used(run, settled):
    (code, table), _ = settled
    for junk in ("", "{", "[1, 2]", '{"format": 1}', json.dumps({"format": 1, "run": None, "brief": 3})):
        (run.run_dir / MEMO).write_text(junk)
        assert status(run, "--all") == (code, table), junk
    (run.run_dir / MEMO).unlink()
    status(run)
    (run.run_dir / MEMO_ROWS).write_text("[")  # the first file holds, the rows file does not
    assert status(run, "--json")[1] == settled[1][1]


def test_done_jobs_are_one_line_past_a_hundred(run, settled, monkeypatch, capsys):
    """Many done jobs: the table lists the jobs that need a look, and says which are done in one
    line; --all lists each."""
    from imgpipe import cli

    monkeypatch.setattr(cli, "DONE_LISTED", 1)
    monkeypatch.chdir(run.root)
    assert cli.main(["status", str(run.run_dir)]) == 1
    out = capsys.readouterr().out.splitlines()
    ids = sorted(run.ids[r] for r in ("done", "hostile"))
    listed = [ln.split()[0] for ln in out if ln[:4].isdigit()]
    assert sorted(listed) == sorted([run.ids["failed"], run.ids["not_started"]])
    assert f"2 jobs done: {', '.join(ids) if int(ids[1]) - int(ids[0]) > 1 else '-'.join(ids)}" \
           " (`imgpipe status --all` lists each)" in out
    assert out[-1] == "total: 2/4 done, 1 failed, 0 running, 1 not started"
    hosts = [" ".join(ln.split()) for ln in out if ln.startswith("host ")]
    assert len(hosts) == 1 and hosts[0].startswith("host localhost 2 done, 1 failed, busy "), hosts
    mark_memo(run)  # and this comes from the memo: its done jobs in brief
    assert cli.main(["status", str(run.run_dir)]) == 1
    hosts = [" ".join(ln.split()) for ln in capsys.readouterr().out.splitlines() if ln.startswith("host ")]
    assert hosts[0].startswith("host localhost 0 done, 1 failed") and hosts[1].startswith("host memo-host 2 done")
    assert cli.main(["status", "--all", str(run.run_dir)]) == 1
    assert sum(1 for ln in capsys.readouterr().out.splitlines() if ln[:4].isdigit()) == 4


def test_a_run_directory_that_cannot_be_written_gets_no_memo(run, tmp_path):
    """(As root, permissions do not stop a write: a run directory on a read-only file system is
    what a user without write access sees. Here the memo's name is taken by a directory.)"""
    forget(run)
    age(run.root)
    (run.run_dir / MEMO_ROWS).mkdir()
    try:
        code, out = status(run)
        assert code == 1 and "total: 2/4 done" in out
        assert not (run.run_dir / MEMO).exists()
        assert not [p for p in os.listdir(run.run_dir) if p.endswith(".tmp")]
    finally:
        shutil.rmtree(run.run_dir / MEMO_ROWS)
