"""Load and validate an imgpipe TOML config (nenucal-compatible).

The first step of the data flow: a file on disk becomes a checked ``Config``.
Nothing here touches a Measurement Set or a node.

- ``default_settings = 'other.toml'`` chains (relative to the file that names it);
  the user's file overrides the defaults, table by table, key by key.
- ``[worker]`` and ``[data_handler]`` keys are checked against their declarations (``Key``),
  ``[wsclean]`` keys against WSClean's own options; an unknown key is an error
  that names the file and suggests the closest valid key.
- ``[wsclean]`` always starts from nenucal's defaults (``pol``, ``weight``,
  ``data-column``, ``out-dir``); ``false`` or ``''`` drops a default.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .errors import ImgpipeError
from .hosts import MAX_NODES, parse_nodes
from . import wsclean_options
from .wsclean_command import check_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

MAX_CONCURRENT = 1000  # jobs at once on one node: beyond, each gets nothing of its cores and memory
MAX_TIME = 30 * 86400  # a job's max_time: 30 days


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite number (TOML has nan and inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


@dataclass(frozen=True)
class Key:
    """One key of a config table, declared once: its default, the kind of value it takes (and a
    number's range), the words its error says it expects, and its line in the README's table
    (``tests/test_config.py`` holds the README to these)."""

    name: str
    default: Any
    kind: Callable[[Any], bool]
    expected: str  # the error's 'expected <this>, got <value>'
    doc: str = ""  # the README table's 'meaning'
    hint: str | None = None
    within: tuple[float, float] | None = None  # (lowest, highest), both allowed

    def fits(self, value: Any) -> bool:
        return self.kind(value) and (self.within is None or self.within[0] <= value <= self.within[1])


WORKER_KEYS = {k.name: k for k in (
    Key("nodes", "localhost", lambda v: _is_str(v) or isinstance(v, list) and all(map(_is_str, v)),
        "a string such as 'node[001-004],node010'",
        "hosts: `'a,b'`, ranges `'node[1-3]'`, zero-padded `'node[08-11]'`, lists `'node[1,5]'`, mixed "
        "`'node[1-2,7]'`; order kept, spaces stripped, duplicates dropped. `'localhost'` (or this machine's name) "
        "runs here without ssh"),
    Key("max_concurrent", 4, _is_int, f"a whole number of jobs per node, from 1 to {MAX_CONCURRENT}",
        "WSClean jobs at once **per node**", "each job gets 1/max_concurrent of its node's cores and memory",
        within=(1, MAX_CONCURRENT)),
    Key("env_file", "", _is_str, "a string",
        "sourced on the node before each job; a leading `~` is the node's home. A missing file or a non-zero "
        "status fails the job (class `env_file`)"),
    Key("dry_run", False, _is_bool, "true or false", "as `--dry-run` (`imgpipe plan` still writes the jobs file)"),
    Key("debug", False, _is_bool, "true or false", "print each command as it is planned"),
    Key("run_on_file_host", False, _is_bool, "true or false", "pin each job to the node holding its data"),
    Key("run_on_file_host_pattern", "", _is_str, "a string",
        "regex searched in the MS path; its first group is the host, e.g. `'/net/(node\\d{3})/'`. No group, no "
        "match, or a host not in `nodes`: plan error. With a data handler and no pattern, the data handler's node "
        "map is used"),
    Key("max_time", 0, _is_number, f"a number of seconds, from 0 (no limit) to {MAX_TIME:,}",
        "seconds a job may run (0 = no limit); then TERM, KILL 30 s later; the job counts as failed (class "
        "`timeout`)", "e.g. max_time = 7200 (2 hours)", within=(0, MAX_TIME)),
    Key("retries", 0, _is_int, "a whole number of retries, from 0 to 100",
        "re-run a job that failed in WSClean this many times", within=(0, 100)),
    Key("retry_factor", 1.0, _is_number, "a factor, from 1 (the same) to 16",
        "a job Slurm stopped past its memory or time limit, or that reached `max_time`, runs again (`retries`) "
        "with this many times the memory and the time of its last attempt (`1`: the same; a `--time` in "
        "`slurm_options` too, in whole minutes), up to `retry_memory_max`; its record says what it got",
        within=(1, 16)),
    Key("retry_memory_max", "", lambda v: _is_str(v) and (v == "" or _mem_mb(v) is not None),
        "an amount of memory, e.g. '64G' ('': a node's memory)",
        "the most memory a job asks of Slurm when it runs again with more (`''`: the largest usable node's)"),
    Key("halt_after", "auto", lambda v: v == "auto" or _is_int(v) and v >= 0,
        "'auto' or a whole number of failed jobs (0: never halt)",
        "start no new job once this many jobs have failed for good (`0`: never halt). `'auto'`: halt when the "
        "first jobs of the run (5, or all if fewer) all failed the same way (one bad option, say), and say why",
        "'auto' (the default) halts when the first jobs all fail the same way"),
    Key("connection_retries", 3, _is_int, "a whole number of retries, from 0 to 100",
        "re-run a job whose ssh connection failed this many times (a pinned job stays on its node)",
        within=(0, 100)),
    Key("ssh", "ssh", lambda v: _is_str(v) and bool(v.strip()),
        "the ssh command, e.g. 'ssh' or 'ssh -F ~/.ssh/cluster_config'",
        "the ssh command, e.g. `'ssh -F ~/.ssh/cluster'`; the environment variable `IMGPIPE_SSH` overrides it"),
    Key("slurm_nodes", 0, _is_int, f"a whole number of nodes, from 0 to {MAX_NODES:,}",
        "with `nodes = 'slurm'`: `K > 0` one allocation of K nodes, jobs run as its steps; `0` each job is a "
        "Slurm job of its own (see *Running on a Slurm cluster*)", within=(0, MAX_NODES)),
    Key("slurm_options", "", _is_str, "a string",
        "options for Slurm, as on the sbatch command line (`'--partition=imaging --account=nenufar "
        "--time=12:00:00'`); unset: `$LIBPIPE_SLURM_OPTIONS`, as in nenucal"),
    Key("resources", {}, lambda v: isinstance(v, dict) and all(isinstance(t, dict) for t in v.values()),
        "tables of {cpus, mem}, e.g. [worker.resources.heavy] cpus = 8, mem = '30G'",
        "`[worker.resources.heavy]` with `cpus = 8`, `mem = '30G'`: what each job asks of Slurm (nenucal's "
        "table; default: a node's CPUs and memory divided by `max_concurrent`)"),
)}

# the run settings read from [worker.resources.heavy] (its cpus, its mem in MB), and from retry_memory_max
SLURM_CPUS = Key("slurm_cpus", 0, _is_int, "a whole number of CPUs per job", within=(0, math.inf))
SLURM_MEM_MB = Key("slurm_mem_mb", 0, _is_int, "a whole number of MB per job", within=(0, math.inf))
RETRY_MEMORY_MAX_MB = Key("retry_memory_max_mb", 0, _is_int, "a whole number of MB", within=(0, math.inf))
READ_FROM = {"slurm_cpus": SLURM_CPUS, "slurm_mem_mb": SLURM_MEM_MB, "retry_memory_max_mb": RETRY_MEMORY_MAX_MB}

DATA_HANDLER_KEYS = {k.name: k for k in (
    Key("config_file", "", _is_str, "a string",
        "the NenuFAR `data_handler.toml`, relative to this config file (if only found relative to the current "
        "directory, that one is used with a warning)"),
    Key("data_level", "L2", _is_str, "a string", "the data level whose MSs are imaged"),
)}

# the tables whose keys are declared above (another: its keys here, and its table in the README)
TABLES = {"worker": WORKER_KEYS, "data_handler": DATA_HANDLER_KEYS}

WSCLEAN_DEFAULTS: dict[str, Any] = {
    "pol": "I",
    "weight": "briggs 0",
    "data-column": "CORRECTED_DATA",
    "out-dir": "$ms_in$/images",
}

# keys of [wsclean] that imgpipe itself interprets (not passed through verbatim)
IMGPIPE_WSCLEAN_KEYS = ("name", "out-dir")

TOP_LEVEL_KEYS = ("worker", "data_handler", "wsclean", "quality", "default_settings")

# the origin of a value given by a command-line option (see load_config's overrides)
COMMAND_LINE = Path("command line")

_EVERY_RE = re.compile(r"^every\s*(\d+)$")


# '# worker:' settings added since format 1, as unset: written only when set (earlier plans keep their digest)
_SINCE_FORMAT_1 = {"slurm_cpus": 0, "slurm_mem_mb": 0, "halt_after": None, "retry_factor": 1.0,
                   "retry_memory_max_mb": 0}


@dataclass(frozen=True)
class RunSettings:
    """The ``[worker]`` settings a run needs, typed: carried from the plan, through the jobs
    file (its ``# worker:`` line, covered by the plan digest), to the engines. Each is checked by
    its [worker] key's declaration (``halt_after``: None for 'auto'), or READ_FROM."""

    nodes: tuple[str, ...]
    max_concurrent: int
    env_file: str
    max_time: float
    slurm_nodes: int
    slurm_options: str
    ssh: str
    retries: int
    connection_retries: int
    slurm_cpus: int  # CPUs per job asked of Slurm ([worker.resources.heavy] cpus); 0: the node's share
    slurm_mem_mb: int  # memory per job asked of Slurm, MB ([worker.resources.heavy] mem); 0: the node's share
    halt_after: int | None  # start no new job after this many failures; 0 never; None: 'auto'
    retry_factor: float  # a job stopped past its memory or time runs again with this many times more
    retry_memory_max_mb: int  # ... up to this much memory (MB); 0: the largest usable node's

    def as_dict(self) -> dict[str, Any]:
        """A stable JSON-able form (the jobs file's ``# worker:`` line; the digest is taken over it)."""
        later = {k: getattr(self, k) for k, unset in _SINCE_FORMAT_1.items() if getattr(self, k) != unset}
        first = {f.name: getattr(self, f.name) for f in fields(RunSettings) if f.name not in _SINCE_FORMAT_1}
        return {**later, **first, "nodes": list(self.nodes)}

    @classmethod
    def from_dict(cls, data: Any) -> "RunSettings":
        """Read back ``as_dict``'s form; ValueError naming the key when it is not that form."""
        if not isinstance(data, dict):
            raise ValueError("the worker settings are not a JSON object")
        keys = {**WORKER_KEYS, **READ_FROM}
        names = [f.name for f in fields(RunSettings)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown worker setting {unknown[0]!r}")
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) and n for n in nodes):
            raise ValueError("worker 'nodes' is not a list of host names")
        settings = {**{name: keys[name].default for name in names}, **data, "nodes": tuple(nodes)}
        for key in (keys[name] for name in names if name != "nodes"):
            value = settings[key.name]
            if not key.kind(value):
                raise ValueError(f"worker {key.name!r} has the wrong type: {value!r}")
            if not key.fits(value):
                low, high = key.within
                raise ValueError(f"worker {key.name!r} is less than {low}" if value < low else
                                 f"worker {key.name!r} is more than {high}")
        return cls(**{**settings, "halt_after": None if settings["halt_after"] == "auto" else settings["halt_after"]})


@dataclass(frozen=True)
class WorkerConfig(RunSettings):
    """The checked ``[worker]`` table: the run settings, and the keys only planning reads."""

    dry_run: bool
    debug: bool
    run_on_file_host: bool
    run_on_file_host_pattern: re.Pattern | None

    def run_settings(self) -> RunSettings:
        """What a run of the plan needs (planning-only keys such as debug and the pattern left out)."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in fields(RunSettings)})


@dataclass(frozen=True)
class DataHandlerConfig:
    config_file: Path
    data_level: str


@dataclass(frozen=True)
class Config:
    path: Path
    worker: WorkerConfig
    data_handler: DataHandlerConfig | None
    wsclean: dict[str, Any]  # remaining [wsclean] keys, defaults applied, dropped ones removed
    quality: QualitySettings = field(default_factory=lambda: QualitySettings())
    origins: dict[tuple[str, str], Path] = field(default_factory=dict, compare=False)

    def where(self, section: str, key: str) -> str:
        """'file: [section] key' for error messages: the file the value came from."""
        return _where(self.origins, self.path, section, key)


def _where(origins: dict[tuple[str, str], Path], default: Path, section: str, key: str) -> str:
    src = origins.get((section, key), default)
    if src == COMMAND_LINE:  # 'command line: --max-concurrent (overrides [worker] max_concurrent)'
        return f"{src}: --{key.replace('_', '-')} (overrides [{section}] {key})"
    return f"{src}: [{section}] {key}"


def suggest(name: str, valid) -> str | None:
    import difflib  # only on the error path

    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_key(path: Path, section: str | None, key: str, valid, what: str) -> ImgpipeError:
    close = suggest(key, valid)
    where = f"{path}: [{section}]" if section else str(path)
    hint = f"did you mean '{close}'?" if close else f"valid {what}: {', '.join(sorted(valid))}"
    text = f"unknown key '{key}'" if section else f"unknown table or key '{key}'"
    return ImgpipeError(text, where=where, hint=hint)


def _suggest_wsclean(key: str) -> str | None:
    """The closest [wsclean] key, comparing in lower case with '-' for '_' (nenucal users write both)."""
    return suggest(key.strip().lower().replace("_", "-"), (*IMGPIPE_WSCLEAN_KEYS, *wsclean_options.OPTIONS))


MAX_CONFIG_BYTES = 10 * 1024 * 1024  # a config is text of a few KB; /dev/zero is endless
MAX_CHAIN = 50  # default_settings files in one chain
BOM = b"\xef\xbb\xbf"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file, turning every failure into a message naming the file."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):  # a device, a pipe (reading it could block or never end)
            raise ImgpipeError("is not a regular file (a device, a pipe or a socket), not a config file",
                               where=str(path))
        if st.st_size > MAX_CONFIG_BYTES:
            raise ImgpipeError(f"is {st.st_size:,} bytes, not a config file (those are a few KB)", where=str(path))
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if text.startswith(BOM):
            raise ImgpipeError(
                "starts with a UTF-8 byte-order mark (BOM), which TOML does not allow",
                where=str(path),
                hint=f"save it as UTF-8 without BOM (your editor's setting), or: sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")
        return tomllib.loads(text.decode("utf-8"))
    except FileNotFoundError:
        raise ImgpipeError("config file not found", where=str(path)) from None
    except IsADirectoryError:
        raise ImgpipeError("is a directory, not a config file", where=str(path)) from None
    except PermissionError:
        raise ImgpipeError("config file is not readable (permission denied)", where=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ImgpipeError(f"invalid TOML: {e}", where=str(path)) from None
    except UnicodeDecodeError as e:
        raise ImgpipeError(f"not a UTF-8 text file: {e}", where=str(path)) from None
    except OSError as e:  # a symbolic link loop, a file name too long, an I/O error...
        raise ImgpipeError(f"cannot read the config file: {e.strerror or e}", where=str(path)) from None


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    """Reject unknown tables and keys in one file, before anything is merged."""
    for top, value in data.items():
        if top not in TOP_LEVEL_KEYS:
            raise _unknown_key(path, None, top, TOP_LEVEL_KEYS, "top-level tables")
        if top == "default_settings":
            if not isinstance(value, str):
                raise ImgpipeError(
                    f"default_settings must be a file name (string), got {value!r}", where=str(path)
                )
            continue
        if not isinstance(value, dict):
            raise ImgpipeError(f"'{top}' must be a table ([{top}]), got {value!r}", where=str(path))
        if top in TABLES:
            for key in value:
                if key not in TABLES[top]:
                    raise _unknown_key(path, top, key, TABLES[top], f"[{top}] keys")
        elif top == "wsclean":
            for key in value:
                if key.startswith("-"):
                    # lookup() would accept '-niter', which then renders as '--niter' and
                    # escapes the checks made on 'name', 'channels-out', 'temp-dir', ...
                    raise ImgpipeError(
                        f"'{key}': write WSClean options without the leading '-'",
                        where=f"{path}: [wsclean]",
                        hint=f"write {key.lstrip('-')} = ... (the key without '-'; imgpipe adds it)",
                    )
                if key not in IMGPIPE_WSCLEAN_KEYS and wsclean_options.lookup(key) is None:
                    close = _suggest_wsclean(key)
                    hint = (
                        f"did you mean '{close}'?"
                        if close
                        else f"see `wsclean --help` for the options of WSClean {wsclean_options.WSCLEAN_VERSION}"
                    )
                    raise ImgpipeError(
                        f"'{key}' is not a WSClean option",
                        where=f"{path}: [wsclean]",
                        hint=hint,
                    )


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[tuple[str, str], Path]]:
    """Load ``path`` and, first, the ``default_settings`` file it names (recursively)."""
    if len(seen) >= MAX_CHAIN:
        raise ImgpipeError(
            f"default_settings lead through more than {MAX_CHAIN} files (from {seen[0]})",
            where=str(path),
            hint="a chain of defaults is a few files long: check where each default_settings leads")
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ImgpipeError(
            f"default_settings form a loop: {chain}",
            where=str(path),
            hint="a default_settings file must not lead back to a file of the chain; remove one of these links",
        )
    data = read_toml(path)
    _check_keys(path, data)
    merged: dict[str, dict] = {}
    origins: dict[tuple[str, str], Path] = {}
    base_name = data.get("default_settings")
    if base_name:
        base_path = (path.parent / os.path.expanduser(base_name)).resolve()
        if not base_path.exists():
            raise ImgpipeError(
                f"default_settings file '{base_name}' not found (looked for {base_path})",
                where=str(path),
                hint="default_settings is relative to the file that names it",
            )
        merged, origins = _load_chain(base_path, (*seen, path))
    for section, table in data.items():
        if section == "default_settings":
            continue
        target = merged.setdefault(section, {})
        for key, value in table.items():
            target[key] = value
            origins[(section, key)] = path
    return merged, origins


def _toml_repr(value: Any) -> str:
    """A value as the user wrote it in TOML (true, not Python's True)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _type_error(where: str, expected: str, value: Any, hint: str | None = None) -> ImgpipeError:
    return ImgpipeError(f"expected {expected}, got {_toml_repr(value)}", where=where, hint=hint)


def _check(key: Key, value: Any, where: str) -> None:
    if not key.fits(value):
        raise _type_error(where, key.expected, value, key.hint)


def _checked(keys: dict[str, Key], table: dict[str, Any], where) -> dict[str, Any]:
    """``table`` over its keys' defaults, each value checked against its key's declaration."""
    values = {**{name: key.default for name, key in keys.items()}, **table}
    for name, key in keys.items():
        _check(key, values[name], where(name))
    return values


def _build_worker(table: dict[str, Any], where) -> WorkerConfig:
    w = _checked(WORKER_KEYS, table, where)
    nodes_value = ",".join(w["nodes"]) if isinstance(w["nodes"], list) else w["nodes"]
    try:
        w["nodes"] = parse_nodes(nodes_value)
        if "slurm" in w["nodes"] and len(w["nodes"]) > 1:
            raise ValueError(f"'slurm' runs the jobs through Slurm: it cannot be listed with other hosts "
                             f"({nodes_value!r})")
    except ValueError as e:
        raise ImgpipeError(str(e), where=where("nodes"),
                           hint="write hosts as 'a,b', ranges as 'node[1-3]' or 'node[08-11]', lists as 'node[1,5]'") from None
    slurm_options = w["slurm_options"] or os.environ.get("LIBPIPE_SLURM_OPTIONS", "")  # nenucal's fallback
    try:
        shlex.split(slurm_options)
    except ValueError as e:
        raise ImgpipeError(f"cannot read slurm_options {slurm_options!r}: {e}",
                           where=where("slurm_options") + ("" if w["slurm_options"] else " ($LIBPIPE_SLURM_OPTIONS)"),
                           hint="write the options as on the sbatch command line, e.g. "
                           "'--partition=imaging --time=12:00:00'") from None
    w["slurm_options"] = slurm_options
    w["slurm_cpus"], w["slurm_mem_mb"] = _resources(w.pop("resources"), where)
    w["retry_memory_max_mb"] = _mem_mb(w.pop("retry_memory_max")) or 0
    if w["halt_after"] == "auto":
        w["halt_after"] = None
    pattern = None
    if w["run_on_file_host_pattern"]:
        try:
            pattern = re.compile(w["run_on_file_host_pattern"])
        except re.error as e:
            raise ImgpipeError(
                f"regular expression does not compile: {e}",
                where=where("run_on_file_host_pattern"),
                hint="it is a Python regex searched in the MS path, e.g. '/net/(node\\d{3})/'",
            ) from None
        if pattern.groups < 1:
            raise ImgpipeError(
                f"pattern '{w['run_on_file_host_pattern']}' has no group: nothing says which part is the host",
                where=where("run_on_file_host_pattern"),
                hint="put the host name part in parentheses, e.g. '/net/(node\\d{3})/'",
            )
    return WorkerConfig(**{**w, "run_on_file_host_pattern": pattern})


_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_MEM_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "": 1024}  # a bare number is in GB


def _mem_mb(text: str) -> int | None:
    """MB of an amount of memory written as Slurm does ('30G', '500M', '2T'; a bare number: GB); None
    when it is not one."""
    m = _MEM_RE.match(text)
    return int(float(m.group(1)) * _MEM_MB[m.group(2).upper()]) if m else None


def _resources(table: dict[str, dict], where) -> tuple[int, int]:
    """nenucal's ``[worker.resources]``: ``{category: {cpus, mem}}``; imaging asks for the category
    'heavy' (as nenucal's imaging did). Returns (CPUs, memory in MB) per job, 0 when not set."""
    heavy = table.get("heavy", {})
    unknown = sorted(set(heavy) - {"cpus", "mem"})
    if unknown:
        close = suggest(unknown[0], ("cpus", "mem"))
        raise ImgpipeError(f"unknown key '{unknown[0]}' in [worker.resources.heavy]", where=where("resources"),
                           hint=f"did you mean '{close}'?" if close else "its keys are cpus and mem")
    cpus = heavy.get("cpus", 0)
    _check(SLURM_CPUS, cpus, where("resources") + ".heavy cpus")
    mem = heavy.get("mem", 0)
    mem_mb = 0
    if _is_number(mem) and mem >= 0:
        mem_mb = int(mem * 1024)
    elif isinstance(mem, str) and _mem_mb(mem) is not None:
        mem_mb = _mem_mb(mem)
    else:
        raise _type_error(where("resources") + ".heavy mem", "an amount of memory per job, e.g. '30G' or '500M'",
                          mem)
    return cpus, mem_mb


def _build_data_handler(naming_file: Path, table: dict[str, Any] | None, where) -> DataHandlerConfig | None:
    """``naming_file``: the config file that sets ``config_file`` (the user's, or a default_settings file)."""
    if not table:
        return None
    if "config_file" not in table:
        raise ImgpipeError(
            "missing: [data_handler] needs the data handler file to resolve obs_ids into MSs",
            where=where("config_file"),
            hint="add config_file = 'data_handler.toml' (relative to this config file), or remove [data_handler]",
        )
    d = _checked(DATA_HANDLER_KEYS, table, where)
    if not d["config_file"]:
        return None
    if not d["data_level"]:
        raise _type_error(where("data_level"), "a data level name such as 'L2'", d["data_level"])
    name = os.path.expanduser(d["config_file"])
    base_dir = Path.cwd() if naming_file == COMMAND_LINE else naming_file.parent
    beside = (base_dir / name).resolve()
    chosen = beside
    if not beside.exists():
        in_cwd = Path(name).resolve()
        if in_cwd.exists():
            print(
                f"imgpipe: warning: {where('config_file')}: '{d['config_file']}' is not next to "
                f"{naming_file.name} (no {beside}); using {in_cwd} from the current directory",
                file=sys.stderr,
            )
            chosen = in_cwd
    return DataHandlerConfig(config_file=chosen, data_level=d["data_level"])


def parse_channels_out(value: Any, where: str) -> Any:
    """Validate ``channels-out``: 'all', 'every N' / 'everyN', or a whole number >= 1."""
    if _is_int(value):
        if value < 1:
            raise _type_error(where, "at least 1 output channel", value)
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return "all"
        m = _EVERY_RE.match(text)
        if m:
            n = int(m.group(1))
            if n == 0:
                raise ImgpipeError(
                    f"'{value}': N in 'every N' must be at least 1 (channels-out = number of channels // N)",
                    where=where,
                    hint="use 'every N' with N >= 1 (1 output channel per N input channels), or 'all'",
                )
            return f"every {n}"
        if text.isdigit() and int(text) >= 1:
            return int(text)
    raise _type_error(where, "'all', 'every N' or a whole number >= 1", value)


def _check_wsclean(table: dict[str, Any], where) -> dict[str, Any]:
    """Apply nenucal's defaults, drop false/'' values and check every value's shape."""
    merged = {**WSCLEAN_DEFAULTS, **table}
    out: dict[str, Any] = {}
    for key, value in merged.items():
        if value is False or value == "":
            continue  # dropped (also removes a default)
        if key in ("name", "out-dir"):
            if not isinstance(value, str):
                raise _type_error(where(key), "a string", value)
            out[key] = value
            continue
        if key == "channels-out":
            out[key] = parse_channels_out(value, where(key))
            continue
        if key in wsclean_options.REJECTED:
            raise ImgpipeError(
                f"-{key} cannot be used: {wsclean_options.REJECTED[key]}",
                where=where(key),
                hint=f"remove {key} from [wsclean]",
            )
        opt = wsclean_options.lookup(key)
        check_value(opt, value, where(key))
        out[key] = value
    if "name" not in out:
        raise ImgpipeError(
            "missing: every config needs the prefix of the output image names (WSClean's -name)",
            where=where("name"),
            hint="add e.g. name = 'img' to [wsclean] (false or '' do not remove it: it is required)",
        )
    return out



def load_worker_overrides(settings: RunSettings, *, nodes: str | None = None,
                          max_concurrent: int | None = None) -> RunSettings:
    """A jobs file's run settings with `imgpipe run`'s --nodes and --max-concurrent, checked as in a config."""
    from dataclasses import replace

    def where(key: str) -> str:
        return _where({("worker", key): COMMAND_LINE}, COMMAND_LINE, "worker", key)

    changes: dict[str, Any] = {}
    if nodes is not None:
        try:
            changes["nodes"] = parse_nodes(nodes)
        except ValueError as e:
            raise ImgpipeError(str(e), where=where("nodes"), hint="e.g. --nodes 'node[001-004]'") from None
    if max_concurrent is not None:
        _check(WORKER_KEYS["max_concurrent"], max_concurrent, where("max_concurrent"))
        changes["max_concurrent"] = max_concurrent
    return replace(settings, **changes)


def load_config(path: str | os.PathLike, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read, merge and check a config file. Raises ImgpipeError on any user mistake.

    ``overrides`` (from command-line options, e.g. ``{"worker": {"dry_run": True}}``)
    win over every file.
    """
    config_path = Path(path).expanduser().resolve()
    merged, origins = _load_chain(config_path)
    for section, table in (overrides or {}).items():
        for key, value in table.items():
            merged.setdefault(section, {})[key] = value
            origins[(section, key)] = COMMAND_LINE

    def where_in(section):
        def where(key):
            return _where(origins, config_path, section, key)
        return where

    worker = _build_worker(merged.get("worker", {}), where_in("worker"))
    data_handler = _build_data_handler(
        origins.get(("data_handler", "config_file"), config_path),
        merged.get("data_handler"),
        where_in("data_handler"),
    )
    if worker.run_on_file_host and worker.run_on_file_host_pattern is None and data_handler is None:
        # with a data handler, its node map says which node holds each MS
        raise ImgpipeError(
            "run_on_file_host = true needs run_on_file_host_pattern (or a [data_handler], whose node map "
            "says which node holds each MS)",
            where=where_in("worker")("run_on_file_host"),
            hint="set run_on_file_host_pattern to a regex whose first group is the host, e.g. '/net/(node\\d{3})/'",
        )
    wsclean = _check_wsclean(merged.get("wsclean", {}), where_in("wsclean"))
    quality = build_quality(merged.get("quality", {}), where_in("quality"))
    return Config(path=config_path, worker=worker, data_handler=data_handler, wsclean=wsclean, quality=quality,
                  origins=origins)


# ---------------------------------------------------------------- [quality]


@dataclass(frozen=True)
class QualitySettings:
    """The ``[quality]`` table: how each job's main image is judged as it lands (imgpipe/quality.py).
    The defaults flag nothing on a normal night: all-zero, all-NaN, beamless and diverged images,
    and RMS outliers of the night; every other limit is off (0)."""

    on_fail: str = "warn"  # warn: done, marked suspect; fail: counted failed (class quality); off: no check
    rms_sigma: float = 5.0  # robust standard deviations (1.4826 MAD) of the night's RMS before an outlier
    rms_margin: float = 0.05  # ... and at least this fraction away from the median
    min_alike: int = 6  # images alike measured before the night is a reference
    max_nonfinite: float = 0.5  # fraction of NaN/inf pixels allowed (a masked horizon is ~22%)
    residual_peak_ratio: float = 1.0  # the clean diverged: residual peak above this times the dirty peak (0: off)
    rms_max: float = 0.0  # absolute limits, in the image's unit (0: off)
    rms_min: float = 0.0
    min_dynamic_range: float = 0.0
    beam_min_pixels: float = 0.0  # restoring beam limits, in pixels (0: off)
    beam_max_pixels: float = 0.0
    beam_max_ratio: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The settings that differ from the defaults (the jobs file's ``# quality:`` line)."""
        default = QualitySettings()
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if getattr(self, k) != getattr(default, k)}


QUALITY_WORDS = {
    "on_fail": "'warn' (the job is done, marked suspect), 'fail' (it counts as failed) or 'off'",
    "rms_sigma": "a number of robust standard deviations, above 0",
    "rms_margin": "a fraction, from 0 (e.g. 0.05: 5%)",
    "min_alike": "a whole number of images, from 2",
    "max_nonfinite": "a fraction of the pixels, from 0 to 1",
}


def build_quality(table: Any, where) -> QualitySettings:
    """``[quality]``, checked: unknown keys and bad values are refused, naming them."""
    if not isinstance(table, dict):
        raise ImgpipeError(f"'quality' must be a table ([quality]), got {table!r}", where=where(""))
    fields = QualitySettings.__dataclass_fields__
    for key in table:
        if key not in fields:
            close = suggest(key, fields)
            raise ImgpipeError(f"unknown key '{key}' in [quality]", where=where(key),
                               hint=f"did you mean '{close}'?" if close else f"the keys are {', '.join(fields)}")
    q = {**QualitySettings().__dict__, **table}
    if q["on_fail"] not in ("warn", "fail", "off"):
        raise _type_error(where("on_fail"), QUALITY_WORDS["on_fail"], q["on_fail"])
    for key in fields:
        if key == "on_fail":
            continue
        value = q[key]
        bad = not _is_number(value) or value < 0
        bad = bad or (key == "min_alike" and (not _is_int(value) or value < 2))
        bad = bad or (key == "max_nonfinite" and value > 1) or (key == "rms_sigma" and value <= 0)
        if bad:
            raise _type_error(where(key), QUALITY_WORDS.get(key, "a number, from 0 (0: off)"), value)
        q[key] = value if key == "min_alike" else float(value)
    return QualitySettings(**q)
