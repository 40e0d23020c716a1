"""The data handler: obs_id patterns on the command line become MS inputs (nenucal-compatible).

A NenuFAR ``data_handler.toml`` (the file nenucal's tools share) says which
spectral windows (SWs) exist, on which node each obs_id keeps each SW, and
where the MSs of each data level are. This module reads that file, unchanged,
and turns patterns such as ``"202312*_NT04"`` or ``"20231201_NT04:SW0[12]"``
into entries (absolute path, obs_id, SW, node), which ``inputs`` makes the MS inputs.

Layers, as in the rest of the package:

- ``parse_data_handler(data, source)``: a parsed TOML document becomes a
  checked ``DataHandler`` (pure; raises ``ImgpipeError`` naming the table/key).
- ``split_pattern``, ``select``, ``dir_path``, ``resolve``: pure resolution.
  The only file-system look-up needed, listing the time chunks of N2 obs_ids
  (and of LST levels), is a function passed in (``list_chunks``).
- ``load_data_handler``, ``resolve_patterns``, ``selected``: the file I/O around them.

The file
--------
``[spectral_windows]``: ``SW01 = [106, 169]`` (first and last subband,
inclusive) or a composite ``SWALL = ['SW01', 'SW02']`` (members may be
composites too; they are flattened). ``[obs_ids]``: ``"OBS" = ['node001',
...]``, the node of each non-composite SW in file order. Levels in the new
format ``[data_levels.NAME]`` (``path`` required; ``input``, ``subbands``,
``lst`` and ``split`` are read for the layout, every other key is ignored) or
the old one ``[data_level_path] NAME = 'template'`` (with the old
``[l1_to_l2_config.NAME]`` and ``[lst_binning.NAME]`` read for the layout);
both at once is an error, as in nenucal. ``[n2_obs_ids]``: ``"NAME" = {nodes =
'node[003-004]', n1_obs_ids = [...]}`` (``nodes`` in the ``[worker] nodes``
syntax, or a list). ``[n2_group]``: ``"GROUP" = ['N2_A', 'N2_B']`` (members
are obs_ids or N2 obs_ids; an obs_id belongs to one group at most, as in
nenucal). Every other table (``[worker]``, ``[remote_hosts]``,
``[obs_calibration_map]``, ...) belongs to other tools and is ignored.

Path templates: ``%NODE%``, ``%OBS_ID%``, ``%N1_OBS_ID%``, ``%YEAR%``,
``%MONTH%``, substituted in one pass (a value is never substituted again).
When the template has neither ``%OBS_ID%`` nor ``%N1_OBS_ID%``, the obs_id is
appended as a subdirectory. Any other ``%WORD%`` in the level's template is an
error.

Layouts: an L2-style level has ``<dir>/<SW>.MS``; a subband level (``subbands
= true``, or a name starting with ``L1``/``l1`` and no ``input``, nenucal's
rule) has ``<dir>/SB<n>.MS`` for each subband of the SW; an LST level (with
``lst``, or made MS by MS from one) has the sorted chunks/bins
``<dir>/<SW>_T###.MS`` and ``<dir>/<SW>_LST###.MS``. N2 obs_ids at a
non-subband level have the chunks ``<dir>/<SW>_T###.MS`` found in each node's
directory, sorted by chunk index (a directory shared by several nodes, no
``%NODE%`` in the template, is listed once, with the first node).

Patterns: ``OBSPAT[,OBSPAT...][:SWPAT]``. Each OBSPAT is a case-sensitive
fnmatch glob over the selectable names: the ``[obs_ids]``, then the
``[n2_obs_ids]``, then the ``[n2_group]`` names, each in file order. SWPAT is a
glob over every SW name, composites included, in file order (several SWPATs
may be given with commas: ``:SW01,SW03``); without it, every non-composite SW.

Decisions where the spec is silent (what a NenuFAR user would expect):

- Order: pattern arguments in the order given; within one, SW by SW and, for
  each SW, obs_id by obs_id, as nenucal's imgpipe loops (so its jobs come in
  the same order). The obs_ids an argument selects are in file order, whatever
  the order of its OBSPATs (nenucal keeps the OBSPATs' order: the only
  difference, for ``B,A`` with A before B in the file); SWs likewise. An MS
  named twice (overlapping patterns, or a composite SW with its members) keeps
  its first place: it is imaged once.
- ``MSInput.sw`` is the SW *as selected*: for an MS selected through a
  composite SW it is the composite's name, not the member's. That is what
  nenucal's imgpipe does (it groups by the SW it was given, so
  ``"OBS:SWALL" --combine`` makes one wide-band job per obs_id with
  ``$sw$ = SWALL``, and ``channels-out = 'all'`` then counts the channels of
  every member), and it is the only reason to name a composite rather than
  ``:SW0*`` (which selects and groups the members one by one). N2 data can even
  hold MSs named after the composite (``SWALL_T000.MS``), which belong to no
  member. Without ``--combine``, ``$sw$`` in out-dir is then the composite's
  name for every member MS; the planner refuses jobs that would write the
  same images.
- N2 obs_id with a composite SW (non-subband level): its own chunks
  ``<COMPOSITE>_T###.MS`` as nenucal lists them; when there are none, the
  chunks of its members.
- N2 obs_id at a subband level: the subband MSs of its ``n1_obs_ids`` (as
  nenucal), with the N2 name as obs_id and the N1's node.
- ``%N1_OBS_ID%`` is the first of ``n1_obs_ids`` for an N2 obs_id, the obs_id
  itself otherwise; ``%YEAR%``/``%MONTH%`` come from the obs_id's first
  ``_``-separated part (for an N2 obs_id, its own name), as nenucal.
- An ``[n2_group]`` name resolves to the MSs of its members with the group's
  name as obs_id, so ``--combine`` images the group as one obs_id (nenucal's
  meaning of a group) and ``$obs_id$`` is the group name.
- Errors are collected and reported together (exit 2): an OBSPAT or SWPAT that
  matches nothing, an obs_id whose node list is shorter than the SW list (a
  short positional list makes every node after the gap doubtful, so it is
  refused even when the SWs asked for have a node), an N2 obs_id and SW for
  which no chunk is found on any of its nodes (``imgpipe inputs`` lists it as
  missing instead). A longer node list is accepted (extra entries unused, as in
  nenucal). Existence of the other MSs is checked by the planner
  (``ms_facts.read_facts``), which lists every missing one.
- A relative level path is taken relative to the data handler file's
  directory (not the current directory); ``~`` is expanded.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import DataHandlerConfig, read_toml, suggest
from .errors import ImgpipeError, PlanErrors
from .hosts import parse_nodes

PATH_TOKENS = ("NODE", "OBS_ID", "N1_OBS_ID", "YEAR", "MONTH")
_PATH_TOKEN_RE = re.compile(r"%([A-Z][A-Z0-9_]*)%")
_CHUNK_RE = re.compile(r"_(?:T|LST)(\d{3})\.MS$")

HINT = "`imgpipe inputs CONFIG PATTERN` lists what a pattern selects"


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Level:
    name: str
    path: str
    input: str | None = None
    subbands: bool | None = None
    lst: bool = False  # has its own LST binning
    split: bool = False  # made by splitting subbands into time chunks


@dataclass(frozen=True)
class N2ObsId:
    nodes: tuple[str, ...]
    n1_obs_ids: tuple[str, ...]


@dataclass(frozen=True)
class DataHandler:
    source: str  # the file, for messages
    base_dir: str  # relative level paths are relative to it
    ranges: dict[str, tuple[int, int]]  # non-composite SW -> (first, last) subband, file order
    composites: dict[str, tuple[str, ...]]  # composite SW -> its non-composite members
    sw_order: tuple[str, ...]  # every SW name, file order
    obs_ids: dict[str, tuple[str, ...]]  # obs_id -> node per non-composite SW
    n2_obs_ids: dict[str, N2ObsId]
    n2_group: dict[str, tuple[str, ...]]
    levels: dict[str, Level]

    @property
    def plain_sws(self) -> list[str]:
        return list(self.ranges)

    def names(self) -> list[str]:
        """Every selectable name: obs_ids, N2 obs_ids, N2 groups, each in file order."""
        return [*self.obs_ids, *self.n2_obs_ids, *self.n2_group]

    def members(self, sw: str) -> tuple[str, ...]:
        return self.composites.get(sw, (sw,))

    def is_subband_level(self, name: str) -> bool:
        """nenucal's rule: a level without input, with subbands = true or a name starting with L1."""
        level = self.levels.get(name)
        if level is not None and level.input is not None:
            return False
        if level is not None and level.subbands is not None:
            return level.subbands
        return name.lower().startswith("l1")

    def is_lst_layout(self, name: str) -> bool:
        """nenucal's rule: the level has LST binning, or is made MS by MS from one that has."""
        seen: set[str] = set()
        while name in self.levels and name not in seen:
            seen.add(name)
            level = self.levels[name]
            if level.lst:
                return True
            if level.input is None or level.split or self.is_subband_level(level.input):
                return False
            name = level.input
        return False


