"""The plan: channels-out, out-dir tokens, grouping, hosts and the safety rules.

Every test plans real MSs through the real CLI (``imgpipe plan ... --json``) and
looks at the WSClean argv, or at the error a radio astronomer would read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def config(write_config, wsclean: str = "", worker: str = "", name: str = "img.toml"):
    text = "[worker]\n" + worker + "\n[wsclean]\nname = 'img'\n"
    if "data-column" not in wsclean:
        text += "data-column = false\n"
    return write_config(text + wsclean, name=name)


def plan_jobs(run_cli, cfg, *args, cwd=None):
    """The plan's jobs by id (the plan lists them longest first: see the test of that order)."""
    r = run_cli("plan", cfg, *args, "--json", cwd=cwd)
    assert r.code == 0, r
    return sorted(json.loads(r.out)["jobs"], key=lambda j: j["id"])


def plan_error(run_cli, cfg, *args, cwd=None) -> str:
    r = run_cli("plan", cfg, *args, cwd=cwd)
    assert r.code == 2, r
    assert r.out == ""
    assert "Traceback" not in r.err
    assert r.err.startswith("imgpipe: error: ")
    return r.err


def opt(argv, flag):
    """The word after ``flag`` (the only occurrence)."""
    assert argv.count(flag) == 1, argv
    return argv[argv.index(flag) + 1]


# ================================================================ channels-out


