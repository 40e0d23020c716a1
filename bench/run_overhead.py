#!/usr/bin/env python3
"""What running through imgpipe costs over plain GNU parallel, for the same WSClean jobs.

    /tmp/venv/bin/python bench/run_overhead.py                 # 12 jobs, 2 slots, 3 pairs of runs
    /tmp/venv/bin/python bench/run_overhead.py --jobs 24 --pairs 4
    /tmp/venv/bin/python bench/run_overhead.py --size 128 --niter 100   # tiny jobs: overhead shows more

What it does
------------
* Makes --jobs small, real MSs with tests/msmaker.py (distinct noise seeds) and a
  config: [worker] nodes = 'localhost', max_concurrent = --slots; [wsclean]
  data-column = 'DATA', size/scale/niter from the options, no-update-model-required,
  j = CPUs // slots, and out-dir = '${IMGPIPE_BENCH_OUT}/$ms_basename$' so every
  repetition writes to a fresh directory (nothing is skipped as already done).
  `j` is set so that the planned commands are the commands that run: without it
  imgpipe's wrapper adds -j CPUs/slots and -abs-mem MEM/slots at run time and
  plain GNU parallel would run different commands (--share keeps imgpipe's default
  and gives the plain commands the same -j and -abs-mem instead).
* (a) imgpipe end to end: `imgpipe CONFIG MS...` in a fresh directory (its run
  directory, imgpipe-runs/..., is new each time): start-up, planning, the
  run directory, GNU parallel with imgpipe's node-side wrapper, the summary.
* (b) plain GNU parallel on the planned commands: `imgpipe plan` (untimed here,
  timed separately as imgpipe's planning cost) writes the jobs file; its third
  TAB column is each job's command; each becomes the line
  `mkdir -p OUT_DIR TEMP_DIR && COMMAND` and
  `parallel --will-cite -j SLOTS --joblog LOG -a LINES` runs them.
* The pairs alternate a,b then b,a (a b b a a b ...), so a slow spell of the
  machine does not always hit the same arm. Makespan = wall time of the whole
  command (imgpipe's includes its start-up and planning). Reported: medians,
  their ratio (target: imgpipe within 5% of plain GNU parallel, ratio <= 1.05),
  and where imgpipe's extra time goes, from the job logs: before the first job
  starts, per job (wrapper), after the last job ends.
* Every run is checked: exit status 0 and every job's -image.fits present.
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
import tempfile
import time

from machine import cpu_busy, wait_quiet  # bench/machine.py (bench/ is on sys.path when run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSMAKER = os.path.join(REPO, "tests", "msmaker.py")
TARGET = 1.05


def timed(argv: list[str], cwd: str, env: dict, log: str) -> tuple[float, float, int, float, float]:
    """(wall s, epoch start, exit code, CPU s of the tree, CPUs used meanwhile by other processes)."""
    with open(log, "wb") as out:
        b0 = cpu_busy()
        epoch = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = cpu_busy() - b0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, epoch, proc.returncode, cpu, max(0.0, busy - cpu) / wall


def joblog_rows(path: str) -> list[tuple[float, float, int]]:
    """(start epoch, runtime s, exit value) of every row of a GNU parallel job log."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            next(f, None)
            for line in f:
                p = line.split("\t")
                if len(p) >= 9:
                    rows.append((float(p[2]), float(p[3]), int(p[6])))
    except FileNotFoundError:
        pass
    return rows


