"""Inputs: what the user named on the command line, as a list of MS inputs.

Two sources: plain MS paths, or obs_id patterns resolved by the data handler
(``[data_handler]`` in the config). Either way the result is a list of
``MSInput`` with absolute paths, each MS once, in the order given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .config import Config
from .errors import ImgpipeError

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f]")  # control characters but TAB


@dataclass(frozen=True)
class MSInput:
    path: str  # absolute, normalised
    obs_id: str | None = None
    sw: str | None = None
    node: str | None = None  # the node that holds it, from the data handler's node map


def check_path_text(path: str) -> None:
    """A path that would break a one-job-per-line jobs file, or that is not UTF-8 (the jobs file,
    casacore and WSClean's command line need it), is refused up front."""
    if _CONTROL_RE.search(path):
        raise ImgpipeError(
            f"MS path {path!r} contains a control character (newline?)",
            hint="rename the MS: imgpipe writes one job per line",
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        raise ImgpipeError(
            f"MS path '{shown}' is not valid UTF-8 (the bytes shown as \\x..)",
            hint="rename the MS (or a directory above it) to a UTF-8 name: casacore and the jobs file need one",
        ) from None


def dedupe(inputs: list[MSInput]) -> list[MSInput]:
    """Keep the first of each MS (by real path): the same MS is imaged once."""
    seen: set = set()
    out = []
    for item in inputs:
        try:  # one stat, not an lstat per path component (a directory cannot be hard-linked)
            st = os.stat(item.path)
            key: object = (st.st_dev, st.st_ino)
        except OSError:  # missing or unreadable: reported later, with its path
            key = os.path.realpath(item.path)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def from_paths(paths: list[str]) -> list[MSInput]:
    items = []
    for p in paths:
        check_path_text(p)
        # taken as given (the shell has expanded what it should): '~/x.MS' here is a
        # directory named '~' in the current directory, not the home directory
        items.append(MSInput(path=os.path.abspath(p)))
    return dedupe(items)


def resolve_inputs(config: Config, args: list[str]) -> list[MSInput]:
    """MS inputs for the command-line arguments (paths, or patterns with a data handler)."""
    if not args:
        what = "obs_id patterns" if config.data_handler else "MS paths"
        raise ImgpipeError(f"no input given: name one or more {what} after the config file")
    if config.data_handler is not None:
        from .data_handler import resolve_patterns

        resolved = []
        for e in resolve_patterns(config.data_handler, args):
            check_path_text(e.path)
            resolved.append(MSInput(path=e.path, obs_id=e.obs_id, sw=e.sw, node=e.node))
        return dedupe(resolved)
    return from_paths(args)


def ms_problem(path: str) -> str | None:
    """Why ``path`` is not a readable Measurement Set, or None (no casacore needed)."""
    if not os.path.exists(path):
        if os.path.islink(path):
            return f"{path}: is a symbolic link that leads nowhere (a loop, or its target is gone)"
        parent = os.path.dirname(path)
        if os.path.isdir(parent) and not os.access(parent, os.X_OK):
            return f"{path}: cannot be looked at (permission denied on {parent})"
        return f"{path}: does not exist"
    if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        return f"{path}: is not readable (permission denied)"
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "table.dat")):
        return f"{path}: is not a Measurement Set (no casacore table.dat in it)"
    if not os.access(os.path.join(path, "table.dat"), os.R_OK):
        return f"{path}: is not readable (permission denied)"
    if not os.path.isfile(os.path.join(path, "SPECTRAL_WINDOW", "table.dat")):
        return f"{path}: has no SPECTRAL_WINDOW subtable"
    return None


def describe_inputs(dh, patterns: list[str]) -> list[dict]:
    """``imgpipe inputs``: one row per MS the patterns select (obs_id, sw, node, path, exists,
    readable), in the order resolved; a chunk look-up that found nothing is a row too."""
    from .data_handler import selected

    rows = []
    for e in selected(dh, patterns):
        exists = e.found and os.path.exists(e.path)
        rows.append({"obs_id": e.obs_id, "sw": e.sw, "node": e.node, "path": e.path, "exists": exists,
                     "readable": exists and ms_problem(e.path) is None})
    return rows
