"""The memo of ``imgpipe status``: its rows, kept with a stamp of everything they were made from.

A status of a finished 50,000-job run reads 50,000 records, lists 50,000 image directories and
parses a 50,000-line jobs file and job log: seconds. When none of it has changed since the last
status, the memo gives the same rows for the price of a ``stat`` of each image directory and
each record. The rows are still those of ``status.job_states``, the one rule; the memo only
remembers them, and gives them back only when it can tell nothing they were made from changed:

- the run's files (jobs file, job log, the round's job log, the logs directory's listing,
  slurm.sh) have the same inode, size and modification time; no run is going on;
- the **stamp**, a digest of the inode, size and modification time of every job's image
  directory (its listing: images and records that come and go), of every record there is
  (edited in place) and of every image file a record lists (cut short in place), and of any
  other directory a record lists images in, is the same.

A memo is written only when all of these are older than the status that made the rows, by
``SETTLED`` seconds: a change made while (or after) the rows were read has a later time than
that, give or take a clock tick or a file server's clock, so a stamp can never hide a change.
Just after a run a status reads everything; the next one, a few seconds later, writes the memo.

Two files in the run directory: ``status-memo.json`` holds what ``imgpipe status`` prints by
default (the full row of each job not done; of the done ones, their ids and per host their
number and busy time: ``DoneJobs``) and what the stamp is made of; ``status-memo-rows.json``
every full row (``--all``, ``--json``), under the same stamp. JSON, not pickle: a run
directory may be shared, and a memo is data. One that cannot be read, or does not match, is
simply not used; one that cannot be written is not written.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from pathlib import Path
from typing import NamedTuple

from .files import write_whole
from .image_sets import RECORD_SUFFIX
from .joblog import JOBLOG, ROUND_JOBLOG, ROUND_STOPPED
from .run_dir import LOGS
from .run_lock import run_active

MEMO = "status-memo.json"
MEMO_ROWS = "status-memo-rows.json"
FORMAT = 3  # (2: rows may have the state "stopped"; 3: the image files are stamped too)
SETTLED = 5.0  # s: a file changed more recently than this may change again within its timestamp's tick


class _Unsettled(Exception):
    """Something the rows were made from changed too recently to stamp it."""


def _key(path: str) -> tuple[int, int, int] | None:
    """What tells a file apart from what it was: (inode, size, mtime in ns); None: not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _run_keys(run_dir: Path, jobs_path: Path) -> list:
    """The run's own files, as ``status.job_states`` reads them when no run is going on."""
    return [list(k) if (k := _key(str(p))) else None
            for p in (jobs_path, run_dir / JOBLOG, run_dir / ROUND_JOBLOG, run_dir / ROUND_STOPPED, run_dir / LOGS,
                      run_dir / "slurm.sh")]


def _row(keys: list[str], values: list) -> dict:
    """One memo row as a dict; a row of another length is a damaged memo (ValueError)."""
    if len(keys) != len(values):
        raise ValueError("a memo row has the wrong number of values")
    return dict(zip(keys, values))


