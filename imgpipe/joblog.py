"""The job log: its format (GNU parallel's ``--joblog``), and what it says of a plan's attempts.

``joblog.tsv`` holds one row per attempt (history, not truth); ``joblog.round.tsv`` the rows of
the round going on, merged into it after the round. ``--resume-failed`` appends rows with the
same Seq, and imgpipe appends each round's rows, so a job has one row per attempt and its LAST
row is its last outcome. Rows are matched to jobs by the job id AND the plan tag in their command
(``imgpipe-job TAG ID ...``): a row of another plan never speaks for a job of this one, whatever
its number. Whether a job is done is for its images to say (``image_sets``).

An engine need not write rows: ``RoundRows`` makes the round's rows from the attempts' results
(the wrapper's last line in ``logs/<id>``) for the jobs the engine wrote none for, and says what
an attempt that left neither was (``attempt.LOST``). GNU parallel and make write rows anyway,
and the halt gate (``bin/imgpipe-gate``) reads them to stop new jobs at once after a failure.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .attempt import LOST, OUTCOMES, read_result, started

JOBLOG = "joblog.tsv"
ROUND_JOBLOG = "joblog.round.tsv"
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
ROUND_IDS = "round.ids"  # the ids of the round's jobs, one a line (written by the run loop as a round starts)
ROUND_STOPPED = "round.stopped"  # when a round was stopped for an imgpipe that was killed (epoch seconds): mark_stopped
LOGS = "logs"  # the run directory's folder of job logs: logs/<id>, logs/<id>.err, earlier attempts' logs/<id>.N
SLURM_PLACED = "slurm"  # the Host of a job Slurm placed (its node is in its log: see status)
_JOB_RE = re.compile(r"imgpipe-job (imgpipe-[0-9a-f]{12}) (\S+) ")


@dataclass(frozen=True)
class Row:
    """One attempt, in GNU parallel's ``--joblog`` format. ``job_id`` and ``tag`` (the plan)
    are read from the command, which runs ``imgpipe-job TAG ID ...``."""

    seq: int
    host: str
    start: float
    runtime: float
    exitval: int
    signal: int
    command: str
    job_id: str | None = None
    tag: str | None = None

    @property
    def ok(self) -> bool:
        return self.exitval == 0 and self.signal == 0


def read_rows(path: str | os.PathLike) -> list[Row]:
    """All rows, in file order; a missing file is an empty log. A half-written last line is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return _parse_rows(text.split("\n")[1:])


def _parse_rows(lines) -> list[Row]:
    """The rows of job-log lines; lines that are not rows (the header, damage) are skipped."""
    rows = []
    for line in lines:
        parts = line.split("\t", 8)
        if len(parts) < 9:
            continue
        m = _JOB_RE.search(parts[8])
        try:
            start, runtime = float(parts[2]), float(parts[3])
            row = Row(seq=int(parts[0]), host=parts[1], start=start, runtime=runtime, exitval=int(parts[6]),
                      signal=int(parts[7]), command=parts[8], job_id=m.group(2) if m else None,
                      tag=m.group(1) if m else None)
        except ValueError:
            continue
        if not (0 <= start < 1e11 and 0 <= runtime < 1e9):  # nan, inf, or a time no clock gave: damaged
            continue
        rows.append(row)
    return rows


class RowTail:
    """The rows of a job log being written (the round's, by GNU parallel or make), read as they
    come: each ``read`` parses only the whole lines added since the last one, so watching a round
    of 50,000 jobs costs what is new, not the whole file again and again."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.rows: list[Row] = []
        self._offset = 0
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read so far

    def read(self) -> list[Row]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != self._file or st.st_size < self._offset:  # another file
                    self._file, self._offset, self.rows = (st.st_dev, st.st_ino), 0, []
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            self._file, self._offset, self.rows = None, 0, []
            return self.rows
        end = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
        if end:
            self._offset += end
            self.rows.extend(_parse_rows(data[:end].decode("utf-8", errors="replace").split("\n")))
        return self.rows

    @property
    def offset(self) -> int:
        """How many bytes of the file ``read`` has read (whole lines)."""
        return self._offset


def append_rows(path: str | os.PathLike, rows: list[Row], seq_of: dict[str, int]) -> None:
    """Append rows to a job log under the Seq of the full input (as --resume-failed would)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    cut = False  # a log whose last line was cut (a crash, a full disk): the rows start on a line of their own
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(JOBLOG_HEADER + "\n")
        elif cut:
            f.write("\n")
        for r in rows:
            seq = seq_of.get(r.job_id or "", r.seq)
            f.write(f"{seq}\t{r.host}\t{r.start:.3f}\t{r.runtime:10.3f}\t0\t0\t{r.exitval}\t{r.signal}\t{r.command}\n")