@dataclass(frozen=True)
class Entry:
    """One MS a pattern names; ``found`` is False for a chunk look-up that found nothing."""

    path: str
    obs_id: str
    sw: str
    node: str | None
    found: bool = True


# ---------------------------------------------------------------- parsing


def _shorten(names, limit: int = 10) -> str:
    names = list(names)
    if not names:
        return "none"
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)


def parse_data_handler(data: dict[str, Any], source: str, base_dir: str | None = None) -> DataHandler:
    """A parsed data_handler.toml as a checked ``DataHandler`` (pure)."""

    def err(section: str | None, key: str | None, message: str, hint: str | None = None) -> ImgpipeError:
        where = source
        if section:
            where += f": [{section}]" + (f" {key}" if key is not None else "")
        return ImgpipeError(message, where=where, hint=hint)

    def table(name: str, required: bool, hint: str | None = None) -> dict[str, Any]:
        if name not in data:
            if required:
                raise err(None, None, f"[{name}] is missing: a data handler file needs it", hint)
            return {}
        value = data[name]
        if not isinstance(value, dict):
            raise err(None, None, f"'{name}' must be a table ([{name}]), got {value!r}")
        return value

    # spectral windows
    sws = table("spectral_windows", True, "e.g. [spectral_windows] SW01 = [106, 169]")
    ranges: dict[str, tuple[int, int]] = {}
    raw_composites: dict[str, list[str]] = {}
    for name, value in sws.items():
        if isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value):
            lo, hi = value
            if lo < 0 or hi < lo:
                raise err("spectral_windows", name, f"subband range {value!r}: expected [first, last] with 0 <= first <= last")
            ranges[name] = (lo, hi)
        elif _str_list(value) and value:
            raw_composites[name] = value
        else:
            raise err(
                "spectral_windows", name,
                f"expected [first, last] subbands (two integers) or a list of SW names, got {value!r}",
                hint="e.g. SW01 = [106, 169], or a composite SWALL = ['SW01', 'SW02']",
            )
    composites: dict[str, tuple[str, ...]] = {}

    def flatten(name: str, trail: tuple[str, ...]) -> list[str]:
        if name in trail:
            raise err("spectral_windows", trail[0], "composite SWs contain each other: " + " -> ".join((*trail, name)))
        out: list[str] = []
        for member in raw_composites[name]:
            if member in ranges:
                out.append(member)
            elif member in raw_composites:
                out += flatten(member, (*trail, name))
            else:
                close = suggest(member, sws)
                raise err("spectral_windows", trail[0] if trail else name,
                          f"member '{member}' is not a spectral window of this file",
                          hint=f"did you mean '{close}'?" if close else f"defined: {_shorten(sws)}")
        return out

    for name in raw_composites:
        composites[name] = tuple(dict.fromkeys(flatten(name, ())))

    # obs_ids
    obs_table = table("obs_ids", True, "e.g. [obs_ids] \"20231201_NT04\" = ['node001', 'node002']")
    obs_ids: dict[str, tuple[str, ...]] = {}
    for name, value in obs_table.items():
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() and " " not in v.strip() for v in value):
            raise err("obs_ids", f'"{name}"', f"expected a list of node names (one per spectral window), got {value!r}")
        obs_ids[name] = tuple(v.strip() for v in value)

    # levels
    has_new = "data_levels" in data
    has_old = "data_level_path" in data
    if has_new and has_old:
        raise err(None, None, "[data_levels] and [data_level_path] are both given: give one of the two formats",
                  hint="[data_levels.NAME] path = '...' replaces [data_level_path] NAME = '...'")
    levels: dict[str, Level] = {}
    if has_new:
        for name, value in table("data_levels", True).items():
            sec = f"data_levels.{name}"
            if not isinstance(value, dict):
                raise err("data_levels", name, f"expected a table [data_levels.{name}] with a path, got {value!r}")
            if "path" not in value:
                raise err(sec, None, "path is required", hint=f"e.g. [data_levels.{name}] path = '/net/%NODE%/data/{name}/'")
            if not isinstance(value["path"], str) or not value["path"].strip():
                raise err(sec, "path", f"expected a path template (string), got {value['path']!r}")
            inp = value.get("input")
            if inp is not None and not isinstance(inp, str):
                raise err(sec, "input", f"expected a level name, got {inp!r}")
            subbands = value.get("subbands")
            if subbands is not None and not isinstance(subbands, bool):
                raise err(sec, "subbands", f"expected true or false, got {subbands!r}")
            levels[name] = Level(name=name, path=value["path"], input=inp, subbands=subbands,
                                 lst=value.get("lst") is not None, split=value.get("split") is not None)
    elif has_old:
        paths = table("data_level_path", True)
        l1_to_l2 = data.get("l1_to_l2_config") if isinstance(data.get("l1_to_l2_config"), dict) else {}
        lst_binning = data.get("lst_binning") if isinstance(data.get("lst_binning"), dict) else {}
        for name, value in paths.items():
            if not isinstance(value, str) or not value.strip():
                raise err("data_level_path", name, f"expected a path template (string), got {value!r}")
            inp = "L1" if name in l1_to_l2 and "L1" in paths and name != "L1" else None
            levels[name] = Level(name=name, path=value, input=inp, lst=name in lst_binning)
    else:
        raise err(None, None, "no data levels: [data_levels.NAME] (or the older [data_level_path]) is missing",
                  hint="e.g. [data_levels.L2] path = '/net/%NODE%/data/L2/'")

    # N2 obs_ids
    n2_obs_ids: dict[str, N2ObsId] = {}
    for name, value in table("n2_obs_ids", False).items():
        key = f'"{name}"'
        if name in obs_ids:
            raise err("n2_obs_ids", key, "is also in [obs_ids]: an obs_id is either N1 or N2")
        if not isinstance(value, dict) or "nodes" not in value:
            raise err("n2_obs_ids", key, f"expected {{nodes = 'node[1-2]', n1_obs_ids = [...]}}, got {value!r}")
        nodes_value = value["nodes"]
        if _str_list(nodes_value):
            nodes_value = ",".join(nodes_value)
        if not isinstance(nodes_value, str):
            raise err("n2_obs_ids", key, f"nodes: expected a string such as 'node[1-2]', got {value['nodes']!r}")
        try:
            nodes = parse_nodes(nodes_value)
        except ValueError as e:
            raise err("n2_obs_ids", key, f"nodes: {e}",
                      hint="write nodes as 'a,b', ranges as 'node[1-3]' or 'node[08-11]'") from None
        n1 = value.get("n1_obs_ids", [])
        if not isinstance(n1, list) or not all(isinstance(v, str) for v in n1):
            raise err("n2_obs_ids", key, f"n1_obs_ids: expected a list of obs_ids, got {n1!r}")
        n2_obs_ids[name] = N2ObsId(nodes=nodes, n1_obs_ids=tuple(n1))

    # N2 groups
    n2_group: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name, value in table("n2_group", False).items():
        key = f'"{name}"'
        if name in obs_ids or name in n2_obs_ids:
            raise err("n2_group", key, "has the name of an obs_id: a group needs a name of its own")
        if not _str_list(value) or not value:
            raise err("n2_group", key, f"expected a list of obs_ids, got {value!r}")
        for member in value:
            if member not in obs_ids and member not in n2_obs_ids:
                close = suggest(member, [*obs_ids, *n2_obs_ids])
                raise err("n2_group", key, f"member '{member}' is not defined in [obs_ids] or [n2_obs_ids]",
                          hint=f"did you mean '{close}'?" if close else None)
            if member in owner and owner[member] != name:
                raise err("n2_group", key, f"obs_id '{member}' belongs to two groups: {owner[member]} and {name}")
            owner[member] = name
        n2_group[name] = tuple(dict.fromkeys(value))

    return DataHandler(
        source=source,
        base_dir=base_dir if base_dir is not None else os.path.dirname(os.path.abspath(source)),
        ranges=ranges,
        composites=composites,
        sw_order=tuple(sws),
        obs_ids=obs_ids,
        n2_obs_ids=n2_obs_ids,
        n2_group=n2_group,
        levels=levels,
    )


