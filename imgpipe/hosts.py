"""Host names: the ``[worker] nodes`` syntax (Slurm's, read and written by python-hostlist),
and which node a job runs on.

Pure functions, no I/O but ``socket.gethostname``.
"""

from __future__ import annotations

import re
import socket
from collections import Counter

LOCAL_NAMES = ("localhost",)
SLURM = "slurm"

MAX_NODES = 10_000  # more hosts than any cluster imgpipe runs on: a typo such as node[1-9999999]
_BRACKETS = re.compile(r"\[[^\]]*\]")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.@][A-Za-z0-9_.@-]*")
_REASONS = {  # python-hostlist's words, said for a user
    "start > stop": "the range goes backwards (write the smaller number first, e.g. [1-3])",
    "bad range": "a range is whole numbers, e.g. [1-3], [08-11] or [1,5]",
    "range too large": f"more than {MAX_NODES:,} hosts",
    "results too large": f"more than {MAX_NODES:,} hosts",
}


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


def _expand(item: str) -> list[str]:
    """One comma-free item, e.g. 'node[001-003,007]', expanded by python-hostlist (Slurm's syntax)."""
    import hostlist

    try:
        return hostlist.expand_hostlist(item)
    except hostlist.BadHostlist as e:
        for group in _BRACKETS.findall(item):  # which [...] it was: ask hostlist of each alone
            try:
                hostlist.expand_hostlist("h" + group)
            except hostlist.BadHostlist as alone:
                raise ValueError(f"cannot read {group} in {item!r}: {_REASONS.get(str(alone), alone)}") from None
        raise ValueError(f"cannot read host range {item!r}: {_REASONS.get(str(e), e)}") from None


def parse_nodes(text: str) -> tuple[str, ...]:
    """'node[1-3], node[08-09],nancep5' -> ('node1','node2','node3','node08','node09','nancep5').

    Slurm's host list syntax (python-hostlist expands it). Order is kept, spaces are
    stripped, duplicates are dropped; more than MAX_NODES hosts is refused.
    """
    out: dict[str, None] = {}
    for raw in _split_outside_brackets(text):
        item = _BRACKETS.sub(lambda m: re.sub(r"\s", "", m.group()), raw.strip())  # spaces inside [...] go
        if not item:
            continue
        if re.search(r"\s", item):
            raise ValueError(f"host name {item!r} contains a space (separate hosts with commas)")
        for name in _expand(item):
            if not _HOSTNAME.fullmatch(name):
                why = "starts with '-'" if name.startswith("-") else "holds a character a host name cannot"
                raise ValueError(f"{name!r} is not a valid host name ({why})")
            out[name] = None
            if len(out) > MAX_NODES:
                raise ValueError(f"nodes names more than {MAX_NODES:,} hosts ({text[:60]!r}...): a typo?")
    if not out:
        raise ValueError("no host given")
    return tuple(out)


def print_nodes(hosts) -> str:
    """The shortest host list naming ``hosts`` ('node[001-003,007]'), as Slurm prints them."""
    import hostlist

    return hostlist.collect_hostlist(list(hosts))


def is_local(host: str) -> bool:
    """True when ``host`` means this machine (runs without ssh)."""
    if host in LOCAL_NAMES:
        return True
    here = socket.gethostname()
    return host in (here, here.split(".")[0])


def plan_node(host: str | None, nodes) -> str | None:
    """A node as the plan's ``nodes`` name it, from the name its wrapper gave itself (this machine:
    its local node; a short name or a full one: the plan's spelling)."""
    if not host:
        return None
    nodes = list(nodes)
    if is_local(host):
        return next((h for h in nodes if is_local(h)), "localhost")
    short = host.split(".")[0]
    return next((h for h in nodes if h == host or h.split(".")[0] == short), host)


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
