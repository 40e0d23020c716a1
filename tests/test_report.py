"""`imgpipe report` on a real run (see test_status.make_run: 2 done, 1 failed, 1 not started).

The page is checked as a document: it is well-formed XML (report.py promises that), so
ElementTree reads it and the tests look at its structure, not at substrings. Chromium,
when installed, renders it headless and the screenshot must not be blank. A run stopped
with SIGINT (as Ctrl-C), and resumed and stopped again, gives the report of a run in
progress and of stopped attempts.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree as ET

import pytest

from conftest import needs
from procs import none_alive
from test_status import HOSTILE, imgpipe, make_run, run_env, write_config

from imgpipe import jobs_file as jf
from imgpipe.attempt import read_result
from imgpipe import report
from imgpipe import status as st
from imgpipe.joblog import attempts
from imgpipe.joblog import JOBLOG, read_rows

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


PNG_URI = "data:image/png;base64,"
CLOCK = re.compile(r"^\d\d:\d\d(:\d\d(\.\d)?)?$")  # a time label of the axis


def tick_labels(page: ET.Element) -> list[str]:
    """The time labels of the timeline's axis."""
    return [text_of(t) for t in section(page, "timeline").iter(f"{SVG}text")
            if t.get("class") == "tick" and CLOCK.match(text_of(t))]


def of_day(t: str | float) -> float:
    """Seconds since midnight of an axis label (HH:MM:SS.s) or of a time (local)."""
    if isinstance(t, str):
        h, m, sec = t.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + t % 1


def png_of(src: str) -> bytes:
    """The PNG an <img src="data:image/png;base64,..."> holds."""
    assert src.startswith(PNG_URI), src[:60]
    return base64.b64decode(src[len(PNG_URI):], validate=True)


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
            if attr == "src":
                assert el.tag == "img" and value.startswith(PNG_URI), value[:60]  # in the page, not a file
            elif attr == "href":
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
    assert all(img.get("src", "").startswith(PNG_URI) for img in page.iter("img"))
    assert any(HOSTILE in text_of(td) for td in section(page, "jobs").iter("td"))  # shown as text, intact


def evil(name: str) -> str:
    """A name as hostile as a run can make one: markup, both quotes, an entity, a control character
    (no '/': a job id names its log file)."""
    return f"{name}\"'><script>alert(1)<b onmouseover=x>&amp;\x07"


def shown(name: str) -> str:
    """evil(name) as the page shows it: intact, but for the control character."""
    return evil(name).replace("\x07", "\ufffd")


def hostile_page(run) -> tuple[ET.Element, str, dict[str, str]]:
    """The page of the real run with every value the run gives made hostile: job ids, nodes (the
    plan's and the job log's), hosts, failure classes and reasons, Slurm ids, WSClean's error
    lines, image names, beams and preview errors. (The page, its XML tree, job id -> hostile id.)"""
    R = dataclasses.replace
    plan = jf.read(run.jobs_file)
    states = st.job_states(plan, run.run_dir)
    rows = attempts(run.run_dir, plan.tag)
    logs = report.read_logs(run.run_dir, (j.id for j in plan.jobs))
    ids = {j.id: evil(j.id) for j in plan.jobs}
    jobs = {j.id: R(j, id=ids[j.id], host=evil(j.host) if j.host else None) for j in plan.jobs}
    plan = R(plan, jobs=tuple(jobs.values()), worker=R(plan.worker, nodes=tuple(map(evil, plan.worker.nodes))))
    states = [R(s, job=jobs[s.job.id], host=evil("host"), why=evil("why") if s.why else None,
                failure=evil("class") if s.failure else None, slurm=evil("slurm")) for s in states]
    rows = [R(r, host=evil("node"), job_id=ids.get(r.job_id, r.job_id)) for r in rows]
    logs = {ids[k]: [R(f, path=os.path.join(os.path.dirname(f.path), ids[k] + os.path.basename(f.path)[len(k):]),
                       job_id=ids[k], host=evil("host"), wsclean_error=evil("error")) for f in fs]
            for k, fs in logs.items()}
    prev = {s.job.id: report.Preview(s.job.id, evil("image.fits"), png=PNG_URI + "AAAA", peak=2.0, rms=0.01,
                                     unit="Jy/beam", shape=(64, 64), beam=evil("beam"))
            for s in states if s.state == "done"}
    text = report.render(plan, run.jobs_file, run.run_dir, states, rows, prev, True, time.time(), logs)
    assert text.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(text[len("<!DOCTYPE html>\n"):]), text, {k: shown(k) for k in ids}


