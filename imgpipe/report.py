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

Every string from the run (MS names, job ids, hosts, log lines, the config) is
HTML-escaped by construction: markup is written only as html() templates, whose
values are escaped, and Html literals (see "escaping"). The page is also well-formed
XML, which the tests rely on to read it.

The page is made by render(): a function per section (summary_section ...
plan_section), each of the Facts read once, each returning a Section; adding a
section is a function and a line in render().
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import statistics
import string
import sys
import time
from base64 import b64encode
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path
from urllib.parse import quote

from . import __version__
from . import jobs_file as jf
from . import quality
from . import status as st
from .files import write_whole
from .hosts import is_local
from .joblog import SLURM_PLACED, Row, attempts
from .plan import Job, Plan
from .attempt import LogFacts, outcome_of, read_log
from .run_dir import LOGS
from .submit import BATCH_OUTPUT, batch_now, batch_words

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


# ----------------------------------------------------------------- escaping: markup is made in one way
# A plain str is text, from the run or not (a path, a job id, a host, a WSClean error line): it is
# escaped wherever it goes into the page. Markup is an Html, and only three things make one:
# html(TEMPLATE, values...) (a literal template whose values are escaped), an Html("...") literal,
# and esc(). Adding a str to an Html escapes the str. tests/test_report.py checks that no other
# markup is written in this file (no f-string, no concatenation, no %-format of a tag).

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Html(str):
    """Markup, written into the page as it is (see html())."""

    __slots__ = ()

    def __add__(self, other) -> Html:
        return Html(str.__add__(self, other if isinstance(other, Html) else esc(other)))

    def __radd__(self, other) -> Html:
        return Html(str.__add__(esc(other), self))


def esc(value) -> Html:
    """HTML-escape (quotes too) and drop control characters (the page must stay well-formed)."""
    return Html(html_escape(_CONTROL.sub("\ufffd", str(value)), quote=True))


class _Escaping(string.Formatter):
    def format_field(self, value, spec: str) -> str:
        if isinstance(value, Html):
            return value
        if type(value) in (int, float):  # (a number holds nothing to escape)
            return format(value, spec)
        return esc(format(value, spec))


_ESCAPING = _Escaping()


def html(template: str, *args, **kwargs) -> Html:
    """``template`` (markup written here, a plain literal) with its fields filled as ``str.format``
    fills them (``{}``, ``{name}``, ``{s.job.id}``, ``{:.1f}``), each value escaped unless it is
    an Html already."""
    return Html(_ESCAPING.vformat(template, args, kwargs))


def join(pieces, sep: str = "") -> Html:
    """Pieces of markup one after the other (a str among them is escaped as text)."""
    return Html(sep.join(p if isinstance(p, Html) else esc(p) for p in pieces))


def href(path: str) -> Html:
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
    """9.73 Jy/beam, 12.3 mJy/beam, 450 µJy/beam (scaled when the unit is Jy-based; FITS's
    JY/BEAM written Jy/beam)."""
    if value is None or not math.isfinite(value):
        return "-"
    unit = _unit(unit)
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


NODE_NOT_KNOWN = "(node not known)"


def host_namer(plan: Plan, states: list[st.JobState] = (), logs: dict[str, list[LogFacts]] | None = None):
    """row -> node name: GNU parallel logs this machine as ':', and a job Slurm placed as 'slurm'
    (its node is in the log of that attempt, the one that began while the row's attempt ran; when
    that log names none, as when the node failed before the wrapper said where it began, the node
    is not known: another attempt's node would be a false one. Without the logs: the job's state's)."""
    local = next((h for h in plan.worker.nodes if is_local(h)), "localhost")
    placed = {s.job.id: s.host for s in states if s.host}
    logs = logs or {}

    def name(row: Row) -> str:
        if row.host == SLURM_PLACED:
            if not logs:
                return placed.get(row.job_id or "", row.host)
            began = [f for f in logs.get(row.job_id or "", ()) if f.host and f.start is not None
                     and row.start - 1 <= f.start <= row.start + row.runtime + 1]
            return (st.node_name(began[-1].host, plan) or began[-1].host) if began else NODE_NOT_KNOWN
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
    says), and one per attempt stopped by the user (from the logs), each on a slot lane; each
    bar says which of its job's attempts it is, in the order they began."""
    logs = logs or {}
    rows = [r for r in rows if outcome_of(r.exitval, r.signal)[0] != "stopped"]  # (drawn from their results)
    host_of = host_namer(plan, states, logs)
    bars = []
    for r in rows:
        why = "" if r.ok else outcome_of(r.exitval, r.signal)[1]
        bars.append(Bar(r.job_id or "?", host_of(r), r.start, r.start + max(r.runtime, 0.0),
                        "done" if r.ok else "failed", why))
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
    of_job: dict[str, list[Bar]] = {}
    for b in sorted(bars, key=lambda b: b.start):
        of_job.setdefault(b.job_id, []).append(b)
    for mine in of_job.values():
        for n, b in enumerate(mine, start=1):
            b.attempt, b.attempts = n, len(mine)
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


SVG_W, SVG_LEFT, SVG_RIGHT, SVG_TOP = 1200, 170, 16, 34  # px: the timeline's width, margins, and axis height
LANE_H, BAR_H = 20, 14  # px: a lane, and a bar in it


