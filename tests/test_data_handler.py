"""The data handler: obs_id patterns -> MS inputs, through the functions and the real CLI.

The tree (tests/nenufar_tree.py) is a NenuFAR-like ``net/nodeXXX/data/...``
layout of real tiny MSs, built once for the module; tests that need a broken
or different data handler write a variant of its data_handler.toml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import nenufar_tree as nt
from imgpipe.config import DataHandlerConfig
from imgpipe.data_handler import (
    chunk_index,
    dir_path,
    get_level,
    parse_data_handler,
    resolve_patterns,
    split_pattern,
)
from imgpipe.errors import ImgpipeError
from imgpipe.inputs import describe_inputs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

N1 = list(nt.OBS_IDS)  # 20231201_NT04, 20231202_NT04, 20231203_NT04
SW = list(nt.SWS)  # SW01, SW02, SW03
HOST_PATTERN = r"/net/(node\d{3})/"  # written inside a TOML literal '...' string


@pytest.fixture(scope="module")
def tree(tmp_path_factory, ms_cache):
    return nt.build_nenufar_tree(tmp_path_factory.mktemp("nenufar"), ms_cache)


@pytest.fixture(params=["new", "old"])
def dh_file(request, tree):
    """Both level formats: every test using it runs once per format."""
    return tree.data_handler if request.param == "new" else tree.data_handler_old


@pytest.fixture
def img(write_config, tree):
    """img(dh=..., level='L2', wsclean='...', worker='...') -> path of an img.toml."""

    def make(dh=None, level="L2", wsclean="", worker="", name="img.toml", where=None, config_file=None):
        text = f"[worker]\nnodes = 'node[001-004]'\n{worker}\n"
        text += f"[data_handler]\nconfig_file = '{config_file or dh or tree.data_handler}'\ndata_level = '{level}'\n"
        default_name = "" if wsclean.startswith("name =") or "\nname =" in wsclean else "name = 'img'\n"
        text += f"[wsclean]\n{default_name}size = '64 64'\nscale = '2arcmin'\n{wsclean}\n"
        return write_config(text, name=name, where=where)

    return make


@pytest.fixture
def variant(tmp_path, tree):
    """variant(replace={old: new}, append='...') -> a changed copy of the tree's data_handler.toml."""
    count = [0]

    def make(replace=None, append="", source=None):
        text = Path(source or tree.data_handler).read_text(encoding="utf-8")
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        count[0] += 1
        path = tmp_path / f"dh-variant{count[0]}.toml"
        path.write_text(text + append, encoding="utf-8")
        return path

    return make


def plan_json(run_cli, cfg, *args):
    r = run_cli("plan", cfg, *args, "--json")
    assert r.code == 0, r
    return json.loads(r.out)["jobs"]


def fails(run_cli, tmp_path, *args) -> str:
    """Run the CLI, expect exit 2 with a message and nothing written; return stderr."""
    r = run_cli(*args)
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.startswith("imgpipe: error:"), r.err
    assert not (tmp_path / "imgpipe-runs").exists()
    assert list(tmp_path.rglob("jobs.txt")) == []
    return r.err


def dhc(path, level="L2"):
    return DataHandlerConfig(config_file=Path(path), data_level=level)


# ---------------------------------------------------------------- patterns and layouts


def test_one_job_per_ms_sw_by_sw_then_obs_id(run_cli, img, tree, dh_file):
    jobs = plan_json(run_cli, img(dh=dh_file), "202312*_NT04")
    expected = [(o, s) for s in SW for o in N1]  # nenucal's loop order: SW, then obs_id
    assert [(j["obs_id"], j["sw"]) for j in jobs] == expected
    assert [j["ms"] for j in jobs] == [[tree.l2(o, s)] for o, s in expected]
    assert all(j["host"] is None for j in jobs)  # run_on_file_host is off
    assert all(j["name"] == j["ms"][0] + "/images/img" for j in jobs)  # default out-dir $ms_in$/images


def test_several_obs_patterns_with_sw_glob_in_file_order(run_cli, img, tree, dh_file):
    jobs = plan_json(run_cli, img(dh=dh_file), "20231202_NT04,20231201_NT04:SW0[12]")
    # obs_ids come in file order whatever the order of the OBSPATs
    assert [(j["obs_id"], j["sw"]) for j in jobs] == [
        (N1[0], "SW01"), (N1[1], "SW01"), (N1[0], "SW02"), (N1[1], "SW02"),
    ]


def test_several_sw_patterns_and_spaces(tree):
    ms = resolve_patterns(dhc(tree.data_handler), [" 20231201_NT04 :SW03,SW01"])
    assert [(m.obs_id, m.sw) for m in ms] == [(N1[0], "SW01"), (N1[0], "SW03")]


