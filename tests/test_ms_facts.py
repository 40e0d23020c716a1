"""imgpipe.ms_facts: what the plan reads from each Measurement Set (real casacore MSs)."""

from __future__ import annotations

import json
import shutil

import pytest

from procs import none_alive

from imgpipe import ms_facts
from imgpipe.ms_facts import _name_in_table_dat, read_facts


def _one(path, column=None):
    facts, problems = read_facts([str(path)], column)
    assert problems == []
    return facts[str(path)]


# ------------------------------------------------------------ channel frequencies


def test_one_spw_channels(ms_factory):
    f = _one(ms_factory("a.MS", nchan=12))
    assert f.nchan == 12 and f.nspw == 1


def test_two_spw_rows_with_identical_channels_count_once(ms_factory):
    freqs = [100e6 + i * 1e5 for i in range(12)]
    f = _one(ms_factory("same.MS", spw_freqs=[freqs, freqs]))
    assert f.nspw == 2
    assert f.nchan == 12  # distinct frequencies, not rows x channels (nenucal said 24)


def test_two_spw_rows_with_different_channels_add_up(ms_factory):
    f = _one(ms_factory("two.MS", nchan=12, nspw=2))
    assert f.nspw == 2 and f.nchan == 24


# ------------------------------------------------------------ the data column


def test_fast_path_finds_an_existing_column_in_table_dat(ms_factory):
    ms = ms_factory("c.MS", corrected_data=True)
    assert _name_in_table_dat(str(ms), "CORRECTED_DATA")
    f = _one(ms, "CORRECTED_DATA")
    assert f.has_column is True
    # the fast path answered: the main table was not opened, so only the asked column is known
    assert f.columns == frozenset({"CORRECTED_DATA"})


def test_missing_column_is_confirmed_by_casacore(ms_factory):
    ms = ms_factory("d.MS")
    assert not _name_in_table_dat(str(ms), "CORRECTED_DATA")
    f = _one(ms, "CORRECTED_DATA")
    assert f.has_column is False
    # casacore opened the main table: its real column list is known
    assert {"DATA", "FLAG", "UVW"} <= f.columns
    assert "CORRECTED_DATA" not in f.columns


def test_casacore_confirms_a_column_the_fast_path_missed(ms_factory, monkeypatch):
    # The fast path may miss a name (a table.dat laid out differently): casacore has the last word.
    ms = ms_factory("c.MS", corrected_data=True)
    monkeypatch.setattr(ms_facts, "_name_in_table_dat", lambda path, column, dir_fd=None: False)
    f = _one(ms, "CORRECTED_DATA")
    assert f.has_column is True
    assert "CORRECTED_DATA" in f.columns and "DATA" in f.columns


def test_no_column_asked_no_column_check(ms_factory):
    f = _one(ms_factory("d.MS"), None)
    assert f.has_column is None


# ------------------------------------------------------------ bad inputs


def test_every_bad_path_is_listed(tmp_path, ms_factory):
    good = ms_factory("good.MS")
    missing = tmp_path / "missing.MS"
    plain_dir = tmp_path / "empty.MS"
    plain_dir.mkdir()
    a_file = tmp_path / "file.MS"
    a_file.write_text("not a table")
    facts, problems = read_facts([str(good), str(missing), str(plain_dir), str(a_file)])
    assert len(problems) == 3
    text = "\n".join(problems)
    assert f"{missing}: does not exist" in text
    assert f"{plain_dir}: is not a Measurement Set" in text
    assert f"{a_file}: is not a Measurement Set" in text
    assert str(good) not in text


