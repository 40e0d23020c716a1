"""The quality gate: each job's main image measured as it lands, and judged against the night.

WSClean exits 0 with images that are worthless. Measured with WSClean 3.1 on small real MSs
(128 x 128 pixels of 3', 100 iterations; tests/test_quality.py makes them):

- DATA all zeros (a correlator or flagging fault): every pixel 0.0, the beam fitted as if normal;
- DATA all NaN (a bad calibration solution), or FLAG all true: every pixel NaN, BMAJ = BMIN = BPA = 0 (a circular
  beam with position angle 0 is reported too: a default, not a fit). A dirty image (``-niter 0``)
  of normal data has BMAJ = 0 as well ("beam is neither fitted nor estimated"): a beam of 0 is
  a fault only after a clean (a residual is there);
- ten times the noise: the image looks normal; only its RMS, next to the other jobs', tells;
- a clean that diverged (``-gain 1`` on these PSFs): exit 0, "Stopped on peak 39371.2 KJy" in
  the log, a residual whose peak is 10^6 to 10^35 times the dirty image's (normal cleans: a
  third of it). The images say it without the log's words: the residual's peak above the dirty
  image's is the signal used here (``residual_peak_ratio``).

**Measures** (``measure``, of the job's main image: the MFS image when there is one, and its
residual and dirty image when WSClean wrote them): the fraction of non-finite pixels, the
peak, a robust RMS (iterative 3-sigma clipping of the central quarter of the pixels, as the
LOFAR Transients Pipeline's quality stage does), the same of the residual, the dynamic range,
the restoring beam (BMAJ, BMIN, BPA) and what tells images alike apart (shape, pixel size,
frequency, bandwidth, unit). They are kept next to the images (``P.imgpipe-quality.json``),
with a stamp of the files measured, and measured again only when those files change: ``status``
and ``report`` never measure a finished night again.

**Judgement** (``judge``): the checks of one image (``image_problems``: no finite pixel, all
zero, too many non-finite pixels, no beam or WSClean's default beam, beam limits, divergence,
optional absolute limits), then the night (``night_problems``): each image's RMS (of the
residual when there is one) against the median of the images alike (same shape, pixel size,
frequency and bandwidth), in robust standard deviations (1.4826 x MAD), once ``min_alike`` of
them are measured; it is redone as more land. A flagged image is kept, on record: nothing is
deleted.

The measures need astropy and numpy (the ``report`` extra). Without them, the gate says once
that it is off (``unavailable``).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Iterable

from .config import QualitySettings
from .files import write_whole
from .image_sets import image_set

QUALITY_SUFFIX = ".imgpipe-quality.json"
FORMAT = 1
CLIP_SIGMA = 3.0  # the RMS: pixels beyond 3 sigma of the median are left out, until none is
CLIP_ROUNDS = 10
SAMPLE_PIXELS = 1 << 18  # the RMS is taken of at most ~262,000 pixels of the central region (strided)
MAIN_IMAGES = ("-MFS-image.fits", "-image.fits", "-MFS-I-image.fits", "-I-image.fits")


def unavailable() -> str | None:
    """Why images cannot be measured here (None: they can)."""
    try:
        missing = [m for m in ("numpy", "astropy") if find_spec(m) is None]
    except (ImportError, ValueError):
        missing = ["astropy"]
    if missing:
        return f"{' and '.join(missing)} not installed: install imgpipe[report] to check the images"
    return None


def main_image(prefix: str, images: Iterable[str]) -> str | None:
    """The suffix (of ``images``, a record's) of the job's main image: MFS first, then Stokes I."""
    images = set(images)
    for suffix in MAIN_IMAGES:
        if suffix in images:
            return suffix
    found = sorted(i for i in images if re.search(r"-image\.fits$", i))
    return found[0] if found else None


def _sibling(path: str, kind: str) -> str:
    return path[: -len("-image.fits")] + f"-{kind}.fits"


# ---------------------------------------------------------------- measuring (astropy, numpy)


def _plane(path: str):
    """(the first 2-D plane of the first image HDU as float32, its header)."""
    import warnings

    import numpy as np
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (astropy's words on a damaged header: the error says it)
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                data = hdu.data
                if data is not None and getattr(data, "ndim", 0) >= 2:
                    while data.ndim > 2:
                        data = data[0]
                    return np.asarray(data, dtype=np.float32), hdu.header.copy()
    raise ValueError("no image in this FITS file")


def clipped_rms(data) -> float | None:
    """The RMS of the central quarter of ``data`` (half of each axis), its finite pixels
    clipped at CLIP_SIGMA around their median until none is left out (None: no finite pixel)."""
    import numpy as np

    ny, nx = data.shape
    centre = data[ny // 4: ny - ny // 4 or ny, nx // 4: nx - nx // 4 or nx]
    step = max(1, math.ceil(math.sqrt(centre.size / SAMPLE_PIXELS)))
    values = centre[::step, ::step]
    values = values[np.isfinite(values)].astype(np.float64)
    if values.size == 0:
        return None
    for _ in range(CLIP_ROUNDS):
        median, sigma = np.median(values), values.std()
        kept = values[np.abs(values - median) <= CLIP_SIGMA * sigma]
        if kept.size == values.size or kept.size < 2:
            break
        values = kept
    return float(values.std())


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _axis(header, ctype: str) -> tuple[float | None, float | None]:
    """(CRVAL, CDELT) of the axis whose CTYPE starts with ``ctype``."""
    for n in range(1, int(header.get("NAXIS", 0)) + 1):
        if str(header.get(f"CTYPE{n}", "")).upper().startswith(ctype):
            return _number(header.get(f"CRVAL{n}")), _number(header.get(f"CDELT{n}"))
    return None, None


def _extremes(data, all_finite: bool) -> tuple[float, float]:
    """(max, min) of the finite pixels (NaN and inf left out; a copy only when some are not finite)."""
    import numpy as np

    if not all_finite:
        data = data[np.isfinite(data)]
    return float(data.max()), float(data.min())


def measure(image_path: str) -> dict:
    """The measures of one image (and of its residual and dirty image, when they are there)."""
    import numpy as np

    data, header = _plane(image_path)
    finite = np.isfinite(data)
    n_finite = int(finite.sum())
    peak = low = None
    if n_finite:
        peak, low = _extremes(data, n_finite == data.size)
    out = {
        "shape": list(data.shape),
        "unit": str(header.get("BUNIT", "")),
        "pixel_deg": _number(abs(header.get("CDELT2", 0) or 0)),
        "freq": _axis(header, "FREQ")[0],
        "bandwidth": _axis(header, "FREQ")[1],
        "nonfinite": 1.0 - n_finite / data.size,
        "peak": peak,
        "min": low,
        "rms": clipped_rms(data),
        "beam": [_number(header.get(k)) for k in ("BMAJ", "BMIN", "BPA")],
        "rms_residual": None,
        "residual_peak": None,
        "dirty_peak": None,
    }
    del data, finite
    for kind in ("residual", "dirty"):
        path = _sibling(image_path, kind)
        if os.path.exists(path):
            plane = _plane(path)[0]
            finite = int(np.isfinite(plane).sum())
            if finite:
                high, low = _extremes(plane, finite == plane.size)
                out[f"{kind}_peak"] = max(high, -low)  # (the largest absolute value)
                if kind == "residual":
                    out["rms_residual"] = clipped_rms(plane)
    return out


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def quality_path(prefix: str) -> str:
    return prefix + QUALITY_SUFFIX


FIXED_BEAM = ("-beam-size", "-beam-shape", "-circular-beam")  # WSClean options that set the restoring beam


def measured(prefix: str, images: Iterable[str], *, measure_now: bool = True, command: str = "") -> dict | None:
    """The kept measures of the job with image prefix ``prefix`` (whose record lists ``images``),
    or, with ``measure_now``, its main image measured now and kept; None when there is nothing to
    measure, it cannot be read, or it is not measured yet (and not ``measure_now``).

    The kept measures are used while the files they were made from are unchanged (size, time).
    ``command`` (the record's) says whether the user set the restoring beam (``FIXED_BEAM``): a
    circular beam of position angle 0 is then theirs, not WSClean's default."""
    suffix = main_image(prefix, images)
    if suffix is None:
        return None
    image = prefix + suffix
    stamps = {kind: _stamp(p) for kind, p in (("image", image), ("residual", _sibling(image, "residual")),
                                               ("dirty", _sibling(image, "dirty")))}
    try:
        with open(quality_path(prefix), encoding="utf-8") as f:
            kept = json.load(f)
        if kept.get("format") == FORMAT and kept.get("image") == suffix and kept.get("stamps") == stamps:
            return kept
    except (OSError, ValueError, AttributeError):
        pass
    if not measure_now or stamps["image"] is None:
        return None
    try:
        doc = {"format": FORMAT, "image": suffix, "stamps": stamps, **measure(image),
               "beam_fixed": any(option in command.split() for option in FIXED_BEAM)}
    except Exception as e:  # a damaged FITS file is a finding, not a crash
        doc = {"format": FORMAT, "image": suffix, "stamps": stamps, "error": f"{type(e).__name__}: {e}"}
    try:
        write_whole(quality_path(prefix), json.dumps(doc, allow_nan=False) + "\n")
    except (OSError, ValueError):
        pass  # (a read-only image directory: measured again next time)
    return doc


# ---------------------------------------------------------------- judging (plain numbers)


def _arcmin(deg: float) -> str:
    return f"{deg * 60:.3g}'"


def image_problems(m: dict, q: QualitySettings) -> list[str]:
    """What is wrong with one image, from its measures alone (empty: nothing)."""
    if m.get("error"):
        return [f"cannot read the image: {m['error']}"]
    if m["nonfinite"] >= 1.0:
        return ["no finite pixel: the image is all NaN (its data all NaN, or all flagged)"]
    if m["peak"] == 0.0 and m["min"] == 0.0:
        return ["every pixel is zero: the data imaged were all zero"]
    out = []
    if m["nonfinite"] > q.max_nonfinite:
        out.append(f"{m['nonfinite']:.0%} of the pixels are not finite (max_nonfinite = {q.max_nonfinite:g})")
    bmaj, bmin, bpa = (m.get("beam") or [None, None, None]) + [None] * (3 - len(m.get("beam") or []))
    pixel = m.get("pixel_deg")
    cleaned = m.get("residual_peak") is not None or m.get("rms_residual") is not None
    if bmaj is None or bmin is None or bmaj <= 0 or bmin <= 0:
        if cleaned:  # (a dirty image, -niter 0, has no restoring beam: WSClean writes 0)
            out.append("no restoring beam (BMAJ/BMIN missing or 0) after a clean: WSClean had no PSF to fit")
    elif bmaj == bmin and not bpa and not m.get("beam_fixed"):
        out.append(f"restoring beam {_arcmin(bmaj)} x {_arcmin(bmin)} is circular with position angle 0: "
                   "WSClean's default, not a fit")
    elif pixel:
        if q.beam_min_pixels and bmin / pixel < q.beam_min_pixels:
            out.append(f"beam minor axis {bmin / pixel:.2g} pixels, under beam_min_pixels = {q.beam_min_pixels:g}")
        if q.beam_max_pixels and bmaj / pixel > q.beam_max_pixels:
            out.append(f"beam major axis {bmaj / pixel:.3g} pixels, over beam_max_pixels = {q.beam_max_pixels:g}")
        if q.beam_max_ratio and bmaj / bmin > q.beam_max_ratio:
            out.append(f"beam axis ratio {bmaj / bmin:.2g}, over beam_max_ratio = {q.beam_max_ratio:g}")
    rp, dp = m.get("residual_peak"), m.get("dirty_peak")
    if q.residual_peak_ratio and rp is not None and dp and rp > q.residual_peak_ratio * dp:
        out.append(f"the clean diverged: the residual's peak {rp:.3g} is {rp / dp:.3g} times the dirty image's "
                   f"({dp:.3g})")
    rms = noise(m)
    if rms is not None:
        if q.rms_max and rms > q.rms_max:
            out.append(f"RMS {rms:.3g} {m['unit']} over rms_max = {q.rms_max:g}")
        if q.rms_min and rms < q.rms_min:
            out.append(f"RMS {rms:.3g} {m['unit']} under rms_min = {q.rms_min:g}")
        if q.min_dynamic_range and rms > 0 and m["peak"] / rms < q.min_dynamic_range:
            out.append(f"dynamic range {m['peak'] / rms:.3g}, under min_dynamic_range = {q.min_dynamic_range:g}")
    return out


def noise(m: dict) -> float | None:
    """The image's noise: the residual's robust RMS when there is a residual, else the image's."""
    return m.get("rms_residual") if m.get("rms_residual") is not None else m.get("rms")


def alike(m: dict) -> tuple:
    """What images compared with each other share: shape, pixel size, frequency, bandwidth, unit."""
    return (tuple(m.get("shape") or ()), m.get("pixel_deg"), m.get("freq"), m.get("bandwidth"), m.get("unit"))


def night_problems(measures: dict[str, dict], q: QualitySettings) -> dict[str, str]:
    """job id -> why its noise is an outlier of the night: among images alike (``alike``) with no
    problem of their own, at least ``min_alike`` of them, the RMS more than ``rms_sigma`` robust
    standard deviations and more than ``rms_margin`` (a fraction) away from their median."""
    groups: dict[tuple, list[tuple[str, float]]] = {}
    for job_id, m in measures.items():
        rms = noise(m)
        if rms is not None and rms > 0:
            groups.setdefault(alike(m), []).append((job_id, rms))
    out = {}
    for members in groups.values():
        if len(members) < max(2, q.min_alike):
            continue
        values = [r for _, r in members]
        median = statistics.median(values)
        sigma = 1.4826 * statistics.median(abs(v - median) for v in values)
        for job_id, rms in members:
            ratio = rms / median
            if abs(rms - median) > q.rms_sigma * sigma and abs(math.log(ratio)) > math.log1p(q.rms_margin):
                spread = f"{abs(rms - median) / sigma:.0f} sigma" if sigma else "the others are all equal"
                out[job_id] = (f"RMS {rms:.3g} {measures[job_id]['unit']} is {ratio:.3g} times the median of the "
                               f"{len(members)} images alike ({median:.3g}; {spread})")
    return out


@dataclass(frozen=True)
class Verdict:
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def why(self) -> str:
        return "; ".join(self.problems)


def judge(measures: dict[str, dict], q: QualitySettings) -> dict[str, Verdict]:
    """job id -> Verdict, for every measured job: its own problems, then the night's."""
    own = {job_id: image_problems(m, q) for job_id, m in measures.items()}
    night = night_problems({j: m for j, m in measures.items() if not own[j]}, q)
    return {job_id: Verdict(tuple(own[job_id] + ([night[job_id]] if job_id in night else [])))
            for job_id in measures}


def night(jobs_images: Iterable[tuple], q: QualitySettings, *, measure_now: bool = False) -> dict[str, Verdict]:
    """The verdicts of the done jobs given as (job id, image prefix, its record's images[, its
    record's command]): from their kept measures (and, with ``measure_now``, measuring those that
    have none)."""
    if q.on_fail == "off":
        return {}
    measures = {}
    for job_id, prefix, images, *command in jobs_images:
        m = measured(prefix, images, measure_now=measure_now, command=command[0] if command else "")
        if m is not None:
            measures[job_id] = m
    return judge(measures, q)


class Watch:
    """The gate during a run: each job's images measured in a thread as the job ends done (so no
    job waits for it), the night judged again after each, and each newly flagged job told once
    (``news``, said by the run loop between two looks at the round)."""

    def __init__(self, plan) -> None:
        import queue

        self.settings = plan.quality
        self.jobs = {j.id: j for j in plan.jobs}
        self.off = None if self.settings.on_fail != "off" else ""
        if self.off is None:
            self.off = unavailable()
        self.queue: queue.Queue = queue.Queue()
        self.seen: set[str] = set()
        self.measures: dict[str, dict] = {}
        self.flagged: dict[str, str] = {}  # job id -> why, as last told
        self._news: list[str] = []
        self.thread = None

    def start(self, done: Iterable[str]) -> list[str]:
        """Start measuring (first the jobs done before this run); what to tell the user now."""
        if self.off is not None:
            return [f"quality gate off: {self.off}"] if self.off else []
        import threading

        self.thread = threading.Thread(target=self._work, name="imgpipe-quality", daemon=True)
        self.thread.start()
        self.add(sorted(done))
        return []

    def kept(self, sets: dict) -> dict[str, str]:
        """job id -> why, of the done jobs (their image sets) the kept measures flag (nothing is
        measured now)."""
        if self.settings.on_fail == "off":
            return {}
        v = night([(j, self.jobs[j].name, s.record.images, s.record.command) for j, s in sets.items() if s.done],
                  self.settings)
        return {j: x.why for j, x in v.items() if not x.ok}

    def add(self, job_ids: Iterable[str]) -> None:
        if self.thread is None:
            return
        for job_id in job_ids:
            if job_id not in self.seen and job_id in self.jobs:
                self.seen.add(job_id)
                self.queue.put(job_id)

    def _work(self) -> None:
        while True:
            job_id = self.queue.get()
            if job_id is None:
                return
            try:
                job = self.jobs[job_id]
                found = image_set(job)
                m = measured(job.name, found.record.images, command=found.record.command) if found.done else None
                if m is not None:
                    self.measures[job_id] = m
                    self._judge()
            except Exception as e:  # (the gate never costs the run)
                self._news.append(f"quality: cannot check job {job_id}: {type(e).__name__}: {e}")
            finally:
                self.queue.task_done()

    def _judge(self) -> None:
        verb = "failed" if self.settings.on_fail == "fail" else "suspect"
        for job_id, v in judge(dict(self.measures), self.settings).items():
            if not v.ok and job_id not in self.flagged:
                self._news.append(f"quality: job {job_id} {verb}: {v.why} ({self.jobs[job_id].name}"
                                  f"{self.measures[job_id]['image']})")
            if v.ok:
                self.flagged.pop(job_id, None)
            else:
                self.flagged[job_id] = v.why

    def news(self) -> list[str]:
        """What to tell the user since the last call (the thread appends; this takes them all)."""
        out = []
        while self._news:
            out.append(self._news.pop(0))  # (list.pop and append are atomic: nothing is lost between)
        return out

    def finish(self, stopping=lambda: False) -> None:
        """Wait for the images queued to be measured (not when ``stopping()``), then end the thread."""
        if self.thread is None:
            return
        import time

        while self.queue.unfinished_tasks and not stopping():
            time.sleep(0.05)
        self.queue.put(None)
        if not stopping():
            self.thread.join()
