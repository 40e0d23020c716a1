#!/usr/bin/env python3
"""How far a reader goes following a run, and `status`, through imgpipe's code.

    .venv/bin/python bench/code_path.py                    # the working tree against e872fd4~1
    .venv/bin/python bench/code_path.py --base REV         # ... against imgpipe at REV
    .venv/bin/python bench/code_path.py --walk             # ... and each module crossing

What it does
------------
* Arms: imgpipe at --base (``git archive``, the code before issue 22 by default) and the working
  tree. Each arm plans and runs 3 small real WSClean jobs on this machine (one fails: its MS is
  removed after planning) with its own code, then, traced, ``imgpipe status`` of that run (its
  memo removed first), and a second ``imgpipe run`` of the same jobs file (the failed job runs
  again and fails again).
* The trace (``sys.setprofile``, the main thread) keeps the first call of each imgpipe function:
  the order in which a reader meets the code, each function read once, stepping over the
  standard library. It counts, on that walk:
    modules   the imgpipe modules entered;
    climbs    returns from a module to the one that called it (the reader climbs back up);
    returns   entries into a module already left once (the reader goes back to a module).
* Not a timing: the figures are the same on a busy machine.

The issue (22) measured status_rows before it: 7 modules, 5 climbs back up, 9 returns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "e872fd4~1"  # the last commit before issue 22's work

TRACE = r"""
import json, os, sys
from pathlib import Path

seen, stack, walk = set(), [], []
skip = 0
what, entry, args = sys.argv[1], sys.argv[2], sys.argv[3:]
active = 0  # (with an entry function: the depth inside it; the walk is kept only there)

def mod_of(frame):
    name = frame.f_globals.get("__name__") or ""
    return name if name == "imgpipe" or name.startswith("imgpipe.") else None

def current():
    for m, counted in reversed(stack):
        if counted:
            return m
    return None

def prof(frame, event, arg):
    global skip, active
    if entry != "-":
        if event == "call" and (active or frame.f_code.co_name == entry and mod_of(frame)):
            active += 1
        elif event == "return" and active:
            active -= 1
            if not active:
                stack.clear()
                return
        if not active and event == "call":
            return
    if event == "call":
        if skip:
            skip += 1
            return
        mod = mod_of(frame)
        if mod is None:
            stack.append((None, False))
            return
        key = (frame.f_code.co_filename, frame.f_code.co_firstlineno, frame.f_code.co_name)
        if key in seen:
            skip = 1
            return
        seen.add(key)
        before = current()
        stack.append((mod, True))
        if mod != before:
            walk.append(("call", before, mod))
    elif event == "return":
        if skip:
            skip -= 1
            return
        if not stack:
            return
        mod, counted = stack.pop()
        after = current()
        if counted and after is not None and after != mod:
            walk.append(("return", mod, after))

from imgpipe import cli
sys.setprofile(prof)
try:
    code = cli.main(args)
except SystemExit as e:
    code = e.code
finally:
    sys.setprofile(None)
left, entered, climbs, returns, funcs = set(), [], 0, 0, len(seen)
for kind, src, dst in walk:
    if src is not None:
        left.add(src)
    if dst not in entered:
        entered.append(dst)
    elif dst in left:
        returns += 1
    climbs += kind == "return"
print(json.dumps({"what": what, "code": code, "modules": len(entered), "climbs": climbs, "returns": returns,
                  "functions": funcs, "order": entered, "walk": walk}))
"""


def arm_tree(rev: str | None, work: str) -> str:
    """A directory holding imgpipe/ and bin/ of ``rev`` (None: the working tree)."""
    if rev is None:
        return REPO
    out = os.path.join(work, "base")
    os.makedirs(out)
    archive = subprocess.run(["git", "archive", rev, "imgpipe", "bin", "Makefile.in"], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def run(arm: str, work: str, *args, trace: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": arm, "PARALLEL_HOME": os.path.join(work, "parallel-home"),
           "IMGPIPE_PROGRESS_INTERVAL": "30", "XDG_CACHE_HOME": os.path.join(work, "cache")}
    env.pop("IMGPIPE_SSH", None)
    argv = [sys.executable, "-c", TRACE, *trace.split(":"), *args] if trace else [sys.executable, "-m", "imgpipe.cli", *args]
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)


WALKS = ("status:-", "status:status_rows", "run:-", "run:run")  # (command: the function followed, - the whole)


def measure(arm: str, work: str) -> list[dict]:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from msmaker import make_ms

    ms = [make_ms(os.path.join(work, f"SW01_T00{i}.MS"), nant=6, ntimes=4, nchan=4) for i in range(3)]
    cfg = os.path.join(work, "img.toml")
    with open(cfg, "w") as f:
        f.write(f"[worker]\nnodes = 'localhost'\nmax_concurrent = 2\nretries = 0\n[wsclean]\nname = 'img'\n"
                f"out-dir = '{work}/images/$ms_basename$'\nsize = '64 64'\nscale = '5arcmin'\nniter = 10\n"
                "data-column = 'DATA'\nno-update-model-required = true\n")
    jobs = os.path.join(work, "run", "jobs.txt")
    r = run(arm, work, "plan", cfg, *ms, "--jobs-file", jobs)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(ms[1])
    r = run(arm, work, "run", jobs)
    assert r.returncode == 1, r.stderr
    for name in os.listdir(os.path.dirname(jobs)):
        if name.startswith("status-memo"):
            os.remove(os.path.join(os.path.dirname(jobs), name))
    out = []
    for what in WALKS:
        args = ["status", os.path.dirname(jobs)] if what.startswith("status") else ["run", jobs]
        r = run(arm, work, *args, trace=what)
        assert r.returncode == 0, r.stderr
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=BASE, help=f"the commit to compare with (default {BASE})")
    ap.add_argument("--walk", action="store_true", help="also print each walk's module crossings, most frequent first")
    args = ap.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="imgpipe-code-path-") as tmp:
        for name, rev in (("base", args.base), ("tree", None)):
            work = os.path.join(tmp, name)
            os.makedirs(work)
            rows[name] = measure(arm_tree(rev, work), work)
    print(f"following imgpipe's code (first call of each function, main thread); base = {args.base}, "
          f"tree = the working tree at {head}")
    print(f"{'followed':26} {'':6} {'modules':>8} {'climbs':>7} {'returns':>8} {'functions':>10}")
    for i, what in enumerate(WALKS):
        shown = what.replace(":-", " (the command)").replace(":", ": ")
        for name in ("base", "tree"):
            r = rows[name][i]
            print(f"{shown:26} {name:6} {r['modules']:>8} {r['climbs']:>7} {r['returns']:>8} {r['functions']:>10}")
    for i, what in enumerate(WALKS):
        for name in ("base", "tree"):
            print(f"{what} {name}: {' -> '.join(m.replace('imgpipe.', '') for m in rows[name][i]['order'])}")
            if args.walk:
                crossings = Counter(f"{kind:6} {(a or '').replace('imgpipe.', '')} -> {b.replace('imgpipe.', '')}"
                                    for kind, a, b in rows[name][i]["walk"])
                for text, n in crossings.most_common():
                    print(f"    {n:3} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