@pytest.mark.parametrize("workers", [False, True], ids=["serial", "workers"])
def test_a_file_given_as_an_ms_is_said_once_without_casacore_noise(tmp_path, ms_factory, capfd, monkeypatch,
                                                                    workers):
    """casacore logs a WARN line of its own on stderr when asked to open a table below a file:
    no table is opened below what is not a directory (the first MS of the list included, whose
    table a worker reads first)."""
    a_file = tmp_path / "a-file.MS"
    a_file.write_text("not a table")
    good = [str(ms_factory(f"good{i}.MS")) for i in range(3)]
    if workers:
        monkeypatch.setattr(ms_facts, "PARALLEL_MIN", 2)
        monkeypatch.setattr(ms_facts.os, "cpu_count", lambda: 2)
    facts, problems = read_facts([str(a_file), *good], "DATA")
    assert problems == [f"{a_file}: is not a Measurement Set (no casacore table.dat in it)"]
    assert sorted(facts) == sorted(good)
    assert capfd.readouterr().err == ""


def test_table_without_spectral_window_is_refused(tmp_path, ms_factory):
    ms = ms_factory("nospw.MS")
    shutil.rmtree(ms / "SPECTRAL_WINDOW")
    _, problems = read_facts([str(ms)])
    assert problems == [f"{ms}: has no SPECTRAL_WINDOW subtable"]


def test_corrupt_subtable_is_a_problem_not_a_crash(ms_factory):
    ms = ms_factory("bad.MS")
    (ms / "SPECTRAL_WINDOW" / "table.dat").write_bytes(b"garbage")
    _, problems = read_facts([str(ms)])
    assert len(problems) == 1
    assert problems[0].startswith(f"{ms}: cannot be read as a Measurement Set")


# ------------------------------------------------------------ the worker pool


def test_parallel_read_gives_the_same_facts(ms_factory, monkeypatch):
    paths = [str(ms_factory(f"m{i}.MS", **({"corrected_data": True} if i % 2 else {}))) for i in range(4)]
    serial, p1 = read_facts(paths, "CORRECTED_DATA")
    monkeypatch.setattr(ms_facts, "PARALLEL_MIN", 2)
    monkeypatch.setattr(ms_facts.os, "cpu_count", lambda: 2)
    parallel, p2 = read_facts(paths, "CORRECTED_DATA")
    assert p1 == p2 == []
    assert parallel == serial
    assert [parallel[p].has_column for p in paths] == [False, True, False, True]


_FIRST_PLAN = """
import json, os, sys
from imgpipe import ms_facts
ms_facts.PARALLEL_MIN, ms_facts.DEFER_MAX = 2, int(sys.argv[1])
ms_facts.os.cpu_count = lambda: 2
real = ms_facts.import_tables
def counting():
    if "casacore.tables" not in sys.modules:
        with open(sys.argv[2], "a") as f:
            f.write(f"{os.getpid()}\\n")
    return real()
ms_facts.import_tables = counting
handed_on = []
every = ms_facts.iter_facts
def noting(*args):
    for batch in every(*args):
        handed_on.extend(i for i, _ in batch)
        yield batch
ms_facts.iter_facts = noting
facts, problems = ms_facts.read_facts(sys.argv[3:], "DATA")
print(json.dumps({"facts": {p: [f.nspw, sorted(f.chan_freqs), f.has_column, f.data_bytes]
                            for p, f in facts.items()},
                  "problems": problems, "parent_imported": "casacore.tables" in sys.modules,
                  "handed_on": handed_on}))
"""


def _first_plan(tmp_path, paths, defer_max=8) -> tuple[dict, list[int]]:
    """read_facts in 2 worker processes, in a fresh interpreter (no casacore imported, as in the CLI)
    with nothing kept from before: (what it read, the pids of the processes that imported casacore)."""
    import os
    import subprocess
    import sys

    log = tmp_path / f"imports-{defer_max}"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"cache-{defer_max}")}
    out = subprocess.run([sys.executable, "-c", _FIRST_PLAN, str(defer_max), str(log), *paths], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out), [int(x) for x in log.read_text().split()] if log.exists() else []


def _as_json(facts) -> dict:
    return {p: [f.nspw, sorted(f.chan_freqs), f.has_column, f.data_bytes] for p, f in facts.items()}


