#!/usr/bin/env python3
"""How long `imgpipe plan` takes for 1,000 and 10,000 Measurement Sets, start-up included.

    /tmp/venv/bin/python bench/plan_scale.py                      # 1,000 and 10,000, 3 runs each
    /tmp/venv/bin/python bench/plan_scale.py --sizes 1000 --repeats 5
    /tmp/venv/bin/python bench/plan_scale.py --keep /tmp/plan-bench  # keep (and reuse) the MSs

What it does
------------
* Makes ONE real MS with tests/msmaker.py (16 channels, with CORRECTED_DATA, the
  default data-column), then N copies of it made of hard links: the directories
  are created, every file is os.link()ed. casacore opens them read-only, so hard
  links are fine. imgpipe dedupes by the MS *directory's* (device, inode); each
  copy is a directory of its own, so each is read as a separate MS. Caveat: the copies
  share their data pages, so file *contents* are always in the page cache; only
  the directory entries and inodes of the copies are new. On a real file system
  with N distinct MSs a cold cache costs more.
* Times the real CLI as a subprocess, `imgpipe plan --jobs-file J img.toml MS...`
  with `channels-out = 'all'` (so every MS's SPECTRAL_WINDOW is read): wall time
  from spawn to exit, and peak RSS of the largest process of the tree (os.wait4
  on the child: Linux reports max(child, its reaped children), i.e. the biggest
  single process, here the parent; the forked MS-reading workers share most of its
  pages). Each run writes a new jobs file (the old one is removed first).
* Two imgpipe arms: "first" is the first plan of these MSs (an empty
  XDG_CACHE_HOME: casacore reads each distinct SPECTRAL_WINDOW), "imgpipe" any
  later plan of them (what the first kept in ~/.cache/imgpipe/spw, under the
  digest of each table's bytes: no casacore, no numpy), as every resume is.
  With --nenucal, nenucal 0.29.2 runs the same config (dry_run) interleaved.
* Runs each size --repeats times and prints min and median. PASS/MISS is judged
  on the median ratio to nenucal (issue 13: 1,000 MSs <= 0.25 x, 10,000 <= 0.3 x)
  or on the median (50,000 in <= 5 s and <= 200 MB). A miss never makes the
  script fail: it prints figures, it is not a test.
* Then, in a fresh interpreter, times the stages of planning the largest N
  in-process (imports, config, inputs, casacore import, MS facts, build_plan,
  render, write), so one can see where the time goes.

The MS paths are passed as argv words (execve). The script prints the argv size
against ARG_MAX: 10,000 paths of ~40 characters are ~0.4 MB, well below Linux's
limit (a quarter of the stack limit, 2 MB with the usual 8 MB stack). A shell
glob (`imgpipe plan img.toml dir/*.MS`) meets the same execve limit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import shutil
import tempfile
import time

from machine import cpu_busy, imgpipe_exe, link_copies, spread, wait_quiet, work_dir  # bench/machine.py (bench/ is on sys.path when run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSMAKER = os.path.join(REPO, "tests", "msmaker.py")
RATIO_TARGETS = {1000: 0.25, 10000: 0.3}  # imgpipe / nenucal, wall, start-up included (issue 13)
ABSOLUTE_TARGETS = {50000: (5.0, 200)}  # seconds, MB
CONFIG = "[wsclean]\nname = 'img'\nchannels-out = 'all'\n"  # data-column: the default CORRECTED_DATA


# ------------------------------------------------------------------ the MSs


def ms_path(workdir: str, i: int) -> str:
    return os.path.join(workdir, "ms", f"obs_{i:05d}.MS")


def make_template(workdir: str, python: str) -> str:
    template = os.path.join(workdir, "template.MS")
    if not os.path.isfile(os.path.join(template, "table.dat")):
        subprocess.run([python, MSMAKER, template, "--corrected-data", "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
    return template


def link_ms_copies(template: str, workdir: str, n: int) -> tuple[int, float]:
    """Make ms/obs_00000.MS ... as hard-link copies of the template; return (made, seconds)."""
    return link_copies(template, [ms_path(workdir, i) for i in range(n)])


# ------------------------------------------------------------------ measuring


def run_measured(argv: list[str], cwd: str, log: str, env: dict | None = None) -> tuple[float, float, int, float, float]:
    """(wall s, peak RSS MB of the biggest process in the tree, exit code, CPU s of the tree,
    CPUs used meanwhile by other processes on the machine)."""
    with open(log, "wb") as err:
        b0 = cpu_busy()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = cpu_busy() - b0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024, proc.returncode, cpu, max(0.0, busy - cpu) / wall


def count_jobs(jobs_file: str) -> int:
    try:
        with open(jobs_file, encoding="utf-8") as f:
            return sum(1 for line in f if line and not line.startswith("#"))
    except FileNotFoundError:
        return 0


def arg_bytes(argv: list[str]) -> int:
    return sum(len(os.fsencode(a)) + 1 for a in argv) + sum(
        len(k) + len(v) + 2 for k, v in os.environ.items())


def median_time(argv: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ breakdown (fresh interpreter)


def breakdown(workdir: str, n: int) -> dict:
    """Time each stage of `imgpipe plan` in-process; run in a fresh interpreter (see main)."""
    import gc

    gc.disable()  # (as imgpipe's main does while a command builds its jobs)
    stages: list[tuple[str, float]] = []
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages.append((name, now - t))
        t = now

    import imgpipe.cli  # noqa: F401  what the CLI imports before planning
    from imgpipe import jobs_file, ms_facts
    from imgpipe.config import load_config
    from imgpipe.inputs import resolve_inputs
    from imgpipe.plan import build_plan, data_column, plan_digest
    lap("import imgpipe (cli, config, plan, jobs_file)")
    config = load_config(os.path.join(workdir, "img.toml"))
    lap("config load")
    paths = [ms_path(workdir, i) for i in range(n)]
    inputs = resolve_inputs(config, paths)
    lap("input resolution (abspath, dedupe by stat)")
    ms_facts.import_tables()
    lap("casacore import (a first plan only: later ones read what it kept)")
    facts, problems = ms_facts.read_facts([i.path for i in inputs], data_column(config))
    lap(f"MS facts (read_facts: checks + casacore, {min(os.cpu_count() or 1, 4)} workers >= "
        f"{ms_facts.PARALLEL_MIN} MSs)")
    assert not problems, problems[:3]
    plan = build_plan(config, inputs, facts)
    lap("build_plan (argv of every job, digest)")
    out = os.path.join(workdir, "runs", "breakdown", "jobs.txt")
    if os.path.exists(out):
        os.unlink(out)
    jobs_file.write(plan, out)
    lap("jobs file: render + atomic write")
    # not part of the sequence above: re-timed on their own, for scale
    extra = []
    t0 = time.perf_counter()
    text = jobs_file.render(plan)
    extra.append(("  of the jobs file: render alone", time.perf_counter() - t0))
    t0 = time.perf_counter()
    plan_digest(plan.worker, plan.jobs)
    extra.append(("  of build_plan: the plan digest alone", time.perf_counter() - t0))
    from imgpipe.inputs import ms_problem

    t0 = time.perf_counter()
    for p in paths:
        ms_problem(p)
    extra.append(("  of MS facts: existence/readability checks (serial, re-timed)", time.perf_counter() - t0))
    from imgpipe.plan import make_plan

    size = len(text)
    del plan, text, facts  # (make_plan from nothing, as the CLI runs it)
    t0 = time.perf_counter()
    make_plan(config, paths)
    extra.append(("  make_plan: input resolution, MS facts and build_plan overlapped, + out-dir check",
                  time.perf_counter() - t0))
    t0 = time.perf_counter()
    ms_facts._read_chunk((paths[:1000], data_column(config), False))
    per = (time.perf_counter() - t0) / min(n, 1000)
    extra.append((f"  of MS facts: one MS read serially (x{n} = {per * n:.2f} s of CPU)", per))
    return {"n": n, "stages": stages, "extra": extra, "bytes": size}


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000",
                    help="comma-separated numbers of MSs (default 1000,10000,50000)")
    ap.add_argument("--nenucal", metavar="EXE", help="nenucal's imgpipe executable: run it too, interleaved, "
                    "as the baseline (`pip install nenucal==0.29.2` in a venv of its own)")
    ap.add_argument("--nenucal-max", type=int, default=10000, metavar="N",
                    help="run nenucal only up to N MSs (default 10,000: it takes ~20 s at 50,000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per size (default 3)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the MSs are reused next time)")
    ap.add_argument("--imgpipe", default=None, help="the imgpipe executable (default: next to this python)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the in-process breakdown")
    ap.add_argument("--wait-quiet", type=float, default=30, metavar="S",
                    help="before each run, wait up to S seconds for other processes to use < 0.25 CPU "
                    "(default 30; 0: don't wait). Each run prints the CPUs others used during it")
    ap.add_argument("--max-others", type=float, default=0.25, metavar="CPUS",
                    help="a run during which other processes used more CPUs than this is disturbed: "
                    "it is done again (default 0.25)")
    ap.add_argument("--redo", type=int, default=3, metavar="K",
                    help="do a disturbed run again up to K times; the last try counts anyway (default 3)")
    ap.add_argument("--_breakdown", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._breakdown:
        json.dump(breakdown(args._breakdown[0], int(args._breakdown[1])), sys.stdout)
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(","))
    with work_dir(args.keep, "imgpipe-plan-bench-") as workdir:
        return measure(args, sizes, imgpipe_exe(args.imgpipe), workdir)


def measure(args, sizes: list[int], imgpipe: str, workdir: str) -> int:
    import casacore

    print(f"imgpipe plan scaling benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, host {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, python-casacore {casacore.__version__}")
    print(f"work dir {workdir}{' (kept)' if args.keep else ' (removed at the end)'}")
    t0 = time.perf_counter()
    template = make_template(workdir, sys.executable)
    made, secs = link_ms_copies(template, workdir, max(sizes))
    print(f"MSs: 1 real MS from tests/msmaker.py (16 channels, CORRECTED_DATA) + {max(sizes)} hard-link copies "
          f"({made} made now in {secs:.1f} s, {time.perf_counter() - t0:.1f} s with the template);")
    print("     casacore opens them read-only; each copy is its own directory (read as its own MS), but the copies share the")
    print("     template's data pages, so file contents are always cached (cold runs are only dentry/inode-cold)")
    config = os.path.join(workdir, "img.toml")
    with open(config, "w") as f:
        f.write(CONFIG)
    startup = median_time([imgpipe, "--version"])
    casacore_import = median_time([sys.executable, "-c", "import casacore.tables"])
    print(f"start-up alone: `imgpipe --version` {startup * 1000:.0f} ms, "
          f"`python -c 'import casacore.tables'` {casacore_import * 1000:.0f} ms (medians of 5)")

    nenucal_config = os.path.join(workdir, "nenucal.toml")
    with open(nenucal_config, "w") as f:  # the same jobs; dry_run: nenucal builds them and starts nothing
        f.write("[worker]\nnodes = 'localhost'\ndry_run = true\n\n"
                f"[wsclean]\nname = 'img'\nout-dir = '{workdir}/nenucal-out'\nchannels-out = 'all'\n")
    rows = []
    noisy = 0.0
    redone = 0
    for n in sizes:
        paths = [ms_path(workdir, i) for i in range(n)]
        jobs = os.path.join(workdir, "runs", f"n{n}", "jobs.txt")
        arms = {"imgpipe": [imgpipe, "plan", "--jobs-file", jobs, config, *paths]}
        # "first": the first plan of these MSs (no SPECTRAL_WINDOW kept from an earlier plan: casacore
        # reads the table); "imgpipe": any later plan of them (a resume plans again)
        arms["first"] = arms["imgpipe"]
        subprocess.run(arms["imgpipe"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # (kept)
        if args.nenucal and n <= args.nenucal_max:
            arms["nenucal"] = [args.nenucal, nenucal_config, *paths]
        size = arg_bytes(arms["imgpipe"])
        print(f"N={n}: argv + environment {size / 1024:.0f} KiB of ARG_MAX {os.sysconf('SC_ARG_MAX') / 1024:.0f} KiB")
        got_runs: dict[str, list] = {arm: [] for arm in arms}
        for r in range(args.repeats):
            order = list(arms) if r % 2 == 0 else list(arms)[::-1]  # interleaved: a b, b a, ...
            for arm in order:
                for attempt in range(args.redo + 1):
                    if os.path.exists(jobs):
                        os.unlink(jobs)
                    log = os.path.join(workdir, f"plan-{arm}-{n}-{r}.stderr")
                    before = wait_quiet(args.wait_quiet) if args.wait_quiet else None
                    env = None
                    if arm == "first":
                        empty = tempfile.mkdtemp(prefix="cache-", dir=workdir)
                        env = {**os.environ, "XDG_CACHE_HOME": empty}
                    wall, rss, rc, cpu, others = run_measured(arms[arm], workdir, log, env)
                    if env:
                        shutil.rmtree(env["XDG_CACHE_HOME"], ignore_errors=True)
                    ok = rc == 0 and (arm == "nenucal" or count_jobs(jobs) == n)
                    print(f"  run {r + 1} {arm:<8} {wall:7.3f} s, peak RSS {rss:4.0f} MB, CPU {cpu:.2f} s; others used "
                          f"{others:.2f} CPUs" + ("" if before is None else f" ({before:.2f} just before)")
                          + ("" if ok else f"  <-- exit {rc}; see {log}"), flush=True)
                    if not ok or others <= args.max_others or attempt == args.redo:
                        break
                    redone += 1
                    print(f"         disturbed (others used > {args.max_others} CPUs): again")
                noisy = max(noisy, others)
                got_runs[arm].append((wall, rss) if ok else None)
        for arm in ("imgpipe", "first"):
            walls = [x[0] for x in got_runs[arm] if x]
            if walls:
                ratios = [a[0] / b[0] for a, b in zip(got_runs[arm], got_runs.get("nenucal", [])) if a and b]
                base = [x[0] for x in got_runs.get("nenucal", []) if x]
                rows.append((n, arm, min(walls), statistics.median(walls), max(x[1] for x in got_runs[arm] if x),
                             statistics.median(base) if base else None, ratios))

    print()
    print(f"{'N':>6} {'imgpipe':<8} {'min':>8} {'median':>8} {'peak RSS':>9} {'per MS':>8} {'nenucal':>8}  "
          f"{'ratio (paired): median (min-max)':<34} target: result")
    for n, arm, lo, med, rss, base, ratios in rows:
        verdict = "-"
        if n in RATIO_TARGETS and ratios:
            t = RATIO_TARGETS[n]
            verdict = f"<= {t} x nenucal: {'PASS' if statistics.median(ratios) <= t else 'MISS'}"
        elif n in ABSOLUTE_TARGETS:
            t, mb = ABSOLUTE_TARGETS[n]
            verdict = f"<= {t:g} s and <= {mb} MB: {'PASS' if med <= t and rss <= mb else 'MISS'}"
        print(f"{n:>6} {arm:<8} {lo:>7.3f}s {med:>7.3f}s {rss:>6.0f} MB {med / n * 1000:>6.3f}ms "
              f"{f'{base:.3f}s' if base else '-':>8}  {spread(ratios) if ratios else '-':<34} {verdict}")

    if redone:
        print(f"{redone} disturbed run(s) were done again (only the last try of each counts)")
    if noisy > args.max_others:
        print(f"note: other processes used up to {noisy:.2f} CPUs during some counted runs: those runs are "
              "slowed (the machine is shared); min is then the fairer figure")

    if not args.no_breakdown and rows:
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        n = rows[-1][0]
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_breakdown", workdir, str(n)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"\nbreakdown failed:\n{out.stderr}")
        else:
            b = json.loads(out.stdout)
            total = sum(s for _, s in b["stages"])
            print(f"\nWhere the time goes, N={n}, in-process in a fresh interpreter (one run; the CLI adds "
                  f"interpreter start-up: `imgpipe --version` takes {startup * 1000:.0f} ms, part of it the first "
                  "import below):")
            for name, s in b["stages"]:
                print(f"  {s * 1000:8.0f} ms  {100 * s / total:4.0f}%  {name}")
            print(f"  {total * 1000:8.0f} ms  total ({b['bytes'] / 1e6:.1f} MB jobs file)")
            for name, s in b["extra"]:
                print(f"  {s * 1000:8.3f} ms        {name}")
            print("  (the indented lines are re-timed on their own, after the sequence; not in the total)")
    return 0  # figures, not a test: a miss is not a failure


if __name__ == "__main__":
    sys.exit(main())