class TimeAxis:
    """Time to x on the timeline: the working stretches (work_spans) drawn to scale one after
    the other, with a band of IDLE_W pixels for each stretch in which nothing ran."""

    def __init__(self, bars: list[Bar]):
        self.spans = axis_spans(work_spans((b.start, b.end) for b in bars)) or [(0.0, 1.0)]
        self.t0, self.t1 = self.spans[0][0], self.spans[-1][1]
        self.span = max(sum(e - s for s, e in self.spans), 0.01)  # the time drawn to scale
        self.scale = (SVG_W - SVG_LEFT - SVG_RIGHT - IDLE_W * (len(self.spans) - 1)) / self.span
        self.offsets = []  # x where each stretch starts
        pos = float(SVG_LEFT)
        for s0, s1 in self.spans:
            self.offsets.append(pos)
            pos += (s1 - s0) * self.scale + IDLE_W

    def x(self, t: float) -> float:
        for (s0, s1), off in zip(self.spans, self.offsets):
            if t <= s1 + 1e-6:
                return off + (max(t, s0) - s0) * self.scale
        return self.offsets[-1] + (self.spans[-1][1] - self.spans[-1][0]) * self.scale


def timeline_lanes(plan: Plan, bars: list[Bar]) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    """((node, slot) -> its lane, top to bottom; node -> the slots it used): every slot of a node
    that ran something, one lane for a node that ran nothing."""
    hosts = list(plan.worker.nodes)
    for b in bars:
        if b.host not in hosts:
            hosts.append(b.host)
    used = {h: 1 + max((b.lane for b in bars if b.host == h), default=-1) for h in hosts}
    lanes: list[tuple[str, int]] = []
    for h in hosts:
        n = max(used[h], plan.worker.max_concurrent) if used[h] else 1
        lanes += [(h, i) for i in range(n)]
    return {key: i for i, key in enumerate(lanes)}, used


def svg_lanes(lanes: dict[tuple[str, int], int], used: dict[str, int]) -> list[Html]:
    """The lanes, striped, a line above each node's first, labelled with the node and the slot."""
    out = []
    for (h, i), n in lanes.items():
        y = SVG_TOP + n * LANE_H
        if n % 2 == 0:
            out.append(html('<rect x="{}" y="{}" width="{}" height="{}" fill="#f4f5f7"/>',
                            SVG_LEFT, y, SVG_W - SVG_LEFT - SVG_RIGHT, LANE_H))
        if i == 0 and n:
            out.append(html('<line x1="4" x2="{}" y1="{}" y2="{}" stroke="#b8bcc4"/>', SVG_W - SVG_RIGHT, y, y))
        label = f"{h}  #{i + 1}" if used[h] else f"{h}  (ran no job)"
        out.append(html('<text x="{}" y="{}" text-anchor="end" class="lane">{}</text>',
                        SVG_LEFT - 6, y + LANE_H - 6, label))
    return out


def svg_ticks(axis: TimeAxis, height: int) -> list[Html]:
    """The time labels, with a line down, within each working stretch (none closer than TICK_GAP)."""
    out = []
    step = _nice_step(axis.span)
    last_x = -1e9
    for t in axis_ticks(axis.spans, step):
        xx = axis.x(t)
        if xx - last_x < TICK_GAP:
            continue
        last_x = xx
        anchor = "end" if xx > SVG_W - SVG_RIGHT - TICK_GAP / 2 else "middle"
        out.append(html('<line x1="{0:.1f}" x2="{0:.1f}" y1="{1}" y2="{2}" stroke="#d5d8dd"/>',
                        xx, SVG_TOP - 4, height - 8))
        out.append(html('<text x="{:.1f}" y="{}" text-anchor="{}" class="tick">{}</text>',
                        xx, SVG_TOP - 8, anchor, tick_label(t, step, axis.t1 - axis.t0 > 86400)))
    return out


def svg_idle_bands(axis: TimeAxis, height: int) -> list[Html]:
    """Between two working stretches, a band that says how long nothing ran."""
    out = []
    for n, (s0, s1) in enumerate(axis.spans[:-1]):
        gx, idle = axis.offsets[n + 1] - IDLE_W, axis.spans[n + 1][0] - s1
        tip = (f"nothing ran for {fmt_duration(idle)}: "
               f"{fmt_clock(s1, date=True)} to {fmt_clock(axis.spans[n + 1][0], date=True)}")
        out.append(html('<g class="idle"><title>{tip}</title>'
                        '<rect x="{x:.1f}" y="{y}" width="{w}" height="{h}" '
                        'fill="#e9eaee" stroke="#b8bcc4" stroke-dasharray="3 3"/>'
                        '<text x="{mid:.1f}" y="{y1}" text-anchor="middle" class="tick">idle</text>'
                        '<text x="{mid:.1f}" y="{y2}" text-anchor="middle" class="tick">{idle}</text></g>',
                        tip=tip, x=gx + 4, y=SVG_TOP - 4, w=IDLE_W - 8, h=height - SVG_TOP - 4,
                        mid=gx + IDLE_W / 2, y1=SVG_TOP + 12, y2=SVG_TOP + 24, idle=fmt_duration(idle)))
    return out


_BAR_STROKES = {"failed": Html(' stroke="#7a0c0c" stroke-width="1"'),
                "stopped": Html(' stroke="#4b515a" stroke-width="1" stroke-dasharray="4 2"')}