def test_a_first_plan_imports_casacore_in_one_worker_only(ms_factory, tmp_path):
    """The MSs of a night share one SPECTRAL_WINDOW table: one worker imports casacore and reads it
    while the other digests, instead of both paying the import (0.2 s); never the parent."""
    paths = [str(ms_factory(f"same{i}.MS", nchan=16)) for i in range(6)]
    got, importers = _first_plan(tmp_path, paths)
    assert got["problems"] == [] and got["parent_imported"] is False
    assert len(importers) == 1, importers
    assert got["facts"] == _as_json(read_facts(paths, "DATA")[0])
    assert len(list((tmp_path / "cache-8" / "imgpipe" / "spw").iterdir())) == 1  # kept for the next plan


@pytest.mark.parametrize("defer_max", [0, 1, 8])
def test_a_first_plan_in_workers_reads_what_a_serial_one_reads(ms_factory, tmp_path, defer_max):
    """Whichever process reads which table (left to another worker, up to DEFER_MAX of them, or read
    where it was met), the facts are those of a serial read, and every distinct table is kept."""
    paths = [str(ms_factory(f"same{i}.MS", nchan=16)) for i in range(3)]
    paths += [str(ms_factory("other.MS", nchan=16, freq_start=60e6)), str(ms_factory("fewer.MS", nchan=8))]
    paths += [str(ms_factory(f"late{i}.MS", nchan=4, freq_start=70e6 + i * 1e6)) for i in range(3)]
    got, _ = _first_plan(tmp_path, paths, defer_max)
    assert got["problems"] == [] and got["parent_imported"] is False
    assert got["facts"] == _as_json(read_facts(paths, "DATA")[0])
    assert sorted(got["handed_on"]) == list(range(len(paths)))  # each MS once (iter_facts), those left last
    assert len(list((tmp_path / f"cache-{defer_max}" / "imgpipe" / "spw").iterdir())) == 6


def test_a_damaged_table_left_to_another_worker_is_the_same_problem_as_serially(ms_factory, tmp_path):
    good = [str(ms_factory(f"good{i}.MS")) for i in range(2)]
    bad = [ms_factory(f"bad{i}.MS", nchan=8) for i in range(4)]
    for ms in bad:  # a table.f0 that casacore cannot read, the same bytes in all: one digest
        (ms / "SPECTRAL_WINDOW" / "table.f0").write_bytes(b"damaged")
    paths = [*good, *map(str, bad)]
    facts, problems = read_facts(paths, "DATA")
    assert [p.split(":")[0] for p in problems] == [str(b) for b in bad]
    got, _ = _first_plan(tmp_path, paths)
    assert got["problems"] == problems
    assert got["facts"] == _as_json(facts)


# ------------------------------------------------------------ the casacore import


