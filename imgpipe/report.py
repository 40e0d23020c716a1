"""``imgpipe report``: one HTML page that tells what a run did, at a glance.

``write_report(jobs_file)`` writes ``report.html`` in the run directory (the jobs
file's directory) and returns its path. The page is one file that holds everything
it shows: inline CSS, the timeline as inline SVG, the image previews as PNG data
(``data:`` URIs); no JavaScript, nothing fetched. Mailed or copied alone, it shows
all of it; only its links to the run's files (logs, image directories, FITS files,
jobs.txt) need it to stay in the run directory. ``report/`` next to it is a cache
(each preview's PNG and statistics, so the next report does not redraw them): the
page does not need it. It holds

- the run summary: how many jobs are done, failed, running, not started; the wall
  time, the busy time, how busy each node was;
- a timeline, with time labels: every attempt of every job (every row of the job
  log) as a bar on its node's slot lane, failed attempts in red, running jobs in
  blue (from the time their log says they started), attempts stopped by the user
  (Ctrl-C) in grey; hovering a bar shows the job id, the MS, the host, the runtime
  and the outcome. A long stretch in which nothing ran (a run resumed hours later)
  is cut out and shown as a narrow "idle" band, so the bars stay readable;
- the failures first, each with why it failed (WSClean's own exit status and its
  error message when its log says them) and the last lines of its log;
- the table of all jobs (failed, running, not started, done), with links to each
  log and image directory;
- a preview of each finished job's main image (the MFS image when there is one,
  else the image), with its peak, (robust) RMS and beam. Previews need astropy and
  matplotlib (``pip install 'imgpipe[report]'``); without them the page says so
  and has everything else (and the cache in ``report/`` is kept);
- the jobs file's header (config, digest, worker settings), the config text and
  every job's command.

Stopped attempts have no row in the job log (the loop drops them: they are not
failures, the job runs again on resume). The report finds them in the jobs' logs,
current and archived (``logs/ID``, ``logs/ID.1`` ...): a log that ends with the
wrapper's ``stopped (SIG...)`` line and that no row accounts for. Only the first
and the last LOG_PEEK bytes of each log are read.

Every string from the run (MS names, log lines, the config) is HTML-escaped.
The page is also well-formed XML, which the tests rely on to read it.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import re
import statistics
import sys
import time
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from . import __version__
from . import jobs_file as jf
from . import status as st
from .files import write_whole
from .hosts import is_local
from .joblog import attempts
from .plan import Job, Plan
from .attempt import LogFacts, outcome_of, read_log
from .run_dir import LOGS, SLURM_PLACED, Row

REPORT = "report.html"
REPORT_DIR = "report"  # the previews' cache (PNG and statistics), next to report.html; the page does not need it
PREVIEW_FORMAT = 2  # in each cached preview's key: a cache of another format is drawn again
THUMB = 256  # preview size in pixels (square)
SLAB_PIXELS = 4_000_000  # pixels of an image read at a time to draw its preview
SAMPLE_PIXELS = 250_000  # pixels the median and MAD are taken from (a strided sample: ~0.3% on the RMS)
TAIL_LINES = 12  # log lines shown for each failure
NO_PREVIEW_NOTE = "install imgpipe[report] (astropy, matplotlib) for image previews"
INSTALL_HINT = "pip install 'imgpipe[report]'"
CONFIG_MAX = 200_000  # characters of config text shown

COLOURS = {"done": "#2e9b4f", "failed": "#d62728", "running": "#1f77b4", "stopped": "#7f8793"}


# ----------------------------------------------------------------- escaping

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(value) -> str:
    """HTML-escape (quotes too) and drop control characters (the page must stay well-formed)."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def href(path: str) -> str:
    """A relative link, percent-encoded and escaped: a name holding ``#``, ``?`` or ``"`` still links."""
    return esc(quote(path, safe="/"))


# ----------------------------------------------------------------- formatting


def fmt_clock(t: float | None, date: bool = False) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(t))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_flux(value: float | None, unit: str) -> str:
    """9.73 Jy/beam, 12.3 mJy/beam, 450 µJy/beam (scaled when the unit is Jy-based)."""
    if value is None or not math.isfinite(value):
        return "-"
    if unit.lower().startswith("jy"):
        rest = unit[2:]
        a = abs(value)
        for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "\u00b5")):
            if a >= scale or scale == 1e-6:
                return f"{value / scale:.3g} {prefix}Jy{rest}"
    return f"{value:.3g} {unit}".strip()


def fmt_beam(bmaj: float, bmin: float) -> str:
    """A restoring beam (FITS BMAJ, BMIN: degrees) in arcmin when its major axis is 1' or more
    (9.3′ × 5.6′), else in arcsec (36″ × 18″; 4.2″ below 10″)."""
    major, minor = bmaj * 3600, bmin * 3600
    if round(major) >= 60:
        return f"{major / 60:.1f}\u2032 \u00d7 {minor / 60:.1f}\u2032"

    def arcsec(v: float) -> str:
        return f"{v:.1f}\u2033" if round(v, 1) < 10 else f"{v:.0f}\u2033"

    return f"{arcsec(major)} \u00d7 {arcsec(minor)}"


def _unit(bunit: str) -> str:
    u = (bunit or "").strip()
    return {"JY/BEAM": "Jy/beam", "JY/PIXEL": "Jy/pixel", "JY": "Jy"}.get(u.upper(), u)


def ms_label(job: Job) -> str:
    names = [os.path.basename(m.rstrip("/")) for m in job.ms]
    if not names:
        return "-"
    return names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")


