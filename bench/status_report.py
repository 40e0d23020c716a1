#!/usr/bin/env python3
"""`imgpipe status` of a finished 50,000-job run, and a cold `imgpipe report` of a 2,000-job run.

    .venv/bin/python bench/status_report.py                     # both (~3 min)
    .venv/bin/python bench/status_report.py --status-jobs 10000 --report-jobs 0

What it does
------------
* status: a finished run of N jobs (--status-jobs, default 50,000) is WRITTEN by this
  script, in the formats imgpipe's own run writes, because running 50,000 jobs
  here would take an hour: the jobs file comes from the planner itself
  (``plan.build_plan`` on N MS paths with given MS facts: the MSs need not exist
  for status), and for every job a provenance record (``<prefix>.imgpipe.json``,
  as bin/imgpipe-job writes it), its image file (empty), a job-log row (the
  wrapper's command line, as GNU parallel logs it) and a job log with the
  wrapper's lines. Then, --repeats times: `imgpipe status RUN_DIR` with no memo
  ("first": it reads everything and keeps its memo, as the first status after a run
  does), again ("memo": the default table, from the memo), `imgpipe status --all`
  (every job's line, from the memo), against `imgpipe --version` (the interpreter's
  start-up) measured in the same round. Target: <= 1 s.
* report: a REAL run of M jobs (--report-jobs, default 2,000) through
  `imgpipe CONFIG MS...`, with a stand-in WSClean that copies a 512 x 512 FITS
  image (made with astropy) to its -name, on hard-link copies of one MS. Then
  `imgpipe report` cold (no preview cache), warm (cache kept), and after a report
  without the preview libraries (the cache must survive it). Target: cold <= 20 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from machine import imgpipe_exe, link_copies, run_measured, spread, wait_quiet, work_dir  # (bench/ is on sys.path when run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
MSMAKER = os.path.join(REPO, "tests", "msmaker.py")
STAND_IN = """#!/bin/sh
# stand-in for WSClean: copies a FITS image to the image its -name asks for
[ "$1" = --version ] && { echo "WSClean version 3.1.0 (stand-in)"; exit 0; }
while [ $# -gt 0 ]; do [ "$1" = -name ] && name=$2; shift; done
cp "$IMGPIPE_BENCH_FITS" "$name-image.fits"
"""


def synthesize_run(work: str, n: int) -> str:
    """A finished run of n jobs, written in imgpipe's formats; return its run directory."""
    from imgpipe import jobs_file
    from imgpipe.config import load_config
    from imgpipe.inputs import MSInput
    from imgpipe.ms_facts import MSFacts
    from imgpipe.plan import build_plan
    from imgpipe.attempt import wrapper_args
    from imgpipe.joblog import JOBLOG, JOBLOG_HEADER
    from imgpipe.run_dir import LOGS

    run = os.path.join(work, f"status-{n}")
    jobs_path = os.path.join(run, "jobs.txt")
    if os.path.isfile(os.path.join(run, JOBLOG)):
        return run  # kept from an earlier run of the script (--keep)
    shutil.rmtree(run, ignore_errors=True)
    config = os.path.join(work, "status.toml")
    with open(config, "w") as f:
        f.write(f"[worker]\nnodes = 'node[001-032]'\nmax_concurrent = 4\n\n"
                f"[wsclean]\nname = 'img'\nout-dir = '{work}/images/$ms_basename$'\n"
                "size = '1024 1024'\nscale = '1arcmin'\nniter = 10000\nchannels-out = 'all'\n")
    cfg = load_config(config)
    freqs = frozenset(50e6 + 195312.5 * i for i in range(16))
    inputs = [MSInput(path=f"{work}/ms/L{i:06d}_SAP000_SB{i % 400:03d}.MS") for i in range(n)]
    facts = {i.path: MSFacts(i.path, freqs, has_column=True, data_bytes=10**8) for i in inputs}
    plan = build_plan(cfg, inputs, facts)
    jobs_file.write(plan, jobs_path)
    os.makedirs(os.path.join(run, LOGS))
    t0 = time.time() - 3600
    joblog = [JOBLOG_HEADER]
    for k, job in enumerate(plan.jobs):
        os.makedirs(job.out_dir, exist_ok=True)
        open(job.name + "-image.fits", "w").close()
        start, end = t0 + 2 * k, t0 + 2 * k + 60
        host = f"node{1 + k % 32:03d}"
        stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))  # noqa: E731
        with open(job.name + ".imgpipe.json", "w") as f:
            json.dump({"format": 3, "job": job.id, "command": job.command, "images": ["-image.fits"], "sizes": [0],
                       "host": host, "start": stamp(start), "end": stamp(end), "exit_status": 0,
                       "wsclean_version": "3.1.0", "plan_digest": plan.tag[len("imgpipe-"):], "run": run,
                       "threads": 8, "abs_mem_gb": 30.0}, f, indent=2)
        words = wrapper_args(plan, job.id, job.command, share="1", force=False, run=run)
        joblog.append(f"{k + 1}\t{host}\t{start:.3f}\t{60:10.3f}\t0\t0\t0\t0\t"
                      f"bash ~/.cache/imgpipe/imgpipe-job-0123456789ab imgpipe-job "
                      + " ".join(words[:-1]) + " " + repr(words[-1]))
        clock = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
        with open(os.path.join(run, LOGS, job.id), "w") as f:
            f.write(f"imgpipe-job {job.id} [{host} {clock(start)}]: start: {job.command}\n"
                    "WSClean version 3.1.0 (stand-in)\n"
                    f"imgpipe-job {job.id} [{host} {clock(end)}]: done in 60 s: 1 image file(s); record "
                    f"{job.name}.imgpipe.json\n")
    with open(os.path.join(run, JOBLOG), "w") as f:
        f.write("\n".join(joblog) + "\n")
    return run