def svg_bar(b: Bar, y: float, axis: TimeAxis, job: Job | None) -> list[Html]:
    """An attempt's bar: its hover text (job, MS, host, start, runtime, outcome), and its job id
    (and MS) written on it when it is wide enough."""
    x0 = axis.x(b.start)
    w = max(axis.x(b.end) - x0, 2.0)
    ms = ms_label(job) if job else "?"
    outcome = {"done": "done", "running": "running", "stopped": b.why}.get(b.outcome, f"FAILED: {b.why}")
    tries = f", attempt {b.attempt} of {b.attempts}" if b.attempts > 1 else ""
    title = (f"job {b.job_id} \u2014 {ms}\nhost {b.host}, start {fmt_clock(b.start)}, "
             f"runtime {fmt_duration(b.end - b.start)}{tries}\n{outcome}")
    out = [html('<g class="bar {}" data-job="{}"><title>{}</title>', b.outcome, b.job_id, title),
           html('<rect class="bar {}" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{}" rx="2" fill="{}"{}/>',
                b.outcome, x0, y, w, BAR_H, COLOURS[b.outcome], _BAR_STROKES.get(b.outcome, Html("")))]
    text = {"failed": "\u2715 ", "stopped": "\u25a0 "}.get(b.outcome, "") + b.job_id
    if job and w >= 6.3 * (len(text) + len(ms) + 1) + 8:
        text += " " + ms
    if w >= 6.3 * len(text) + 8:
        out.append(html('<text x="{:.1f}" y="{:.1f}" class="barlabel">{}</text>', x0 + 4, y + BAR_H - 3.5, text))
    out.append(Html("</g>"))
    return out


def timeline_svg(plan: Plan, bars: list[Bar], job_by_id: dict[str, Job]) -> Html:
    """The Gantt chart: x = time, one lane per node slot; inline SVG, hover titles, labels when wide enough."""
    lanes, used = timeline_lanes(plan, bars)
    height = SVG_TOP + LANE_H * len(lanes) + 8
    axis = TimeAxis(bars)
    out = [html('<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {0} {1}" width="{0}" '
                'height="{1}" role="img" aria-label="timeline of every job on every node slot">', SVG_W, height),
           html('<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>', SVG_W, height),
           *svg_lanes(lanes, used)]
    if bars:
        out += svg_ticks(axis, height)
    out += svg_idle_bands(axis, height)
    if bars:
        out.append(html('<text x="4" y="{}" class="tick">{}</text>', SVG_TOP - 8, fmt_clock(axis.t0, date=True)[:10]))
    for b in bars:
        y = SVG_TOP + lanes[(b.host, b.lane)] * LANE_H + (LANE_H - BAR_H) / 2
        out += svg_bar(b, y, axis, job_by_id.get(b.job_id))
    if not bars:
        out.append(html('<text x="{}" y="{}" class="tick">no job has run yet</text>', SVG_LEFT + 10, SVG_TOP + 14))
    out.append(Html("</svg>"))
    return join(out, "\n")


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
    png: Html | None = None  # the PNG as a data: URI (data_uri)
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


def data_uri(png: bytes) -> Html:
    """The PNG as a data: URI, which the page writes as it is: base64's alphabet (A-Z a-z 0-9 + / =)
    holds no character HTML escapes (and escaping 75 KB a preview costs time)."""
    return Html("data:image/png;base64," + b64encode(png).decode("ascii"))


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
    out: dict[str, Preview] = {}
    folder = run_dir / REPORT_DIR
    keep = set()
    cached: dict[str, dict] = {}
    todo: list[tuple[str, str, str, dict]] = []
    for s in states:
        if not (s.images and s.images.done):  # (done, suspect, or failed the quality gate)
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
    for job_id, meta in _draw_missing(todo, folder, libs):
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
    if libs is not None:
        _prune(folder, keep)
    return out


def _draw_missing(todo: list[tuple[str, str, str, dict]], folder: Path, libs):
    """(job id, statistics or error text) of each preview not in the cache, drawn into ``folder``."""
    global _LIBS
    if not todo:
        return
    folder.mkdir(parents=True, exist_ok=True)
    if len(todo) > 50:
        print(f"imgpipe: drawing {len(todo)} image previews (kept in {folder} for the next report)...",
              file=sys.stderr)
    _LIBS = libs
    try:
        tuple(libs)  # imported here, once, before any worker is forked
    except Exception as e:  # a broken installation: every preview says so, the report goes on
        for job_id, *_ in todo:
            yield job_id, f"cannot preview: the preview libraries do not import ({type(e).__name__}: {e})"
        return
    yield from _draw_all(todo)


def _prune(folder: Path, keep: set[str]) -> None:
    """Remove the cached previews of jobs no longer done (those not in ``keep``)."""
    if folder.is_dir():
        for f in folder.iterdir():
            if f.suffix in (".png", ".json") and f.name not in keep:
                try:
                    f.unlink()
                except OSError:
                    pass


# ----------------------------------------------------------------- the page

CSS = Html("""
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
.c-done { background: #2e9b4f; } .c-failed { background: #d62728; } .c-suspect { background: #a0368f; }
.c-running { background: #1f77b4; } .c-stopped { background: #b8860b; } .c-notstarted { background: #7f8793; }
.c-total { background: #1d2430; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; border-bottom: 1px solid #eceef1; }
th { font-weight: 600; border-bottom: 1px solid #b8bcc4; }
td.num, th.num { text-align: right; }
.state { border-radius: 3px; padding: 0 6px; color: #fff; white-space: nowrap; }
.s-done { background: #2e9b4f; } .s-failed { background: #d62728; } .s-suspect { background: #a0368f; }
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
""")


def state_badge(state: str) -> Html:
    return html('<span class="state s-{}">{}</span>', state.replace(" ", ""), state)


def link(path: Path, run_dir: Path, text: str) -> Html:
    """A link to a file of the run (relative to the page), or the text greyed when it is not there."""
    if path.exists():
        return html('<a href="{}">{}</a>', href(rel(path, run_dir)), text)
    return html('<span class="muted">{}</span>', text)


def why_cell(s: st.JobState, why: str, error: str | None) -> Html:
    """The jobs table's "why": a failure links to its card, and WSClean's error is its hover text."""
    if s.state != "failed":
        return html('<td class="why">{}</td>', why)
    title = html(' title="{}"', "WSClean said: " + error) if error else Html("")
    return html('<td class="why"{}><a href="#fail-{}">{}</a></td>', title, s.job.id, why)


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


