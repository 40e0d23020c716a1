"""`imgpipe report` on a real run (see test_status.make_run: 2 done, 1 failed, 1 not started).

The page is checked as a document: it is well-formed XML (report.py promises that), so
ElementTree reads it and the tests look at its structure, not at substrings. Chromium,
when installed, renders it headless and the screenshot must not be blank.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree as ET

import pytest

from conftest import needs
from test_status import HOSTILE, imgpipe, make_run, run_env, write_config

from imgpipe import report

SVG = "{http://www.w3.org/2000/svg}"

pytestmark = [needs("wsclean"), needs("parallel"), needs("ssh")]


def has_preview_libs() -> bool:
    return report.preview_libs() is not None


needs_preview_libs = pytest.mark.skipif(not has_preview_libs(), reason="astropy or matplotlib is not installed")


# ----------------------------------------------------------------------------- helpers


def parse(path: Path) -> ET.Element:
    text = Path(path).read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(text[len("<!DOCTYPE html>\n"):])  # raises if the page is not well-formed


def section(page: ET.Element, name: str) -> ET.Element:
    found = page.find(f".//section[@id='{name}']")
    assert found is not None, f"no section {name}"
    return found


def svg_bars(page: ET.Element) -> list[ET.Element]:
    return [r for r in section(page, "timeline").iter(f"{SVG}rect") if "bar" in (r.get("class") or "").split()]


def text_of(el: ET.Element) -> str:
    return "".join(el.itertext())


def png_info(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) of a PNG, after checking every chunk's CRC and the pixels' zlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + width * channels * depth // 8)  # every row, whole
    return width, height, depth, colour


@pytest.fixture(scope="module")
def run(tmp_path_factory, ms_cache):
    r = make_run(tmp_path_factory.mktemp("report-run"), ms_cache)
    assert r.code == 1, r.output
    return r


@pytest.fixture(scope="module")
def page_path(run) -> Path:
    out = imgpipe("report", run.run_dir, cwd=run.root, env=run.env)  # the real command line
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path == run.run_dir / "report.html" and path.is_file()
    return path


@pytest.fixture(scope="module")
def page(page_path) -> ET.Element:
    return parse(page_path)


def copy_of(run, tmp_path: Path) -> Path:
    """A copy of the run directory (the images stay where they are), for tests that change things."""
    dest = tmp_path / "run-copy"
    shutil.copytree(run.run_dir, dest)
    return dest / "jobs.txt"


# ----------------------------------------------------------------------------- the page


def test_report_from_jobs_file_or_from_cwd(run, page_path):
    out = imgpipe("report", run.jobs_file, cwd=run.root, env=run.env)
    assert out.returncode == 0 and out.stdout.strip() == str(page_path)
    here = run.root / "cwd-test"
    shutil.rmtree(here, ignore_errors=True)
    (here / "imgpipe-runs").mkdir(parents=True)
    shutil.copytree(run.run_dir, here / "imgpipe-runs" / "img-x")
    out = imgpipe("report", cwd=here, env=run.env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(here / "imgpipe-runs" / "img-x" / "report.html")


def test_page_is_self_contained(page, page_path):
    assert page.tag == "html"
    assert page.find("head/style") is not None  # inline CSS
    assert not list(page.iter("script")) and not list(page.iter("link"))  # no JavaScript, no stylesheet to fetch
    for el in page.iter():
        for attr, value in el.attrib.items():
            if attr in ("href", "src"):
                assert "://" not in value and not value.startswith("//"), value  # nothing from a network
                if not value.startswith("#"):
                    target = page_path.parent / unquote(value)
                    assert target.exists(), value  # relative, and it resolves
    assert page.find("head/title").text == f"imgpipe report: {page_path.parent.name}"


def test_summary_counts(page):
    boxes = {b.get("data-state"): int(b.find("b").text) for b in section(page, "summary").iter("div")
             if b.get("data-state")}
    assert boxes == {"done": 2, "failed": 1, "running": 0, "not started": 1, "total": 4}
    hosts = section(page, "summary").find(".//table[@class='hosts']")
    rows = {text_of(tr.find("td")): [text_of(td) for td in tr.findall("td")] for tr in hosts.findall("tr")[1:]}
    assert rows["localhost"][1:3] == ["2", "1"]
    assert rows["node999"][-1] == "ran no job"


def test_timeline_one_bar_per_finished_job(run, page):
    bars = svg_bars(page)
    groups = [g for g in section(page, "timeline").iter(f"{SVG}g") if g.get("data-job")]
    assert len(bars) == len(groups) == 3  # 2 done + 1 failed; the job that never started has none
    by_job = {g.get("data-job"): g for g in groups}
    assert set(by_job) == {run.ids["done"], run.ids["hostile"], run.ids["failed"]}
    failed = by_job[run.ids["failed"]]
    assert failed.get("class") == "bar failed" and failed.find(f"{SVG}rect").get("fill") == report.COLOURS["failed"]
    for role in ("done", "hostile"):
        assert by_job[run.ids[role]].find(f"{SVG}rect").get("fill") == report.COLOURS["done"]
    title = text_of(failed.find(f"{SVG}title"))  # the hover text
    assert f"job {run.ids['failed']}" in title and "SW01_T002.MS" in title and "host localhost" in title
    assert "FAILED: WSClean failed" in title
    assert HOSTILE in text_of(by_job[run.ids["hostile"]].find(f"{SVG}title"))
    # 2 slots on localhost: jobs that overlap in time are on different lanes
    spans = sorted((float(b.get("x")), float(b.get("x")) + float(b.get("width")), float(b.get("y"))) for b in bars)
    for (x0, x1, y), (u0, u1, v) in zip(spans, spans[1:]):
        if u0 < x1 - 1:
            assert y != v
    lanes = [text_of(t) for t in section(page, "timeline").iter(f"{SVG}text") if t.get("class") == "lane"]
    assert lanes[:2] == ["localhost  #1", "localhost  #2"] and "node999  (ran no job)" in lanes


def test_failures_first_with_their_log_lines(run, page):
    fails = section(page, "failures").findall(".//div[@class='failure']")
    assert [f.get("data-job") for f in fails] == [run.ids["failed"]]
    tail = text_of(fails[0].find("pre"))
    assert "SW01_T002.MS does not exist" in tail and "WSClean failed with exit status 255" in tail
    assert "class wsclean" in text_of(fails[0]).replace("class  ", "class ")
    ids = [tr.get("data-job") for tr in section(page, "jobs").findall(".//tbody/tr")]
    states = [tr.get("data-state") for tr in section(page, "jobs").findall(".//tbody/tr")]
    assert states == ["failed", "not started", "done", "done"]
    assert ids[:2] == [run.ids["failed"], run.ids["not_started"]]
    nav = [a.get("href") for a in page.find(".//nav")]
    assert nav.index("#failures") < nav.index("#jobs")
    headings = [s.get("id") for s in page.iter("section")]
    assert headings.index("failures") < headings.index("jobs")
    ns = section(page, "jobs").find(f".//tr[@data-job='{run.ids['not_started']}']")
    assert "pinned to node999, which ran no job" in text_of(ns)


def test_links_to_logs_and_image_directories(run, page):
    row = section(page, "jobs").find(f".//tr[@data-job='{run.ids['hostile']}']")
    hrefs = [unquote(a.get("href")) for a in row.iter("a")]
    assert f"logs/{run.ids['hostile']}" in hrefs
    assert os.path.relpath(run.root / "images" / HOSTILE, run.run_dir) in hrefs


def test_config_and_plan(run, page):
    plan = section(page, "plan")
    text = text_of(plan)
    assert str(run.root / "img.toml") in text and "run_on_file_host_pattern" in text  # the config's own text
    assert '"localhost", "node999"' not in text and "localhost, node999" in text  # worker settings
    commands = [text_of(p) for p in plan.iter("pre") if p.get("class") == "command"]
    assert len(commands) == 4 and all(c.startswith("wsclean -name ") for c in commands)


def test_hostile_names_are_escaped(page, page_path):
    html_text = page_path.read_text(encoding="utf-8")
    assert HOSTILE not in html_text and "<img src=x" not in html_text
    assert 'evil&quot;&gt;&lt;img src=x onerror=alert`1`&gt;&amp;amp;.MS' in html_text
    assert not [el for el in page.iter() for a in el.attrib if a.lower().startswith("on")]  # no handler attributes
    assert all(img.get("src", "").startswith("report/") for img in page.iter("img"))
    assert any(HOSTILE in text_of(td) for td in section(page, "jobs").iter("td"))  # shown as text, intact


@needs_preview_libs
def test_previews_of_finished_jobs(run, page, page_path):
    cards = {c.get("data-job"): c for c in section(page, "images").findall(".//div[@class='card']")}
    assert set(cards) == {run.ids["done"], run.ids["hostile"]}  # finished jobs only
    for job_id, card in cards.items():
        img = card.find(".//img")
        assert img is not None, text_of(card)
        png = page_path.parent / unquote(img.get("src"))
        assert png_info(png.read_bytes())[:2] == (report.THUMB, report.THUMB)
        text = text_of(card)
        assert "img-MFS-image.fits (64\u00d764)" in text  # channels-out 2: the MFS image is the main one
        peak = float(text.split("peak ")[1].split(" Jy/beam")[0])
        assert 5 < peak < 20  # the 10 Jy source
        assert " mJy/beam" in text.split("RMS ")[1] and "DR " in text
    assert section(page, "jobs").find(f".//tr[@data-job='{run.ids['done']}']/td[10]/a").get("href") == \
        f"#img-{run.ids['done']}"
    assert page.find(".//*[@id='no-previews']") is None


@needs_preview_libs
def test_previews_are_cached_and_pruned(run, tmp_path):
    jobs = copy_of(run, tmp_path)
    folder = jobs.parent / report.REPORT_DIR
    report.write_report(jobs)
    png = folder / f"{run.ids['done']}.png"
    first = png.stat().st_mtime_ns
    (folder / "9999.png").write_bytes(b"stale")
    report.write_report(jobs)
    assert png.stat().st_mtime_ns == first  # the FITS did not change: not redrawn
    assert not (folder / "9999.png").exists()


def test_without_astropy_or_matplotlib(run, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "preview_libs", lambda: None)
    page = parse(report.write_report(copy_of(run, tmp_path)))
    note = page.find(".//*[@id='no-previews']")
    assert note is not None and report.NO_PREVIEW_NOTE in text_of(note) and "imgpipe[report]" in text_of(note)
    assert not list(section(page, "images").iter("img"))
    assert len(section(page, "images").findall(".//div[@class='card']")) == 2  # the jobs are still listed
    assert len(svg_bars(page)) == 3 and section(page, "failures") is not None


def test_preview_libs_absent_for_real(tmp_path):
    """In a Python that cannot import astropy, preview_libs says so (no exception)."""
    code = ("import sys; sys.modules['astropy'] = None; from imgpipe.report import preview_libs; "
            "print(preview_libs() is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def test_report_of_a_run_not_started(tmp_path, ms_cache):
    """Planned, never run: every job 'not started', an empty timeline, still a valid page."""
    ms = tmp_path / "data" / "SW01_T001.MS"
    shutil.copytree(ms_cache(), ms)
    config = write_config(tmp_path, nodes="localhost", pinned=False, wsclean={"size": "64 64", "scale": "5arcmin"})
    jobs = tmp_path / "run" / "jobs.txt"
    assert imgpipe("plan", config, ms, "--jobs-file", jobs, cwd=tmp_path, env=run_env(tmp_path)).returncode == 0
    page = parse(report.write_report(jobs))
    assert svg_bars(page) == []
    assert "no job has run yet" in text_of(section(page, "timeline"))
    assert [tr.get("data-state") for tr in section(page, "jobs").findall(".//tbody/tr")] == ["not started"]


# ----------------------------------------------------------------------------- pieces


def test_main_image_prefers_mfs(tmp_path):
    prefix = str(tmp_path / "img")
    assert report.main_image(prefix) is None
    for name in ("img-0000-image.fits", "img-0001-image.fits", "img-2-image.fits", "img-psf.fits"):
        (tmp_path / name).write_bytes(b"")
    assert report.main_image(prefix) == tmp_path / "img-0000-image.fits"  # no MFS (-no-mf-weighting...)
    (tmp_path / "img-image.fits").write_bytes(b"")
    assert report.main_image(prefix) == tmp_path / "img-image.fits"
    (tmp_path / "img-MFS-image.fits").write_bytes(b"")
    assert report.main_image(prefix) == tmp_path / "img-MFS-image.fits"
    pol = tmp_path / "pol"
    pol.mkdir()
    for name in ("img-MFS-Q-image.fits", "img-MFS-I-image.fits", "img-0000-I-image.fits"):
        (pol / name).write_bytes(b"")
    assert report.main_image(str(pol / "img")) == pol / "img-MFS-I-image.fits"
    odd = tmp_path / "odd[1]"
    odd.mkdir()
    (odd / "x*-t0001-MFS-image.fits").write_bytes(b"")
    assert report.main_image(str(odd / "x*")) == odd / "x*-t0001-MFS-image.fits"


def test_lanes_are_node_slots():
    B = report.Bar
    bars = [B("1", "a", 0, 10, "done"), B("2", "a", 1, 5, "done"), B("3", "a", 5, 8, "failed"),
            B("4", "a", 9, 12, "done"), B("5", "b", 0, 3, "done"), B("6", "a", 10, 11, "done")]
    report.assign_lanes(bars)
    assert [b.lane for b in bars] == [0, 1, 1, 1, 0, 0]


def test_escaping():
    assert report.esc('<a href="x">&\x01') == "&lt;a href=&quot;x&quot;&gt;&amp;\ufffd"
    assert report.href('a b/#?"<.MS') == "a%20b/%23%3F%22%3C.MS"
    assert report.fmt_flux(0.0123, "Jy/beam") == "12.3 mJy/beam"
    assert report.fmt_flux(4.5e-5, "Jy/beam") == "45 \u00b5Jy/beam"


# ----------------------------------------------------------------------------- in a browser


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_rendered_in_headless_chromium(page_path, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    shot = tmp_path / "shot.png"
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
            page_path.as_uri()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert shot.is_file(), out.stderr[-3000:]
    assert png_info(shot.read_bytes())[:2] == (1280, 2000)
    rgb = (image.imread(str(shot))[..., :3] * 255).round().astype("uint8")
    colours = {tuple(p) for p in rgb[::3, ::3].reshape(-1, 3)}
    assert len(colours) > 200  # text, the chart and the previews, not a blank page
    white = (rgb.min(axis=2) > 245).mean()
    assert white < 0.9
    red = tuple(int(report.COLOURS["failed"][i:i + 2], 16) for i in (1, 3, 5))
    assert (abs(rgb.astype(int) - red).sum(axis=2) < 12).sum() > 200  # the failure marks are drawn


@needs_preview_libs
def test_preview_of_a_big_non_square_image_with_blanks(tmp_path):
    """Reduced by block maxima: a one-pixel source survives; NaN borders and 4-D cubes are fine."""
    import numpy as np
    from astropy.io import fits

    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 0.002, (1, 1, 1500, 1000)).astype(np.float32)
    data[0, 0, 700, 400] = 3.0
    data[0, 0, :100] = np.nan
    path = tmp_path / "big-MFS-image.fits"
    fits.PrimaryHDU(data, header=fits.Header([("BUNIT", "JY/BEAM"), ("BMAJ", 0.01), ("BMIN", 0.005)])).writeto(path)
    png = tmp_path / "big.png"
    stats = report.render_preview(path, png, report.preview_libs())
    assert png_info(png.read_bytes())[:2] == (report.THUMB, report.THUMB)
    assert stats["peak"] == 3.0 and stats["unit"] == "Jy/beam" and stats["shape"] == [1500, 1000]
    assert 0.0018 < stats["rms"] < 0.0022 and stats["beam"] == "36\u2033 \u00d7 18\u2033"
    pixels = pytest.importorskip("matplotlib.image").imread(str(png))[..., :3]
    assert (pixels.sum(axis=2) > 2.5).sum() >= 1  # the source: a bright (yellow-white) pixel


def test_work_spans_cut_out_long_idle_stretches():
    # two runs of 20 min each, 5 h apart: two stretches; short pauses do not split
    assert report.work_spans([(0, 600), (500, 1200), (1300, 1400)]) == [(0, 1400)]
    assert report.work_spans([(0, 1200), (1200 + 5 * 3600, 2400 + 5 * 3600)]) == [
        (0, 1200), (1200 + 5 * 3600, 2400 + 5 * 3600)]
    # a pause longer than 10 min but short next to hours of work is kept in scale
    assert report.work_spans([(0, 4 * 3600), (4 * 3600 + 900, 5 * 3600)]) == [(0, 5 * 3600)]
    assert report.work_spans([]) == []


def test_a_run_resumed_hours_later_keeps_a_readable_timeline(run, tmp_path):
    # the job log of the real run, with its last attempt moved 6 hours later (a resume the next morning)
    jobs = copy_of(run, tmp_path)
    log = jobs.parent / "joblog.tsv"
    header, *rows = log.read_text().splitlines()
    last = rows[-1].split("\t")
    last[2] = f"{float(last[2]) + 6 * 3600:.3f}"
    log.write_text("\n".join([header, *rows[:-1], "\t".join(last)]) + "\n")
    out = imgpipe("report", jobs, cwd=run.root, env=run.env)
    assert out.returncode == 0, out.stderr
    page = parse(jobs.parent / "report.html")
    timeline = section(page, "timeline")
    (band,) = [g for g in timeline.iter(f"{SVG}g") if g.get("class") == "idle"]
    assert "idle" in text_of(band) and "6h00m" in text_of(band)
    assert text_of(band.find(f"{SVG}title")).startswith("nothing ran for 6h00m")
    # bars keep their width: a ~0.3 s job is not squashed to nothing on a 6-hour axis
    assert all(float(b.get("width")) > 20 for b in svg_bars(page))
    summary = text_of(section(page, "summary"))
    assert "with nothing running (the run was resumed later)" in summary
    hosts = section(page, "summary").find(".//table[@class='hosts']")
    use = [text_of(tr.findall("td")[-1]) for tr in hosts.findall("tr")[1:] if text_of(tr.find("td")) == "localhost"]
    assert int(use[0].rstrip(" %")) >= 10  # measured over the working time, not over 6 hours
