"""imgpipe.wsclean_options against `wsclean --help` and `wsclean -dry-run` of WSClean 3.1.

The tests that need the binary skip when `wsclean` is not on PATH or is not
version 3.1.  The full arity check of every option (about 300 dry runs,
~10 s) only runs with IMGPIPE_SLOW_TESTS=1; a sample of the doubtful
options always runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import pytest

from imgpipe.wsclean_options import KINDS, OPTIONS, REJECTED, WscleanOption, lookup, suggest

# Options that take a value although their help line shows no placeholder.
NO_PLACEHOLDER = {
    "beam-model",
    "beam-mode",
    "beam-normalisation-mode",
    "local-rms-window",
    "local-rms-method",
    "multiscale-scale-bias",
}

# Valid sample words for options whose value WSClean checks (others get '3' or 'x').
SAMPLES = {
    "beam-model": ["Hamaker"],
    "beam-mode": ["full"],
    "beam-normalisation-mode": ["full"],
    "weight": ["briggs", "0.5"],
    "scale": ["1amin"],
    "shift": ["12h00m00s", "10d00m00s"],
    "channel-division-frequencies": ["1e8,2e8"],
    "grid-mode": ["kb"],
    "visibility-weighting-mode": ["normal"],
    "idg-mode": ["cpu"],
    "apply-facet-solutions": ["sol.h5", "amplitude000,phase000"],
    "pol": ["xx,yy"],
    "field": ["0,1"],
    "spws": ["0,1"],
    "data-column": ["DATA"],
    "threshold": ["1mJy"],
    "local-rms-method": ["rms"],
    "link-polarizations": ["i,q"],
    "spectral-correction": ["150e6", "83.084,-0.699"],
    "multiscale-scales": ["0,4,8"],
    "multiscale-shape": ["gaussian"],
    "moresane-sl": ["20,10,5"],
    "horizon-mask": ["5deg"],
    "restore": ["a.fits", "b.fits", "c.fits"],
    "restore-list": ["a.fits", "b.txt", "c.fits"],
    "beam-size": ["10"],
    "beam-shape": ["1amin", "1amin", "3deg"],
    "taper-gaussian": ["2amin"],
}

# Always checked against the binary: everything whose arity is not obvious.
DOUBTFUL = sorted(
    NO_PLACEHOLDER
    | {"weight", "size", "shift", "interval", "channel-range", "nwlayers-for-size"}
    | {"spectral-correction", "apply-facet-solutions", "restore", "restore-list", "beam-shape"}
    | {"channels-out", "taper-gaussian", "deconvolution-channels", "fit-spectral-pol", "pol"}
    | {"verbose", "v", "update-model-required", "no-update-model-required"}
)

PROBE = "-imgpipe-probe"  # an unknown option: WSClean says "Unknown parameter: imgpipe-probe"


# --------------------------------------------------------------------------- table sanity


def test_table_is_well_formed():
    assert len(OPTIONS) > 100
    for name, opt in OPTIONS.items():
        assert isinstance(opt, WscleanOption)
        assert opt.name == name and not name.startswith("-")
        assert opt.kind in KINDS
        low, high = opt.nargs
        assert 0 <= low <= high <= 3
        assert (opt.kind == "flag") == (opt.nargs == (0, 0))
        assert opt.help and "\n" not in opt.help
    assert set(REJECTED) <= set(OPTIONS)


def test_sample_of_kinds():
    assert OPTIONS["size"].nargs == (2, 2)
    assert OPTIONS["size"].kind == "number"
    assert OPTIONS["weight"].nargs == (1, 2)
    assert OPTIONS["temp-dir"].kind == "path"
    assert OPTIONS["temp-dir"].nargs == (1, 1)
    assert OPTIONS["pol"].kind == "list"
    assert OPTIONS["niter"].kind == "number"
    assert OPTIONS["no-update-model-required"].kind == "flag"
    assert OPTIONS["no-update-model-required"].nargs == (0, 0)
    assert OPTIONS["spws"].kind == "list"
    assert OPTIONS["multiscale-scales"].kind == "list"
    assert OPTIONS["scale"].kind == "string"  # accepts units: 1amin
    assert OPTIONS["threshold"].kind == "string"  # accepts units: 1mJy
    assert OPTIONS["beam-shape"].nargs == (3, 3)
    assert OPTIONS["channels-out"].nargs == (1, 1)


def test_lookup():
    assert lookup("size") is OPTIONS["size"]
    assert lookup("-size") is OPTIONS["size"]
    assert lookup("--size") is OPTIONS["size"]
    assert lookup("v") is OPTIONS["v"]
    assert lookup("sise") is None
    assert lookup("") is None


def test_suggest():
    assert suggest("sise") == "size"
    assert suggest("data-colum") == "data-column"
    assert suggest("-temp-dri") == "temp-dir"
    assert suggest("zzzzzz") is None


# --------------------------------------------------------------------------- against the binary


@lru_cache(maxsize=1)
def _help_text() -> str:
    if shutil.which("wsclean") is None:
        pytest.skip("wsclean is not on PATH")
    proc = subprocess.run(["wsclean", "--help"], capture_output=True, text=True, timeout=60)
    text = proc.stdout + proc.stderr
    if not re.search(r"WSClean version 3\.1\b", text):
        pytest.skip("the wsclean on PATH is not version 3.1")
    return text


def _help_lines() -> dict[str, str]:
    """Option name -> the help line that lists it (lines starting with '-')."""
    lines: dict[str, str] = {}
    for line in _help_text().splitlines():
        if not line.startswith("-"):
            continue
        head = re.split(r"[<\[]", line, maxsplit=1)[0]  # names come before any placeholder
        names = re.findall(r"(?<![\w-])-([a-z][a-z0-9-]*)", head)
        assert names, line
        for name in names:
            assert name not in lines, f"-{name} listed twice"
            lines[name] = line
    return lines


def _placeholders(line: str) -> int:
    return len(re.findall(r"<[^<>]*>|\[[^\[\]]*/[^\[\]]*\]", line))


def test_every_help_option_is_known_and_none_invented():
    listed = set(_help_lines())
    assert sorted(listed - set(OPTIONS)) == [], "in `wsclean --help` but not in OPTIONS"
    assert sorted(set(OPTIONS) - listed) == [], "in OPTIONS but not in `wsclean --help`"


def test_placeholder_counts_match_nargs():
    problems = []
    for name, line in _help_lines().items():
        low, high = OPTIONS[name].nargs
        count = _placeholders(line)
        if name in NO_PLACEHOLDER:
            if count != 0 or low != 1:
                problems.append(f"{name}: exception no longer needed? {line!r}")
        elif not low <= count <= high:
            problems.append(f"{name}: nargs {(low, high)} but {count} placeholder(s) in {line!r}")
    assert problems == []


def _dry_run(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run(
        ["wsclean", "-dry-run", *args], capture_output=True, text=True, timeout=60, cwd="/"
    )
    out = proc.stdout + proc.stderr
    message = next((ln.split(">>> ", 1)[1] for ln in out.splitlines() if ">>> " in ln), "")
    return proc.returncode, message


def _arity_cases(opt: WscleanOption) -> list[tuple[list[str], bool]]:
    """(words, should the option consume exactly these words?)."""
    if opt.name == "weight":
        return [(["uniform"], True), (["natural"], True), (["briggs", "0.5"], True), (["briggs"], False)]
    low, high = opt.nargs
    words = SAMPLES.get(opt.name) or (["x"] if opt.kind in ("path", "string") else ["3"]) * high
    assert low == high and len(words) == high, opt.name
    too_few = words[:-1] if high else None
    cases = [(words, True)]
    cases.append((too_few, False) if too_few is not None else (["stray"], False))
    return cases


def _check_arity(name: str) -> list[str]:
    """Problems found by giving -name exactly nargs words, then one fewer/more, then PROBE."""
    opt = OPTIONS[name]
    if name == "version":
        return []  # prints the version and exits before anything else is parsed
    problems = []
    for words, exact in _arity_cases(opt):
        rc, message = _dry_run(["-" + name, *words, PROBE])
        if name in REJECTED:
            if rc == 0 or "imgpipe-probe" in message:
                problems.append(f"-{name} is accepted now; drop it from REJECTED")
            break
        consumed_exactly = message == f"Unknown parameter: {PROBE[1:]}"
        if consumed_exactly != exact:
            problems.append(f"-{name} {' '.join(words)}: rc={rc} {message!r}")
    return problems


def _wsclean_or_skip():
    _help_text()


@pytest.mark.parametrize("name", DOUBTFUL)
def test_arity_of_doubtful_options(name):
    _wsclean_or_skip()
    assert _check_arity(name) == []


def test_rejected_options_are_still_rejected():
    _wsclean_or_skip()
    for name in REJECTED:
        assert _check_arity(name) == []


@pytest.mark.skipif(not os.environ.get("IMGPIPE_SLOW_TESTS"), reason="set IMGPIPE_SLOW_TESTS=1")
def test_arity_of_every_option():
    _wsclean_or_skip()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        problems = [p for ps in pool.map(_check_arity, sorted(OPTIONS)) for p in ps]
    assert problems == []


def test_number_options_reject_units_and_string_ones_accept_them():
    _wsclean_or_skip()
    for name in ("niter", "gain", "mgain", "auto-threshold", "taper-tukey", "padding"):
        rc, message = _dry_run(["-" + name, "1amin", PROBE])
        assert "Could not parse value" in message, (name, message)
    for name, value in (("scale", "1amin"), ("threshold", "1mJy"), ("taper-gaussian", "2amin"),
                        ("beam-size", "1amin"), ("horizon-mask", "5deg")):
        rc, message = _dry_run(["-" + name, value, PROBE])
        assert message == f"Unknown parameter: {PROBE[1:]}", (name, message)


# --------------------------------------------------------------------------- values, as WSClean parses them

# (option, words): checked by imgpipe when planning and by `wsclean -dry-run`; they must agree,
# but for STRICTER: values WSClean's parser takes and its imaging then fails on (or does nothing
# sensible with), which imgpipe refuses when planning.
VALUE_CASES = [
    ("scale", ["1amin"]), ("scale", ["1arcmin"]), ("scale", ["0.01"]), ("scale", ["1DEG"]), ("scale", ["1masec"]),
    ("scale", ["1''"]), ("scale", ["1e-3deg"]), ("scale", ["abc"]), ("scale", ["3parsec"]), ("scale", ["+1deg"]),
    ("scale", ["nan"]), ("scale", ["inf"]), ("scale", ["1mdeg"]), ("scale", ['1"']), ("scale", ["1am"]),
    ("taper-gaussian", ["30"]), ("taper-gaussian", ["x"]), ("beam-shape", ["1amin", "1amin", "3deg"]),
    ("beam-shape", ["a", "b", "c"]),
    ("threshold", ["1mJy"]), ("threshold", ["0.5"]), ("threshold", ["1µJy"]), ("threshold", ["1KJy"]),
    ("threshold", ["1uJy"]), ("threshold", ["1MJY"]), ("threshold", ["lots"]), ("threshold", ["-1mJy"]),
    ("niter", ["1000"]), ("niter", ["-5"]), ("niter", ["nan"]), ("niter", ["1e300"]), ("niter", ["1.5"]),
    ("niter", ["1e3"]), ("size", ["64", "64"]), ("size", ["64.5", "64"]), ("size", ["-128", "0"]),
    ("size", ["0", "0"]), ("gain", ["0.1"]), ("gain", ["-1"]), ("padding", ["0.5"]), ("padding", ["1.2"]),
    ("auto-threshold", ["-1"]), ("auto-threshold", ["3"]), ("abs-mem", ["0"]), ("abs-mem", ["2.5"]),
    ("weight", ["natural"]), ("weight", ["uniform"]), ("weight", ["briggs", "0"]), ("weight", ["briggs", "-0.5"]),
    ("weight", ["briggs", "x"]), ("weight", ["Briggs", "0"]), ("weight", ["NATURAL"]),
    ("grid-mode", ["kb"]), ("grid-mode", ["KB"]), ("grid-mode", ["bh"]), ("grid-mode", ["gau"]),
    ("visibility-weighting-mode", ["squared"]), ("visibility-weighting-mode", ["foo"]),
    ("local-rms-method", ["rms-with-min"]), ("local-rms-method", ["foo"]), ("multiscale-shape", ["foo"]),
    ("beam-model", ["lobes"]), ("beam-model", ["foo"]), ("idg-mode", ["hybrid"]), ("idg-mode", ["foo"]),
    ("shift", ["12h30m00s", "+60d00m00s"]), ("shift", ["12:30:00", "60.00.00"]), ("shift", ["12h30m", "60d30m"]),
    ("shift", ["12h30m00s", "60:00:00"]), ("shift", ["foo", "bar"]), ("shift", ["187.5deg", "60deg"]),
    ("shift", ["12h30m00.5s", "-60d00m00.5s"]),
    ("spectral-correction", ["150e6", "83.084,-0.699"]), ("spectral-correction", ["x", "y"]),
    ("channels-out", ["0"]), ("intervals-out", ["0"]), ("spws", ["0,a"]), ("multiscale-scales", ["0,x"]),
    ("field", ["all"]), ("field", ["0,1"]), ("j", ["0"]), ("nmiter", ["-1"]),
]
STRICTER = {  # what WSClean's parser lets through and imgpipe refuses, and why
    ("size", ("0", "0")): "an image of 0 pixels: WSClean fails when imaging",
    ("channels-out", ("0",)): "0 output channels",
    ("intervals-out", ("0",)): "0 intervals",
    ("spws", ("0,a",)): "a spectral window that is no number",
    ("multiscale-scales", ("0,x",)): "a scale that is no number",
    ("j", ("0",)): "0 threads",
}


def test_value_checks_agree_with_wsclean():
    from imgpipe.wsclean_options import check_words

    _wsclean_or_skip()

    def one(case):
        name, words = case
        rc, message = _dry_run(["-size", "64", "64", "-scale", "1amin", "-" + name, *words, PROBE])
        return name, words, message == f"Unknown parameter: {PROBE[1:]}", check_words(OPTIONS[name], words) is None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, VALUE_CASES))
    disagree = []
    for name, words, wsclean_ok, imgpipe_ok in results:
        stricter = (name, tuple(words)) in STRICTER
        if imgpipe_ok != wsclean_ok and not (stricter and wsclean_ok and not imgpipe_ok):
            disagree.append(f"-{name} {' '.join(words)}: WSClean {'takes' if wsclean_ok else 'refuses'} it, "
                            f"imgpipe {'takes' if imgpipe_ok else 'refuses'} it")
        if stricter:
            assert wsclean_ok and not imgpipe_ok, (name, words)
    assert disagree == []
    assert sum(ok for *_, ok in results) > 20 and sum(not ok for *_, ok in results) > 20  # both kinds tried


def test_every_option_has_a_value_type_and_an_example():
    from imgpipe.wsclean_options import check_words, example

    for opt in OPTIONS.values():
        if opt.kind == "flag":
            assert opt.value == "-"
            continue
        assert opt.value != "-" and example(opt), opt.name
        assert check_words(opt, ["\x00not a value\x00"] * opt.nargs[1]) is not None or opt.value.split(",")[0] in (
            "text", "path", "pol"), opt.name  # every checked option refuses nonsense