def get_level(dh: DataHandler, name: str) -> Level:
    """The level named by ``[data_handler] data_level``, with its template checked."""
    if name not in dh.levels:
        close = suggest(name, dh.levels)
        raise ImgpipeError(
            f"unknown data level '{name}' ([data_handler] data_level); "
            f"the data handler defines: {_shorten(dh.levels) if dh.levels else 'no level'}",
            where=dh.source,
            hint=(f"did you mean '{close}'? " if close else "")
            + "set data_level in [data_handler] of the config to one of these",
        )
    level = dh.levels[name]
    unknown = [t for t in _PATH_TOKEN_RE.findall(level.path) if t not in PATH_TOKENS]
    if unknown:
        raise ImgpipeError(
            f"path {level.path!r} of level {name} holds unknown token(s) "
            + ", ".join(f"%{t}%" for t in dict.fromkeys(unknown)),
            where=dh.source,
            hint="known tokens: " + ", ".join(f"%{t}%" for t in PATH_TOKENS),
        )
    return level


# ---------------------------------------------------------------- patterns


def split_pattern(text: str) -> tuple[list[str], list[str] | None]:
    """'A,B:SWPAT' -> (['A', 'B'], ['SWPAT']); no ':' -> SW patterns None (every plain SW)."""
    if text.count(":") > 1:
        raise ImgpipeError(
            f"pattern {text!r} has {text.count(':')} ':' -- at most one is allowed",
            hint="write OBSPAT[,OBSPAT...][:SWPAT], e.g. '20231201_NT04,20231202_NT04:SW0[12]'",
        )
    obs_part, sep, sw_part = text.partition(":")
    obs_pats = [p.strip() for p in obs_part.split(",")]
    sw_pats = [p.strip() for p in sw_part.split(",")] if sep else None
    return obs_pats, sw_pats