def attempts(run_dir: Path, tag: str, host=lambda name: name) -> list[Row]:
    """Every attempt of the plan ``tag`` in the run directory, by start time: the job log's rows,
    and those of a round going on that are not in it yet (``RoundRows``)."""
    return _attempts(run_dir, tag, host)[0]


def last_attempts(run_dir: Path, tag: str, host=lambda name: name, *,
                  going_on: bool = False) -> tuple[dict[str, Row], set[str]]:
    """(job id -> the row of its last attempt, as ``attempts`` has them; and, when a round is
    ``going_on``, the ids of its jobs that have not ended yet), reading the round once."""
    rows, ids, ended = _attempts(run_dir, tag, host)
    return last_rows(rows), (set(ids) - {r.job_id for r in ended}) if going_on else set()


def _attempts(run_dir: Path, tag: str, host) -> tuple[list[Row], list[str], list[Row]]:
    """(every attempt by start time, the round's job ids, the round's rows so far)."""
    rows = [r for r in read_rows(Path(run_dir) / JOBLOG) if r.tag == tag]
    ids = round_ids(run_dir)
    ended = round_rows(run_dir, tag, host, ids)
    seen = {(r.job_id, round(r.start, 3)) for r in rows}
    rows += [r for r in ended if (r.job_id, round(r.start, 3)) not in seen]
    return sorted(rows, key=lambda r: r.start), ids, ended


def round_ids(run_dir: Path) -> list[str]:
    """The job ids of the round going on (or of the last one, when its imgpipe was killed)."""
    try:
        return (Path(run_dir) / ROUND_IDS).read_text().split()
    except OSError:
        return []


def round_rows(run_dir: Path, tag: str, host=lambda name: name, ids: list[str] | None = None) -> list[Row]:
    """The rows of the round going on so far, or of one whose imgpipe was killed: those its stop
    did not end (``kept_at_stop``, from the time ``mark_stopped`` wrote)."""
    rows = RoundRows(run_dir, tag, round_ids(run_dir) if ids is None else ids, host).read()
    try:
        stopped_at = float((Path(run_dir) / ROUND_STOPPED).read_text())
    except (OSError, ValueError):
        return rows
    return kept_at_stop(rows, stopped_at)


def kept_at_stop(rows: list[Row], stopped_at: float) -> list[Row]:
    """The rows a stopped round keeps: the attempts that ended before the stop, or succeeded
    anyway. The others were ended by the stop (a wrapper told to stop, a job cancelled while it
    waited in Slurm's queue, a connection cut): no failure, they run again on resume; a result
    that says "stopped" tells those that began."""
    return [r for r in rows if r.ok or r.start + r.runtime <= stopped_at]


def mark_stopped(run_dir: Path, when: float) -> None:
    """A round is stopped for an imgpipe that was killed (by its guard, or by the next run): the
    rows ended after ``when`` are the stop's doing (``round_rows``), as the run loop's own stop
    says of its rows."""
    (Path(run_dir) / ROUND_STOPPED).write_text(f"{when:.3f}\n")


def last_rows(rows: list[Row]) -> dict[str, Row]:
    """job id -> its last row (the last outcome), rows taken in the order given."""
    out: dict[str, Row] = {}
    for row in rows:
        if row.job_id is not None:
            out[row.job_id] = row
    return out


def result_row(result, tag: str, host: str) -> Row:
    """The row of an attempt its wrapper's result tells (an engine that wrote none for it): the
    wrapper's exit status, as GNU parallel would have written it."""
    start = result.start if result.start is not None else 0.0
    end = result.end if result.end is not None else start
    return Row(seq=0, host=host, start=start, runtime=max(0.0, end - start), exitval=result.exit_status, signal=0,
               command=f"imgpipe-job {tag} {result.job} (its result: {result.outcome})", job_id=result.job, tag=tag)


