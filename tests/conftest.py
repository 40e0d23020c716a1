"""Shared fixtures: real Measurement Sets, config files, and the imgpipe CLI.

The MSs are real casacore tables made by ``msmaker`` (no mocks); ``run_cli``
runs the real ``imgpipe`` entry point in-process, ``run_imgpipe`` as a
separate process, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from msmaker import make_ms
from sshcluster import SshCluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def own_cache_home(tmp_path_factory):
    """imgpipe's caches (SPECTRAL_WINDOW channels, the node wrapper, GNU parallel's home) in
    the session's tmp, not in the user's ~/.cache: a test session starts from no cache and
    leaves nothing in the user's. The ssh "nodes" get the same XDG_CACHE_HOME (sshcluster
    passes it on). A test that needs a cache of its own sets XDG_CACHE_HOME itself."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture
def own_cluster(tmp_path):
    """Two ssh "nodes" (node001, node002) of this test's own, for tests that stop or cut one."""
    with SshCluster(tmp_path / "cluster", names=("node001", "node002")) as c:
        yield c


@pytest.fixture(scope="session")
def ms_cache(tmp_path_factory):
    """Made-once MSs, copied per test (a copy is ~5 ms, making one ~60 ms)."""
    root = tmp_path_factory.mktemp("ms-cache")
    cache: dict[tuple, Path] = {}

    def get(**kwargs) -> Path:
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in cache:
            cache[key] = Path(make_ms(str(root / f"ms{len(cache)}.MS"), **kwargs))
        return cache[key]

    return get


@pytest.fixture
def ms_factory(tmp_path, ms_cache):
    """ms_factory('SW01.MS', nchan=16, corrected_data=True) -> absolute Path of a real MS."""

    def make(name: str, *, where: Path | None = None, **kwargs) -> Path:
        dest = (where or tmp_path) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ms_cache(**kwargs), dest)
        return dest

    return make


@pytest.fixture
def write_config(tmp_path):
    """write_config(text, name='img.toml') -> Path; text is dedented TOML."""

    def write(text: str, name: str = "img.toml", where: Path | None = None) -> Path:
        path = (where or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def run_cli(capsys, monkeypatch, tmp_path):
    """Run ``imgpipe ARGS`` in-process (cwd = tmp_path unless given); returns code, out, err."""
    from imgpipe.cli import main

    def run(*args, cwd: Path | None = None) -> CliResult:
        monkeypatch.chdir(cwd or tmp_path)
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_imgpipe(tmp_path):
    """Run the installed ``imgpipe`` as a separate process, as a user would."""

    def run(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "imgpipe.cli", *[str(a) for a in args]],
            cwd=cwd or tmp_path,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def needs(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A real Slurm of this test module's own (tests/slurmcluster.py): munged, slurmctld, three slurmd."""
    from slurmcluster import SlurmCluster

    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def clean_cluster(slurm):
    """The test leaves Slurm as it found it: no job, every node up and idle (a module using the
    cluster asks for it for every test: ``pytest.mark.usefixtures("clean_cluster")``)."""
    yield
    slurm.clean()
