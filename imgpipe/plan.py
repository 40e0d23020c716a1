"""The plan: from (config, MS inputs, MS facts) to fully-resolved WSClean jobs.

Everything here is a pure function of its arguments except ``make_plan``,
which gathers the inputs and the MS facts and then calls ``build_plan``.
All user mistakes are found here, before anything runs, and raised as
``ImgpipeError`` (several at once as ``PlanErrors``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .config import Config, QualitySettings, RunSettings, suggest
from .errors import ImgpipeError, PlanErrors
from .hosts import host_from_path, is_slurm, majority_host
from .inputs import MSInput
from .ms_facts import MSFacts
from .wsclean_command import option_words
from . import wsclean_options

CFITSIO_SYNTAX = "(["  # CFITSIO's extended file-name syntax: not usable in an image name
TOKENS = ("ms_in", "ms_basename", "name", "obs_id", "sw")
_TOKEN_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f]")  # control characters but TAB
_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Job:
    id: str
    host: str | None  # None: any node
    argv: tuple[str, ...]
    ms: tuple[str, ...]
    name: str  # the -name prefix (absolute)
    out_dir: str
    temp_dir: str
    channels_out: int | None = None
    obs_id: str | None = None
    sw: str | None = None
    cost: float = 0.0  # expected cost, relative units (memo_cost); not part of the plan's digest

    @functools.cached_property
    def command(self) -> str:
        """The argv as one shell line (worked out once: status reads tens of thousands)."""
        return shlex.join(self.argv)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "argv": list(self.argv),
            "command": self.command,
            "ms": list(self.ms),
            "name": self.name,
            "out_dir": self.out_dir,
            "temp_dir": self.temp_dir,
            "channels_out": self.channels_out,
            "obs_id": self.obs_id,
            "sw": self.sw,
            "cost": round(self.cost, 3),
        }


@dataclass(frozen=True)
class Plan:
    config_path: str
    worker: RunSettings
    jobs: tuple[Job, ...]
    digest: str = field(default="")
    quality: QualitySettings = field(default=QualitySettings())  # how images are judged: not in the digest

    @property
    def tag(self) -> str:
        """The mark each job's wrapper carries in its argv (``imgpipe-<digest12>``): how a job-log
        row, a log line or a process is told to belong to this plan."""
        return f"imgpipe-{self.digest[:12]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config_path,
            "digest": self.digest,
            "worker": self.worker.as_dict(),
            "jobs": [j.as_dict() for j in self.jobs],
        }


_DIGEST_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
_DIGEST_BATCH = 1000


def plan_digest(worker: RunSettings, jobs: tuple[Job, ...]) -> str:
    """sha256 over what a run does: the worker settings and every job's id, host and argv.

    That is, of ``{"jobs":[[id,host,[argv...]],...],"worker":{...}}`` (JSON, keys sorted, no
    spaces, UTF-8), fed to the hash a thousand jobs at a time: the whole text of 50,000 jobs and
    its lists would take ~30 MB at once, the plan's largest peak of memory."""
    h = hashlib.sha256(b'{"jobs":[')
    for start in range(0, len(jobs), _DIGEST_BATCH):
        part = _DIGEST_JSON.encode([[j.id, j.host, list(j.argv)] for j in jobs[start: start + _DIGEST_BATCH]])
        h.update(("," if start else "").encode() + part[1:-1].encode("utf-8"))
    h.update(b'],"worker":' + _DIGEST_JSON.encode(worker.as_dict()).encode("utf-8") + b"}")
    return h.hexdigest()


# ---------------------------------------------------------------- templates


def expand_env(text: str, where: str, *, tilde: bool = True) -> str:
    """``~`` at the start and ``$VAR``/``${VAR}`` anywhere, from the planning environment."""
    if tilde and text.startswith("~"):
        text = os.path.expanduser(text)

    def sub(m: re.Match) -> str:
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            raise ImgpipeError(
                f"environment variable ${var} is not set (it is expanded when planning)",
                where=where,
                hint=f"export {var}=... before running imgpipe, or write the path out",
            )
        return os.environ[var]

    return _ENV_RE.sub(sub, text)


