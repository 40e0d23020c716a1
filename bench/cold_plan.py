"""A first plan on a cold file system: `imgpipe plan` of N MSs whose directories and inodes are
not in the kernel's caches, against the same plan warm, for several numbers of reading processes.

Why: the first plan of a night's MSs on a cluster file system reads every MS's metadata cold
(here a 50,000-MS plan once took 94 s after the machine sat idle, against 9 s warm). The warm
benches cannot show it, and this VM's host keeps its own cache, so dropping the guest's caches
is not reproducible. This bench makes coldness reproducible: the MSs live on an ext4 file system
of their own, in a file attached as a loop device with direct I/O (no guest page cache under
it), unmounted and mounted again before each cold run. Their small files are real copies of a
template MS (tests/msmaker.py) and their large ones sparse files of the same size (the planner
only stats those): every MS has its own inodes, as real MSs do.

Needs root (losetup, mount). Each arm is the real CLI (`imgpipe plan`) in a subprocess with
ms_facts.READERS set; cold and warm runs are interleaved across arms, and ratios are to the
first arm. Example: `python bench/cold_plan.py --n 5000 --readers 2,8 --rounds 3`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import compile_package, spread  # noqa: E402  bench/machine.py

MSMAKER = os.path.join(REPO, "tests", "msmaker.py")
CONFIG = "[wsclean]\nname = 'img'\nchannels-out = 'all'\n"  # data-column: the default CORRECTED_DATA
SMALL = 65536  # files below this are copied; the others are made sparse


def make_ms_copies(template: str, folder: str, n: int) -> list[str]:
    files = []
    for root, _dirs, names in os.walk(template):
        rel = os.path.relpath(root, template)
        for name in names:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                files.append((rel, name, size, f.read() if size < SMALL else None))
    subdirs = sorted({rel for rel, *_ in files} - {"."})
    paths = []
    for i in range(n):
        base = os.path.join(folder, f"obs_{i:05d}.MS")
        for d in [".", *subdirs]:
            os.makedirs(os.path.join(base, d), exist_ok=True)
        for rel, name, size, data in files:
            with open(os.path.join(base, rel, name), "wb") as f:
                if data is None:
                    f.truncate(size)
                else:
                    f.write(data)
        paths.append(base)
    return paths


def run_plan(readers: int, paths: list[str], workdir: str) -> float:
    code = ("import sys; from imgpipe import ms_facts; ms_facts.READERS = int(sys.argv[1]); "
            "from imgpipe.cli import main; sys.exit(main(sys.argv[2:]))")
    jobs = os.path.join(workdir, f"jobs-{readers}.txt")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(readers), "plan", "--jobs-file", jobs,
                          os.path.join(workdir, "img.toml"), *paths], cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"imgpipe plan failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="MSs (default 5000; each takes ~80 inodes)")
    ap.add_argument("--readers", default="2,8", help="numbers of reading processes, the first the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("cold_plan.py needs root (losetup, mount)")
    arms = [int(r) for r in args.readers.split(",")]
    compile_package()
    workdir = tempfile.mkdtemp(prefix="imgpipe-cold-")
    image, mnt, loop = os.path.join(workdir, "fs.img"), os.path.join(workdir, "mnt"), None
    try:
        subprocess.run([sys.executable, MSMAKER, os.path.join(workdir, "template.MS"), "--corrected-data"],
                       check=True, stdout=subprocess.DEVNULL)
        size_mb = 64 + args.n * 0.7  # ~0.45 MB of blocks an MS (small files and directories)
        subprocess.run(["truncate", "-s", f"{int(size_mb)}M", image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(100 * args.n + 1000), image], check=True)
        loop = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", image], check=True,
                              capture_output=True, text=True).stdout.strip()
        os.mkdir(mnt)
        subprocess.run(["mount", loop, mnt], check=True)
        t0 = time.perf_counter()
        paths = make_ms_copies(os.path.join(workdir, "template.MS"), os.path.join(mnt, "ms"), args.n)
        print(f"{args.n} MSs made on {loop} (ext4, direct I/O) in {time.perf_counter() - t0:.1f} s")
        with open(os.path.join(workdir, "img.toml"), "w") as f:
            f.write(CONFIG)
        run_plan(arms[0], paths, workdir)  # (the SPECTRAL_WINDOW cache filled: every arm plans "again")
        cold = {r: [] for r in arms}
        warm = {r: [] for r in arms}
        for k in range(args.rounds):
            for r in arms:
                subprocess.run(["umount", mnt], check=True)
                subprocess.run(["mount", loop, mnt], check=True)
                cold[r].append(run_plan(r, paths, workdir))
                warm[r].append(run_plan(r, paths, workdir))
                print(f"  round {k + 1} readers {r:2d}: cold {cold[r][-1]:.2f} s, warm {warm[r][-1]:.2f} s")
        base = arms[0]
        print(f"\nimgpipe plan of {args.n} MSs, medians of {args.rounds} rounds (ratios paired to {base} readers):")
        for r in arms:
            rc = [a / b for a, b in zip(cold[r], cold[base])]
            rw = [a / b for a, b in zip(warm[r], warm[base])]
            print(f"  readers {r:2d}: cold {statistics.median(cold[r]):6.2f} s  ({spread(rc)})   "
                  f"warm {statistics.median(warm[r]):6.2f} s  ({spread(rw)})")
    finally:
        if loop:
            subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
            subprocess.run(["losetup", "-d", loop], stderr=subprocess.DEVNULL)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