def rel(path: str | os.PathLike, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


# ----------------------------------------------------------------- the job log: every attempt


def host_namer(plan: Plan, states: list[st.JobState] = ()):
    """row -> node name: GNU parallel logs this machine as ':', and a job Slurm placed as 'slurm'
    (its node is in its log: the job's state has it)."""
    local = next((h for h in plan.worker.nodes if is_local(h)), "localhost")
    placed = {s.job.id: s.host for s in states if s.host}

    def name(row: Row) -> str:
        if row.host == SLURM_PLACED:
            return placed.get(row.job_id or "", row.host)
        return local if row.host in (":", "localhost") else row.host

    return name


def running_host(plan: Plan, s: st.JobState) -> str:
    """The node of a running job: its pinned node, else the host its wrapper names in its log."""
    return s.host or "(node not known yet)"


# ----------------------------------------------------------------- the jobs' logs: what the wrapper said

def job_logs(run_dir: Path, job_ids) -> dict[str, list[Path]]:
    """job id -> its logs, oldest first: the archived ones (ID.1, ID.2 ...), then the current one (ID)."""
    ids = set(job_ids)
    found: dict[str, list[tuple[int, Path]]] = {}
    try:
        names = os.listdir(run_dir / LOGS)
    except OSError:
        return {}
    for name in names:
        base, dot, n = name.rpartition(".")
        if name in ids:
            found.setdefault(name, []).append((1 << 62, run_dir / LOGS / name))
        elif dot and n.isdigit() and base in ids:
            found.setdefault(base, []).append((int(n), run_dir / LOGS / name))
    return {jid: [p for _, p in sorted(logs)] for jid, logs in found.items()}


def read_logs(run_dir: Path, job_ids) -> dict[str, list[LogFacts]]:
    """job id -> the facts of each of its logs, oldest first (see job_logs)."""
    return {jid: [read_log(p, jid, attempt=n) for n, p in enumerate(paths, start=1)]
            for jid, paths in job_logs(run_dir, job_ids).items()}


def stopped_attempts(logs: dict[str, list[LogFacts]], skip=()) -> list[LogFacts]:
    """The attempts stopped by the user: those whose result says so (outcome 'stopped'). ``skip``:
    logs not to count (a job still running). Their job-log rows, when the engine left any, are
    not drawn (timeline_bars): the result is the attempt's one story."""
    out = [f for facts in logs.values() for f in facts
           if f.stopped and f.start is not None and f.end is not None and f.path not in skip]
    return sorted(out, key=lambda f: f.start)


def current_log(logs: dict[str, list[LogFacts]], job_id: str) -> LogFacts | None:
    """The facts of a job's current log (``logs/ID``, not an archived one), if it has one."""
    return next((f for f in logs.get(job_id, ()) if os.path.basename(f.path) == job_id), None)


@dataclass
class Bar:
    job_id: str
    host: str
    start: float
    end: float
    outcome: str  # done | failed | running | stopped
    why: str = ""
    attempt: int = 1
    attempts: int = 1
    lane: int = 0


def timeline_bars(plan: Plan, states: list[st.JobState], rows: list[Row], now: float,
                  logs: dict[str, list[LogFacts]] | None = None) -> list[Bar]:
    """One bar per job-log row (failed ones marked), one per running job (from the start its log
    says), and one per attempt stopped by the user (from the logs), each on a slot lane."""
    logs = logs or {}
    n_of: dict[str, int] = {}
    rows = [r for r in rows if outcome_of(r.exitval, r.signal)[0] != "stopped"]  # (drawn from their results)
    for r in rows:
        n_of[r.job_id or "?"] = n_of.get(r.job_id or "?", 0) + 1
    seen: dict[str, int] = {}
    host_of = host_namer(plan, states)
    bars = []
    for r in rows:
        jid = r.job_id or "?"
        seen[jid] = seen.get(jid, 0) + 1
        why = "" if r.ok else outcome_of(r.exitval, r.signal)[1]
        bars.append(Bar(jid, host_of(r), r.start, r.start + max(r.runtime, 0.0), "done" if r.ok else "failed",
                        why, seen[jid], n_of[jid]))
    running = set()
    for s in states:
        if s.state == "running" and s.start is not None:
            log = current_log(logs, s.job.id)
            if log is not None:
                running.add(log.path)
            start = s.start
            bars.append(Bar(s.job.id, running_host(plan, s), start, max(now, start), "running"))
    for f in stopped_attempts(logs, skip=running):
        why = f"stopped by the user (the run was stopped; the job got {f.stopped}): not done, it runs again on resume"
        bars.append(Bar(f.job_id, st.node_name(f.host, plan) or "(node not known)", f.start, max(f.end, f.start),
                        "stopped", why))
    assign_lanes(bars, plan.worker.max_concurrent)
    return bars


def assign_lanes(bars: list[Bar], slots: int | None = None) -> None:
    """Each bar goes to the first lane of its host that is free at its start (lanes = the node's
    slots). Times are the engine's and the nodes' clocks, to the millisecond: a bar that seems to
    start a moment before the one before it on its slot ended goes on the lane that frees first,
    never on a lane the node does not have (``slots``: max_concurrent)."""
    ends: dict[str, list[float]] = {}
    for b in sorted(bars, key=lambda b: (b.start, b.end)):
        lanes = ends.setdefault(b.host, [])
        for i, end in enumerate(lanes):
            if end <= b.start + 1e-3:
                b.lane, lanes[i] = i, b.end
                break
        else:
            if slots is not None and len(lanes) >= slots:
                i = min(range(len(lanes)), key=lambda k: lanes[k])
                b.lane, lanes[i] = i, max(lanes[i], b.end)
            else:
                b.lane = len(lanes)
                lanes.append(b.end)


def _nice_step(span: float, target: int = 8) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                 43200, 86400):
        if span / step <= target:
            return step
    return 86400 * math.ceil(span / 86400 / target)


IDLE_CUT = 600.0  # an idle stretch longer than this, and than a fifth of the working time, is cut out
IDLE_W = 52  # px: the width of a cut-out idle stretch on the timeline


def work_spans(intervals) -> list[tuple[float, float]]:
    """The stretches of time in which jobs ran, split where nothing ran for long (a run resumed
    hours later, say): idle gaps longer than IDLE_CUT and a fifth of the working time."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if not merged:
        return []
    cut = max(IDLE_CUT, sum(e - s for s, e in merged) / 5)
    spans = [merged[0]]
    for start, end in merged[1:]:
        if start - spans[-1][1] > cut:
            spans.append([start, end])
        else:
            spans[-1][1] = max(spans[-1][1], end)
    return [(s, e) for s, e in spans]


MIN_SPAN = 1.0  # s: the shortest time axis (a job that started a moment ago still gets time labels)
TICK_GAP = 64  # px: tick labels closer than this to the one before are left out


def axis_spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The working stretches as drawn: at least MIN_SPAN of time in all (the last one is lengthened)."""
    if not spans:
        return []
    short = MIN_SPAN - sum(e - s for s, e in spans)
    if short <= 0:
        return list(spans)
    return [*spans[:-1], (spans[-1][0], spans[-1][1] + short)]


def axis_ticks(spans: list[tuple[float, float]], step: float) -> list[float]:
    """The times labelled on the axis: the multiples of ``step`` in each working stretch; a stretch
    too short to hold one is labelled at its start and its end, so no stretch is left without."""
    out: list[float] = []
    for s0, s1 in spans:
        k = math.ceil(s0 / step - 1e-9)
        mine = []
        while k * step <= s1 + 1e-6:
            mine.append(k * step)
            k += 1
        out += mine or [s0, s1]
    return out