def select(dh: DataHandler, text: str, problems: list[str]) -> tuple[list[str], list[str]]:
    """The obs_ids and SWs one pattern argument selects; what matches nothing goes to ``problems``."""
    try:
        obs_pats, sw_pats = split_pattern(text)
    except ImgpipeError as e:
        problems.append(f"{e.message} ({e.hint})")
        return [], []
    names = dh.names()
    obs: list[str] = []
    for pat in obs_pats:
        if not pat:
            problems.append(f"pattern {text!r}: empty obs_id pattern (write OBSPAT[,OBSPAT...][:SWPAT])")
            continue
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            close = suggest(pat, names)
            problems.append(
                f"pattern {text!r}: obs_id pattern '{pat}' matches no obs_id of {dh.source}"
                + (f" (did you mean '{close}'?)" if close else f" (defined: {_shorten(names)})")
            )
        obs += hits
    obs = [n for n in names if n in obs]  # file order, each once
    if sw_pats is None:
        sws = dh.plain_sws
    else:
        sws = []
        for pat in sw_pats:
            if not pat:
                problems.append(f"pattern {text!r}: empty SW pattern after ':'")
                continue
            hits = [s for s in dh.sw_order if fnmatch.fnmatchcase(s, pat)]
            if not hits:
                problems.append(
                    f"pattern {text!r}: SW pattern '{pat}' matches no spectral window "
                    f"(defined: {_shorten(dh.sw_order)})"
                )
            sws += hits
        sws = [s for s in dh.sw_order if s in sws]  # file order, each once
    return obs, sws