# ----------------------------------------------------------------- what the page shows


@dataclass
class Facts:
    """What the page shows, read once (write_report) and shared by its sections; what several
    sections work out from it is worked out here, once."""

    plan: Plan
    jobs_path: Path
    run_dir: Path
    states: list[st.JobState]
    rows: list[Row]  # the job log: every finished attempt
    previews: dict[str, Preview]  # job id -> its main image's preview (done jobs)
    libs_ok: bool  # the preview libraries are installed
    now: float
    logs: dict[str, list[LogFacts]]  # job id -> what each of its logs says, oldest first
    batch: dict | None = None  # the run's Slurm batch job (--submit) as Slurm has it now (submit.batch_state)

    @functools.cached_property
    def job_by_id(self) -> dict[str, Job]:
        return {j.id: j for j in self.plan.jobs}

    @functools.cached_property
    def measures(self) -> dict[str, dict]:
        """job id -> the quality gate's measures of its main image, as kept next to the images (done
        jobs measured; with an "error" when it could not be read): read once, for the quality
        section and the cards, so the page gives one peak, RMS and DR per image."""
        out = {}
        for s in self.states:
            if s.images and s.images.done:
                m = quality.measured(s.job.name, s.images.record.images, measure_now=False)
                if m is not None:
                    out[s.job.id] = m
        return out

    @functools.cached_property
    def bars(self) -> list[Bar]:
        """Every attempt on the timeline (timeline_bars)."""
        return timeline_bars(self.plan, self.states, self.rows, self.now, self.logs)

    @functools.cached_property
    def stopped(self) -> list[Bar]:
        """The attempts stopped by the user."""
        return [b for b in self.bars if b.outcome == "stopped"]

    @functools.cached_property
    def host_of(self):
        """row -> the name of its node (host_namer)."""
        return host_namer(self.plan, self.states, self.logs)

    @functools.cached_property
    def hosts_used(self) -> list[str]:
        """The nodes the job log has attempts of."""
        return sorted({self.host_of(r) for r in self.rows})

    @functools.cached_property
    def spans(self) -> list[tuple[float, float]]:
        """The stretches of time in which jobs ran (work_spans): a bar per row, and per running job."""
        return work_spans((b.start, b.end) for b in self.bars)

    @functools.cached_property
    def working(self) -> float:
        """The working time: the wall time less the long idle stretches (a run resumed later)."""
        return max(sum(e - s for s, e in self.spans), 1e-9)


@dataclass
class Section:
    """A section of the page: <section id=ID><h2>HEADING</h2>, its lines of markup, </section>;
    the bar at the top of the page links to it by its TITLE."""

    id: str
    title: str
    body: list[Html]
    heading: str = ""  # when it says more than the title: "Failures (3)"

    def lines(self) -> list[Html]:
        return [html('<section id="{}"><h2>{}</h2>', self.id, self.heading or self.title), *self.body,
                Html("</section>")]


# ----------------------------------------------------------------- the sections of the page, top to bottom


def summary_section(f: Facts) -> Section:
    """How many jobs are in each state, and where the run lives when it was submitted; the run's
    times and each node's use, once jobs finished."""
    head = [*state_counts(f), *batch_note(f)]
    if not f.rows:
        stopped = f" {len(f.stopped)} attempt(s) were stopped by the user (see the timeline)." if f.stopped else ""
        note = html('<p class="muted">No job has finished yet: the job log is empty.{}</p>', stopped)
        return Section("summary", "Summary", [*head, note])
    return Section("summary", "Summary", [*head, *run_times(f), *per_node(f)])


def batch_note(f: Facts) -> list[Html]:
    """A run submitted with --submit: its batch job, as `imgpipe status` says it, and imgpipe's own output."""
    if not f.batch:
        return []
    return [html('<p class="batch">This run lives in {} (<code>imgpipe --submit</code>); imgpipe\'s own output '
                 'there: <a href="{}">{}</a>.</p>', batch_words(f.batch), href(BATCH_OUTPUT), BATCH_OUTPUT)]


def state_counts(f: Facts) -> list[Html]:
    """A box per state (stopped only when some are), and the total."""
    c = st.counts(s.state for s in f.states)
    boxes = [html('<div class="count c-{}" data-state="{}"><b>{}</b>{}</div>', key.replace(" ", ""), key, c[key], label)
             for key, label in (("done", "done"), ("suspect", "suspect"), ("failed", "failed"), ("running", "running"),
                                ("stopped", "stopped"), ("not started", "not started"), ("total", "jobs"))
             if key not in ("stopped", "suspect") or c[key]]
    return [Html('<div class="counts">'), *boxes, Html("</div>")]


def run_times(f: Facts) -> list[Html]:
    """First start, last end, wall time (and how much of it nothing ran), busy time, the attempts
    stopped by the user, and the runtimes of the jobs done."""
    t0 = min(min(r.start for r in f.rows), min(b.start for b in f.bars))
    t1 = max(max(r.start + r.runtime for r in f.rows), max((b.end for b in f.bars), default=t0))
    wall = max(t1 - t0, 1e-9)
    busy = sum(r.runtime for r in f.rows)
    lost = sum(r.runtime for r in f.rows if not r.ok)
    ok_runtimes = [r.runtime for r in f.rows if r.ok]
    rows = [("first start", fmt_clock(t0, date=True)), ("last end", fmt_clock(t1, date=True))]
    if len(f.spans) > 1:
        rows.append(("wall time", f"{fmt_duration(wall)}, of which {fmt_duration(f.working)} working in "
                     f"{len(f.spans)} stretches and {fmt_duration(wall - f.working)} with nothing running "
                     "(the run was resumed later)"))
    else:
        rows.append(("wall time", fmt_duration(wall)))
    rows.append(("busy time", f"{fmt_duration(busy)} in {len(f.rows)} attempt(s) on {len(f.hosts_used)} node(s); "
                 f"{fmt_duration(lost)} in failed attempts"))
    if f.stopped:
        rows.append(("stopped", f"{len(f.stopped)} attempt(s) stopped by the user, after "
                     f"{fmt_duration(sum(b.end - b.start for b in f.stopped))} of work in all "
                     "(not done: they run again on resume)"))
    if ok_runtimes:
        rows.append(("job runtime", f"min {fmt_duration(min(ok_runtimes))}, median "
                     f"{fmt_duration(statistics.median(ok_runtimes))}, max {fmt_duration(max(ok_runtimes))}"))
    return [Html("<table>"), *(html("<tr><th>{}</th><td>{}</td></tr>", k, v) for k, v in rows), Html("</table>")]


