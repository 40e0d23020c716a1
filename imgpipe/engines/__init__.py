"""The engines that run a plan's jobs: existing tools behind one small interface.

- ``base.Engine``: what an engine does (start a round of jobs on the live nodes, say how
  to stop it, give the round's job-log rows, say how to resume by hand);
- ``loop.run``: the one run loop every engine goes through (lock, what is left to do,
  nodes, rounds, retries, dead nodes, progress, stop, guard);
- ``control``: probing the nodes and stopping what runs there;
- ``gnu_parallel``: GNU parallel's input and command line, for the two engines that run it;
- one module per engine, defining ``ENGINE``: ``parallel`` (GNU parallel), ``make``, ``slurm``.

Adding an engine means adding one module here: ``names()`` finds it.
"""

from __future__ import annotations

import importlib
import os

SUPPORT = ("base", "loop", "control", "gnu_parallel")  # the modules that are no engine
DEFAULT = "parallel"


def names() -> list[str]:
    """The engines there are: every module of this package but the support modules.

    (A listing of the package's folder: ``pkgutil.iter_modules`` imports ``inspect``, 18 ms of
    every imgpipe command's start-up, bench/README.md.)"""
    found = [name[:-3] for folder in __path__ for name in os.listdir(folder)
             if name.endswith(".py") and not name.startswith("_") and name[:-3] not in SUPPORT]
    return sorted(found, key=lambda n: (n != DEFAULT, n))


def load(name: str):
    """The Engine class of engine ``name``."""
    if name not in names():
        raise ValueError(f"no engine {name!r} (engines: {', '.join(names())})")
    return importlib.import_module(f"{__name__}.{name}").ENGINE