def test_channels_out_all_is_the_channel_count(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS", nchan=12)
    (job,) = plan_jobs(run_cli, config(write_config, "channels-out = 'all'"), ms)
    assert opt(job["argv"], "-channels-out") == "12"
    assert job["channels_out"] == 12


def test_channels_out_all_counts_identical_spw_rows_once(run_cli, write_config, ms_factory):
    freqs = [100e6 + i * 1e5 for i in range(12)]
    ms = ms_factory("same.MS", spw_freqs=[freqs, freqs])
    (job,) = plan_jobs(run_cli, config(write_config, "channels-out = 'all'"), ms)
    assert opt(job["argv"], "-channels-out") == "12"


def test_channels_out_all_counts_different_spw_rows(run_cli, write_config, ms_factory):
    ms = ms_factory("two.MS", nchan=12, nspw=2)
    (job,) = plan_jobs(run_cli, config(write_config, "channels-out = 'all'"), ms)
    assert opt(job["argv"], "-channels-out") == "24"


def test_channels_out_all_is_per_job_without_combine(run_cli, write_config, ms_factory):
    a = ms_factory("a.MS", nchan=12)
    b = ms_factory("b.MS")  # 16 channels
    jobs = plan_jobs(run_cli, config(write_config, "channels-out = 'all'"), a, b)
    assert [opt(j["argv"], "-channels-out") for j in jobs] == ["12", "16"]


def test_channels_out_all_under_combine_is_the_union_of_the_bands(run_cli, write_config, ms_factory):
    # two MSs with different bands: the LAST one alone (nenucal) would say 12
    low = ms_factory("low.MS", nchan=12)  # from 50 MHz
    high = ms_factory("high.MS", nchan=12, freq_start=60e6)
    (job,) = plan_jobs(run_cli, config(write_config, "channels-out = 'all'"), low, high, "--combine")
    assert opt(job["argv"], "-channels-out") == "24"


def test_channels_out_all_under_combine_same_band_counts_once(run_cli, write_config, ms_factory):
    a = ms_factory("a.MS", nchan=12)
    b = ms_factory("b.MS", nchan=12)
    (job,) = plan_jobs(run_cli, config(write_config, "channels-out = 'all'"), a, b, "-c")
    assert opt(job["argv"], "-channels-out") == "12"


@pytest.mark.parametrize("spec, expected", [("every 4", "3"), ("every4", "3"), ("every 5", "2"), ("every 12", "1")])
def test_channels_out_every_n(run_cli, write_config, ms_factory, spec, expected):
    ms = ms_factory("a.MS", nchan=12)
    (job,) = plan_jobs(run_cli, config(write_config, f"channels-out = '{spec}'"), ms)
    assert opt(job["argv"], "-channels-out") == expected


def test_channels_out_every_n_above_the_channel_count_is_an_error(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS", nchan=12)
    err = plan_error(run_cli, config(write_config, "channels-out = 'every 13'"), ms)
    assert "channels-out" in err and "every 13" in err
    assert str(ms) in err and "12 channel" in err


def test_channels_out_integer_passes_through(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS", nchan=12)
    (job,) = plan_jobs(run_cli, config(write_config, "channels-out = 5"), ms)
    assert opt(job["argv"], "-channels-out") == "5"


def test_channels_out_integer_above_the_channel_count_is_an_error(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS", nchan=12)
    err = plan_error(run_cli, config(write_config, "channels-out = 13"), ms)
    assert "channels-out = 13" in err and "12 channel" in err and str(ms) in err



def test_every_job_with_too_few_channels_is_named_and_a_config_mistake_only_once(run_cli, write_config, ms_factory):
    small = [ms_factory(f"small{i}.MS", nchan=4) for i in range(3)]
    big = ms_factory("big.MS", nchan=16)
    err = plan_error(run_cli, config(write_config, "channels-out = 8\nout-dir = '$ms_basename$'\n"), *small, big)
    assert "3 problem(s)" in err
    assert all(ms.name in err for ms in small) and "big.MS" not in err
    err = plan_error(run_cli, config(write_config, "out-dir = '$nope$'\n"), *small)
    assert err.count("unknown token") == 1 and "problem(s)" not in err

def test_channels_out_error_on_a_later_job_names_that_ms(run_cli, write_config, ms_factory):
    a = ms_factory("a.MS")  # 16 channels
    b = ms_factory("b.MS", nchan=12)
    err = plan_error(run_cli, config(write_config, "channels-out = 14"), a, b)
    assert str(b) in err and "12 channel" in err
    assert f"{a}:" not in err


# ================================================================ out-dir and name


def test_default_out_dir_is_inside_the_ms(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS")
    (job,) = plan_jobs(run_cli, config(write_config), ms)
    assert opt(job["argv"], "-name") == f"{ms}/images/img"
    assert job["name"] == f"{ms}/images/img"


def test_ms_basename_and_name_tokens(run_cli, write_config, ms_factory, tmp_path):
    ms = ms_factory("SW03_T001.MS")
    out = tmp_path / "out"
    cfg = config(write_config, f"out-dir = '{out}/$ms_basename$/$name$'")
    (job,) = plan_jobs(run_cli, cfg, ms)
    assert opt(job["argv"], "-name") == f"{out}/SW03_T001.MS/img/img"
    assert job["out_dir"] == f"{out}/SW03_T001.MS/img"


def test_ms_in_token_in_name(run_cli, write_config, ms_factory, tmp_path):
    ms = ms_factory("a.MS")
    cfg = write_config("[wsclean]\ndata-column = false\nname = '$ms_basename$-img'\n"
                       f"out-dir = '{tmp_path}/o'\n")
    (job,) = plan_jobs(run_cli, cfg, ms)
    assert opt(job["argv"], "-name") == f"{tmp_path}/o/a.MS-img"


@pytest.mark.parametrize("token", ["obs_id", "sw"])
def test_data_handler_tokens_without_a_data_handler_are_errors(run_cli, write_config, ms_factory, token):
    ms = ms_factory("a.MS")
    err = plan_error(run_cli, config(write_config, f"out-dir = '/data/${token}$'"), ms)
    assert f"${token}$" in err and "[data_handler]" in err and "out-dir" in err


def test_unknown_token_is_an_error_with_a_suggestion(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS")
    err = plan_error(run_cli, config(write_config, "out-dir = '/data/$ms_basenme$'"), ms)
    assert "unknown token $ms_basenme$" in err
    assert "did you mean $ms_basename$?" in err


def test_unknown_uppercase_token_suggests_the_environment_variable_syntax(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS")
    err = plan_error(run_cli, config(write_config, "out-dir = '/data/$USER$ms_basename$'"), ms)
    assert "unknown token $USER$" in err and "${USER}" in err


def test_name_cannot_refer_to_itself(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS")
    cfg = write_config("[wsclean]\ndata-column = false\nname = 'x$name$'\n")
    err = plan_error(run_cli, cfg, ms)
    assert "$name$" in err and "itself" in err


def test_tilde_is_expanded_at_plan_time(run_cli, write_config, ms_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ms = ms_factory("a.MS")
    (job,) = plan_jobs(run_cli, config(write_config, "out-dir = '~/imgs/$ms_basename$'"), ms)
    assert opt(job["argv"], "-name") == f"{tmp_path}/home/imgs/a.MS/img"


@pytest.mark.parametrize("ref", ["$IMG_ROOT", "${IMG_ROOT}"])
def test_environment_variables_are_expanded_before_tokens(run_cli, write_config, ms_factory, tmp_path,
                                                           monkeypatch, ref):
    monkeypatch.setenv("IMG_ROOT", str(tmp_path / "root"))
    ms = ms_factory("a.MS")
    (job,) = plan_jobs(run_cli, config(write_config, f"out-dir = '{ref}/$ms_basename$'"), ms)
    assert opt(job["argv"], "-name") == f"{tmp_path}/root/a.MS/img"


def test_environment_variable_in_a_path_option(run_cli, write_config, ms_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKS", str(tmp_path / "masks"))
    ms = ms_factory("a.MS")
    (job,) = plan_jobs(run_cli, config(write_config, "fits-mask = '$MASKS/m.fits'"), ms)
    assert opt(job["argv"], "-fits-mask") == f"{tmp_path}/masks/m.fits"


def test_relative_path_options_are_made_absolute(run_cli, write_config, ms_factory, tmp_path):
    ms = ms_factory("a.MS")
    work = tmp_path / "work"
    work.mkdir()
    cfg = config(write_config, "fits-mask = 'masks/my mask.fits'")
    (job,) = plan_jobs(run_cli, cfg, ms, cwd=work)
    assert opt(job["argv"], "-fits-mask") == f"{work}/masks/my mask.fits"  # one word, spaces and all


@pytest.mark.parametrize("value", ["'res.fits model.fits $OUT_DIR/out.fits'",
                                   "['res.fits', 'model.fits', '$OUT_DIR/out.fits']"])
def test_every_word_of_a_multi_path_option_is_a_path(run_cli, write_config, ms_factory, tmp_path,
                                                      monkeypatch, value):
    monkeypatch.setenv("OUT_DIR", "/results")
    (job,) = plan_jobs(run_cli, config(write_config, f"restore = {value}"), ms_factory("a.MS"))
    i = job["argv"].index("-restore")
    assert job["argv"][i + 1 : i + 4] == [f"{tmp_path}/res.fits", f"{tmp_path}/model.fits", "/results/out.fits"]


@pytest.mark.parametrize("value", ["'sol.h5 amplitude000,phase000'", "['sol.h5', 'amplitude000,phase000']"])
def test_facet_solution_names_are_not_paths(run_cli, write_config, ms_factory, tmp_path, value):
    (job,) = plan_jobs(run_cli, config(write_config, f"apply-facet-solutions = {value}"), ms_factory("a.MS"))
    i = job["argv"].index("-apply-facet-solutions")
    assert job["argv"][i + 1 : i + 3] == [f"{tmp_path}/sol.h5", "amplitude000,phase000"]


def test_undefined_environment_variable_is_an_error(run_cli, write_config, ms_factory, monkeypatch):
    monkeypatch.delenv("IMGPIPE_NOT_SET", raising=False)
    ms = ms_factory("a.MS")
    err = plan_error(run_cli, config(write_config, "out-dir = '$IMGPIPE_NOT_SET/images'"), ms)
    assert "$IMGPIPE_NOT_SET is not set" in err and "out-dir" in err
    assert "export IMGPIPE_NOT_SET" in err


def test_dollar_in_an_ms_name_brought_by_a_token_is_never_expanded(run_cli, write_config, ms_factory,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/SHOULD-NOT-APPEAR")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    ms = ms_factory("a$HOME${UNSET_VAR}.MS")
    (job,) = plan_jobs(run_cli, config(write_config, "out-dir = '$ms_in$/$ms_basename$'"), ms)
    assert opt(job["argv"], "-name") == f"{tmp_path}/a$HOME${{UNSET_VAR}}.MS/a$HOME${{UNSET_VAR}}.MS/img"
    assert "SHOULD-NOT-APPEAR" not in job["command"]


def test_relative_out_dir_is_made_absolute_from_the_current_directory(run_cli, write_config, ms_factory,
                                                                      tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    ms = ms_factory("a.MS")
    (job,) = plan_jobs(run_cli, config(write_config, "out-dir = 'rel/$ms_basename$'"), ms, cwd=work)
    assert opt(job["argv"], "-name") == f"{work}/rel/a.MS/img"


def test_relative_ms_path_is_made_absolute(run_cli, write_config, ms_factory, tmp_path):
    ms_factory("a.MS", where=tmp_path / "data")
    (job,) = plan_jobs(run_cli, config(write_config), "data/a.MS")
    assert job["ms"] == [f"{tmp_path}/data/a.MS"]
    assert job["argv"][-1] == f"{tmp_path}/data/a.MS"


def test_ms_path_is_taken_as_given_no_tilde_expansion(run_cli, write_config, ms_factory, tmp_path,
                                                      monkeypatch):
    # the shell expands ~ on the command line; a quoted '~/x.MS' is a directory named '~'
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ms_factory("x.MS", where=tmp_path / "home")
    ms_factory("x.MS", where=tmp_path / "~")
    (job,) = plan_jobs(run_cli, config(write_config), "~/x.MS")
    assert job["ms"] == [f"{tmp_path}/~/x.MS"]


# ================================================================ grouping


def test_no_combine_one_job_per_ms(run_cli, write_config, ms_factory):
    paths = [ms_factory(f"SW01_T00{i}.MS") for i in range(1, 4)]
    jobs = plan_jobs(run_cli, config(write_config), *paths)
    assert [j["ms"] for j in jobs] == [[str(p)] for p in paths]
    assert [j["id"] for j in jobs] == ["0001", "0002", "0003"]
    for j, p in zip(jobs, paths):
        assert j["argv"][0] == "wsclean"
        assert j["argv"][-1] == str(p)  # MS paths come last
        assert opt(j["argv"], "-name") == f"{p}/images/img"


@pytest.mark.parametrize("out_dir, expected", [("$ms_in$/images", "{last}/images/img"),
                                               ("{tmp}/$ms_basename$", "{tmp}/{last.name}/img")])
def test_combine_one_job_with_every_ms_name_from_the_last(run_cli, write_config, ms_factory, tmp_path,
                                                          out_dir, expected):
    paths = [ms_factory(f"SW01_T00{i}.MS", where=tmp_path / f"d{i}") for i in range(1, 4)]
    cfg = config(write_config, f"out-dir = '{out_dir.format(tmp=tmp_path)}'")
    (job,) = plan_jobs(run_cli, cfg, *paths, "-c")
    assert job["ms"] == [str(p) for p in paths]
    assert job["argv"][-3:] == [str(p) for p in paths]
    assert opt(job["argv"], "-name") == expected.format(last=paths[-1], tmp=tmp_path)


# ================================================================ hosts


HOST_WORKER = """
nodes = 'node[001-002]'
run_on_file_host = true
run_on_file_host_pattern = '/net/(node\\d{3})/'
"""


def _on(ms_factory, tmp_path, node, name):
    return ms_factory(name, where=tmp_path / "net" / node)


def test_jobs_are_pinned_to_the_file_host(run_cli, write_config, ms_factory, tmp_path):
    a = _on(ms_factory, tmp_path, "node001", "a.MS")
    b = _on(ms_factory, tmp_path, "node002", "b.MS")
    jobs = plan_jobs(run_cli, config(write_config, worker=HOST_WORKER), a, b)
    assert [j["host"] for j in jobs] == ["node001", "node002"]


def test_the_host_is_the_first_group_of_the_pattern(run_cli, write_config, ms_factory, tmp_path):
    a = ms_factory("SW01.MS", where=tmp_path / "net" / "node002" / "node001")
    worker = HOST_WORKER.replace("'/net/(node\\d{3})/'", "'/net/(node\\d{3})/(node\\d{3})/'")
    assert worker != HOST_WORKER
    (job,) = plan_jobs(run_cli, config(write_config, worker=worker), a)
    assert job["host"] == "node002"


def test_file_host_not_in_nodes_is_an_error(run_cli, write_config, ms_factory, tmp_path):
    a = _on(ms_factory, tmp_path, "node007", "a.MS")
    err = plan_error(run_cli, config(write_config, worker=HOST_WORKER), a)
    assert "node007" in err and "not in [worker] nodes" in err and "node001,node002" in err
    assert str(a) in err


def test_pattern_not_matching_is_an_error(run_cli, write_config, ms_factory, tmp_path):
    a = ms_factory("a.MS")
    err = plan_error(run_cli, config(write_config, worker=HOST_WORKER), a)
    assert str(a) in err and "does not match" in err
    assert "'/net/(node\\d{3})/'" in err  # the pattern as the user wrote it, not a repr


def test_combined_group_goes_to_the_majority_host(run_cli, write_config, ms_factory, tmp_path):
    a = _on(ms_factory, tmp_path, "node001", "a.MS")
    b = _on(ms_factory, tmp_path, "node001", "b.MS")
    c = _on(ms_factory, tmp_path, "node002", "c.MS")
    (job,) = plan_jobs(run_cli, config(write_config, worker=HOST_WORKER), a, b, c, "-c")
    assert job["host"] == "node001"  # not the last MS's node002


@pytest.mark.parametrize("order, expected", [(("node001", "node002"), "node002"),
                                             (("node002", "node001"), "node001")])
def test_combined_group_tie_goes_to_the_last_ms_host(run_cli, write_config, ms_factory, tmp_path,
                                                     order, expected):
    paths = [_on(ms_factory, tmp_path, node, f"{i}.MS") for i, node in enumerate(order)]
    (job,) = plan_jobs(run_cli, config(write_config, worker=HOST_WORKER), *paths, "-c")
    assert job["host"] == expected


def test_unpinned_jobs_have_no_host(run_cli, write_config, ms_factory, tmp_path):
    a = _on(ms_factory, tmp_path, "node001", "a.MS")
    (job,) = plan_jobs(run_cli, config(write_config, worker="nodes = 'node[001-002]'"), a)
    assert job["host"] is None


# ================================================================ safe plans


def test_every_job_has_its_own_temp_dir(run_cli, write_config, ms_factory):
    paths = [ms_factory(f"{i}.MS") for i in range(3)]
    jobs = plan_jobs(run_cli, config(write_config), *paths)
    temps = [opt(j["argv"], "-temp-dir") for j in jobs]
    assert len(set(temps)) == 3
    for j, t in zip(jobs, temps):
        assert j["temp_dir"] == t and os.path.isabs(t)


def test_temp_dirs_go_under_the_users_temp_dir(run_cli, write_config, ms_factory, tmp_path):
    paths = [ms_factory(f"{i}.MS") for i in range(3)]
    jobs = plan_jobs(run_cli, config(write_config, f"temp-dir = '{tmp_path}/scratch'"), *paths)
    temps = [opt(j["argv"], "-temp-dir") for j in jobs]  # the user's -temp-dir is not repeated
    assert len(set(temps)) == 3
    assert all(t.startswith(f"{tmp_path}/scratch/") for t in temps)


def test_two_jobs_writing_the_same_images_is_an_error_naming_both(run_cli, write_config, ms_factory, tmp_path):
    a = ms_factory("a.MS")
    b = ms_factory("b.MS")
    c = ms_factory("c.MS", where=tmp_path / "other")
    err = plan_error(run_cli, config(write_config, f"out-dir = '{tmp_path}/imgs'"), a, c, b)
    assert f"{tmp_path}/imgs/img" in err
    assert "job 0001 (a.MS)" in err and "job 0002 (c.MS)" in err and "job 0003 (b.MS)" in err
    assert "hint:" in err


def test_combine_obs_ids_without_combine_collision_hint(run_cli, write_config, ms_factory, tmp_path):
    a = ms_factory("a.MS")
    b = ms_factory("b.MS")
    err = plan_error(run_cli, config(write_config, f"out-dir = '{tmp_path}/imgs'"), a, b, "-o")
    assert "--combine_obs_ids only takes effect with --combine" in err


def test_the_same_ms_given_twice_is_imaged_once(run_cli, write_config, ms_factory, tmp_path):
    ms = ms_factory("a.MS", where=tmp_path / "data")
    (tmp_path / "link.MS").symlink_to(ms)
    (tmp_path / "data" / "sub").mkdir()
    jobs = plan_jobs(run_cli, config(write_config), "data/a.MS", ms, "./data/a.MS", "data/sub/../a.MS/",
                     "link.MS")
    assert len(jobs) == 1
    assert jobs[0]["ms"] == [str(ms)]


def test_no_input_is_an_error(run_cli, write_config):
    err = plan_error(run_cli, config(write_config))
    assert "no input given" in err and "MS paths" in err


def test_multi_spw_ms_gets_reorder(run_cli, write_config, ms_factory):
    one = ms_factory("one.MS")
    two = ms_factory("two.MS", nchan=12, nspw=2)
    jobs = plan_jobs(run_cli, config(write_config), one, two)
    assert "-reorder" not in jobs[0]["argv"]
    assert jobs[1]["argv"].count("-reorder") == 1


def test_multi_spw_ms_in_a_combined_group_gets_reorder(run_cli, write_config, ms_factory):
    one = ms_factory("one.MS")
    two = ms_factory("two.MS", nchan=12, nspw=2)
    (job,) = plan_jobs(run_cli, config(write_config), two, one, "-c")
    assert job["argv"].count("-reorder") == 1


def test_user_reorder_is_not_doubled(run_cli, write_config, ms_factory):
    two = ms_factory("two.MS", nchan=12, nspw=2)
    (job,) = plan_jobs(run_cli, config(write_config, "reorder = true"), two)
    assert job["argv"].count("-reorder") == 1


def test_no_reorder_with_a_multi_spw_ms_is_an_error(run_cli, write_config, ms_factory):
    two = ms_factory("two.MS", nchan=12, nspw=2)
    err = plan_error(run_cli, config(write_config, "no-reorder = true"), two)
    assert str(two) in err and "-reorder" in err and "no-reorder" in err


def test_no_reorder_with_single_spw_is_fine(run_cli, write_config, ms_factory):
    one = ms_factory("one.MS")
    (job,) = plan_jobs(run_cli, config(write_config, "no-reorder = true"), one)
    assert "-no-reorder" in job["argv"] and "-reorder" not in job["argv"]


# ================================================================ the data column


def test_missing_data_column_names_the_ms_and_the_column(run_cli, write_config, ms_factory):
    good = ms_factory("good.MS", corrected_data=True)
    bad = ms_factory("bad.MS")
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = 'CORRECTED_DATA'\n")
    err = plan_error(run_cli, cfg, good, bad)
    assert f"{bad}: has no column CORRECTED_DATA" in err
    assert str(good) not in err
    assert "its data columns: DATA" in err
    assert "problem(s)" not in err  # one MS, one problem; the advice is the hint
    assert f"is set in {cfg}" in err


def test_missing_default_data_column_says_it_is_the_default(run_cli, write_config, ms_factory):
    bad = ms_factory("bad.MS")
    cfg = write_config("[wsclean]\nname = 'img'\n")  # data-column: nenucal's default CORRECTED_DATA
    err = plan_error(run_cli, cfg, bad)
    assert "has no column CORRECTED_DATA" in err
    assert "default" in err and "false" in err


def test_existing_data_column_is_passed(run_cli, write_config, ms_factory):
    good = ms_factory("good.MS", corrected_data=True)
    cfg = write_config("[wsclean]\nname = 'img'\n")
    (job,) = plan_jobs(run_cli, cfg, good)
    assert opt(job["argv"], "-data-column") == "CORRECTED_DATA"


def test_data_column_false_means_no_check(run_cli, write_config, ms_factory):
    bad = ms_factory("bad.MS")
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    (job,) = plan_jobs(run_cli, cfg, bad)
    assert "-data-column" not in job["argv"]


def test_missing_ms_is_listed_with_the_others(run_cli, write_config, ms_factory, tmp_path):
    good = ms_factory("good.MS")
    err = plan_error(run_cli, config(write_config), good, tmp_path / "gone1.MS", tmp_path / "gone2.MS")
    assert f"{tmp_path}/gone1.MS: does not exist" in err
    assert f"{tmp_path}/gone2.MS: does not exist" in err


# ================================================================ control characters


def test_newline_in_name_is_an_error(run_cli, write_config, ms_factory):
    ms = ms_factory("a.MS")
    cfg = write_config('[wsclean]\ndata-column = false\nname = "img\\ntouch PWNED"\n')
    err = plan_error(run_cli, cfg, ms)
    assert "control character" in err and "name" in err


def test_newline_from_an_environment_variable_is_an_error(run_cli, write_config, ms_factory, monkeypatch):
    monkeypatch.setenv("EVIL_DIR", "/tmp/x\ntouch PWNED")
    ms = ms_factory("a.MS")
    err = plan_error(run_cli, config(write_config, "out-dir = '$EVIL_DIR'"), ms)
    assert "control character" in err and "out-dir" in err


# ================================================================ hosts without a pattern (build_plan directly)


def _pinned_without_pattern(write_config):
    from dataclasses import replace

    from imgpipe.config import load_config

    cfg = load_config(config(write_config, worker="nodes = 'node[001-002]'"))
    return replace(cfg, worker=replace(cfg.worker, run_on_file_host=True, run_on_file_host_pattern=None))


def test_data_handler_node_pins_the_job_without_a_pattern(write_config, ms_factory):
    from imgpipe.inputs import MSInput
    from imgpipe.ms_facts import read_facts
    from imgpipe.plan import build_plan

    a, b, c = (str(ms_factory(f"{n}.MS")) for n in "abc")
    inputs = [MSInput(a, "OBS1", "SW01", "node002"), MSInput(b, "OBS1", "SW01", "node002"),
              MSInput(c, "OBS1", "SW01", "node001")]
    facts, _ = read_facts([a, b, c])
    plan = build_plan(_pinned_without_pattern(write_config), inputs, facts, combine=True)
    assert [j.host for j in plan.jobs] == ["node002"]


def test_no_pattern_and_no_data_handler_node_is_an_error(write_config, ms_factory):
    from imgpipe.errors import PlanErrors
    from imgpipe.inputs import MSInput
    from imgpipe.ms_facts import read_facts
    from imgpipe.plan import build_plan

    a = str(ms_factory("a.MS"))
    facts, _ = read_facts([a])
    with pytest.raises(PlanErrors) as e:
        build_plan(_pinned_without_pattern(write_config), [MSInput(a)], facts)
    assert a in str(e.value) and "which node holds this MS" in str(e.value)


def test_same_ms_name_in_two_directories_gets_a_hint_that_fits(run_cli, write_config, ms_factory, tmp_path):
    a = ms_factory("obs0.MS", where=tmp_path / "net" / "node001")
    b = ms_factory("obs0.MS", where=tmp_path / "net" / "node002")
    err = plan_error(run_cli, config(write_config, "out-dir = 'images/$ms_basename$'\n"), a, b)
    assert "same name in different directories" in err and "$ms_in$" in err


def test_an_image_name_cfitsio_would_misread_is_refused(run_cli, write_config, ms_factory):
    ms = ms_factory("obs(1).MS")
    err = plan_error(run_cli, config(write_config, "out-dir = 'images/$ms_basename$'\n"), ms)
    assert "CFITSIO" in err and "'('" in err and "[wsclean] out-dir" in err


def test_prefixes_whose_image_files_would_share_names_are_refused():
    """'img' and 'img-0001' both name a file img-0001-image.fits (channel 1 of the first)."""
    from imgpipe.plan import shared_files

    assert shared_files(["/a/img", "/a/img-0001", "/a/img-deep", "/a/img-MFS-XX", "/b/img-0001",
                         "/a/img-t0003-0002-I"]) == [("/a/img", "/a/img-0001"), ("/a/img", "/a/img-MFS-XX"),
                                                      ("/a/img", "/a/img-t0003-0002-I")]
    assert shared_files(["/a/img", "/a/img2", "/a/img-deep", "/a/imgdeep"]) == []


def test_two_jobs_whose_image_files_would_share_names_are_a_plan_error(run_cli, write_config, ms_factory, tmp_path):
    cfg = write_config("[wsclean]\ndata-column = false\nout-dir = 'images'\nname = '$ms_basename$'\n")
    r = run_cli("plan", cfg, ms_factory("x"), ms_factory("x-0001"))
    assert r.code == 2, r
    assert "jobs 0001 and 0002 would write image files of the same names" in r.err, r
    assert f"{tmp_path}/images/x-0001-image.fits is also what {tmp_path}/images/x names" in r.err, r
    assert not (tmp_path / "imgpipe-runs").exists()


def test_jobs_are_listed_longest_first_with_their_ids_in_input_order(run_cli, write_config, ms_factory, tmp_path):
    """The order of the jobs file is the order the engines start jobs: the biggest MS (more times,
    more channels) first; the ids stay in the order the MSs were given."""
    small = ms_factory("a-small.MS")
    big = ms_factory("b-big.MS", ntimes=60)
    wide = ms_factory("c-wide.MS", nchan=48)
    r = run_cli("plan", config(write_config, "channels-out = 4"), small, big, wide, "--json")
    assert r.code == 0, r
    jobs = json.loads(r.out)["jobs"]
    assert [(j["id"], os.path.basename(j["ms"][0])) for j in jobs] == [
        ("0002", "b-big.MS"), ("0003", "c-wide.MS"), ("0001", "a-small.MS")]
    assert jobs[0]["cost"] > jobs[1]["cost"] > jobs[2]["cost"] > 0
    lines = [ln for ln in Path(json.loads(r.out)["jobs_file"]).read_text().splitlines() if not ln.startswith("#")]
    assert [ln.split("\t")[0] for ln in lines] == ["0002", "0003", "0001"]  # the jobs file keeps that order


def test_longest_first_puts_a_busy_nodes_pinned_jobs_before_unpinned_ones_of_the_same_cost():
    from imgpipe.plan import Job, longest_first

    def job(i, host, cost):
        return Job(id=f"{i:04d}", host=host, argv=(), ms=(), name=f"/x/{i}", out_dir="/x", temp_dir="/t", cost=cost)

    jobs = [job(1, None, 5), job(2, "busy", 5), job(3, "busy", 5), job(4, "busy", 5), job(5, "idle", 5),
            job(6, None, 9)]
    order = [j.id for j in longest_first(jobs, slots=2)]
    assert order == ["0002", "0003", "0004", "0006", "0005", "0001"], order
    assert [j.id for j in longest_first(jobs, slots=2)] == order  # deterministic


# ------------------------------------------------------------ jobs built while the MSs are read


def _plan_as_before(cfg, paths, combine=False):
    """What make_plan gave before it built jobs while reading: every fact first, then build_plan,
    then the out-dir check in the plan's order (PlanErrors, or the plan)."""
    from imgpipe.errors import PlanErrors
    from imgpipe.inputs import resolve_inputs
    from imgpipe.ms_facts import read_facts
    from imgpipe.plan import build_plan, check_out_dirs, data_column

    inputs = resolve_inputs(cfg, paths)
    facts, problems = read_facts([i.path for i in inputs], data_column(cfg))
    if problems:
        raise PlanErrors(problems)
    plan = build_plan(cfg, inputs, facts, combine=combine)
    problems = check_out_dirs(plan.jobs, known_dirs=facts)
    if problems:
        raise PlanErrors(problems)
    return plan


@pytest.fixture
def in_workers(monkeypatch, tmp_path):
    """read_facts/iter_facts in 2 worker processes from 2 MSs on, one MS a chunk, and a cache of
    SPECTRAL_WINDOW tables of this test's own (a first plan: tables left to another worker)."""
    from imgpipe import ms_facts

    monkeypatch.setattr(ms_facts, "PARALLEL_MIN", 2)
    monkeypatch.setattr(ms_facts, "CHUNK_MIN", 1)
    monkeypatch.setattr(ms_facts.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-cache"))


def _night(ms_factory, n=10):
    """MSs of different shapes: shared tables, another band, fewer channels, two SPWs."""
    paths = [str(ms_factory(f"obs{i:02d}.MS", nchan=16)) for i in range(n - 3)]
    paths.insert(2, str(ms_factory("other.MS", nchan=16, freq_start=60e6)))
    paths.insert(5, str(ms_factory("fewer.MS", nchan=8)))
    paths.append(str(ms_factory("two.MS", nchan=8, nspw=2)))
    return paths


@pytest.mark.parametrize("options", ["", "channels-out = 'all'\nout-dir = '$ms_in$/../img-$ms_basename$'\n"])
def test_jobs_built_while_reading_are_the_jobs_of_the_whole_plan(write_config, ms_factory, in_workers, options):
    from imgpipe.config import load_config
    from imgpipe.plan import make_plan

    paths = _night(ms_factory)
    cfg = load_config(config(write_config, options))
    plan = make_plan(cfg, paths)
    assert len(plan.jobs) == len(paths)
    assert plan == _plan_as_before(cfg, paths)  # the same jobs, order and digest
    assert make_plan(cfg, paths, combine=True) == _plan_as_before(cfg, paths, combine=True)


def test_the_first_jobs_are_built_before_the_last_ms_is_read(write_config, ms_factory, in_workers, tmp_path):
    """The point of building while reading: the last worker's read waits (up to 60 s) for the
    planner's first job; a planner that read every MS first would make it wait in vain."""
    import time

    from imgpipe import ms_facts, plan as plan_module
    from imgpipe.config import load_config

    paths = _night(ms_factory, 6)
    go, late = tmp_path / "first-job-built", tmp_path / "waited-in-vain"
    checked_read, build_job = ms_facts._checked_read, plan_module.build_job

    def last_one_waits(path, *args):  # (runs in a worker process, forked with this patch)
        if path == paths[-1]:
            for _ in range(600):
                if go.exists():
                    break
                time.sleep(0.1)
            else:
                late.touch()
        return checked_read(path, *args)

    def first_job_says_go(*args, **kwargs):
        go.touch()
        return build_job(*args, **kwargs)

    ms_facts._checked_read = last_one_waits
    plan_module.build_job = first_job_says_go
    try:
        plan = plan_module.make_plan(load_config(config(write_config)), paths)
    finally:
        ms_facts._checked_read, plan_module.build_job = checked_read, build_job
    assert go.exists() and not late.exists()
    assert [j.ms[0] for j in sorted(plan.jobs, key=lambda j: j.id)] == paths


def _same_error(cfg, paths):
    from imgpipe.errors import PlanErrors
    from imgpipe.plan import make_plan

    with pytest.raises(PlanErrors) as before:
        _plan_as_before(cfg, paths)
    with pytest.raises(PlanErrors) as now:
        make_plan(cfg, paths)
    assert now.value.problems == before.value.problems
    return now.value.problems


def test_a_problem_met_while_reading_is_reported_as_a_whole_plan_would(write_config, ms_factory, in_workers,
                                                                        tmp_path):
    from imgpipe.config import load_config

    paths = _night(ms_factory)
    cfg = load_config(config(write_config))

    # MSs that cannot be read, after jobs were built: all of them, in input order
    broken = [tmp_path / "gone.MS", ms_factory("plain.MS")]
    (broken[1] / "table.dat").unlink()
    problems = _same_error(cfg, [*paths[:6], str(broken[0]), *paths[6:], str(broken[1])])
    assert [p.split(":")[0] for p in problems] == [str(b) for b in broken]

    # a job that cannot be built (CFITSIO syntax in one MS's name), after others were
    problems = _same_error(cfg, [*paths[:6], str(ms_factory("obs(1).MS")), *paths[6:]])
    assert len(problems) == 1 and "CFITSIO" in problems[0]

    # the data column missing from some MSs: every one listed, as before
    with_column = load_config(config(write_config, "data-column = 'CORRECTED_DATA'\n", name="col.toml"))
    corrected = [str(ms_factory(f"c{i}.MS", corrected_data=True)) for i in range(3)]
    problems = _same_error(with_column, [*corrected, *paths[:3]])
    assert [p.split(":")[0] for p in problems] == paths[:3]

    # image directories that cannot be made (a file where one goes): in the plan's order
    for p in (paths[1], paths[7]):
        (Path(p) / "images").write_text("not a directory")
    problems = _same_error(cfg, paths)
    assert len(problems) == 2 and all("is a file" in p for p in problems)


def test_a_node_that_cannot_be_told_stops_early_building_and_is_reported(write_config, ms_factory, in_workers,
                                                                          tmp_path):
    from imgpipe.config import load_config

    paths = [str(ms_factory(f"obs{i}.MS", where=tmp_path / "net" / f"node00{1 + i % 2}")) for i in range(6)]
    stray = str(ms_factory("stray.MS", where=tmp_path / "elsewhere"))
    cfg = load_config(config(write_config, worker="nodes = 'node[001-002]'\nrun_on_file_host = true\n"
                             "run_on_file_host_pattern = '/net/(node\\d{3})/'\n"))
    problems = _same_error(cfg, [*paths[:3], stray, *paths[3:]])
    assert len(problems) == 1 and problems[0].startswith(f"{stray}: run_on_file_host_pattern")


@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_the_digest_is_that_of_the_whole_plan_as_one_json_text(write_config, monkeypatch, batch):
    """Runs are named by the digest (imgpipe-runs/<config>-<digest12>): hashing a batch of jobs at a
    time must give the digest of the whole text, as before, whatever the names hold."""
    import hashlib

    from imgpipe import plan as plan_module
    from imgpipe.config import load_config
    from imgpipe.plan import Job, plan_digest

    worker = load_config(config(write_config, worker="nodes = 'node[001-002]'")).worker.run_settings()
    names = ["plain", "ünïcødé 観測", 'quo"te\\back', "$(rm -rf ~)", "tab\there", "\u2028sep"]
    jobs = tuple(Job(id=f"{i:04d}", host=None if i % 2 else "node001", ms=(f"/d/{n}.MS",), name=f"/d/{n}",
                     argv=("wsclean", "-name", f"/d/{n}", f"/d/{n}.MS"), out_dir="/d", temp_dir="/d/t")
                 for i, n in enumerate(names))
    monkeypatch.setattr(plan_module, "_DIGEST_BATCH", batch)
    whole = json.dumps({"worker": worker.as_dict(), "jobs": [[j.id, j.host, list(j.argv)] for j in jobs]},
                       sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert plan_digest(worker, jobs) == hashlib.sha256(whole.encode("utf-8")).hexdigest()
    assert plan_digest(worker, ()) == hashlib.sha256(json.dumps(
        {"worker": worker.as_dict(), "jobs": []}, sort_keys=True, ensure_ascii=False,
        separators=(",", ":")).encode("utf-8")).hexdigest()