def per_node(f: Facts) -> list[Html]:
    """Per node: jobs done, failed attempts, busy time, and the use of its slots (over the working
    time); the nodes that ran nothing last."""
    slots = f.plan.worker.max_concurrent
    out = [html('<h3>Where the time went, per node</h3><table class="hosts"><tr><th>node</th><th class="num">done</th>'
                '<th class="num">failed attempts</th><th class="num">busy</th>'
                '<th class="num">use of its {} slot(s){}</th></tr>', slots, " while working" if len(f.spans) > 1 else "")]
    for h in f.hosts_used:
        mine = [r for r in f.rows if f.host_of(r) == h]
        busy = sum(r.runtime for r in mine)
        out.append(html('<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>'
                        '<td class="num">{:.0f} %</td></tr>', h, sum(r.ok for r in mine), sum(not r.ok for r in mine),
                        fmt_duration(busy), 100 * busy / (slots * f.working)))
    for h in f.plan.worker.nodes:
        if h not in f.hosts_used:
            out.append(html('<tr><td>{}</td><td class="num">0</td><td class="num">0</td><td class="num">-</td>'
                            '<td class="num muted">ran no job</td></tr>', h))
    out.append(Html("</table>"))
    return out


def timeline_section(f: Facts) -> Section:
    """The legend of the colours, and the timeline (timeline_svg)."""
    legend = html('<p class="legend muted">One lane per job slot of each node; every attempt of every job (hover a '
                  'bar for its job, MS and outcome).<span style="background:{done}"></span>done'
                  '<span style="background:{failed}"></span>failed attempt'
                  '<span style="background:{running}"></span>running'
                  '<span style="background:{stopped}"></span>stopped by the user (runs again on resume)</p>', **COLOURS)
    chart = html('<div class="timeline-box">{}</div>', timeline_svg(f.plan, f.bars, f.job_by_id))
    return Section("timeline", "Timeline", [legend, chart])


def failures_section(f: Facts) -> Section | None:
    """A card for each failed job (none without failures)."""
    failed = sorted((s for s in f.states if s.state == "failed"), key=lambda s: s.job.id)
    if not failed:
        return None
    cards = [line for s in failed for line in failure_card(f, s)]
    return Section("failures", "Failures", cards, heading=f"Failures ({len(failed)})")


def failure_card(f: Facts, s: st.JobState) -> list[Html]:
    """Why a job failed, where, after how long, what WSClean said, and the last lines of its log."""
    log, err = f.run_dir / LOGS / s.job.id, f.run_dir / LOGS / f"{s.job.id}.err"
    status, error = failure_words(s, current_log(f.logs, s.job.id))
    out = [html('<div class="failure" id="fail-{id}" data-job="{id}">', id=s.job.id),
           html("<h3>job {} \u2014 {}</h3>", s.job.id, ms_label(s.job)),
           html("<div>{} (class <b>{}</b>, {}) on {}, after {} \u2014 {} \u00b7 {}</div>",
                s.why or "failed", s.failure or "-", status, s.host or s.job.host or "-", fmt_duration(s.runtime),
                link(log, f.run_dir, "log"), link(err, f.run_dir, "stderr"))]
    if error:
        out.append(html('<div class="wsclean-error">WSClean said: <b>{}</b></div>', error))
    lines = st.tail(str(log), TAIL_LINES)
    err_lines = st.tail(str(err), 5) if err.is_file() and err.stat().st_size else []
    if lines:
        out.append(html('<pre class="tail">{}</pre>', "\n".join(lines)))
    if err_lines:
        out.append(html('<pre class="tail err">{}</pre>', "\n".join(err_lines)))
    if not lines and not err_lines:
        out.append(Html('<p class="muted">(its log is empty or missing)</p>'))
    out.append(Html("</div>"))
    return out


JOB_ORDER = {"failed": 0, "suspect": 1, "running": 2, "stopped": 3, "not started": 4, "done": 5}  # the jobs table's order


def jobs_section(f: Facts) -> Section:
    """Every job, failures first: a row each (job_row)."""
    ran_hosts = {f.host_of(r) for r in f.rows}
    last_row = {r.job_id: r.start for r in f.rows}
    last_stop = {b.job_id: b for b in f.stopped if b.start > last_row.get(b.job_id, -math.inf)}
    head = Html('<table class="jobs"><thead><tr><th>job</th><th>state</th><th>host</th><th>MS</th><th>start</th>'
                '<th class="num">runtime</th><th>why</th><th>log</th><th>images</th><th class="num">peak</th>'
                '<th class="num">RMS</th></tr></thead><tbody>')
    rows = [job_row(f, s, *job_why(f, s, last_stop.get(s.job.id), ran_hosts))
            for s in sorted(f.states, key=lambda s: (JOB_ORDER[s.state], s.job.id))]
    return Section("jobs", "Jobs", [head, *rows, Html("</tbody></table>")], heading=f"Jobs ({len(f.states)})")