def test_overlapping_patterns_image_each_ms_once(run_cli, img, tree):
    jobs = plan_json(run_cli, img(), "20231201_NT04", "2023120[12]_NT04:SW01", "20231201_NT04:SW02")
    assert [j["ms"][0] for j in jobs] == [tree.l2(N1[0], s) for s in SW] + [tree.l2(N1[1], "SW01")]


def test_composite_and_its_members_each_ms_once(tree):
    ms = resolve_patterns(dhc(tree.data_handler), ["20231201_NT04:SW*"])  # SW01..SW03 and SWALL
    assert [(m.path, m.sw) for m in ms] == [(tree.l2(N1[0], s), s) for s in SW]


def test_nodes_come_from_the_node_map(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file), ["202312*_NT04"])
    assert [(m.obs_id, m.sw, m.node) for m in ms] == [(o, s, nt.OBS_IDS[o][SW.index(s)]) for s in SW for o in N1]
    assert all(f"/net/{m.node}/data/L2/{m.obs_id}/{m.sw}.MS" in m.path for m in ms)


def test_subband_level_one_ms_per_subband(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file, "L1"), ["20231202_NT04:SW02"])
    assert [m.path for m in ms] == tree.l1(N1[1], "SW02")
    assert [m.path.rsplit("/", 1)[1] for m in ms] == ["SB102.MS", "SB103.MS"]
    assert {(m.obs_id, m.sw, m.node) for m in ms} == {(N1[1], "SW02", "node003")}


def test_composite_sw_resolves_to_its_members_ms(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file, "L1"), ["20231201_NT04:SWALL"])
    assert [m.path for m in ms] == [p for s in SW for p in tree.l1(N1[0], s)]
    assert {m.sw for m in ms} == {"SWALL"}  # grouped as selected (see the module docstring)
    assert [m.node for m in ms] == ["node001"] * 2 + ["node002"] * 2 + ["node003"] * 2


def test_n2_chunks_from_every_node_sorted_by_index(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file), [f"{nt.N2_A}:SW02"])
    assert [m.path for m in ms] == tree.chunks(nt.N2_A, "SW02")
    assert [chunk_index(m.path) for m in ms] == [0, 1, 2, 3, 4]
    assert [m.node for m in ms] == [nt.N2_CHUNKS[nt.N2_A][i] for i in range(5)]
    assert {(m.obs_id, m.sw) for m in ms} == {(nt.N2_A, "SW02")}


def test_n2_composite_has_its_own_chunks_else_its_members(tree):
    own = resolve_patterns(dhc(tree.data_handler), [f"{nt.N2_A}:SWALL"])
    assert [m.path for m in own] == tree.chunks(nt.N2_A, "SWALL")
    members = resolve_patterns(dhc(tree.data_handler), [f"{nt.N2_B}:SWALL"])
    assert [m.path for m in members] == [p for s in SW for p in tree.chunks(nt.N2_B, s)]
    assert {m.sw for m in own + members} == {"SWALL"}


def test_n2_at_subband_level_is_its_n1_subbands(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file, "L1"), [f"{nt.N2_A}:SW01"])
    assert [m.path for m in ms] == tree.l1(N1[0], "SW01") + tree.l1(N1[1], "SW01")
    assert [m.node for m in ms] == ["node001", "node001", "node002", "node002"]
    assert {m.obs_id for m in ms} == {nt.N2_A}


def test_n2_group_resolves_to_its_members(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file), [f"{nt.GROUP}:SW01"])
    assert [m.path for m in ms] == tree.chunks(nt.N2_A, "SW01") + tree.chunks(nt.N2_B, "SW01")
    assert {m.obs_id for m in ms} == {nt.GROUP}


def test_n2_group_combined_is_one_obs_id(run_cli, img, tree, dh_file):
    cfg = img(dh=dh_file, wsclean="out-dir = 'images/$obs_id$/$sw$'\nchannels-out = 'all'")
    jobs = plan_json(run_cli, cfg, f"{nt.GROUP}:SW0[12]", "--combine")
    assert [(j["obs_id"], j["sw"], len(j["ms"])) for j in jobs] == [(nt.GROUP, "SW01", 7), (nt.GROUP, "SW02", 7)]
    assert jobs[0]["name"].endswith(f"/images/{nt.GROUP}/SW01/img")
    assert jobs[0]["channels_out"] == nt.SW_NCHAN


def test_lst_level_bins_sorted_and_date_tokens(tree, dh_file):
    ms = resolve_patterns(dhc(dh_file, "L3"), ["20231201_NT04:SW01"])
    assert [m.path for m in ms] == [tree.l3(N1[0], "SW01", 5), tree.l3(N1[0], "SW01", 15)]
    assert "/data/L3/2023/12/20231201_NT04/SW01_LST005.MS" in ms[0].path


# ---------------------------------------------------------------- grouping


