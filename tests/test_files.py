"""imgpipe.files: a file is written whole or not at all, whatever stops the writing."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from imgpipe import files
from imgpipe.files import write_whole

NAMES = ["run.json", "my run (2).json", "观测 report.html", "-n.txt", "a'b\"c$(x).json"]


@pytest.mark.parametrize("name", NAMES)
def test_it_writes_and_replaces_whole(tmp_path, name):
    path = tmp_path / name
    write_whole(path, "first ✓\n")
    assert path.read_text(encoding="utf-8") == "first ✓\n"
    write_whole(str(path), b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert os.listdir(tmp_path) == [name]  # no temp file beside it


def test_the_new_file_has_the_mode_of_any_new_file(tmp_path):
    old = os.umask(0o027)
    try:
        write_whole(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, OSError(errno.ENOSPC, "No space left on device")])
@pytest.mark.parametrize("where", ["write", "replace"])
def test_whatever_stops_the_writing_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, stop, where):
    """A full disk, Ctrl-C or SIGTERM (an exception from its handler) while writing or renaming:
    the old content is there, unchanged, nothing else is, and the error goes on."""
    path = tmp_path / "status-memo.json"
    path.write_text("old")
    real_write = os.write

    def stopped(*args):
        raise stop
    if where == "write":
        def half(fd, data):  # part of the text written, then stopped
            real_write(fd, bytes(data[:3]))
            raise stop
        monkeypatch.setattr(files.os, "write", half)
    else:
        monkeypatch.setattr(files.os, "replace", stopped)
    with pytest.raises(type(stop) if isinstance(stop, BaseException) else stop):
        write_whole(path, "new content")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["status-memo.json"]


def test_it_never_writes_through_a_file_planted_at_its_temp_name(tmp_path, monkeypatch):
    """The temp file is created exclusively: a symbolic link or file already at its name (another
    user in a shared run directory) is never written through; the write fails instead."""
    monkeypatch.setattr(files.os, "getpid", lambda: 4242)
    monkeypatch.setattr(files.os, "urandom", lambda n: b"\x01" * n)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".run.json.4242.010101.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_whole(tmp_path / "run.json", "{}")
    assert victim.read_text() == "precious" and not (tmp_path / "run.json").exists()
    assert (tmp_path / ".run.json.4242.010101.tmp").is_symlink()  # (not ours: not removed)


def test_an_error_names_the_file_asked_for_not_the_temp_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        write_whole(tmp_path / "gone" / "report.html", "<html>")
    assert e.value.filename == str(tmp_path / "gone" / "report.html")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError) as e:
        write_whole(tmp_path / "run.json", "{}")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "run.json"))
    assert os.listdir(tmp_path) == []
