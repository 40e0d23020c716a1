"""GNU parallel's job log (``--joblog``): read it, and append rows to it.

Format: tab-separated, header
``Seq Host Starttime JobRuntime Send Receive Exitval Signal Command``.
``--resume-failed`` appends rows with the same Seq, so the LAST row of a job wins.
The job id is read from the command (``imgpipe-job TAG ID ...``), so rows from
any of imgpipe's job logs can be matched to jobs whatever their Seq.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
_JOB_RE = re.compile(r"imgpipe-job imgpipe-[0-9a-f]{12} (\S+) ")


@dataclass(frozen=True)
class Row:
    seq: int
    host: str
    start: float
    runtime: float
    exitval: int
    signal: int
    command: str
    job_id: str | None

    @property
    def ok(self) -> bool:
        return self.exitval == 0 and self.signal == 0


def job_id_of(command: str) -> str | None:
    m = _JOB_RE.search(command)
    return m.group(1) if m else None


def read_rows(path: str | os.PathLike) -> list[Row]:
    """All rows, in file order; a missing file is an empty log. A half-written last line is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.split("\n")[1:]:
        parts = line.split("\t", 8)
        if len(parts) < 9:
            continue
        try:
            rows.append(
                Row(
                    seq=int(parts[0]),
                    host=parts[1],
                    start=float(parts[2]),
                    runtime=float(parts[3]),
                    exitval=int(parts[6]),
                    signal=int(parts[7]),
                    command=parts[8],
                    job_id=job_id_of(parts[8]),
                )
            )
        except ValueError:
            continue
    return rows


def last_rows(rows: list[Row]) -> dict[str, Row]:
    """job id -> its last row (the outcome that counts)."""
    out: dict[str, Row] = {}
    for row in rows:
        if row.job_id is not None:
            out[row.job_id] = row
    return out


def append_rows(path: str | os.PathLike, rows: list[Row], seq_of: dict[str, int]) -> None:
    """Append rows to a job log under the Seq of the full input (as --resume-failed would)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(HEADER + "\n")
        for r in rows:
            seq = seq_of.get(r.job_id or "", r.seq)
            f.write(
                f"{seq}\t{r.host}\t{r.start:.3f}\t{r.runtime:10.3f}\t0\t0\t{r.exitval}\t{r.signal}\t{r.command}\n"
            )
