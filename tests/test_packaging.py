"""imgpipe as a user installs it: a wheel, not editable, in a fresh venv outside the source tree.

An editable install reads the source tree, so it hid a wheel that could not start (the
``imgpipe.engines`` subpackage was left out). Here the wheel is built (or taken from
$IMGPIPE_WHEEL, which .ci/run builds with ``python -m build``), installed with its report
extra into a venv of its own, and run from a directory outside the tree with a PATH that
holds neither the tree's bin/ nor its .venv: the node wrapper, Makefile.in and the Slurm
helpers must be found where the wheel put them. Each engine that can run here runs real
WSClean jobs from that install.

Also checked here, statically: every module imgpipe imports is the standard library's or
declared in pyproject.toml (in the extra of the feature that needs it), and the code runs on
the oldest Python that ``requires-python`` claims (vermin).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from sshcluster import SshCluster, missing_tools

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "imgpipe"
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # no .venv/bin, no tree bin/: only what the system has
FAST = {"name": "'img'", "size": "'64 64'", "scale": "'5arcmin'", "niter": "10", "data-column": "'DATA'",
        "no-update-model-required": "true"}


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", "-q", *args],
                   check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel: $IMGPIPE_WHEEL (.ci/run builds it), else built here as .ci/run does, with
    ``python -m build`` (an sdist, then the wheel from it) in a copy of the files git knows:
    what a fresh clone holds. (In the tree itself, the editable install's imgpipe.egg-info and
    a stale build/ fill in what the package list forgets.)"""
    given = os.environ.get("IMGPIPE_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    clone = out / "clone"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(clone)], check=True,
                   capture_output=True, text=True)
    (found,) = out.glob("imgpipe-*.whl")
    return found


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """The ``imgpipe`` command of a fresh venv (outside the tree) holding the wheel and its report extra."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(venv / "bin" / "python", "install", f"{wheel}[report]")
    return venv / "bin" / "imgpipe"


def plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "IMGPIPE_SSH")}
    env.update(PATH=PLAIN_PATH, IMGPIPE_PROGRESS_INTERVAL="0.5", **extra)
    return env


def run_installed(imgpipe: Path, cwd: Path, *args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(imgpipe), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def write_config(path: Path, worker: dict, out: Path) -> Path:
    wsclean = {**FAST, "out-dir": json.dumps(f"{out}/$ms_basename$")}
    path.write_text("[worker]\n" + "".join(f"{k} = {v}\n" for k, v in worker.items())
                    + "[wsclean]\n" + "".join(f"{k} = {v}\n" for k, v in wsclean.items()), encoding="utf-8")
    return path


def assert_imaged(r: subprocess.CompletedProcess, out: Path, ms: list[Path]) -> None:
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr
    for m in ms:
        assert (out / m.name / "img-image.fits").is_file(), (m, r.stderr[-3000:])
        assert (out / m.name / "img.imgpipe.json").is_file(), m


# ---------------------------------------------------------------- what the wheel holds

def test_the_wheel_holds_every_subpackage_the_node_wrapper_and_the_makefile_template(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    source = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")}
    assert source <= set(names), sorted(source - set(names))
    scripts = {n.rsplit("/", 1)[1] for n in names if ".data/scripts/" in n}
    assert scripts == {p.name for p in (REPO / "bin").iterdir()}, scripts
    assert any(n.endswith(".data/data/share/imgpipe/Makefile.in") for n in names), names


# ---------------------------------------------------------------- a real job from the install, each engine

@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    with SshCluster(tmp_path_factory.mktemp("wheel-nodes"), names=("node001", "node002"), path_prepend=[],
                    remote_env={"PATH": PLAIN_PATH}) as c:
        yield c


@pytest.mark.skipif(bool(missing_tools()) or shutil.which("wsclean") is None or shutil.which("make") is None,
                    reason=f"needs sshd, ssh, parallel, make and wsclean (missing: {missing_tools()})")
@pytest.mark.parametrize("engine", ["parallel", "make"])
def test_the_installed_imgpipe_images_on_ssh_nodes(installed, ssh_nodes, engine, tmp_path, ms_factory):
    work = tmp_path / "work"  # (outside the source tree, as a user's directory is)
    ms = [ms_factory(f"obs{i}.MS", where=work / "data") for i in range(3)]
    cfg = write_config(work / "img.toml", {"nodes": "'node001,node002'", "max_concurrent": "1",
                                           "ssh": json.dumps(ssh_nodes.ssh_command)}, work / "images")
    env = plain_env(PARALLEL_HOME=str(tmp_path / "parallel-home"))
    r = run_installed(installed, work, "image", "--engine", engine, cfg, *ms, env=env)
    assert_imaged(r, work / "images", ms)
    rdir = next((work / "imgpipe-runs").iterdir())
    wrapper = (rdir / "imgpipe-job").read_bytes()
    assert wrapper == (installed.parent / "imgpipe-job").read_bytes()  # the wheel's copy, not the tree's
    r = run_installed(installed, work, "status", env=env)
    assert r.returncode == 0 and "total: 3/3 done" in r.stdout, (r.stdout, r.stderr)
    r = run_installed(installed, work, "report", env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (rdir / "report.html").is_file()


def test_the_installed_imgpipe_images_through_slurm(installed, tmp_path, ms_factory):
    from slurmcluster import SlurmCluster, missing_tools as slurm_missing

    if slurm_missing() or shutil.which("wsclean") is None:
        pytest.skip(f"needs Slurm and wsclean: {', '.join(slurm_missing())}")
    work = tmp_path / "work"
    ms = [ms_factory(f"obs{i}.MS", where=work / "data") for i in range(3)]
    cfg = write_config(work / "img.toml", {"nodes": "'slurm'", "slurm_nodes": "2", "max_concurrent": "2"},
                       work / "images")
    with SlurmCluster(tmp_path / "slurm") as slurm:
        env = plain_env(SLURM_CONF=str(slurm.conf), PARALLEL_HOME=str(tmp_path / "parallel-home"))
        r = run_installed(installed, work, cfg, *ms, env=env)
        assert_imaged(r, work / "images", ms)
        assert not slurm.jobs(), slurm.jobs()


# ---------------------------------------------------------------- what pyproject.toml claims

def _imports(path: Path) -> set[str]:
    """The top-level names of the absolute imports of one module (those inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "find_spec" and node.args
              and isinstance(node.args[0], ast.Constant)):
            out.add(str(node.args[0].value).split(".")[0])
    return out - {"imgpipe", "__future__"}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


