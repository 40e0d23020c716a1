"""The job log: its format (GNU parallel's ``--joblog``), and what it says of a plan's attempts.

``joblog.tsv`` holds one row per attempt (history, not truth); ``joblog.round.tsv`` the rows of
the round going on, merged into it after the round. ``--resume-failed`` appends rows with the
same Seq, and imgpipe appends each round's rows, so a job has one row per attempt and its LAST
row is its last outcome. Rows are matched to jobs by the job id AND the plan tag in their command
(``imgpipe-job TAG ID ...``): a row of another plan never speaks for a job of this one, whatever
its number. Whether a job is done is for its images to say (``image_sets``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

JOBLOG = "joblog.tsv"
ROUND_JOBLOG = "joblog.round.tsv"
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
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

def attempts(run_dir: Path, tag: str) -> list[Row]:
    """Every attempt of the plan ``tag`` in the run directory, by start time: the job log's rows,
    and those of a round going on that are not in it yet."""
    rows = [r for r in read_rows(Path(run_dir) / JOBLOG) if r.tag == tag]
    seen = {(r.job_id, round(r.start, 3)) for r in rows}
    rows += [r for r in read_rows(Path(run_dir) / ROUND_JOBLOG)
             if r.tag == tag and (r.job_id, round(r.start, 3)) not in seen]
    return sorted(rows, key=lambda r: r.start)


def last_rows(rows: list[Row]) -> dict[str, Row]:
    """job id -> its last row (the last outcome), rows taken in the order given."""
    out: dict[str, Row] = {}
    for row in rows:
        if row.job_id is not None:
            out[row.job_id] = row
    return out
