#!/usr/bin/env python3
"""32 nodes: 1,000 short jobs through imgpipe and through bare GNU parallel, and Ctrl-C.

    .venv/bin/python bench/many_nodes.py                     # 32 nodes x 2 slots, 1,000 jobs, 2 rounds
    .venv/bin/python bench/many_nodes.py --nodes 16 --jobs 300 --rounds 1

What it does
------------
* Starts --nodes real sshd processes on loopback ports (tests/sshcluster.py), each
  with sshd's OWN connection limits (MaxStartups 10:30:100, MaxSessions 10), as on a
  real node, and a client config without connection sharing (no ControlMaster): every
  job is a new ssh login, as for a user with a plain ~/.ssh/config.
* A stand-in WSClean (first on the nodes' PATH) sleeps --job-seconds and writes the
  image its -name asks for. The MSs are hard-link copies of one small MS; every job
  may run on any node.
* Arms, alternating order per round:
    imgpipe   `imgpipe CONFIG MS...` with nodes = 'node[001-0NN]', max_concurrent = --slots;
    parallel  bare GNU parallel, -S SLOTS/node001,...  --ssh 'ssh -F ...', on the planned
              commands (`mkdir -p OUT TEMP && COMMAND`).
  Printed: makespan, the time from launch to the first job's start (imgpipe probes every
  node first: the probes must not be serial), and imgpipe's own CPU (the progress loop).
* Ctrl-C: imgpipe starts --nodes x --slots jobs that would sleep 300 s; once every one
  runs, SIGINT goes to imgpipe, and the script times how long until no job process is
  left on any node and imgpipe has exited. Target: <= 10 s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

from machine import imgpipe_exe, joblog_rows, link_copies, run_measured, spread, wait_quiet, work_dir  # (bench/ is on sys.path when run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
MSMAKER = os.path.join(REPO, "tests", "msmaker.py")

from sshcluster import SshCluster  # noqa: E402  (tests/sshcluster.py)

STAND_IN = """#!/bin/sh
# stand-in for WSClean on the bench's nodes: sleeps, then writes the image its -name asks for
[ "$1" = --version ] && { echo "WSClean version 3.1.0 (stand-in)"; exit 0; }
for a; do [ "$prev" = -name ] && name=$a; prev=$a; done
read -r seconds < "{seconds}"
sleep "$seconds"
: > "$name-image.fits"
"""


def job_processes(marker: str) -> list[int]:
    """Pids of the stand-in's sleeps (their environment holds the marker), on every node (one machine)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd.startswith(b"sleep\0") and marker.encode() in _environ(pid):
            found.append(int(pid))
    return found


def _environ(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


class CpuOf:
    """Samples a process's own CPU time (user + system, not its children's) until it ends."""

    def __init__(self, pid: int):
        self.pid, self.cpu = pid, 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        tick = os.sysconf("SC_CLK_TCK")
        while True:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] == "Z":
                    return
                self.cpu = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError):
                return
            time.sleep(0.1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--slots", type=int, default=2, help="jobs at a time per node (default 2)")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--job-seconds", type=float, default=0.5, help="how long the stand-in sleeps (default 0.5)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", metavar="DIR")
    ap.add_argument("--imgpipe", help="the imgpipe executable (default: next to this python)")
    ap.add_argument("--wait-quiet", type=float, default=20, metavar="S")
    args = ap.parse_args(argv)
    with work_dir(args.keep, "imgpipe-nodes-") as work:
        return bench(args, imgpipe_exe(args.imgpipe), work)