def test_combine_one_job_per_sw_and_obs_id(run_cli, img, tree, dh_file):
    cfg = img(dh=dh_file, level="L1", wsclean="data-column = 'DATA'\nchannels-out = 'all'")
    jobs = plan_json(run_cli, cfg, "2023120[12]_NT04:SW0[12]", "--combine")
    keys = [(s, o) for s in ("SW01", "SW02") for o in N1[:2]]
    assert [(j["sw"], j["obs_id"]) for j in jobs] == keys
    assert [j["ms"] for j in jobs] == [tree.l1(o, s) for s, o in keys]
    # two subband MSs of 4 channels each: the distinct channels of the whole group
    assert [j["channels_out"] for j in jobs] == [2 * nt.SB_NCHAN] * 4
    assert all(j["argv"][j["argv"].index("-channels-out") + 1] == "8" for j in jobs)
    assert jobs[0]["name"] == tree.l1(N1[0], "SW01")[-1] + "/images/img"  # named after the last MS


def test_combine_obs_ids_one_job_per_sw(run_cli, img, tree, dh_file, tmp_path):
    cfg = img(dh=dh_file, wsclean="out-dir = 'images/$sw$'\nchannels-out = 'all'")
    jobs = plan_json(run_cli, cfg, "202312*_NT04", "--combine", "--combine_obs_ids")
    assert [(j["sw"], j["obs_id"]) for j in jobs] == [(s, None) for s in SW]
    assert [j["ms"] for j in jobs] == [[tree.l2(o, s) for o in N1] for s in SW]
    assert [j["name"] for j in jobs] == [str(tmp_path / "images" / s / "img") for s in SW]
    assert [j["channels_out"] for j in jobs] == [nt.SW_NCHAN] * 3  # same band in every obs_id
    jobs2 = plan_json(run_cli, cfg, "202312*_NT04", "-c", "--combine-obs-ids")
    assert [j["ms"] for j in jobs2] == [j["ms"] for j in jobs]


def test_composite_combined_counts_channels_of_every_member(run_cli, img, tree):
    cfg = img(wsclean="channels-out = 'all'")
    jobs = plan_json(run_cli, cfg, "20231201_NT04:SWALL", "--combine")
    assert len(jobs) == 1
    assert jobs[0]["ms"] == [tree.l2(N1[0], s) for s in SW]
    assert jobs[0]["sw"] == "SWALL"
    assert jobs[0]["channels_out"] == 3 * nt.SW_NCHAN  # 50, 60 and 70 MHz bands


def test_obs_id_and_sw_tokens_in_out_dir_and_name(run_cli, img, tmp_path):
    cfg = img(wsclean="out-dir = 'out/$obs_id$'\nname = '$sw$-img'")
    jobs = plan_json(run_cli, cfg, "20231203_NT04:SW02")
    assert jobs[0]["name"] == str(tmp_path / "out" / "20231203_NT04" / "SW02-img")


def test_obs_id_token_is_empty_when_combined_over_obs_ids_as_in_nenucal(run_cli, img, tmp_path):
    cfg = img(wsclean="out-dir = 'images/$obs_id$/$sw$'")
    jobs = plan_json(run_cli, cfg, "202312*_NT04", "--combine", "--combine_obs_ids")
    assert [j["name"] for j in jobs] == [str(tmp_path / "images" / s / "img") for s in SW]
    assert [j["obs_id"] for j in jobs] == [None] * len(SW)


def test_combine_obs_ids_alone_is_caught_as_a_collision(run_cli, img, tmp_path):
    cfg = img(wsclean="out-dir = 'images/$sw$'")
    err = fails(run_cli, tmp_path, "plan", cfg, "202312*_NT04", "--combine_obs_ids")
    assert "would write the same images" in err
    assert str(tmp_path / "images" / "SW01" / "img") in err
    assert "--combine_obs_ids only takes effect with --combine" in err
    # with $obs_id$ in out-dir it is one job per MS, as without the option
    cfg = img(wsclean="out-dir = 'images/$obs_id$/$sw$'", name="img2.toml")
    assert len(plan_json(run_cli, cfg, "202312*_NT04", "--combine_obs_ids")) == 9


# ---------------------------------------------------------------- hosts


def test_hosts_from_the_path_pattern(run_cli, img, tree, dh_file):
    cfg = img(dh=dh_file, worker=f"run_on_file_host = true\nrun_on_file_host_pattern = '{HOST_PATTERN}'")
    jobs = plan_json(run_cli, cfg, "202312*_NT04")
    assert [j["host"] for j in jobs] == [nt.OBS_IDS[o][SW.index(s)] for s in SW for o in N1]


def test_hosts_from_the_node_map_when_the_pattern_does_not_match(run_cli, img, variant, tree):
    # a level on shared storage: the path names no node, the node map still does
    shared = tree.root / "net" / "node002" / "data" / "L2"
    dh = variant(append=f"\n[data_levels.SHARED]\npath = '{shared}'\n")
    cfg = img(dh=dh, level="SHARED",
              worker="run_on_file_host = true\nrun_on_file_host_pattern = '/nowhere/(node\\d{3})/'")
    jobs = plan_json(run_cli, cfg, "20231201_NT04:SW02")
    assert jobs[0]["ms"] == [tree.l2(N1[0], "SW02")]
    assert jobs[0]["host"] == "node002"


