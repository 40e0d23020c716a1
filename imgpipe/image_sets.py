"""A job's image set: its record, the one rule of "done", and its claim.

A job writes its images under its ``-name`` prefix ``P`` (``P-image.fits``,
``P-0001-dirty.fits``, ...): its image set. Next to them, on success only, the
node-side wrapper (bin/imgpipe-job) writes the record ``P.imgpipe.json``: the
WSClean command that made the set, the image files it made (as suffixes of ``P``),
the node, start and end.

**The rule**, ``image_set(job).done``: a job is done when its record exists, holds
this job's command (the exact command line of the jobs file: not a job number, a
run directory or a plan) and every image file it lists is there, with the size the
record gives it (one stat each; records from before format 3 list no sizes). The
wrapper never records a FITS file cut short (not whole 2,880-byte blocks, or shorter
than its header says). Whatever a job
log, a make target or a run directory says; a partial set is never done. Resume,
``status``, ``report``, ``plan``, ``--dry-run`` and every engine ask this module;
on the node, bin/imgpipe-job reads the same record the same way before it runs a
job (tests/test_image_sets.py runs both on the same cases).

**The claim** ``P.imgpipe-claim``: while a job works on its set, its wrapper holds
a lock (flock) on this file, and so does WSClean, which inherits it; the file says
who holds it. A second job that wants the same set waits for it a while, then
fails naming the holder. A lock dies with the processes holding it: a claim whose
holder is gone is free, and the next job takes it over and says so.

The states of a set (``ImageSet.state``):

- ``absent``: no record (nothing made yet, or a run was stopped before the end);
- ``done``: the rule holds;
- ``incomplete``: a record of this command, but some image it lists is gone;
- ``foreign``: a record of another command (another plan, ``--combine`` against
  per-MS, other options): planning refuses to touch it unless ``--force``;
- ``damaged``: a record that cannot be read.

All but ``done`` and ``foreign`` simply run: the wrapper removes what is left of
the old set (record first) before WSClean starts, so sets are never mixed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

RECORD_SUFFIX = ".imgpipe.json"
CLAIM_SUFFIX = ".imgpipe-claim"

@dataclass(frozen=True)
class Record:
    path: str
    command: str
    images: tuple[str, ...]  # suffixes of the prefix
    sizes: tuple[int, ...] | None = None  # each image's size in bytes (records of format 3 on)
    job: str | None = None
    host: str | None = None
    start: str | None = None
    end: str | None = None
    run: str | None = None
    plan_digest: str | None = None


@dataclass(frozen=True)
class ImageSet:
    prefix: str
    state: str  # absent | done | incomplete | foreign | damaged
    record: Record | None = None
    missing: tuple[str, ...] = ()  # listed image files that are gone (full paths)
    problem: str | None = None  # why a damaged record cannot be read

    @property
    def done(self) -> bool:
        return self.state == "done"


def record_path(prefix: str) -> str:
    return prefix + RECORD_SUFFIX


def claim_path(prefix: str) -> str:
    return prefix + CLAIM_SUFFIX


def read_record(path: str) -> Record:
    """The record at ``path``; OSError when it cannot be read, ValueError when it is not a record."""
    fd = os.open(path, os.O_RDONLY)  # (not open(): status reads 50,000 records)
    try:
        data = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
    finally:
        os.close(fd)
    doc = json.loads(data)  # (bytes: json reads UTF-8 itself, and says when it is not)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    command, images = doc.get("command"), doc.get("images", [])
    if not isinstance(command, str):
        raise ValueError("no command in it")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ValueError("its image list is not a list of file names")

    sizes = doc.get("sizes")
    if sizes is not None and (not isinstance(sizes, list) or len(sizes) != len(images)
                              or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)):
        raise ValueError("its list of image sizes does not match its images")
    text = {k: v for k in _TEXT_FIELDS if isinstance(v := doc.get(k), str)}
    return Record(path, command, tuple(images), None if sizes is None else tuple(sizes), **text)


_TEXT_FIELDS = ("job", "host", "start", "end", "run", "plan_digest")
LISTED = 4  # a directory asked about more names than this is listed once; fewer: a stat each


def _split(path: str) -> tuple[str, str]:
    cut = path.rfind("/") + 1
    return path[: max(cut - 1, 1) if cut > 1 else cut], path[cut:]


def _cut(paths: list[tuple[str, int]]) -> set[str]:
    """Which of (path, size) are not there with that size: a stat each (a file cut short after
    it was recorded, by a full disk or by hand, is not done)."""
    gone = set()
    for path, size in paths:
        try:
            if os.stat(path).st_size != size:
                gone.add(path)
        except OSError:
            gone.add(path)
    return gone


def _missing(paths: list[str]) -> set[str]:
    """Which of ``paths`` are not there: a directory asked about more than LISTED of them is
    listed once, however many sets live there; the others are asked one by one. (For records
    without sizes, from before format 3.)"""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(_split(path)[0], []).append(path)
    gone = set()
    for folder, asked in by_folder.items():
        names = None
        if len(asked) > LISTED:
            try:
                names = frozenset(os.listdir(folder or "."))
            except OSError:
                pass
        for path in asked:
            if not (_split(path)[1] in names if names is not None else os.path.isfile(path)):
                gone.add(path)
    return gone


def _state(prefix: str, command: str) -> ImageSet | tuple[Record, list[str]]:
    """A set's state when its record alone says it; else (its record, the image paths to look for)."""
    path = record_path(prefix)
    try:
        record = read_record(path)
    except FileNotFoundError:
        return ImageSet(prefix, "absent")
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return ImageSet(prefix, "damaged", problem=getattr(e, "strerror", None) or str(e))
    if record.command != command:
        return ImageSet(prefix, "foreign", record)
    return record, [prefix + s for s in record.images]