def _stamp(names: list[str], records: str, others: list[str], settled: float | None = None,
           shapes: list[list[str]] = (), shape_of: list[int] = ()) -> str:
    """The digest of the keys of every job's image directory (``names``: the -name prefixes),
    record (where ``records`` has a "1") and image files (the suffixes ``shapes[shape_of[i]]``
    of prefix i: a file cut short in place changes neither its directory nor its record), and
    of ``others``; with ``settled`` (ns), raise _Unsettled if any of them changed at or after
    it. (A stat per directory, record and image, and nothing else: this is most of a status of
    50,000 done jobs.)"""
    keys = array("q")
    add, stat = keys.extend, os.stat
    folders: dict[str, tuple[int, int, int]] = {}
    missing = (-1, -1, -1)

    def key(path: str) -> tuple[int, int, int]:
        try:
            st = stat(path)
        except OSError:
            return missing
        return st.st_ino, st.st_size, st.st_mtime_ns

    if len(names) != len(records) or (shape_of and len(shape_of) != len(names)):
        raise ValueError("a memo's names, records and images differ in length")
    for i, (prefix, record) in enumerate(zip(names, records)):
        cut = prefix.rfind("/")
        folder = prefix[:cut] if cut > 0 else "/" if cut == 0 else "."
        k = folders.get(folder)
        if k is None:
            k = folders[folder] = key(folder)
        add(k)
        if record == "1":
            try:
                st = stat(prefix + RECORD_SUFFIX)
                add((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                add(missing)
        if shape_of:
            for suffix in shapes[shape_of[i]]:
                add(key(prefix + suffix))
    for path in others:
        add(key(path))
    if settled is not None and max(keys[2::3], default=0) >= settled:
        raise _Unsettled
    return hashlib.blake2b(keys.tobytes(), digest_size=20).hexdigest()


class DoneJobs(NamedTuple):
    """The done jobs of a status, in brief: what ``imgpipe status`` prints of them by default."""

    ids: list[str]  # sorted
    hosts: dict[str, list]  # host -> [jobs, busy seconds]


def done_jobs(rows: list[dict]) -> DoneJobs:
    hosts: dict[str, list] = {}
    for r in rows:
        if r["state"] == "done" and r["host"] is not None:
            h = hosts.setdefault(r["host"], [0, 0.0])
            h[0] += 1
            h[1] += r["runtime"] or 0.0
    return DoneJobs(sorted(r["id"] for r in rows if r["state"] == "done"), hosts)


def load(run_dir: Path, jobs_path: Path, every_row: bool) -> tuple[str, list[dict], DoneJobs | None] | None:
    """(digest, rows, None) from the memo when it holds, else None; without ``every_row``,
    (digest, the rows of the jobs not done, DoneJobs)."""
    try:
        with open(run_dir / MEMO, "rb") as f:
            memo = json.loads(f.read())
        if memo["format"] != FORMAT or memo["run"] != _run_keys(run_dir, jobs_path) or run_active(run_dir):
            return None
        stamp = _stamp(memo["names"], memo["records"], memo["others"], None, memo["shapes"], memo["shape_of"])
        if stamp != memo["stamp"]:
            return None
        if every_row:
            with open(run_dir / MEMO_ROWS, "rb") as f:
                full = json.loads(f.read())
            if full["stamp"] != memo["stamp"] or len(full["rows"]) != len(memo["names"]):
                return None
            keys = full["keys"]
            return memo["digest"], [_row(keys, r) for r in full["rows"]], None
        keys, (ids, hosts) = memo["keys"], memo["done"]
        rows = [_row(keys, r) for r in memo["rest"]]
        if not (isinstance(ids, list) and isinstance(hosts, dict)) or any(r["state"] == "done" for r in rows):
            return None
        return memo["digest"], rows, DoneJobs(ids, hosts)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def save(run_dir: Path, jobs_path: Path, digest: str, rows: list[dict], others: list[str], started: float,
         images: list[tuple[str, ...]] = ()) -> None:
    """Keep ``rows`` (all with the same keys, "name" and "images" among them) for the next status,
    when everything they were made from is older than ``started`` by SETTLED. ``images``: each
    row's image files its record lists (suffixes of its name)."""
    if not rows or run_active(run_dir):
        return
    settled = (started - SETTLED) * 1e9
    run = _run_keys(run_dir, jobs_path)
    if any(k is not None and k[2] >= settled for k in run):
        return
    names = [r["name"] for r in rows]
    records = "".join("0" if r["images"] == "absent" else "1" for r in rows)  # (where a record was read)
    shapes: dict[tuple[str, ...], int] = {}  # (most jobs of a plan make files of the same names)
    shape_of = [shapes.setdefault(tuple(i), len(shapes)) for i in images] if images else []
    shape_list = [list(k) for k in shapes]
    try:
        stamp = _stamp(names, records, others, settled, shape_list, shape_of)
    except _Unsettled:
        return
    keys = list(rows[0])
    full = [[r[k] for k in keys] for r in rows]
    memo = {"format": FORMAT, "run": run, "digest": digest, "stamp": stamp, "others": others, "names": names,
            "records": records, "shapes": shape_list, "shape_of": shape_of, "done": done_jobs(rows), "keys": keys,
            "rest": [row for row, r in zip(full, rows) if r["state"] != "done"]}
    # the rows first: a memo always has its rows file, or the stamps differ and neither is used
    if _write(run_dir / MEMO_ROWS, {"stamp": stamp, "keys": keys, "rows": full}):
        _write(run_dir / MEMO, memo)


def _write(path: Path, doc: dict) -> bool:
    try:  # (dumps: json.dump writes through its pure-Python encoder)
        write_whole(path, json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
        return True
    except OSError:
        return False