def test_hosts_from_the_node_map_without_a_pattern(run_cli, img, tree):
    cfg = img(worker="run_on_file_host = true")
    r = run_cli("plan", cfg, "202312*_NT04", "--json")
    if r.code == 2 and "needs run_on_file_host_pattern" in r.err:
        pytest.skip("config.py still requires run_on_file_host_pattern (change requested)")
    assert r.code == 0, r
    jobs = json.loads(r.out)["jobs"]
    assert [j["host"] for j in jobs] == [nt.OBS_IDS[o][SW.index(s)] for s in SW for o in N1]


def test_combined_job_runs_where_most_of_its_ms_are(run_cli, img, tree):
    cfg = img(worker=f"run_on_file_host = true\nrun_on_file_host_pattern = '{HOST_PATTERN}'")
    jobs = plan_json(run_cli, cfg, f"{nt.N2_A}:SW01", "--combine")
    assert jobs[0]["ms"] == tree.chunks(nt.N2_A, "SW01")
    assert "/node004/" in jobs[0]["ms"][-1]  # the last chunk is on node004 ...
    assert jobs[0]["host"] == "node003"  # ... but node003 holds 3 of the 5
    # a tie (one MS on each of three nodes): the node of the last MS, as nenucal
    jobs = plan_json(run_cli, cfg, "202312*_NT04:SW01", "--combine", "--combine_obs_ids")
    assert jobs[0]["host"] == nt.OBS_IDS[N1[-1]][0] == "node003"


# ---------------------------------------------------------------- errors


def test_missing_data_handler_file(run_cli, img, tmp_path):
    cfg = img(config_file="nope.toml")
    err = fails(run_cli, tmp_path, "plan", cfg, "202312*_NT04")
    assert "data handler file not found" in err and str(tmp_path / "nope.toml") in err
    err = fails(run_cli, tmp_path, "inputs", cfg, "202312*_NT04")
    assert "data handler file not found" in err


def test_data_handler_invalid_toml_names_the_line(run_cli, img, variant, tmp_path):
    dh = variant(replace={"[obs_ids]": "[obs_ids"})
    err = fails(run_cli, tmp_path, "plan", img(dh=dh), "202312*_NT04")
    assert str(dh) in err and "invalid TOML" in err and "line" in err


@pytest.mark.parametrize(
    "replace, append, message",
    [
        ({"[obs_ids]": "[other_obs_ids]"}, "", "[obs_ids] is missing"),
        ({"[spectral_windows]": "[spectral_window]"}, "", "[spectral_windows] is missing"),
        ({"SW02 = [102, 103]": "SW02 = [102]"}, "", "expected [first, last] subbands"),
        ({"SW02 = [102, 103]": "SW02 = [103, 102]"}, "", "first <= last"),
        ({"SWALL = ['SW01', 'SW02', 'SW03']": "SWALL = ['SW01', 'SW09']"}, "", "member 'SW09'"),
        ({"SWALL = ['SW01', 'SW02', 'SW03']": "SWALL = ['SW01', 'SWX']\nSWX = ['SWALL']"}, "", "contain each other"),
        ({"\"20231202_NT04\" = ['node002', 'node003', 'node001']": "\"20231202_NT04\" = 'node002'"}, "",
         "expected a list of node names"),
        ({"[data_levels.L2]\npath =": "[data_levels.L2]\nwhere ="}, "", "path is required"),
        ({}, "\n[data_level_path]\nL2 = '/x'\n", "give one of the two formats"),
        ({"nodes = 'node[003-004]'": "nodes = 'node[004-003]'"}, "", "goes backwards"),
        ({"'20231201_NT04_N2', '20231210_NT04_N2']": "'20231201_NT04_N2', 'NOPE']"}, "",
         "member 'NOPE' is not defined"),
        ({}, "\n[n2_group.X]\n", "expected a list of obs_ids"),
    ],
)
def test_malformed_data_handler(tree, replace, append, message):
    text = tree.data_handler.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(ImgpipeError) as e:
        parse_data_handler(tomllib.loads(text + append), "dh.toml")
    assert message in str(e.value)
    assert str(e.value).startswith("dh.toml")


def test_data_handler_without_levels(tree):
    text = tree.data_handler_old.read_text(encoding="utf-8").replace("[data_level_path]", "[data_level_paths]")
    with pytest.raises(ImgpipeError, match="no data levels"):
        parse_data_handler(tomllib.loads(text), "dh.toml")


def test_malformed_data_handler_through_the_cli(run_cli, img, variant, tmp_path):
    dh = variant(replace={"SW02 = [102, 103]": "SW02 = 'wide'"})
    err = fails(run_cli, tmp_path, "plan", img(dh=dh), "202312*_NT04")
    assert f"{dh}: [spectral_windows] SW02" in err


