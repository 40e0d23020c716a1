"""What the benchmarks share: how busy the machine is, so that a disturbed run can be redone."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time


def cpu_busy() -> float:
    """CPU-seconds spent busy by the whole machine so far (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use under ``threshold`` CPUs; return their load."""
    deadline = time.monotonic() + max_wait
    while True:
        b0 = cpu_busy()
        time.sleep(0.5)
        load = (cpu_busy() - b0) / 0.5
        if load < threshold or time.monotonic() >= deadline:
            return load


def run_measured(argv: list[str], cwd: str, log: str, env: dict | None = None) -> dict:
    """Run ``argv`` to its end: wall s, epoch start, exit code, peak RSS MB of the biggest process
    of the tree, CPU s of the tree, and CPUs used meanwhile by other processes on the machine."""
    import subprocess

    with open(log, "wb") as out:
        b0 = cpu_busy()
        epoch = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = cpu_busy() - b0
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "epoch": epoch, "rc": os.waitstatus_to_exitcode(status), "rss_mb": usage.ru_maxrss / 1024,
            "cpu": cpu, "others": max(0.0, busy - cpu) / wall}


def link_copies(template: str, dests: list[str]) -> tuple[int, float]:
    """Make each of ``dests`` a copy of the MS ``template`` made of hard links (directories
    created, every file os.link()ed; casacore opens them read-only). Existing ones are kept.
    Return (made, seconds)."""
    import shutil

    tree = [(os.path.relpath(d, template), files) for d, _, files in os.walk(template)]
    made = 0
    t0 = time.perf_counter()
    for dest in dests:
        if os.path.isdir(dest):
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dest), "." + os.path.basename(dest) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        for rel, files in tree:
            d = os.path.normpath(os.path.join(tmp, rel))
            os.mkdir(d)
            for f in files:
                os.link(os.path.join(template, rel, f), os.path.join(d, f))
        os.rename(tmp, dest)  # a copy is there whole or not at all
        made += 1
    return made, time.perf_counter() - t0


def spread(values) -> str:
    """'median (min-max)' of a few ratios."""
    import statistics

    v = sorted(values)
    return f"{statistics.median(v):.3f} ({v[0]:.3f}-{v[-1]:.3f})" if v else "-"


@contextlib.contextmanager
def work_dir(keep: str | None, prefix: str):
    """The benchmark's working directory: ``keep`` (made if missing, kept: its MSs are reused next
    time), or a new temporary one, removed afterwards."""
    path = os.path.abspath(keep) if keep else tempfile.mkdtemp(prefix=prefix)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def imgpipe_exe(given: str | None) -> str:
    """The imgpipe to measure: --imgpipe, else the one next to this interpreter, else on PATH."""
    exe = given or os.path.join(os.path.dirname(sys.executable), "imgpipe")
    if not os.path.exists(exe):
        exe = shutil.which("imgpipe") or sys.exit("imgpipe not found (give --imgpipe)")
    compile_package()
    return exe


def compile_package() -> None:
    """Byte-compile the imgpipe package, as `pip install` does: an editable install after a
    change, or a machine with PYTHONDONTWRITEBYTECODE set (this one), would otherwise compile the
    changed modules at every start of every measured run (~5 ms a module)."""
    import compileall

    import imgpipe

    compileall.compile_dir(os.path.dirname(imgpipe.__file__), quiet=1)


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