class RoundRows:
    """The rows of the round going on, read as attempts end: the engine's (``ROUND_JOBLOG``), and,
    for a job of the round the engine wrote none for, the row its result tells (``result_row``).
    ``final`` (once the engine has ended) adds a row for each job whose wrapper began but left no
    result and no row: its node, the connection to it, or the wrapper was lost (``attempt.LOST``).
    A job with no log was never started (an engine halted, stopped, or failed before it): no row.

    ``host`` names a node as the plan does from the name a wrapper gave itself.

    Read at every tick of a run: each ``read`` costs what is new (the engine's new rows, a stat of
    each running job's log, a listing of ``logs/`` only when a log was added to it), not the round
    again."""

    SETTLED = 1.0  # s: a folder changed more recently than this may change again within its mtime's tick
    LOOK = 1.0  # s between two looks at the running jobs' logs, when reads need not be fresh

    def __init__(self, run_dir: str | os.PathLike, tag: str, ids, host=lambda name: name) -> None:
        self.tail = RowTail(Path(run_dir) / ROUND_JOBLOG)
        self.logs = Path(run_dir) / LOGS
        self.tag, self.host = tag, host
        self.rows: list[Row] = []  # the engine's rows of this plan, in file order
        self.ended: set[str] = set()  # the jobs the engine wrote a row for
        self.told: dict[str, Row] = {}  # job -> the row its result told, while the engine wrote none
        self.waiting = set(ids)  # the jobs without a log when logs/ was last listed
        self.running: set[str] = set()  # the jobs with a log, neither ended nor told
        self._tail: tuple[list | None, int] = (None, 0)  # (the tail's list of rows, how many of it were taken)
        self._listed: int | None = None  # logs/'s mtime (ns) when last listed
        self._looked: dict[str, tuple[int, int]] = {}  # job -> (size, mtime) of its log when last read
        self._out: list[Row] | None = None  # what read returned last, while it holds
        self._looked_at = -math.inf  # (time.monotonic) when the logs were last looked at

    @property
    def offset(self) -> int:
        """How many bytes of the engine's rows were read (the halt gate's mark)."""
        return self.tail.offset

    def read(self, fresh: bool = True) -> list[Row]:
        """The rows so far (the same list while no attempt ended since: not to be changed). Not
        ``fresh``: the running jobs' logs are looked at once a second at most (``LOOK``): at each
        of the loop's ticks, an engine's new rows are read, and the logs less often."""
        self._take(self.tail.read())
        now = time.monotonic()
        if not fresh and now - self._looked_at < self.LOOK:
            return self._rows()
        self._looked_at = now
        self._list()
        logs = os.fspath(self.logs)
        for jid in list(self.running):
            path = os.path.join(logs, jid)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if self._looked.get(jid) == (st.st_size, st.st_mtime_ns):
                continue
            self._looked[jid] = (st.st_size, st.st_mtime_ns)
            result = read_result(path)
            if result is not None and result.job == jid and result.tag == self.tag and jid not in self.ended:
                self.told[jid] = result_row(result, self.tag, self.host(result.host) or "?")
                self.running.discard(jid)
                self._out = None
        return self._rows()

    def _rows(self) -> list[Row]:
        if self._out is None:  # (the same list while nothing ended: the loop reads at every tick)
            self._out = self.rows + list(self.told.values())
        return self._out

    def _take(self, rows: list[Row]) -> None:
        """The engine's rows not taken yet (all again when its file was replaced)."""
        if rows is not self._tail[0]:  # (RowTail starts a new list when its file was replaced, or is not there)
            if self._tail[1]:
                self.rows, self.ended, self._out = [], set(), None  # (the told rows stay told)
            self._tail = (rows, 0)
        if len(rows) > self._tail[1]:
            self._out = None
        for r in rows[self._tail[1]:]:
            if r.tag == self.tag and r.job_id is not None:
                self.rows.append(r)
                self.ended.add(r.job_id)
                self.told.pop(r.job_id, None)
                self.running.discard(r.job_id)
                self.waiting.discard(r.job_id)
        self._tail = (rows, len(rows))

    def _list(self, force: bool = False) -> None:
        """Which waiting jobs have a log now: logs/ is listed again only when it changed."""
        if not self.waiting:
            return
        try:
            mtime = os.stat(self.logs).st_mtime_ns
        except OSError:
            return
        if not force and mtime == self._listed and time.time() - mtime / 1e9 > self.SETTLED:
            return
        self._listed = mtime
        if len(self.waiting) > 64:  # one listing, not a stat per job
            try:
                found = self.waiting & set(os.listdir(self.logs))
            except OSError:
                return
        else:
            found = {j for j in self.waiting if (self.logs / j).exists()}
        self.waiting -= found
        self.running |= found - self.ended - set(self.told)

    def final(self) -> list[Row]:
        """Every row of the round, once its engine has ended: with a row for each attempt lost."""
        self._list(force=True)
        rows = list(self.read())
        for jid in sorted(self.running):
            began = started(self.logs / jid)
            if began.get("tag") == self.tag:
                start = float(began.get("start") or 0.0)
                try:  # (its log's last change: the last sign of life)
                    runtime = max(0.0, os.stat(self.logs / jid).st_mtime - start)
                except OSError:
                    runtime = 0.0
                rows.append(Row(seq=0, host=self.host(began.get("host")) or "?", start=start, runtime=runtime,
                                exitval=OUTCOMES[LOST].exit, signal=0,
                                command=f"imgpipe-job {self.tag} {jid} (no result: {LOST})", job_id=jid, tag=self.tag))
        return rows