def test_unknown_data_level_lists_the_known_ones(run_cli, img, tmp_path, dh_file):
    err = fails(run_cli, tmp_path, "plan", img(dh=dh_file, level="L2b"), "202312*_NT04")
    assert "unknown data level 'L2b'" in err and "L1, L2, L3" in err and "did you mean 'L2'" in err


def test_unknown_token_in_the_level_path(run_cli, img, variant, tmp_path):
    dh = variant(replace={"/data/L2/'": "/data/L2/%SW%'"})
    err = fails(run_cli, tmp_path, "plan", img(dh=dh), "202312*_NT04")
    assert "%SW%" in err and "%NODE%" in err


def test_pattern_that_matches_nothing(run_cli, img, tmp_path):
    err = fails(run_cli, tmp_path, "plan", img(), "2024*_NT04", "20231201_NT04,20231301_NT04:SW09")
    assert "3 problem(s)" in err  # all listed
    assert "'2024*_NT04' matches no obs_id" in err
    assert "'20231301_NT04' matches no obs_id" in err and "did you mean '20231201_NT04'" in err
    assert "SW pattern 'SW09' matches no spectral window" in err and "SW01, SW02, SW03, SWALL" in err
    err = fails(run_cli, tmp_path, "plan", img(), ":SW01")
    assert "empty obs_id pattern" in err


def test_more_than_one_colon(run_cli, img, tmp_path):
    err = fails(run_cli, tmp_path, "plan", img(), "20231201_NT04:SW01:SW02", "2024*")
    assert "2 problem(s)" in err and "'2024*' matches no obs_id" in err  # reported with the others
    assert "pattern '20231201_NT04:SW01:SW02' has 2 ':' -- at most one is allowed" in err
    assert "OBSPAT[,OBSPAT...][:SWPAT]" in err
    with pytest.raises(ImgpipeError, match="at most one"):
        split_pattern("a:b:c")


def test_node_list_shorter_than_the_sw_list(run_cli, img, variant, tmp_path, tree):
    dh = variant(replace={"\"20231203_NT04\" = ['node003', 'node001', 'node002']":
                          "\"20231203_NT04\" = ['node003', 'node001']"})
    err = fails(run_cli, tmp_path, "plan", img(dh=dh), "202312*_NT04:SW01")  # even for SW01 alone
    assert "obs_id 20231203_NT04: [obs_ids] lists 2 node(s) for 3 spectral windows" in err
    assert err.count("20231203_NT04: [obs_ids]") == 1  # said once
    # the other obs_ids are fine
    assert len(resolve_patterns(dhc(dh), ["2023120[12]_NT04"])) == 6


def test_every_missing_ms_is_listed(run_cli, img, variant, tmp_path, tree, dh_file):
    dh = variant(source=dh_file, replace={"[obs_ids]\n": "[obs_ids]\n\"20231204_NT04\" = ['node004', 'node004', 'node004']\n"})
    err = fails(run_cli, tmp_path, "plan", img(dh=dh), "2023120[34]_NT04")
    missing = [str(tree.net / "node004" / "data" / "L2" / "20231204_NT04" / f"{s}.MS") for s in SW]
    assert "3 problem(s)" in err
    assert all(f"{p}: does not exist" in err for p in missing)


def test_n2_obs_id_without_chunks(run_cli, img, variant, tmp_path, tree):
    dh = variant(replace={"[n2_obs_ids]\n": "[n2_obs_ids]\n\"20231220_NT04_N2\" = {nodes = 'node00[1-2]', n1_obs_ids = []}\n"})
    err = fails(run_cli, tmp_path, "plan", img(dh=dh), "20231220_NT04_N2:SW01")
    assert "obs_id 20231220_NT04_N2, SW SW01: no MS" in err and "SW01_T###.MS" in err
    assert "node001" in err and "node002" in err
    rows = describe_inputs(dhc(dh), ["20231220_NT04_N2:SW01"])
    assert [(r["node"], r["exists"], r["readable"]) for r in rows] == [("node001", False, False), ("node002", False, False)]


def test_obs_id_tokens_without_data_handler(run_cli, write_config, ms_factory, tmp_path):
    ms = ms_factory("SW01.MS", corrected_data=True, nchan=4, ntimes=2, nant=3)
    for token in ("$obs_id$", "$sw$"):
        cfg = write_config(f"[wsclean]\nname = 'img'\nout-dir = 'images/{token}'\n")
        err = fails(run_cli, tmp_path, "plan", cfg, ms)
        assert token in err and "only known with a [data_handler]" in err


