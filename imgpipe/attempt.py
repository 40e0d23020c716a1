"""One attempt of a job: the contract between imgpipe and its node-side wrapper, written once.

An engine runs each job as ``imgpipe-job`` (bin/imgpipe-job) with ``wrapper_args``; the
wrapper ends every attempt it runs with ONE structured result, the last line of its output
(``logs/<id>`` in the run directory, whatever the engine)::

    imgpipe-result {"format": 1, "job": "0003", "outcome": "done", ...}

and exits with the status its outcome has here (``OUTCOMES``). This module owns:

- the wrapper's arguments (``WRAPPER_ARGS``, ``wrapper_args``);
- the closed vocabulary of outcomes: each with its exit status, whether it is a failure, which
  retry budget it uses, and the words users read (status, report, runs, the run's summary);
- the result's schema (``Result``, format ``RESULT_FORMAT``) and how it is read (``read_result``);
- what an attempt that left no result was (``outcome_of``): ssh could not reach the node, srun
  failed, the wrapper or its engine was killed: decided here and nowhere else. A result counts
  only for an attempt whose row ended as the result says (the run loop's ``confirmed``).

bin/imgpipe-job keeps its own copy of the outcome table (``%EXIT``); tests/test_attempt.py
proves the two agree. Nobody parses the sentences of a log: they are for people.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

WRAPPER = "imgpipe-job"
RESULT_MARK = "imgpipe-result "  # the wrapper's last line: this, then the result as one line of JSON
RESULT_FORMAT = 1

# the wrapper's arguments, in order (bin/imgpipe-job reads them so)
WRAPPER_ARGS = ("TAG", "ID", "ATTEMPT", "SLOTS", "ENV_FILE", "MAX_TIME", "SHARE", "FORCE", "RUN", "COMMAND")


@dataclass(frozen=True)
class Outcome:
    name: str
    exit: int | None  # the exit status that says it (None: seen otherwise, see outcome_of)
    words: str  # what users read
    failed: bool = True
    retry: str | None = None  # "connection" (connection_retries) or "job" (retries): worth another attempt


# The closed vocabulary. Exit statuses 10-15 and 124 come from bin/imgpipe-job, 16-19 from
# bin/imgpipe-srun (what srun's own status does not say), 255 from ssh, 20 and 23 from the run loop.
OUTCOMES: dict[str, Outcome] = {o.name: o for o in (
    Outcome("done", 0, "done: its images were made", failed=False),
    Outcome("already-done", 0, "done already: its images were there", failed=False),
    Outcome("wsclean", 10, "WSClean failed", retry="job"),
    Outcome("env_file", 11, "env_file could not be sourced"),
    Outcome("setup", 12, "job set-up failed"),
    Outcome("record", 13, "the record could not be written next to the images (disk full?)"),
    Outcome("busy", 14, "another job was making the same images"),
    Outcome("foreign", 15, "images of another command are in the way (--force replaces them)"),
    Outcome("node", 16, "the Slurm node failed", retry="connection"),
    Outcome("memory", 17, "out of memory: Slurm stopped it past the memory it asked for", retry="job"),
    Outcome("time-limit", 18, "Slurm's time limit was reached", retry="job"),
    Outcome("slurm", 19, "Slurm ended it (its allocation ended, or its step was refused or cancelled)",
            retry="connection"),
    Outcome("truncated", 21, "WSClean left image files cut short (they are removed)", retry="job"),
    Outcome("disk-full", 22, "the disk of its images is full (its partial images are removed; make room, then "
            "run again)"),
    Outcome("no-images", 20, "it ended without an error, but its images are not there (the job wrapper did "
            "not run through: see its log)"),
    Outcome("timeout", 124, "max_time reached", retry="job"),
    Outcome("stopped", None, "stopped by the user (Ctrl-C, SIGTERM, a stopped run): runs again on resume",
            failed=False),
    Outcome("signal", None, "killed by a signal", retry="job"),
    Outcome("connection", 255, "ssh could not reach the node (or the connection dropped)", retry="connection"),
    Outcome("lost", 23, "its job wrapper began but never ended (its node, the connection to it, or the wrapper "
            "was lost)", retry="connection"),
)}
EXIT = {o.exit: o.name for o in OUTCOMES.values() if o.exit is not None and o.name != "already-done"}
NO_IMAGES = OUTCOMES["no-images"].exit
LOST = "lost"  # an attempt that began and left no result, and no row of its engine's (joblog.RoundRows)
STOP_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}  # a wrapper told to stop exits 128 + these

RETRY_CONNECTION = tuple(o.name for o in OUTCOMES.values() if o.retry == "connection")
RETRY_JOB = tuple(o.name for o in OUTCOMES.values() if o.retry == "job")


def encode_command(command: str) -> str:
    """COMMAND as the wrapper takes it: '%' and '@' percent-encoded (GNU parallel would read an '@'
    of an input line as its host; the wrapper decodes both, whichever engine sent it)."""
    return command.replace("%", "%25").replace("@", "%40")


def wrapper_args(plan, job_id: str, command: str, *, share: str, force: bool, run: str,
                 max_time: float | None = None, attempt: int | str = 0) -> list[str]:
    """The words after ``imgpipe-job`` (WRAPPER_ARGS); ``job_id``, ``attempt`` and ``command`` may be
    an engine's placeholders (which hold neither '%' nor '@'). The command is encoded (``encode_command``).

    ``attempt``: the attempt's place among the job's attempts in the run directory (1, 2, ...; its
    log becomes ``logs/ID.<attempt>`` when the job runs again: ``RunDir.archive_logs``), which the
    wrapper writes in its result; 0 when nobody counts them (the by-hand scripts: readers then
    take the log's place).

    ``share``: '0' WSClean as the user set it; '1' split the node's cores and memory by
    max_concurrent; 'THREADS/GB' the cores and memory Slurm granted the job.
    """
    w = plan.worker
    max_time = (w.max_time if max_time is None else max_time) or 0
    return [
        plan.tag, job_id, str(attempt), str(w.max_concurrent), w.env_file,
        str(int(max_time)) if float(max_time).is_integer() else str(max_time),
        share, "1" if force else "0", run, encode_command(command),
    ]


def share_resources(job) -> bool:
    """Split cores and memory between co-located jobs unless the user set -j/-mem/-abs-mem."""
    return not any(flag in job.argv for flag in ("-j", "-mem", "-abs-mem"))


# ---------------------------------------------------------------- the result


@dataclass(frozen=True)
class Result:
    """What the wrapper says of one attempt (format 1)."""

    job: str
    outcome: str  # a name of OUTCOMES
    tag: str = ""  # the plan (imgpipe-<digest12>)
    run: str = ""  # the run directory, host:path
    host: str | None = None  # the node, as it names itself (under Slurm: its Slurm name)
    pid: int | None = None  # the wrapper's: with host and start, which attempt this was
    start: float | None = None  # epoch seconds
    end: float | None = None
    exit_status: int = 0  # the wrapper's own
    wsclean_status: int | None = None  # WSClean's exit status, when it ran and ended
    signal: str | None = None  # the signal that stopped it (SIGTERM...) or killed WSClean (SIGKILL...)
    wsclean_error: str | None = None  # WSClean's own error line
    message: str | None = None  # the wrapper's own words, when it has more to say than the outcome
    images: tuple[tuple[str, int], ...] = ()  # (file, size in bytes) of the image set, when done
    slurm: str | None = None  # 'JOB' or 'JOB.STEP' under Slurm
    attempt: int = 0  # its place among the job's attempts (1, 2, ...), as the wrapper was told (ATTEMPT)
    path: str = ""  # the log it was read from

    @property
    def failed(self) -> bool:
        return OUTCOMES[self.outcome].failed


def parse_result(line: str) -> Result | None:
    """The result a line holds (``RESULT_MARK`` + JSON), or None: not a result, another format, damaged."""
    if not line.startswith(RESULT_MARK):
        return None
    try:
        doc = json.loads(line[len(RESULT_MARK):])
        if doc.get("format") != RESULT_FORMAT or doc.get("outcome") not in OUTCOMES:
            return None

        def num(key, kind=float):
            value = doc.get(key)
            return None if value is None else kind(value)

        return Result(
            job=str(doc["job"]), outcome=doc["outcome"], tag=str(doc.get("tag") or ""), run=str(doc.get("run") or ""),
            host=doc.get("host") or None, pid=num("pid", int), start=num("start"), end=num("end"),
            exit_status=int(doc.get("exit_status") or 0), wsclean_status=num("wsclean_status", int),
            signal=doc.get("signal") or None, wsclean_error=doc.get("wsclean_error") or None,
            message=doc.get("message") or None,
            images=tuple((str(i["file"]), int(i["size"])) for i in doc.get("images") or ()),
            slurm=doc.get("slurm") or None, attempt=num("attempt", int) or 0)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


TAIL = 8192  # bytes read at the end of a log: the result is its last line


def read_result(path: str | os.PathLike, attempt: int = 0) -> Result | None:
    """The result that ends a job's log, or None: the wrapper never finished (or never ran).
    ``attempt``: the log's place among the job's logs, for a result that does not say it (0: a
    by-hand script ran it)."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(0, end - TAIL))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    at = tail.rfind("\n" + RESULT_MARK)
    line = tail[at + 1:] if at >= 0 else tail if tail.startswith(RESULT_MARK) else ""
    result = parse_result(line.split("\n", 1)[0])
    if result is None:
        return None
    from dataclasses import replace

    return replace(result, attempt=result.attempt or attempt, path=os.fspath(path))


# ---------------------------------------------------------------- an attempt that left no result


def outcome_of(exitval: int, signal: int = 0) -> tuple[str, str]:
    """(outcome, words) of an attempt from its exit status alone: what the engine saw when the
    wrapper left no result (ssh 255, srun's own failures, a wrapper or engine that was killed)."""
    if signal:
        return "signal", f"killed by signal {signal}"
    if exitval in EXIT:
        name = EXIT[exitval]
        return name, OUTCOMES[name].words
    if exitval == -1:
        return "timeout", "stopped by GNU parallel's --timeout"
    if exitval > 128:
        sig = exitval - 128
        if sig in STOP_SIGNALS:
            return "stopped", f"{OUTCOMES['stopped'].words} ({STOP_SIGNALS[sig]})"
        return "signal", f"WSClean killed by signal {sig}" + (" (KILL: out of memory?)" if sig == 9 else "")
    return "wsclean", f"exit status {exitval}"


# ---------------------------------------------------------------- a job's log: its two structured lines

START_MARK = "imgpipe-start "  # the wrapper's first structured line: where and when the attempt began
HEAD = 4096  # bytes read at the start of a log: the start line is near its top


@dataclass(frozen=True)
class LogFacts:
    """One attempt, as its log's two structured lines say it (none of its sentences is read)."""

    path: str
    job_id: str
    host: str | None = None  # as the node names itself
    start: float | None = None
    end: float | None = None  # when the wrapper ended it (None: it has not, or it never said)
    stopped: str | None = None  # 'SIGTERM'... when the attempt was stopped by the user
    wsclean_status: int | None = None  # WSClean's exit status, when WSClean failed
    wsclean_error: str | None = None  # WSClean's own error line
    result: Result | None = field(default=None, compare=False)
    slurm: str | None = None  # 'JOB' or 'JOB.STEP' under Slurm


def started(path: str | os.PathLike) -> dict:
    """The start line of a log (``START_MARK``: job, tag, run, host, pid, start...), or {}: the wrapper never began."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD).decode("utf-8", errors="replace")
    except OSError:
        return {}
    at = head.find(START_MARK)
    while at > 0 and head[at - 1] != "\n":
        at = head.find(START_MARK, at + 1)
    if at < 0:
        return {}
    try:
        doc = json.loads(head[at + len(START_MARK):].split("\n", 1)[0])
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) and doc.get("format") == RESULT_FORMAT else {}


def read_log(path: str | os.PathLike, job_id: str = "", attempt: int = 0) -> LogFacts:
    """What one attempt's log says in its structured lines (two short reads: cheap for thousands)."""
    began = started(path)
    result = read_result(path, attempt)
    start = began.get("start")
    start = float(start) if isinstance(start, (int, float)) else result.start if result else None
    failed_wsclean = result is not None and result.outcome in ("wsclean", "signal") and result.wsclean_status
    return LogFacts(
        os.fspath(path), job_id or (result.job if result else str(began.get("job") or "")),
        host=(result.host if result else None) or began.get("host") or None, start=start,
        end=result.end if result else None,
        stopped=(result.signal or "a stop") if result is not None and result.outcome == "stopped" else None,
        wsclean_status=result.wsclean_status if failed_wsclean else None,
        wsclean_error=result.wsclean_error if result else None, result=result,
        slurm=(result.slurm if result else None) or began.get("slurm") or None)


def job_error(path) -> str | None:
    """What went wrong in a failed attempt, in one line: WSClean's own error, else the wrapper's
    words; None when its result says nothing more than its outcome (or there is no result)."""
    result = read_result(path)
    if result is None or not result.failed:
        return None
    return result.wsclean_error or result.message
