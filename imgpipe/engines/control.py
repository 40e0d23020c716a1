"""Reaching the nodes and stopping what runs there, for every engine.

- ``probe``: which nodes answer ``ssh NODE true`` (all at once, FAN_OUT at a time).
- ``signal_jobs`` / ``stop_jobs_on_nodes``: the wrappers of one plan (their argv carries the
  plan's tag) on every node, through ``pkill``/``pgrep`` there, run by a "shell" (ssh, or
  a Slurm step: ``commands.on_nodes``).
- ``stop_engine``: the one stop procedure (Ctrl-C, SIGTERM, a killed imgpipe, a leftover);
  an engine's ``stop`` calls it with its own shell (and adds what its tool needs).
- ``Guard``: a small process forked by the run loop. It holds the run's lock with it and
  watches a pipe from imgpipe; when the pipe closes without a goodbye (imgpipe was killed,
  even by SIGKILL), it stops the engine and every job with the engine's ``stop``, then
  lets the lock go. So an engine never outlives imgpipe; if the guard was killed too, the
  next run finds the engine from ``run.json`` (``engine_alive``) and stops it first.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from ..commands import on_nodes, ssh_shell
from ..hosts import is_local
from ..joblog import mark_stopped
from ..run_lock import STOPPING

STOP_GRACE = 20.0  # seconds the node-side wrappers get to stop WSClean and clean up


def probe(hosts, ssh: list[str], wrapper=None, timeout: float = 15.0) -> dict[str, str]:
    """host -> why it cannot take jobs, for every host that fails ``ssh host true``, or, with a
    ``wrapper`` (run_dir.NodeWrapper), where it cannot be installed (this machine too): one
    connection a node does both."""
    if wrapper is None:
        results = on_nodes([h for h in hosts if not is_local(h)], "true", ssh_shell(ssh), timeout=timeout)
        return {h: r.reason for h, r in results.items() if not r.ok}
    results = on_nodes(hosts, wrapper.install_script(), ssh_shell(ssh), timeout=timeout,
                       input=wrapper.data.decode())
    out = {}
    for host, r in results.items():
        if not r.ok:
            out[host] = r.reason if r.code in (None, 255) else f"cannot install the job wrapper there: {r.reason}"
    return out


def wrapper_pattern(tag: str) -> str:
    """The ``pkill -f`` regex of a running wrapper: ``perl ... imgpipe-job TAG ID ...``, the
    wrapper's own process and no other.

    - Anchored on perl: the processes that carry a wrapper's command line without being one are
      left alone. The ssh client of a make recipe (``ssh NODE exec perl ... imgpipe-job TAG
      ID ...``) and the recipe's bash relay the wrapper's last lines to its log: where the
      planning machine is also a node, a TERM to them cut the log before its result, and a
      stopped job read "not started". So are srun's clients and the shells around a job.
    - ``[^{]`` keeps it from matching GNU parallel itself (a perl script too), whose command
      template says ``imgpipe-job TAG {id}`` (a TERM would make parallel kill its ssh clients).
    - The brackets keep it from matching the shell that runs pkill.
    """
    return f"^[^ ]*perl .*[i]mgpipe-job {tag} [^{{]"


def signal_jobs(tag: str, hosts, shell, sig: str = "TERM") -> None:
    """Signal every wrapper carrying ``tag`` on every host (the wrapper stops WSClean and cleans up).

    With ``KILL`` the wrappers' children (WSClean, or ``timeout`` and its process group) are
    killed first: a KILLed wrapper cannot stop them, and they would run on, orphaned.
    """
    quoted = shlex.quote(wrapper_pattern(tag))
    if sig == "KILL":
        script = (f"for p in $(pgrep -f {quoted}); do for c in $(pgrep -P $p); do kill -KILL -- -$c $c; done; "
                  "kill -KILL $p; done 2>/dev/null; true")
    else:
        script = f"pkill -{sig} -f {quoted}"
    on_nodes(hosts, script, shell, timeout=30)


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command's name (state, ppid, pgrp, ...); None when
    the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return None if fields[0] == b"Z" else fields


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it is gone or a zombie:
    with the pid, it names one process for good (a pid alone may be reused)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def group_working(pgid: int) -> bool:
    """Whether a process of the process group ``pgid`` other than its leader is alive (not a
    zombie): a stopped make's recipes, their ssh clients still writing their wrappers' last lines."""
    return any((fields := _stat(e.name)) and int(fields[2]) == pgid
               for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) != pgid)


STOP_CONFIRM = 4.0  # seconds a node's stop connection waits for its wrappers to be gone


def stop_jobs_on_nodes(tag: str, hosts, shell, wait: float = STOP_CONFIRM) -> list[str]:
    """TERM every wrapper of ``tag`` on every host and wait there, up to ``wait`` s, until none is
    left: one connection a node signals and confirms. Returns the hosts where some are still running
    (or that could not be reached)."""
    pattern = shlex.quote(wrapper_pattern(tag))
    tries = max(1, int(wait / 0.2))
    script = (f"pkill -TERM -f {pattern}; i=0; while pgrep -f {pattern} > /dev/null; do "
              f"[ $i -ge {tries} ] && exit 3; sleep 0.2; i=$((i + 1)); done; exit 0")
    results = on_nodes(hosts, script, shell, timeout=wait + 30)
    return [h for h, r in results.items() if not r.ok]


def stop_engine(pid: int, alive: Callable[[], bool], hold: int, tag: str, nodes, shell,
                hold_pid: int | None = None) -> None:
    """Stop the engine (process group ``pid``) and every job of the plan ``tag`` on every node.

    1. ``hold`` stops the engine from starting jobs while it keeps its ssh clients, so the
       wrappers' output still reaches logs/ (GNU parallel: SIGHUP; make: SIGSTOP); it goes
       to ``hold_pid`` when that is not the group's leader (GNU parallel inside salloc).
    2. The wrappers get TERM: they stop WSClean (its process group), remove their temp dirs, let
       their claims go and exit. One connection a node signals them and waits until they are gone
       (``stop_jobs_on_nodes``): no second round of connections to ask. While the engine still
       runs, every node is signalled again (a job just starting had no wrapper to signal yet);
       after, only the nodes where wrappers were left. Killing the engine first would not do:
       with ssh multiplexing (ControlMaster) remote jobs outlive their ssh clients, and the
       wrappers would lose their output in the middle of stopping.
    3. After STOP_GRACE, whatever is left gets KILL (the wrappers' children first), then the engine.
    """
    try:
        os.kill(hold_pid or pid, hold)
    except ProcessLookupError:
        pass
    deadline = time.time() + STOP_GRACE
    nodes = list(nodes)
    left = nodes
    while time.time() < deadline:
        running = alive() and hold != signal.SIGSTOP  # (a stopped engine does not exit by itself)
        left = stop_jobs_on_nodes(tag, nodes if running else left, shell,
                                  wait=min(STOP_CONFIRM, max(0.2, deadline - time.time())))
        if not left:  # no wrapper anywhere: the engine ends as its jobs' connections close
            settle = time.time() + 5.0  # (its ssh clients closing: on a busy machine, seconds)
            held = hold == signal.SIGSTOP  # (a stopped engine: its jobs' own processes end, it cannot)
            while (group_working(pid) if held else alive()) and time.time() < settle:
                time.sleep(0.05)
            if held or not alive():
                break
    else:
        left = left or nodes
    if left:
        signal_jobs(tag, left, shell, "KILL")
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def engine_record(pid: int, hold: int, tag: str, nodes, name: str, **more) -> dict:
    """What run.json says of an engine while it runs: enough for anyone to find it and stop it."""
    return {"pid": pid, "start": process_start(pid), "host": socket.gethostname(), "hold": int(hold),
            "tag": tag, "nodes": list(nodes), "name": name, "imgpipe": os.getpid(), **more}


def engine_alive(record: dict | None) -> bool:
    """True when the engine a run.json record names still runs (on this machine, as the same process)."""
    if not record or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    return isinstance(pid, int) and record.get("start") is not None and process_start(pid) == record["start"]


def stop_recorded(record: dict, run_dir: Path) -> None:
    """Stop the engine a run.json record names (left running by an imgpipe that is gone), and its
    jobs; what the stop ends is the stop's doing, not a failure (``joblog.mark_stopped``)."""
    from . import load

    mark_stopped(run_dir, time.time())
    pid = record["pid"]
    load(record["name"]).stop(record, lambda: process_start(pid) == record["start"])


class Guard:
    """Stops the engine and its jobs when imgpipe dies (any signal, SIGKILL included).

    ``start()`` forks it (before any thread runs: the loop probes the nodes after). imgpipe
    tells it each engine it starts (``watch``) and says goodbye at the end (``close``). The
    guard holds the run lock with imgpipe (the same open file), so while it stops a killed
    run's jobs a new run of the plan waits, and the lock's text says so.
    """

    def __init__(self, lock, run_dir: Path) -> None:
        self.lock, self.run_dir = lock, run_dir
        self.pid: int | None = None
        self.fd: int | None = None

    def start(self) -> "Guard":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the guard
            code = 0
            try:
                os.close(w)
                self._watch(r)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(r)
        self.pid, self.fd = pid, w
        return self

    def watch(self, record: dict | None) -> None:
        """The engine now running (its run.json record), or None between rounds."""
        self._send(json.dumps(record) + "\n")

    def close(self) -> None:
        """imgpipe ends as it should: the guard goes, doing nothing."""
        if self.fd is None:
            return
        self._send("bye\n")
        os.close(self.fd)
        self.fd = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def _send(self, text: str) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, text.encode())
            except OSError:  # the guard is gone (killed): the next run's leftover check stands in for it
                pass

    def _watch(self, fd: int) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)  # Ctrl-C is imgpipe's to handle; the pipe decides
        record = None
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                if line == b"bye\n":
                    return
                record = json.loads(line)
        # the pipe closed without a goodbye: imgpipe is gone
        if record and engine_alive(record):
            parent = record.get("imgpipe")
            self.lock.say(f"imgpipe pid {parent} (gone): its guard pid {os.getpid()} is {STOPPING}")
            try:
                print(f"imgpipe: pid {parent} is gone: stopping its engine and jobs", file=sys.stderr, flush=True)
            except OSError:
                pass
            stop_recorded(record, self.run_dir)