def test_data_handler_path_relative_to_the_config_then_cwd(run_cli, img, tree, tmp_path):
    confdir = tmp_path / "conf"
    confdir.mkdir()
    (confdir / "dh.toml").write_text(tree.data_handler.read_text(encoding="utf-8"), encoding="utf-8")
    cfg = img(config_file="dh.toml", where=confdir)
    r = run_cli("plan", cfg, "20231201_NT04", "--json")  # cwd is tmp_path, not confdir
    assert r.code == 0, r
    assert "warning" not in r.err
    other = tmp_path / "other"
    cfg = img(config_file="conf/dh.toml", where=other)
    r = run_cli("plan", cfg, "20231201_NT04", "--json")
    assert r.code == 0, r
    assert "warning" in r.err and "current directory" in r.err
    assert len(json.loads(r.out)["jobs"]) == 3


# ---------------------------------------------------------------- imgpipe inputs


def test_inputs_json(run_cli, img, tree, dh_file, tmp_path):
    r = run_cli("inputs", img(dh=dh_file), "20231201_NT04,20231203_NT04:SW02", "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == {"inputs": [
        {"obs_id": o, "sw": "SW02", "node": nt.OBS_IDS[o][1], "path": tree.l2(o, "SW02"),
         "exists": True, "readable": True}
        for o in (N1[0], N1[2])
    ]}
    assert not (tmp_path / "imgpipe-runs").exists()


def test_inputs_text(run_cli, img, tree):
    r = run_cli("inputs", img(), f"{nt.N2_A}:SW03")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["obs_id", "SW", "node", "state", "path"]
    assert [line.split() for line in lines[1:-1]] == [
        [nt.N2_A, "SW03", nt.N2_CHUNKS[nt.N2_A][i], "ok", tree.chunk(nt.N2_A, "SW03", i)] for i in range(5)
    ]
    assert lines[-1] == "5 MS(s) selected"


def test_inputs_reports_missing_and_unreadable(run_cli, img, variant, tree, tmp_path):
    dh = variant(replace={"[obs_ids]\n": "[obs_ids]\n\"20231204_NT04\" = ['node004', 'node004', 'node004']\n"},
                 append=f"\n[data_levels.X]\npath = '{tmp_path}/x/%NODE%'\n")
    not_ms = tmp_path / "x" / "node004" / "20231204_NT04" / "SW01.MS"
    not_ms.mkdir(parents=True)  # exists, but is no casacore table
    rows = describe_inputs(dhc(dh, "X"), ["20231204_NT04"])
    assert [(r["path"], r["exists"], r["readable"]) for r in rows] == [
        (str(not_ms), True, False),
        (str(not_ms.parent / "SW02.MS"), False, False),
        (str(not_ms.parent / "SW03.MS"), False, False),
    ]
    r = run_cli("inputs", img(dh=dh, level="X"), "20231204_NT04")
    assert r.code == 1, r  # (something is missing: a script can tell)
    assert "unreadable" in r.out and r.out.count("MISSING") == 2
    assert "3 MS(s) selected, 3 missing or unreadable" in r.out


def test_inputs_errors_exit_2(run_cli, img, tmp_path):
    err = fails(run_cli, tmp_path, "inputs", img(), "2024*")
    assert "'2024*' matches no obs_id" in err
    err = fails(run_cli, tmp_path, "inputs", img(level="L9"), "2023*")
    assert "unknown data level 'L9'" in err


# ---------------------------------------------------------------- pure functions


def _dh(levels: str, extra: str = "") -> object:
    return parse_data_handler(tomllib.loads(f"""
[spectral_windows]
SW01 = [1, 2]
SW02 = [3, 4]
[obs_ids]
"20230405_X" = ['n1', 'n2']
[n2_obs_ids]
"20230501_N2" = {{nodes = 'n[3-4]', n1_obs_ids = ['20230405_X']}}
{levels}
{extra}
"""), "/base/dh.toml")


def test_path_tokens_and_obs_id_subdirectory():
    dh = _dh("""
[data_levels.A]
path = '/d/%NODE%/%YEAR%/%MONTH%/%OBS_ID%/%N1_OBS_ID%/'
[data_levels.B]
path = '/d/%NODE%/B'
[data_levels.C]
path = 'rel/%NODE%/%N1_OBS_ID%'
""")
    a, b, c = (get_level(dh, n) for n in "ABC")
    assert dir_path(dh, a, "20230405_X", "n1") == "/d/n1/2023/04/20230405_X/20230405_X"
    assert dir_path(dh, a, "20230501_N2", "n3", "20230405_X") == "/d/n3/2023/05/20230501_N2/20230405_X"
    assert dir_path(dh, b, "20230405_X", "n2") == "/d/n2/B/20230405_X"  # obs_id appended
    assert dir_path(dh, c, "20230501_N2", "n4", "20230405_X") == "/base/rel/n4/20230405_X"  # not appended
    # a value is never substituted again
    assert dir_path(dh, b, "2023%NODE%", "n1") == "/d/n1/B/2023%NODE%"


