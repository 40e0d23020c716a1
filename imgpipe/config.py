"""Load and validate an imgpipe TOML config (nenucal-compatible).

The first step of the data flow: a file on disk becomes a checked ``Config``.
Nothing here touches a Measurement Set or a node.

- ``default_settings = 'other.toml'`` chains (relative to the file that names it);
  the user's file overrides the defaults, table by table, key by key.
- ``[worker]`` and ``[data_handler]`` keys are checked against the known keys,
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImgpipeError
from .hosts import MAX_NODES, parse_nodes
from . import wsclean_options
from .wsclean_command import check_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

WORKER_DEFAULTS: dict[str, Any] = {
    "nodes": "localhost",
    "max_concurrent": 4,
    "env_file": "",
    "dry_run": False,
    "debug": False,
    "run_on_file_host": False,
    "run_on_file_host_pattern": "",
    "max_time": 0,
    "slurm_nodes": 0,
    "slurm_options": "",
    "resources": {},
    "halt_after": "auto",
    "ssh": "ssh",
    "retries": 0,
    "connection_retries": 3,
}

DATA_HANDLER_DEFAULTS: dict[str, Any] = {
    "config_file": "",
    "data_level": "L2",
}

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


@dataclass(frozen=True)
class RunSettings:
    """The ``[worker]`` settings a run needs, typed: carried from the plan, through the jobs
    file (its ``# worker:`` line, covered by the plan digest), to the engines."""

    nodes: tuple[str, ...]
    max_concurrent: int = 4
    env_file: str = ""
    max_time: float = 0
    slurm_nodes: int = 0
    slurm_options: str = ""
    ssh: str = "ssh"
    retries: int = 0
    connection_retries: int = 3
    slurm_cpus: int = 0  # CPUs per job asked of Slurm ([worker.resources.heavy] cpus); 0: the node's share
    slurm_mem_mb: int = 0  # memory per job asked of Slurm, MB ([worker.resources.heavy] mem); 0: the node's share
    halt_after: int | None = None  # start no new job after this many failures; 0 never; None: 'auto'

    def as_dict(self) -> dict[str, Any]:
        """A stable JSON-able form (the jobs file's ``# worker:`` line; the digest is taken over it).
        Settings added since format 1 appear only when set, so earlier plans keep their digest."""
        extra = {k: getattr(self, k) for k in ("slurm_cpus", "slurm_mem_mb", "halt_after")
                 if getattr(self, k) not in (0, None)}
        if self.halt_after == 0:
            extra["halt_after"] = 0
        return {**extra, **{
            "nodes": list(self.nodes),
            "max_concurrent": self.max_concurrent,
            "env_file": self.env_file,
            "max_time": self.max_time,
            "slurm_nodes": self.slurm_nodes,
            "slurm_options": self.slurm_options,
            "ssh": self.ssh,
            "retries": self.retries,
            "connection_retries": self.connection_retries,
        }}

    @classmethod
    def from_dict(cls, data: Any) -> "RunSettings":
        """Read back ``as_dict``'s form; ValueError naming the key when it is not that form."""
        if not isinstance(data, dict):
            raise ValueError("the worker settings are not a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown worker setting {unknown[0]!r}")
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) and n for n in nodes):
            raise ValueError("worker 'nodes' is not a list of host names")
        kinds = {"max_concurrent": _is_int, "slurm_nodes": _is_int, "retries": _is_int,
                 "connection_retries": _is_int, "max_time": _is_number, "slurm_cpus": _is_int,
                 "slurm_mem_mb": _is_int, "halt_after": lambda v: v is None or (_is_int(v) and v >= 0),
                 "env_file": lambda v: isinstance(v, str), "slurm_options": lambda v: isinstance(v, str),
                 "ssh": lambda v: isinstance(v, str) and bool(v.strip())}
        for key, ok in kinds.items():
            if key in data and not ok(data[key]):
                raise ValueError(f"worker {key!r} has the wrong type: {data[key]!r}")
        if data.get("max_concurrent", 4) < 1:
            raise ValueError("worker 'max_concurrent' is less than 1")
        return cls(**{**data, "nodes": tuple(nodes)})


