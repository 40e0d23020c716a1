"""imgpipe.wsclean_command: TOML values -> WSClean argv words, and their checks.

Uses the real option table (imgpipe.wsclean_options); the last tests render a
whole config through ``imgpipe plan --json`` to see the words in the command.
"""

from __future__ import annotations

import json

import pytest

from imgpipe.errors import ImgpipeError
from imgpipe.wsclean_command import check_value, option_words
from imgpipe.wsclean_options import OPTIONS, lookup


def words(name, value):
    opt = lookup(name)
    check_value(opt, value, f"img.toml: [wsclean] {name}")  # every rendered value must pass the check
    return option_words(opt, value)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        # flags: true -> the flag alone
        ("multiscale", True, []),
        ("join-channels", True, []),
        # single values: one word
        ("niter", 1000, ["1000"]),
        ("auto-threshold", 3.0, ["3.0"]),
        ("mgain", 0.85, ["0.85"]),
        ("niter", "1000", ["1000"]),
        ("scale", "1amin", ["1amin"]),
        ("threshold", "1mJy", ["1mJy"]),
        ("data-column", "CORRECTED_DATA", ["CORRECTED_DATA"]),
        # multi-value strings: separate words
        ("size", "1024 1024", ["1024", "1024"]),
        ("size", "  1024\t1024 ", ["1024", "1024"]),
        ("weight", "briggs -0.5", ["briggs", "-0.5"]),
        ("weight", "briggs 0", ["briggs", "0"]),
        ("weight", "natural", ["natural"]),
        ("shift", "12h00m00s +60d00m00s", ["12h00m00s", "+60d00m00s"]),
        ("beam-shape", "1amin 1amin 3deg", ["1amin", "1amin", "3deg"]),
        ("spectral-correction", "150e6 83.084,-0.699", ["150e6", "83.084,-0.699"]),
        # path values: one word, spaces and all
        ("temp-dir", "/scratch/my tmp", ["/scratch/my tmp"]),
        ("fits-mask", "/data/masks/deep field.fits", ["/data/masks/deep field.fits"]),
        ("casa-mask", "a b c", ["a b c"]),
        # a multi-path option: a string splits, a list keeps each path whole
        ("restore", "res.fits model.fits out.fits", ["res.fits", "model.fits", "out.fits"]),
        ("restore", ["my res.fits", "model.fits", "out.fits"], ["my res.fits", "model.fits", "out.fits"]),
        ("apply-facet-solutions", "sol.h5 amplitude000,phase000", ["sol.h5", "amplitude000,phase000"]),
        # comma lists: a TOML list is comma-joined into one word, a string stays one word
        ("pol", ["xx", "yy"], ["xx,yy"]),
        ("pol", "xx,yy", ["xx,yy"]),
        ("pol", "I", ["I"]),
        ("multiscale-scales", [0, 4, 8, 16], ["0,4,8,16"]),
        ("spws", [0, 1], ["0,1"]),
        ("channel-division-frequencies", [1.2e8, 1.5e8], ["120000000.0,150000000.0"]),
        # TOML lists on multi-value options: separate words
        ("size", [1024, 1024], ["1024", "1024"]),
        ("interval", [0, 10], ["0", "10"]),
        ("weight", ["briggs", -0.5], ["briggs", "-0.5"]),
        ("beam-shape", ["1amin", "1amin", "3deg"], ["1amin", "1amin", "3deg"]),
        # a value with shell characters is still one word (quoting is the jobs file's job)
        ("data-column", "DATA;rm -rf ~", ["DATA;rm -rf ~"]),
    ],
)
def test_option_words(name, value, expected):
    assert words(name, value) == expected


