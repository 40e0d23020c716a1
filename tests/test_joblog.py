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
from imgpipe.joblog import JOBLOG_HEADER, ROUND_JOBLOG, RoundRows

TAG = "imgpipe-0123456789ab"


def log(run, job: str, *, result: dict | None = None, tag: str = TAG, host: str = "node7") -> None:
    (run / "logs").mkdir(exist_ok=True)
    text = START_MARK + json.dumps({"format": 1, "job": job, "tag": tag, "host": host, "start": 100.0}) + "\nWSClean...\n"
    if result is not None:
        text += RESULT_MARK + json.dumps({"format": 1, "job": job, "tag": tag, "host": host, "start": 100.0,
                                          "end": 160.0, **result}) + "\n"
    (run / "logs" / job).write_text(text)


def engine_row(run, job: str, exitval: int, host: str = "node1") -> None:
    path = run / ROUND_JOBLOG
    if not path.exists():
        path.write_text(JOBLOG_HEADER + "\n")
    with open(path, "a") as f:
        f.write(f"1\t{host}\t100.000\t60.5\t0\t0\t{exitval}\t0\tperl w imgpipe-job {TAG} {job} 1 x\n")


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
