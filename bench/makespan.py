#!/usr/bin/env python3
"""When does the night end: the same jobs through imgpipe and through bare GNU parallel.

    .venv/bin/python bench/makespan.py --mix long-last      # 7 short jobs + 1 long one, last in the input
    .venv/bin/python bench/makespan.py --mix long-last --gridder wgridder --long-times 1200
                                                            # the same with jobs that use one CPU each
    .venv/bin/python bench/makespan.py --mix ascending      # 10 jobs, each longer than the one before
    .venv/bin/python bench/makespan.py --mix equal          # 8 equal jobs: parallel and make engines
    .venv/bin/python bench/makespan.py --mix trivial        # 500 jobs of a stand-in WSClean: per-job cost

What it does
------------
* Makes real MSs with tests/msmaker.py (12 antennas; a job's length grows with
  the MS's integrations, --short-times / --long-times) and a config:
  nodes = 'localhost', max_concurrent = --slots, j = CPUs // slots (so that the
  planned commands are exactly the commands every arm runs), out-dir =
  '${IMGPIPE_BENCH_OUT}/$ms_basename$' (a fresh directory per run: nothing is
  skipped as done).
* The arms, each a whole run, timed from spawn to exit (the makespan):
    imgpipe   `imgpipe CONFIG MS...` (GNU parallel engine): start-up, planning, the
              run directory, the node-side wrapper, the summary;
    make      `imgpipe --engine make CONFIG MS...`;
    input     bare GNU parallel, -j SLOTS, on the planned commands in input (MS) order;
    longest   bare GNU parallel on the same commands in the jobs file's order
              (imgpipe's longest-first order).
  The bare arms run `mkdir -p OUT TEMP && COMMAND` lines, planned once, untimed.
* Rounds: every arm once per round, the order rotating from round to round, so a
  slow spell of the shared machine does not always hit the same arm. Ratios are
  taken within a round (paired) and printed as median (min-max).
* Every run is checked: exit 0, one successful job-log row per job, every image there.
* --mix trivial uses a stand-in WSClean (a shell script that writes an empty image)
  on hard-link copies of one MS: what is measured is the cost of running a job,
  not imaging.

Targets (issue 13): long-last, imgpipe <= 0.75 x input; equal, imgpipe <= 1.02 x input
and make <= 1.05 x input (never worse than input order). The trivial mix has no target any more
(issue 22: up to about 50 ms of CPU per job is invisible next to a WSClean job; the wrapper's own
CPU next to a real small WSClean job is bench/wrapper_cpu.py's figure).
A miss is printed as MISS; the exit status is 0 anyway: figures, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys

from machine import imgpipe_exe, joblog_rows, link_copies, run_measured, spread, wait_quiet, work_dir  # (bench/ is on sys.path when run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSMAKER = os.path.join(REPO, "tests", "msmaker.py")

# mix -> (integrations of each MS in input order, default arms, {arm: target ratio against 'input'})
MIXES = {
    "long-last": (lambda s, l: [s] * 7 + [l], "imgpipe,input,longest", {"imgpipe": 0.75}),
    "ascending": (lambda s, l: [s + (l - s) * i // 9 for i in range(10)], "imgpipe,input,longest",
                  {"imgpipe": 1.0}),
    "equal": (lambda s, l: [s] * 8, "imgpipe,make,input", {"imgpipe": 1.02, "make": 1.05}),
    "trivial": (lambda s, l: [10] * 500, "imgpipe,input", {}),  # (its target retired: issue 22)
}
STAND_IN = """#!/bin/sh
# stand-in for WSClean (a trivial job): writes the image its -name asks for
[ "$1" = --version ] && { echo "WSClean version 3.1.0 (stand-in)"; exit 0; }
while [ $# -gt 0 ]; do [ "$1" = -name ] && name=$2; shift; done
: > "$name-image.fits"
"""


def read_jobs(jobs_file: str) -> list[tuple[str, list[str]]]:
    """(job id, argv) of every job of a jobs file, in the file's order."""
    out = []
    with open(jobs_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            job_id, _host, command = line.rstrip("\n").split("\t", 2)
            out.append((job_id, shlex.split(command)))
    return out


def word_after(argv: list[str], flag: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def make_ms(work: str, times: list[int], trivial: bool) -> list[str]:
    """The MSs, one per job; distinct ones per length (their noise seeds differ)."""
    paths = [os.path.join(work, "ms", f"obs_{i:03d}_t{t}.MS") for i, t in enumerate(times)]
    os.makedirs(os.path.join(work, "ms"), exist_ok=True)
    if trivial:
        template = os.path.join(work, "template.MS")
        if not os.path.isfile(os.path.join(template, "table.dat")):
            subprocess.run([sys.executable, MSMAKER, template, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
        link_copies(template, paths)
        return paths
    for i, (p, t) in enumerate(zip(paths, times)):
        if not os.path.isfile(os.path.join(p, "table.dat")):
            subprocess.run([sys.executable, MSMAKER, p, "--overwrite", "--nant", "12", "--ntimes", str(t),
                            "--seed", str(100 + i)], check=True, stdout=subprocess.DEVNULL)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mix", choices=sorted(MIXES), default="long-last")
    ap.add_argument("--arms", help="comma-separated arms (imgpipe, make, input, longest); default: the mix's")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every arm once (default 3)")
    ap.add_argument("--slots", type=int, default=2, help="jobs at a time (default 2)")
    ap.add_argument("--short-times", type=int, default=200, help="integrations of a short job's MS (default 200)")
    ap.add_argument("--long-times", type=int, default=1600, help="integrations of a long job's MS (default 1600)")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    ap.add_argument("--niter", type=int, default=5000, help="clean iterations (default 5000, mgain 0.5)")
    ap.add_argument("--gridder", choices=("w-stacking", "wgridder"), default="w-stacking",
                    help="WSClean's gridder (default w-stacking, WSClean's own default; wgridder: "
                         "use-wgridder = true, whose jobs keep one CPU busy at -j 1)")
    ap.add_argument("--jobs", type=int, help="number of jobs of --mix trivial (default 500)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the MSs are reused next time)")
    ap.add_argument("--imgpipe", help="the imgpipe executable (default: next to this python)")
    ap.add_argument("--wait-quiet", type=float, default=20, metavar="S",
                    help="before each run, wait up to S s for other processes to use < 0.25 CPU (0: don't)")
    args = ap.parse_args(argv)

    imgpipe = imgpipe_exe(args.imgpipe)
    for tool in ("wsclean", "parallel", "make"):
        if shutil.which(tool) is None:
            sys.exit(f"makespan: {tool} is not on PATH")
    with work_dir(args.keep, "imgpipe-makespan-") as work:
        return bench(args, imgpipe, work)


def bench(args, imgpipe: str, work: str) -> int:
    times_of, default_arms, targets = MIXES[args.mix]
    trivial = args.mix == "trivial"
    times = times_of(args.short_times, args.long_times)
    if trivial and args.jobs:
        times = [10] * args.jobs
    arms = (args.arms or default_arms).split(",")
    cpus = os.cpu_count() or 1
    env0 = dict(os.environ)
    if trivial:
        bindir = os.path.join(work, "stand-in")
        os.makedirs(bindir, exist_ok=True)
        with open(os.path.join(bindir, "wsclean"), "w") as f:
            f.write(STAND_IN)
        os.chmod(os.path.join(bindir, "wsclean"), 0o755)
        env0["PATH"] = bindir + os.pathsep + env0["PATH"]
    wsv = subprocess.run(["wsclean", "--version"], capture_output=True, text=True, env=env0).stdout
    wsv = next((ln.strip() for ln in wsv.splitlines() if "WSClean version" in ln), "?")
    pv = subprocess.run(["parallel", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"imgpipe makespan benchmark, mix {args.mix}, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
          f"host {platform.node()}, {cpus} CPUs; {wsv}; {pv}")
    ms = make_ms(work, times, trivial)
    threads = max(1, cpus // args.slots)
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as f:
        f.write("[worker]\nnodes = 'localhost'\n"
                f"max_concurrent = {args.slots}\n\n"
                "[wsclean]\nname = 'img'\nout-dir = '${IMGPIPE_BENCH_OUT}/$ms_basename$'\n"
                "data-column = 'DATA'\nno-update-model-required = true\n"
                f"size = '{args.size} {args.size}'\nscale = '1arcmin'\nniter = {args.niter}\nmgain = 0.5\n"
                f"j = {threads}\n" + ("use-wgridder = true\n" if args.gridder == "wgridder" else ""))
    if trivial:
        print(f"{len(ms)} jobs of a stand-in WSClean (writes an empty image), {args.slots} at a time")
    else:
        print(f"{len(ms)} jobs, {args.slots} at a time; MS integrations in input order: {times} (12 antennas, "
              f"16 channels); wsclean -size {args.size} {args.size} -niter {args.niter} -mgain 0.5 -j {threads}"
              + (" -use-wgridder" if args.gridder == "wgridder" else ""))

    # the bare arms' lines: planned once (the plan does not depend on IMGPIPE_BENCH_OUT's value
    # beyond the paths, which are rewritten per run below)
    plan_dir = os.path.join(work, "plan")
    shutil.rmtree(plan_dir, ignore_errors=True)
    os.makedirs(plan_dir)
    placeholder = os.path.join(work, "OUT-PLACEHOLDER")
    p = subprocess.run([imgpipe, "plan", "--jobs-file", os.path.join(plan_dir, "jobs.txt"), config, *ms],
                       cwd=plan_dir, env={**env0, "IMGPIPE_BENCH_OUT": placeholder}, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"makespan: imgpipe plan failed:\n{p.stderr}")
    planned = read_jobs(os.path.join(plan_dir, "jobs.txt"))
    first_ids = [j for j, _ in planned]
    long_pos = [first_ids.index(f"{i + 1:04d}") for i in range(len(ms))] if len(ms) <= 20 else []
    if long_pos:
        print("imgpipe's order (jobs file, longest first by its estimate): "
              + " ".join(f"{j}(t{times[int(j) - 1]})" for j in first_ids))

    def lines_for(out: str, order: str) -> str:
        jobs = planned if order == "longest" else sorted(planned)
        text = []
        for _, a in jobs:
            a = [w.replace(placeholder, out) for w in a]
            text.append(f"mkdir -p {shlex.quote(os.path.dirname(word_after(a, '-name')))} "
                        f"{shlex.quote(word_after(a, '-temp-dir'))} && {shlex.join(a)}")
        return "\n".join(text) + "\n"

    results: dict[str, list[dict | None]] = {a: [] for a in arms}
    for r in range(args.rounds):
        order = arms[r % len(arms):] + arms[: r % len(arms)]
        for arm in order:
            rep = os.path.join(work, f"round{r + 1}-{arm}")
            shutil.rmtree(rep, ignore_errors=True)
            os.makedirs(rep)
            out = os.path.join(rep, "out")
            env = {**env0, "IMGPIPE_BENCH_OUT": out}
            if arm in ("imgpipe", "make"):
                cmd = [imgpipe, *(["--engine", "make"] if arm == "make" else []), config, *ms]
                joblog = None
            else:
                lines = os.path.join(rep, "lines.txt")
                with open(lines, "w", encoding="utf-8") as f:
                    f.write(lines_for(out, arm))
                joblog = os.path.join(rep, "joblog.tsv")
                cmd = ["parallel", "--will-cite", "-j", str(args.slots), "--joblog", joblog, "-a", lines]
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            m = run_measured(cmd, rep, os.path.join(rep, "output.log"), env)
            if joblog is None:
                runs = os.path.join(rep, "imgpipe-runs")
                found = [os.path.join(runs, d, "joblog.tsv") for d in os.listdir(runs)] if os.path.isdir(runs) else []
                rows = joblog_rows(found[0]) if found else []
            else:
                rows = joblog_rows(joblog)
            images = sum(os.path.isfile(os.path.join(out, os.path.basename(p), "img-image.fits")) for p in ms)
            ok = m["rc"] == 0 and images == len(ms) and sum(1 for x in rows if x[2] == 0) >= len(ms)
            first = min((x[0] for x in rows), default=m["epoch"]) - m["epoch"]
            print(f"  round {r + 1} {arm:<8} {m['wall']:7.2f} s  first job after {first:.2f} s, CPU {m['cpu']:.1f} s, "
                  f"others {m['others']:.2f} CPUs" + ("" if ok else f"  <-- FAILED (exit {m['rc']}, {images} images; "
                                                       f"{os.path.join(rep, 'output.log')})"), flush=True)
            m["first"] = first
            results[arm].append(m if ok else None)

    print()
    base = "input" if "input" in arms else arms[-1]
    print(f"{'arm':<9} {'median':>8} {'min':>8} {'max':>8}  {'ratio to ' + base + ' (paired): median (min-max)':<44} target")
    for arm in arms:
        walls = [m["wall"] for m in results[arm] if m]
        if not walls:
            print(f"{arm:<9} (no successful run)")
            continue
        ratios = [a["wall"] / b["wall"] for a, b in zip(results[arm], results[base]) if a and b]
        target = targets.get(arm)
        verdict = ""
        if target and ratios:
            verdict = f"<= {target}: {'PASS' if statistics.median(ratios) <= target else 'MISS'}"
        print(f"{arm:<9} {statistics.median(walls):7.2f}s {min(walls):7.2f}s {max(walls):7.2f}s  "
              f"{spread(ratios) if arm != base else '1':<44} {verdict}")
    base_cpu = [m["cpu"] for m in results[base] if m]
    base_wall = [m["wall"] for m in results[base] if m]
    if base_cpu and not trivial:
        floor = statistics.median(base_cpu) / (os.cpu_count() or 1)
        print(f"CPU floor: the {base} arm's CPU / {os.cpu_count()} CPUs = {floor:.2f} s = "
              f"{floor / statistics.median(base_wall):.3f} x {base}: no order of these jobs ends sooner here "
              "(WSClean uses more than its -j thread)")
    if trivial:
        n = len(ms)
        for arm in arms:
            ok = [m for m in results[arm] if m]
            if ok:
                print(f"{arm}: {1000 * statistics.median(m['wall'] for m in ok) / n:.1f} ms of makespan and "
                      f"{1000 * statistics.median(m['cpu'] for m in ok) / n:.1f} ms of CPU a job; first job after "
                      f"{statistics.median(m['first'] for m in ok):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