def test_every_value_from_the_run_is_escaped(run):
    """Whatever the run names hold, the page stays the page: no element, no attribute comes from
    them, and each name is shown intact (as text, or as the value of the attribute it belongs in)."""
    page, text, ids = hostile_page(run)
    assert "<script" not in text and "<b onmouseover" not in text
    assert not list(page.iter("script"))
    assert not [a for el in page.iter() for a in el.attrib if a.lower().startswith("on")]
    rows = section(page, "jobs").findall(".//tbody/tr")
    assert {tr.get("data-job") for tr in rows} == set(ids.values())
    assert all(text_of(tr.find("td")) == tr.get("data-job") for tr in rows)
    (card,) = section(page, "failures").findall(".//div[@class='failure']")
    assert card.get("data-job") == ids[run.ids["failed"]] and card.get("id") == "fail-" + ids[run.ids["failed"]]
    words = text_of(card)
    assert all(shown(w) in words for w in ("why", "class", "host", "error"))
    assert {g.get("data-job") for g in section(page, "timeline").iter(f"{SVG}g") if g.get("data-job")} == \
        {ids[run.ids[r]] for r in ("done", "hostile", "failed")}
    lanes = [text_of(t) for t in section(page, "timeline").iter(f"{SVG}text") if t.get("class") == "lane"]
    assert f"{shown('node')}  #1" in lanes and f"{shown('node999')}  (ran no job)" in lanes
    nodes = [text_of(tr.find("td")) for tr in section(page, "summary").findall(".//table[@class='hosts']/tr")[1:]]
    assert nodes == [shown("node"), shown("localhost"), shown("node999")]
    cards = section(page, "images").findall(".//div[@class='card']")
    assert {c.get("data-job") for c in cards} == {ids[run.ids["done"]], ids[run.ids["hostile"]]}
    assert all(shown("beam") in text_of(c) and shown("image.fits") in text_of(c) for c in cards)
    assert all(HOSTILE in text_of(tr) for tr in rows if tr.get("data-job") == ids[run.ids["hostile"]])
    assert shown("slurm") in text_of(section(page, "jobs"))
    assert "worker nodes" in text_of(section(page, "plan")) and shown("node999") in text_of(section(page, "plan"))


MARKUP = re.compile(r"<[A-Za-z/!?]")  # a tag, a comment, a doctype


def test_markup_is_written_only_by_html_and_html_literals():
    """Escaping by construction (report.py, "escaping"): a literal of report.py that holds a tag is
    the template of an html() call (which escapes the values put in it) or the literal of an
    Html(); never an f-string, a concatenation, a %-format or a .format(). And Html() wraps only
    literals, but in the escaping helpers themselves and in data_uri (base64: nothing to escape)."""
    tree = ast.parse(Path(report.__file__).read_text(encoding="utf-8"))
    helpers = {"esc", "html", "join", "__add__", "__radd__", "data_uri"}
    inside_helpers = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in helpers
                      for n in ast.walk(f)}
    templates, wrong = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node, clean=False):
            templates.add(id(node.body[0].value))  # (a docstring may speak of tags)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("html", "Html") \
                and id(node) not in inside_helpers:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                templates.add(id(first))
            else:
                wrong.append(f"line {node.lineno}: {node.func.id}() of something else than a literal")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MARKUP.search(node.value) \
                and id(node) not in templates:
            wrong.append(f"line {node.lineno}: markup outside html() and Html(): {node.value[:60]!r}")
    assert not wrong, "\n".join(wrong)
    assert report.html("<b title={}>{}</b>", '"x"', report.html("<i>{}</i>", "<&>")) == \
        '<b title=&quot;x&quot;><i>&lt;&amp;&gt;</i></b>'
    assert report.Html("<i>") + "<&>" == "<i>&lt;&amp;&gt;" and "<&>" + report.Html("<i>") == "&lt;&amp;&gt;<i>"
    assert report.join(["<&>", report.Html("<br/>")]) == "&lt;&amp;&gt;<br/>"