@dataclass(frozen=True)
class WorkerConfig:
    nodes: tuple[str, ...]
    max_concurrent: int
    env_file: str
    dry_run: bool
    debug: bool
    run_on_file_host: bool
    run_on_file_host_pattern: re.Pattern | None
    max_time: float
    slurm_nodes: int
    slurm_options: str
    ssh: str = "ssh"
    retries: int = 0
    connection_retries: int = 3
    slurm_cpus: int = 0
    slurm_mem_mb: int = 0
    halt_after: int | None = None

    def run_settings(self) -> RunSettings:
        """What a run of the plan needs (planning-only keys such as debug and the pattern left out)."""
        return RunSettings(
            nodes=self.nodes, max_concurrent=self.max_concurrent, env_file=self.env_file,
            max_time=self.max_time, slurm_nodes=self.slurm_nodes, slurm_options=self.slurm_options,
            ssh=self.ssh, retries=self.retries, connection_retries=self.connection_retries,
            slurm_cpus=self.slurm_cpus, slurm_mem_mb=self.slurm_mem_mb, halt_after=self.halt_after,
        )


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
        if top == "worker":
            for key in value:
                if key not in WORKER_DEFAULTS:
                    raise _unknown_key(path, top, key, WORKER_DEFAULTS, "[worker] keys")
        elif top == "data_handler":
            for key in value:
                if key not in DATA_HANDLER_DEFAULTS:
                    raise _unknown_key(path, top, key, DATA_HANDLER_DEFAULTS, "[data_handler] keys")
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


MAX_CONCURRENT = 1000  # jobs at once on one node: beyond, each gets nothing of its cores and memory
MAX_TIME = 30 * 86400  # a job's max_time: 30 days


def _type_error(where: str, expected: str, value: Any, hint: str | None = None) -> ImgpipeError:
    return ImgpipeError(f"expected {expected}, got {_toml_repr(value)}", where=where, hint=hint)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite number (TOML has nan and inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _build_worker(table: dict[str, Any], where) -> WorkerConfig:
    w = {**WORKER_DEFAULTS, **table}
    for key in ("dry_run", "debug", "run_on_file_host"):
        if not isinstance(w[key], bool):
            raise _type_error(where(key), "true or false", w[key])
    for key in ("retries", "connection_retries"):
        if not _is_int(w[key]) or not 0 <= w[key] <= 100:
            raise _type_error(where(key), "a whole number of retries, from 0 to 100", w[key])
    if not isinstance(w["ssh"], str) or not w["ssh"].strip():
        raise _type_error(where("ssh"), "the ssh command, e.g. 'ssh' or 'ssh -F ~/.ssh/cluster_config'", w["ssh"])
    for key in ("env_file", "run_on_file_host_pattern", "slurm_options"):
        if not isinstance(w[key], str):
            raise _type_error(where(key), "a string", w[key])
    nodes_value = w["nodes"]
    if isinstance(nodes_value, list) and all(isinstance(n, str) for n in nodes_value):
        nodes_value = ",".join(nodes_value)
    if not isinstance(nodes_value, str):
        raise _type_error(where("nodes"), "a string such as 'node[001-004],node010'", w["nodes"])
    try:
        nodes = parse_nodes(nodes_value)
        if "slurm" in nodes and len(nodes) > 1:
            raise ValueError(f"'slurm' runs the jobs through Slurm: it cannot be listed with other hosts "
                             f"({nodes_value!r})")
    except ValueError as e:
        raise ImgpipeError(str(e), where=where("nodes"),
                           hint="write hosts as 'a,b', ranges as 'node[1-3]' or 'node[08-11]', lists as 'node[1,5]'") from None
    if not _is_int(w["max_concurrent"]) or not 1 <= w["max_concurrent"] <= MAX_CONCURRENT:
        raise _type_error(where("max_concurrent"), f"a whole number of jobs per node, from 1 to {MAX_CONCURRENT}",
                          w["max_concurrent"], hint="each job gets 1/max_concurrent of its node's cores and memory")
    if not _is_number(w["max_time"]) or not 0 <= w["max_time"] <= MAX_TIME:
        raise _type_error(where("max_time"), f"a number of seconds, from 0 (no limit) to {MAX_TIME:,}",
                          w["max_time"], hint="e.g. max_time = 7200 (2 hours)")
    if not _is_int(w["slurm_nodes"]) or not 0 <= w["slurm_nodes"] <= MAX_NODES:
        raise _type_error(where("slurm_nodes"), f"a whole number of nodes, from 0 to {MAX_NODES:,}", w["slurm_nodes"])
    slurm_options = w["slurm_options"] or os.environ.get("LIBPIPE_SLURM_OPTIONS", "")  # nenucal's fallback
    try:
        shlex.split(slurm_options)
    except ValueError as e:
        raise ImgpipeError(f"cannot read slurm_options {slurm_options!r}: {e}",
                           where=where("slurm_options") + ("" if w["slurm_options"] else " ($LIBPIPE_SLURM_OPTIONS)"),
                           hint="write the options as on the sbatch command line, e.g. "
                           "'--partition=imaging --time=12:00:00'") from None
    cpus, mem_mb = _resources(w["resources"], where)
    halt_after = w["halt_after"]
    if halt_after == "auto":
        halt_after = None
    elif not _is_int(halt_after) or halt_after < 0:
        raise _type_error(where("halt_after"), "'auto' or a whole number of failed jobs (0: never halt)", halt_after,
                          hint="'auto' (the default) halts when the first jobs all fail the same way")
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
    return WorkerConfig(
        nodes=nodes,
        max_concurrent=w["max_concurrent"],
        env_file=w["env_file"],
        dry_run=w["dry_run"],
        debug=w["debug"],
        run_on_file_host=w["run_on_file_host"],
        run_on_file_host_pattern=pattern,
        max_time=w["max_time"],
        slurm_nodes=w["slurm_nodes"],
        slurm_options=slurm_options,
        slurm_cpus=cpus,
        slurm_mem_mb=mem_mb,
        halt_after=halt_after,
        ssh=w["ssh"],
        retries=w["retries"],
        connection_retries=w["connection_retries"],
    )


_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_MEM_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "": 1024}  # a bare number is in GB