def compile_template(template: str, where: str) -> tuple[tuple[str, bool], ...]:
    """The template as (text, is_token) pieces, ``~`` and ``$VAR`` of its literal parts expanded
    (they are the same for every job), every token checked: ``fill`` then only joins."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    probe = dict.fromkeys(TOKENS, "x")
    for m in _TOKEN_RE.finditer(template):
        pieces.append((expand_env(template[pos : m.start()], where, tilde=pos == 0), False))
        expand_template(m.group(0), probe, where)  # (an unknown token: its error, with suggestions)
        pieces.append((m.group(1), True))
        pos = m.end()
    pieces.append((expand_env(template[pos:], where, tilde=pos == 0), False))
    return tuple(p for p in pieces if p[1] or p[0])


def fill(pieces: tuple[tuple[str, bool], ...], tokens: dict[str, str | None], template: str, where: str) -> str:
    """A compiled template's text for one job (errors as ``expand_template`` says them)."""
    out = []
    for text, is_token in pieces:
        if is_token:
            text = tokens.get(text)
            if text is None:
                return expand_template(template, tokens, where)  # (raises: it says why)
        out.append(text)
    result = "".join(out)
    if _CONTROL_RE.search(result):
        return expand_template(template, tokens, where)  # (raises)
    return result


def expand_template(template: str, tokens: dict[str, str | None], where: str) -> str:
    """Expand ``~``/env vars in the literal parts, then the ``$token$``s.

    A value a token brings in (an MS name holding ``$``, say) is never expanded again.
    """
    if "$" not in template and not template.startswith("~"):  # nothing to expand (most values)
        if _CONTROL_RE.search(template):
            raise ImgpipeError(f"{template!r} contains a control character (newline?)", where=where,
                               hint="imgpipe writes one job per line: remove the newline from the value")
        return template
    pieces = []
    pos = 0
    for m in _TOKEN_RE.finditer(template):
        pieces.append(expand_env(template[pos : m.start()], where, tilde=pos == 0))
        token = m.group(1)
        if token not in TOKENS:
            close = suggest(token, TOKENS)
            env_hint = (
                f"; for the environment variable {token}, write ${{{token}}}"
                if token in os.environ or token.isupper()
                else ""
            )
            raise ImgpipeError(
                f"unknown token ${token}$ in {template!r}",
                where=where,
                hint=(f"did you mean ${close}$? " if close else "")
                + "known tokens: " + ", ".join(f"${t}$" for t in TOKENS)
                + env_hint,
            )
        value = tokens.get(token)
        if value is None and token == "name":
            raise ImgpipeError(
                f"$name$ in {template!r}: name cannot refer to itself",
                where=where,
                hint="$name$ is meant for out-dir and path options; write the prefix out in name",
            )
        if value is None:
            raise ImgpipeError(
                f"${token}$ in {template!r} cannot be resolved here"
                + (": it is only known with a [data_handler]" if token in ("obs_id", "sw") else ""),
                where=where,
                hint="configure [data_handler] and give obs_id patterns, or remove the token"
                if token in ("obs_id", "sw")
                else "remove the token",
            )
        pieces.append(value)
        pos = m.end()
    pieces.append(expand_env(template[pos:], where, tilde=pos == 0))
    result = "".join(pieces)
    if _CONTROL_RE.search(result):
        raise ImgpipeError(
            f"{template!r} expands to {result!r}, which contains a control character (newline?)",
            where=where,
            hint="imgpipe writes one job per line: remove the newline from the value "
            "(or from the environment variable it uses)",
        )
    return result


# ---------------------------------------------------------------- channels-out