# ---------------------------------------------------------------- paths


def dir_path(dh: DataHandler, level: Level, obs_id: str, node: str, n1_obs_id: str | None = None) -> str:
    """The directory of ``obs_id``'s MSs at ``level`` on ``node`` (absolute, normalised)."""
    template = level.path
    date = obs_id.split("_")[0]
    values = {
        "NODE": node,
        "OBS_ID": obs_id,
        "N1_OBS_ID": n1_obs_id if n1_obs_id is not None else obs_id,
        "YEAR": date[:4],
        "MONTH": date[4:6],
    }
    path = _PATH_TOKEN_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    if "%OBS_ID%" not in template and "%N1_OBS_ID%" not in template:
        path = os.path.join(path, obs_id)
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(dh.base_dir, path)
    return os.path.normpath(path)


def chunk_index(path: str) -> int:
    m = _CHUNK_RE.search(os.path.basename(path))
    return int(m.group(1)) if m else -1


def glob_chunks(directory: str, sw: str, lst: bool) -> list[str]:
    """The time chunks ``SW_T###.MS`` (and, at an LST level, ``SW_LST###.MS``) in ``directory``."""
    base = os.path.join(glob.escape(directory), glob.escape(sw))
    found = glob.glob(base + "_T[0-9][0-9][0-9].MS")
    if lst:
        found += glob.glob(base + "_LST[0-9][0-9][0-9].MS")
    return sorted(found)