def job_why(f: Facts, s: st.JobState, last_stop: Bar | None, ran_hosts: set[str]) -> tuple[str, str | None]:
    """(why, WSClean's error line) of a job in the jobs table: WSClean's own exit status for a
    failure when its log says it; when and how long its last attempt ran when the user stopped it;
    that its node ran nothing when it is pinned to one that did not."""
    said = current_log(f.logs, s.job.id)
    if s.state == "failed" and said is not None:
        if said.wsclean_status is not None:
            return f"WSClean failed with exit status {said.wsclean_status}", said.wsclean_error
        return s.why or "", said.wsclean_error
    if s.state != "not started":
        return s.why or "", None
    if last_stop is not None and not s.why:
        return (f"stopped by the user at {fmt_clock(last_stop.end, date=True)} after "
                f"{fmt_duration(last_stop.end - last_stop.start)}: runs again on resume"), None
    if s.job.host and s.job.host not in ran_hosts and f.rows:
        return f"pinned to {s.job.host}, which ran no job of this run (unreachable?)", None
    return "not run yet", None


def job_row(f: Facts, s: st.JobState, why: str, error: str | None) -> Html:
    """A job's row: id, state, node, MS, start, runtime, why, links to its log and its images, and
    its image's peak (linking to its preview) and RMS."""
    j, p = s.job, f.previews.get(s.job.id)
    host = running_host(f.plan, s) if s.state == "running" else (s.host or j.host or "-")
    if s.slurm:
        host += f" (Slurm {s.slurm})"
    links = link(f.run_dir / LOGS / j.id, f.run_dir, "log")
    err = f.run_dir / LOGS / f"{j.id}.err"
    if err.is_file() and err.stat().st_size:
        links += Html(" ") + link(err, f.run_dir, "stderr")
    peak = fmt_flux(p.peak, p.unit) if p and p.peak is not None else "-"
    if p and p.png:
        peak = html('<a href="#img-{}">{}</a>', j.id, peak)
    return html('<tr class="{cls}" data-job="{id}" data-state="{state}"><td>{id}</td><td>{badge}</td><td>{host}</td>'
                '<td class="ms" title="{all_ms}">{ms}</td><td>{start}</td><td class="num">{runtime}</td>{why}'
                '<td>{links}</td><td>{images}</td><td class="num">{peak}</td><td class="num">{rms}</td></tr>',
                cls=s.state.replace(" ", ""), id=j.id, state=s.state, badge=state_badge(s.state), host=host,
                all_ms="\n".join(j.ms), ms=ms_label(j), start=fmt_clock(s.start), runtime=fmt_duration(s.runtime),
                why=why_cell(s, why, error), links=links, peak=peak,
                images=link(Path(j.out_dir), f.run_dir, os.path.basename(j.out_dir) or j.out_dir),
                rms=fmt_flux(p.rms, p.unit) if p and p.rms is not None else "-")


QUALITY_ROWS = 500  # jobs listed in the quality table (the flagged ones always)
GROUP_COLOURS = ("#1f77b4", "#2e9b4f", "#ff7f0e", "#17becf", "#8c564b", "#7f7f7f", "#bcbd22", "#9467bd")