def channels_out_for(spec: Any, nchan: int, where: str, group_label: str) -> int:
    """The ``-channels-out`` number for a group with ``nchan`` distinct channels."""
    if spec == "all":
        return nchan
    if isinstance(spec, str) and spec.startswith("every "):
        n = int(spec.split()[1])
        if n > nchan:
            raise ImgpipeError(
                f"channels-out = '{spec}' asks for one output channel per {n} channels, "
                f"but {group_label} has only {nchan} channel(s)",
                where=where,
                hint=f"use 'every N' with N <= {nchan}, or 'all'",
            )
        return nchan // n
    if spec > nchan:
        raise ImgpipeError(
            f"channels-out = {spec} is more than the {nchan} channel(s) of {group_label}",
            where=where,
            hint=f"use at most {nchan}, or 'all'",
        )
    return spec


# ---------------------------------------------------------------- grouping


@dataclass(frozen=True)
class Group:
    key: tuple
    ms: tuple[MSInput, ...]

    @property
    def last(self) -> MSInput:
        return self.ms[-1]

    def label(self) -> str:
        if len(self.ms) == 1:
            return self.ms[0].path
        parts = [f"{len(self.ms)} MSs"]
        if self.key and self.key[0] is not None:
            parts.append(f"SW {self.key[0]}")
        if len(self.key) > 1 and self.key[1] is not None:
            parts.append(f"obs_id {self.key[1]}")
        return "the group of " + ", ".join(parts)


def group_inputs(inputs: list[MSInput], combine: bool, combine_obs_ids: bool) -> list[Group]:
    """One group per MS; with combine, per (SW, obs_id); with both, per SW. Order of first appearance."""
    if not combine:
        return [Group(key=(i.sw, i.obs_id, i.path), ms=(i,)) for i in inputs]
    groups: dict[tuple, list[MSInput]] = defaultdict(list)
    for i in inputs:
        key = (i.sw,) if combine_obs_ids else (i.sw, i.obs_id)
        groups[key].append(i)
    return [Group(key=k, ms=tuple(v)) for k, v in groups.items()]


# ---------------------------------------------------------------- hosts


def job_host(config: Config, group: Group, problems: list[str]) -> str | None:
    """The node a job must run on, or None when any node will do."""
    worker = config.worker
    if not worker.run_on_file_host:
        return None
    hosts = []
    for item in group.ms:
        if worker.run_on_file_host_pattern is not None and (
            item.node is None or worker.run_on_file_host_pattern.search(item.path)
        ):
            host = host_from_path(worker.run_on_file_host_pattern, item.path)
            if host is None and item.node is None:
                problems.append(
                    f"{item.path}: run_on_file_host_pattern '{worker.run_on_file_host_pattern.pattern}' "
                    "does not match this path, so imgpipe cannot tell which node holds it "
                    "(fix the pattern, or set run_on_file_host = false)"
                )
                return None
            hosts.append(host or item.node)
        elif item.node is None:
            problems.append(
                f"{item.path}: run_on_file_host = true, but nothing says which node holds this MS "
                "(no run_on_file_host_pattern, and it does not come from the data handler)"
            )
            return None
        else:
            hosts.append(item.node)
    host = majority_host(hosts)
    if not is_slurm(worker.nodes) and host not in worker.nodes:
        problems.append(
            f"{group.label()}: its node {host!r} (run_on_file_host) is not in [worker] nodes "
            f"({','.join(worker.nodes)}); add it to nodes, or fix run_on_file_host_pattern"
        )
        return None
    return host


# ---------------------------------------------------------------- one job


# words of a path option that are not paths: -apply-facet-solutions <file.h5> <name1[,name2]>
_NOT_PATH_WORDS: dict[str, tuple[int, ...]] = {"apply-facet-solutions": (1,)}


