"""Files written whole or not at all: what every stage writes (the jobs file, run.json, the status
memo, the report and its previews, the SPECTRAL_WINDOW cache)."""

from __future__ import annotations

import os


def write_whole(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` in one step: a reader finds the old file or the
    new one, never a part. It goes to a temp file beside ``path`` (created exclusively, with the
    mode any new file gets: 0666 less the umask), renamed over it. Whatever stops the writing, a
    full disk, Ctrl-C or SIGTERM, removes the temp file, and the error goes on: the interruption,
    or an OSError that names ``path`` (not the temp file, which the user never asked for)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
    made = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        made = True
        try:
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if made:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and e.filename in (tmp, None) and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from None
        raise