# the extra each module's third-party imports belong to (None: the core dependencies)
EXTRA_OF = {"report": "report", "quality": "report"}  # (the quality gate measures images with the same libraries)
# imports that are allowed only as a fallback of the standard library (tomli: tomllib before 3.11)
FALLBACKS = {"tomli": "tomllib"}


def test_every_module_imgpipe_imports_is_declared_in_the_extra_of_its_feature():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {None: {_requirement_name(r) for r in project["dependencies"]}}
    for extra, reqs in project["optional-dependencies"].items():
        declared[extra] = {_requirement_name(r) for r in reqs}
    dists = metadata.packages_distributions()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        extra = EXTRA_OF.get(path.stem)
        allowed = declared[None] | (declared[extra] if extra else set())
        for name in sorted(_imports(path)):
            if name in sys.stdlib_module_names:
                continue
            if name in FALLBACKS:  # (not installed on a newer Python: its requirement has a marker)
                assert FALLBACKS[name] in sys.stdlib_module_names and name in declared[None], name
                continue
            owners = {d.lower().replace("_", "-") for d in dists.get(name, [])}
            if not owners:
                wrong.append(f"{path.relative_to(REPO)} imports {name}, which no installed distribution provides")
            elif not owners & allowed:
                wrong.append(f"{path.relative_to(REPO)} imports {name} (from {', '.join(sorted(owners))}), "
                             f"not declared in pyproject.toml ({extra or 'dependencies'})")
    assert not wrong, "\n".join(wrong)


def test_the_code_runs_on_the_oldest_python_requires_python_claims():
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.fail("vermin is not installed: pip install -e '.[test]'")
    claim = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", claim)
    assert m, f"requires-python {claim!r}: expected '>=3.N'"
    r = subprocess.run([vermin, "--no-tips", "--violations", f"-t=3.{m[1]}-", "--backport", "dataclasses",
                        "--eval-annotations", str(PACKAGE)], capture_output=True, text=True)
    assert r.returncode == 0, f"imgpipe needs a newer Python than requires-python {claim!r} says:\n{r.stdout}"