def _chunk_glob_text(directory: str, sw: str, lst: bool) -> str:
    return os.path.join(directory, f"{sw}_{'{T,LST}' if lst else 'T'}###.MS")


ListChunks = Callable[[str, str, bool], list[str]]


class _Resolver:
    """Resolution of one level; the problems of every pattern are collected in ``problems``."""

    def __init__(self, dh: DataHandler, level: Level, list_chunks: ListChunks):
        self.dh = dh
        self.level = level
        self.subbands = dh.is_subband_level(level.name)
        self.lst = dh.is_lst_layout(level.name)
        self.list_chunks = list_chunks
        self.problems: list[str] = []
        self.needs_n1 = "%N1_OBS_ID%" in level.path

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def node_of(self, obs_id: str, sw: str) -> str | None:
        nodes = self.dh.obs_ids[obs_id]
        plain = self.dh.plain_sws
        if len(nodes) < len(plain):
            self.problem(
                f"obs_id {obs_id}: [obs_ids] lists {len(nodes)} node(s) for {len(plain)} spectral windows "
                f"({', '.join(plain)}); give the node of every non-composite SW, in order (in {self.dh.source})"
            )
            return None
        return nodes[plain.index(sw)]

    def ms_of(self, name: str, sw: str, as_obs_id: str | None = None) -> list[Entry]:
        """The MSs of selectable ``name`` (obs_id, N2 obs_id or group) and selected ``sw``."""
        label = as_obs_id or name
        dh = self.dh
        if name in dh.n2_group:
            return [e for member in dh.n2_group[name] for e in self.ms_of(member, sw, label)]
        if name in dh.n2_obs_ids:
            return self.n2_ms(name, sw, label)
        out: list[Entry] = []
        for member in dh.members(sw):
            node = self.node_of(name, member)
            if node is None:
                continue
            directory = dir_path(dh, self.level, name, node)
            if self.subbands:
                lo, hi = dh.ranges[member]
                out += [Entry(os.path.join(directory, f"SB{sb}.MS"), label, sw, node) for sb in range(lo, hi + 1)]
            elif self.lst:
                found = sorted(self.list_chunks(directory, member, True), key=chunk_index)
                out += [Entry(os.path.normpath(p), label, sw, node) for p in found] or [
                    Entry(_chunk_glob_text(directory, member, True), label, sw, node, found=False)
                ]
            else:
                out.append(Entry(os.path.join(directory, f"{member}.MS"), label, sw, node))
        return out

    def n2_ms(self, name: str, sw: str, label: str) -> list[Entry]:
        dh = self.dh
        n2 = dh.n2_obs_ids[name]
        if self.subbands:
            if not n2.n1_obs_ids:
                self.problem(f"N2 obs_id {name}: no n1_obs_ids in [n2_obs_ids], needed at subband level {self.level.name}")
                return []
            out = []
            for n1 in n2.n1_obs_ids:
                if n1 not in dh.obs_ids:
                    self.problem(f"N2 obs_id {name}: its n1_obs_id {n1} is not in [obs_ids] (needed for its node map "
                                 f"at subband level {self.level.name})")
                    continue
                out += self.ms_of(n1, sw, label)
            return out
        if self.needs_n1 and not n2.n1_obs_ids:
            self.problem(f"N2 obs_id {name}: no n1_obs_ids in [n2_obs_ids], needed for %N1_OBS_ID% in {self.level.path!r}")
            return []
        n1 = n2.n1_obs_ids[0] if n2.n1_obs_ids else None
        dirs: list[tuple[str, str]] = []
        for node in n2.nodes:
            directory = dir_path(dh, self.level, name, node, n1)
            if directory not in (d for _, d in dirs):
                dirs.append((node, directory))

        def chunks(chunk_sw: str) -> list[Entry]:
            found = [(node, os.path.normpath(p)) for node, d in dirs for p in self.list_chunks(d, chunk_sw, self.lst)]
            found.sort(key=lambda x: chunk_index(x[1]))
            return [Entry(p, label, sw, node) for node, p in found]

        own = chunks(sw)
        if own or sw not in dh.composites:
            return own or [Entry(_chunk_glob_text(d, sw, self.lst), label, sw, node, found=False) for node, d in dirs]
        out = []
        for member in dh.composites[sw]:
            out += chunks(member) or [
                Entry(_chunk_glob_text(d, member, self.lst), label, sw, node, found=False) for node, d in dirs
            ]
        return out