@functools.lru_cache(maxsize=1024)
def _safe_word(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "job"


def temp_dir_for(base: str, prefix: str) -> str:
    """A temp dir of its own for each job, derived from its (unique) -name prefix."""
    tag = hashlib.sha1(prefix.encode("utf-8")).hexdigest()[:8]
    return os.path.join(base, f"{_safe_word(os.path.basename(prefix))}-{tag}.imgpipe-tmp")


class Memo:
    """What build_job works out once per plan, not once per job: the words of the options whose
    values hold no ``$token$`` (most of them), the error locations, the cost of each option set."""

    def __init__(self, config: Config):
        self.where = {key: config.where("wsclean", key) for key in config.wsclean}
        self.words: dict[str, list[str]] = {}  # key -> its words, for values that are the same in every job
        self.cost: dict[tuple, tuple[float, float]] = {}  # option words -> (per MB of data, fixed)
        self.templates: dict[tuple[str, str], tuple] = {}

    def expand(self, template: str, tokens: dict[str, str | None], key: str) -> str:
        """expand_template, the template compiled once per plan."""
        where = self.where.get(key) or key
        pieces = self.templates.get((key, template))
        if pieces is None:
            pieces = self.templates[(key, template)] = compile_template(template, where)
        return fill(pieces, tokens, template, where)


def build_job(
    job_id: str,
    config: Config,
    group: Group,
    facts: dict[str, MSFacts],
    host: str | None,
    memo: Memo | None = None,
) -> Job:
    """The complete WSClean argv for one group of MSs (pure; raises ImgpipeError)."""
    memo = memo or Memo(config)
    ws = config.wsclean
    last = group.last
    for m in group.ms:  # WSClean 3.1 crashes (segfault) on an MS without a spectral window
        if facts[m.path].nspw == 0 or facts[m.path].nchan == 0:
            raise ImgpipeError(
                f"{m.path}: has no {'spectral window' if facts[m.path].nspw == 0 else 'channel'} "
                "(its SPECTRAL_WINDOW table is empty): there is nothing WSClean can image in it",
                hint="leave this MS out, or check how it was made (casacore's `taql` shows its tables)")
    tokens: dict[str, str | None] = {
        "ms_in": last.path,
        "ms_basename": os.path.basename(last.path),
        "obs_id": last.obs_id,
        "sw": last.sw,
        "name": None,
    }
    if len(group.key) == 1 and group.key[0] is not None:
        # combined over obs_ids: no single obs_id; like nenucal, $obs_id$ expands to nothing
        # (out-dir = 'images/$obs_id$/$sw$' gives images/SW01), so its configs work unchanged
        tokens["obs_id"] = ""

    def where(key: str) -> str:
        return memo.where[key]

    name = memo.expand(ws["name"], tokens, "name")
    tokens["name"] = name
    out_dir = memo.expand(ws["out-dir"], tokens, "out-dir") if "out-dir" in ws else ""
    out_dir = os.path.abspath(out_dir) if out_dir else os.getcwd()
    prefix = os.path.normpath(os.path.join(out_dir, name))
    folder = os.path.dirname(prefix)  # (both normalised and absolute: a string test is enough)
    if not (folder == out_dir or folder.startswith(out_dir.rstrip("/") + "/")) or prefix == out_dir:
        raise ImgpipeError(
            f"name {ws['name']!r} puts the images outside out-dir: {prefix}-*, not in {out_dir}",
            where=where("name"),
            hint="name is the images' prefix inside out-dir (no '..' in it); choose their directory with out-dir")
    if any(c in prefix for c in CFITSIO_SYNTAX):
        cfitsio = sorted(set(prefix) & set(CFITSIO_SYNTAX))
        raise ImgpipeError(
            f"the image name {prefix!r} contains {' and '.join(repr(c) for c in cfitsio)}: CFITSIO, which WSClean "
            "uses to write FITS files, reads them as its own syntax, so WSClean would fail after gridding",
            where=where("out-dir" if "out-dir" in ws else "name"),
            hint="choose an out-dir and name without '(' or '[' (an MS name brought in by $ms_basename$ or "
            "$ms_in$ counts too)",
        )
    out_dir = folder

    argv: list[str] = ["wsclean", "-name", prefix]
    user_temp = None
    channels_out = None
    for key, value in ws.items():
        if key in ("name", "out-dir"):
            continue
        static = memo.words.get(key)
        if static is not None:
            argv += static
            continue
        opt = wsclean_options.lookup(key)
        if key == "temp-dir":
            user_temp = os.path.abspath(memo.expand(str(value), tokens, key))
            continue
        if key == "channels-out":
            nchan = len(frozenset().union(*(facts[m.path].chan_freqs for m in group.ms)))
            channels_out = channels_out_for(value, nchan, where(key), group.label())
            argv += ["-channels-out", str(channels_out)]
            continue
        words = option_words(opt, value)
        same = opt.kind != "path" or not any("$" in w for w in words)  # the same words in every job
        if opt.kind == "path":  # every path word expanded and made absolute, string or TOML list
            keep = _NOT_PATH_WORDS.get(key, ())
            words = [w if i in keep else os.path.abspath(memo.expand(w, tokens, key))
                     for i, w in enumerate(words)]
        if same:
            memo.words[key] = [f"-{key}", *words]
        argv.append(f"-{key}")
        argv += words
    multi_spw = [m.path for m in group.ms if facts[m.path].nspw > 1]
    if multi_spw and "reorder" not in ws:
        if ws.get("no-reorder"):
            raise ImgpipeError(
                f"{multi_spw[0]} has several spectral windows, which WSClean 3.1 only images with -reorder",
                where=where("no-reorder"),
                hint="remove no-reorder = true",
            )
        argv.append("-reorder")  # WSClean 3.1 refuses several SPWs without it
    temp_dir = temp_dir_for(user_temp or out_dir, prefix)
    argv += ["-temp-dir", temp_dir]
    argv += [m.path for m in group.ms]
    return Job(
        id=job_id,
        host=host,
        cost=memo_cost(memo, argv, len(group.ms), sum(facts[m.path].data_bytes for m in group.ms)),
        argv=tuple(argv),
        ms=tuple(m.path for m in group.ms),
        name=prefix,
        out_dir=out_dir,
        temp_dir=temp_dir,
        channels_out=channels_out,
        obs_id=tokens["obs_id"] or None,  # None: no single obs_id (combined over obs_ids)
        sw=last.sw,
    )


# ---------------------------------------------------------------- the whole plan


def data_column(config: Config) -> str | None:
    column = config.wsclean.get("data-column")
    return column if isinstance(column, str) else None


def check_data_column(config: Config, inputs: list[MSInput], facts: dict[str, MSFacts]) -> list[str]:
    """One problem per MS whose main table lacks the ``data-column`` column."""
    column = data_column(config)
    if column is None:
        return []
    problems = []
    for i in inputs:
        f = facts[i.path]
        if f.has_column is False:
            others = ", ".join(sorted(c for c in f.columns if c.endswith("DATA"))) or "none"
            problems.append(
                f"{i.path}: has no column {column} (its data columns: {others}); "
                f"WSClean would fail on the node with 'Table column {column} is unknown'"
            )
    return problems


def data_column_hint(config: Config) -> str:
    column = data_column(config)
    if ("wsclean", "data-column") in config.origins:
        source = f"data-column = {column!r} is set in {config.where('wsclean', 'data-column')}"
    else:
        source = f"data-column = {column!r} is imgpipe's default (as in nenucal), not set in {config.path}"
    return (
        f"{source}; set data-column in [wsclean] to a column these MSs have (e.g. 'DATA'), "
        "or to false to let WSClean choose (CORRECTED_DATA if present, else DATA)"
    )


# what WSClean puts between the -name prefix and the kind of image: [-tNNNN][-NNNN|-MFS][-POL]
# (bin/imgpipe-job's PRODUCT)
_PRODUCT_MIDDLE = re.compile(
    r"(-t[0-9]{4,})?(-[0-9]{4,}|-MFS)?(-(I|Q|U|V|XX|XY|YX|YY|XYi|YXi|RR|RL|LR|LL|RLi|LRi))?")


def shared_files(prefixes) -> list[tuple[str, str]]:
    """Pairs of distinct prefixes whose images would have the same file names: ``img`` and
    ``img-0001`` (channel 1 of the first is ``img-0001-image.fits``, the image of the second too)."""
    known = set(prefixes)
    pairs = []
    for b in sorted(known):
        folder, base = os.path.split(b)
        for i in range(1, len(base)):  # every way of reading b as (a prefix) + (a middle part)
            if base[i] == "-" and _PRODUCT_MIDDLE.fullmatch(base[i:]) and os.path.join(folder, base[:i]) in known:
                pairs.append((os.path.join(folder, base[:i]), b))
    return pairs


def check_collisions(jobs: list[Job]) -> list[str]:
    by_name: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_name[j.name].append(j)
    problems = []
    for name, same in by_name.items():
        if len(same) > 1:
            who = "; ".join(f"job {j.id} ({', '.join(os.path.basename(m) for m in j.ms)})" for j in same)
            problems.append(f"{len(same)} jobs would write the same images {name}-*: {who}")
    for a, b in shared_files(by_name):
        ja, jb = by_name[a][0], by_name[b][0]
        problems.append(f"jobs {ja.id} and {jb.id} would write image files of the same names: {a}-* and {b}-* "
                        f"({b}-image.fits is also what {a} names the images of one channel or interval)")
    return problems


def _option(argv, flag: str, count: int = 1) -> list[str] | None:
    try:
        i = argv.index(flag)
    except ValueError:
        return None
    return list(argv[i + 1: i + 1 + count])


def memo_cost(memo: Memo, argv: list[str], nms: int, data_bytes: int) -> float:
    """A job's expected cost (``cost_shape`` of its options, worked out once per set of option
    words, applied to its MSs' data)."""
    key = tuple(argv[3:-(nms + 2)])  # the words between -name PREFIX and -temp-dir DIR MS...
    shape = memo.cost.get(key)
    if shape is None:
        shape = memo.cost[key] = cost_shape(argv)
    per_mb, fixed = shape
    return 0.1 + data_bytes / 1e6 * per_mb + fixed


def cost_shape(argv) -> tuple[float, float]:
    """What a job is expected to cost, in relative units (~seconds of a small node).

    WSClean's time grows with the visibilities it grids (the MSs' data on disk) times the
    passes over them (the PSF and dirty image, then each major cycle when cleaning), and with
    the images it makes (output channels x intervals x polarizations) and their pixels. Only
    the order of the plan's jobs depends on it, and, when jobs with the same options have run
    before, their recorded runtimes turn it into seconds (image_sets.seconds_per_cost).
    """
    def number(flag: str, default: float) -> float:
        words = _option(argv, flag)
        try:
            return float(words[0]) if words else default
        except ValueError:
            return default

    size = _option(argv, "-size", 2) or ["1024", "1024"]
    try:
        pixels = int(size[0]) * int(size[1]) / 1e6
    except (ValueError, IndexError):
        pixels = 1.0
    pol = (_option(argv, "-pol") or ["I"])[0].lower()
    npol = 4 if pol == "iquv" else max(1, len([p for p in re.split(r"[,\s]+", pol) if p]))
    images = number("-channels-out", 1) * number("-intervals-out", 1) * npol
    niter = number("-niter", 0)
    majors = 0.0 if niter <= 0 else (1.0 if number("-mgain", 1.0) >= 1.0 else min(number("-nmiter", 20), 1 + math.log2(1 + niter / 100)))
    passes = 2 + majors
    return passes * (1 + 0.2 * (images - 1)) * (1 + pixels), images * pixels * (1 + niter / 1e4)


def longest_first(jobs: list[Job], slots: int) -> list[Job]:
    """The jobs in the order they should start: the longest first, so that the night does not end
    waiting for a long job started last. A pinned job also counts its node's pinned load (spread
    over its slots): the jobs of a busy node start before the unpinned ones of the same cost.
    Ties keep the plan's order (by job id): the result is deterministic."""
    load: dict[str, float] = defaultdict(float)
    for j in jobs:
        if j.host:
            load[j.host] += j.cost
    slots = max(1, slots)
    return sorted(jobs, key=lambda j: (-(j.cost + (load[j.host] / slots if j.host else 0.0)), j.id))


def job_ids(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"{i:0{width}d}" for i in range(1, n + 1)]


def build_plan(
    config: Config,
    inputs: list[MSInput],
    facts: dict[str, MSFacts],
    *,
    combine: bool = False,
    combine_obs_ids: bool = False,
) -> Plan:
    """Pure: the checked plan, or PlanErrors listing every problem found."""
    column_problems = check_data_column(config, inputs, facts)
    problems = list(column_problems)
    groups = group_inputs(inputs, combine, combine_obs_ids)
    jobs: list[Job] = []
    memo = Memo(config)
    for job_id, group in zip(job_ids(len(groups)), groups):
        host = job_host(config, group, problems)
        try:
            jobs.append(build_job(job_id, config, group, facts, host, memo))
        except ImgpipeError as e:
            if str(e) not in problems:  # a config-level mistake is the same for every job: said once
                problems.append(str(e))
    if problems:
        raise PlanErrors(problems, hint=data_column_hint(config) if column_problems else None)
    return _checked_plan(config, inputs, jobs, combine=combine, combine_obs_ids=combine_obs_ids)


def _checked_plan(config: Config, inputs: list[MSInput], jobs: list[Job], *, combine: bool,
                  combine_obs_ids: bool) -> Plan:
    """The plan of these jobs, in the order they should start, once no two of them write the same
    images (PlanErrors otherwise)."""
    collisions = check_collisions(jobs)
    if collisions:
        hint = "make out-dir or name differ per job, e.g. out-dir = '$ms_basename$/images'"
        if not combine and len({os.path.basename(i.path) for i in inputs}) < len(inputs):
            hint = ("some MSs have the same name in different directories: put the images next to each MS, "
                    "e.g. out-dir = '$ms_in$/images', or give the directories distinct MS names")
        if config.data_handler is not None:
            hint += ", or add $obs_id$ and $sw$ to out-dir"
        if combine_obs_ids and not combine:
            hint = "--combine_obs_ids only takes effect with --combine; " + hint
        raise PlanErrors(collisions, hint=hint)
    worker = config.worker.run_settings()
    frozen = tuple(longest_first(jobs, worker.max_concurrent))
    return Plan(config_path=str(config.path), worker=worker, jobs=frozen, digest=plan_digest(worker, frozen),
                quality=config.quality)


def _pattern_like(arg: str) -> bool:
    """Does a command-line input that is no path look like an obs_id pattern (a glob, SW part, list)?"""
    name = os.path.basename(arg.rstrip("/"))
    return "/" not in arg.rstrip("/") and (any(c in name for c in "*?[:,") or not name.lower().endswith(".ms"))


def make_plan(config: Config, args: list[str], *, combine: bool = False, combine_obs_ids: bool = False,
              skipped: list[str] | None = None) -> Plan:
    """Resolve the inputs, read each MS once, and build the plan.

    With one job per MS (no --combine), each MS's job is built as soon as its facts are in, while
    the worker processes read the next MSs (ms_facts.iter_facts): on 2 CPUs, a plan of 50,000 MSs
    no longer waits for every MS before building the first job. These are the jobs build_plan
    makes (build_job is pure); on the first sign of a problem the planner stops building early,
    and build_plan, on all the facts, says what is wrong, as it always did.
    """
    from .inputs import resolve_inputs
    from .ms_facts import iter_facts

    inputs = resolve_inputs(config, args)
    early = not combine  # (a combined job needs every MS of its group: built at the end)
    groups = group_inputs(inputs, False, False) if early else []
    ids = job_ids(len(groups))
    jobs: list[Job | None] = [None] * len(groups)
    memo = Memo(config)
    out_dirs = OutDirCheck()
    facts: dict[str, MSFacts] = {}
    unreadable: dict[int, str] = {}
    for batch in iter_facts([item.path for item in inputs], data_column(config)):
        built = []
        for i, result in batch:
            if isinstance(result, str):
                unreadable[i] = result
                continue
            facts[inputs[i].path] = result
            out_dirs.known(inputs[i].path)  # (just opened as a directory)
            if early and not unreadable:
                trouble: list[str] = []
                host = job_host(config, groups[i], trouble)
                if trouble or result.has_column is False:
                    early = False
                    continue
                try:
                    jobs[i] = job = build_job(ids[i], config, groups[i], facts, host, memo)
                except ImgpipeError:
                    early = False
                    continue
                built.append(job)
        # (each kind of work over the whole batch: interleaved per job, the same work took 1.2 x)
        for job in built:
            out_dirs.add(job)
        for job in built:
            job.command  # (its shell line: the image states and the jobs file read it)
    if unreadable and skipped is not None and len(unreadable) < len(inputs):
        # --skip-missing: the others are planned, the missing ones said (a gap in a night's data is normal)
        skipped += [unreadable[i] for i in sorted(unreadable)]
        inputs = [item for i, item in enumerate(inputs) if i not in unreadable]
        unreadable, early = {}, False
    if unreadable:
        hint = "check the paths (every missing or unreadable MS is listed)"
        if config.data_handler is None and any(_pattern_like(a) for a in args if not os.path.exists(a)):
            hint += ("; obs_id patterns (such as '202312*_NT04:SW01') need a [data_handler] section in "
                     f"{config.path} (config_file, data_level)")
        elif len(unreadable) < len(inputs):
            hint += "; or plan the others, leaving these out: --skip-missing"
        raise PlanErrors([unreadable[i] for i in sorted(unreadable)], hint=hint)
    if early:
        plan = _checked_plan(config, inputs, jobs, combine=combine, combine_obs_ids=combine_obs_ids)
    else:
        plan = build_plan(config, inputs, facts, combine=combine, combine_obs_ids=combine_obs_ids)
    if not early or out_dirs.problems:  # (the problems in the plan's order)
        problems = check_out_dirs(plan.jobs, known_dirs=facts)  # (every MS was just opened as a directory)
    else:
        problems = []
    if problems:
        raise PlanErrors(problems, hint="out-dir (and name) must lead to a directory the nodes can make and write: "
                         "move the file away, make the directory writable, or choose another out-dir")
    return plan


class OutDirCheck:
    """The image (and temp) directories of jobs, checked one job at a time: one problem per
    directory that cannot be one, because it, or a directory above it, is a file, or because the
    directory it would be made in (or it itself) cannot be written from here (read-only, or
    permission denied): a job would find that only when it runs."""

    _KNOWN = ""  # a directory known to be one (an MS), not yet asked whether it can be written

    def __init__(self, known_dirs=()):
        # path -> None when it is a directory that can be written, else what is wrong with it;
        # known_dirs: absolute paths known to be directories (the MSs: out-dir is often inside them)
        self.seen: dict[str, str | None] = dict.fromkeys(known_dirs, self._KNOWN)
        self.problems: list[str] = []

    def known(self, directory: str) -> None:
        """``directory`` (absolute) is known to be one."""
        self.seen.setdefault(directory, self._KNOWN)

    @staticmethod
    def _problem(path: str, known: bool = False) -> str | None:
        if not known and not os.path.isdir(path):
            return f"{path} {'is a file' if os.path.isfile(path) else 'is not a directory'}"
        if os.access(path, os.W_OK | os.X_OK):
            return None
        try:
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return f"{path} cannot be written from here ({'a read-only file system' if read_only else 'permission denied'})"

    def add(self, job: Job) -> None:
        seen = self.seen
        for path in (job.out_dir, os.path.dirname(job.temp_dir)):
            start = path
            while path not in seen and not os.path.lexists(path) and os.path.dirname(path) != path:
                path = os.path.dirname(path)  # up to the first part that exists
            problem = seen.get(path, self._KNOWN)
            if path not in seen or problem == self._KNOWN:
                problem = seen[path] = self._problem(path, known=path in seen)
            if problem is not None:
                which = "image directory" if start == job.out_dir else "temp-dir"
                text = f"the {which} {start} cannot be made: {problem}"
                if text not in self.problems:
                    self.problems.append(text)


def check_out_dirs(jobs, known_dirs=()) -> list[str]:
    """OutDirCheck's problems for these jobs, in their order."""
    check = OutDirCheck(known_dirs)
    for job in jobs:
        check.add(job)
    return check.problems
