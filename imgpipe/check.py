"""``--check``: ask WSClean itself (``wsclean -dry-run``) whether it accepts each command.

``-dry-run`` parses the options and exits without opening the MS. Jobs whose
commands differ only in ``-name``, ``-temp-dir`` and the MS paths are checked once.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

from .commands import run
from .errors import PlanErrors
from .plan import Plan


def _shape(argv: tuple[str, ...], ms_count: int) -> tuple[str, ...]:
    words = list(argv[: len(argv) - ms_count])
    for flag in ("-name", "-temp-dir"):
        if flag in words:
            words[words.index(flag) + 1] = f"/imgpipe-check{flag}"
    return tuple(words) + ("/imgpipe-check.ms",)


def _reason(output: str) -> str:
    for line in output.splitlines():
        if ">>>" in line:
            return line.split(">>>", 1)[1].strip()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def _which(ids: list[str]) -> str:
    return f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]}..{ids[-1]} ({len(ids)})"


def _dry_run(argv: tuple[str, ...], wsclean: str) -> tuple[int, str]:
    result = run([wsclean, "-dry-run", *argv[1:]], timeout=120)
    if result.code is None:
        return 255, f"`wsclean -dry-run` {result.error}"
    output = result.stdout + result.stderr
    # WSClean 3.1 reports a parse error with exit 255, or in some builds prints it and exits 0
    failed = result.code != 0 or "An exception occured" in output or "An exception occurred" in output
    return (result.code or 255) if failed else 0, output


def check_plan(plan: Plan, wsclean: str | None = None) -> int | None:
    """Raise PlanErrors listing every rejected command. Returns the number of distinct
    commands checked, or None when wsclean is not installed here (nothing checked)."""
    shapes: dict[tuple[str, ...], list[str]] = {}
    for job in plan.jobs:
        shapes.setdefault(_shape(job.argv, len(job.ms)), []).append(job.id)
    wsclean = wsclean or shutil.which("wsclean")
    if not wsclean:
        return None
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: _dry_run(s, wsclean), shapes))
    problems = []
    for (shape, ids), (code, output) in zip(shapes.items(), results):
        if code:
            problems.append(f"{_which(ids)}: `wsclean -dry-run` rejects the command: {_reason(output)}")
    if problems:
        raise PlanErrors(problems, hint="fix the [wsclean] option named in the message")
    return len(shapes)
