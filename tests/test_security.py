"""MS paths and config values are data, never shell code.

Real MSs are given hostile names, the config hostile values; the plan's jobs file
is then run line by line with ``bash -c`` (and POSIX ``sh -c``: GNU parallel may use
either) where ``wsclean`` on PATH is a recorder of its argv. The recorded argv must
be exactly the planned one, and no command smuggled into a name may ever run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HOSTILE_NAMES = [
    "with space.MS",
    "it's.MS",
    'say "hi".MS',
    "`touch PWNED`.MS",
    "a;touch PWNED;.MS",
    "star*.MS",
    "x && touch PWNED.MS",
    "x | touch PWNED.MS",
    "redir >PWNED.MS",
    "$HOME${HOME}.MS",
    "~tilde.MS",
    "bang!!.MS",
    "#hash.MS",
    "back\\slash.MS",
    "tab\there.MS",
    "Ωμέγα Ünïcødé.MS",
    "-lead.MS",
]

SHELLS = [s for s in ("bash", "sh") if shutil.which(s)]


def hostile_ms(ms_factory, tmp_path) -> list[Path]:
    paths = [ms_factory(n, where=tmp_path / "data") for n in HOSTILE_NAMES]
    # a leading-dash directory, and a directory that is itself hostile
    paths.append(ms_factory("obs.MS", where=tmp_path / "-dash dir"))
    paths.append(ms_factory("obs 2.MS", where=tmp_path / "$(touch PWNED)'\"`;"))
    # '$(...)' in an MS *name* would reach the image name through $ms_basename$, which CFITSIO
    # cannot write (a plan error, tested in test_plan.py); in a directory it is plain data
    paths.append(ms_factory("obs 3.MS", where=tmp_path / "$(touch PWNED)"))
    return paths


def recorder(tmp_path: Path) -> Path:
    """A ``wsclean`` that writes its argv, NUL-separated, to $RECORD and does nothing else."""
    bindir = tmp_path / "fake-bin"
    bindir.mkdir()
    script = bindir / "wsclean"
    script.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\" > \"$RECORD\"\n")
    script.chmod(0o755)
    return bindir


def run_jobs_file(jobs_file: Path, bindir: Path, tmp_path: Path, shell: str, tag: str = "") -> list[list[str]]:
    """Run every job line's COMMAND with ``shell -c``; return the argv each one recorded."""
    cwd = tmp_path / "run"
    cwd.mkdir(exist_ok=True)
    recorded = []
    for line in jobs_file.read_text(encoding="utf-8").split("\n"):
        if not line or line.startswith("#"):
            continue
        job_id, _host, command = line.split("\t", 2)
        record = tmp_path / f"argv-{tag}-{shell}-{job_id}"
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record)}
        proc = subprocess.run([shell, "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
        words = record.read_bytes().decode("utf-8").split("\0")
        assert words[-1] == ""
        recorded.append(words[:-1])
    return recorded


def assert_no_pwned(tmp_path: Path):
    hits = [p for p in tmp_path.rglob("*") if p.name.startswith("PWNED")]
    assert hits == []
    assert not Path("PWNED").exists()


CONFIG = """
[wsclean]
data-column = false
name = "img `touch PWNED` ; && * 'q' \\"dq\\" Ωμέγα $ {x} $"
out-dir = "{out}/$ms_basename$"
temp-dir = "{out}/tmp $(touch PWNED)"
fits-mask = "{out}/mask;touch PWNED.fits"
size = '64 64'
"""


def test_commands_reproduce_the_planned_argv_exactly(run_cli, write_config, ms_factory, tmp_path):
    paths = hostile_ms(ms_factory, tmp_path)
    out = tmp_path / "out; `touch PWNED` 'dir' \"d\" | x"
    cfg = write_config(CONFIG.replace("{out}", str(out).replace("\\", "\\\\").replace('"', '\\"')))
    bindir = recorder(tmp_path)
    for combine in (False, True):  # one job per MS, then all of them in one job
        _plan_and_run(run_cli, cfg, paths, tmp_path, bindir, combine)


def _plan_and_run(run_cli, cfg, paths, tmp_path, bindir, combine):
    jobs_path = tmp_path / f"jobs-{combine}.txt"
    r = run_cli("plan", cfg, *paths, *(["-c"] if combine else []), "--json", "--jobs-file", jobs_path)
    assert r.code == 0, r
    planned = [j["argv"] for j in json.loads(r.out)["jobs"]]
    assert len(planned) == (1 if combine else len(paths))
    # MS paths and values arrive as single, unchanged words
    all_words = [w for argv in planned for w in argv]
    for p in paths:
        assert str(p) in all_words
    if not combine:
        assert [argv[-1] for argv in planned] == [str(p) for p in paths]
    assert_no_pwned(tmp_path)  # planning runs nothing

    for shell in SHELLS:
        recorded = run_jobs_file(jobs_path, bindir, tmp_path, shell, tag=str(combine))
        assert recorded == [argv[1:] for argv in planned], shell
    assert_no_pwned(tmp_path)


def test_a_newline_in_an_ms_path_is_a_clear_plan_error(run_cli, write_config, ms_factory, tmp_path):
    ms = ms_factory("evil\ntouch PWNED\n.MS")
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    r = run_cli("plan", cfg, ms)
    assert r.code == 2, r
    assert "control character" in r.err and "newline" in r.err
    assert "rename the MS" in r.err
    assert not (tmp_path / "imgpipe-runs").exists()


@pytest.mark.parametrize("key", ["name", "out-dir", "temp-dir", "fits-mask"])
def test_a_newline_in_a_config_value_is_a_clear_plan_error(run_cli, write_config, ms_factory, tmp_path, key):
    ms = ms_factory("a.MS")
    extra = "" if key == "name" else "name = 'img'\n"
    cfg = write_config(f'[wsclean]\ndata-column = false\n{extra}{key} = "x\\ntouch PWNED"\n')
    r = run_cli("plan", cfg, ms)
    assert r.code == 2, r
    assert "control character" in r.err and key in r.err
    assert not (tmp_path / "imgpipe-runs").exists()


# ---------------------------------------------------------------- the node wrapper's own split

WRAPPER = Path(__file__).resolve().parent.parent / "bin" / "imgpipe-job"
# (the wrapper's split_words run alone over many lines, after the wrapper's own decoding of '@'
# and '%', which GNU parallel would otherwise read as its own)
SPLIT = r"""
use strict; use warnings;
my $text = do { local $/; open(my $f, '<', $ARGV[0]) or die "$ARGV[0]: $!"; <$f> };
my ($sub) = $text =~ /^(sub split_words \{.*?^\})/ms or die "no sub split_words in $ARGV[0]";
eval "$sub; 1" or die $@;
local $/ = "\0";
while (my $command = <STDIN>) {
  chomp $command;
  $command =~ s/%40/@/g;
  $command =~ s/%25/%/g;
  my @words = split_words($command);
  print @words ? join(' ', 'OK', map { unpack('H*', $_) . '.' } @words) : 'REFUSED', "\n";
}
"""


def wrapper_split(lines: list[str]) -> list[list[str] | None]:
    """Each line as the wrapper reads it (percent-encoded as the parallel engine sends it): its
    words, or None when it is refused."""
    sent = "".join(line.replace("%", "%25").replace("@", "%40") + "\0" for line in lines).encode()
    out = subprocess.run(["perl", "-e", SPLIT, str(WRAPPER)], input=sent, capture_output=True, check=True)
    rows = out.stdout.decode().split("\n")[:-1]
    assert len(rows) == len(lines)
    return [None if row == "REFUSED" else [bytes.fromhex(w[:-1]).decode() for w in row.split(" ")[1:]]
            for row in rows]


def test_the_wrapper_splits_every_quoted_line_as_shlex_does():
    """The wrapper splits COMMAND into words itself. For every line the planner writes
    (shlex.quote of each word) it must find exactly the words shlex.split finds: hostile names,
    empty words, quotes, backslashes, $(...), backticks, newlines, '@' and '%'. (Text::ParseWords'
    shellwords does not: a backslash inside single quotes, 'x\\', is an escape to it.)"""
    import random
    import shlex

    pieces = list("ab Z09_@%+=:,./-'\"\\$`;|&<>()*?[]{}~!#\n\t\r\x01\x7f\u00e9\u2014\u03a9") + [
        "$(x)", "`x`", "''", '""', "\\'", "\\\\", '\\"', "%40", "%25", "%%", "@@", "'\"'\"'", " -name "]
    rng = random.Random(22)
    words = [*HOSTILE_NAMES, "", " ", "''", "x\\", "\\", "'", '"', "%40", "%2540", "@%", "$(touch PWNED)",
             "`touch PWNED`", "it's; rm -rf ~ &", "new\nline\ttab", "caf\u00e9 \u2014 \"quoted\" \\ back"]
    words += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(2000)]
    lines = [shlex.join(["wsclean", *words[i:i + 3]]) for i in range(0, len(words), 3)]
    got = wrapper_split(lines)
    wrong = [(line, shlex.split(line), words) for line, words in zip(lines, got) if words != shlex.split(line)]
    assert not wrong, wrong[:5]


def test_the_wrapper_splits_a_hand_quoted_line_as_a_shell_does_and_refuses_what_a_shell_would_run():
    written = ['wsclean "a b" c\\ d', "wsclean \"it's\" 'say \"hi\"'", 'wsclean "back\\\\slash" "q\\"q" "\\a"',
               "wsclean x'y'\"z\" ''", "wsclean a\t\tb  "]
    shell = [subprocess.run(["bash", "-c", "printf '%s\\0' " + line.removeprefix("wsclean")],
                            capture_output=True, text=True, check=True).stdout.split("\0")[:-1] for line in written]
    assert wrapper_split(written) == [["wsclean", *w] for w in shell]
    refused = ["wsclean $(touch PWNED)", "wsclean `touch PWNED`", "wsclean a;b", "wsclean a|b", "wsclean a&b",
               "wsclean >x", "wsclean *", "wsclean ~/x", "wsclean \"$HOME\"", "wsclean 'open", "wsclean a\nb", ""]
    assert wrapper_split(refused) == [None] * len(refused)
