"""What the job log says: every attempt of every job of one plan (history, not truth).

The job log is GNU parallel's ``--joblog`` (format: ``run_dir.Row``); ``--resume-failed``
appends rows with the same Seq, and imgpipe appends each round's rows, so a job has one
row per attempt and its LAST row is its last outcome. Rows are matched to jobs by the
job id AND the plan tag in their command (``imgpipe-job TAG ID ...``): a row of another
plan never speaks for a job of this one, whatever its number. Whether a job is done is
for its images to say (``image_sets``).
"""

from __future__ import annotations

from pathlib import Path

from .run_dir import JOBLOG, ROUND_JOBLOG, Row, read_rows


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