def test_casacore_is_imported_without_blas_threads_and_the_environment_is_kept(tmp_path):
    # A fresh interpreter: numpy must not have been imported before. OpenBLAS
    # would otherwise start a spinning thread per extra CPU, taking a CPU from
    # the MS readers; the user's own setting must still reach the engines.
    import os
    import subprocess
    import sys

    code = (
        "import os\n"
        "from imgpipe import ms_facts\n"
        "ms_facts.import_tables()\n"
        "import numpy\n"
        "print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'),"
        " os.environ.get('OMP_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "8"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "8", "None"]


# ------------------------------------------------------------ SPECTRAL_WINDOW read once per distinct table


def test_identical_tables_are_read_once_and_different_ones_each(ms_factory, monkeypatch, tmp_path):
    """MSs whose SPECTRAL_WINDOW files are byte-identical share one casacore read; an MS whose
    table differs (other channels) gets its own, and its own facts."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no table kept from before
    same = [str(ms_factory(f"same{i}.MS", nchan=16)) for i in range(3)]
    other = str(ms_factory("other.MS", nchan=16, freq_start=60e6))
    fewer = str(ms_factory("fewer.MS", nchan=8))
    copy = same[0][: -len(".MS")] + "-copy.MS"
    shutil.copytree(same[0], copy)
    opened = []
    real = ms_facts._open_spw

    def counting(path, key, cache):
        opened.append(path)
        return real(path, key, cache)

    monkeypatch.setattr(ms_facts, "_open_spw", counting)
    facts, problems = read_facts([*same, copy, other, fewer])
    assert problems == []
    assert len(opened) == 3  # one read for the four identical tables, one for each other table
    assert facts[same[1]].chan_freqs == facts[copy].chan_freqs == facts[same[0]].chan_freqs
    assert min(facts[other].chan_freqs) == 60e6 and facts[other].nchan == 16
    assert facts[fewer].nchan == 8
    fresh = {p: read_facts([p])[0][p] for p in [*same, copy, other, fewer]}  # each read on its own
    assert facts == fresh


def test_a_table_seen_before_is_not_opened_again_nor_casacore_imported(ms_factory, tmp_path):
    """The channels of each distinct SPECTRAL_WINDOW are kept under the digest of its bytes: the
    next plan of those MSs (a fresh interpreter, as a resume is) opens no table and imports no
    casacore; a table of other bytes is read; a damaged entry is read again and mended."""
    import os
    import subprocess
    import sys

    same = [str(ms_factory(f"same{i}.MS", nchan=16)) for i in range(2)]
    other = str(ms_factory("other.MS", nchan=8, freq_start=60e6))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = (
        "import sys, json\n"
        "from imgpipe.ms_facts import read_facts\n"
        "facts, problems = read_facts(sys.argv[1:], 'DATA')\n"
        "print(json.dumps([sorted(facts[p].chan_freqs) for p in sys.argv[1:]]), 'casacore.tables' in sys.modules)\n"
    )

    def plan(*paths):
        out = subprocess.run([sys.executable, "-c", code, *paths], env=env, capture_output=True, text=True,
                             check=True).stdout.split(" ")
        return json.loads(" ".join(out[:-1])), out[-1].strip() == "True"

    first, imported = plan(*same)
    assert imported and len(first[0]) == 16 and first[0] == first[1]
    kept = list((tmp_path / "cache" / "imgpipe" / "spw").iterdir())
    assert len(kept) == 1  # one distinct table
    assert plan(*same) == (first, False)  # from what was kept: no casacore at all
    both, imported = plan(*same, other)  # a table not seen: read
    assert imported and both[:2] == first and len(both[2]) == 8 and min(both[2]) == 60e6
    kept[0].write_text('{"nspw": 1, "chan_freqs": ["x"]}')  # damaged: not used, read again, mended
    assert plan(*same) == (first, True)
    assert plan(*same) == (first, False)
    truth = {p: read_facts([p])[0][p] for p in [*same, other]}
    assert [sorted(truth[p].chan_freqs) for p in [*same, other]] == both


_SLOW_PLAN = """
import os, sys, time
from imgpipe import ms_facts
ms_facts.PARALLEL_MIN = 2
ms_facts.os.cpu_count = lambda: 2
read = ms_facts._checked_read
def slow(path, *args):  # (in the worker processes: each says it is reading)
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.5)
    return read(path, *args)
ms_facts._checked_read = slow
from imgpipe.cli import main
sys.exit(main(sys.argv[2:]))
"""



@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_stopped_while_the_workers_read_it_stops_them_and_says_why(ms_factory, write_config, tmp_path, how):
    """Ctrl-C (SIGINT to the terminal's process group) or ``kill`` (SIGTERM to imgpipe alone)
    during a large plan: exit 130 with one line (the README's exit codes), no Python traceback
    from the reading workers, no worker left, nothing written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    paths = [str(ms_factory(f"m{i}.MS")) for i in range(12)]
    cfg = write_config("[wsclean]\nname = 'img'\ndata-column = false\n")
    marker = tmp_path / "reading"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PLAN, str(marker), "plan", str(cfg), *paths],
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for _ in range(300):  # both workers reading
            if marker.exists() and len(set(marker.read_text().split())) >= 2:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the workers never started reading")
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (proc.returncode, err, out) == (130, "imgpipe: interrupted\n", "")
    workers = {int(p) for p in marker.read_text().split()}
    assert none_alive(workers)
    assert not (tmp_path / "imgpipe-runs").exists()
