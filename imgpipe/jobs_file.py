"""The jobs file: the plan as plain text, one job per line, byte-identical for the same plan.

Format (format 1)::

    # imgpipe jobs file, format 1
    # config: /abs/path/img.toml
    # plan-digest: <sha256 hex>
    # worker: {"env_file": "", "max_concurrent": 4, ...}
    # data: [["0001", "20231201_NT04", "SW03"], ...]       (with a data handler only)
    # one job per line: ID <TAB> HOST <TAB> COMMAND   (HOST '*' = any node)
    0001<TAB>node001<TAB>wsclean -name /data/img ... /data/SW03_T001.MS

``data`` says which obs_id and spectral window each job images, when the data handler
named them (for status and runs; it is not part of the plan's digest: it changes nothing
that runs).

COMMAND is the complete WSClean command line, every word shell-quoted: it can
be pasted into a shell as it is. Nothing in the file depends on the time or the
machine, so GNU parallel's ``--resume`` can trust it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from pathlib import Path

from .config import QualitySettings, RunSettings, build_quality
from .errors import ImgpipeError
from .files import write_whole
from .plan import Job, Plan, plan_digest

FORMAT_LINE = "# imgpipe jobs file, format 1"
ANY_HOST = "*"
RUNS_DIR = "imgpipe-runs"
JOBS_FILE_NAME = "jobs.txt"


def render(plan: Plan) -> str:
    lines = [
        FORMAT_LINE,
        f"# config: {plan.config_path}",
        f"# plan-digest: {plan.digest}",
        "# worker: " + json.dumps(plan.worker.as_dict(), sort_keys=True, ensure_ascii=False),
    ]
    data = [[j.id, j.obs_id, j.sw] for j in plan.jobs if j.obs_id or j.sw]
    if data:
        lines.append("# data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    if plan.quality != QualitySettings():  # ([quality] as set: outside the digest, as judging is not running)
        lines.append("# quality: " + json.dumps(plan.quality.as_dict(), sort_keys=True))
    lines += [
        "# one job per line: ID <TAB> HOST <TAB> COMMAND   (HOST '*' = any node)",
    ]
    for job in plan.jobs:
        lines.append(f"{job.id}\t{job.host or ANY_HOST}\t{job.command}")
    for line in lines:  # one job per line, or a shell would run half a command as another
        if "\n" in line or "\r" in line:
            raise ImgpipeError(
                f"cannot write a jobs file: a line would hold a newline: {line!r}",
                hint="remove newlines from the config path, MS paths and [wsclean] values",
            )
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            shown = line.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
            raise ImgpipeError(
                f"cannot write a jobs file: a line would hold bytes that are not UTF-8 (shown as \\x..): {shown}",
                hint="a path, or an environment variable used in out-dir, is not UTF-8: rename it",
            ) from None
    return "\n".join(lines) + "\n"


def default_path(plan: Plan, base: str | os.PathLike = ".") -> Path:
    """``imgpipe-runs/<config name>-<digest[:12]>/jobs.txt``: one run directory per plan."""
    stem = Path(plan.config_path).stem
    return Path(base) / RUNS_DIR / f"{stem}-{plan.digest[:12]}" / JOBS_FILE_NAME


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less this process's umask: the mode ``open`` gives a new file (every file of a run)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def check_target(path: Path) -> None:
    """Refuse anything at ``path`` but a jobs file: a directory, a device, a symlink, another file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ImgpipeError(f"cannot write the jobs file: {e.strerror}", where=str(path)) from None
    hint = "give --jobs-file the path of a new file, or of a jobs file written by imgpipe"
    if stat.S_ISLNK(st.st_mode):
        raise ImgpipeError(f"cannot write the jobs file: this is a symbolic link (to {os.readlink(path)}), "
                           "and imgpipe does not write through links",
                           where=str(path), hint="give the real path of the jobs file") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImgpipeError("cannot write the jobs file: this is a directory", where=str(path),
                           hint=f"give the path of a file in it, e.g. {path / JOBS_FILE_NAME}")
    if not stat.S_ISREG(st.st_mode):
        raise ImgpipeError("cannot write the jobs file: this is not a regular file (a device, a pipe or a socket)",
                           where=str(path), hint=hint)
    try:
        with open(path, "rb") as f:
            first = f.read(len(FORMAT_LINE) + 1)
    except OSError as e:
        raise ImgpipeError(f"cannot read the file already there: {e.strerror}", where=str(path), hint=hint) from None
    if first not in (FORMAT_LINE.encode() + b"\n", b""):
        raise ImgpipeError("cannot write the jobs file: a file that is not an imgpipe jobs file is there, "
                           "and it is not replaced",
                           where=str(path), hint=hint)


def write(plan: Plan, path: str | os.PathLike) -> Path:
    """Write atomically (a reader never sees half a file); unchanged content is left alone.

    Only a jobs file (or nothing) at ``path`` is replaced; the new file gets the mode any
    file of the run gets (0666 less the umask), so colleagues read a shared run.
    """
    path = Path(path)
    text = render(plan)
    check_target(path)
    if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, text)  # (a failed write leaves nothing behind)
    except OSError as e:
        raise ImgpipeError(f"cannot write the jobs file: {e.strerror or e}", where=str(path)) from None
    return path