def test_n2_n1_obs_id_in_template(tmp_path):
    d = tmp_path / "n3" / "20230405_X"
    d.mkdir(parents=True)
    (d / "SW01_T007.MS").mkdir()
    dh = _dh(f"[data_levels.L2]\npath = '{tmp_path}/%NODE%/%N1_OBS_ID%'")
    from imgpipe.data_handler import resolve

    entries, problems = resolve(dh, get_level(dh, "L2"), ["20230501_N2:SW01"])
    assert problems == []
    assert [(e.path, e.node, e.found) for e in entries] == [(str(d / "SW01_T007.MS"), "n3", True)]


@pytest.mark.parametrize(
    "levels, name, subbands, lst",
    [
        ("[data_levels.L1]\npath = '/x'", "L1", True, False),
        ("[data_levels.l1_raw]\npath = '/x'", "l1_raw", True, False),
        ("[data_levels.L1]\npath = '/x'\nsubbands = false", "L1", False, False),
        ("[data_levels.RAW]\npath = '/x'\nsubbands = true", "RAW", True, False),
        ("[data_levels.RAW]\npath = '/x'\nsubbands = true\n[data_levels.L1B]\npath = '/y'\ninput = 'RAW'",
         "L1B", False, False),
        ("[data_levels.L2]\npath = '/x'\nlst = {start = 0}", "L2", False, True),
        ("[data_levels.L2]\npath = '/x'\nlst = {start = 0}\n[data_levels.L3]\npath = '/y'\ninput = 'L2'",
         "L3", False, True),
        ("[data_levels.L1]\npath = '/x'\n[data_levels.L2]\npath = '/y'\ninput = 'L1'\nlst = {start = 0}\n"
         "[data_levels.L3]\npath = '/z'\ninput = 'L2'\nsplit = {n_slots = 10}", "L3", False, False),
        ("[data_level_path]\nL1 = '/x'\nL2 = '/y'\n[l1_to_l2_config.L2]\ndppp_config = 'p'", "L2", False, False),
        ("[data_level_path]\nL1_AVG = '/y'\n[l1_to_l2_config.L1_AVG]\ndppp_config = 'p'", "L1_AVG", True, False),
        ("[data_level_path]\nL3 = '/y'\n[lst_binning.L3]\nstart = 0", "L3", False, True),
    ],
)
def test_level_layouts(levels, name, subbands, lst):
    dh = _dh(levels)
    assert dh.is_subband_level(name) is subbands
    assert dh.is_lst_layout(name) is lst


def test_split_pattern_and_chunk_index():
    assert split_pattern("a,b") == (["a", "b"], None)
    assert split_pattern("a:SW0[12]") == (["a"], ["SW0[12]"])
    assert split_pattern("a:") == (["a"], [""])
    assert chunk_index("/d/SW01_T012.MS") == 12 and chunk_index("/d/SW01_LST155.MS") == 155


def test_empty_sw_pattern_and_errors_collected():
    dh = _dh("[data_levels.L2]\npath = '/x'")
    from imgpipe.data_handler import resolve

    _, problems = resolve(dh, get_level(dh, "L2"), ["20230405_X:", "nope", "20230405_X:SW9"])
    assert len(problems) == 3 and "empty SW pattern" in problems[0]


def test_n2_group_and_n2_checks():
    with pytest.raises(ImgpipeError, match="belongs to two groups"):
        _dh("[data_levels.L2]\npath = '/x'", "[n2_group]\nG1 = ['20230501_N2']\nG2 = ['20230501_N2']")
    with pytest.raises(ImgpipeError, match="a group needs a name of its own"):
        _dh("[data_levels.L2]\npath = '/x'", "[n2_group]\n\"20230405_X\" = ['20230501_N2']")
    with pytest.raises(ImgpipeError, match="is also in \\[obs_ids\\]"):
        _dh("[data_levels.L2]\npath = '/x'", "[n2_obs_ids.\"20230405_X\"]\nnodes = 'n1'")
    dh = _dh("[data_levels.L1]\npath = '/x'\n[data_levels.L2]\npath = '/y/%N1_OBS_ID%'",
             "[n2_obs_ids.\"20230601_N2\"]\nnodes = 'n3'")
    from imgpipe.data_handler import resolve

    for level in ("L1", "L2"):  # the N1 obs_ids are needed for the subbands and for %N1_OBS_ID%
        _, problems = resolve(dh, get_level(dh, level), ["20230601_N2"])
        assert problems and all("N2 obs_id 20230601_N2: no n1_obs_ids" in p for p in problems)


def test_node_from_the_map_must_be_a_worker_node(run_cli, img, tmp_path):
    cfg = img(worker=f"run_on_file_host = true\nrun_on_file_host_pattern = '{HOST_PATTERN}'")
    r = run_cli("plan", cfg, "20231201_NT04", "--nodes", "node001,node003")
    assert r.code == 2, r
    assert "'node002'" in r.err and "[worker] nodes" in r.err
    assert not (tmp_path / "imgpipe-runs").exists()