def _resources(table: Any, where) -> tuple[int, int]:
    """nenucal's ``[worker.resources]``: ``{category: {cpus, mem}}``; imaging asks for the category
    'heavy' (as nenucal's imaging did). Returns (CPUs, memory in MB) per job, 0 when not set."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise _type_error(where("resources"), "tables of {cpus, mem}, e.g. [worker.resources.heavy] cpus = 8, "
                          "mem = '30G'", table)
    heavy = table.get("heavy", {})
    unknown = sorted(set(heavy) - {"cpus", "mem"})
    if unknown:
        close = suggest(unknown[0], ("cpus", "mem"))
        raise ImgpipeError(f"unknown key '{unknown[0]}' in [worker.resources.heavy]", where=where("resources"),
                           hint=f"did you mean '{close}'?" if close else "its keys are cpus and mem")
    cpus = heavy.get("cpus", 0)
    if not _is_int(cpus) or cpus < 0:
        raise _type_error(where("resources") + ".heavy cpus", "a whole number of CPUs per job", cpus)
    mem = heavy.get("mem", 0)
    mem_mb = 0
    if _is_number(mem) and mem >= 0:
        mem_mb = int(mem * 1024)
    elif isinstance(mem, str) and _MEM_RE.match(mem):
        number, unit = _MEM_RE.match(mem).groups()
        mem_mb = int(float(number) * _MEM_MB[unit.upper()])
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
    d = {**DATA_HANDLER_DEFAULTS, **table}
    for key in ("config_file", "data_level"):
        if not isinstance(d[key], str):
            raise _type_error(where(key), "a string", d[key])
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
        if not 1 <= max_concurrent <= MAX_CONCURRENT:
            raise _type_error(where("max_concurrent"), f"a whole number of jobs per node, from 1 to {MAX_CONCURRENT}",
                              max_concurrent)
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
