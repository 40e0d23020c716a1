"""The commands imgpipe runs itself (not the jobs): node probes and stops over ssh,
``wsclean -dry-run``, the engines' own tools. One way to run them, one shape of failure.

``run(argv)`` never raises for a command that fails: it returns a ``Result`` (exit code,
stdout, stderr, the host it ran for). ``Result.check()`` turns a failure into
``CommandFailed``, which carries the argv, the exit code, the host, stdout and stderr,
and says in one line what went wrong, as plumbum's ``ProcessExecutionError`` does.
(plumbum itself is not used: importing it costs ~150 ms at every start, as it pulls in
urllib and http.client, for what these forty lines do.)

``on_node(host, script, ssh)`` is the argv that runs a shell script on a node: ``sh -c``
here, ssh elsewhere, with option parsing ended before the host name. ``on_nodes`` runs one
on many nodes at once, through any such "shell" (ssh, or a Slurm step).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from .errors import ImgpipeError
from .hosts import is_local

# ssh connections opened at once: sshd's default MaxStartups (10:30:100) starts dropping
# unauthenticated connections beyond 10, on a real cluster as on the test one
FAN_OUT = 8
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    code: int | None  # None: it could not be started, or did not end in time
    stdout: str = ""
    stderr: str = ""
    host: str | None = None
    error: str | None = None  # why there is no exit code

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def reason(self) -> str:
        """One line: the last line of stderr, else why it did not run, else the exit status."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
        if self.error:
            return self.error
        return f"exit status {self.code}"

    def check(self, what: str | None = None, hint: str | None = None) -> "Result":
        if not self.ok:
            raise CommandFailed(self, what=what, hint=hint)
        return self


class CommandFailed(ImgpipeError):
    """A command imgpipe ran failed: argv, exit code, host, stdout and stderr, and one line saying so."""

    def __init__(self, result: Result, *, what: str | None = None, hint: str | None = None):
        self.result = result
        self.argv, self.code, self.host = result.argv, result.code, result.host
        self.stdout, self.stderr = result.stdout, result.stderr
        where = f" on {result.host}" if result.host else ""
        status = f" (exit status {result.code})" if result.code is not None else ""
        super().__init__(f"{what or result.argv[0]} failed{where}{status}: {result.reason}", hint=hint)


def run(argv, *, host: str | None = None, timeout: float | None = None, input: str | None = None,
        env: dict | None = None, cwd=None) -> Result:
    """Run ``argv`` to its end (or ``timeout`` seconds), capturing its output as text."""
    argv = tuple(str(a) for a in argv)
    try:
        proc = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return Result(argv, None, text(e.stdout), text(e.stderr), host, f"no answer within {timeout:g} s")
    except OSError as e:
        return Result(argv, None, "", "", host, f"cannot run {argv[0]}: {e.strerror or e}")
    return Result(argv, proc.returncode, proc.stdout, proc.stderr, host)


def on_node(host: str, script: str, ssh: list[str]) -> list[str]:
    """The argv running the shell ``script`` on ``host``: here with ``sh -c``, elsewhere over ssh.

    ``--`` ends ssh's options: a host name is never read as one.
    """
    if is_local(host):
        return ["sh", "-c", script]
    return [*ssh, *SSH_OPTIONS, "--", host, script]


def ssh_shell(ssh: list[str]):
    """A shell on the nodes through ssh: ``shell(host, script) -> argv``."""
    return lambda host, script: on_node(host, script, ssh)


def on_nodes(hosts, script: str, shell, timeout: float = 30.0, input: str | None = None) -> dict[str, Result]:
    """Run ``script`` on every host at once through ``shell(host, script) -> argv`` (at most
    FAN_OUT connections opening together), ``input`` on its stdin."""
    from concurrent.futures import ThreadPoolExecutor  # (it imports logging: only when needed)

    hosts = list(dict.fromkeys(hosts))
    if not hosts:
        return {}

    def one(host: str) -> tuple[str, Result]:
        return host, run(shell(host, script), host=host, timeout=timeout, input=input)

    with ThreadPoolExecutor(max_workers=min(FAN_OUT, len(hosts))) as pool:
        return dict(pool.map(one, hosts))
