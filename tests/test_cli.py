"""The command line, in-process and as a separate process: options, help, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imgpipe import __version__

CONFIG = "[wsclean]\nname = 'img'\ndata-column = false\n"


def test_version(run_cli, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("--version")
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"imgpipe {__version__}"


def test_version_subprocess(run_imgpipe):
    r = run_imgpipe("--version")
    assert r.code == 0, r
    assert r.out.strip() == f"imgpipe {__version__}"


@pytest.mark.parametrize("args, words", [
    (["--help"], ["plan", "Exit codes"]),
    (["plan", "--help"], ["--combine", "--combine_obs_ids", "--jobs-file", "--json", "--check"]),
])
def test_help_subprocess(run_imgpipe, args, words):
    r = run_imgpipe(*args)
    assert r.code == 0, r
    for w in words:
        assert w in r.out
    assert r.err == ""


def test_no_command_prints_help_and_exits_2(run_cli):
    r = run_cli()
    assert r.code == 2
    assert "plan" in r.err


def test_plan_subprocess_ok(run_imgpipe, write_config, ms_factory, tmp_path):
    cfg = write_config(CONFIG)
    ms = ms_factory("a.MS")
    r = run_imgpipe("plan", cfg, ms, "--json")
    assert r.code == 0, r
    (job,) = json.loads(r.out)["jobs"]
    assert job["ms"] == [str(ms)]


USER_ERRORS = ["missing-config", "bad-toml", "unknown-key", "missing-ms", "no-input", "bad-token", "unknown-option"]


def _user_error_args(case, write_config, ms, tmp_path):
    cfg = write_config(CONFIG)
    return {
        "missing-config": ["plan", tmp_path / "nope.toml", ms],
        "bad-toml": ["plan", write_config("[wsclean\nname=", name="bad.toml"), ms],
        "unknown-key": ["plan", write_config(CONFIG + "nitre = 10\n", name="k.toml"), ms],
        "missing-ms": ["plan", cfg, tmp_path / "gone.MS"],
        "no-input": ["plan", cfg],
        "bad-token": ["plan", write_config(CONFIG + "out-dir = '$nope$'\n", name="t.toml"), ms],
        "unknown-option": ["plan", cfg, ms, "--no-such-option"],
    }[case]


@pytest.mark.parametrize("case", ["missing-config", "missing-ms", "bad-token", "unknown-option"])
def test_user_errors_exit_2_without_a_traceback_subprocess(run_imgpipe, write_config, ms_factory, tmp_path, case):
    r = run_imgpipe(*_user_error_args(case, write_config, ms_factory("a.MS"), tmp_path))
    _assert_user_error(r, tmp_path)


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_errors_exit_2_without_a_traceback(run_cli, write_config, ms_factory, tmp_path, case, capsys):
    try:
        r = run_cli(*_user_error_args(case, write_config, ms_factory("a.MS"), tmp_path))
    except SystemExit as e:  # argparse's own usage errors end the process
        captured = capsys.readouterr()
        from conftest import CliResult

        r = CliResult(e.code, captured.out, captured.err)
    _assert_user_error(r, tmp_path)


def _assert_user_error(r, tmp_path):
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert "error" in r.err
    assert r.out == ""
    assert not (tmp_path / "imgpipe-runs").exists()


def test_unknown_wsclean_key_suggests_the_option(run_cli, write_config, ms_factory):
    r = run_cli("plan", write_config(CONFIG + "nitre = 10\n"), ms_factory("a.MS"))
    assert r.code == 2
    assert "nitre" in r.err and "niter" in r.err


@pytest.mark.parametrize("flags", [["-c"], ["--combine"], ["-c", "-o"], ["--combine", "--combine_obs_ids"],
                                   ["--combine", "--combine-obs-ids"]])
def test_combine_flags_are_accepted(run_cli, write_config, ms_factory, flags):
    a, b = ms_factory("a.MS"), ms_factory("b.MS")
    r = run_cli("plan", write_config(CONFIG), a, b, *flags, "--json")
    assert r.code == 0, r
    (job,) = json.loads(r.out)["jobs"]
    assert job["ms"] == [str(a), str(b)]


@pytest.mark.parametrize("flag", ["-o", "--combine_obs_ids", "--combine-obs-ids"])
def test_combine_obs_ids_alone_is_accepted(run_cli, write_config, ms_factory, flag):
    a, b = ms_factory("a.MS"), ms_factory("b.MS")
    r = run_cli("plan", write_config(CONFIG), a, b, flag, "--json")
    assert r.code == 0, r
    assert len(json.loads(r.out)["jobs"]) == 2
    assert "warning: --combine_obs_ids (-o) only takes effect with --combine (-c)" in r.err, r


def test_options_may_come_before_the_config(run_cli, write_config, ms_factory):
    a, b = ms_factory("a.MS"), ms_factory("b.MS")
    r = run_cli("plan", "-c", "--json", write_config(CONFIG), a, b)
    assert r.code == 0, r
    assert len(json.loads(r.out)["jobs"]) == 1


def test_nodes_and_max_concurrent_override_the_config(run_cli, write_config, ms_factory):
    r = run_cli("plan", write_config(CONFIG), ms_factory("a.MS"), "--nodes", "n[1-2]", "--max-concurrent", "2",
                "--json")
    assert r.code == 0, r
    worker = json.loads(r.out)["worker"]
    assert worker["nodes"] == ["n1", "n2"] and worker["max_concurrent"] == 2


def test_debug_prints_every_command_on_stderr(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS")
    r = run_cli("plan", write_config(CONFIG), ms, "--debug", "--json")
    assert r.code == 0, r
    json.loads(r.out)  # stdout stays machine-readable
    assert "[0001 @ *] wsclean -name" in r.err and str(ms) in r.err


def test_newline_in_an_ms_path_is_a_clear_error(run_cli, write_config, tmp_path):
    r = run_cli("plan", write_config(CONFIG), f"{tmp_path}/a\nb.MS")
    assert r.code == 2
    assert "control character" in r.err and "one job per line" in r.err


def test_options_may_come_before_the_config_in_the_nenucal_form(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = 'DATA'\n")
    ms = ms_factory("a.MS")
    r = run_cli("--dry-run", "--nodes", "localhost", cfg, ms)
    assert r.code == 0, r
    assert "[0001 on any node] wsclean -name" in r.out
    assert not (tmp_path / "imgpipe-runs").exists()


def test_a_run_directory_that_cannot_be_written_is_one_clear_line(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = 'DATA'\n")
    jobs = tmp_path / "run" / "jobs.txt"
    assert run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", jobs).code == 0
    (jobs.parent / "logs").write_text("a file where the run wants its logs directory")
    r = run_cli("run", jobs)
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.startswith("imgpipe: error: ") and "logs" in r.err, r


def test_the_garbage_collector_is_off_while_planning_and_on_for_the_run_and_the_report(
        run_cli, write_config, ms_factory, tmp_path, monkeypatch):
    """Python's cyclic garbage collector is off while a plan is built (it walked the objects of
    50,000 jobs over and over, ~1.5 s), on again before the run's loop, which lasts the night,
    with the plan frozen out of its walks, and on for the report's plotting; after the command
    it is as it was. Spies on the real functions: the run is real (WSClean on localhost)."""
    import gc

    import imgpipe.engines.loop as loop
    import imgpipe.plan as planner
    import imgpipe.report as report

    seen: dict[str, tuple[bool, bool]] = {}

    def spy(name, module, attr):
        real = getattr(module, attr)

        def call(*args, **kwargs):
            seen[name] = (gc.isenabled(), gc.get_freeze_count() > 0)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, attr, call)

    spy("plan", planner, "make_plan")
    spy("run", loop, "run")
    spy("report", report, "write_report")
    cfg = write_config("[worker]\nnodes = 'localhost'\n[wsclean]\nname = 'img'\ndata-column = 'DATA'\n"
                       "size = '64 64'\nscale = '1arcmin'\nout-dir = 'images'\n")
    r = run_cli(cfg, ms_factory("SW01.MS"))
    assert r.code == 0, r
    assert (tmp_path / "images" / "img-image.fits").is_file()
    assert seen == {"plan": (False, False), "run": (True, True)}
    assert gc.isenabled() and gc.get_freeze_count() == 0
    r = run_cli("report")
    assert r.code == 0, r
    assert seen["report"] == (True, True)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_sigterm_stops_a_command_like_ctrl_c_and_the_handler_is_put_back(run_cli, write_config, ms_factory,
                                                                         monkeypatch):
    """While a command plans (or reads, or reports), SIGTERM ends it as Ctrl-C does: one line,
    exit 130 (the README's exit codes), its worker processes stopped (tests/test_ms_facts.py
    sends a real one). main puts back the handler it found (the tests call it in-process)."""
    import signal

    import imgpipe.plan as planner

    before = signal.getsignal(signal.SIGTERM)
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")

    def killed(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # (to this process: as `kill PID` would)
        raise AssertionError("SIGTERM did not stop the plan")
    monkeypatch.setattr(planner, "make_plan", killed)
    r = run_cli("plan", cfg, ms_factory("a.MS"))
    assert (r.code, r.err, r.out) == (130, "imgpipe: interrupted\n", "")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_hang_up_or_a_term_while_the_parser_is_built_is_one_line(run_cli, monkeypatch, sig):
    """(a Ctrl-C or a closed terminal in the first few milliseconds printed a traceback)"""
    import signal

    import imgpipe.cli as cli

    def interrupted():
        signal.raise_signal(getattr(signal, sig))
        raise AssertionError(f"{sig} did not stop the command")
    monkeypatch.setattr(cli, "build_parser", interrupted)
    r = run_cli("status")
    assert (r.code, r.err) == (130, "imgpipe: interrupted\n")


def test_a_mistyped_command_is_not_taken_for_a_config(run_cli):
    r = run_cli("stauts")
    assert r.code == 2 and "no command 'stauts': did you mean 'status'?" in r.err, r


def test_an_unknown_option_alone_says_what_was_wrong(run_imgpipe):
    r = run_imgpipe("-V")
    assert r.code == 2 and "imgpipe: error: unrecognized arguments: -V" in r.err, r


def test_run_takes_a_run_directory_as_status_does(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config(CONFIG)
    jobs = tmp_path / "r" / "jobs.txt"
    assert run_cli("plan", cfg, ms_factory("a.MS"), "--jobs-file", jobs).code == 0
    r = run_cli("run", jobs.parent, "--dry-run")
    assert r.code == 0 and "1 job(s): 0 done, 1 to run" in r.err, r


def test_obs_id_patterns_without_a_data_handler_say_what_they_need(run_cli, write_config):
    r = run_cli("plan", write_config(CONFIG), "202312*_NT04:SW01")
    assert r.code == 2 and "need a [data_handler] section in " in r.err, r


def test_an_engine_whose_tools_are_missing_writes_nothing(run_imgpipe, write_config, ms_factory, tmp_path):
    """Exit 2 means nothing was started or written: the engine's tools are checked first."""
    cfg = write_config(CONFIG)
    r = run_imgpipe(cfg, ms_factory("a.MS"), "--engine", "slurm", env={"PATH": str(tmp_path / "empty")})
    assert r.code == 2 and "is not installed (the slurm engine needs it)" in r.err, r
    assert not (tmp_path / "imgpipe-runs").exists()