def read(path: str | os.PathLike) -> Plan:
    """Parse a jobs file back into a Plan (job ids, hosts and argv; the MS list is the argv's tail)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImgpipeError("jobs file not found", where=str(path)) from None
    except OSError as e:
        raise ImgpipeError(f"cannot read the jobs file: {e}", where=str(path)) from None
    lines = text.split("\n")
    if not lines or lines[0] != FORMAT_LINE:
        raise ImgpipeError("not an imgpipe jobs file (first line differs)", where=str(path),
                           hint="make one with `imgpipe plan CONFIG INPUTS...`")
    header: dict[str, str] = {}
    jobs: list[Job] = []
    data: dict[str, tuple] | None = None  # job id -> (obs_id, sw), from the header's data line
    bare_words = re.compile(_BARE_WORDS)
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(": ")
            if sep:
                header[key] = value
            continue
        if data is None:
            data = _data(header.get("data"), path)
        try:
            job_id, host, command = line.split("\t", 2)
            bare = bare_words.fullmatch(command)  # (most lines: safe words only, no quote)
            argv = command.split(" ") if bare else split_command(command)
        except ValueError as e:
            raise ImgpipeError(f"line {n} is not ID<TAB>HOST<TAB>COMMAND ({e})", where=str(path)) from None
        job = _job_from_argv(job_id, None if host == ANY_HOST else host, argv, *data.get(job_id, (None, None)))
        if bare:  # shlex.join gives the line itself back (saves it for 50,000 jobs)
            job.__dict__["command"] = command
        jobs.append(job)
    try:
        worker = RunSettings.from_dict(json.loads(header["worker"]))
        digest = header["plan-digest"]
        config = header["config"]
    except KeyError as e:
        raise ImgpipeError(f"jobs file header is damaged (no {e.args[0]!r} line)", where=str(path)) from None
    except ValueError as e:
        raise ImgpipeError(f"jobs file header is damaged ({e})", where=str(path)) from None
    plan = Plan(config_path=config, worker=worker, jobs=tuple(jobs), digest=digest, quality=_quality(header, path))
    if plan_digest(worker, plan.jobs) != digest:
        raise ImgpipeError(
            "the jobs file was edited after planning (its plan digest no longer matches)",
            where=str(path),
            hint="plan again with `imgpipe plan`, rather than editing the jobs file",
        )
    return plan


# What shlex.quote writes: bare safe words, '...' runs, and "'" for a quote inside them. A bare
# run is taken whole only ((?!...)): with `[...]+` free to stop anywhere inside `(...)+`, a line
# that does not match (a jobs file edited by hand) took exponential time to say so.
# (Patterns, compiled on first use through re's own cache: `imgpipe plan` never reads a jobs file.)
_QUOTED_WORDS = (
    r"""(?:[A-Za-z0-9_@%+=:,./-]+(?![A-Za-z0-9_@%+=:,./-])|'[^']*'|"'")+"""
    r"""(?: (?:[A-Za-z0-9_@%+=:,./-]+(?![A-Za-z0-9_@%+=:,./-])|'[^']*'|"'")+)*""")
_BARE_WORDS = r"[A-Za-z0-9_@%+=:,./-]+(?: [A-Za-z0-9_@%+=:,./-]+)*"
_QUOTED_PIECE = r"""('[^']*'|"'")"""


def split_command(command: str) -> list[str]:
    """``shlex.split`` for the lines imgpipe writes, 5-10x faster (status reads 50,000 of them).

    A line that is not exactly what ``shlex.quote`` writes (words joined by one space)
    goes through ``shlex.split`` itself, so the result is the same for any line.
    """
    if not re.fullmatch(_QUOTED_WORDS, command):
        return shlex.split(command)
    if "'" not in command:
        return command.split(" ")
    words: list[str] = []
    word: list[str] = []
    for i, part in enumerate(re.split(_QUOTED_PIECE, command)):
        if i % 2:  # a quoted piece
            word.append("'" if part == "\"'\"" else part[1:-1])
        elif part:  # bare text: a space ends a word
            first, *rest = part.split(" ")
            word.append(first)
            for piece in rest:
                words.append("".join(word))
                word = [piece]
    words.append("".join(word))
    return words


def _quality(header: dict[str, str], path: Path) -> QualitySettings:
    """The header's ``quality`` line ([quality] as the plan had it; none: the defaults)."""
    if "quality" not in header:
        return QualitySettings()
    try:
        return build_quality(json.loads(header["quality"]), lambda key: f"{path}: its quality line")
    except (ValueError, ImgpipeError) as e:
        raise ImgpipeError(f"jobs file header is damaged (its quality line: {getattr(e, 'message', e)})",
                           where=str(path)) from None


def _data(text: str | None, path: Path) -> dict[str, tuple]:
    """job id -> (obs_id, sw) from the header's ``data`` line (none: no data handler named them)."""
    if not text:
        return {}
    try:
        return {str(jid): (obs or None, sw or None) for jid, obs, sw in json.loads(text)}
    except (ValueError, TypeError) as e:
        raise ImgpipeError(f"jobs file header is damaged (its data line: {e})", where=str(path)) from None


def _job_from_argv(job_id: str, host: str | None, argv: list[str], obs_id: str | None = None,
                   sw: str | None = None) -> Job:
    """Recover a job's fields from its argv.

    The planner always writes ``wsclean -name PREFIX ... -temp-dir DIR MS...``:
    the MSs are the words after the temp dir.
    """
    try:
        name = argv[argv.index("-name") + 1]
        t = len(argv) - 2  # -temp-dir DIR comes just before the MSs: look for it from the end
        while argv[t] != "-temp-dir":
            t -= 1
            if t < 0:
                raise ValueError
        temp_dir = argv[t + 1]
    except (ValueError, IndexError):
        raise ImgpipeError(f"job {job_id}: command lacks -name or -temp-dir; was it planned by imgpipe?") from None
    channels_out = int(argv[argv.index("-channels-out") + 1]) if "-channels-out" in argv else None
    return Job(id=job_id, host=host, argv=tuple(argv), ms=tuple(argv[t + 2 :]), name=name,
               out_dir=os.path.dirname(name), temp_dir=temp_dir, channels_out=channels_out, obs_id=obs_id, sw=sw)
