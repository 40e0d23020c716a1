"""imgpipe.config: loading, the default_settings chain, and every validation error.

Real TOML files in tmp_path, the real parser, no mocks.  Each error test
asserts the parts a user needs: the file at fault, the key, and the fix
(the closest valid key, or what the value should look like).  The CLI tests
at the end check the contract of every user error: one message on stderr,
exit code 2, no traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from imgpipe.config import (TABLES, WORKER_KEYS, WSCLEAN_DEFAULTS, Key, RunSettings, WorkerConfig, load_config,
                            parse_channels_out)
from imgpipe.errors import ImgpipeError

MINIMAL = "[wsclean]\nname = 'img'\n"


def error_of(path, overrides=None) -> str:
    """The full text (message + hint) of the ImgpipeError that loading ``path`` raises."""
    with pytest.raises(ImgpipeError) as info:
        load_config(path, overrides)
    return str(info.value)


def assert_parts(text: str, *parts: str) -> None:
    missing = [p for p in parts if p not in text]
    assert not missing, f"{missing} not in message:\n{text}"


# ---------------------------------------------------------------- defaults


def test_minimal_config_gets_nenucal_defaults(write_config):
    cfg = load_config(write_config(MINIMAL))
    assert cfg.wsclean == {
        "pol": "I",
        "weight": "briggs 0",
        "data-column": "CORRECTED_DATA",
        "out-dir": "$ms_in$/images",
        "name": "img",
    }
    assert cfg.worker.nodes == ("localhost",)
    assert cfg.worker.max_concurrent == 4
    assert (cfg.worker.env_file, cfg.worker.dry_run, cfg.worker.debug) == ("", False, False)
    assert cfg.worker.run_on_file_host is False and cfg.worker.run_on_file_host_pattern is None
    assert cfg.data_handler is None


@pytest.mark.parametrize("key", sorted(WSCLEAN_DEFAULTS))
@pytest.mark.parametrize("off", ["false", "''"])
def test_a_default_is_dropped_by_false_or_empty(write_config, key, off):
    cfg = load_config(write_config(f"[wsclean]\nname = 'img'\n'{key}' = {off}\n"))
    assert key not in cfg.wsclean
    assert set(cfg.wsclean) == set(WSCLEAN_DEFAULTS) - {key} | {"name"}


def test_user_values_replace_defaults(write_config):
    cfg = load_config(write_config(
        "[wsclean]\nname = 'img'\npol = 'xx,yy'\nweight = 'briggs -0.5'\ndata-column = 'DATA'\n"
        "out-dir = '/data/img/$ms_basename$'\n"
    ))
    assert cfg.wsclean["pol"] == "xx,yy"
    assert cfg.wsclean["weight"] == "briggs -0.5"
    assert cfg.wsclean["data-column"] == "DATA"
    assert cfg.wsclean["out-dir"] == "/data/img/$ms_basename$"


def test_false_flag_is_dropped_true_flag_kept(write_config):
    cfg = load_config(write_config(MINIMAL + "multiscale = false\njoin-channels = true\n"))
    assert "multiscale" not in cfg.wsclean
    assert cfg.wsclean["join-channels"] is True


# ---------------------------------------------------------------- the declared keys: README, settings


def readme_rows(table: str) -> dict[str, tuple[str, str]]:
    """The README's `[table]` table: key -> (default, meaning), as written."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split(f"### `[{table}]`\n", 1)[1].split("\n#", 1)[0]
    return {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `([^`]+)` \| (.*?) \| (.*) \|$", section, re.M)}


def readme_default(key: Key) -> str:
    """A declared default as the README shows it: as written in TOML, or 'none' for an empty table."""
    if key.default == {}:
        return "none"
    return f"`{str(key.default).lower() if isinstance(key.default, bool) else repr(key.default)}`"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_the_readme_tables_are_the_declared_keys(table):
    documented, declared = readme_rows(table), TABLES[table]
    for name in declared:
        assert name in documented, f"README: [{table}] {name} is declared but not documented"
    for name in documented:
        assert name in declared, f"README: [{table}] {name} is documented but not declared in imgpipe/config.py"
    for name, key in declared.items():
        fix = f"README: [{table}] {name}: %s is not as declared; write\n| `{name}` | {readme_default(key)} | {key.doc} |"
        assert documented[name][0] == readme_default(key), fix % "the default"
        assert documented[name][1] == key.doc, fix % "the meaning"
    assert list(documented) == list(declared), f"README: the [{table}] keys are not in their declared order"


def test_the_worker_settings_are_the_declared_keys():
    """Every field of WorkerConfig is a declared [worker] key, but the two read from [worker.resources.heavy]."""
    assert {f.name for f in fields(WorkerConfig)} == (set(WORKER_KEYS) - {"resources", "retry_memory_max"}
                                                     | {"slurm_cpus", "slurm_mem_mb", "retry_memory_max_mb"})


@pytest.mark.parametrize("worker, line", [
    ("", '{"nodes": ["localhost"], "max_concurrent": 4, "env_file": "", "max_time": 0, "slurm_nodes": 0, '
         '"slurm_options": "", "ssh": "ssh", "retries": 0, "connection_retries": 3}'),
    ("nodes = 'n[1-2]'\nmax_concurrent = 8\nenv_file = '~/env.sh'\nmax_time = 7200\nslurm_nodes = 2\n"
     "slurm_options = '--partition=x'\nssh = 'ssh -F c'\nretries = 2\nconnection_retries = 5\nhalt_after = 0\n"
     "resources = {heavy = {cpus = 8, mem = '30G'}}\ndebug = true\n",
     '{"slurm_cpus": 8, "slurm_mem_mb": 30720, "halt_after": 0, "nodes": ["n1", "n2"], "max_concurrent": 8, '
     '"env_file": "~/env.sh", "max_time": 7200, "slurm_nodes": 2, "slurm_options": "--partition=x", '
     '"ssh": "ssh -F c", "retries": 2, "connection_retries": 5}'),
    ("nodes = 'slurm'\nmax_time = 1.5\nhalt_after = 3\nresources = {heavy = {mem = '512M'}}\n",
     '{"slurm_mem_mb": 512, "halt_after": 3, "nodes": ["slurm"], "max_concurrent": 4, "env_file": "", '
     '"max_time": 1.5, "slurm_nodes": 0, "slurm_options": "", "ssh": "ssh", "retries": 0, "connection_retries": 3}'),
])
def test_the_worker_line_of_a_plan_stays_as_it_was(write_config, monkeypatch, worker, line):
    """The jobs file's '# worker:' line, over which every plan's digest is taken, as imgpipe wrote it before the
    keys were declared once (in as_dict's order, which `imgpipe plan --json` prints); and read back the same."""
    monkeypatch.delenv("LIBPIPE_SLURM_OPTIONS", raising=False)
    settings = load_config(write_config(f"[worker]\n{worker}" + MINIMAL)).worker.run_settings()
    assert json.dumps(settings.as_dict(), ensure_ascii=False) == line
    assert RunSettings.from_dict(json.loads(line)) == settings


@pytest.mark.parametrize("change, message", [
    ({"max_concurrent": 0}, "worker 'max_concurrent' is less than 1"),
    ({"max_concurrent": "4"}, "worker 'max_concurrent' has the wrong type: '4'"),
    ({"retries": 101}, "worker 'retries' is more than 100"),
    ({"halt_after": -1}, "worker 'halt_after' has the wrong type: -1"),
    ({"ssh": " "}, "worker 'ssh' has the wrong type: ' '"),
    ({"slurm_cpus": -1}, "worker 'slurm_cpus' is less than 0"),
    ({"nodes": []}, "worker 'nodes' is not a list of host names"),
    ({"debug": True}, "unknown worker setting 'debug'"),
])
def test_a_worker_line_takes_only_what_a_config_could_give(change, message):
    line = {"nodes": ["a"], "max_concurrent": 4, "env_file": "", "max_time": 0, "slurm_nodes": 0,
            "slurm_options": "", "ssh": "ssh", "retries": 0, "connection_retries": 3}
    with pytest.raises(ValueError) as info:
        RunSettings.from_dict({**line, **change})
    assert str(info.value) == message


# ---------------------------------------------------------------- default_settings chain


def test_default_settings_chain_is_recursive_and_relative_to_the_naming_file(write_config, tmp_path, monkeypatch):
    # img.toml -> site/defaults.toml -> site/base/common.toml (each relative to its own file)
    write_config(
        "[worker]\nnodes = 'node[1-2]'\nmax_concurrent = 2\nenv_file = '/opt/env.sh'\n"
        "[wsclean]\nniter = 100\nscale = '1amin'\nsize = '512 512'\n",
        name="base/common.toml", where=tmp_path / "site",
    )
    write_config(
        "default_settings = 'base/common.toml'\n[worker]\nmax_concurrent = 3\n"
        "[wsclean]\nniter = 500\nauto-threshold = 3\n",
        name="defaults.toml", where=tmp_path / "site",
    )
    user = write_config("default_settings = 'site/defaults.toml'\n[wsclean]\nname = 'deep'\nniter = 1000\n")
    # a decoy with the same relative name in the cwd must not be used
    elsewhere = tmp_path / "cwd"
    write_config("[worker]\nnodes = 'decoy'\n", name="site/defaults.toml", where=elsewhere)
    monkeypatch.chdir(elsewhere)

    cfg = load_config(user)
    assert cfg.worker.nodes == ("node1", "node2")  # from the deepest file
    assert cfg.worker.max_concurrent == 3  # middle file overrides the deepest
    assert cfg.worker.env_file == "/opt/env.sh"
    assert cfg.wsclean["niter"] == 1000  # user file overrides both
    assert cfg.wsclean["auto-threshold"] == 3
    assert cfg.wsclean["scale"] == "1amin" and cfg.wsclean["size"] == "512 512"
    assert cfg.wsclean["name"] == "deep"
    assert cfg.wsclean["pol"] == "I"  # built-in defaults still apply under the chain
    # each value remembers the file it came from
    assert cfg.where("worker", "nodes").startswith(str(tmp_path / "site" / "base" / "common.toml"))
    assert cfg.where("worker", "max_concurrent").startswith(str(tmp_path / "site" / "defaults.toml"))
    assert cfg.where("wsclean", "niter").startswith(str(user))


def test_default_settings_can_drop_a_default_and_user_can_restore_it(write_config):
    write_config("[wsclean]\npol = false\nweight = ''\n", name="defaults.toml")
    cfg = load_config(write_config("default_settings = 'defaults.toml'\n[wsclean]\nname = 'img'\npol = 'I,V'\n"))
    assert cfg.wsclean["pol"] == "I,V"
    assert "weight" not in cfg.wsclean


def test_default_settings_missing_file(write_config, tmp_path):
    cfg = write_config("default_settings = 'nowhere/defaults.toml'\n" + MINIMAL)
    text = error_of(cfg)
    assert_parts(text, str(cfg), "default_settings", "'nowhere/defaults.toml'", "not found",
                 str(tmp_path / "nowhere" / "defaults.toml"), "relative to the file that names it")


def test_default_settings_missing_file_deeper_in_the_chain_names_the_middle_file(write_config):
    write_config("default_settings = 'gone.toml'\n", name="middle.toml")
    text = error_of(write_config("default_settings = 'middle.toml'\n" + MINIMAL))
    assert_parts(text, "middle.toml: default_settings file 'gone.toml' not found")


def test_default_settings_loop_is_detected(write_config):
    a = write_config("default_settings = 'b.toml'\n" + MINIMAL, name="a.toml").resolve()
    b = write_config("default_settings = 'sub/c.toml'\n", name="b.toml").resolve()
    c = write_config("default_settings = '../a.toml'\n", name="sub/c.toml").resolve()
    text = error_of(a)
    # the whole loop, closing on itself, and nothing more
    assert_parts(text, f"default_settings form a loop: {a} -> {b} -> {c} -> {a}\n", "hint: ")


def test_default_settings_naming_itself_is_a_loop(write_config):
    cfg = write_config("default_settings = 'img.toml'\n" + MINIMAL).resolve()
    assert_parts(error_of(cfg), f"{cfg}: default_settings form a loop: {cfg} -> {cfg}\n")


def test_default_settings_must_be_a_string(write_config):
    cfg = write_config("default_settings = ['a.toml']\n" + MINIMAL)
    assert_parts(error_of(cfg), str(cfg), "default_settings must be a file name", "['a.toml']")


def test_unknown_key_in_the_default_settings_file_names_that_file(write_config):
    write_config("[worker]\nnode = 'node1'\n", name="site-defaults.toml")
    text = error_of(write_config("default_settings = 'site-defaults.toml'\n" + MINIMAL))
    assert_parts(text, "site-defaults.toml: [worker]", "'node'", "did you mean 'nodes'?")
    assert "img.toml" not in text


def test_bad_value_in_the_default_settings_file_names_that_file(write_config):
    write_config("[worker]\nmax_concurrent = 0\n[wsclean]\nsize = '1024'\n", name="site-defaults.toml")
    text = error_of(write_config("default_settings = 'site-defaults.toml'\n" + MINIMAL))
    assert_parts(text, "site-defaults.toml: [worker] max_concurrent", "from 1 to 1000", "got 0")
    assert "img.toml" not in text


def test_bad_wsclean_value_in_the_default_settings_file_names_that_file(write_config):
    write_config("[wsclean]\nsize = '1024'\n", name="site-defaults.toml")
    text = error_of(write_config("default_settings = 'site-defaults.toml'\n" + MINIMAL))
    assert_parts(text, "site-defaults.toml: [wsclean] size", "-size takes 2 values, got 1")


def test_user_file_value_overriding_a_bad_default_is_accepted(write_config):
    write_config("[worker]\nmax_concurrent = 0\n", name="site-defaults.toml")
    cfg = load_config(write_config(
        "default_settings = 'site-defaults.toml'\n[worker]\nmax_concurrent = 2\n" + MINIMAL
    ))
    assert cfg.worker.max_concurrent == 2


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "text, section, key, close",
    [
        ("[worker]\nnodez = 'a'\n", "[worker]", "nodez", "nodes"),
        ("[worker]\nmax_concurent = 2\n", "[worker]", "max_concurent", "max_concurrent"),
        ("[worker]\nrun_on_filehost = true\n", "[worker]", "run_on_filehost", "run_on_file_host"),
        ("[data_handler]\nconfig_fil = 'dh.toml'\n", "[data_handler]", "config_fil", "config_file"),
        ("[data_handler]\nconfig_file = 'dh.toml'\ndata_levle = 'L2'\n", "[data_handler]", "data_levle", "data_level"),
        ("[wsclean]\nnitre = 10\n", "[wsclean]", "nitre", "niter"),
        ("[wsclean]\nNITER = 10\n", "[wsclean]", "NITER", "niter"),
        ("[wsclean]\ndata_column = 'DATA'\n", "[wsclean]", "data_column", "data-column"),
        ("[wsclean]\nchannels_out = 4\n", "[wsclean]", "channels_out", "channels-out"),
        ("[wsclean]\nout_dir = 'x'\n", "[wsclean]", "out_dir", "out-dir"),
        ("[wsclean]\nauto-treshold = 3\n", "[wsclean]", "auto-treshold", "auto-threshold"),
        ("[wokrer]\nnodes = 'a'\n", "", "wokrer", "worker"),
        ("[wsclaen]\nniter = 1\n", "", "wsclaen", "wsclean"),
    ],
)
def test_unknown_key_names_file_key_and_closest_valid_key(write_config, text, section, key, close):
    cfg = write_config(_with_name(text))
    msg = error_of(cfg)
    assert_parts(msg, f"{cfg}: {section}".rstrip(), f"'{key}'", f"did you mean '{close}'?")


def test_unknown_worker_key_without_a_close_match_lists_the_valid_keys(write_config):
    msg = error_of(write_config("[worker]\nxyzzy = 1\n" + MINIMAL))
    assert_parts(msg, "[worker]", "unknown key 'xyzzy'", "valid [worker] keys:", "max_concurrent", "nodes")


def test_unknown_wsclean_key_without_a_close_match_points_to_wsclean_help(write_config):
    msg = error_of(write_config(MINIMAL + "xyzzyq = 1\n"))
    assert_parts(msg, "[wsclean]", "'xyzzyq' is not a WSClean option", "wsclean --help", "3.1")


def test_wsclean_key_with_a_leading_dash_is_refused(write_config):
    # lookup() accepts '-niter' but it would render as '--niter' and skip the special keys' checks
    msg = error_of(write_config(MINIMAL + "'-channels-out' = 'all'\n"))
    assert_parts(msg, "img.toml: [wsclean]", "'-channels-out'", "without the leading '-'", "channels-out = ...")


# ---------------------------------------------------------------- wrong values


BAD_VALUES = [
    # (id, config text, parts of the message)
    ("max_concurrent=0", "[worker]\nmax_concurrent = 0\n", ["[worker] max_concurrent", "from 1 to 1000", "got 0"]),
    ("max_concurrent-str", "[worker]\nmax_concurrent = '4'\n", ["[worker] max_concurrent", "whole number", "got '4'"]),
    ("max_concurrent-bool", "[worker]\nmax_concurrent = true\n", ["[worker] max_concurrent", "got true"]),
    ("max_time<0", "[worker]\nmax_time = -1\n", ["[worker] max_time", "seconds", "got -1"]),
    ("slurm_nodes<0", "[worker]\nslurm_nodes = -2\n", ["[worker] slurm_nodes", "from 0 to 10,000", "got -2"]),
    ("dry_run-str", "[worker]\ndry_run = 'yes'\n", ["[worker] dry_run", "true or false", "got 'yes'"]),
    ("env_file-bool", "[worker]\nenv_file = true\n", ["[worker] env_file", "a string", "got true"]),
    ("nodes-int", "[worker]\nnodes = 3\n", ["[worker] nodes", "node[001-004]", "got 3"]),
    ("nodes-malformed", "[worker]\nnodes = 'node[1-3'\n", ["[worker] nodes", "unbalanced '['", "'node[1-3'",
                                                         "ranges as 'node[1-3]'"]),
    ("nodes-backwards", "[worker]\nnodes = 'node[3-1]'\n", ["[worker] nodes", "[3-1]", "goes backwards"]),
    ("nodes-empty", "[worker]\nnodes = ''\n", ["[worker] nodes", "no host given"]),
    ("regex-no-compile", "[worker]\nrun_on_file_host = true\nrun_on_file_host_pattern = '/net/(node'\n",
     ["[worker] run_on_file_host_pattern", "does not compile", "missing )", "e.g. '/net/(node\\d{3})/'"]),
    ("regex-no-group", "[worker]\nrun_on_file_host = true\nrun_on_file_host_pattern = '/net/node\\d+'\n",
     ["[worker] run_on_file_host_pattern", "pattern '/net/node\\d+' has no group", "in parentheses"]),
    ("pin-without-pattern", "[worker]\nrun_on_file_host = true\n",
     ["[worker] run_on_file_host", "needs run_on_file_host_pattern", "first group is the host"]),
    ("worker-not-table", "worker = 'node1'\n", ["'worker' must be a table", "[worker]"]),
    ("channels-out-every0", "[wsclean]\nchannels-out = 'every 0'\n",
     ["[wsclean] channels-out", "'every 0'", "at least 1", "N >= 1", "'all'"]),
    ("channels-out-0", "[wsclean]\nchannels-out = 0\n", ["[wsclean] channels-out", "at least 1", "got 0"]),
    ("channels-out-word", "[wsclean]\nchannels-out = 'each 4'\n",
     ["[wsclean] channels-out", "'all', 'every N' or a whole number", "got 'each 4'"]),
    ("channels-out-float", "[wsclean]\nchannels-out = 2.5\n", ["[wsclean] channels-out", "got 2.5"]),
    ("flag-str", "[wsclean]\nmultiscale = 'yes'\n",
     ["[wsclean] multiscale", "-multiscale is a flag", "got 'yes'", "multiscale = true"]),
    ("flag-int", "[wsclean]\njoin-channels = 1\n", ["[wsclean] join-channels", "is a flag", "got 1"]),
    ("size-one-word", "[wsclean]\nsize = '1024'\n",
     ["[wsclean] size", "-size takes 2 values, got 1", "separated by spaces", "<width> <height>"]),
    ("size-int", "[wsclean]\nsize = 1024\n", ["[wsclean] size", "-size takes 2 values, got 1"]),
    ("size-three", "[wsclean]\nsize = [1024, 1024, 2]\n", ["[wsclean] size", "takes 2 values, got 3"]),
    ("size-true", "[wsclean]\nsize = true\n", ["[wsclean] size", "-size needs 2 values, got true"]),
    ("weight-three", "[wsclean]\nweight = 'briggs 0 1'\n",
     ["[wsclean] weight", "1 to 2 values, got 3", "briggs 0.5"]),
    ("niter-word", "[wsclean]\nniter = 'abc'\n", ["[wsclean] niter", "-niter takes a whole number", "'abc'"]),
    ("niter-unit", "[wsclean]\nsize = '1024 1024px'\n", ["[wsclean] size", "-size takes a whole number, 1 or more",
                                                            "'1024 1024px'"]),
    ("list-for-single", "[wsclean]\nniter = [100, 200]\n",
     ["[wsclean] niter", "takes a single value", "[100, 200]", "give one value"]),
    ("list-for-single-path", "[wsclean]\nfits-mask = ['a.fits', 'b.fits']\n",
     ["[wsclean] fits-mask", "takes a single value"]),
    ("nested-list", "[wsclean]\nsize = [[1024, 1024]]\n", ["[wsclean] size", "plain numbers or strings"]),
    ("table-value", "[wsclean.size]\nx = 1\n", ["[wsclean] size", "not a table"]),
    ("newline", "[wsclean]\ndata-column = \"DATA\\n-niter 5\"\n", ["[wsclean] data-column", "control character"]),
    ("rejected-use-idg", "[wsclean]\nuse-idg = true\n",
     ["[wsclean] use-idg", "-use-idg cannot be used", "IDG", "remove use-idg"]),
    ("rejected-no-normalize", "[wsclean]\nno-normalize-for-weighting = true\n",
     ["[wsclean] no-normalize-for-weighting", "cannot be used", "Unknown parameter"]),
    ("name-int", "[wsclean]\nname = 3\n", ["[wsclean] name", "a string", "got 3"]),
    ("dh-config-file-int", "[data_handler]\nconfig_file = 1\n", ["[data_handler] config_file", "a string"]),
    ("dh-level-empty", "[data_handler]\nconfig_file = 'dh.toml'\ndata_level = ''\n",
     ["[data_handler] data_level", "data level name such as 'L2'"]),
    ("dh-without-file", "[data_handler]\ndata_level = 'L2'\n",
     ["[data_handler] config_file", "missing", "resolve obs_ids", "config_file = 'data_handler.toml'"]),
]


def _with_name(text: str) -> str:
    """Add the required [wsclean] name to a config snippet."""
    if "\nname = " in text:
        return text
    if "[wsclean]\n" in text:
        return text.replace("[wsclean]\n", "[wsclean]\nname = 'img'\n")
    if "[wsclean." in text:
        return text
    return text + MINIMAL


@pytest.mark.parametrize("text, parts", [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_wrong_value_is_an_error_naming_file_and_key(write_config, text, parts):
    cfg = write_config(_with_name(text))
    msg = error_of(cfg)
    assert msg.startswith(str(cfg)), msg
    assert_parts(msg, *parts)


def test_missing_name_is_an_error(write_config):
    cfg = write_config("[wsclean]\nniter = 10\n")
    assert_parts(error_of(cfg), f"{cfg}: [wsclean] name", "missing", "-name", "name = 'img'")


@pytest.mark.parametrize("off", ["false", "''"])
def test_name_cannot_be_dropped(write_config, off):
    assert_parts(error_of(write_config(f"[wsclean]\nname = {off}\n")), "[wsclean] name", "missing")


def test_invalid_toml_names_file_and_line(write_config):
    cfg = write_config("[wsclean]\nname = 'img'\nniter = \n")
    assert_parts(error_of(cfg), str(cfg), "invalid TOML", "line 3")


def test_missing_config_file(tmp_path):
    assert_parts(error_of(tmp_path / "nope.toml"), str(tmp_path / "nope.toml"), "config file not found")


def test_config_path_is_a_directory(tmp_path):
    assert_parts(error_of(tmp_path), str(tmp_path), "is a directory")


def test_config_not_utf8(tmp_path):
    cfg = tmp_path / "img.toml"
    cfg.write_bytes(b"[wsclean]\nname = '\xe9'\n")
    assert_parts(error_of(cfg), str(cfg), "UTF-8")


# ---------------------------------------------------------------- accepted values


@pytest.mark.parametrize(
    "value, parsed",
    [("'all'", "all"), ("'ALL'", "all"), ("'every 4'", "every 4"), ("'every4'", "every 4"),
     ("'every  12'", "every 12"), ("16", 16), ("'16'", 16), ("1", 1)],
)
def test_channels_out_forms(write_config, value, parsed):
    cfg = load_config(write_config(MINIMAL + f"channels-out = {value}\n"))
    assert cfg.wsclean["channels-out"] == parsed


def test_parse_channels_out_rejects_negative_text():
    with pytest.raises(ImgpipeError, match="'all', 'every N' or a whole number"):
        parse_channels_out("-3", "x.toml: [wsclean] channels-out")


def test_run_on_file_host_pattern_is_compiled(write_config):
    cfg = load_config(write_config(
        "[worker]\nnodes = 'node[001-002]'\nrun_on_file_host = true\n"
        "run_on_file_host_pattern = '/net/(node\\d{3})/'\n" + MINIMAL
    ))
    assert cfg.worker.run_on_file_host is True
    assert cfg.worker.run_on_file_host_pattern.search("/net/node002/data/SW01.MS").group(1) == "node002"


def test_nodes_as_a_toml_list(write_config):
    cfg = load_config(write_config("[worker]\nnodes = ['node[1-2]', 'nancep5']\n" + MINIMAL))
    assert cfg.worker.nodes == ("node1", "node2", "nancep5")


def test_valid_wsclean_values_are_kept_as_written(write_config):
    cfg = load_config(write_config(
        MINIMAL + "size = [1024, 1024]\nscale = '1amin'\nniter = 1000\nauto-threshold = 3.0\n"
        "pol = ['xx', 'yy']\nrestore = ['res.fits', 'model.fits', 'out.fits']\ntemp-dir = '/scratch/my tmp'\n"
    ))
    ws = cfg.wsclean
    assert ws["size"] == [1024, 1024] and ws["pol"] == ["xx", "yy"] and ws["niter"] == 1000
    assert ws["temp-dir"] == "/scratch/my tmp"


# ---------------------------------------------------------------- overrides (command line)


def test_overrides_win_over_every_file(write_config):
    write_config("[worker]\nnodes = 'a'\nmax_concurrent = 2\n", name="defaults.toml")
    cfg = load_config(
        write_config("default_settings = 'defaults.toml'\n[worker]\nnodes = 'b'\n" + MINIMAL),
        {"worker": {"nodes": "node[1-2]", "max_concurrent": 8}},
    )
    assert cfg.worker.nodes == ("node1", "node2")
    assert cfg.worker.max_concurrent == 8


@pytest.mark.parametrize(
    "override, parts",
    [
        ({"max_concurrent": 0}, ["command line: --max-concurrent", "[worker] max_concurrent", "from 1 to 1000", "got 0"]),
        ({"nodes": "node[5-1]"}, ["command line: --nodes", "goes backwards"]),
    ],
)
def test_bad_override_names_the_command_line(write_config, override, parts):
    cfg = write_config("[worker]\nmax_concurrent = 2\nnodes = 'a'\n" + MINIMAL)
    msg = error_of(cfg, {"worker": override})
    assert_parts(msg, *parts)
    assert str(cfg) not in msg


def test_cli_overrides_win_over_the_file(write_config, run_cli, ms_factory):
    ms = ms_factory("a.MS", corrected_data=True)
    cfg = write_config("[worker]\nnodes = 'nodeA'\nmax_concurrent = 2\n" + MINIMAL)
    r = run_cli("plan", cfg, ms, "--nodes", " node[1-2], node1", "--max-concurrent", "7", "--json")
    assert r.code == 0, r
    worker = json.loads(r.out)["worker"]
    assert worker["nodes"] == ["node1", "node2"]
    assert worker["max_concurrent"] == 7


@pytest.mark.parametrize(
    "args, parts",
    [
        (["--max-concurrent", "0"], ["command line: --max-concurrent", "from 1 to 1000", "got 0"]),
        (["--nodes", "node[1-"], ["command line: --nodes", "unbalanced '['"]),
        (["--nodes", ""], ["command line: --nodes", "no host given"]),
    ],
)
def test_cli_bad_override_is_a_user_error(write_config, run_cli, ms_factory, tmp_path, args, parts):
    ms = ms_factory("a.MS", corrected_data=True)
    cfg = write_config(MINIMAL)
    r = run_cli("plan", cfg, ms, *args)
    assert_user_error(r, tmp_path, parts)
    assert str(cfg) not in r.err


# ---------------------------------------------------------------- [data_handler] config_file


def test_data_handler_file_beside_the_config(write_config, tmp_path, monkeypatch, capsys):
    conf_dir = tmp_path / "conf"
    dh = write_config("# dummy\n", name="dh.toml", where=conf_dir)
    write_config("# decoy\n", name="dh.toml", where=tmp_path)  # in the cwd: must not win
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write_config("[data_handler]\nconfig_file = 'dh.toml'\ndata_level = 'L1'\n" + MINIMAL,
                                   where=conf_dir))
    assert cfg.data_handler.config_file == dh.resolve()
    assert cfg.data_handler.data_level == "L1"
    assert capsys.readouterr().err == ""


def test_data_handler_file_only_in_cwd_is_used_with_a_warning(write_config, tmp_path, monkeypatch, capsys):
    conf_dir, cwd = tmp_path / "conf", tmp_path / "work"
    in_cwd = write_config("# dummy\n", name="dh.toml", where=cwd)
    monkeypatch.chdir(cwd)
    cfg = load_config(write_config("[data_handler]\nconfig_file = 'dh.toml'\n" + MINIMAL, where=conf_dir))
    assert cfg.data_handler.config_file == in_cwd.resolve()
    assert cfg.data_handler.data_level == "L2"  # default
    err = capsys.readouterr().err
    assert_parts(err, "imgpipe: warning:", "[data_handler] config_file", "'dh.toml'",
                 str(conf_dir / "dh.toml"), str(in_cwd.resolve()), "current directory")
    assert err.count("\n") == 1


def test_data_handler_file_is_relative_to_the_default_settings_file_that_names_it(write_config, tmp_path,
                                                                                  monkeypatch, capsys):
    site = tmp_path / "site"
    dh = write_config("# dummy\n", name="dh.toml", where=site)
    write_config("[data_handler]\nconfig_file = 'dh.toml'\n", name="defaults.toml", where=site)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write_config("default_settings = '../site/defaults.toml'\n" + MINIMAL, where=tmp_path / "u"))
    assert cfg.data_handler.config_file == dh.resolve()
    assert capsys.readouterr().err == ""


def test_data_handler_file_absent_everywhere_stays_beside_the_config(write_config, tmp_path, monkeypatch, capsys):
    # the data handler module reports the missing file; config only resolves the path, silently
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write_config("[data_handler]\nconfig_file = 'dh.toml'\n" + MINIMAL, where=tmp_path / "c"))
    assert cfg.data_handler.config_file == (tmp_path / "c" / "dh.toml").resolve()
    assert capsys.readouterr().err == ""


def test_data_handler_dropped_by_empty_config_file(write_config):
    write_config("[data_handler]\nconfig_file = 'dh.toml'\n", name="defaults.toml")
    cfg = load_config(write_config("default_settings = 'defaults.toml'\n[data_handler]\nconfig_file = ''\n"
                                   + MINIMAL))
    assert cfg.data_handler is None


# ---------------------------------------------------------------- the CLI contract for user errors


def assert_user_error(r, cwd: Path, parts) -> None:
    assert r.code == 2, r
    assert r.out == "", r
    assert r.err.startswith("imgpipe: error: "), r
    assert r.err.count("imgpipe: error") == 1, r
    assert "Traceback" not in r.err, r
    assert_parts(r.err, *parts)
    assert not (cwd / "imgpipe-runs").exists()


CLI_CASES = [c for c in BAD_VALUES if c[0] in {
    "max_concurrent=0", "nodes-malformed", "regex-no-compile", "regex-no-group", "pin-without-pattern",
    "channels-out-every0", "flag-str", "size-one-word", "niter-word", "list-for-single", "rejected-use-idg",
}] + [
    ("unknown-worker-key", "[worker]\nmax_concurent = 2\n", ["[worker]", "'max_concurent'",
                                                            "did you mean 'max_concurrent'?"]),
    ("unknown-dh-key", "[data_handler]\nconfig_fil = 'dh.toml'\n", ["[data_handler]", "'config_fil'",
                                                                   "did you mean 'config_file'?"]),
    ("unknown-wsclean-key", "[wsclean]\nauto-treshold = 3\n", ["[wsclean]", "'auto-treshold'",
                                                              "did you mean 'auto-threshold'?"]),
    ("bad-toml", "[wsclean\n", ["invalid TOML"]),
    ("loop", "default_settings = 'img.toml'\n", ["default_settings form a loop"]),
]


@pytest.mark.parametrize("text, parts", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_user_error_contract(write_config, run_cli, ms_factory, tmp_path, text, parts):
    ms = ms_factory("a.MS", corrected_data=True)
    cfg = write_config(_with_name(text))
    before = sorted(os.listdir(tmp_path))
    r = run_cli("plan", cfg, ms)
    assert_user_error(r, tmp_path, [str(cfg), *parts])
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_error_from_default_settings_file(write_config, run_cli, ms_factory, tmp_path):
    ms = ms_factory("a.MS", corrected_data=True)
    write_config("[wsclean]\nniter = 'lots'\n", name="site-defaults.toml")
    cfg = write_config("default_settings = 'site-defaults.toml'\n" + MINIMAL)
    r = run_cli("plan", cfg, ms)
    assert_user_error(r, tmp_path, ["site-defaults.toml: [wsclean] niter", "'lots'"])
    assert "img.toml" not in r.err


def test_cli_valid_config_does_write_the_run_directory(write_config, run_cli, ms_factory, tmp_path):
    # the counterpart of the checks above: a good config writes imgpipe-runs/ in the cwd
    ms = ms_factory("a.MS", corrected_data=True)
    r = run_cli("plan", write_config(MINIMAL), ms)
    assert r.code == 0, r
    assert (tmp_path / "imgpipe-runs").is_dir()


@pytest.mark.parametrize("line, parts", [
    ("retry_factor = 0.5", ("[worker] retry_factor", "from 1 (the same) to 16", "got 0.5")),
    ("retry_factor = 'x'", ("[worker] retry_factor", "got 'x'")),
    ("retry_memory_max = '64X'", ("[worker] retry_memory_max", "e.g. '64G'", "got '64X'")),
    ("retry_memory_max = 64", ("[worker] retry_memory_max", "got 64")),
])
def test_a_bad_retry_with_more_value_names_the_key_and_value(write_config, line, parts):
    assert_parts(error_of(write_config(f"[worker]\n{line}\n" + MINIMAL)), "img.toml", *parts)


def test_retry_with_more_is_read_and_kept_in_the_run_settings(write_config):
    worker = load_config(write_config("[worker]\nretry_factor = 1.5\nretry_memory_max = '64G'\n" + MINIMAL)).worker
    assert (worker.retry_factor, worker.retry_memory_max_mb) == (1.5, 65536)
    settings = RunSettings.from_dict(json.loads(json.dumps(worker.run_settings().as_dict())))
    assert (settings.retry_factor, settings.retry_memory_max_mb) == (1.5, 65536)
