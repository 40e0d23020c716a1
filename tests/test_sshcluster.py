"""The fake ssh cluster (tests/sshcluster.py) really gives us several ssh hosts."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import cmdline
from sshcluster import SshCluster, SshClusterError, _alive, missing_tools

_missing = missing_tools() + ([] if shutil.which("parallel") else ["parallel"])
pytestmark = pytest.mark.skipif(
    bool(_missing), reason=f"ssh cluster tests need: {', '.join(_missing)}"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three hosts shared by the non-destructive tests of this module."""
    with SshCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def run(argv, env, **kw):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


def read_joblog(path: Path) -> list[dict[str, str]]:
    header, *rows = path.read_text().splitlines()
    keys = header.split("\t")
    return [dict(zip(keys, (f.strip() for f in row.split("\t")))) for row in rows]


def parallel(cluster, joblog, sshlogins, command, args, *extra):
    return run(["parallel", "--will-cite", "--ssh", cluster.ssh_command, "-S", sshlogins,
                "--joblog", str(joblog), *extra, command, ":::", *args], cluster.env())


def test_each_host_answers_on_its_own_port(cluster):
    ports = set()
    for name in cluster.names:
        r = cluster.ssh(name, "echo $SSHCLUSTER_HOST $SSH_CONNECTION")
        assert r.returncode == 0, r.stderr
        host, client_ip, _, server_ip, server_port = r.stdout.split()
        assert host == name
        assert (client_ip, server_ip) == ("127.0.0.1", "127.0.0.1")
        assert int(server_port) == cluster.ports[name]
        ports.add(server_port)
    assert len(ports) == len(cluster.names)


def test_plain_ssh_command_line_works(cluster):
    """What imgpipe will run: ssh -F CONFIG host -- command, no helper in between."""
    r = run(["ssh", "-F", str(cluster.ssh_config), "node003", "--", "exit 7"], cluster.env())
    assert r.returncode == 7, r.stderr


def test_remote_side_sees_callers_path_and_python(cluster):
    r = cluster.ssh("node001", 'echo "$PATH"; command -v python; '
                               'python -c "import sys; print(sys.prefix)"')
    assert r.returncode == 0, r.stderr
    path, python, prefix = r.stdout.splitlines()
    assert path == cluster.remote_path == cluster.env()["PATH"]
    assert Path(python) == Path(sys.executable).parent / "python"
    assert prefix == sys.prefix
    assert "/usr/bin" in path.split(":")


def test_remote_has_perl_for_parallel(cluster):
    r = cluster.ssh("node002", "perl -e 'print 6*7'")
    assert (r.returncode, r.stdout) == (0, "42"), r.stderr


@pytest.mark.parametrize("via", ["--ssh", "PARALLEL_SSH"])
def test_parallel_spreads_jobs_over_hosts(cluster, tmp_path, via):
    joblog = tmp_path / "joblog"
    argv = ["parallel", "--will-cite", "-S", "1/node001,1/node002", "--joblog", str(joblog),
            "echo {} $SSH_CONNECTION", ":::", "a", "b", "c", "d"]
    if via == "--ssh":
        argv[2:2] = ["--ssh", cluster.ssh_command]
    r = run(argv, cluster.env())
    assert r.returncode == 0, r.stderr
    jobs = read_joblog(joblog)
    assert sorted(j["Host"] for j in jobs) == ["node001", "node001", "node002", "node002"]
    assert all(j["Exitval"] == "0" for j in jobs)
    ports = {line.split()[0]: int(line.split()[-1]) for line in r.stdout.splitlines()}
    assert set(ports) == {"a", "b", "c", "d"}
    for j in jobs:  # each job ran on the sshd of the host the joblog names
        assert ports[j["Command"].split()[1]] == cluster.ports[j["Host"]]


def test_many_concurrent_sessions_on_one_host(cluster, tmp_path):
    """sshd's defaults (MaxSessions 10, MaxStartups 10) would fail some of these with 255."""
    joblog = tmp_path / "joblog"
    r = parallel(cluster, joblog, "25/node003", "sleep 0.3; echo {}",
                 [str(i) for i in range(50)], "-j25")
    assert r.returncode == 0, r.stderr
    assert [j["Exitval"] for j in read_joblog(joblog)] == ["0"] * 50


