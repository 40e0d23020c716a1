"""Host names: the ``[worker] nodes`` syntax, and which node a job runs on.

Pure functions, no I/O but ``socket.gethostname``.
"""

from __future__ import annotations

import re
import socket
from collections import Counter

LOCAL_NAMES = ("localhost",)
SLURM = "slurm"

_RANGE_RE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in nodes {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in nodes {text!r}")
    parts.append("".join(cur))
    return parts


def _expand_one(item: str) -> list[str]:
    m = re.fullmatch(r"([^\[\]]*)\[([^\[\]]*)\]([^\[\]]*)", item)
    if not m:
        if "[" in item or "]" in item:
            raise ValueError(f"cannot read host range {item!r} (one [...] per host name, e.g. 'node[1-3]')")
        return [item]
    prefix, inner, suffix = m.groups()
    names = []
    for piece in inner.split(","):
        piece = piece.strip()
        if not piece:
            raise ValueError(f"empty entry in the brackets of {item!r}")
        r = _RANGE_RE.match(piece)
        if r:
            lo, hi = r.groups()
            if int(lo) > int(hi):
                raise ValueError(f"range [{piece}] in {item!r} goes backwards")
            width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
            names.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(int(lo), int(hi) + 1))
        elif "-" in piece:  # 'a-c', '1--3', '1-': only numeric ranges exist
            raise ValueError(f"cannot read range [{piece}] in {item!r}: a range is two whole numbers, e.g. [1-3]")
        elif re.fullmatch(r"[\w.]+", piece):
            names.append(f"{prefix}{piece}{suffix}")
        else:
            raise ValueError(f"cannot read {piece!r} in host range {item!r}")
    return names


def parse_nodes(text: str) -> tuple[str, ...]:
    """'node[1-3], node[08-09],nancep5' -> ('node1','node2','node3','node08','node09','nancep5').

    Order is kept, spaces are stripped, duplicates are dropped.
    """
    out: list[str] = []
    for raw in _split_outside_brackets(text):
        item = raw.strip()
        if not item:
            continue
        if re.search(r"\s", re.sub(r"\[[^\]]*\]", "[]", item)):  # spaces inside [...] are fine
            raise ValueError(f"host name {item!r} contains a space (separate hosts with commas)")
        for name in _expand_one(item):
            if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
                raise ValueError(f"{name!r} is not a valid host name")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no host given")
    return tuple(out)


def is_local(host: str) -> bool:
    """True when ``host`` means this machine (runs without ssh)."""
    if host in LOCAL_NAMES:
        return True
    here = socket.gethostname()
    return host in (here, here.split(".")[0])


def is_slurm(nodes: tuple[str, ...]) -> bool:
    return nodes == (SLURM,)


def host_from_path(pattern: re.Pattern, path: str) -> str | None:
    """The first group of ``pattern`` searched in ``path``, or None when it does not match."""
    m = pattern.search(path)
    if not m or m.group(1) is None:
        return None
    return m.group(1)


def majority_host(hosts: list[str]) -> str:
    """The host holding most of a group's MSs; on a tie, the one of the latest MS among the tied."""
    counts = Counter(hosts)
    top = max(counts.values())
    tied = {h for h, c in counts.items() if c == top}
    for h in reversed(hosts):
        if h in tied:
            return h
    raise AssertionError("unreachable")