def test_the_jobs_file_keeps_each_job_s_obs_id_and_sw_and_status_shows_them(run_cli, img, tree, tmp_path):
    """Every MS of a data handler is SW01.MS: status names the data by obs_id/SW, from the jobs file."""
    from imgpipe import jobs_file

    jobs_path = tmp_path / "run" / "jobs.txt"
    r = run_cli("plan", img(), "2023120[12]_NT04:SW0[12]", "--jobs-file", jobs_path)
    assert r.code == 0, r
    planned = [(j["obs_id"], j["sw"]) for j in plan_json(run_cli, img(), "2023120[12]_NT04:SW0[12]")]
    plan = jobs_file.read(jobs_path)
    assert [(j.obs_id, j.sw) for j in plan.jobs] == planned and len(set(planned)) == 4
    r = run_cli("status", jobs_path.parent, "--json")
    rows = json.loads(r.out)["jobs"]
    assert [(j["obs_id"], j["sw"]) for j in rows] == planned
    r = run_cli("status", jobs_path.parent)
    assert all(f"{o}/{s}" in r.out for o, s in planned), r.out
    # the data line names the jobs' data only: the plan's digest (and so the run's name) is the same
    text = jobs_path.read_text()
    assert text.count("\n# data: ") == 1
    edited = jobs_path.parent / "edited" / "jobs.txt"
    edited.parent.mkdir()
    edited.write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("# data: ")))
    assert jobs_file.read(edited).digest == plan.digest


def test_runs_names_the_obs_ids_of_a_run(run_cli, img, tmp_path):
    jobs_path = tmp_path / "imgpipe-runs" / "x" / "jobs.txt"
    assert run_cli("plan", img(), "2023120[12]_NT04:SW01", "--jobs-file", jobs_path).code == 0
    r = run_cli("runs", "--json", jobs_path.parent, cwd=tmp_path)  # (a plan never run: named to be listed)
    (run,) = json.loads(r.out)["runs"]
    assert run["inputs"].startswith("2 MSs of 20231201_NT04 .. 20231202_NT04"), run


def test_skip_missing_plans_the_others_and_lists_what_it_left_out(run_cli, img, tree, tmp_path):
    """A gap in a night's data (a node down, a SW not produced) is normal: the refusal names
    --skip-missing, which plans the rest and says which MSs it left out."""
    gone = Path(tree.l2("20231202_NT04", "SW02"))
    hidden = gone.with_name("hidden")
    gone.rename(hidden)
    try:
        err = fails(run_cli, tmp_path, "plan", img(), "2023120[12]_NT04")
        assert f"{gone}: does not exist" in err and "--skip-missing" in err, err
        r = run_cli("inputs", img(), "2023120[12]_NT04")
        assert r.code == 1 and "MISSING" in r.out and "--skip-missing" in r.out, r
        r = run_cli("plan", img(), "2023120[12]_NT04", "--skip-missing", "--json")
        assert r.code == 0, r
        jobs = json.loads(r.out)["jobs"]
        assert len(jobs) == 5 and str(gone) not in [m for j in jobs for m in j["ms"]]
        assert "--skip-missing: 1 MS(s) left out of the plan:" in r.err and f"  - {gone}: does not exist" in r.err
        assert [j["id"] for j in jobs] == [f"{i:04d}" for i in range(1, 6)]
    finally:
        hidden.rename(gone)


def test_status_of_a_night_folds_the_jobs_not_started_and_filters_as_squeue_does(run_cli, img, tmp_path,
                                                                                 monkeypatch):
    import imgpipe.cli as cli

    jobs_path = tmp_path / "run" / "jobs.txt"
    assert run_cli("plan", img(), "202312*_NT04", "--jobs-file", jobs_path).code == 0
    monkeypatch.setattr(cli, "DONE_LISTED", 4)  # (a night of 500 jobs, in small)
    r = run_cli("status", jobs_path.parent)
    assert r.code == 3 and "9 jobs not started: 0001-0009 (`imgpipe status --all` lists each)" in r.out, r.out
    assert len(r.out.splitlines()) <= 4, r.out  # not a line per job
    r = run_cli("status", jobs_path.parent, "--obs-id", "20231201*", "--sw", "SW0[12]")
    listed = [ln.split()[0] for ln in r.out.splitlines() if ln[:4].isdigit()]
    assert len(listed) == 2 and all("20231201_NT04/SW0" in ln for ln in r.out.splitlines() if ln[:4].isdigit())
    assert "shown: 2 of 9 job(s)" in r.out, r.out
    r = run_cli("status", jobs_path.parent, "--state", "failed,running", "--json")
    doc = json.loads(r.out)
    assert doc["jobs"] == [] and doc["counts"]["not started"] == 9
    r = run_cli("status", jobs_path.parent, "--state", "not-started", "--host", "nobody")
    assert "shown: 0 of 9 job(s)" in r.out
    with pytest.raises(SystemExit):
        run_cli("status", jobs_path.parent, "--state", "finished")
