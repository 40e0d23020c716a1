"""The quality gate (imgpipe/quality.py), on real WSClean images of real MSs made here.

A night: 12 normal MSs (the same sky, the noise of each its own seed), and the bad ones a user
meets: DATA all zero, DATA all NaN, ten times the noise of the others, a clean that diverged.
The images are WSClean's own (128 x 128 pixels of 3', 100 iterations, as the tests' runs make).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import needs
from msmaker import make_ms

pytest.importorskip("astropy")

from imgpipe.config import QualitySettings  # noqa: E402
from imgpipe.quality import (  # noqa: E402
    QUALITY_SUFFIX, clipped_rms, judge, main_image, measured, night, night_problems,
)

NOISE = 3.0  # Jy per visibility: the images' noise shows above the sidelobes of the sky's two sources
NORMAL = [f"n{i:02d}" for i in range(12)]
BAD = {"zero": dict(data_column_value=0j), "nan": dict(data_column_value=complex("nan")),
       "noisy": dict(noise=10 * NOISE, seed=99)}
WSCLEAN = ["wsclean", "-quiet", "-j", "1", "-size", "128", "128", "-scale", "3arcmin", "-niter", "100"]


def image(ms: Path, prefix: Path, *extra: str) -> list[str]:
    subprocess.run([*WSCLEAN, *extra, "-name", str(prefix), str(ms)], check=True, capture_output=True)
    return sorted(p.name[len(prefix.name):] for p in prefix.parent.iterdir()
                  if p.name.startswith(prefix.name + "-"))


@pytest.fixture(scope="module")
def night_images(tmp_path_factory):
    """job id -> (image prefix, its images), for the 12 normal MSs, the bad ones and a diverged clean."""
    needs("wsclean")
    root = tmp_path_factory.mktemp("night")
    out = {}
    kinds = {**{n: dict(noise=NOISE, seed=i) for i, n in enumerate(NORMAL)}, **BAD}
    for name, kwargs in kinds.items():
        ms = make_ms(str(root / f"{name}.MS"), **kwargs)
        out[name] = (str(root / name), image(Path(ms), root / name))
    out["diverged"] = (str(root / "diverged"), image(root / "n00.MS", root / "diverged", "-gain", "1"))
    return out


def verdicts(images, names, q=QualitySettings()):
    return night([(n, *images[n]) for n in names], q, measure_now=True)


def test_a_normal_night_flags_nothing(night_images):
    v = verdicts(night_images, NORMAL)
    assert sorted(v) == NORMAL
    assert [n for n in NORMAL if not v[n].ok] == [], {n: v[n].why for n in NORMAL}


def test_exactly_the_bad_images_are_flagged_with_their_reasons(night_images):
    v = verdicts(night_images, NORMAL + list(BAD) + ["diverged"])
    flagged = {n: v[n].why for n in v if not v[n].ok}
    assert sorted(flagged) == ["diverged", "nan", "noisy", "zero"], flagged
    assert flagged["zero"].startswith("every pixel is zero")
    assert flagged["nan"].startswith("no finite pixel: the image is all NaN")
    assert "times the median of the 13 images alike" in flagged["noisy"]  # (12 normal, the diverged one left out)
    assert flagged["diverged"].startswith("the clean diverged: the residual's peak")


def test_the_night_is_compared_only_once_enough_images_alike_are_in(night_images):
    few = NORMAL[:4] + ["noisy"]
    assert all(v.ok for v in verdicts(night_images, few).values())  # 5 < min_alike = 6
    assert not verdicts(night_images, NORMAL[:5] + ["noisy"])["noisy"].ok
    assert not verdicts(night_images, few, QualitySettings(min_alike=5))["noisy"].ok


def test_the_measures_are_kept_next_to_the_images_and_made_again_only_when_they_change(night_images, tmp_path):
    src, images = night_images["n01"]
    prefix = str(tmp_path / "n01")
    for suffix in images:
        shutil.copy2(src + suffix, prefix + suffix)
    first = measured(prefix, images)
    kept = Path(prefix + QUALITY_SUFFIX)
    assert json.loads(kept.read_text())["rms_residual"] == first["rms_residual"] > 0
    before = kept.stat().st_mtime_ns
    assert measured(prefix, images, measure_now=False) == first
    assert kept.stat().st_mtime_ns == before  # read, not made again
    shutil.copy2(night_images["noisy"][0] + "-residual.fits", prefix + "-residual.fits")  # a new residual
    assert measured(prefix, images, measure_now=False) is None  # the kept one is of other files
    assert measured(prefix, images)["rms_residual"] > 1.5 * first["rms_residual"]


def test_a_damaged_image_is_a_finding_not_a_crash(tmp_path):
    prefix = str(tmp_path / "x")
    Path(prefix + "-image.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    v = night([("x", prefix, ["-image.fits"])], QualitySettings(), measure_now=True)
    assert v["x"].why.startswith("cannot read the image: ")


def test_main_image_prefers_the_mfs_image():
    assert main_image("p", ["-0000-image.fits", "-MFS-image.fits", "-MFS-residual.fits"]) == "-MFS-image.fits"
    assert main_image("p", ["-0001-image.fits", "-0000-image.fits"]) == "-0000-image.fits"
    assert main_image("p", ["-dirty.fits"]) is None


def test_the_rms_is_robust_to_the_sources():
    import numpy as np

    rng = np.random.default_rng(1)
    data = rng.normal(0, 2.0, (256, 256)).astype(np.float32)
    data[128, 128] = 1e6  # a bright source at the centre
    data[:10] = np.nan
    assert clipped_rms(data) == pytest.approx(2.0, rel=0.05)


def test_night_problems_needs_a_real_outlier():
    q = QualitySettings()
    same = {f"j{i}": {"rms": 1.0, "unit": "Jy/beam", "shape": [8, 8]} for i in range(8)}
    assert night_problems({**same, "k": {"rms": 1.03, "unit": "Jy/beam", "shape": [8, 8]}}, q) == {}  # within 5%
    assert "k" in night_problems({**same, "k": {"rms": 0.5, "unit": "Jy/beam", "shape": [8, 8]}}, q)
    # images of another size are not alike: no comparison
    assert night_problems({**same, "k": {"rms": 9.0, "unit": "Jy/beam", "shape": [16, 16]}}, q) == {}


def test_judge_keeps_an_image_with_its_own_problem_out_of_the_night():
    q = QualitySettings(min_alike=3)
    m = {f"j{i}": {"rms": 1.0 + i / 100, "unit": "", "shape": [8], "nonfinite": 0.0, "peak": 5.0, "min": -1.0,
                   "beam": [0.1, 0.05, 10.0]} for i in range(4)}
    m["z"] = {**m["j0"], "peak": 0.0, "min": 0.0, "rms": 0.0}
    v = judge(m, q)
    assert [j for j in v if not v[j].ok] == ["z"]


def test_without_astropy_the_gate_says_it_is_off():
    code = ("import sys; sys.modules['astropy'] = None\n"
            "from imgpipe.quality import unavailable; print(unavailable())")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "astropy not installed: install imgpipe[report] to check the images"


def night_config(tmp_path: Path, quality: str = "") -> Path:
    cfg = tmp_path / "img.toml"
    cfg.write_text("[worker]\nnodes = 'localhost'\nmax_concurrent = 2\n"
                   f"[wsclean]\nname = 'img'\ndata-column = 'DATA'\nout-dir = '{tmp_path}/images/$ms_basename$'\n"
                   "size = '128 128'\nscale = '3arcmin'\nniter = 100\n" + (f"[quality]\n{quality}\n" if quality else ""))
    return cfg


def status_json(run_imgpipe, *args) -> dict:
    r = run_imgpipe("status", "--json", *args)
    return {**json.loads(r.out), "code": r.code}


def test_a_run_flags_the_bad_images_as_they_land_and_status_and_runs_say_so(night_images, tmp_path, run_imgpipe):
    """Exactly the all-zero, all-NaN and noisy jobs of a real night are suspect: told during the
    run, counted at its end, in status (--state suspect) and runs; the run still exits 0."""
    ms = [Path(night_images[n][0] + ".MS") for n in NORMAL + list(BAD)]
    r = run_imgpipe(night_config(tmp_path), *ms)
    assert r.code == 0, r
    told = sorted(line.split()[3] for line in r.err.splitlines() if line.startswith("imgpipe: quality: job "))
    doc = status_json(run_imgpipe)
    by_ms = {Path(j["ms"][0]).stem: j for j in doc["jobs"]}
    assert told == sorted(by_ms[n]["id"] for n in BAD), r.err
    assert f"all {len(ms)} job(s) done, 3 suspect" in r.err
    assert doc["code"] == 0 and doc["counts"]["suspect"] == 3 and doc["counts"]["done"] == 12
    assert {n: j["state"] for n, j in by_ms.items() if j["state"] != "done"} == {n: "suspect" for n in BAD}
    assert by_ms["zero"]["why"].startswith("every pixel is zero")
    assert by_ms["nan"]["why"].startswith("no finite pixel")
    assert by_ms["noisy"]["why"].startswith("RMS ")
    kept = sorted((tmp_path / "images").glob("*/img" + QUALITY_SUFFIX))
    assert len(kept) == len(ms)
    stamps = [p.stat().st_mtime_ns for p in kept]
    listed = run_imgpipe("status", "--state", "suspect")
    assert listed.code == 0 and listed.out.count(" suspect ") == 3, listed
    assert "3 suspect" in listed.out
    runs = run_imgpipe("runs")
    assert runs.out.splitlines()[1].split()[2:5] == [str(len(ms)), str(len(ms)), "3"], runs.out
    assert [p.stat().st_mtime_ns for p in kept] == stamps  # status and runs read the measures, never make them
    assert run_imgpipe("report").code == 0
    page = next((tmp_path / "imgpipe-runs").glob("*/report.html")).read_text()
    section = page[page.index('<section id="quality"'):]
    section = section[:section.index("</section>")]
    assert "Quality (3 flagged)" in section
    flagged = section[:section.index("Noise across the night")]
    assert sorted(re.findall(r'id="img-(\d+)"', flagged)) == sorted(by_ms[n]["id"] for n in BAD)


def test_on_fail_fail_counts_them_failed_keeps_their_images_and_force_makes_them_again(night_images, tmp_path,
                                                                                        run_imgpipe):
    ms = [Path(night_images[n][0] + ".MS") for n in NORMAL + list(BAD)]
    cfg = night_config(tmp_path, "on_fail = 'fail'")
    r = run_imgpipe(cfg, *ms)
    assert r.code == 1, r
    assert "12 of 15 job(s) done, 3 failed" in r.err
    assert "kept for a look" in r.err
    doc = status_json(run_imgpipe)
    failed = {Path(j["ms"][0]).stem: j for j in doc["jobs"] if j["state"] == "failed"}
    assert doc["code"] == 1 and sorted(failed) == sorted(BAD)
    assert {j["failure"] for j in failed.values()} == {"quality"}
    assert all((tmp_path / "images" / f"{n}.MS" / "img-image.fits").exists() for n in BAD)  # kept
    again = run_imgpipe(cfg, *ms)  # a resume leaves them (their images are there), and says so
    assert again.code == 1 and "nothing to do" in again.err and "the quality gate flagged 3 of them" in again.err
    before = (tmp_path / "images" / "zero.MS" / "img-image.fits").stat().st_mtime_ns
    forced = run_imgpipe(cfg, *ms, "--force")
    assert forced.code == 1, forced
    assert (tmp_path / "images" / "zero.MS" / "img-image.fits").stat().st_mtime_ns != before  # made again


def test_quality_off_checks_nothing(night_images, tmp_path, run_imgpipe):
    ms = [Path(night_images[n][0] + ".MS") for n in ["zero"]]
    r = run_imgpipe(night_config(tmp_path, "on_fail = 'off'"), *ms)
    assert r.code == 0 and "imgpipe: quality" not in r.err and "suspect" not in r.err, r
    assert not list((tmp_path / "images").glob("*/*" + QUALITY_SUFFIX))


@pytest.mark.parametrize("table, words", [
    ("on_fial = 'warn'", "unknown key 'on_fial' in [quality]"),
    ("on_fail = 'stop'", "[quality] on_fail: expected 'warn'"),
    ("rms_sigma = 0", "[quality] rms_sigma: expected a number of robust standard deviations, above 0, got 0"),
    ("min_alike = 1.5", "[quality] min_alike: expected a whole number of images, from 2, got 1.5"),
    ("max_nonfinite = 2", "[quality] max_nonfinite: expected a fraction of the pixels, from 0 to 1, got 2"),
    ("beam_max_ratio = 'x'", "[quality] beam_max_ratio: expected a number, from 0 (0: off), got 'x'"),
])
def test_a_bad_quality_table_is_refused_naming_the_key(tmp_path, run_imgpipe, table, words):
    ms = make_ms(str(tmp_path / "a.MS"))
    r = run_imgpipe("plan", night_config(tmp_path, table), ms)
    assert r.code == 2 and words in r.err and "Traceback" not in r.err, r
    assert not (tmp_path / "imgpipe-runs").exists()


def test_the_readme_documents_every_quality_key_with_its_default():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("### `[quality]`\n", 1)[1].split("\n#", 1)[0]
    documented = {}
    for keys, default in re.findall(r"^\| (`[^|]+`) \| `([^`]+)` \|", section, re.M):
        for key in re.findall(r"`([^`]+)`", keys):
            documented[key] = default
    defaults = QualitySettings().__dict__
    assert sorted(documented) == sorted(defaults), "README [quality] table and QualitySettings differ"
    for key, value in defaults.items():
        assert documented[key] in (repr(value), f"{value:g}" if not isinstance(value, str) else ""), key


def test_without_astropy_a_run_says_once_that_the_gate_is_off_and_goes_on(night_images, tmp_path):
    """A planning machine without the report extra (astropy blocked in the process, as if it were
    not installed): one line says the gate is off; the run, status and report work, exit 0."""
    ms = [Path(night_images[n][0] + ".MS") for n in ("n00", "zero")]
    cfg = night_config(tmp_path)
    code = ("import sys; sys.modules['astropy'] = None\n"
            "from imgpipe.cli import main; sys.exit(main(sys.argv[1:]))")
    for args in ([str(cfg), *map(str, ms)], ["status"], ["report"]):
        r = subprocess.run([os.sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stdout, r.stderr)
        if args[0] == str(cfg):
            said = [ln for ln in r.stderr.splitlines() if "quality gate off" in ln]
            assert said == ["imgpipe: quality gate off: astropy not installed: install imgpipe[report] to check "
                            "the images"], r.stderr
            assert "all 2 job(s) done. " in r.stderr  # (nothing flagged: nothing measured)
    assert not list((tmp_path / "images").glob("*/*" + QUALITY_SUFFIX))


@pytest.mark.parametrize("option", [["-circular-beam"], ["-beam-size", "600"], ["-beam-shape", "600", "300", "0"]])
def test_a_restoring_beam_the_user_set_is_not_taken_for_wsclean_s_default(night_images, tmp_path, option):
    """-circular-beam, -beam-size and -beam-shape give a beam of position angle 0 (circular for the
    first two), as WSClean's default would be: the record's command says the user asked for it."""
    ms = night_images["n00"][0] + ".MS"
    images = image(Path(ms), tmp_path / "b", *option)
    command = " ".join(["wsclean", *option, "-name", str(tmp_path / "b"), ms])
    assert night([("b", str(tmp_path / "b"), images, command)], QualitySettings(), measure_now=True)["b"].ok
    if option == ["-circular-beam"]:  # without the command, it looks like the default (what the check is for)
        (tmp_path / ("b" + QUALITY_SUFFIX)).unlink()
        assert "WSClean's default" in night([("b", str(tmp_path / "b"), images)], QualitySettings(),
                                            measure_now=True)["b"].why