@needs_preview_libs
def test_previews_of_finished_jobs(run, page, page_path):
    cards = {c.get("data-job"): c for c in section(page, "images").findall(".//div[@class='card']")}
    assert set(cards) == {run.ids["done"], run.ids["hostile"]}  # finished jobs only
    for job_id, card in cards.items():
        img = card.find(".//img")
        assert img is not None, text_of(card)
        assert png_info(png_of(img.get("src")))[:2] == (report.THUMB, report.THUMB)
        text = text_of(card)
        assert "img-MFS-image.fits (64\u00d764)" in text  # channels-out 2: the MFS image is the main one
        peak = float(text.split("peak ")[1].split(" Jy/beam")[0])
        assert 5 < peak < 20  # the 10 Jy source
        assert " mJy/beam" in text.split("RMS ")[1] and "DR " in text
        # the same peak, RMS and DR as the quality table's: one measure of the image on the page
        cells = [text_of(td) for td in section(page, "quality").find(f".//tr[@data-job='{job_id}']").findall("td")]
        assert f"peak {cells[3]}, RMS {cells[2]}, DR {cells[4]}" in text, (text, cells)
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
    assert tick_labels(page) == []  # no axis of made-up times (1970)
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
    # a node of 2 slots never gets a third lane, whatever the clocks say (a bar starts 2 ms early)
    bars = [B("1", "a", 0, 10, "done"), B("2", "a", 1, 5, "done"), B("3", "a", 4.998, 8, "done")]
    report.assign_lanes(bars, slots=2)
    assert [b.lane for b in bars] == [0, 1, 1]


def test_escaping():
    assert report.esc('<a href="x">&\x01') == "&lt;a href=&quot;x&quot;&gt;&amp;\ufffd"
    assert report.href('a b/#?"<.MS') == "a%20b/%23%3F%22%3C.MS"
    assert report.fmt_flux(0.0123, "Jy/beam") == "12.3 mJy/beam"
    assert report.fmt_flux(4.5e-5, "Jy/beam") == "45 \u00b5Jy/beam"


# ----------------------------------------------------------------------------- in a browser


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


needs_chromium = pytest.mark.skipif(chromium() is None,
                                    reason="chromium is not installed (Debian: apt-get install chromium)")


def screenshot(page_path: Path, tmp_path: Path, height: int = 2000):
    """The page as headless Chromium renders it in a 1280 x height window: RGB pixels (uint8)."""
    image = pytest.importorskip("matplotlib.image")
    shot = tmp_path / "shot.png"
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size=1280,{height}",
            page_path.as_uri()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert shot.is_file(), out.stderr[-3000:]
    assert png_info(shot.read_bytes())[:2] == (1280, height)
    return (image.imread(str(shot))[..., :3] * 255).round().astype("uint8")


@needs_chromium
def test_rendered_in_headless_chromium(page_path, tmp_path):
    rgb = screenshot(page_path, tmp_path)
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
    assert 0.0018 < stats["rms"] < 0.0022 and stats["beam"] == [0.01, 0.005]
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


# ----------------------------------------------------------------------------- a run in progress, a run stopped
# One long WSClean job: run, caught running (a report then), stopped with SIGINT as Ctrl-C would;
# run again (its first log is archived as logs/ID.1), stopped again.


def plan_long_job(root: Path, ms_cache) -> tuple[Path, dict]:
    ms = root / "data" / "localhost" / "SW01_T009.MS"
    shutil.copytree(ms_cache(), ms)
    config = write_config(root, nodes="localhost", pinned=False,
                          wsclean={"size": "1024 1024", "scale": "1arcmin", "niter": 1000000})
    env = run_env(root)
    jobs_file = root / "run" / "jobs.txt"
    assert imgpipe("plan", config, ms, "--jobs-file", jobs_file, cwd=root, env=env).returncode == 0
    return jobs_file, env


