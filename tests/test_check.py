"""``imgpipe plan --check``: every distinct command goes through ``wsclean -dry-run``."""

from __future__ import annotations

import json
import os
import stat

import pytest

from conftest import needs
from imgpipe.wsclean_command import pol_problem

CONFIG = "[wsclean]\nname = 'img'\ndata-column = false\nsize = '64 64'\n"


@needs("wsclean")
def test_a_good_plan_passes(run_cli, write_config, ms_factory):
    paths = [ms_factory(f"{i}.MS") for i in range(3)] + [ms_factory("two.MS", nchan=12, nspw=2)]
    cfg = write_config(CONFIG + "scale = '1amin'\nniter = 100\nchannels-out = 'every 4'\n")
    r = run_cli("plan", cfg, *paths, "--check")
    assert r.code == 0, r
    # three single-SPW jobs share one command shape; the -reorder one is another
    assert "wsclean -dry-run accepts all 2 distinct command(s)" in r.err
    assert (r.out.count("Jobs file:")) == 1


@pytest.mark.parametrize("line, said", [
    ("scale = 'banana'", "-scale takes an angle"),
    ("weight = 'briggs x'", "-weight takes briggs and its robustness"),
    ("threshold = 'lots'", "-threshold takes a flux density"),
])
def test_a_value_wsclean_refuses_is_a_plan_error_without_check(run_cli, write_config, ms_factory, tmp_path, line,
                                                               said):
    """The option table knows what each value must be: no need for --check, nor for WSClean here."""
    a, b = ms_factory("a.MS"), ms_factory("b.MS")
    cfg = write_config(CONFIG + line + "\n")
    r = run_cli("plan", cfg, a, b)
    assert r.code == 2, r
    assert "Traceback" not in r.err and said in r.err and f"{cfg}: [wsclean] {line.split()[0]}" in r.err, r
    assert not (tmp_path / "imgpipe-runs").exists()  # nothing written


@pytest.mark.parametrize("pol", ["zz", "banana", "zz,i", "x", "i,x"])
def test_a_pol_wsclean_would_silently_ignore_is_refused(run_cli, write_config, ms_factory, tmp_path, pol):
    # WSClean 3.1's -dry-run does not parse -pol, and a real run with -pol zz images
    # nothing and exits 0: imgpipe checks the word itself, on every plan (no --check needed).
    cfg = write_config(CONFIG + f"pol = '{pol}'\n")
    r = run_cli("plan", cfg, ms_factory("a.MS"))
    assert r.code == 2, r
    assert f"-pol '{pol}'" in r.err and "[wsclean] pol" in r.err
    assert not (tmp_path / "imgpipe-runs").exists()


@pytest.mark.parametrize("pol", ["I", "i", "xx,yy", "XX,YY", "iquv", "xxyy", "I,Q", "xx yy", "rr,ll", "xy,yx"])
def test_pols_wsclean_understands_pass(pol):
    assert pol_problem(pol) is None


@needs("wsclean")
def test_a_list_pol_passes(run_cli, write_config, ms_factory):
    cfg = write_config(CONFIG + "pol = ['xx', 'yy']\n")
    r = run_cli("plan", cfg, ms_factory("a.MS"), "--check", "--json")
    assert r.code == 0, r
    assert "xx,yy" in json.loads(r.out)["jobs"][0]["argv"]


def test_check_without_wsclean_warns_and_still_plans(run_cli, write_config, ms_factory, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    cfg = write_config(CONFIG + "scale = '1amin'\n")
    r = run_cli("plan", cfg, ms_factory("a.MS"), "--check")
    assert r.code == 0, r
    assert "--check skipped: wsclean is not installed" in r.err


def test_check_reports_a_wsclean_that_exits_0_but_prints_an_exception(run_cli, write_config, ms_factory,
                                                                       tmp_path, monkeypatch):
    # some builds print the parse error and exit 0: that is a rejection too
    fake = tmp_path / "bin" / "wsclean"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'An exception occured:'\necho '>>> Error parsing scale parameter'\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    r = run_cli("plan", write_config(CONFIG), ms_factory("a.MS"), "--check")
    assert r.code == 2, r
    assert "Error parsing scale parameter" in r.err
