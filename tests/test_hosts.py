"""imgpipe.hosts: the ``[worker] nodes`` syntax and the choice of a job's node."""

from __future__ import annotations

import re
import socket

import pytest

from imgpipe.config import load_config
from imgpipe.errors import ImgpipeError
from imgpipe.hosts import host_from_path, is_local, is_slurm, majority_host, parse_nodes, plan_node


@pytest.mark.parametrize(
    "text, nodes",
    [
        ("localhost", ("localhost",)),
        ("nancep5", ("nancep5",)),
        ("a,b", ("a", "b")),
        (" a , b ", ("a", "b")),
        ("b,a", ("b", "a")),  # order kept (the original went through a set)
        ("a,b,a,b", ("a", "b")),  # duplicates dropped, first place kept
        ("node[1-3]", ("node1", "node2", "node3")),
        ("node[08-11]", ("node08", "node09", "node10", "node11")),
        ("node[098-101]", ("node098", "node099", "node100", "node101")),
        ("node[8-11]", ("node8", "node9", "node10", "node11")),
        ("node[1,5]", ("node1", "node5")),
        ("node[05,7]", ("node05", "node7")),
        ("node[1-2,7]", ("node1", "node2", "node7")),
        ("node[7,1-2]", ("node7", "node1", "node2")),
        ("node[1, 5]", ("node1", "node5")),  # spaces inside brackets are stripped too
        ("node[ 1 - 2 ]", ("node1", "node2")),
        ("node[1-2]-ib", ("node1-ib", "node2-ib")),
        ("node[001-003],node002,nancep5", ("node001", "node002", "node003", "nancep5")),
        ("node[1-2], node[2-3]", ("node1", "node2", "node3")),
        ("a,,b,", ("a", "b")),
        ("node[3-3]", ("node3",)),
        ("rack[1-2]n[1-2]", ("rack1n1", "rack1n2", "rack2n1", "rack2n2")),  # Slurm's syntax, as python-hostlist reads it
        ("gpu.cluster.org", ("gpu.cluster.org",)),
        ("slurm", ("slurm",)),
    ],
)
def test_parse_nodes(text, nodes):
    assert parse_nodes(text) == nodes


@pytest.mark.parametrize(
    "text, parts",
    [
        ("", ["no host given"]),
        (" , ", ["no host given"]),
        ("node[1-3", ["unbalanced '['", "'node[1-3'"]),
        ("node1-3]", ["unbalanced ']'", "'node1-3]'"]),
        ("node[3-1]", ["[3-1]", "goes backwards"]),
        ("node[a-c]", ["cannot read [a-c] in 'node[a-c]'", "whole numbers"]),
        ("node[1--3]", ["[1--3]", "whole numbers"]),
        ("node[1-]", ["[1-]", "whole numbers"]),
        ("node[]", ["cannot read [] in 'node[]'"]),
        ("node[1,]", ["cannot read [1,] in 'node[1,]'"]),
        ("node 1", ["'node 1'", "contains a space", "separate hosts with commas"]),
        ("node[1;2]", ["cannot read [1;2]"]),
        ("no/de", ["'no/de' is not a valid host name"]),
        ("a,$HOST", ["'$HOST' is not a valid host name"]),
        ("-Efoo", ["'-Efoo' is not a valid host name (starts with '-')"]),  # ssh would read it as an option
        ("n[1-9999999]", ["more than 10,000 hosts"]),
        ("a[1-6000],b[1-6000]", ["more than 10,000 hosts"]),
    ],
)
def test_parse_nodes_errors(text, parts):
    with pytest.raises(ValueError) as info:
        parse_nodes(text)
    for part in parts:
        assert part in str(info.value), str(info.value)


def test_malformed_nodes_in_config_names_file_key_and_syntax(write_config):
    cfg = write_config("[worker]\nnodes = 'node[1-3], node[a-c]'\n[wsclean]\nname = 'img'\n")
    with pytest.raises(ImgpipeError) as info:
        load_config(cfg)
    text = str(info.value)
    for part in (f"{cfg}: [worker] nodes", "[a-c]", "hint:", "'node[08-11]'", "'node[1,5]'"):
        assert part in text, text


# ---------------------------------------------------------------- which node


@pytest.mark.parametrize(
    "hosts, chosen",
    [
        (["n1"], "n1"),
        (["n1", "n2", "n1"], "n1"),  # most MSs
        (["n2", "n2", "n1"], "n2"),  # most MSs, even when not the last
        (["n1", "n2"], "n2"),  # tie: node of the last MS
        (["n2", "n1"], "n1"),
        (["n1", "n2", "n2", "n1"], "n1"),  # tie, last MS among the tied
        (["n1", "n3", "n2", "n2", "n3", "n1", "n4"], "n1"),  # 2-2-2 tie, n4 (1) is last but not tied
        (["n1", "n1", "n2", "n2", "n3"], "n2"),
    ],
)
def test_majority_host(hosts, chosen):
    assert majority_host(hosts) == chosen


def test_host_from_path():
    pattern = re.compile(r"/net/(node\d{3})/")
    assert host_from_path(pattern, "/net/node012/data/L2/20231201_NT04/SW01.MS") == "node012"
    assert host_from_path(pattern, "/data/SW01.MS") is None
    optional = re.compile(r"/net/(node\d{3})?/")
    assert host_from_path(optional, "/net//x.MS") is None  # group did not take part


def test_is_local():
    assert is_local("localhost")
    here = socket.gethostname()
    assert is_local(here)
    assert is_local(here.split(".")[0])
    assert not is_local("surely-not-this-host-xyz")


def test_is_slurm():
    assert is_slurm(("slurm",))
    assert not is_slurm(("slurm", "node1"))
    assert not is_slurm(("localhost",))


def test_a_node_that_names_itself_is_named_as_the_plan_names_it():
    nodes = ("node001.cluster.example", "node002", "localhost")
    assert plan_node("node001", nodes) == "node001.cluster.example"  # its short name
    assert plan_node("node002.cluster.example", nodes) == "node002"  # its full name
    assert plan_node(socket.gethostname(), nodes) == "localhost"  # this machine: the plan's local node
    assert plan_node(socket.gethostname(), ("node002",)) == "localhost"
    assert plan_node("node009", nodes) == "node009"  # not in the plan (Slurm's nodes): as it said
    assert plan_node(None, nodes) is None and plan_node("", nodes) is None