def bench_status(args, imgpipe: str, work: str) -> None:
    from imgpipe.status_memo import MEMO, MEMO_ROWS, SETTLED

    n = args.status_jobs
    t0 = time.perf_counter()
    run = synthesize_run(work, n)
    print(f"status: a finished run of {n} jobs written in {time.perf_counter() - t0:.0f} s ({run})")
    young = time.time() - max(os.stat(os.path.join(run, name)).st_mtime for name in ("jobs.txt", "joblog.tsv"))
    time.sleep(max(0.0, SETTLED + 1 - young))  # (a memo is written only of files older than SETTLED)
    arms = {"first": [imgpipe, "status", run], "memo": [imgpipe, "status", run],
            "--all": [imgpipe, "status", "--all", run]}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    ratios: dict[str, list[float]] = {a: [] for a in arms}
    base = []
    for r in range(args.repeats):
        for name in (MEMO, MEMO_ROWS):  # the first status after a run reads everything (and keeps its memo)
            if os.path.exists(os.path.join(run, name)):
                os.unlink(os.path.join(run, name))
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        v = run_measured([imgpipe, "--version"], work, os.path.join(work, "version.log"))
        base.append(v["wall"])
        line = []
        for arm, argv in arms.items():
            m = run_measured(argv, work, os.path.join(work, "status.log"))
            with open(os.path.join(work, "status.log"), encoding="utf-8", errors="replace") as f:
                last = f.read().splitlines()[-1:]
            ok = m["rc"] == 0 and last and last[0].startswith(f"total: {n}/{n} done")
            line.append(f"{arm} {m['wall']:.2f} s (CPU {m['cpu']:.2f} s, {m['rss_mb']:.0f} MB)"
                        + ("" if ok else f" <-- FAILED: exit {m['rc']}, last line {last}"))
            if ok:
                walls[arm].append(m["wall"])
                ratios[arm].append(m["wall"] / v["wall"])
        if not os.path.exists(os.path.join(run, MEMO)):
            line.append("<-- no memo was written")
        print(f"  run {r + 1}: " + ", ".join(line) + f"; `imgpipe --version` {v['wall']:.3f} s; "
              f"others {m['others']:.2f} CPUs", flush=True)
    for arm, w in walls.items():
        if not w:
            continue
        med = statistics.median(w)
        print(f"status of {n} jobs, {arm}: median {med:.2f} s (min {min(w):.2f}, max {max(w):.2f}); "
              f"{1e6 * (med - statistics.median(base)) / n:.1f} us a job beyond start-up; "
              f"x start-up: {spread(ratios[arm])}"
              + (f"; target (50,000 jobs) <= 1 s: {'PASS' if med <= 1.0 else 'MISS'}"
                 if n >= 50000 and arm == "memo" else ""))


