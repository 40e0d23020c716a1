"""joblog.RoundRows: the round's attempts, from the engine's rows where it wrote them and from the
attempts' results where it did not; a wrapper that began and left neither is lost.

The logs here are written by hand in the wrapper's format (tests/test_attempt.py proves the
wrapper writes it); the runs through real engines are tests/test_engine_contract.py and
tests/test_story.py.
"""

from __future__ import annotations

import json
import os
import time

from imgpipe.attempt import OUTCOMES, RESULT_MARK, START_MARK, outcome_of
from imgpipe.joblog import (
    JOBLOG_HEADER, ROUND_IDS, ROUND_JOBLOG, RoundRows, last_attempts, mark_stopped, round_rows,
)

TAG = "imgpipe-0123456789ab"


def log(run, job: str, *, result: dict | None = None, tag: str = TAG, host: str = "node7") -> None:
    (run / "logs").mkdir(exist_ok=True)
    text = START_MARK + json.dumps({"format": 1, "job": job, "tag": tag, "host": host, "start": 100.0}) + "\nWSClean...\n"
    if result is not None:
        text += RESULT_MARK + json.dumps({"format": 1, "job": job, "tag": tag, "host": host, "start": 100.0,
                                          "end": 160.0, **result}) + "\n"
    (run / "logs" / job).write_text(text)


def engine_row(run, job: str, exitval: int, host: str = "node1", start: float = 100.0, runtime: float = 60.5) -> None:
    path = run / ROUND_JOBLOG
    if not path.exists():
        path.write_text(JOBLOG_HEADER + "\n")
    with open(path, "a") as f:
        f.write(f"1\t{host}\t{start:.3f}\t{runtime}\t0\t0\t{exitval}\t0\tperl w imgpipe-job {TAG} {job} 1 x\n")


def story(rows) -> dict[str, tuple[str, str]]:
    return {r.job_id: (outcome_of(r.exitval, r.signal)[0], r.host) for r in rows}


def test_a_result_tells_the_row_of_an_engine_that_wrote_none(tmp_path):
    log(tmp_path, "0001", result={"outcome": "done", "exit_status": 0})
    log(tmp_path, "0002", result={"outcome": "wsclean", "exit_status": 10})
    rows = RoundRows(tmp_path, TAG, ["0001", "0002", "0003"]).read()
    assert story(rows) == {"0001": ("done", "node7"), "0002": ("wsclean", "node7")}
    assert all(r.start == 100.0 and r.runtime == 60.0 and r.tag == TAG for r in rows)


def test_the_engine_s_row_wins_when_it_wrote_one(tmp_path):
    log(tmp_path, "0001", result={"outcome": "done", "exit_status": 0})
    rr = RoundRows(tmp_path, TAG, ["0001", "0002"])
    assert story(rr.read()) == {"0001": ("done", "node7")}
    engine_row(tmp_path, "0001", 0)
    engine_row(tmp_path, "0002", 255)  # ssh could not reach the node: no log, no result
    assert story(rr.read()) == {"0001": ("done", "node1"), "0002": ("connection", "node1")}


def test_once_the_engine_ended_a_wrapper_that_began_and_left_nothing_is_lost(tmp_path):
    log(tmp_path, "0001")  # began, never ended
    log(tmp_path, "0002", result={"outcome": "done", "exit_status": 0})
    rr = RoundRows(tmp_path, TAG, ["0001", "0002", "0003"])  # 0003: no log, never started
    assert story(rr.read()) == {"0002": ("done", "node7")}  # (while the engine runs, 0001 runs)
    assert rr.running == {"0001"} and rr.waiting == {"0003"}
    final = rr.final()
    assert story(final) == {"0001": ("lost", "node7"), "0002": ("done", "node7")}
    assert OUTCOMES["lost"].retry == "connection"
    assert story(rr.read()) == {"0002": ("done", "node7")}  # (final changed no list read returns)


def test_a_log_of_another_plan_or_job_tells_nothing(tmp_path):
    log(tmp_path, "0001", result={"outcome": "done", "exit_status": 0}, tag="imgpipe-ffffffffffff")
    (tmp_path / "logs" / "0002").write_text(RESULT_MARK + json.dumps(
        {"format": 1, "job": "0009", "tag": TAG, "outcome": "done", "exit_status": 0}) + "\n")
    rr = RoundRows(tmp_path, TAG, ["0001", "0002"])
    assert rr.read() == [] and rr.final() == []


def test_a_job_that_ends_is_seen_by_the_next_fresh_read_and_within_a_second_by_the_others(tmp_path):
    log(tmp_path, "0001")
    rr = RoundRows(tmp_path, TAG, ["0001"] + [f"{i:04d}" for i in range(2, 200)])  # (many: logs/ is listed)
    assert rr.read() == [] and rr.read(fresh=False) == []
    log(tmp_path, "0001", result={"outcome": "wsclean", "exit_status": 10})
    os.utime(tmp_path / "logs" / "0001", ns=(time.time_ns() + 10**9,) * 2)  # (another mtime, whatever the clock's tick)
    assert story(rr.read()) == {"0001": ("wsclean", "node7")}
    log(tmp_path, "0002", result={"outcome": "done", "exit_status": 0})  # a new log: logs/ changed
    deadline = time.monotonic() + 5
    while "0002" not in story(rr.read(fresh=False)):
        assert time.monotonic() < deadline, "a result not seen within LOOK"
        time.sleep(0.05)


def test_what_the_stop_of_a_killed_imgpipe_ended_is_no_failure(tmp_path):
    """imgpipe was killed; its guard (or the next run) stopped the round at 150: the attempts that
    ended after it were ended by the stop (here a job cancelled while it waited in Slurm's queue),
    as the loop's own stop (Ctrl-C) says of its rows; those that ended before it, or succeeded, stay."""
    (tmp_path / ROUND_IDS).write_text("0001\n0002\n0003\n")
    engine_row(tmp_path, "0001", 10, runtime=20.0)  # failed at 120, before the stop
    engine_row(tmp_path, "0002", 19)  # "Slurm did not run it": cancelled at 160.5 by the stop
    engine_row(tmp_path, "0003", 0)  # done at 160.5 anyway
    assert set(story(round_rows(tmp_path, TAG))) == {"0001", "0002", "0003"}
    mark_stopped(tmp_path, 150.0)
    assert story(round_rows(tmp_path, TAG)) == {"0001": ("wsclean", "node1"), "0003": ("done", "node1")}
    last, not_ended = last_attempts(tmp_path, TAG)  # (what status reads: no round going on now)
    assert set(last) == {"0001", "0003"} and not not_ended