def run_until_running(jobs_file: Path, root: Path, env: dict) -> subprocess.Popen:
    """`imgpipe run` in the background, once its job's wrapper has said "start:" (WSClean runs)."""
    proc = subprocess.Popen([sys.executable, "-m", "imgpipe.cli", "run", str(jobs_file)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        doc = json.loads(imgpipe("status", jobs_file.parent, "--json", cwd=root, env=env).stdout)
        log = doc["jobs"][0]["log"]
        if doc["counts"]["running"] and log and ": start: wsclean " in Path(log).read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.2)
    ctrl_c(proc)
    raise AssertionError("the job did not start within 60 s")


def ctrl_c(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130 and "stopped" in err, err


def keep_page(path: Path, name: str) -> Path:
    """A copy of report.html, beside it (its links still resolve), as it was now."""
    dest = path.with_name(name)
    shutil.copyfile(path, dest)
    return dest


def said_at(log: Path, what: str) -> str:
    """HH:MM:SS of the wrapper's first line in ``log`` whose message starts with ``what``."""
    m = re.search(r"^imgpipe-job \S+ \[\S+ \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d)\]: " + re.escape(what),
                  log.read_text(errors="replace"), re.M)
    assert m, f"{log}: no line {what!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, ms_cache):
    root = tmp_path_factory.mktemp("stopped-run")
    jobs_file, env = plan_long_job(root, ms_cache)
    pages = {}
    for n in (1, 2):
        proc = run_until_running(jobs_file, root, env)
        try:
            time.sleep(2.5)  # (the logs' times are whole seconds)
            if n == 1:  # WSClean prints a line (the log's ctime is now), and the report is made at once
                os.utime(jobs_file.parent / "logs" / jf.read(jobs_file).jobs[0].id)
                pages["running"] = keep_page(report.write_report(jobs_file), "report-running.html")
        finally:
            ctrl_c(proc)
        pages[f"stopped{n}"] = keep_page(report.write_report(jobs_file), f"report-stopped{n}.html")
    job_id = jf.read(jobs_file).jobs[0].id
    return {"root": root, "run_dir": jobs_file.parent, "job": job_id, "pages": pages}


def bar_titles(page: ET.Element, outcome: str) -> list[str]:
    return [text_of(g.find(f"{SVG}title")) for g in section(page, "timeline").iter(f"{SVG}g")
            if g.get("class") == f"bar {outcome}"]


def test_report_of_a_run_in_progress_has_time_labels(stopped_run):
    """Mid-run: the running job's bar starts when its log says it started, and the axis has time labels."""
    page = parse(stopped_run["pages"]["running"])
    assert [b.get("class") for b in svg_bars(page)] == ["bar running"]
    (title,) = bar_titles(page, "running")
    first_log = stopped_run["run_dir"] / "logs" / f"{stopped_run['job']}.1"  # (archived when it ran again)
    assert f"start {said_at(first_log, 'start: ')}," in title
    row = section(page, "jobs").find(f".//tr[@data-job='{stopped_run['job']}']")
    assert text_of(row.findall("td")[4]) == said_at(first_log, "start: ")  # the table says the same
    runtime = re.search(r"runtime (\S+) s", title)
    assert runtime and float(runtime.group(1)) >= 2.0, title  # (2.5 s after it said "start:")
    labels = tick_labels(page)
    assert len(labels) >= 2, labels


def test_every_timeline_has_time_labels(run):
    """However short what ran: a job started a moment ago, a job of no length yet."""
    plan = jf.read(run.jobs_file)
    jobs = {j.id: j for j in plan.jobs}
    job = plan.jobs[0].id
    now = time.time()
    for what, (start, end) in {"started 5 ms ago": (now - 0.005, now), "started 50 ms ago": (now - 0.05, now),
                               "started now": (now, now)}.items():
        bars = [report.Bar(job, "localhost", start, end, "running")]
        report.assign_lanes(bars)
        svg = ET.fromstring(report.timeline_svg(plan, bars, jobs))
        labels = [text_of(t) for t in svg.iter(f"{SVG}text") if t.get("class") == "tick" and CLOCK.match(text_of(t))]
        assert len(labels) >= 2, (what, labels)
        for label in labels:  # the times of the job, not made up
            assert -0.1 <= (of_day(label) - of_day(start)) % 86400 <= report.MIN_SPAN + 0.1, (what, labels)


def test_stopped_attempts_are_on_the_timeline(stopped_run):
    run_dir, job = stopped_run["run_dir"], stopped_run["job"]
    assert not [r for r in read_rows(run_dir / JOBLOG) if r.job_id == job]  # the loop dropped the stopped rows
    first_log, second_log = run_dir / "logs" / f"{job}.1", run_dir / "logs" / job
    # stopped once: one grey bar, from its log's "start:" line to its "stopped" line
    page = parse(stopped_run["pages"]["stopped1"])
    bars = svg_bars(page)
    assert [b.get("class") for b in bars] == ["bar stopped"]
    assert bars[0].get("fill") == report.COLOURS["stopped"]
    others = (report.COLOURS["done"], report.COLOURS["failed"], report.COLOURS["running"])
    assert report.COLOURS["stopped"] not in others  # a colour of its own
    (title,) = bar_titles(page, "stopped")
    assert f"job {job} \u2014 SW01_T009.MS" in title and "host localhost" in title
    assert f"start {said_at(first_log, 'start: ')}," in title
    assert "stopped by the user" in title and "runs again on resume" in title
    assert len(tick_labels(page)) >= 2
    assert "stopped by the user" in text_of(section(page, "timeline").find(".//p[@class='legend muted']"))
    row = section(page, "jobs").find(f".//tr[@data-job='{job}']")
    assert row.get("data-state") == "stopped"  # as imgpipe status says, in its words: it runs again on resume
    status = json.loads(subprocess.run([sys.executable, "-m", "imgpipe.cli", "status", "--json",
                                        str(first_log.parent.parent)], capture_output=True, text=True).stdout)
    (state,) = [j for j in status["jobs"] if j["id"] == job]
    assert state["state"] == "stopped" and state["why"] in text_of(row), (state, text_of(row))
    assert "stopped by the user" in state["why"] and "runs again on resume" in state["why"]
    assert "1 attempt(s) were stopped by the user" in text_of(section(page, "summary"))
    # run again and stopped again: both attempts, the first from its archived log
    page = parse(stopped_run["pages"]["stopped2"])
    assert [b.get("class") for b in svg_bars(page)] == ["bar stopped", "bar stopped"]
    titles = bar_titles(page, "stopped")
    assert f"start {said_at(first_log, 'start: ')}," in titles[0]
    assert f"start {said_at(second_log, 'start: ')}," in titles[1]
    assert "attempt 1 of 2" in titles[0] and "attempt 2 of 2" in titles[1], titles  # (as their results say)
    assert [read_result(p).attempt for p in (first_log, second_log)] == [1, 2]
    assert "2 attempt(s) were stopped by the user" in text_of(section(page, "summary"))


def test_stopped_attempts_are_those_whose_result_says_so():
    """The wrapper's result names a stopped attempt; no job-log row is matched to it by time."""
    t = 1.8e9
    logs = {"0001": [report.LogFacts("logs/0001.1", "0001", "node001", t + 1, t + 99, "SIGTERM"),
                     report.LogFacts("logs/0001", "0001", "node001", t + 101, t + 103, "SIGTERM")],
            "0002": [report.LogFacts("logs/0002", "0002", "node001", t + 5, t + 60, None)]}
    assert [f.path for f in report.stopped_attempts(logs)] == ["logs/0001.1", "logs/0001"]
    assert [f.path for f in report.stopped_attempts(logs, skip={"logs/0001"})] == ["logs/0001.1"]


# ----------------------------------------------------------------------------- what WSClean said


def test_a_failure_says_wscleans_own_exit_status_and_error(run, page):
    (card,) = section(page, "failures").findall(".//div[@class='failure']")
    words = " ".join(text_of(card).split())
    assert "WSClean's exit status 255" in words and "exit status 10" not in words  # not the wrapper's 10
    assert "(class wsclean," in words
    said = card.find(".//div[@class='wsclean-error']")
    assert said is not None, words
    assert text_of(said) == f"WSClean said: Table {run.root}/data/localhost/SW01_T002.MS does not exist"
    why = section(page, "jobs").find(f".//tr[@data-job='{run.ids['failed']}']/td[@class='why']")
    assert text_of(why) == "WSClean failed with exit status 255"
    assert why.get("title") == text_of(said) and why.find("a").get("href") == f"#fail-{run.ids['failed']}"


def test_log_facts_from_the_structured_lines_of_a_long_log(tmp_path):
    """Only the wrapper's two structured lines are read: its start line at the top, its result at
    the end; none of the sentences in between (WSClean's, the wrapper's) counts."""
    log = tmp_path / "0007"
    command = "wsclean -name x " + " ".join(f"/data/ms{i:05d}.MS" for i in range(2000))  # a start line > 4 KB
    start = {"format": 1, "job": "0007", "host": "node002.cluster", "pid": 42, "start": 1.8e9}
    result = {**start, "outcome": "wsclean", "exit_status": 10, "wsclean_status": 134, "end": 1.8e9 + 150,
              "wsclean_error": "Out of memory: <cannot allocate> & more"}
    log.write_text("imgpipe-start " + json.dumps(start) + "\n"
                   + "imgpipe-job 0007 [node003 2026-12-01 10:48:01]: start: " + command + "\n\n"
                   + "Gridding pass 0...\n" * 3000
                   + "imgpipe-job 0007 [node003 2026-12-01 10:50:31]: stopped (SIGTERM): a sentence, not a fact\n"
                   + "imgpipe-result " + json.dumps(result) + "\n")
    facts = report.read_log(log, "0007")
    assert facts.host == "node002.cluster" and facts.end - facts.start == 150
    assert facts.wsclean_status == 134 and facts.wsclean_error == "Out of memory: <cannot allocate> & more"
    assert facts.stopped is None


# ----------------------------------------------------------------------------- beams


def test_beams_in_arcmin_or_arcsec():
    assert report.fmt_beam(556 / 3600, 334 / 3600) == "9.3\u2032 \u00d7 5.6\u2032"
    assert report.fmt_beam(60 / 3600, 40 / 3600) == "1.0\u2032 \u00d7 0.7\u2032"
    assert report.fmt_beam(36 / 3600, 18 / 3600) == "36\u2033 \u00d7 18\u2033"
    assert report.fmt_beam(4.24 / 3600, 3.14 / 3600) == "4.2\u2033 \u00d7 3.1\u2033"


@needs_preview_libs
def test_beam_of_a_real_image_in_arcmin(run, page):
    from astropy.io import fits

    header = fits.getheader(run.root / "images" / "SW01_T001.MS" / "img-MFS-image.fits")
    major, minor = header["BMAJ"] * 60, header["BMIN"] * 60  # arcmin: this run's beam is over 1'
    assert major >= 1
    card = section(page, "images").find(f".//div[@id='img-{run.ids['done']}']")
    assert f"beam {major:.1f}\u2032 \u00d7 {minor:.1f}\u2032" in text_of(card)


# ----------------------------------------------------------------------------- one file


@needs_preview_libs
def test_the_page_alone_holds_its_previews(run, page_path, tmp_path):
    """report.html copied alone (mailed): its previews are in it."""
    alone = tmp_path / "mailed" / "report.html"
    alone.parent.mkdir()
    shutil.copyfile(page_path, alone)
    imgs = list(section(parse(alone), "images").iter("img"))
    assert len(imgs) == 2
    for img in imgs:
        assert png_info(png_of(img.get("src")))[:2] == (report.THUMB, report.THUMB)


@needs_preview_libs
@needs_chromium
def test_the_page_alone_shows_its_previews_in_chromium(page_path, tmp_path):
    alone = tmp_path / "mailed" / "report.html"
    alone.parent.mkdir()
    shutil.copyfile(page_path, alone)
    rgb = screenshot(alone, tmp_path, height=2600).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # the previews' orange and yellow ('inferno'): no other colour of the page is like them
    assert ((r > 200) & (g > 120) & (b < g - 60)).sum() > 50


@needs_preview_libs
def test_cached_previews_outlive_a_report_without_preview_libs(run, tmp_path, monkeypatch):
    jobs = copy_of(run, tmp_path)
    folder = jobs.parent / report.REPORT_DIR
    report.write_report(jobs)
    cached = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    assert len(cached) == 4  # a PNG and its statistics per finished job
    monkeypatch.setattr(report, "preview_libs", lambda: None)
    assert parse(report.write_report(jobs)).find(".//*[@id='no-previews']") is not None
    assert sorted(f.name for f in folder.iterdir()) == sorted(cached)  # nothing deleted
    monkeypatch.undo()
    page = parse(report.write_report(jobs))
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == cached  # nor drawn again
    assert len(list(section(page, "images").iter("img"))) == 2


@needs_preview_libs
def test_a_report_of_cached_previews_imports_no_preview_library_and_a_broken_one_is_said(run, tmp_path):
    """The preview libraries cost ~1 s to import: a report whose previews are all cached does not
    import them; when they are installed but do not import, each preview says why, the page is made."""
    jobs = copy_of(run, tmp_path)
    report.write_report(jobs)  # draws and caches the previews
    code = ("import sys; from pathlib import Path; from imgpipe import report; "
            f"report.write_report(Path({str(jobs)!r})); "
            "print(sorted(m for m in ('astropy', 'matplotlib') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    shutil.rmtree(jobs.parent / report.REPORT_DIR)
    code = ("import sys; sys.modules['astropy.io'] = None; from pathlib import Path; from imgpipe import report; "
            f"print(report.write_report(Path({str(jobs)!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r
    page = Path(r.stdout.strip()).read_text()
    assert "cannot preview: the preview libraries do not import (ModuleNotFoundError" in page, page[-3000:]


_SLOW_REPORT = """
import os, sys, time
from imgpipe import report
report.DRAW_POOL_MIN = 1
report.os.cpu_count = lambda: 2
def slow(*args):  # (in the worker processes: each says it is drawing)
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(60)
report.render_preview = slow
from imgpipe.cli import main
sys.exit(main(["report", sys.argv[2]]))
"""


@needs_preview_libs
def test_ctrl_c_while_previews_are_drawn_says_interrupted_and_stops_the_workers(run, tmp_path):
    """Ctrl-C (SIGINT to the process group) during a cold report: exit 130 with one line, no Python
    traceback from the drawing workers, and none of them left."""
    jobs = copy_of(run, tmp_path)
    shutil.rmtree(jobs.parent / report.REPORT_DIR, ignore_errors=True)
    marker = tmp_path / "drawing"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_REPORT, str(marker), str(jobs)], env={**os.environ, **run.env},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # a worker drawing (the 2 previews are one chunk of work)
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no worker started drawing")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and err == "imgpipe: interrupted\n" and out == "", err
    workers = {int(p) for p in marker.read_text().split()}
    assert proc.pid not in workers and none_alive(workers)


@needs_preview_libs
def test_previews_drawn_by_worker_processes_are_the_ones_drawn_alone(run, tmp_path, monkeypatch):
    """Many previews are drawn on every CPU: the same PNGs and statistics as one at a time."""
    alone = copy_of(run, tmp_path / "alone")
    shutil.rmtree(alone.parent / report.REPORT_DIR, ignore_errors=True)  # (other tests' reports: no cache)
    report.write_report(alone)
    monkeypatch.setattr(report, "DRAW_POOL_MIN", 1)  # 2 previews to draw: 2 worker processes
    monkeypatch.setattr(report.os, "cpu_count", lambda: 2)
    drawn_by = tmp_path / "drawn-by"
    draw = report.render_preview

    def spy(*args):
        with open(drawn_by, "a") as f:
            f.write(f"{os.getpid()}\n")
        return draw(*args)

    monkeypatch.setattr(report, "render_preview", spy)  # (the workers are forked: they see it)
    pooled = copy_of(run, tmp_path / "pooled")
    shutil.rmtree(pooled.parent / report.REPORT_DIR, ignore_errors=True)
    page = parse(report.write_report(pooled))
    files = sorted(f.name for f in (alone.parent / report.REPORT_DIR).iterdir())
    assert files == sorted(f.name for f in (pooled.parent / report.REPORT_DIR).iterdir()) and len(files) == 4
    for name in files:
        a, b = (p.parent / report.REPORT_DIR / name for p in (alone, pooled))
        if name.endswith(".png"):
            assert a.read_bytes() == b.read_bytes()
        else:
            assert json.loads(a.read_text())["stats"] == json.loads(b.read_text())["stats"]
    assert len(list(section(page, "images").iter("img"))) == 2
    pids = drawn_by.read_text().split()
    assert len(pids) == 2 and str(os.getpid()) not in pids  # drawn in worker processes