def test_stop_host_makes_a_dead_node_and_start_host_revives_it(own_cluster, tmp_path):
    c = own_cluster
    port = c.ports["node002"]
    c.stop_host("node002")
    assert not c.is_running("node002")

    r = c.ssh("node002", "true")
    assert r.returncode == 255
    assert "Connection refused" in r.stderr

    joblog = tmp_path / "joblog"
    r = parallel(c, joblog, "1/node002", "echo {}", ["a", "b"])
    assert r.returncode != 0
    assert [(j["Host"], j["Exitval"]) for j in read_joblog(joblog)] == [("node002", "255")] * 2

    assert c.ssh("node001", "true").returncode == 0  # the other host is unaffected

    c.start_host("node002")
    assert c.ports["node002"] == port
    r = c.ssh("node002", "echo $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) == port
    r = parallel(c, tmp_path / "joblog2", "1/node002", "echo {}", ["a", "b"])
    assert r.returncode == 0, r.stderr


def test_stop_host_kills_running_jobs_and_multiplexed_sessions(own_cluster):
    """A node dying mid-job: the job's ssh ends with 255, even through a ControlMaster."""
    c = own_cluster
    assert c.master_pid("node001")  # start() left a ControlMaster behind
    with remote_sleep(c, "node001") as job:
        sessions = c.host_pids("node001")
        c.stop_host("node001")
        assert job.wait(timeout=10) == 255
        assert not any(_alive(p) for p in sessions)
        assert c.master_pid("node001") is None


def test_drop_connections_cuts_the_session_but_the_node_stays_up(own_cluster):
    """A network drop: ssh ends with 255, the remote command lives on, a new login works."""
    c = own_cluster
    with remote_sleep(c, "node001") as job:
        left = c.drop_connections("node001")
        assert job.wait(timeout=10) == 255
        assert any(b"sleep" in cmdline(p) for p in left)
        assert all(_alive(p) for p in left)  # nothing told the remote command
        assert c.ssh("node001", "echo back").stdout.strip() == "back"
    c.stop_host("node001")  # also ends the orphaned sleep


def test_stop_removes_every_process_and_socket(tmp_path):
    c = SshCluster(tmp_path / "cluster", names=("node001", "node002")).start()
    # A remote job that outlives its ssh session (reparented to init on the "node").
    r = c.ssh("node002", "nohup sleep 60 >/dev/null 2>&1 </dev/null & echo $!")
    assert r.returncode == 0, r.stderr
    orphan = int(r.stdout)
    assert _alive(orphan)
    pids = {c.pid(n) for n in c.names} | {c.master_pid(n) for n in c.names} | {orphan}
    for n in c.names:
        pids |= c.host_pids(n)
    assert None not in pids and len(pids) >= 5
    control_dir = c._control_dir
    c.stop()
    assert not any(_alive(p) for p in pids), [p for p in pids if _alive(p)]
    assert not control_dir.exists()
    assert all(c.pid(n) is None for n in c.names)
    c.stop()  # idempotent


def test_start_failure_reports_the_sshd_log(tmp_path):
    class Broken(SshCluster):
        def _write_sshd_config(self, name):
            path = super()._write_sshd_config(name)
            path.write_text(path.read_text() + "NoSuchSshdOption yes\n")
            return path

    c = Broken(tmp_path / "cluster", names=("node001",), startup_timeout=5)
    with pytest.raises(SshClusterError) as err:
        c.start()
    assert "node001" in str(err.value)
    assert "NoSuchSshdOption" in str(err.value)  # the log line sshd wrote
    assert c.pid("node001") is None


@contextlib.contextmanager
def remote_sleep(c, host: str):
    """``ssh HOST sleep 60`` (the Popen), once the sleep runs on the host; killed at the end."""
    job = subprocess.Popen(["ssh", "-F", str(c.ssh_config), host, "sleep 60"], env=c.env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not any(b"sleep" in cmdline(p) for p in c.host_pids(host)):
            assert time.monotonic() < deadline, "remote sleep never started"
            time.sleep(0.05)
        yield job
    finally:
        job.kill()
        job.communicate()
