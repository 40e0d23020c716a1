"""A real Slurm cluster on this machine, for tests: munged, slurmctld and one slurmd per node.

Debian's Slurm (22.05) runs several slurmd on one host: each node of slurm.conf is
``NodeHostname=localhost NodeAddr=127.0.0.1`` with a port of its own, and ``slurmd -N
NAME`` plays it. Scheduling, pinning (``-w``), per-node CPU and memory accounting behave
as on separate machines (``SLURMD_NODENAME`` is right); the nodes share the file system
and the process table. Nothing starts by itself (no systemd): ``SlurmCluster.start``
starts munged (its own key and socket), slurmctld and the slurmds in a directory of the
test's, on free ports; ``stop`` stops them by pid. Clients need ``SLURM_CONF``: ``env()``.

Memory is enforced the cgroup-free way (``jobacct_gather/linux`` with ``OverMemoryKill``,
polled every second): a step past its ``--mem`` is killed and srun says "Exceeded job
memory limit". Jobs start at once (``sched_min_interval=0``).

Usage::

    with SlurmCluster(tmp_path / "slurm", nodes=3) as cluster:
        subprocess.run(["sinfo"], env=cluster.env())
        cluster.set_state("node002", "down")
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from sshcluster import free_ports

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "salloc", "srun", "sbatch", "scancel", "scontrol")


def missing_tools() -> list[str]:
    """What is missing here for a SlurmCluster (empty: all there)."""
    missing = [t for t in CLIENTS if shutil.which(t) is None]
    missing += [d for d in DAEMONS if not (shutil.which(d) or os.access(f"/usr/sbin/{d}", os.X_OK))]
    if os.geteuid() != 0:
        missing.append("root (the daemons run as SlurmUser=root)")
    return missing


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmClusterError(RuntimeError):
    """The cluster did not come up (the message holds the daemons' logs)."""


class SlurmCluster:
    def __init__(self, workdir: Path, nodes: int = 3, cpus: int = 2, memory_mb: int = 4000):
        self.dir = Path(workdir)
        self.names = [f"node{i:03d}" for i in range(1, nodes + 1)]
        self.cpus, self.memory_mb = cpus, memory_mb
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.dir / "slurm.conf"

    # ---------------------------------------------------------------- set-up

    def env(self, **extra) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def _write_conf(self) -> None:
        d = self.dir
        ctld_port, *ports = free_ports(1 + len(self.names))
        nodes = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN" for n, p in zip(self.names, ports))
        self.conf.write_text(f"""\
# written by tests/slurmcluster.py
ClusterName=imgpipetest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=1
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmdTimeout=30
MessageTimeout=10
{nodes}
PartitionName=debug Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE State=UP
PartitionName=imaging Nodes={','.join(self.names)} Default=NO MaxTime=INFINITE State=UP
PartitionName=small Nodes={','.join(self.names)} Default=NO MaxNodes=2 MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        d = self.dir
        for sub in ("munge", "state", "log", *(f"spool/{n}" for n in self.names)):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o711)  # munged insists
        self._write_conf()
        subprocess.run([_daemon("mungekey"), "-c", "-f", "-k", str(d / "munge/munge.key")], check=True,
                       capture_output=True)
        self._spawn("munged", [_daemon("munged"), "-F", "--force", f"--key-file={d}/munge/munge.key",
                               f"--socket={d}/munge/munge.socket.2", f"--pid-file={d}/munge/munged.pid",
                               f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/seed"])
        self._wait(lambda: (d / "munge/munge.socket.2").exists(), "munged")
        self._spawn("slurmctld", [_daemon("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for n in self.names:
            self._spawn(n, [_daemon("slurmd"), "-D", "-N", n, "-f", str(self.conf)])
        self._wait(lambda: self.states() and set(self.states().values()) == {"idle"}, "every node idle", 30)
        return self

    def _spawn(self, key: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{key}.out", "w")
        self.procs[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           env=self.env(), start_new_session=True)

    def _wait(self, ready, what: str, timeout: float = 15) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [k for k, p in self.procs.items() if p.poll() is not None]
            if dead:
                break
            if ready():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.dir / "log").glob("*")))
        self.stop()
        raise SlurmClusterError(f"Slurm test cluster: no {what}\n{logs}")

    # ---------------------------------------------------------------- use

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=60, check=check)

    def states(self) -> dict[str, str]:
        """node -> its state as sinfo says (idle, mixed, allocated, down...)."""
        r = self.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T", check=False)
        return dict(line.split()[:2] for line in r.stdout.splitlines() if line.strip())

    def set_state(self, node: str, state: str, reason: str = "test") -> None:
        """scontrol update; 'resume' of a node that is back already is no error."""
        r = self.run("scontrol", "update", f"nodename={node}", f"state={state}", f"reason={reason}", check=False)
        if r.returncode and not (state == "resume" and "Invalid node state" in r.stderr):
            raise RuntimeError(f"scontrol update {node} {state}: {r.stderr.strip()}")

    def jobs(self, completing: bool = False) -> list[str]:
        """Every job Slurm still has queued or running ('ID NAME STATE'); with ``completing``, also
        those Slurm is cleaning up after (a job whose node went down stays COMPLETING a while)."""
        r = self.run("squeue", "-h", "-o", "%i %j %T")
        return [line for line in r.stdout.splitlines()
                if line.strip() and (completing or not line.endswith("COMPLETING"))]

    def steps(self) -> list[str]:
        r = self.run("squeue", "-h", "-s", "-o", "%i %j")
        return [line for line in r.stdout.splitlines() if line.strip()]

    def jobs_ended(self) -> int:
        """How many Slurm jobs have ended so far (Slurm's own job completion log)."""
        path = self.dir / "jobcomp.txt"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def clean(self, timeout: float = 60) -> None:
        """Back to a clean cluster after a test: no job in Slurm, every node up and idle (a node
        resumed is 'idle*', not responding, for a moment: Slurm gives it only once it is 'idle')."""
        self.cancel_all()
        for node, state in self.states().items():
            if not state.startswith("idle"):
                self.set_state(node, "resume")
        deadline = time.time() + timeout
        while set(self.states().values()) != {"idle"}:
            if time.time() > deadline:
                raise AssertionError(f"the Slurm nodes are not all idle again: {self.states()}")
            time.sleep(0.2)

    def cancel_all(self) -> None:
        self.run("scancel", "--user", "root", check=False)
        deadline = time.time() + 20
        while self.jobs(completing=True) and time.time() < deadline:
            time.sleep(0.2)

    # ---------------------------------------------------------------- tear-down

    def stop(self) -> None:
        for key in [*self.names, "slurmctld", "munged"]:
            p = self.procs.pop(key, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