def _image_sets(named: list[tuple[str, str, str]]) -> dict[str, ImageSet]:
    """key -> ImageSet for (key, prefix, command) triples: every record first, then every image
    they list, looked for at once (``_missing``)."""
    states = {key: _state(prefix, command) for key, prefix, command in named}
    listed = [st for st in states.values() if not isinstance(st, ImageSet)]
    gone = _missing([p for record, paths in listed if record.sizes is None for p in paths])
    gone |= _cut([pair for record, paths in listed if record.sizes is not None for pair in zip(paths, record.sizes)])
    prefixes = {key: prefix for key, prefix, _ in named}
    out = {}
    for key, st in states.items():
        if isinstance(st, ImageSet):
            out[key] = st
            continue
        record, paths = st
        missing = tuple(p for p in paths if p in gone) if gone else ()
        out[key] = ImageSet(prefixes[key], "incomplete" if missing or not paths else "done", record, missing)
    return out


def image_set(job) -> ImageSet:
    """THE rule, for one job (anything with ``name``, the -name prefix, and ``command``)."""
    return _image_sets([("", job.name, job.command)])[""]


def image_sets(jobs: Iterable) -> dict[str, ImageSet]:
    """job id -> its image set, for many jobs (the same rule, its file system questions grouped)."""
    return _image_sets([(job.id, job.name, job.command) for job in jobs])


FORCE_HINT = ("these images were made by another plan or other options: to replace them, run again with --force "
              "(their files are removed first); to keep both, change out-dir or name")


def foreign_problems(jobs, sets: dict[str, ImageSet]) -> list[str]:
    """One line per job whose image set holds the images of another command (a plan error): what
    differs between that command and the job's, option by option."""
    problems = []
    for job in jobs:
        s = sets[job.id]
        if s.state == "foreign":
            r = s.record
            made = f"job {r.job or '?'}" + (f" of run {r.run}" if r.run else "") + f", {r.end or '?'} on {r.host or '?'}"
            problems.append(f"job {job.id}: its images {job.name}-* were made by another command "
                            f"(record {r.path}: {made}); what differs: {command_changes(r.command, job.argv)}")
    return problems


def _options(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """A planned WSClean command's options (each with its words, -name and -temp-dir left out)
    and its MSs (the words after -temp-dir's)."""
    ms: list[str] = []
    if "-temp-dir" in argv:
        t = argv.index("-temp-dir")
        argv, ms = argv[:t], argv[t + 2:]
    options: dict[str, list[str]] = {}
    key = None
    for word in argv[1:]:
        if len(word) > 1 and word[0] == "-" and word[1].isalpha():
            key = word
            options[key] = []
        elif key is not None:
            options[key].append(word)
    options.pop("-name", None)
    return options, ms


def command_changes(old_command: str, new_argv) -> str:
    """What differs from the command that made a set to a job's, in a few words: '-channels-out 4
    -> 8; -niter 1000 (not any more); the MSs: 1 -> 4 (a.MS .. d.MS)'."""
    import shlex

    try:
        old, old_ms = _options(shlex.split(old_command))
    except ValueError:
        return f"the command that made them cannot be read: {old_command[:200]}"
    new, new_ms = _options(list(new_argv))
    changes = []
    for key in list(dict.fromkeys([*old, *new])):
        before, after = " ".join(old.get(key, [])) or "(on)", " ".join(new.get(key, [])) or "(on)"
        if key not in new:
            changes.append(f"{key} {before} (not any more)")
        elif key not in old:
            changes.append(f"{key} {after} (new)")
        elif before != after:
            changes.append(f"{key} {before} -> {after}")
    if old_ms != new_ms:
        names = [os.path.basename(m.rstrip("/")) for m in new_ms]
        shown = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}" if names else "none"
        changes.append(f"the MSs: {len(old_ms)} -> {len(new_ms)} ({shown})" if len(old_ms) != len(new_ms)
                       else f"other MSs ({shown})")
    return "; ".join(changes) or "the same options, written otherwise"


def _signature(job) -> tuple[str, ...]:
    """A job's options: its command without its image name, temp dir and MSs."""
    argv = list(job.argv[: len(job.argv) - len(job.ms)])
    for flag in ("-name", "-temp-dir"):
        if flag in argv:
            i = argv.index(flag)
            del argv[i: i + 2]
    return tuple(argv)


def _runtime(record: Record) -> float | None:
    from datetime import datetime

    try:
        start, end = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z") for t in (record.start, record.end))
    except (TypeError, ValueError):
        return None
    return max(0.0, (end - start).total_seconds())


def seconds_per_cost(jobs, sets: dict[str, ImageSet]) -> dict[tuple[str, ...], float]:
    """For each set of options (a job's command but its names and MSs), how many seconds one unit of
    ``Job.cost`` took, from the records of the done jobs with those options (their median)."""
    rates: dict[tuple[str, ...], list[float]] = {}
    for job in jobs:
        s = sets.get(job.id)
        if s is None or not s.done or job.cost <= 0:
            continue
        runtime = _runtime(s.record)
        if runtime is not None:
            rates.setdefault(_signature(job), []).append(runtime / job.cost)
    if not rates:
        return {}
    import statistics  # (5 ms to import: only when some job ran before)

    return {sig: statistics.median(r) for sig, r in rates.items()}


def estimated_seconds(job, rates: dict[tuple[str, ...], float]) -> float | None:
    """A job's runtime in seconds, from the jobs with its options that ran before (None: none did)."""
    rate = rates.get(_signature(job))
    return None if rate is None else job.cost * rate
