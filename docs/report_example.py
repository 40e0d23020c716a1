"""Make docs/report-example.png: a real run's `imgpipe report`, rendered by headless Chromium.

    python docs/report_example.py [--out docs/report-example.png] [--keep DIR]

What it runs, for real, on this machine:

1. three "nodes" node001..node003, each an sshd of its own on a loopback port
   (tests/sshcluster.py; needs openssh-server), the data of each under /net/<node>/;
2. 10 small MSs (tests/msmaker.py; different lengths, so the jobs take different
   times), 4 on node001, 4 on node002, 2 on node003;
3. `imgpipe plan` with the jobs pinned to the node holding their data
   (run_on_file_host), 2 jobs at a time per node, WSClean 256x256 px, 4 output
   channels (so each job has an MFS image);
4. then, as happens in a night: one MS is deleted before it is imaged (its job fails
   in WSClean) and node003 goes down (its 2 jobs cannot start);
5. `imgpipe run`, `imgpipe report`, and a Chromium screenshot of report.html,
   shrunk to a small palette PNG.

Needs: wsclean, parallel, sshd (openssh-server), chromium, and astropy + matplotlib
(pip install 'imgpipe[report]') in the Python running it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from msmaker import make_ms  # noqa: E402
from sshcluster import SshCluster  # noqa: E402

NODES = ("node001", "node002", "node003")
LAYOUT = {"node001": (1, 2, 3, 4), "node002": (5, 6, 7, 8), "node003": (9, 10)}
NTIMES = {1: 30, 2: 10, 3: 20, 4: 40, 5: 20, 6: 50, 7: 10, 8: 30, 9: 20, 10: 20}
BROKEN = 6  # its MS disappears after planning: WSClean fails
WIDTH, HEIGHT = 1280, 2060  # the browser window (CSS px)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("report_example: chromium is not installed (Debian: apt-get install chromium)")


def screenshot(page: Path, png: Path, work: Path, width: int = WIDTH, height: int = HEIGHT) -> None:
    """Headless Chromium: render page (no network) and save a width x height screenshot."""
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={work / 'chromium-profile'}", f"--screenshot={png}",
            f"--window-size={width},{height}", page.resolve().as_uri()]
    subprocess.run(argv, check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


def shrink(src: Path, dest: Path, width: int = 1000, colours: int = 128) -> None:
    """Resize to `width` px wide and quantize to a palette: a small PNG for the README."""
    from PIL import Image  # comes with matplotlib

    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img = img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(dest, optimize=True)


def imgpipe(*args, cwd: Path, env: dict, check: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if check is not None and proc.returncode != check:
        sys.exit(f"report_example: imgpipe {args[0]} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "report-example.png"))
    ap.add_argument("--keep", metavar="DIR", help="make the run in DIR and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="imgpipe-report-example-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with SshCluster(work / "cluster", names=NODES) as cluster:
            for node, numbers in LAYOUT.items():
                (work / "net" / node / "data").mkdir(parents=True)
                for i in numbers:
                    make_ms(str(work / "net" / node / "data" / f"SW01_T{i:03d}.MS"), ntimes=NTIMES[i],
                            corrected_data=True, seed=i)
            config = work / "img.toml"
            config.write_text(textwrap.dedent(f"""\
                [worker]
                nodes = 'node[001-003]'
                max_concurrent = 2
                ssh = '{cluster.ssh_command}'
                run_on_file_host = true
                run_on_file_host_pattern = '/net/(node\\d{{3}})/'

                [wsclean]
                name = 'img'
                out-dir = '{work}/images/$ms_basename$'
                size = '256 256'
                scale = '3arcmin'
                niter = 300
                auto-threshold = 3
                weight = 'briggs 0'
                channels-out = 'every 4'
                no-update-model-required = true
                """))
            env = cluster.env(PARALLEL_HOME=str(work / "parallel-home"), IMGPIPE_PROGRESS_INTERVAL="5")
            env.pop("IMGPIPE_SSH", None)
            mss = sorted(str(p) for p in (work / "net").glob("node*/data/*.MS"))
            plan = json.loads(imgpipe("plan", config, *mss, "--json", cwd=work, env=env).stdout)
            jobs = Path(plan["jobs_file"])  # imgpipe-runs/img-<digest>/jobs.txt
            shutil.rmtree(work / "net" / "node002" / "data" / f"SW01_T{BROKEN:03d}.MS")
            cluster.stop_host("node003")
            imgpipe("run", jobs, cwd=work, env=env, check=1)
            page = Path(imgpipe("report", cwd=work, env=env).stdout.strip())  # the latest run here
        raw = work / "screenshot.png"
        screenshot(page, raw, work)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shrink(raw, out)
        print(f"{out} ({out.stat().st_size // 1024} KB) from {page}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