def read_jobs(jobs_file: str) -> list[list[str]]:
    """The argv of every job of a jobs file (third TAB column, shell-quoted)."""
    out = []
    with open(jobs_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            out.append(shlex.split(line.rstrip("\n").split("\t", 2)[2]))
    return out


def word_after(argv: list[str], flag: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def images_missing(argvs: list[list[str]]) -> list[str]:
    return [p for a in argvs for p in [word_after(a, "-name") + "-image.fits"] if not os.path.isfile(p)]


def share_words(slots: int) -> list[str]:
    """What imgpipe-job adds in its default share mode: -j CPUs/slots -abs-mem MEM/slots."""
    words = ["-j", str(max(1, (os.cpu_count() or 1) // slots))]
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        words += ["-abs-mem", f"{kb / 1048576 / slots:.1f}"]
    except (OSError, StopIteration):
        pass
    return words


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=12, help="WSClean jobs, one MS each (default 12)")
    ap.add_argument("--slots", type=int, default=2, help="jobs at a time: max_concurrent and parallel -j (default 2)")
    ap.add_argument("--pairs", type=int, default=3, help="pairs of runs (a and b), order alternating (default 3)")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (default 512: ~0.9 s a job here)")
    ap.add_argument("--scale", default="1arcmin", help="pixel scale (default 1arcmin)")
    ap.add_argument("--niter", type=int, default=1000, help="clean iterations (default 1000)")
    ap.add_argument("--share", action="store_true",
                    help="no j in the config: imgpipe's default share mode, and the same -j/-abs-mem "
                    "added to the plain commands")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (MSs, images, logs)")
    ap.add_argument("--imgpipe", default=None, help="the imgpipe executable (default: next to this python)")
    ap.add_argument("--wait-quiet", type=float, default=30, metavar="S",
                    help="before each run, wait up to S s for other processes to use < 0.25 CPU (0: don't)")
    ap.add_argument("--max-others", type=float, default=0.25, metavar="CPUS",
                    help="a run during which other processes used more CPUs than this is disturbed: "
                    "it is done again (default 0.25)")
    ap.add_argument("--redo", type=int, default=3, metavar="K",
                    help="do a disturbed run again up to K times; the last try counts anyway (default 3)")
    args = ap.parse_args(argv)

    imgpipe = args.imgpipe or os.path.join(os.path.dirname(sys.executable), "imgpipe")
    if not os.path.exists(imgpipe):
        imgpipe = shutil.which("imgpipe") or sys.exit("run_overhead: imgpipe not found (give --imgpipe)")
    for tool in ("wsclean", "parallel"):
        if shutil.which(tool) is None:
            sys.exit(f"run_overhead: {tool} is not on PATH")
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="imgpipe-run-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        return bench(args, imgpipe, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench(args, imgpipe: str, work: str) -> int:
    cpus = os.cpu_count() or 1
    wsv = subprocess.run(["wsclean", "--version"], capture_output=True, text=True).stdout
    wsv = next((w for line in wsv.splitlines() for w in [line.strip()] if "WSClean version" in w), "?")
    pv = subprocess.run(["parallel", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"imgpipe run-overhead benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, host {platform.node()}, "
          f"{cpus} CPUs; {wsv}; {pv}")
    print(f"work dir {work}{' (kept)' if args.keep else ' (removed at the end)'}")

    ms = [os.path.join(work, "ms", f"obs_{i:03d}.MS") for i in range(args.jobs)]
    todo = [p for p in ms if not os.path.isfile(os.path.join(p, "table.dat"))]
    os.makedirs(os.path.join(work, "ms"), exist_ok=True)
    if todo:
        subprocess.run([sys.executable, MSMAKER, *todo, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    threads = max(1, cpus // args.slots)
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as f:
        f.write(
            "[worker]\nnodes = 'localhost'\n"
            f"max_concurrent = {args.slots}\n\n"
            "[wsclean]\nname = 'img'\n"
            "out-dir = '${IMGPIPE_BENCH_OUT}/$ms_basename$'\n"
            "data-column = 'DATA'\n"
            f"size = '{args.size} {args.size}'\nscale = '{args.scale}'\nniter = {args.niter}\n"
            "no-update-model-required = true\n"
            + ("" if args.share else f"j = {threads}\n")
        )
    extra = share_words(args.slots) if args.share else []
    print(f"{args.jobs} jobs (one tiny MS each: 8 antennas, 10 times, 16 channels), {args.slots} at a time; "
          f"wsclean -size {args.size} {args.size} -scale {args.scale} -niter {args.niter} "
          f"-data-column DATA -no-update-model-required "
          + (f"(-j/-abs-mem added at run time: {' '.join(extra)})" if args.share else f"-j {threads}"))

    results: dict[str, list[dict]] = {"a": [], "b": []}
    plan_walls: list[float] = []
    failures = 0
    order = []
    for i in range(args.pairs):
        order += ["a", "b"] if i % 2 == 0 else ["b", "a"]
    def run_arm(k: int, arm: str, attempt: int) -> tuple[dict | None, bool]:
        """One run of one arm; (result, ok)."""
        rep = os.path.join(work, f"run{k + 1:02d}-{arm}" + (f"-again{attempt}" if attempt else ""))
        shutil.rmtree(rep, ignore_errors=True)
        os.makedirs(rep)
        env = {**os.environ, "IMGPIPE_BENCH_OUT": os.path.join(rep, "out")}
        if arm == "a":
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            log = os.path.join(rep, "imgpipe.log")
            wall, epoch, rc, cpu, others = timed([imgpipe, config, *ms], rep, env, log)
            base = os.path.join(rep, "imgpipe-runs")
            runs = [os.path.join(base, d) for d in os.listdir(base)] if os.path.isdir(base) else []
            jobs_file = os.path.join(runs[0], "jobs.txt") if runs else ""
            rows = joblog_rows(os.path.join(runs[0], "joblog.tsv")) if runs else []
        else:
            jobs_file = os.path.join(rep, "plan", "jobs.txt")
            t0 = time.perf_counter()
            p = subprocess.run([imgpipe, "plan", "--jobs-file", jobs_file, config, *ms], cwd=rep, env=env,
                               capture_output=True, text=True)
            plan_walls.append(time.perf_counter() - t0)
            if p.returncode != 0:
                print(f"  run {k + 1} (b): imgpipe plan failed:\n{p.stderr}")
                return None, False
            lines = os.path.join(rep, "parallel-lines.txt")
            with open(lines, "w", encoding="utf-8") as f:
                for a in read_jobs(jobs_file):
                    a = [a[0], *extra, *a[1:]]
                    out_dir = os.path.dirname(word_after(a, "-name"))
                    f.write(f"mkdir -p {shlex.quote(out_dir)} {shlex.quote(word_after(a, '-temp-dir'))} && "
                            f"{shlex.join(a)}\n")
            joblog = os.path.join(rep, "joblog.tsv")
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            log = os.path.join(rep, "parallel.log")
            wall, epoch, rc, cpu, others = timed(
                ["parallel", "--will-cite", "-j", str(args.slots), "--joblog", joblog, "-a", lines],
                rep, env, log)
            rows = joblog_rows(joblog)
        argvs = read_jobs(jobs_file) if jobs_file and os.path.isfile(jobs_file) else []
        missing = images_missing(argvs) if argvs else ["(no jobs file)"]
        bad = [r for r in rows if r[2] != 0]
        ok = rc == 0 and not missing and not bad and len(rows) == args.jobs
        first = min((r[0] for r in rows), default=epoch)
        last = max((r[0] + r[1] for r in rows), default=epoch)
        res = {"wall": wall, "before": first - epoch, "after": epoch + wall - last,
               "job_mean": statistics.mean(r[1] for r in rows) if rows else 0.0, "cpu": cpu, "others": others}
        print(f"  run {k + 1:2d} ({arm}) {'imgpipe     ' if arm == 'a' else 'GNU parallel'}: {wall:6.2f} s  "
              f"(first job after {res['before']:.2f} s, mean job {res['job_mean']:.2f} s, "
              f"last job ended {res['after']:.2f} s before exit; others used {others:.2f} CPUs)"
              + ("" if ok else f"  <-- FAILED: exit {rc}, {len(bad)} bad rows, {len(missing)} images missing; "
                 f"see {log}"), flush=True)
        return res, ok

    redone = 0
    for k, arm in enumerate(order):
        for attempt in range(args.redo + 1):
            res, ok = run_arm(k, arm, attempt)
            if not ok or res["others"] <= args.max_others or attempt == args.redo:
                break
            redone += 1
            print(f"          disturbed (others used > {args.max_others} CPUs): run {k + 1} again")
        if ok:
            results[arm].append(res)
        else:
            failures += 1

    if not results["a"] or not results["b"]:
        print("no complete pair of runs: no figures")
        return 0

    def med(arm, key):
        return statistics.median(r[key] for r in results[arm])

    a, b = med("a", "wall"), med("b", "wall")
    ratio = a / b
    print()
    print(f"{'':28} {'imgpipe (a)':>12} {'parallel (b)':>13}")
    print(f"{'makespan, median':28} {a:>11.2f}s {b:>12.2f}s   ratio a/b {ratio:.3f} "
          f"(target <= {TARGET}: {'PASS' if ratio <= TARGET else 'MISS'})")
    print(f"{'makespan, min':28} {min(r['wall'] for r in results['a']):>11.2f}s "
          f"{min(r['wall'] for r in results['b']):>12.2f}s")
    print(f"{'start -> first job starts':28} {med('a', 'before'):>11.2f}s {med('b', 'before'):>12.2f}s")
    print(f"{'mean job runtime':28} {med('a', 'job_mean'):>11.2f}s {med('b', 'job_mean'):>12.2f}s   "
          f"(imgpipe's wrapper: {1000 * (med('a', 'job_mean') - med('b', 'job_mean')):+.0f} ms a job)")
    print(f"{'last job ends -> exit':28} {med('a', 'after'):>11.2f}s {med('b', 'after'):>12.2f}s")
    print(f"{'CPU time of the whole tree':28} {med('a', 'cpu'):>11.2f}s {med('b', 'cpu'):>12.2f}s   "
          f"(imgpipe: {med('a', 'cpu') - med('b', 'cpu'):+.2f} s; least sensitive to other load)")
    pairs = [results["a"][i]["wall"] / results["b"][i]["wall"] for i in range(min(len(results["a"]), len(results["b"])))]
    print(f"{'ratio a/b per pair':28} " + " ".join(f"{r:.3f}" for r in pairs)
          + f"   (median {statistics.median(pairs):.3f})")
    print(f"imgpipe's fixed overhead: `imgpipe plan` of {args.jobs} MSs alone {1000 * statistics.median(plan_walls):.0f} ms "
          f"(median of {len(plan_walls)}); in the run, {1000 * (med('a', 'before') - med('b', 'before')):+.0f} ms "
          f"more than GNU parallel before the first job and "
          f"{1000 * (med('a', 'after') - med('b', 'after')):+.0f} ms more after the last")
    worst = max(r["others"] for arm in "ab" for r in results[arm])
    if worst > 0.25:
        print(f"note: other processes used up to {worst:.2f} CPUs during some runs (shared machine); "
              "compare the min row too")
    if redone:
        print(f"{redone} disturbed run(s) were done again (only the last try of each counts)")
    if failures:
        print(f"{failures} run(s) failed and are left out (see above)")
    return 0  # figures, not a test


if __name__ == "__main__":
    sys.exit(main())
