"""The run directory (imgpipe/run_dir.py): its lock, whose files it holds, the job log's format."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from imgpipe import jobs_file
from imgpipe.errors import ImgpipeError
from imgpipe.attempt import OUTCOMES, outcome_of
from imgpipe.joblog import JOBLOG, append_rows, read_rows
from imgpipe.run_dir import EARLIER, RunDir
from imgpipe.run_lock import STOPPING, RunLock


def hold_lock(run_dir, holder: str) -> subprocess.Popen:
    """Another process holding the run lock with ``holder`` as its text, until killed."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(run_dir / 'run.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0); os.write(fd, {holder!r}.encode())
        print("held", flush=True)
        time.sleep(float(sys.argv[1]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, "2.0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_holding_the_lock_is_named_and_refused(tmp_path):
    holder = hold_lock(tmp_path, f"imgpipe pid {os.getpid()} on {socket.gethostname()} since now")
    try:
        with pytest.raises(ImgpipeError, match=f"already being run by imgpipe pid {os.getpid()}"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("holder", [f"imgpipe pid 1234 (gone): its guard pid 99 is {STOPPING}",
                                    f"imgpipe pid 999999999 on {socket.gethostname()} since then"])
def test_a_new_run_waits_for_a_killed_run_that_is_stopping_its_jobs(tmp_path, capsys, holder):
    proc = hold_lock(tmp_path, holder)  # lets go after 2 s
    t0 = time.time()
    with RunLock(tmp_path) as lock:
        waited = time.time() - t0
        assert f"imgpipe pid {os.getpid()}" in lock.holder()
    proc.wait()
    assert 1.0 < waited < 30, waited
    assert "waiting for the earlier run to finish stopping its jobs" in capsys.readouterr().err


def plan_in(run_cli, write_config, ms_factory, tmp_path, *names):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\nout-dir = 'images/$ms_basename$'\n")
    jobs = tmp_path / "run" / "jobs.txt"
    assert run_cli("plan", cfg, *(ms_factory(n) for n in names), "--jobs-file", jobs).code == 0
    return jobs_file.read(jobs), RunDir(jobs.parent)


def test_adopt_moves_the_files_of_another_plan_aside(run_cli, write_config, ms_factory, tmp_path):
    plan_a, run = plan_in(run_cli, write_config, ms_factory, tmp_path, "a.MS")
    assert run.adopt(plan_a) is None  # a new directory: nothing to move
    (run / "logs").mkdir()
    (run / "logs" / "0001").write_text("the log of a.MS's job\n")
    (run / JOBLOG).write_text(f"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
                              f"1\t:\t1.0\t2.0\t0\t0\t0\t0\tbash -c x imgpipe-job {plan_a.tag} 0001 2\n")
    assert run.adopt(plan_a) is None  # the same plan again: nothing moves
    assert (run / JOBLOG).exists()

    plan_b, _ = plan_in(run_cli, write_config, ms_factory, tmp_path, "b.MS")
    assert run.adopt(plan_b) == plan_a.digest
    aside = run / EARLIER / plan_a.digest[:12]
    assert (aside / "logs" / "0001").read_text() == "the log of a.MS's job\n"
    assert (aside / JOBLOG).exists() and not (run / JOBLOG).exists()
    assert (run / "jobs.txt").exists() and run.state()["digest"] == plan_b.digest


def test_rows_carry_their_job_and_plan(tmp_path):
    path = tmp_path / "joblog.tsv"
    append_rows(path, [], {})
    with open(path, "a") as f:
        f.write("3\tnode001\t1700000000.5\t 12.250\t0\t0\t10\t0\tbash -c \"$IMGPIPE_JOB\" imgpipe-job "
                "imgpipe-0123456789ab 0007 2 '' 0 1 0 vm:/r 'wsclean ...'\n")
        f.write("4\tnode001\t17000")  # a half-written last line
    (row,) = read_rows(path)
    assert (row.seq, row.host, row.exitval, row.job_id, row.tag) == (3, "node001", 10, "0007", "imgpipe-0123456789ab")
    assert not row.ok and outcome_of(row.exitval, row.signal) == ("wsclean", OUTCOMES["wsclean"].words)


def test_row_tail_reads_each_row_once_as_the_job_log_grows(tmp_path):
    """The run loop watches the round's job log many times a second: it must read only what was
    added, wait for a half-written row, and start again when the file is a new one (a new round)."""
    from imgpipe.joblog import JOBLOG_HEADER, RowTail, read_rows

    log = tmp_path / "joblog.round.tsv"

    def row(seq: int, exitval: int = 0) -> str:
        return (f"{seq}\tnode001\t1796000000.{seq:03d}\t     1.000\t0\t0\t{exitval}\t0\t"
                f"bash imgpipe-job imgpipe-0123456789ab {seq:04d} 1 '' 0 0 0 vm:/r 'wsclean -name /i/x'\n")

    tail = RowTail(log)
    assert tail.read() == []  # not there yet
    log.write_text(JOBLOG_HEADER + "\n" + row(1))
    assert [r.job_id for r in tail.read()] == ["0001"]
    with open(log, "a") as f:
        half = row(2, 10)
        f.write(half[:30])  # GNU parallel is in the middle of writing it
    assert [r.job_id for r in tail.read()] == ["0001"]
    with open(log, "a") as f:
        f.write(half[30:] + row(3))
    rows = tail.read()
    assert [(r.job_id, r.exitval) for r in rows] == [("0001", 0), ("0002", 10), ("0003", 0)]
    assert rows == read_rows(log)
    log.unlink()  # the next round's log: a new file, read from its start
    log.write_text(JOBLOG_HEADER + "\n" + row(7))
    assert [r.job_id for r in tail.read()] == ["0007"]


def test_rows_appended_after_a_line_cut_short_are_whole(tmp_path):
    """A job log whose last line was cut (a crash, a full disk): the next rows start on a line of
    their own, so they are read (before, the first was glued to the broken line and lost)."""
    from imgpipe.joblog import Row

    path = tmp_path / "joblog.tsv"
    append_rows(path, [], {})
    with open(path, "a") as f:
        f.write("1\tnode001\t17000")  # cut mid-line
    row = Row(2, "node002", 1.7e9, 3.0, 0, 0, "perl w imgpipe-job imgpipe-0123456789ab 0002 1 '' 0 0 0 r 'c'",
              "0002", "imgpipe-0123456789ab")
    append_rows(path, [row], {"0002": 2})
    (read,) = read_rows(path)
    assert (read.seq, read.host, read.job_id) == (2, "node002", "0002")