def resolve(
    dh: DataHandler, level: Level, patterns: list[str], list_chunks: ListChunks = glob_chunks
) -> tuple[list[Entry], list[str]]:
    """Every MS the patterns name, in order (duplicates kept), and the problems found (pure but for
    ``list_chunks``)."""
    r = _Resolver(dh, level, list_chunks)
    entries: list[Entry] = []
    for text in patterns:
        obs, sws = select(dh, text, r.problems)
        for sw in sws:
            for name in obs:
                entries += r.ms_of(name, sw)
    return entries, r.problems


# ---------------------------------------------------------------- file I/O


def load_data_handler(path: str | os.PathLike) -> DataHandler:
    """Read and check the data handler file (TOML errors name the file, line and column)."""
    path = Path(path)
    if not path.exists():
        raise ImgpipeError(
            "data handler file not found",
            where=str(path),
            hint="[data_handler] config_file is looked for next to the config file, then in the current directory",
        )
    data = read_toml(path)
    return parse_data_handler(data, str(path), str(path.parent))


def selected(dhc: DataHandlerConfig, patterns: list[str]) -> list[Entry]:
    """Every MS the patterns select, each once, in order (a chunk look-up that found nothing is an
    entry too, ``found`` False, its path the pattern looked for). Raises the patterns' problems."""
    dh = load_data_handler(dhc.config_file)
    level = get_level(dh, dhc.data_level)
    entries, problems = resolve(dh, level, list(patterns))
    if problems:
        _raise(problems)
    return _dedupe_entries(entries)


def _raise(problems: list[str]) -> None:
    raise PlanErrors(problems, hint=HINT)


def _dedupe_entries(entries: list[Entry]) -> list[Entry]:
    seen: set[str] = set()
    out = []
    for e in entries:
        key = os.path.realpath(e.path) if e.found else e.path
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def resolve_patterns(dh: DataHandlerConfig, patterns: list[str]) -> list[Entry]:
    """The MSs that obs_id patterns select, each once, in order.

    Raises ImgpipeError / PlanErrors (all problems together) for the data handler's and the
    patterns' mistakes. Whether each MS exists is the planner's check (it lists every missing one),
    except for time chunks, which are found by listing directories: an N2 obs_id and SW with no
    chunk on any node is an error here.
    """
    dhf = load_data_handler(dh.config_file)
    entries, problems = resolve(dhf, get_level(dhf, dh.data_level), list(patterns))
    for e in entries:
        if not e.found:
            text = f"obs_id {e.obs_id}, SW {e.sw}: no MS {e.path} (no time chunk found there)"
            if text not in problems:
                problems.append(text)
    if problems:
        _raise(problems)
    return _dedupe_entries(entries)