@pytest.mark.parametrize(
    "name, value, parts",
    [
        ("multiscale", "yes", ["-multiscale is a flag without a value", "got 'yes'", "multiscale = true"]),
        ("multiscale", 1, ["-multiscale is a flag", "got 1"]),
        ("multiscale", "true", ["is a flag", "got 'true'"]),
        ("niter", True, ["-niter needs 1 value, got true", "give its value", "clean iterations"]),
        ("size", True, ["-size needs 2 values, got true"]),
        ("size", "1024", ["-size takes 2 values, got 1: '1024'", "separated by spaces", "<width> <height>"]),
        ("size", 1024, ["-size takes 2 values, got 1: 1024"]),
        ("size", "1024 1024 1024", ["-size takes 2 values, got 3"]),
        ("size", [1024], ["-size takes 2 values, got 1: [1024]"]),
        ("size", "   ", ["-size takes 2 values, got 0"]),
        ("size", "1024 1024px", ["-size takes a whole number, 1 or more", "'1024px' in '1024 1024px'"]),
        ("niter", "abc", ["-niter takes a whole number, 0 or more", "'abc'", "clean iterations"]),
        ("niter", "1e3 iterations", ["-niter takes a whole number", "'1e3 iterations'"]),  # one word, not split
        ("niter", [100, 200], ["-niter takes a single value, got the list [100, 200]"]),
        ("fits-mask", ["a.fits", "b.fits"], ["-fits-mask takes a single value"]),
        ("weight", "briggs 0 1", ["-weight takes 1 to 2 values, got 3", "briggs 0.5"]),
        ("restore", "res.fits model.fits", ["-restore takes 3 values, got 2"]),
        ("restore", ["res.fits"], ["-restore takes 3 values, got 1"]),
        ("size", [], ["a list must hold plain numbers or strings", "[]"]),
        ("size", [[1024, 1024]], ["a list must hold plain numbers or strings"]),
        ("pol", ["xx", True], ["a list must hold plain numbers or strings"]),
        ("size", {"w": 1}, ["-size takes 2 values, not a table"]),
        ("data-column", "DATA\n-niter 5", ["contains a control character"]),
        ("pol", ["xx", "y\ny"], ["contains a control character"]),
    ],
)
def test_check_value_errors(name, value, parts):
    with pytest.raises(ImgpipeError) as info:
        check_value(lookup(name), value, f"img.toml: [wsclean] {name}")
    text = str(info.value)
    assert text.startswith(f"img.toml: [wsclean] {name}: "), text
    for part in parts:
        assert part in text, text


def test_single_word_string_option_is_never_split():
    # '1 amin' stays one word: WSClean itself judges it (and refuses it)
    assert words("scale", "1 amin") == ["1 amin"]


@pytest.mark.parametrize("name", sorted(n for n, o in OPTIONS.items() if o.nargs[1] > 1))
def test_every_multi_value_option_checks_its_word_count(name):
    opt = lookup(name)
    too_many = " ".join(["1"] * (opt.nargs[1] + 1))
    with pytest.raises(ImgpipeError, match=rf"-{name} takes .* values?, got {opt.nargs[1] + 1}"):
        check_value(opt, too_many, "img.toml: [wsclean] x")


# ---------------------------------------------------------------- through the planner


def test_rendered_command(write_config, run_cli, ms_factory, tmp_path):
    ms = ms_factory("obs.MS", corrected_data=True)
    cfg = write_config(
        "[wsclean]\n"
        "name = 'img'\n"
        "size = '1024 1024'\n"
        "weight = 'briggs -0.5'\n"
        "pol = ['xx', 'yy']\n"
        "multiscale = true\n"
        "join-channels = false\n"
        "niter = 1000\n"
        "scale = '1amin'\n"
        "fits-mask = '/data/masks/deep field.fits'\n"
        "interval = [0, 5]\n"
        "data-column = false\n"
    )
    r = run_cli("plan", cfg, ms, "--json")
    assert r.code == 0, r
    (job,) = json.loads(r.out)["jobs"]
    argv = job["argv"]

    def after(flag, n):
        """The n words after ``flag``; the word after them must be the next option."""
        i = argv.index(flag)
        assert argv[i + 1 + n].lstrip("-") in OPTIONS, argv
        return argv[i + 1 : i + 1 + n]

    assert argv[0] == "wsclean"
    assert after("-size", 2) == ["1024", "1024"]
    assert after("-weight", 2) == ["briggs", "-0.5"]
    assert after("-pol", 1) == ["xx,yy"]
    assert after("-multiscale", 0) == []
    assert after("-fits-mask", 1) == ["/data/masks/deep field.fits"]
    assert after("-interval", 2) == ["0", "5"]
    assert after("-niter", 1) == ["1000"]
    assert "-join-channels" not in argv  # false: omitted, not emitted
    assert "-data-column" not in argv  # a nenucal default dropped by false
    assert argv[-1] == str(ms)  # MS paths last
    assert all(not w.startswith("-") for w in argv[argv.index(str(ms)):])