def _ended(s: st.JobState) -> float | None:
    """When the job's images were made (its record's end), in seconds; None when it does not say."""
    from datetime import datetime

    try:
        return datetime.strptime(s.images.record.end or "", "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (AttributeError, ValueError):
        return None


def quality_section(f: Facts) -> Section | None:
    """The quality gate's findings: the flagged jobs first (with their previews), the noise of every
    job across the night (by frequency and time), and each image's measures with its beam."""
    if f.plan.quality.on_fail == "off":
        return None
    judged = [(s, f.measures[s.job.id]) for s in f.states if s.job.id in f.measures]
    off = quality.unavailable()
    if not judged:
        text = f"No image is checked: {off}." if off else "No image is checked yet."
        return Section("quality", "Quality", [html('<p class="muted">{}</p>', text)])
    flagged = [s for s, _ in judged if s.failure == "quality"]
    out = [html('<p class="muted">Each job\'s main image, measured as it landed: robust RMS (3\u03c3-clipped, '
                'central quarter; of the residual when there is one) against the median of the images alike '
                '(same size, pixel, frequency and band: {}\u03c3 and {:.0%} away flags it, once {} are in), and '
                'the image\'s own faults (all zero, all NaN, no beam, a diverged clean). {} of {} flagged '
                '([quality] on_fail = {}).</p>', f"{f.plan.quality.rms_sigma:g}", f.plan.quality.rms_margin,
                f.plan.quality.min_alike, len(flagged), len(judged), f.plan.quality.on_fail)]
    if flagged:
        out.append(Html('<h3>Flagged</h3><div class="grid">'))
        for s in sorted(flagged, key=lambda s: s.job.id):
            card = image_card(f, s)
            out += [*card[:-1], html('<div class="why">{}</div>', s.why), card[-1]]
        out.append(Html("</div>"))
    out += [Html("<h3>Noise across the night</h3>"), noise_svg(judged), *quality_table(judged)]
    return Section("quality", "Quality", out, heading=f"Quality ({len(flagged)} flagged)")


def noise_svg(judged: list) -> Html:
    """The noise of each job against when its images were made, one colour per spectral window
    (its SW when the data handler named it, else its frequency); the flagged ones ringed in red
    (log scale)."""
    points = [(s, _ended(s), quality.noise(m), m) for s, m in judged]
    points = [(s, t, n, m) for s, t, n, m in points if n and n > 0 and math.isfinite(n)]
    if not points:
        return Html('<p class="muted">No image has a noise to show.</p>')
    times = [t for _, t, _, _ in points if t is not None]
    t0, t1 = (min(times), max(times)) if len(times) == len(points) else (0, len(points) - 1)
    xs = [t if len(times) == len(points) else i for i, (_, t, _, _) in enumerate(points)]
    lo, hi = min(math.log10(n) for _, _, n, _ in points), max(math.log10(n) for _, _, n, _ in points)
    hi, lo = hi + 0.05, lo - 0.05
    w, h, left, bottom = 720, 200, 60, 24
    def band(s, m) -> str:
        return s.job.sw or (f"{m['freq'] / 1e6:.3f} MHz" if m.get("freq") else "no frequency")

    groups = sorted({band(s, m) for s, _, _, m in points})
    colour = {g: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, g in enumerate(groups)}
    parts = [html('<svg class="noise" width="{}" height="{}" role="img" aria-label="noise of each job">', w, h + 30)]
    for value in (lo + 0.05, hi - 0.05):
        y = h - bottom - (value - lo) / (hi - lo) * (h - bottom - 8)
        parts.append(html('<text x="2" y="{:.0f}" font-size="11">{}</text>', y + 4, f"{10 ** value:.3g}"))
    for (s, _, n, m), x in zip(points, xs):
        cx = left + (x - t0) / ((t1 - t0) or 1) * (w - left - 10)
        cy = h - bottom - (math.log10(n) - lo) / (hi - lo) * (h - bottom - 8)
        ring = Html(' stroke="#d62728" stroke-width="3"') if s.failure == "quality" else Html("")
        parts.append(html('<circle cx="{:.1f}" cy="{:.1f}" r="4" fill="{}"{}><title>{} {}: RMS {}</title></circle>',
                          cx, cy, colour[band(s, m)], ring, s.job.id, ms_label(s.job),
                          fmt_flux(n, m.get("unit", ""))))
    parts += [html('<text x="{}" y="{}" font-size="11">time \u2192</text>', left, h + 20)]
    x = left + 60
    for g in groups[:len(GROUP_COLOURS)]:  # the legend: a dot and its band
        parts.append(html('<circle cx="{}" cy="{}" r="4" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>',
                          x, h + 16, colour[g], x + 7, h + 20, g))
        x += 14 + 7 * len(g)
    parts.append(Html("</svg>"))
    return join(parts)


def quality_table(judged: list) -> list[Html]:
    """Each checked image's measures: the flagged ones first, then by job (QUALITY_ROWS at most)."""
    rows = sorted(judged, key=lambda sm: (sm[0].failure != "quality", sm[0].job.id))
    out = [Html('<table class="quality"><thead><tr><th>job</th><th>data</th><th class="num">RMS</th>'
                '<th class="num">peak</th><th class="num">DR</th><th>beam</th><th class="num">not finite</th>'
                "<th>verdict</th></tr></thead><tbody>")]
    for s, m in rows[:QUALITY_ROWS]:
        n, unit = quality.noise(m), m.get("unit", "")
        dr = f"{m['peak'] / n:.0f}" if n and m.get("peak") is not None else "-"
        beam = m.get("beam") or [None] * 3
        shown = (f"{beam[0] * 60:.3g}\u2032 \u00d7 {beam[1] * 60:.3g}\u2032, {beam[2] or 0:.0f}\u00b0"
                 if beam[0] and beam[1] else "none")
        verdict = s.why if s.failure == "quality" else "ok"
        out.append(html('<tr data-job="{}"><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td>'
                        '<td class="num">{}</td><td>{}</td><td class="num">{:.1%}</td><td>{}</td></tr>',
                        s.job.id, s.job.id, ms_label(s.job), fmt_flux(n, unit), fmt_flux(m.get("peak"), unit), dr,
                        shown, m.get("nonfinite") or 0.0, verdict))
    out.append(Html("</tbody></table>"))
    if len(rows) > QUALITY_ROWS:
        out.append(html('<p class="muted">and {} more jobs, none flagged (imgpipe status --json has them all).</p>',
                        len(rows) - QUALITY_ROWS))
    return out


def images_section(f: Facts) -> Section:
    """A card for each job done (image_card); how to get previews when their libraries are missing."""
    out = []
    if not f.libs_ok:
        out.append(html('<p class="note" id="no-previews">No image previews: {}, e.g. <code>{}</code>, then run '
                        "<code>imgpipe report</code> again.</p>", NO_PREVIEW_NOTE, INSTALL_HINT))
    done = sorted((s for s in f.states if s.images and s.images.done), key=lambda s: s.job.id)
    if not done:
        out.append(Html('<p class="muted">No job is done yet.</p>'))
        return Section("images", "Images", out)
    out.append(Html('<p class="muted">The main image of each finished job (the MFS image when there is one, else '
                    "the image), asinh stretch from median \u2212 2 \u03c3 to the peak; peak, RMS and DR = peak / "
                    "RMS as the quality gate measured them (robust RMS, 3\u03c3-clipped, central quarter, of the "
                    "residual when there is one).</p>"))
    cards = [line for s in done for line in image_card(f, s)]
    return Section("images", "Images", [*out, Html('<div class="grid">'), *cards, Html("</div>")])


def image_card(f: Facts, s: st.JobState) -> list[Html]:
    """A job's preview (or why there is none), with its image's name, size, peak, RMS, DR and beam."""
    p = f.previews.get(s.job.id)
    out = [html('<div class="card" id="img-{id}" data-job="{id}">', id=s.job.id)]
    if p and p.png:
        out.append(html('<a href="{}"><img src="{}" width="{size}" height="{size}" alt="{}"/></a>',
                        href(rel(p.fits, f.run_dir)), p.png, "preview of job " + s.job.id, size=THUMB))
    else:
        reason = (p.error if p and p.error else "no preview") if f.libs_ok else "no preview"
        out.append(html('<div class="noimg">{}</div>', reason))
    out.append(html('<div class="name">{} \u2014 {}</div>', s.job.id, ms_label(s.job)))
    if p and p.fits:
        size = f" ({p.shape[1]}\u00d7{p.shape[0]})" if len(p.shape) == 2 else ""
        out.append(html('<div class="muted">{}{}</div>', os.path.basename(p.fits), size))
    m = f.measures.get(s.job.id)
    if m is not None and "error" not in m and m.get("peak") is not None:  # (the quality table's figures)
        peak, rms, unit = m["peak"], quality.noise(m), m.get("unit", "")
    elif p and p.peak is not None:  # (not measured: the quality gate is off)
        peak, rms, unit = p.peak, p.rms, p.unit
    else:
        peak = None
    if peak is not None:
        dr = f", DR {peak / rms:.0f}" if rms else ""
        out.append(html("<div>peak {}, RMS {}{}</div>", fmt_flux(peak, unit), fmt_flux(rms, unit), dr))
    if p and p.beam:
        out.append(html('<div class="muted">beam {}</div>', p.beam))
    out.append(Html("</div>"))
    return out


def plan_section(f: Facts) -> Section:
    """The jobs file's header (config, digest, worker settings), the config's text, every job's command."""
    plan = f.plan
    out = [Html('<table class="header">'),
           html('<tr><th>jobs file</th><td><a href="{}">{}</a></td></tr>', href(jf.JOBS_FILE_NAME), f.jobs_path),
           html("<tr><th>config</th><td>{}</td></tr>", plan.config_path),
           html("<tr><th>plan digest</th><td><code>{}</code></td></tr>", plan.digest)]
    for key, value in sorted(plan.worker.as_dict().items()):
        shown = ", ".join(map(str, value)) if isinstance(value, list) else json.dumps(value, ensure_ascii=False)
        out.append(html("<tr><th>worker {}</th><td><code>{}</code></td></tr>", key, shown))
    out.append(Html("</table>"))
    out += [html('<h3>{}</h3><pre class="config">{}</pre>', path, text) for path, text in _config_texts(plan.config_path)]
    out.append(html('<details><summary>The WSClean command of each of the {} job(s)</summary><table class="commands">',
                    len(plan.jobs)))
    out += [html('<tr><td>{}</td><td>{}</td><td><pre class="command">{}</pre></td></tr>', j.id, j.host or "any node",
                 j.command) for j in plan.jobs]
    out.append(Html("</table></details>"))
    return Section("plan", "Config and plan", out)


# ----------------------------------------------------------------- the page, whole


def render(plan: Plan, jobs_path: Path, run_dir: Path, states: list[st.JobState], rows: list[Row],
           prev: dict[str, Preview], libs_ok: bool, now: float,
           logs: dict[str, list[LogFacts]] | None = None, batch: dict | None = None) -> str:
    """The page: its header, a bar of links to its sections, and the sections, top to bottom.

    A section is a function of the Facts that returns a Section (or None to leave it out):
    adding one to the page is that function and its line here. It writes its markup with html()
    and Html literals only, so every value from the run in it is escaped (see "escaping")."""
    f = Facts(plan, jobs_path, run_dir, states, rows, prev, libs_ok, now, logs or {}, batch)
    sections = [
        summary_section(f),
        timeline_section(f),
        failures_section(f),
        jobs_section(f),
        quality_section(f),
        images_section(f),
        plan_section(f),
    ]
    return join(page(f, [s for s in sections if s is not None]), "\n")


def page(f: Facts, sections: list[Section]) -> list[Html]:
    """The lines of the document: its head (title, CSS), the header, the bar of links, the sections."""
    written = f"{fmt_clock(f.now, date=True)} {time.strftime('%Z', time.localtime(f.now))}"
    header = html('<header><h1>imgpipe report: {name}</h1><div class="sub">run directory {dir} \u2014 written {when} '
                  "by imgpipe {version}</div></header>", name=f.run_dir.name, dir=f.run_dir, when=written,
                  version=__version__)
    links = join(html('<a href="#{}">{}</a>', s.id, s.title) for s in sections)
    return [Html("<!DOCTYPE html>"),
            Html('<html lang="en"><head><meta charset="utf-8"/>'),
            Html('<meta name="viewport" content="width=device-width, initial-scale=1"/>'),
            html("<title>imgpipe report: {}</title><style>{}</style></head><body>", f.run_dir.name, CSS),
            header,
            html('<nav>{}<a href="{}">jobs.txt</a></nav><main>', links, href(jf.JOBS_FILE_NAME)),
            *(line for s in sections for line in s.lines()),
            Html("</main></body></html>"),
            Html("")]


def write_report(jobs_file: Path) -> Path:
    """Write report.html in the run directory (the previews' cache in report/); return the page's path."""
    jobs_file = Path(jobs_file)
    plan = jf.read(jobs_file)
    run_dir = Path(os.path.abspath(jobs_file.parent))
    now = time.time()
    states = st.job_states(plan, run_dir, measure=quality.unavailable() is None)
    rows = attempts(run_dir, plan.tag)
    logs = read_logs(run_dir, (j.id for j in plan.jobs))
    libs = preview_libs()
    prev = previews(states, run_dir, libs)
    page = render(plan, Path(os.path.abspath(jobs_file)), run_dir, states, rows, prev, libs is not None, now, logs,
                  batch_now(run_dir))
    out = run_dir / REPORT
    write_whole(out, page)
    return out