def bench_report(args, imgpipe: str, work: str) -> None:
    import numpy as np
    from astropy.io import fits

    m_jobs = args.report_jobs
    base = os.path.join(work, "report")
    os.makedirs(base, exist_ok=True)
    fits_path = os.path.join(base, "template.fits")
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1e-3, (1, 1, 512, 512)).astype(np.float32)
    data[0, 0, 200:203, 300:303] = 1.0
    hdr = fits.Header()
    hdr["BUNIT"], hdr["BMAJ"], hdr["BMIN"] = "JY/BEAM", 0.1, 0.08
    fits.PrimaryHDU(data, hdr).writeto(fits_path, overwrite=True)
    bindir = os.path.join(base, "stand-in")
    os.makedirs(bindir, exist_ok=True)
    with open(os.path.join(bindir, "wsclean"), "w") as f:
        f.write(STAND_IN)
    os.chmod(os.path.join(bindir, "wsclean"), 0o755)
    template = os.path.join(base, "template.MS")
    if not os.path.isfile(os.path.join(template, "table.dat")):
        subprocess.run([sys.executable, MSMAKER, template, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    ms = [os.path.join(base, "ms", f"obs_{i:05d}.MS") for i in range(m_jobs)]
    link_copies(template, ms)
    config = os.path.join(base, "report.toml")
    with open(config, "w") as f:
        f.write("[worker]\nnodes = 'localhost'\nmax_concurrent = 2\n\n"
                "[wsclean]\nname = 'img'\nout-dir = 'images/$ms_basename$'\ndata-column = 'DATA'\n"
                "size = '512 512'\nscale = '1arcmin'\nj = 1\n")
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "IMGPIPE_BENCH_FITS": fits_path}
    runs = os.path.join(base, "imgpipe-runs")
    if not os.path.isdir(runs):
        m = run_measured([imgpipe, config, *ms], base, os.path.join(base, "run.log"), env)
        print(f"report: a real run of {m_jobs} stand-in jobs (each copies a 512x512 FITS), 2 slots: "
              f"{m['wall']:.1f} s, exit {m['rc']}")
    run = os.path.join(runs, os.listdir(runs)[0])
    cache = os.path.join(run, "report")
    no_libs = os.path.join(base, "nolibs.py")
    with open(no_libs, "w") as f:  # the same report in a Python that cannot import astropy
        f.write("import sys\nsys.modules['astropy'] = None\nfrom imgpipe.cli import main\n"
                "sys.exit(main(['report', sys.argv[1]]))\n")
    colds, warms = [], []
    for r in range(args.repeats):
        shutil.rmtree(cache, ignore_errors=True)
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        cold = run_measured([imgpipe, "report", run], base, os.path.join(base, "report-cold.log"))
        pngs = len([x for x in os.listdir(cache) if x.endswith(".png")]) if os.path.isdir(cache) else 0
        warm = run_measured([imgpipe, "report", run], base, os.path.join(base, "report-warm.log"))
        nolib = run_measured([sys.executable, no_libs, run], base, os.path.join(base, "report-nolibs.log"))
        kept = len([x for x in os.listdir(cache) if x.endswith(".png")]) if os.path.isdir(cache) else 0
        after = run_measured([imgpipe, "report", run], base, os.path.join(base, "report-after.log"))
        print(f"  run {r + 1}: cold {cold['wall']:.1f} s (CPU {cold['cpu']:.1f} s, {pngs} previews drawn), "
              f"warm {warm['wall']:.2f} s, without the preview libraries {nolib['wall']:.2f} s "
              f"({kept} cached previews kept), then with them again {after['wall']:.2f} s; "
              f"others {cold['others']:.2f} CPUs" + ("" if cold["rc"] == 0 and pngs == m_jobs else "  <-- FAILED"),
              flush=True)
        colds.append(cold["wall"])
        warms.append(warm["wall"])
    med = statistics.median(colds)
    print(f"cold report of {m_jobs} jobs: median {med:.1f} s (min {min(colds):.1f}, max {max(colds):.1f}), "
          f"{1000 * med / m_jobs:.1f} ms a job; warm {statistics.median(warms):.2f} s; "
          f"cold/warm {spread([c / w for c, w in zip(colds, warms)])}; "
          + (f"target (2,000 jobs) <= 20 s: {'PASS' if med <= 20 else 'MISS'}" if m_jobs >= 2000 else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--status-jobs", type=int, default=50000, help="jobs of the status run (default 50,000; 0: skip)")
    ap.add_argument("--report-jobs", type=int, default=2000, help="jobs of the report run (default 2,000; 0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the runs are reused next time)")
    ap.add_argument("--imgpipe", help="the imgpipe executable (default: next to this python)")
    ap.add_argument("--wait-quiet", type=float, default=20, metavar="S")
    args = ap.parse_args(argv)
    imgpipe = imgpipe_exe(args.imgpipe)
    with work_dir(args.keep, "imgpipe-status-bench-") as work:
        return bench(args, imgpipe, work)


def bench(args, imgpipe: str, work: str) -> int:
    print(f"imgpipe status/report benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, host {platform.node()}, "
          f"{os.cpu_count()} CPUs; work dir {work}")
    if args.status_jobs:
        bench_status(args, imgpipe, work)
    if args.report_jobs:
        bench_report(args, imgpipe, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
