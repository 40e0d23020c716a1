"""A fake cluster for tests: several "hosts" on this machine, one real sshd per loopback port.

Each host name (``node001`` ...) is an alias in a private ssh client config that points to
``127.0.0.1:<port>``, where an sshd of our own listens. The filesystem is shared between
the "hosts", which is fine for tests. Nothing outside ``workdir`` and one short
ControlPath directory under /tmp is written, except ``/run/sshd``, the privilege
separation directory that a root sshd insists on (created if missing, as systemd would).

Usage::

    with SshCluster(tmp_path / "cluster") as cluster:
        subprocess.run(["parallel", "--will-cite", "-S", cluster.sshlogins(), ...],
                       env=cluster.env(), check=True)
        cluster.stop_host("node002")      # now a dead node: ssh to it exits 255

How the remote side gets its PATH
---------------------------------
sshd builds a fresh environment for every session and sets PATH to its compiled-in
default; client-sent variables (``SendEnv``/``AcceptEnv``) cannot override PATH, and
``~/.ssh/environment`` would need a fake HOME, which sshd does not allow (it uses the
passwd entry). So each sshd_config gets ``SetEnv "PATH=..."`` (sshd_config ``SetEnv``
exists since OpenSSH 8.7; it is applied after sshd's own PATH, so it wins).

That alone is not enough when the login shell is bash: Debian's bash sources ``~/.bashrc``
for commands run by sshd (it looks for ``$SSH_CLIENT``), and a ``.bashrc`` without an
"interactive only" guard (root's, on our build machines: pyenv shims, cargo) then
prepends to PATH, so ``python`` resolves to a pyenv shim instead of the venv. bash only
does this when it is a top-level shell (``SHLVL`` unset or 0), so we also
``SetEnv SHLVL=1``; that skips ``~/.bashrc`` (and saves ~0.25 s per login here).
Pass ``source_bashrc=True`` to keep the normal behaviour. Other shells (zsh reads
``~/.zshenv`` unconditionally) are not covered.

The remote PATH is, in order: ``path_prepend`` (default: the directory of the running
Python, i.e. the venv's ``bin``, and the repository's ``bin/``), then the caller's PATH,
then any of /usr/local/bin, /usr/bin, /bin that were missing. ``env()`` gives local
subprocesses the same PATH, so a command resolves the same way locally and "remotely".
Remote commands start in ``$HOME`` (not the caller's cwd): use absolute paths.
Remote commands also get ``SSHCLUSTER_HOST=<name>`` (which fake host am I?) and
``SSHCLUSTER_ID``; ``stop_host`` uses these to find processes that outlived their session.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
REPO_BIN = Path(__file__).resolve().parents[1] / "bin"


class SshClusterError(RuntimeError):
    """The fake cluster could not be started (the message includes the sshd log)."""


def missing_tools() -> list[str]:
    """What is missing on this machine for an SshCluster (empty list: all there)."""
    missing = []
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free right now (bind to port 0, read, close).

    There is a window between closing and sshd binding; ``SshCluster.start`` retries a
    host on a new port if its sshd reports that the address is in use.
    """
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _set_pdeathsig() -> None:
    """In the child before exec: get SIGTERM if the parent dies, so a killed test run
    does not leave listeners behind (Linux only; best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after its "(comm)": state, ppid, pgrp, session, ... (None: gone).
    comm may hold spaces and parentheses: the fields start after its last ")"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _ppid_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = stat_fields(int(entry)) if entry.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> set[int]:
    children = _ppid_map()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] != b"Z"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _quote_setenv(name: str, value: str) -> str:
    if not name.replace("_", "a").isalnum() or any(c in value for c in '"\\\n\r'):
        raise ValueError(f"cannot pass {name}={value!r} through sshd_config SetEnv")
    return f'"{name}={value}"'


class SshCluster:
    """Hosts ``names`` as sshd instances on 127.0.0.1, reachable as ``ssh -F ssh_config NAME``.

    Attributes once constructed: ``names``, ``ssh_config`` (client config path),
    ``ssh_command`` ('ssh -F /path/config', for ``PARALLEL_SSH`` or ``parallel --ssh``),
    ``remote_path`` (the PATH remote commands see), ``ports`` (name -> port, after start).
    """

    def __init__(
        self,
        workdir: Path | str,
        names=("node001", "node002", "node003"),
        *,
        control_master: bool = True,
        control_persist: int = 30,
        path_prepend=None,
        remote_env: dict[str, str] | None = None,
        source_bashrc: bool = False,
        startup_timeout: float = 20.0,
        sshd_limits: bool = False,
    ):
        self.workdir = Path(workdir).absolute()
        self.names = list(names)
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError(f"host names must be distinct and non-empty: {self.names}")
        self.control_master = control_master
        self.control_persist = control_persist
        self.startup_timeout = startup_timeout
        self.sshd_limits = sshd_limits  # True: sshd's own MaxStartups and MaxSessions, as on a real node
        self.user = pwd.getpwuid(os.getuid()).pw_name

        self.ssh_config = self.workdir / "ssh_config"
        self.ssh_command = f"ssh -F {shlex.quote(str(self.ssh_config))}"
        self.client_key = self.workdir / "client_key"
        self.parallel_home = self.workdir / "parallel_home"

        if path_prepend is None:
            path_prepend = [Path(sys.executable).parent]
            if REPO_BIN.is_dir():
                path_prepend.append(REPO_BIN)
        entries = [str(p) for p in path_prepend]
        entries += os.environ.get("PATH", "").split(os.pathsep)
        entries += ["/usr/local/bin", "/usr/bin", "/bin"]
        self.remote_path = os.pathsep.join(dict.fromkeys(e for e in entries if e))

        self.remote_env = {"PATH": self.remote_path}
        for var in ("PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME"):
            if os.environ.get(var):
                self.remote_env[var] = os.environ[var]
        if not source_bashrc:
            self.remote_env["SHLVL"] = "1"
        self.remote_env.update(remote_env or {})
        for k, v in self.remote_env.items():
            _quote_setenv(k, v)  # fail early on values SetEnv cannot carry
        # Every remote process carries these, so stop_host() can find the ones that
        # outlived their ssh session (reparented to init), and a command can tell
        # which fake host it runs on.
        self.cluster_id = os.urandom(6).hex()

        self.ports: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._log_offset: dict[str, int] = {}
        self._control_dir: Path | None = None
        self._started = False

    # ----------------------------------------------------------------- paths
    def host_dir(self, name: str) -> Path:
        return self.workdir / "hosts" / name

    def log_path(self, name: str) -> Path:
        return self.host_dir(name) / "sshd.log"

    def log(self, name: str) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "SshCluster":
        """Generate keys, write configs, start every sshd, wait until each accepts a login."""
        if self._started:
            return self
        missing = missing_tools()
        if missing:
            raise SshClusterError(f"cannot start ssh cluster, missing: {', '.join(missing)}")
        if os.geteuid() == 0:
            # A root sshd checks for its privilege separation dir at start-up.
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.parallel_home.mkdir(exist_ok=True)
        # Unix socket paths are limited to ~107 bytes: keep ControlPath short, in /tmp.
        self._control_dir = Path(tempfile.mkdtemp(prefix="ipcm-", dir="/tmp"))
        self._started = True
        atexit.register(self.stop)
        try:
            self._keygen(self.client_key)
            (self.workdir / "authorized_keys").write_text(
                self.client_key.with_suffix(".pub").read_text()
            )
            for name, port in zip(self.names, free_ports(len(self.names))):
                self.ports[name] = port
                self.host_dir(name).mkdir(parents=True, exist_ok=True)
                self._keygen(self.host_dir(name) / "host_key")
            self._write_client_config()
            for name in self.names:
                self._spawn(name)
            self._wait_ready(self.names, allow_new_port=True)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every sshd (and their sessions), close ControlMasters, remove their sockets."""
        if not self._started:
            return
        for name in self.names:
            self.stop_host(name)
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
        self._started = False
        atexit.unregister(self.stop)

    def stop_host(self, name: str) -> None:
        """Make ``name`` a dead node: kill its sshd, every session it serves and every
        process started through it (also those that outlived their session), then
        close the client's ControlMaster for it. Returns when they are gone.

        Killing only the listener is not enough: established connections (in particular
        a ControlMaster's) live on in per-connection sshd processes, and a remote command
        whose session ended keeps running, reparented to init.
        """
        self._check_name(name)
        proc = self._procs.pop(name, None)
        running = proc is not None and proc.poll() is None
        if running:
            _signal(proc.pid, signal.SIGSTOP)  # no new connections are forked from now on
        # Freeze everything found until no new process appears, then kill it all.
        frozen: set[int] = set()
        while True:
            new = (_descendants(proc.pid) if running else set()) | self._tagged_pids(name)
            new -= frozen
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        if running:  # (an already reaped pid might belong to someone else by now)
            _signal(proc.pid, signal.SIGTERM)
            _signal(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # SIGKILL is asynchronous: return only once they are really gone
        # (orphaned zombies count as gone; init reaps them when it gets to it).
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in frozen) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._close_master(name)

    def drop_connections(self, name: str) -> set[int]:
        """Cut every established connection to ``name``, as a network failure would: kill
        its per-connection sshd processes, but not the listener (new logins still work)
        and not the remote commands (they live on, re-parented, as on a real node).
        Returns the pids of the remote commands that were running."""
        self._check_name(name)
        pid = self.pid(name)
        if pid is None:
            raise SshClusterError(f"{name} is stopped")
        sessions = [p for p in _descendants(pid) if _comm(p).startswith("sshd")]
        commands = set()
        for p in sessions:
            commands |= {c for c in _descendants(p) if not _comm(c).startswith("sshd")}
        for p in sessions:
            _signal(p, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in sessions) and time.monotonic() < deadline:
            time.sleep(0.01)
        return commands

    def start_host(self, name: str) -> None:
        """(Re)start ``name``'s sshd on the same port and wait until it accepts a login."""
        self._check_name(name)
        if not self._started:
            raise SshClusterError("start() the cluster before start_host()")
        if self.is_running(name):
            return
        self._spawn(name)
        self._wait_ready([name], allow_new_port=False)

    def is_running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        """The listener's pid (None if that host is stopped)."""
        return self._procs[name].pid if self.is_running(name) else None

    def host_pids(self, name: str) -> set[int]:
        """Pids of what runs "on" host ``name``: the per-connection sshd processes, the
        remote commands, and processes started through it that outlived their session.
        (The listener itself is ``pid(name)``.)"""
        pid = self.pid(name)
        return (_descendants(pid) if pid else set()) | self._tagged_pids(name)

    def master_pid(self, name: str) -> int | None:
        """Pid of the client-side ControlMaster for ``name`` (None if there is none)."""
        if not self.control_master or self._control_dir is None:
            return None
        r = subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "check", name],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10)
        m = re.search(r"Master running \(pid=(\d+)\)", r.stderr)
        return int(m.group(1)) if r.returncode == 0 and m else None

    def __enter__(self) -> "SshCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ for tests
    def env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` copy for subprocesses: PARALLEL_SSH, PARALLEL_HOME, same PATH
        as the remote side; ``extra`` overrides."""
        env = dict(os.environ)
        env["PATH"] = self.remote_path
        env["PARALLEL_SSH"] = self.ssh_command
        env["PARALLEL_HOME"] = str(self.parallel_home)
        env.update(extra)
        return env

    def sshlogins(self, names=None, jobs: int = 1) -> str:
        """The ``parallel -S`` value, e.g. '1/node001,1/node002'."""
        return ",".join(f"{jobs}/{n}" for n in (names or self.names))

    def ssh(self, name: str, command: str, *, timeout: float = 30, check: bool = False,
            multiplex: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` on host ``name``; returns the CompletedProcess (text output)."""
        argv = ["ssh", "-F", str(self.ssh_config)]
        if not multiplex:
            argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return subprocess.run(argv + [name, "--", command], capture_output=True, text=True,
                              timeout=timeout, check=check, env=self.env(),
                              stdin=subprocess.DEVNULL)

    # -------------------------------------------------------------- helpers
    def _check_name(self, name: str) -> None:
        if name not in self.names:
            raise KeyError(f"no host {name!r} in this cluster ({', '.join(self.names)})")

    @staticmethod
    def _keygen(path: Path) -> None:
        for p in (path, path.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imgpipe-test",
                        "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)

    def _setenv_line(self, name: str) -> str:
        env = {**self.remote_env, "SSHCLUSTER_HOST": name, "SSHCLUSTER_ID": self.cluster_id}
        return "SetEnv " + " ".join(_quote_setenv(k, v) for k, v in env.items())

    def _tagged_pids(self, name: str) -> set[int]:
        """Processes started through ``name``'s sshd, found by their environment."""
        want = {f"SSHCLUSTER_HOST={name}".encode(), f"SSHCLUSTER_ID={self.cluster_id}".encode()}
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if want <= set(env.split(b"\0")):
                found.add(int(entry))
        return found

    def _write_sshd_config(self, name: str) -> Path:
        hdir = self.host_dir(name)
        text = f"""\
# sshd for fake host {name}, written by tests/sshcluster.py
ListenAddress 127.0.0.1:{self.ports[name]}
AddressFamily inet
HostKey {hdir / 'host_key'}
PidFile {hdir / 'sshd.pid'}
AuthorizedKeysFile {self.workdir / 'authorized_keys'}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers {self.user}
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
PermitUserEnvironment no
{self._limits_lines()}
# scp uses the SFTP protocol by default since OpenSSH 9.0.
Subsystem sftp internal-sftp
LogLevel VERBOSE
{self._setenv_line(name)}
"""
        path = hdir / "sshd_config"
        path.write_text(text)
        return path

    def _limits_lines(self) -> str:
        if self.sshd_limits:
            return "# sshd's defaults: MaxStartups 10:30:100, MaxSessions 10 (as on a real node)"
        return ("# parallel may open many sessions at once: the defaults (10 unauthenticated\n"
                "# connections, 10 sessions per multiplexed connection) make ssh fail with 255.\n"
                "MaxStartups 200\nMaxSessions 200")

    def _write_client_config(self) -> None:
        blocks = []
        for name in self.names:
            blocks.append(f"""\
Host {name}
    HostName 127.0.0.1
    Port {self.ports[name]}
""")
        common = f"""\
Host *
    User {self.user}
    IdentityFile {self.client_key}
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    CheckHostIP no
    BatchMode yes
    LogLevel ERROR
    ConnectTimeout 5
    ServerAliveInterval 5
    ServerAliveCountMax 3
"""
        if self.control_master:
            common += f"""\
    ControlMaster auto
    ControlPath {self._control_dir}/%C
    ControlPersist {self.control_persist}
"""
        else:
            common += "    ControlMaster no\n    ControlPath none\n"
        self.ssh_config.write_text("".join(blocks) + common)

    def _spawn(self, name: str) -> None:
        config = self._write_sshd_config(name)
        log = open(self.log_path(name), "ab")
        self._log_offset[name] = log.tell()
        try:
            # -D: stay in the foreground, so the Popen pid *is* the listener;
            # -e: log to stderr (our log file) instead of syslog.
            self._procs[name] = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_set_pdeathsig,
            )
        finally:
            log.close()

    def _close_master(self, name: str) -> None:
        if not self.control_master or self._control_dir is None:
            return
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", name],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=10)

    def _login_argv(self, name: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), name, "true"]

    def _wait_ready(self, names: list[str], *, allow_new_port: bool) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = list(names)
        last_error: dict[str, str] = {}
        retries = {n: 0 for n in names}
        while pending:
            # Listeners that died: retry on a new port if the port was taken meanwhile.
            for name in list(pending):
                proc = self._procs[name]
                if proc.poll() is None:
                    continue
                log = self._log_since_spawn(name)
                if allow_new_port and "Address already in use" in log and retries[name] < 5:
                    retries[name] += 1
                    self.ports[name] = free_ports(1)[0]
                    self._write_client_config()
                    self._spawn(name)
                    continue
                self._fail(name, f"sshd exited with code {proc.returncode}")
            # Log in to all pending hosts at once (this also starts their ControlMasters).
            logins = {}
            for name in pending:
                if not self._listening(name):
                    last_error[name] = f"sshd not listening on port {self.ports[name]} yet"
                    continue
                logins[name] = subprocess.Popen(
                    self._login_argv(name), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for name, login in logins.items():
                try:
                    _, err = login.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    login.kill()
                    _, err = login.communicate()
                if login.returncode == 0:
                    pending.remove(name)
                else:
                    last_error[name] = f"ssh exited {login.returncode}: {err.strip()}"
            if not pending:
                return
            if time.monotonic() > deadline:
                name = pending[0]
                self._fail(name, f"no login within {self.startup_timeout:.0f} s "
                                 f"({last_error.get(name, 'unknown')})")
            time.sleep(0.05)

    def _log_since_spawn(self, name: str) -> str:
        try:
            with open(self.log_path(name), "rb") as f:
                f.seek(self._log_offset.get(name, 0))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _listening(self, name: str) -> bool:
        """sshd logs this line once its socket listens (looked for in this run's part of
        the log only, so a restart does not see the previous run's line)."""
        return f"Server listening on 127.0.0.1 port {self.ports[name]}." in \
            self._log_since_spawn(name)

    def _fail(self, name: str, why: str) -> None:
        log = self.log(name).strip() or "(empty)"
        tail = "\n".join(log.splitlines()[-30:])
        raise SshClusterError(
            f"fake host {name} (127.0.0.1:{self.ports.get(name)}) did not come up: {why}\n"
            f"command: {shlex.join(self._login_argv(name))}\n"
            f"sshd config: {self.host_dir(name) / 'sshd_config'}\n"
            f"sshd log ({self.log_path(name)}):\n{tail}"
        )