# ---------------------------------------------------------------- the README's command lines


def readme_command_lines() -> list[str]:
    """Every `imgpipe ...` line of the README's code blocks (comments cut off)."""
    import re as _re
    from pathlib import Path as _Path

    text = (_Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in _re.findall(r"```[a-z]*\n(.*?)```", text, flags=_re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("imgpipe "):
                lines.append(line)
    return lines


def test_the_readme_shows_command_lines():
    assert len(readme_command_lines()) >= 10


@pytest.mark.parametrize("line", readme_command_lines())
def test_every_command_line_of_the_readme_parses(line):
    """Each command the README prints is one the command line takes: right command, known options."""
    import shlex as _shlex

    from imgpipe.cli import _nenucal_form, build_parser

    argv = _shlex.split(line)[1:]
    if _nenucal_form(argv):
        argv.insert(0, "image")
    args, extra = build_parser().parse_known_args(argv)
    assert args.command and not extra, (line, extra)


def test_options_the_readme_lists_work_where_it_says(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    ms = ms_factory("a.MS")
    r = run_cli("plan", cfg, ms, "--dry-run")  # plan --dry-run: the plan, no jobs file
    assert r.code == 0 and "not written (--dry-run)" in r.out, r
    assert not (tmp_path / "imgpipe-runs").exists()
    jobs = tmp_path / "jobs.txt"
    assert run_cli("plan", cfg, ms, "--jobs-file", jobs).code == 0
    r = run_cli("run", jobs, "--max-concurrent", "1", "--nodes", "localhost", "--dry-run")
    assert r.code == 0 and "[0001 on any node]" in r.out, r
    r = run_cli("run", jobs, "--max-concurrent", "0", "--dry-run")
    assert r.code == 2 and "--max-concurrent" in r.err and "from 1 to 1000" in r.err, r


def test_an_unknown_option_shows_the_commands_own_usage(run_imgpipe, write_config, ms_factory):
    cfg = write_config("[wsclean]\nname = 'img'\n")
    for args, usage in ((["plan", cfg, "--bogus"], "usage: imgpipe plan"), (["run", "x.txt", "--check"],
                                                                             "usage: imgpipe run"),
                        (["status", "--nodes", "x"], "usage: imgpipe status")):
        r = run_imgpipe(*args)
        assert r.code == 2, r
        assert r.err.startswith(usage) and "unrecognized arguments" in r.err, r


def test_a_closed_pipe_is_a_quiet_exit(tmp_path, write_config, ms_factory):
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    ms = ms_factory("a.MS")
    for command in (f"plan {cfg} {ms} --json", "status", "runs"):
        proc = subprocess.run(f"{sys.executable} -m imgpipe.cli {command} | head -1; exit ${{PIPESTATUS[0]}}",
                              shell=True, executable="/bin/bash", cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode in (0, 3), (command, proc.returncode, proc.stderr)  # (status: 3, not done)
        assert proc.stderr == "", (command, proc.stderr)
        assert len(proc.stdout.splitlines()) == 1


def test_plan_shows_what_each_job_asks_of_slurm_and_where_each_value_comes_from(tmp_path, ms_factory):
    """nodes = 'slurm': the plan (and --dry-run, and --json) says the CPUs, memory, time and
    partition each job asks for, and their source: [worker.resources.heavy], slurm_options,
    $LIBPIPE_SLURM_OPTIONS, max_time, or a node's share read from a real Slurm's sinfo (two CPUs
    and 4000 MB a node here). Other [worker.resources] categories (calpipe's) stay accepted."""
    from slurmcluster import SlurmCluster, missing_tools

    if missing_tools():
        pytest.skip(f"needs Slurm: {', '.join(missing_tools())}")
    ms = ms_factory("a.MS")
    cfg = tmp_path / "img.toml"
    cfg.write_text("[worker]\nnodes = 'slurm'\nmax_concurrent = 2\nmax_time = 3600\n"
                   "[worker.resources.light]\ncpus = 1\n[wsclean]\nname = 'img'\ndata-column = 'DATA'\n")
    with SlurmCluster(tmp_path / "slurm") as cluster:
        env = cluster.env(LIBPIPE_SLURM_OPTIONS="--partition=debug --time=1:30:00")

        def imgpipe(*args):
            return subprocess.run([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)

        r = imgpipe("plan", cfg, ms, "--dry-run")
        assert r.returncode == 0, r.stderr
        lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("    ")}
        assert lines["CPUs"].split()[1] == "1" and "a node's share: the smallest usable node's 2 CPUs" in lines["CPUs"]
        assert lines["memory"].split()[1:3] == ["2000", "MB"]
        assert lines["time"].split()[1:] == ["1:30:00", "$LIBPIPE_SLURM_OPTIONS"]
        assert lines["partition"].split()[1:] == ["debug", "$LIBPIPE_SLURM_OPTIONS"]
        cfg.write_text(cfg.read_text().replace("max_time = 3600\n", "max_time = 3600\nslurm_options = '-p debug'\n")
                       + "[worker.resources.heavy]\ncpus = 2\nmem = '3G'\n")
        r = imgpipe(cfg, ms, "--dry-run")
        assert r.returncode == 0, r.stderr
        asked = {ln.split()[0]: ln for ln in r.stderr.splitlines() if ln.startswith("    ")}
        assert asked["CPUs"].split()[1:] == ["2", "[worker.resources.heavy]", "cpus"]
        assert asked["memory"].split()[1:] == ["3072", "MB", "[worker.resources.heavy]", "mem"]
        assert asked["time"].split()[1:3] == ["61", "min"] and "max_time = 3600 s" in asked["time"]
        assert asked["partition"].split()[1] == "debug" and f"{cfg}: [worker] slurm_options" in asked["partition"]
        doc = json.loads(imgpipe("plan", cfg, ms, "--json", "--dry-run").stdout)
        assert doc["slurm_request"]["CPUs"] == {"value": "2", "from": "[worker.resources.heavy] cpus"}