def bench(args, imgpipe: str, work: str) -> int:
    names = [f"node{i:03d}" for i in range(1, args.nodes + 1)]
    bindir = os.path.join(work, "stand-in")
    os.makedirs(bindir, exist_ok=True)
    seconds = os.path.join(bindir, "seconds")
    with open(os.path.join(bindir, "wsclean"), "w") as f:
        f.write(STAND_IN.replace("{seconds}", seconds))
    os.chmod(os.path.join(bindir, "wsclean"), 0o755)
    marker = f"IMGPIPE_BENCH_{os.getpid()}"
    template = os.path.join(work, "template.MS")
    if not os.path.isfile(os.path.join(template, "table.dat")):
        subprocess.run([sys.executable, MSMAKER, template, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    ms = [os.path.join(work, "ms", f"obs_{i:05d}.MS") for i in range(args.jobs)]
    link_copies(template, ms)
    print(f"imgpipe many-nodes benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, host {platform.node()}, "
          f"{os.cpu_count()} CPUs; {args.nodes} nodes x {args.slots} slots, {args.jobs} jobs of "
          f"{args.job_seconds} s; work dir {work}")
    t0 = time.perf_counter()
    cluster = SshCluster(os.path.join(work, "cluster"), names, control_master=False, sshd_limits=True,
                         path_prepend=[bindir, os.path.dirname(sys.executable), os.path.join(REPO, "bin")],
                         remote_env={marker: "1"}, startup_timeout=120)
    with cluster:
        print(f"{args.nodes} sshd up in {time.perf_counter() - t0:.1f} s (sshd's default MaxStartups and "
              "MaxSessions; no ControlMaster: one ssh login per job)")
        env = cluster.env()
        env.pop("PARALLEL_HOME", None)
        config = os.path.join(work, "bench.toml")
        with open(config, "w") as f:
            f.write(f"[worker]\nnodes = 'node[001-{args.nodes:03d}]'\nmax_concurrent = {args.slots}\n"
                    f"ssh = {cluster.ssh_command!r}\n\n"
                    "[wsclean]\nname = 'img'\nout-dir = '${IMGPIPE_BENCH_OUT}/$ms_basename$'\n"
                    "data-column = 'DATA'\nsize = '64 64'\nscale = '1arcmin'\nj = 1\n")
        with open(seconds, "w") as f:
            f.write(f"{args.job_seconds}\n")

        placeholder = os.path.join(work, "OUT-PLACEHOLDER")
        plan_dir = os.path.join(work, "plan")
        os.makedirs(plan_dir, exist_ok=True)
        subprocess.run([imgpipe, "plan", "--jobs-file", os.path.join(plan_dir, "jobs.txt"), config, *ms],
                       env={**env, "IMGPIPE_BENCH_OUT": placeholder}, check=True, capture_output=True)
        planned = []
        with open(os.path.join(plan_dir, "jobs.txt"), encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#") and line.strip():
                    planned.append(shlex.split(line.rstrip("\n").split("\t", 2)[2]))
        logins = ",".join(f"{args.slots}/{n}" for n in names)

        results = {"imgpipe": [], "parallel": []}
        for r in range(args.rounds):
            for arm in (["imgpipe", "parallel"] if r % 2 == 0 else ["parallel", "imgpipe"]):
                rep = os.path.join(work, f"round{r + 1}-{arm}")
                shutil.rmtree(rep, ignore_errors=True)
                os.makedirs(rep)
                out = os.path.join(rep, "out")
                arm_env = {**env, "IMGPIPE_BENCH_OUT": out}
                if arm == "imgpipe":
                    cmd = [imgpipe, config, *ms]
                else:
                    lines = os.path.join(rep, "lines.txt")
                    with open(lines, "w", encoding="utf-8") as f:
                        for a in planned:
                            a = [w.replace(placeholder, out) for w in a]
                            name = a[a.index("-name") + 1]
                            temp = a[len(a) - 1 - a[::-1].index("-temp-dir") + 1]
                            f.write(f"mkdir -p {shlex.quote(os.path.dirname(name))} {shlex.quote(temp)} && "
                                    f"{shlex.join(a)}\n")
                    cmd = ["parallel", "--will-cite", "-S", logins, "--ssh", cluster.ssh_command,
                           "--joblog", os.path.join(rep, "joblog.tsv"), "-a", lines]
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                own = {}
                m = measured_with_own_cpu(cmd, rep, arm_env, own)
                joblog = os.path.join(rep, "joblog.tsv")
                if arm == "imgpipe":
                    runs = os.path.join(rep, "imgpipe-runs")
                    joblog = os.path.join(runs, os.listdir(runs)[0], "joblog.tsv") if os.path.isdir(runs) else joblog
                starts = [start for start, _, rc in joblog_rows(joblog) if rc == 0]
                images = sum(os.path.isfile(os.path.join(out, os.path.basename(p), "img-image.fits")) for p in ms)
                ok = m["rc"] == 0 and images == len(ms) and len(starts) >= len(ms)
                m["first"] = (min(starts) - m["epoch"]) if starts else float("nan")
                m["own"] = own.get("cpu", 0.0)
                print(f"  round {r + 1} {arm:<8} {m['wall']:6.1f} s, first job after {m['first']:.2f} s, CPU of the "
                      f"tree {m['cpu']:.1f} s" + (f", imgpipe's own {m['own']:.2f} s" if arm == "imgpipe" else "")
                      + ("" if ok else f"  <-- FAILED (exit {m['rc']}, {images} images, {len(starts)} rows; "
                                       f"{os.path.join(rep, 'output.log')})"), flush=True)
                results[arm].append(m if ok else None)

        print()
        for arm in results:
            ok = [m for m in results[arm] if m]
            if ok:
                print(f"{arm:<9} makespan median {statistics.median(m['wall'] for m in ok):6.1f} s; first job after "
                      f"{statistics.median(m['first'] for m in ok):.2f} s")
        ratios = [a["wall"] / b["wall"] for a, b in zip(results["imgpipe"], results["parallel"]) if a and b]
        if ratios:
            print(f"imgpipe / bare GNU parallel, makespan (paired): {spread(ratios)}")
            own = [m["own"] for m in results["imgpipe"] if m]
            print(f"imgpipe's own CPU (planning, probes, the progress loop): {statistics.median(own):.2f} s for "
                  f"{args.jobs} jobs")

        # ---- Ctrl-C with every slot busy
        with open(seconds, "w") as f:
            f.write("300\n")
        rep = os.path.join(work, "ctrl-c")
        shutil.rmtree(rep, ignore_errors=True)
        os.makedirs(rep)
        busy = args.nodes * args.slots
        proc = subprocess.Popen([imgpipe, config, *ms[:busy]], cwd=rep, env={**env, "IMGPIPE_BENCH_OUT": rep + "/out"},
                                stdin=subprocess.DEVNULL, stdout=open(os.path.join(rep, "output.log"), "wb"),
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while len(job_processes(marker)) < busy and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        running = len(job_processes(marker))
        t_int = time.monotonic()
        proc.send_signal(signal.SIGINT)
        gone_at = None
        while time.monotonic() - t_int < 60:
            if gone_at is None and not job_processes(marker):
                gone_at = time.monotonic() - t_int
            if gone_at is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        exited = proc.poll()
        exit_after = time.monotonic() - t_int
        if exited is None:
            proc.kill()
        left = job_processes(marker)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        print(f"Ctrl-C with {running} of {busy} jobs running on {args.nodes} nodes: "
              + (f"every job stopped after {gone_at:.1f} s" if gone_at is not None else
                 f"{len(left)} job(s) still running after 60 s")
              + (f", imgpipe exited ({exited}) after {exit_after:.1f} s" if exited is not None else
                 ", imgpipe still running after 60 s")
              + f"; target <= 10 s: {'PASS' if gone_at is not None and gone_at <= 10 and exit_after <= 10 else 'MISS'}")
    return 0


def measured_with_own_cpu(cmd, cwd, env, own: dict) -> dict:
    """run_measured, and the started process's own CPU (sampled from /proc while it runs)."""
    sampler: list[CpuOf] = []
    real_popen = subprocess.Popen

    class Spy(real_popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            sampler.append(CpuOf(self.pid))

    subprocess.Popen = Spy
    try:
        m = run_measured(cmd, cwd, os.path.join(cwd, "output.log"), env)
    finally:
        subprocess.Popen = real_popen
    if sampler:
        own["cpu"] = sampler[0].cpu
    return m


if __name__ == "__main__":
    sys.exit(main())