def tick_label(t: float, step: float, days: bool) -> str:
    """HH:MM (whole minutes), HH:MM:SS, or HH:MM:SS.s (steps under a second); 'MM-DD ' first over days."""
    fmt = ("%m-%d " if days else "") + ("%H:%M" if step >= 60 and step % 60 == 0 else "%H:%M:%S")
    if step >= 1:
        return time.strftime(fmt, time.localtime(t))
    tenths = int(round(t * 10))
    return time.strftime(fmt, time.localtime(tenths // 10)) + f".{tenths % 10}"


def timeline_svg(plan: Plan, bars: list[Bar], job_by_id: dict[str, Job]) -> str:
    """The Gantt chart: x = time, one lane per node slot; inline SVG, hover titles, labels when wide enough."""
    slots = plan.worker.max_concurrent
    hosts = list(plan.worker.nodes)
    for b in bars:
        if b.host not in hosts:
            hosts.append(b.host)
    used = {h: 1 + max((b.lane for b in bars if b.host == h), default=-1) for h in hosts}
    lanes: list[tuple[str, int]] = []
    for h in hosts:
        n = max(used[h], slots) if used[h] else 1
        lanes += [(h, i) for i in range(n)]
    lane_y = {key: i for i, key in enumerate(lanes)}
    width, left, right, top, lane_h, bar_h = 1200, 170, 16, 34, 20, 14
    height = top + lane_h * len(lanes) + 8
    spans = axis_spans(work_spans((b.start, b.end) for b in bars)) or [(0.0, 1.0)]
    t0, t1 = spans[0][0], spans[-1][1]
    span = max(sum(e - s for s, e in spans), 0.01)  # time drawn to scale: idle gaps are cut out
    plot_w = width - left - right
    scale = (plot_w - IDLE_W * (len(spans) - 1)) / span
    offsets = []  # x where each span starts
    pos = float(left)
    for s0, s1 in spans:
        offsets.append(pos)
        pos += (s1 - s0) * scale + IDLE_W

    def x(t: float) -> float:
        for (s0, s1), off in zip(spans, offsets):
            if t <= s1 + 1e-6:
                return off + (max(t, s0) - s0) * scale
        return offsets[-1] + (spans[-1][1] - spans[-1][0]) * scale

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="timeline of every job on every node slot">']
    out.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>')
    # lanes, with the host's name on its first lane
    for (h, i), n in lane_y.items():
        y = top + n * lane_h
        if n % 2 == 0:
            out.append(f'<rect x="{left}" y="{y}" width="{plot_w}" height="{lane_h}" fill="#f4f5f7"/>')
        if i == 0 and n:
            out.append(f'<line x1="4" x2="{width - right}" y1="{y}" y2="{y}" stroke="#b8bcc4"/>')
        label = f"{h}  #{i + 1}" if used[h] else f"{h}  (ran no job)"
        out.append(f'<text x="{left - 6}" y="{y + lane_h - 6}" text-anchor="end" class="lane">{esc(label)}</text>')
    # time axis: ticks within each working stretch; between two, a band says how long nothing ran
    step = _nice_step(span)
    last_x = -1e9
    for t in (axis_ticks(spans, step) if bars else []):
        xx = x(t)
        if xx - last_x < TICK_GAP:
            continue
        last_x = xx
        anchor = "end" if xx > width - right - TICK_GAP / 2 else "middle"
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top - 4}" y2="{height - 8}" stroke="#d5d8dd"/>')
        out.append(f'<text x="{xx:.1f}" y="{top - 8}" text-anchor="{anchor}" class="tick">'
                   f'{esc(tick_label(t, step, t1 - t0 > 86400))}</text>')
    for n, (s0, s1) in enumerate(spans[:-1]):
        gx, idle = offsets[n + 1] - IDLE_W, spans[n + 1][0] - s1
        tip = (f"nothing ran for {fmt_duration(idle)}: "
               f"{fmt_clock(s1, date=True)} to {fmt_clock(spans[n + 1][0], date=True)}")
        out.append(f'<g class="idle"><title>{esc(tip)}</title>'
                   f'<rect x="{gx + 4:.1f}" y="{top - 4}" width="{IDLE_W - 8}" height="{height - top - 4}" '
                   'fill="#e9eaee" stroke="#b8bcc4" stroke-dasharray="3 3"/>'
                   f'<text x="{gx + IDLE_W / 2:.1f}" y="{top + 12}" text-anchor="middle" class="tick">idle</text>'
                   f'<text x="{gx + IDLE_W / 2:.1f}" y="{top + 24}" text-anchor="middle" class="tick">'
                   f'{esc(fmt_duration(idle))}</text></g>')
    if bars:
        out.append(f'<text x="4" y="{top - 8}" class="tick">{esc(fmt_clock(t0, date=True)[:10])}</text>')
    # the bars
    for b in bars:
        y = top + lane_y[(b.host, b.lane)] * lane_h + (lane_h - bar_h) / 2
        x0 = x(b.start)
        w = max(x(b.end) - x0, 2.0)
        job = job_by_id.get(b.job_id)
        ms = ms_label(job) if job else "?"
        outcome = {"done": "done", "running": "running", "stopped": b.why}.get(b.outcome, f"FAILED: {b.why}")
        tries = f", attempt {b.attempt} of {b.attempts}" if b.attempts > 1 else ""
        title = (f"job {b.job_id} \u2014 {ms}\nhost {b.host}, start {fmt_clock(b.start)}, "
                 f"runtime {fmt_duration(b.end - b.start)}{tries}\n{outcome}")
        out.append(f'<g class="bar {b.outcome}" data-job="{esc(b.job_id)}"><title>{esc(title)}</title>')
        stroke = {"failed": ' stroke="#7a0c0c" stroke-width="1"',
                  "stopped": ' stroke="#4b515a" stroke-width="1" stroke-dasharray="4 2"'}.get(b.outcome, "")
        out.append(f'<rect class="bar {b.outcome}" x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h}" '
                   f'rx="2" fill="{COLOURS[b.outcome]}"{stroke}/>')
        text = {"failed": "\u2715 ", "stopped": "\u25a0 "}.get(b.outcome, "") + b.job_id
        if job and w >= 6.3 * (len(text) + len(ms) + 1) + 8:
            text += " " + ms
        if w >= 6.3 * len(text) + 8:
            out.append(f'<text x="{x0 + 4:.1f}" y="{y + bar_h - 3.5:.1f}" class="barlabel">{esc(text)}</text>')
        out.append("</g>")
    if not bars:
        out.append(f'<text x="{left + 10}" y="{top + 14}" class="tick">no job has run yet</text>')
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------- previews

_IMAGE_RE = re.compile(r"^-(t\d{4}-)?(\d{4}|MFS)?(-[IQUVXYRL]{1,2})?-image\.fits$")


def main_image(prefix: str) -> Path | None:
    """The MFS image when there is one, else the image (WSClean: name[-tNNNN][-NNNN|-MFS][-POL]-image.fits)."""
    for suffix in ("-MFS-image.fits", "-image.fits", "-MFS-I-image.fits", "-I-image.fits"):
        p = Path(prefix + suffix)
        if p.is_file():
            return p
    folder, base = os.path.split(prefix)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    found = [n for n in names if n.startswith(base) and _IMAGE_RE.match(n[len(base):])]
    if not found:
        return None
    found.sort(key=lambda n: ("-MFS-" not in n, n))
    return Path(folder, found[0])


class PreviewLibs:
    """(astropy.io.fits, matplotlib), imported when first unpacked: a report whose previews are all
    in its cache needs neither (importing them costs about a second)."""

    _modules = None

    def __iter__(self):
        if PreviewLibs._modules is None:
            from astropy.io import fits
            import matplotlib

            PreviewLibs._modules = (fits, matplotlib)
        return iter(PreviewLibs._modules)


def preview_libs() -> PreviewLibs | None:
    """The preview libraries when both are installed, else None: previews are optional. (A broken
    installation shows later, as each preview's error.)"""
    from importlib.util import find_spec

    try:
        if find_spec("astropy") is None or find_spec("matplotlib") is None:
            return None
    except (ImportError, ValueError):
        return None
    return PreviewLibs()


@dataclass
class Preview:
    job_id: str
    fits: str
    png: str | None = None  # the PNG as a data: URI
    peak: float | None = None
    rms: float | None = None
    unit: str = ""
    shape: tuple = ()
    beam: str = ""
    error: str | None = None


def image_plane(hdus):
    """The first 2-D plane of the first HDU holding an image."""
    for hdu in hdus:
        data = hdu.data
        if data is not None and getattr(data, "ndim", 0) >= 2:
            while data.ndim > 2:
                data = data[0]
            return data, hdu.header
    raise ValueError("no image in this FITS file")


def stretch(values, median: float, rms: float, peak: float):
    """0..1 for display: asinh from median - 2 sigma to the peak, linear up to ~3 sigma, then logarithmic.

    The noise and the artefacts stay visible (dim) and the sources stand out, whatever
    the dynamic range: the softening is 3 sigma of the displayed range.
    """
    import numpy as np

    lo = median - 2.0 * rms
    hi = peak if peak > lo else lo + 1.0
    a = min(1.0, max(1e-4, 3.0 * rms / (hi - lo))) if rms > 0 else 0.1
    f32 = np.float32  # (a 256-level display needs no float64: half the time)
    x = np.clip((np.asarray(values, dtype=f32) - f32(lo)) * f32(1.0 / (hi - lo)), f32(0.0), f32(1.0))
    return np.arcsinh(x * f32(1.0 / a)) * f32(1.0 / np.arcsinh(1.0 / a))


def block_max(a, k: int):
    """The maximum of each k x k block of ``a`` (whose sides are multiples of k), NaN left out
    (a block all NaN stays NaN)."""
    import numpy as np

    if k > 8:  # (large blocks: one reduction over both block axes)
        return np.nanmax(a.reshape(a.shape[0] // k, k, a.shape[1] // k, k), axis=(1, 3))
    cols = a[:, 0::k]  # small blocks: k element-wise maxima of strided views (20x faster for k = 2)
    for j in range(1, k):
        cols = np.fmax(cols, a[:, j::k])
    out = cols[0::k]
    for i in range(1, k):
        out = np.fmax(out, cols[i::k])
    return out


def png_indexed(pixels, palette: bytes) -> bytes:
    """A PNG (8-bit palette) of a 2-D uint8 array of palette indices, row 0 at the top (Pillow, which
    matplotlib brings)."""
    import io

    from PIL import Image

    img = Image.fromarray(pixels, mode="P")
    img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # (level 6: 8x the time for 6% fewer bytes)
    return buf.getvalue()


def thumbnail(norm, size: int = THUMB):
    """size x size palette indices (0..255) of a 0..1 image (row 0 at the bottom, as FITS): scaled
    up by whole-pixel repetition to fit, centred on index 0 (black in 'inferno')."""
    import numpy as np

    levels = np.round(np.clip(norm, 0.0, 1.0) * 255).astype(np.uint8)[::-1]
    ny, nx = levels.shape
    f = size / max(ny, nx)
    h, w = max(1, min(size, round(ny * f))), max(1, min(size, round(nx * f)))
    rows = np.minimum((np.arange(h) / f).astype(int), ny - 1)
    cols = np.minimum((np.arange(w) / f).astype(int), nx - 1)
    out = np.zeros((size, size), np.uint8)
    y0, x0 = (size - h) // 2, (size - w) // 2
    out[y0:y0 + h, x0:x0 + w] = levels[np.ix_(rows, cols)]
    return out


@functools.lru_cache(maxsize=1)
def inferno(matplotlib) -> bytes:
    """matplotlib's 'inferno' colour map as a 256-colour PNG palette (RGB bytes)."""
    import numpy as np

    try:
        cmap = matplotlib.colormaps["inferno"]
    except AttributeError:  # matplotlib < 3.5
        from matplotlib import cm

        cmap = cm.get_cmap("inferno")
    return np.asarray(cmap(np.linspace(0.0, 1.0, 256), bytes=True))[:, :3].astype(np.uint8).tobytes()


def render_preview(fits_path: Path, png_path: Path, libs) -> dict:
    """Write a THUMB x THUMB PNG ('inferno', see ``stretch``; 8-bit palette, so it stays small in the
    page); return peak, RMS, unit, shape, beam (BMAJ, BMIN in degrees, or None).

    Memory stays small for big images: the statistics use a strided sample of <= SAMPLE_PIXELS
    and the display is reduced by block maxima (so compact sources stay visible), row by row.
    """
    import warnings

    import numpy as np

    fits, matplotlib = libs
    with fits.open(fits_path, memmap=True) as hdus, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (masked edges)
        data, header = image_plane(hdus)
        unit = _unit(str(header.get("BUNIT", "")))
        beam = None
        if header.get("BMAJ") and header.get("BMIN"):
            beam = [float(header["BMAJ"]), float(header["BMIN"])]
        ny, nx = data.shape
        k = max(1, math.ceil(max(ny, nx) / THUMB))  # one displayed pixel per block: a source stays a pixel
        if k > 1:
            by, bx = ny // k, nx // k
            rows = max(1, SLAB_PIXELS // (k * nx))  # block rows at a time: a slab, never the whole image
            shown = np.concatenate([block_max(np.asarray(data[i * k:min(i + rows, by) * k, : bx * k],
                                                         dtype=np.float32), k)
                                    for i in range(0, by, rows)])
            # the peak: the blocks' maxima, and the pixels of the edges no whole block covers
            edges = [e for e in (data[by * k:, :], data[: by * k, bx * k:]) if e.size]
            peak = float(np.nanmax(np.array([np.nanmax(shown), *(np.nanmax(e) for e in edges)])))
        else:
            shown = np.asarray(data, dtype=np.float32)
            peak = float(np.nanmax(shown))
        if not math.isfinite(peak):
            raise ValueError("the image holds no finite pixel")
        step = max(1, math.ceil(math.sqrt(ny * nx / SAMPLE_PIXELS)))
        sample = np.asarray(data[::step, ::step], dtype=np.float32)
        sample = sample[np.isfinite(sample)]
        med = float(np.median(sample))
        dev = np.abs(sample - np.float32(med))
        rms = float(1.4826 * np.median(dev))  # robust: MAD, not fooled by the sources
        if rms == 0.0:
            rms = float(np.std(sample, dtype=np.float64))
    shown = np.where(np.isfinite(shown), shown, med)
    png = png_indexed(thumbnail(stretch(shown, med, rms, peak)), inferno(matplotlib))
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(png_path, png)
    return {"peak": peak, "rms": rms, "unit": unit, "shape": [int(ny), int(nx)], "beam": beam}


def _safe(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)


def data_uri(png: bytes) -> str:
    """(base64 holds no character HTML needs escaped: the page writes it as it is)"""
    return "data:image/png;base64," + b64encode(png).decode("ascii")


DRAW_POOL_MIN = 16  # previews to draw before it pays to start worker processes


def _draw(item: tuple[str, str, str, dict]) -> tuple[str, dict | str]:
    """Draw one preview (in a worker process): (job id, statistics), or (job id, error text)."""
    job_id, image, png, key = item
    try:
        meta = render_preview(Path(image), Path(png), _worker_libs())
        write_whole(Path(png).with_suffix(".json"), json.dumps({"key": key, "stats": meta}))
        return job_id, meta
    except Exception as e:  # one unreadable image must not cost the report
        return job_id, f"cannot preview: {type(e).__name__}: {e}"


_LIBS = None


def _worker_libs():
    global _LIBS
    if _LIBS is None:
        _LIBS = preview_libs()
    return _LIBS


def _draw_all(todo: list[tuple[str, str, str, dict]]):
    """Draw the previews not in the cache, on every CPU when there are many (each is
    independent: a FITS read, a stretch, a PNG)."""
    workers = min(len(todo) // DRAW_POOL_MIN, os.cpu_count() or 1, 8)
    if workers < 2:
        yield from map(_draw, todo)
        return
    from .ms_facts import worker_pool

    with worker_pool(workers) as pool:
        yield from pool.imap_unordered(_draw, todo, chunksize=8)


def previews(states: list[st.JobState], run_dir: Path, libs) -> dict[str, Preview]:
    """job id -> Preview for every done job with an image, its PNG as a data: URI for the page.

    The PNGs and their statistics are cached in report/ while the FITS is unchanged; the cache of
    jobs no longer done is pruned, but only when previews can be drawn (without astropy or
    matplotlib nothing in it is touched, so the next report with them is fast again).
    """
    global _LIBS
    out: dict[str, Preview] = {}
    folder = run_dir / REPORT_DIR
    keep = set()
    cached: dict[str, dict] = {}
    todo: list[tuple[str, str, str, dict]] = []
    for s in states:
        if s.state != "done":
            continue
        image = main_image(s.job.name)
        if image is None:
            out[s.job.id] = Preview(s.job.id, "", error="no image found next to the -name prefix")
            continue
        p = Preview(s.job.id, str(image))
        out[s.job.id] = p
        if libs is None:
            continue
        png = folder / f"{_safe(s.job.id)}.png"
        meta_path = folder / f"{_safe(s.job.id)}.json"
        keep.update({png.name, meta_path.name})
        try:
            fst = image.stat()
        except OSError as e:
            p.error = f"cannot preview: {e.strerror or e}"
            continue
        key = {"fits": str(image), "mtime": fst.st_mtime, "size": fst.st_size, "thumb": THUMB,
               "format": PREVIEW_FORMAT}
        try:
            old = json.loads(meta_path.read_text())
            if old.get("key") == key and png.is_file():
                cached[s.job.id] = old["stats"]
                continue
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        todo.append((s.job.id, str(image), str(png), key))
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        if len(todo) > 50:
            print(f"imgpipe: drawing {len(todo)} image previews (kept in {folder} for the next report)...",
                  file=sys.stderr)
        _LIBS = libs
        try:
            tuple(libs)  # imported here, once, before any worker is forked
        except Exception as e:  # a broken installation: every preview says so, the report goes on
            for job_id, *_ in todo:
                out[job_id].error = f"cannot preview: the preview libraries do not import ({type(e).__name__}: {e})"
            todo = []
        for job_id, meta in _draw_all(todo):
            if isinstance(meta, str):
                out[job_id].error = meta
            else:
                cached[job_id] = meta
    for job_id, meta in cached.items():
        p = out[job_id]
        try:
            p.png = data_uri((folder / f"{_safe(job_id)}.png").read_bytes())
            p.peak, p.rms, p.unit = meta["peak"], meta["rms"], meta["unit"]
            p.shape, p.beam = tuple(meta["shape"]), fmt_beam(*meta["beam"]) if meta["beam"] else ""
        except Exception as e:  # a cache entry of another shape, or a PNG gone meanwhile
            p.error = f"cannot preview: {type(e).__name__}: {e}"
    if libs is not None and folder.is_dir():  # previews of jobs no longer done
        for f in folder.iterdir():
            if f.suffix in (".png", ".json") and f.name not in keep:
                try:
                    f.unlink()
                except OSError:
                    pass
    return out


# ----------------------------------------------------------------- the page

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
       margin: 0; color: #1d2430; background: #eef0f3; }
header { background: #1d2430; color: #fff; padding: 14px 24px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header .sub { color: #c8ccd4; font-size: 13px; word-break: break-all; }
nav { padding: 6px 24px; background: #fff; border-bottom: 1px solid #d5d8dd; }
nav a { margin-right: 16px; color: #1f5fa8; text-decoration: none; }
main { padding: 8px 24px 40px 24px; }
section { background: #fff; border: 1px solid #d5d8dd; border-radius: 6px; padding: 12px 16px; margin: 14px 0; }
h2 { margin: 0 0 10px 0; font-size: 18px; }
h3 { margin: 12px 0 4px 0; font-size: 15px; }
.counts { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 10px; }
.count { border-radius: 6px; padding: 8px 14px; min-width: 90px; color: #fff; }
.count b { display: block; font-size: 24px; }
.c-done { background: #2e9b4f; } .c-failed { background: #d62728; }
.c-running { background: #1f77b4; } .c-stopped { background: #b8860b; } .c-notstarted { background: #7f8793; }
.c-total { background: #1d2430; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; border-bottom: 1px solid #eceef1; }
th { font-weight: 600; border-bottom: 1px solid #b8bcc4; }
td.num, th.num { text-align: right; }
.state { border-radius: 3px; padding: 0 6px; color: #fff; white-space: nowrap; }
.s-done { background: #2e9b4f; } .s-failed { background: #d62728; }
.s-running { background: #1f77b4; } .s-notstarted { background: #7f8793; }
tr.failed td { background: #fdf0f0; }
pre { background: #f6f7f9; border: 1px solid #e1e4e8; padding: 6px 8px; overflow-x: auto;
      font: 12px/1.35 ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; white-space: pre-wrap;
      word-break: break-all; margin: 4px 0; }
.failure { border-left: 4px solid #d62728; padding-left: 10px; margin: 10px 0; }
.muted { color: #68707c; }
.note { background: #fff7e0; border: 1px solid #f0d48a; padding: 6px 10px; border-radius: 4px; }
.timeline-box { overflow-x: auto; }
svg.timeline { max-width: 100%; height: auto; font: 11px system-ui, sans-serif; }
svg .lane { fill: #1d2430; font-size: 11px; } svg .tick { fill: #68707c; font-size: 10px; }
svg .barlabel { fill: #fff; font-size: 10px; pointer-events: none; }
.legend span { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
               vertical-align: middle; margin: 0 4px 0 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 256px; font-size: 12px; }
.card img { width: 256px; height: 256px; display: block; background: #000; image-rendering: pixelated; }
.card .noimg { width: 256px; height: 80px; display: flex; align-items: center; justify-content: center;
               background: #f6f7f9; color: #68707c; text-align: center; }
.card .name { font-weight: 600; overflow-wrap: break-word; }
.wsclean-error { margin: 4px 0; color: #7a0c0c; overflow-wrap: break-word; }
td.ms, td.why { max-width: 360px; overflow-wrap: break-word; }
td.num { white-space: nowrap; }
"""


def _state_badge(state: str) -> str:
    return f'<span class="state s-{state.replace(" ", "")}">{esc(state)}</span>'


def _link(path: Path, run_dir: Path, text: str) -> str:
    if path.exists():
        return f'<a href="{href(rel(path, run_dir))}">{esc(text)}</a>'
    return f'<span class="muted">{esc(text)}</span>'


def _why_cell(s: st.JobState, why: str, error: str | None) -> str:
    """The jobs table's "why": a failure links to its card, and WSClean's error is its hover text."""
    if s.state != "failed":
        return f'<td class="why">{esc(why)}</td>'
    title = f' title="{esc("WSClean said: " + error)}"' if error else ""
    return f'<td class="why"{title}><a href="#fail-{esc(s.job.id)}">{esc(why)}</a></td>'


def _config_texts(config_path: str) -> list[tuple[str, str]]:
    """(path, text) of the config and of the default_settings files it chains to, while readable."""
    out: list[tuple[str, str]] = []
    path = Path(config_path)
    for _ in range(10):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            out.append((str(path), f"(cannot be read any more: {e.strerror or e})"))
            break
        out.append((str(path), text[:CONFIG_MAX] + ("\n... (cut)" if len(text) > CONFIG_MAX else "")))
        try:
            from .config import tomllib  # (the standard library's, or tomli before Python 3.11)

            nxt = tomllib.loads(text).get("default_settings")
        except Exception:
            break
        if not isinstance(nxt, str) or not nxt:
            break
        nxt_path = path.parent / os.path.expanduser(nxt)
        if any(p == str(nxt_path) for p, _ in out):
            break
        path = nxt_path
    return out


def failure_words(s: st.JobState, log: LogFacts | None) -> tuple[str, str | None]:
    """(the exit status in words, WSClean's error message) of a failed job: WSClean's own status
    when its wrapper's log says it (the wrapper itself exits 10), else the attempt's exit status."""
    if log is not None and log.wsclean_status is not None:
        return f"WSClean's exit status {log.wsclean_status}", log.wsclean_error
    return f"exit status {s.exitval}", log.wsclean_error if log is not None else None


def render(plan: Plan, jobs_path: Path, run_dir: Path, states: list[st.JobState], rows: list[Row],
           prev: dict[str, Preview], libs_ok: bool, now: float,
           logs: dict[str, list[LogFacts]] | None = None) -> str:
    logs = logs or {}
    job_by_id = {j.id: j for j in plan.jobs}
    c = st.counts(s.state for s in states)
    bars = timeline_bars(plan, states, rows, now, logs)
    stopped = [b for b in bars if b.outcome == "stopped"]
    run_name = run_dir.name
    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8"/>')
    add('<meta name="viewport" content="width=device-width, initial-scale=1"/>')
    add(f"<title>imgpipe report: {esc(run_name)}</title><style>{CSS}</style></head><body>")
    add(f'<header><h1>imgpipe report: {esc(run_name)}</h1><div class="sub">run directory {esc(run_dir)}'
        f" \u2014 written {esc(fmt_clock(now, date=True))} {esc(time.strftime('%Z', time.localtime(now)))}"
        f" by imgpipe {esc(__version__)}</div></header>")
    add('<nav><a href="#summary">Summary</a><a href="#timeline">Timeline</a>'
        + ('<a href="#failures">Failures</a>' if c["failed"] else "")
        + '<a href="#jobs">Jobs</a><a href="#images">Images</a><a href="#plan">Config and plan</a>'
        + f'<a href="{href(jf.JOBS_FILE_NAME)}">jobs.txt</a></nav><main>')

    # --- summary
    add('<section id="summary"><h2>Summary</h2><div class="counts">')
    for key, label in (("done", "done"), ("failed", "failed"), ("running", "running"), ("stopped", "stopped"),
                       ("not started", "not started"), ("total", "jobs")):
        if key == "stopped" and not c[key]:
            continue
        add(f'<div class="count c-{key.replace(" ", "")}" data-state="{esc(key)}"><b>{c[key]}</b>{esc(label)}</div>')
    add("</div>")
    host_of = host_namer(plan, states)
    finished = rows
    if finished:
        t0 = min(min(r.start for r in finished), min(b.start for b in bars))
        t1 = max(max(r.start + r.runtime for r in finished), max((b.end for b in bars), default=t0))
        wall = max(t1 - t0, 1e-9)
        spans = work_spans((b.start, b.end) for b in bars)  # a bar per job-log row, and per running job
        working = max(sum(e - s for s, e in spans), 1e-9)  # wall time less long idle stretches (resumes)
        busy = sum(r.runtime for r in finished)
        lost = sum(r.runtime for r in finished if not r.ok)
        slots = plan.worker.max_concurrent
        hosts_used = sorted({host_of(r) for r in finished})
        add("<table>")
        add(f"<tr><th>first start</th><td>{esc(fmt_clock(t0, date=True))}</td></tr>")
        add(f"<tr><th>last end</th><td>{esc(fmt_clock(t1, date=True))}</td></tr>")
        if len(spans) > 1:
            add(f"<tr><th>wall time</th><td>{esc(fmt_duration(wall))}, of which {esc(fmt_duration(working))} "
                f"working in {len(spans)} stretches and {esc(fmt_duration(wall - working))} with nothing "
                "running (the run was resumed later)</td></tr>")
        else:
            add(f"<tr><th>wall time</th><td>{esc(fmt_duration(wall))}</td></tr>")
        add(f"<tr><th>busy time</th><td>{esc(fmt_duration(busy))} in {len(finished)} attempt(s) on "
            f"{len(hosts_used)} node(s); {esc(fmt_duration(lost))} in failed attempts</td></tr>")
        if stopped:
            add(f"<tr><th>stopped</th><td>{len(stopped)} attempt(s) stopped by the user, after "
                f"{esc(fmt_duration(sum(b.end - b.start for b in stopped)))} of work in all "
                "(not done: they run again on resume)</td></tr>")
        ok_runtimes = [r.runtime for r in finished if r.ok]
        if ok_runtimes:
            add(f"<tr><th>job runtime</th><td>min {esc(fmt_duration(min(ok_runtimes)))}, median "
                f"{esc(fmt_duration(statistics.median(ok_runtimes)))}, max {esc(fmt_duration(max(ok_runtimes)))}"
                "</td></tr>")
        add("</table>")
        add('<h3>Where the time went, per node</h3><table class="hosts"><tr><th>node</th><th class="num">done</th>'
            f'<th class="num">failed attempts</th><th class="num">busy</th><th class="num">use of its {slots} slot(s)'
            + (" while working" if len(spans) > 1 else "") + "</th></tr>")
        for h in hosts_used:
            mine = [r for r in finished if host_of(r) == h]
            b = sum(r.runtime for r in mine)
            add(f'<tr><td>{esc(h)}</td><td class="num">{sum(r.ok for r in mine)}</td>'
                f'<td class="num">{sum(not r.ok for r in mine)}</td><td class="num">{esc(fmt_duration(b))}</td>'
                f'<td class="num">{100 * b / (slots * working):.0f} %</td></tr>')
        idle = [h for h in plan.worker.nodes if h not in hosts_used]
        for h in idle:
            add(f'<tr><td>{esc(h)}</td><td class="num">0</td><td class="num">0</td><td class="num">-</td>'
                '<td class="num muted">ran no job</td></tr>')
        add("</table>")
    else:
        add('<p class="muted">No job has finished yet: the job log is empty.'
            + (f" {len(stopped)} attempt(s) were stopped by the user (see the timeline)." if stopped else "")
            + "</p>")
    add("</section>")

    # --- timeline
    add('<section id="timeline"><h2>Timeline</h2>')
    add('<p class="legend muted">One lane per job slot of each node; every attempt of every job (hover a bar '
        f'for its job, MS and outcome).<span style="background:{COLOURS["done"]}"></span>done'
        f'<span style="background:{COLOURS["failed"]}"></span>failed attempt'
        f'<span style="background:{COLOURS["running"]}"></span>running'
        f'<span style="background:{COLOURS["stopped"]}"></span>stopped by the user (runs again on resume)</p>')
    add(f'<div class="timeline-box">{timeline_svg(plan, bars, job_by_id)}</div></section>')

    # --- failures, first
    failed = [s for s in states if s.state == "failed"]
    if failed:
        add(f'<section id="failures"><h2>Failures ({len(failed)})</h2>')
        for s in sorted(failed, key=lambda s: s.job.id):
            log = run_dir / LOGS / s.job.id
            err = run_dir / LOGS / f"{s.job.id}.err"
            add(f'<div class="failure" id="fail-{esc(s.job.id)}" data-job="{esc(s.job.id)}">')
            status, error = failure_words(s, current_log(logs, s.job.id))
            add(f"<h3>job {esc(s.job.id)} \u2014 {esc(ms_label(s.job))}</h3>")
            add(f'<div>{esc(s.why or "failed")} (class <b>{esc(s.failure or "-")}</b>, {esc(status)}) on '
                f'{esc(s.host or s.job.host or "-")}, after {esc(fmt_duration(s.runtime))}'
                f' \u2014 {_link(log, run_dir, "log")} \u00b7 {_link(err, run_dir, "stderr")}</div>')
            if error:
                add(f'<div class="wsclean-error">WSClean said: <b>{esc(error)}</b></div>')
            lines = st.tail(str(log), TAIL_LINES)
            err_lines = st.tail(str(err), 5) if err.is_file() and err.stat().st_size else []
            if lines:
                add(f'<pre class="tail">{esc(chr(10).join(lines))}</pre>')
            if err_lines:
                add(f'<pre class="tail err">{esc(chr(10).join(err_lines))}</pre>')
            if not lines and not err_lines:
                add('<p class="muted">(its log is empty or missing)</p>')
            add("</div>")
        add("</section>")

    # --- all jobs, failures first
    ran_hosts = {host_of(r) for r in rows}
    last_row = {r.job_id: r.start for r in rows}
    last_stopped = {b.job_id: b for b in stopped if b.start > last_row.get(b.job_id, -math.inf)}
    order = {"failed": 0, "running": 1, "stopped": 2, "not started": 3, "done": 4}
    add(f'<section id="jobs"><h2>Jobs ({len(states)})</h2><table class="jobs"><thead><tr><th>job</th>'
        "<th>state</th><th>host</th><th>MS</th><th>start</th><th class=\"num\">runtime</th><th>why</th>"
        "<th>log</th><th>images</th><th class=\"num\">peak</th><th class=\"num\">RMS</th></tr></thead><tbody>")
    for s in sorted(states, key=lambda s: (order[s.state], s.job.id)):
        j = s.job
        log = run_dir / LOGS / j.id
        err = run_dir / LOGS / f"{j.id}.err"
        why = s.why or ""
        said = current_log(logs, j.id)
        start = s.start
        if s.state == "failed" and said is not None and said.wsclean_status is not None:
            why = f"WSClean failed with exit status {said.wsclean_status}"
        error = said.wsclean_error if s.state == "failed" and said is not None else None
        last_stop = last_stopped.get(j.id)
        if s.state == "not started" and last_stop is not None and not s.why:
            why = (f"stopped by the user at {fmt_clock(last_stop.end, date=True)} after "
                   f"{fmt_duration(last_stop.end - last_stop.start)}: runs again on resume")
        elif s.state == "not started":
            if j.host and j.host not in ran_hosts and rows:
                why = f"pinned to {j.host}, which ran no job of this run (unreachable?)"
            else:
                why = "not run yet"
        p = prev.get(j.id)
        host = running_host(plan, s) if s.state == "running" else (s.host or j.host or "-")
        if s.slurm:
            host += f" (Slurm {s.slurm})"
        links = _link(log, run_dir, "log")
        if err.is_file() and err.stat().st_size:
            links += " " + _link(err, run_dir, "stderr")
        ms_title = esc("\n".join(j.ms))
        peak = esc(fmt_flux(p.peak, p.unit)) if p and p.peak is not None else "-"
        rms = esc(fmt_flux(p.rms, p.unit)) if p and p.rms is not None else "-"
        if p and p.png:
            peak = f'<a href="#img-{esc(j.id)}">{peak}</a>'
        add(f'<tr class="{esc(s.state.replace(" ", ""))}" data-job="{esc(j.id)}" data-state="{esc(s.state)}">'
            f"<td>{esc(j.id)}</td><td>{_state_badge(s.state)}</td><td>{esc(host)}</td>"
            f'<td class="ms" title="{ms_title}">{esc(ms_label(j))}</td><td>{esc(fmt_clock(start))}</td>'
            f'<td class="num">{esc(fmt_duration(s.runtime))}</td>{_why_cell(s, why, error)}'
            f"<td>{links}</td><td>{_link(Path(j.out_dir), run_dir, os.path.basename(j.out_dir) or j.out_dir)}</td>"
            f'<td class="num">{peak}</td><td class="num">{rms}</td></tr>')
    add("</tbody></table></section>")

    # --- previews
    add('<section id="images"><h2>Images</h2>')
    if not libs_ok:
        add(f'<p class="note" id="no-previews">No image previews: {esc(NO_PREVIEW_NOTE)}, e.g. '
            f"<code>{esc(INSTALL_HINT)}</code>, then run <code>imgpipe report</code> again.</p>")
    done = [s for s in states if s.state == "done"]
    if not done:
        add('<p class="muted">No job is done yet.</p>')
    else:
        add('<p class="muted">The main image of each finished job (the MFS image when there is one, else the '
            "image), asinh stretch from median \u2212 2 \u03c3 to the peak; peak and robust RMS \u03c3 "
            "(1.4826 \u00d7 MAD); DR = peak / RMS.</p>")
        add('<div class="grid">')
        for s in sorted(done, key=lambda s: s.job.id):
            p = prev.get(s.job.id)
            add(f'<div class="card" id="img-{esc(s.job.id)}" data-job="{esc(s.job.id)}">')
            if p and p.png:
                add(f'<a href="{href(rel(p.fits, run_dir))}"><img src="{p.png}" width="{THUMB}" '
                    f'height="{THUMB}" alt="{esc("preview of job " + s.job.id)}"/></a>')
            else:
                reason = (p.error if p and p.error else "no preview") if libs_ok else "no preview"
                add(f'<div class="noimg">{esc(reason)}</div>')
            add(f'<div class="name">{esc(s.job.id)} \u2014 {esc(ms_label(s.job))}</div>')
            if p and p.fits:
                add(f'<div class="muted">{esc(os.path.basename(p.fits))}'
                    + (f" ({p.shape[1]}\u00d7{p.shape[0]})" if len(p.shape) == 2 else "") + "</div>")
            if p and p.peak is not None:
                dr = f", DR {p.peak / p.rms:.0f}" if p.rms else ""
                add(f"<div>peak {esc(fmt_flux(p.peak, p.unit))}, RMS {esc(fmt_flux(p.rms, p.unit))}{esc(dr)}</div>")
            if p and p.beam:
                add(f'<div class="muted">beam {esc(p.beam)}</div>')
            add("</div>")
        add("</div>")
    add("</section>")

    # --- config and plan
    add('<section id="plan"><h2>Config and plan</h2><table class="header">')
    add(f'<tr><th>jobs file</th><td><a href="{href(jf.JOBS_FILE_NAME)}">{esc(jobs_path)}</a></td></tr>')
    add(f"<tr><th>config</th><td>{esc(plan.config_path)}</td></tr>")
    add(f"<tr><th>plan digest</th><td><code>{esc(plan.digest)}</code></td></tr>")
    for key, value in sorted(plan.worker.as_dict().items()):
        shown = ", ".join(map(str, value)) if isinstance(value, list) else json.dumps(value, ensure_ascii=False)
        add(f"<tr><th>worker {esc(key)}</th><td><code>{esc(shown)}</code></td></tr>")
    add("</table>")
    for path, text in _config_texts(plan.config_path):
        add(f'<h3>{esc(path)}</h3><pre class="config">{esc(text)}</pre>')
    add(f"<details><summary>The WSClean command of each of the {len(plan.jobs)} job(s)</summary>"
        '<table class="commands">')
    for j in plan.jobs:
        add(f'<tr><td>{esc(j.id)}</td><td>{esc(j.host or "any node")}</td>'
            f'<td><pre class="command">{esc(j.command)}</pre></td></tr>')
    add("</table></details></section>")
    add("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_report(jobs_file: Path) -> Path:
    """Write report.html in the run directory (the previews' cache in report/); return the page's path."""
    jobs_file = Path(jobs_file)
    plan = jf.read(jobs_file)
    run_dir = Path(os.path.abspath(jobs_file.parent))
    now = time.time()
    states = st.job_states(plan, run_dir)
    rows = attempts(run_dir, plan.tag)
    logs = read_logs(run_dir, (j.id for j in plan.jobs))
    libs = preview_libs()
    prev = previews(states, run_dir, libs)
    page = render(plan, Path(os.path.abspath(jobs_file)), run_dir, states, rows, prev, libs is not None, now, logs)
    out = run_dir / REPORT
    write_whole(out, page)
    return out
