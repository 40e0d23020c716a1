"""Running imgpipe's own commands (imgpipe/commands.py): results, failures that say what and where."""

from __future__ import annotations

import pytest

from imgpipe.commands import CommandFailed, on_node, on_nodes, run, ssh_shell


def test_a_command_that_succeeds():
    r = run(["sh", "-c", "echo out; echo err >&2"])
    assert r.ok and r.stdout == "out\n" and r.stderr == "err\n"
    assert r.check() is r


def test_a_failure_carries_argv_code_host_and_the_end_of_stderr():
    r = run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"], host="node007")
    assert (r.code, r.host, r.reason) == (3, "node007", "the real reason")
    with pytest.raises(CommandFailed) as e:
        r.check(what="probing node007", hint="check ssh")
    assert (e.value.argv, e.value.code, e.value.host) == (r.argv, 3, "node007")
    assert str(e.value) == "probing node007 failed on node007 (exit status 3): the real reason\n  hint: check ssh"


def test_a_command_that_cannot_start_or_hangs_has_no_code_but_a_reason():
    missing = run(["/no/such/program", "x"])
    assert missing.code is None and missing.reason.startswith("cannot run /no/such/program")
    slow = run(["sleep", "5"], timeout=0.2)
    assert slow.code is None and slow.reason == "no answer within 0.2 s"


def test_a_host_is_never_read_as_an_ssh_option(tmp_path):
    """A host named like an option ('-oProxyCommand=...') must reach ssh as a host, not an option."""
    pwned = tmp_path / "PWNED"
    argv = on_node(f"-oProxyCommand=touch {pwned}", "true", ["ssh"])
    assert argv[argv.index("--") + 1].startswith("-oProxyCommand")
    r = run(argv, timeout=20)
    assert not r.ok and not pwned.exists(), r


def test_a_script_runs_on_every_node_once():
    results = on_nodes(["localhost", "localhost"], "echo here", ssh_shell(["ssh"]))
    assert list(results) == ["localhost"] and results["localhost"].stdout == "here\n"
    seen = on_nodes(["n1", "n2"], "x", lambda host, script: ["echo", host, script])
    assert {h: r.stdout for h, r in seen.items()} == {"n1": "n1 x\n", "n2": "n2 x\n"}
