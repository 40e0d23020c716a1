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
casacore's own answer. Large inputs are read by two worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass

from .inputs import ms_problem

PARALLEL_MIN = 400  # below this, a worker pool costs more than it saves


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


def _name_in_table_dat(path: str, column: str) -> bool:
    """True when table.dat holds ``column`` as a casacore (AipsIO) string, either byte order."""
    raw = column.encode("utf-8")
    data = _read_file(os.path.join(path, "table.dat"))
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


def _table_key(path: str) -> bytes | None:
    """A digest of a table's files (all but its lock file): two tables with the same key are the same
    table. Reading ~3 small files costs a fraction of a casacore open (bench/plan_scale.py)."""
    h = hashlib.blake2b(digest_size=20)
    try:
        names = sorted(e.name for e in os.scandir(path) if e.is_file() and e.name != "table.lock")
        for name in names:
            h.update(name.encode() + b"\0" + _read_file(os.path.join(path, name)) + b"\0")
    except OSError:
        return None
    return h.digest()


def _read_file(path: str) -> bytes:
    """A whole (small) file, with plain system calls (Python's file objects cost more than the read)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) == 1 << 16:
            data += b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        return data
    finally:
        os.close(fd)


def _data_bytes(path: str) -> int:
    """The size of the main table's own files (its subtables are directories, not counted)."""
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
    tmp = os.path.join(folder, f".{key.hex()}.{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(json.dumps({"nspw": nspw, "chan_freqs": sorted(freqs)}))  # (floats: repr, exact)
        os.replace(tmp, os.path.join(folder, key.hex() + ".json"))
    except OSError:  # (no cache: the next plan reads the table again)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _read_spw(path: str, cache: dict) -> tuple[int, frozenset[float]]:
    """(rows, distinct channel frequencies) of an MS's SPECTRAL_WINDOW, each distinct table read once:
    once per plan (``cache``), and once at all (``spw_cache_dir``: a plan of MSs whose tables were
    seen before opens none, and does not even import casacore)."""
    sub = os.path.join(path, "SPECTRAL_WINDOW")
    key = _table_key(sub)
    if key is not None:
        if key in cache:
            return cache[key]
        kept = _kept_spw(key)
        if kept is not None:
            cache[key] = kept
            return kept
    spw = import_tables().table(sub, ack=False, readonly=True, lockoptions="autonoread")
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


def _read_one(path: str, column: str | None, cache: dict) -> MSFacts | str:
    try:
        nspw, freqs = _read_spw(path, cache)
        size = _data_bytes(path)
        if column is None:
            return MSFacts(path=path, chan_freqs=freqs, nspw=nspw, data_bytes=size)
        if _name_in_table_dat(path, column):
            return MSFacts(path=path, chan_freqs=freqs, nspw=nspw, has_column=True,
                           columns=frozenset([column]), data_bytes=size)
        main = import_tables().table(path, ack=False, readonly=True, lockoptions="autonoread")
        try:
            columns = frozenset(main.colnames())
        finally:
            main.close()
    except (RuntimeError, OSError) as e:  # casacore raises RuntimeError
        return f"{path}: cannot be read as a Measurement Set: {str(e).strip()}"
    return MSFacts(path=path, chan_freqs=freqs, nspw=nspw, has_column=column in columns, columns=columns,
                   data_bytes=size)


def _checked_read(path: str, column: str | None, cache: dict) -> MSFacts | str:
    """_read_one; the path checks (several syscalls an MS) only when it fails, to say why in plain words."""
    result = _read_one(path, column, cache)
    if isinstance(result, str) or (column is None and not os.path.isfile(os.path.join(path, "table.dat"))):
        return ms_problem(path) or result
    return result


def _read_chunk(args: tuple[list[str], str | None]) -> list[MSFacts | str]:
    paths, column = args
    cache: dict = {}  # distinct SPECTRAL_WINDOW tables, by the digest of their files
    return [_checked_read(p, column, cache) for p in paths]


def read_facts(paths: list[str], column: str | None = None) -> tuple[dict[str, MSFacts], list[str]]:
    """Facts for every path, and the problems (one line per bad MS, all of them)."""
    problems: list[str] = []

    workers = min(os.cpu_count() or 1, 4)
    if len(paths) < PARALLEL_MIN or workers < 2:
        results = _read_chunk((paths, column))
    else:
        import multiprocessing

        size = -(-len(paths) // workers)
        chunks = [(paths[i : i + size], column) for i in range(0, len(paths), size)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = [r for part in pool.map(_read_chunk, chunks) for r in part]
    facts: dict[str, MSFacts] = {}
    for path, result in zip(paths, results):
        if isinstance(result, str):
            problems.append(result)
        else:
            facts[path] = result
    return facts, problems
