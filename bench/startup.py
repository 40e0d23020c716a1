"""Start-up of imgpipe installed from a wheel against the editable install of .ci/setup.

    .venv/bin/python bench/startup.py [--rounds 15]

Builds the wheel (``python -m build``), installs it with its report extra into a fresh venv
outside the tree, and times, interleaved round by round, the same commands through both
installs' ``imgpipe`` (spawn to exit): ``--version``, ``plan`` of 20 MSs, and a run of a plan
whose images are all done ("nothing to do": the start of every resumed run). The editable
install is the baseline; the figure is the wheel's time / the editable's, median (min-max)
over the rounds. Target (issue 21): a wheel starts no more slowly (<= 1.0 x, within the spread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from machine import wait_quiet  # noqa: E402
from msmaker import make_ms  # noqa: E402


def timed(argv: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    editable = REPO / ".venv" / "bin" / "imgpipe"
    if not editable.exists():
        raise SystemExit("no .venv/bin/imgpipe: run `bash .ci/setup` first")
    with tempfile.TemporaryDirectory(prefix="imgpipe-startup-") as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(REPO)], check=True,
                       capture_output=True)
        (whl,) = (tmp / "dist").glob("*.whl")
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
        subprocess.run([str(tmp / "venv/bin/python"), "-m", "pip", "install", "-q", f"{whl}[report]"], check=True,
                       capture_output=True)
        wheel = tmp / "venv" / "bin" / "imgpipe"

        work = tmp / "work"
        (work / "data").mkdir(parents=True)
        ms = [make_ms(str(work / "data" / f"SW01_T{i:03d}.MS"), nchan=4) for i in range(20)]
        (work / "img.toml").write_text(
            "[worker]\nnodes = 'localhost'\nmax_concurrent = 2\n[wsclean]\nname = 'img'\n"
            "out-dir = 'images/$ms_basename$'\nsize = '32 32'\nscale = '5arcmin'\nniter = 0\n"
            "data-column = 'DATA'\nno-update-model-required = true\n", encoding="utf-8")
        env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
        subprocess.run([str(editable), "img.toml", *ms], cwd=work, env=env, check=True, capture_output=True)
        commands = {
            "--version": ["--version"],
            "plan 20 MSs": ["plan", "--jobs-file", str(tmp / "jobs.txt"), "img.toml", *ms],
            "run, nothing to do": ["img.toml", *ms],
        }
        ratios: dict[str, list[float]] = {k: [] for k in commands}
        times: dict[str, dict[str, list[float]]] = {k: {"editable": [], "wheel": []} for k in commands}
        others = wait_quiet(30)
        for rnd in range(args.rounds):
            for name, words in commands.items():
                arms = [("editable", editable), ("wheel", wheel)]
                if rnd % 2:
                    arms.reverse()  # (each arm first in half of the rounds)
                got = {arm: timed([str(exe), *words], work, env) for arm, exe in arms}
                for arm, dt in got.items():
                    times[name][arm].append(dt)
                ratios[name].append(got["wheel"] / got["editable"])
        print(f"imgpipe start-up, wheel vs editable install, {args.rounds} interleaved rounds "
              f"(others used {others:.2f} CPU before the start)")
        print(f"{'command':<22} {'editable s':>11} {'wheel s':>9}   wheel / editable")
        for name in commands:
            r = ratios[name]
            verdict = "PASS" if statistics.median(r) <= 1.0 or min(r) <= 1.0 <= max(r) else "MISS"
            print(f"{name:<22} {statistics.median(times[name]['editable']):>11.3f} "
                  f"{statistics.median(times[name]['wheel']):>9.3f}   "
                  f"{statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f}) {verdict}")


if __name__ == "__main__":
    main()
