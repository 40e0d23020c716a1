"""What the plan needs to know about each Measurement Set, read once with python-casacore.

Per MS: that it exists and is a casacore table, its channel frequencies (for
``channels-out = 'all'``) and whether the main table has the column named by
``data-column`` (a missing column would only fail on the node, after start-up).

Per MS also the size of its main table's files (``data_bytes``): the visibilities,
what a job's cost grows with (plan.cost_shape orders the jobs longest first).

Speed: opening a table costs ~0.3-0.5 ms in casacore, and 10,000 MSs must be
planned in seconds. So only SPECTRAL_WINDOW is opened with casacore for the
frequencies, and only once per distinct table: the MSs of a night mostly hold
byte-identical SPECTRAL_WINDOW tables, and a digest of its files (~0.08 ms)
tells which were read already. What a table holds is kept under that digest in
``~/.cache/imgpipe/spw/`` (a digest of the bytes: never out of date), so planning
MSs whose tables were seen before (every resume plans again) opens no table
and does not import casacore and numpy (~0.15 s). The column check first looks
for the column's name, as casacore stores it (a length-prefixed string), in the
main table's ``table.dat``. Only when it is not found there is the main table
opened with casacore to confirm, so a "missing column" error is always
casacore's own answer. Large inputs are read by worker processes (``read_facts``): one reads
the first MS's table (importing casacore) while the others digest, and leave it the few distinct
tables they have not seen before.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .files import write_whole
from .inputs import ms_problem

PARALLEL_MIN = 400  # below this, a worker pool costs more than it saves
# Reading processes for a large input; None: one per CPU, up to 4. More readers than CPUs made a
# first plan on a cold file system faster but every other plan slower (bench/cold_plan.py).
READERS: int | None = None


@dataclass(frozen=True)
class MSFacts:
    path: str
    chan_freqs: frozenset[float]  # distinct channel frequencies over all SPW rows, Hz
    nspw: int = 1  # rows of SPECTRAL_WINDOW (WSClean 3.1 needs -reorder for more than one)
    has_column: bool | None = None  # the asked column is in the main table (None: not asked)
    columns: frozenset[str] = frozenset()  # the main table's columns, when it was opened
    data_bytes: int = 0  # the main table's files on disk: the visibilities, what a job's cost grows with

    @property
    def nchan(self) -> int:
        return len(self.chan_freqs)


def _name_in_table_dat(path: str, column: str, dir_fd: int | None = None) -> bool:
    """True when table.dat holds ``column`` as a casacore (AipsIO) string, either byte order.
    (With ``dir_fd``, the MS's directory already open: ``path`` is not looked up again.)"""
    raw = column.encode("utf-8")
    data = _read_file("table.dat" if dir_fd is not None else os.path.join(path, "table.dat"), dir_fd)
    return struct.pack(">I", len(raw)) + raw in data or struct.pack("<I", len(raw)) + raw in data


_BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def import_tables():
    """``casacore.tables``, imported with OpenBLAS limited to one thread.

    python-casacore imports numpy, whose OpenBLAS starts a thread per extra CPU
    that spins for a while. On a 2-CPU node that spinning took a CPU from the
    MS readers (bench/plan_scale.py: 1,000 MSs 0.46 s -> 0.41 s). The planner
    never uses BLAS. The environment is restored afterwards, so the engines and
    WSClean, which are started later, see the user's own settings.
    """
    if "casacore.tables" in sys.modules:
        return sys.modules["casacore.tables"]
    saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
    os.environ.update(_BLAS_THREADS)
    try:
        from casacore import tables
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tables


# A directory opened to look inside it: files are then opened and stat'ed relative to it, so the
# kernel does not walk the MS's whole path again for each (~10 % of the time an MS's facts take).
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _table_key(path: str, dir_fd: int | None = None) -> bytes | None:
    """A digest of a table's files (all but its lock file): two tables with the same key are the same
    table. Reading ~3 small files costs a fraction of a casacore open (bench/plan_scale.py)."""
    h = hashlib.blake2b(digest_size=20)
    try:
        fd = os.open(path, _O_DIR, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        names = sorted(e.name for e in os.scandir(fd) if e.is_file() and e.name != "table.lock")
        for name in names:
            h.update(name.encode() + b"\0" + _read_file(name, fd) + b"\0")
    except OSError:
        return None
    finally:
        os.close(fd)
    return h.digest()


def _read_file(path: str, dir_fd: int | None = None) -> bytes:
    """A whole (small) file, with plain system calls (Python's file objects cost more than the read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) == 1 << 16:
            data += b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        return data
    finally:
        os.close(fd)


def _data_bytes(path: str | int) -> int:
    """The size of the main table's own files (its subtables are directories, not counted);
    ``path`` may be the directory's open descriptor."""
    try:
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


def spw_cache_dir() -> str:
    """Where the channels of each distinct SPECTRAL_WINDOW table are kept between plans."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgpipe", "spw")


def _kept_spw(key: bytes) -> tuple[int, frozenset[float]] | None:
    """The (rows, channel frequencies) kept for a table of this digest, if any (a damaged entry is
    no entry). The digest is of the table's bytes: an entry can never be out of date."""
    try:
        with open(os.path.join(spw_cache_dir(), key.hex() + ".json"), "rb") as f:
            doc = json.loads(f.read())
        nspw, freqs = doc["nspw"], doc["chan_freqs"]
        if isinstance(nspw, int) and isinstance(freqs, list) and all(type(v) is float for v in freqs):
            return nspw, frozenset(freqs)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _keep_spw(key: bytes, nspw: int, freqs: frozenset[float]) -> None:
    folder = spw_cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        write_whole(os.path.join(folder, key.hex() + ".json"),
                    json.dumps({"nspw": nspw, "chan_freqs": sorted(freqs)}))  # (floats: repr, exact)
    except OSError:  # (no cache: the next plan reads the table again)
        pass


def _known_spw(path: str, cache: dict, dir_fd: int | None = None) -> tuple[bytes | None, tuple[int, frozenset[float]] | None]:
    """(the digest of an MS's SPECTRAL_WINDOW, its (rows, channel frequencies) if this plan or an
    earlier one read a table of that digest). ``dir_fd``: the MS's directory, open."""
    key = _table_key("SPECTRAL_WINDOW" if dir_fd is not None else os.path.join(path, "SPECTRAL_WINDOW"), dir_fd)
    if key is None:
        return None, None
    if key not in cache:
        kept = _kept_spw(key)
        if kept is None:
            return key, None
        cache[key] = kept
    return key, cache[key]


def _open_spw(path: str, key: bytes | None, cache: dict) -> tuple[int, frozenset[float]]:
    """(rows, distinct channel frequencies) of an MS's SPECTRAL_WINDOW read with casacore, kept under
    its digest ``key`` (if any): each distinct table is read once per plan (``cache``), and once at
    all (``spw_cache_dir``: a plan of MSs whose tables were seen before opens none, and does not
    even import casacore). Callers ask ``_known_spw`` first."""
    spw = import_tables().table(os.path.join(path, "SPECTRAL_WINDOW"), ack=False, readonly=True,
                                lockoptions="autonoread")
    try:
        nspw = spw.nrows()
        try:
            freqs = frozenset(spw.getcol("CHAN_FREQ").ravel().tolist())
        except RuntimeError:  # SPW rows with different channel counts
            freqs = frozenset(f for row in spw.getvarcol("CHAN_FREQ").values() for f in row.ravel().tolist())
    finally:
        spw.close()
    if key is not None:
        cache[key] = (nspw, freqs)
        _keep_spw(key, nspw, freqs)
    return nspw, freqs


# A worker that has not imported casacore leaves up to this many distinct SPECTRAL_WINDOW tables,
# never seen before, to be read by another process (read_facts): a night of MSs with a few distinct
# tables pays one casacore import (0.2 s, in one worker, while the others digest) instead of one per
# worker. A night whose tables all differ has them read by every worker, in parallel, as before.
DEFER_MAX = 8


@dataclass(frozen=True)
class _Deferred:
    """A worker's facts of an MS but its channels: its SPECTRAL_WINDOW is read by another process."""

    key: bytes
    facts: MSFacts


def _read_one(path: str, column: str | None, cache: dict, deferred: set | None = None) -> MSFacts | _Deferred | str:
    try:
        fd = os.open(path, _O_DIR)
    except OSError as e:
        return f"{path}: cannot be read as a Measurement Set: {e.strerror}"
    try:
        return _read_open(path, fd, column, cache, deferred)
    finally:
        os.close(fd)


def _read_open(path: str, fd: int, column: str | None, cache: dict, deferred: set | None) -> MSFacts | _Deferred | str:
    """_read_one, the MS's directory open as ``fd``."""
    try:
        later = None
        key, known = _known_spw(path, cache, fd)
        if (known is None and deferred is not None and key is not None and "casacore.tables" not in sys.modules
                and (key in deferred or len(deferred) < DEFER_MAX)):
            deferred.add(key)  # (a worker without casacore: a table it has not read is left to another)
            later, known = key, (0, frozenset())
        nspw, freqs = known or _open_spw(path, key, cache)
        size = _data_bytes(fd)
        if column is None:
            facts = MSFacts(path=path, chan_freqs=freqs, nspw=nspw, data_bytes=size)
        elif _name_in_table_dat(path, column, fd):
            facts = MSFacts(path=path, chan_freqs=freqs, nspw=nspw, has_column=True,
                            columns=frozenset([column]), data_bytes=size)
        else:
            main = import_tables().table(path, ack=False, readonly=True, lockoptions="autonoread")
            try:
                columns = frozenset(main.colnames())
            finally:
                main.close()
            facts = MSFacts(path=path, chan_freqs=freqs, nspw=nspw, has_column=column in columns,
                            columns=columns, data_bytes=size)
    except (RuntimeError, OSError) as e:  # casacore raises RuntimeError
        return f"{path}: cannot be read as a Measurement Set: {str(e).strip()}"
    return facts if later is None else _Deferred(later, facts)


def _checked_read(path: str, column: str | None, cache: dict, deferred: set | None = None) -> MSFacts | _Deferred | str:
    """_read_one; the path checks (several syscalls an MS) only when it fails, to say why in plain words."""
    result = _read_one(path, column, cache, deferred)
    if isinstance(result, str) or (column is None and not os.path.isfile(os.path.join(path, "table.dat"))):
        return ms_problem(path) or result
    return result


def _read_chunk(args: tuple[list[str], str | None, bool]) -> list[MSFacts | _Deferred | str]:
    paths, column, defer = args
    cache: dict = {}  # distinct SPECTRAL_WINDOW tables, by the digest of their files
    deferred: set | None = set() if defer else None
    return [_checked_read(p, column, cache, deferred) for p in paths]


def _read_first_table(path: str) -> dict:
    """{digest: (rows, channels)} of one MS's SPECTRAL_WINDOW, read (and kept) unless seen before;
    {} when it cannot be read (the MS's own read says why)."""
    cache: dict = {}
    try:
        key, known = _known_spw(path, cache)
        if key is not None and known is None:  # (no digest: no table to read, and casacore would log)
            _open_spw(path, key, cache)
    except (RuntimeError, OSError):
        pass
    return cache


def _chunks(paths: list[str], parts: int, column: str | None, defer: bool) -> list[tuple[list[str], str | None, bool]]:
    """``paths`` cut into at most ``parts`` runs, as _read_chunk's arguments."""
    size = -(-len(paths) // parts)
    return [(paths[i : i + size], column, defer) for i in range(0, len(paths), size)]


def _complete(results: list, known: dict, column: str | None, pool, workers: int) -> list[int]:
    """Fill in the MSs whose table a worker left (``_Deferred``): from the table read by
    ``_read_first_table`` (``known``) or kept meanwhile by another worker; those of a table nobody
    read yet are read again in full, in the workers (the same facts, or problem, as serially).
    Returns the indices filled in."""
    deferred = [i for i, r in enumerate(results) if isinstance(r, _Deferred)]
    for i in deferred:
        key = results[i].key
        if key not in known:
            known[key] = _kept_spw(key)  # (None: no process read it)
    again = [results[i].facts.path for i in deferred if known[results[i].key] is None]
    redone = {}
    if again:
        chunks = _chunks(again, workers, column, False)
        redone = dict(zip(again, (r for part in pool.map(_read_chunk, chunks, chunksize=1) for r in part)))
    for i in deferred:
        r = results[i]
        table = known[r.key]
        results[i] = redone[r.facts.path] if table is None else replace(r.facts, nspw=table[0], chan_freqs=table[1])
    return deferred


# Chunks a large input is cut into, per worker: iter_facts hands each one on as soon as it is read,
# so that the planner builds the jobs of one chunk while the workers read the next ones. Up to
# CHUNKS_PER_WORKER, so that little is left to build once the last chunk is in, of at least
# CHUNK_MIN MSs each (a chunk handed on costs a round trip), and never fewer than 4 a worker (one
# worker starts with the first MS's table, and then takes its share).
CHUNKS_PER_WORKER = 16
CHUNK_MIN = 500


def _worker_start() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (the pool's terminate: end quietly)


def worker_pool(workers: int):
    """A pool of forked worker processes (the planner's MS readers, the report's preview drawers)
    that leave Ctrl-C and SIGTERM to the command, which stops them (the pool's terminate, leaving
    its ``with``): an exception in each worker would print its Python traceback under
    "interrupted"."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    return ctx.Pool(workers, initializer=_worker_start)


def iter_facts(paths: list[str], column: str | None = None) -> Iterator[list[tuple[int, MSFacts | str]]]:
    """Batches of (index in ``paths``, facts or the problem), every path in exactly one: in order,
    a chunk at a time as the workers read them, but for the few a worker left to another process's
    casacore read (``_Deferred``), which come last. A caller can work on the first MSs while the
    others are read (a batch at a time: work on many MSs at once runs faster than one at a time
    between other work)."""
    workers = READERS or min(os.cpu_count() or 1, 4)
    if len(paths) < PARALLEL_MIN or workers < 2:
        yield list(enumerate(_read_chunk((paths, column, False))))
        return
    # One worker reads the first MS's table (importing casacore only if it was never seen) while
    # the others start on the MSs; small chunks, so that it then takes its share of them.
    parts = max(4 * workers, min(CHUNKS_PER_WORKER * workers, len(paths) // CHUNK_MIN))
    chunks = _chunks(paths, parts, column, True)
    with worker_pool(workers) as pool:
        first = pool.apply_async(_read_first_table, (paths[0],))
        results: list = []
        for part in pool.imap(_read_chunk, chunks, chunksize=1):
            start = len(results)
            results += part
            yield [(start + k, r) for k, r in enumerate(part) if not isinstance(r, _Deferred)]
        yield [(i, results[i]) for i in _complete(results, first.get(), column, pool, workers)]


def read_facts(paths: list[str], column: str | None = None) -> tuple[dict[str, MSFacts], list[str]]:
    """Facts for every path, and the problems (one line per bad MS, all of them, in input order)."""
    results: list = [None] * len(paths)
    for batch in iter_facts(paths, column):
        for i, result in batch:
            results[i] = result
    facts: dict[str, MSFacts] = {}
    problems: list[str] = []
    for path, result in zip(paths, results):
        if isinstance(result, str):
            problems.append(result)
        else:
            facts[path] = result
    return facts, problems
