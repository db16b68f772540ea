"""The embedded approximate template index: faiss IVF-SQ8 with exact re-ranking.

Why this design (measured, see bench/RESULTS.md and bench/index_speed.py):

- A faiss inverted-file index with 8-bit scalar-quantised codes (IVF-SQ8) builds a million
  templates in about half a minute on two cores, where HNSW graphs took over ten minutes;
  it removes vectors for real (`remove_ids` drops their codes from the inverted lists, where
  HNSW libraries only mark them deleted and keep their bytes); and its codes take a quarter
  of the float32 size. Its shortlist is then re-ranked with the exact float32 vectors, so the
  scores returned are exact inner products and only the shortlist itself is approximate.
- Below `min_train` templates no quantiser is trained and search is an exact scan: ANN only
  pays for large galleries, and a small gallery would give centroids that are close to
  single people's templates.

Persistence (a directory; `path=None` keeps everything in memory):

- `meta.json` names the current files: `ids-<g>.i64` (one int64 template id per slot, -1
  for a free slot), `vectors-<g>.f32` (one float32 row per slot) and, once trained,
  `ivf-<g>.faiss` (the trained quantiser without any data) and `codes-<h>.u8` (per slot a
  valid byte and the slot's list number and 8-bit code, so that opening refills the lists
  without assigning and encoding every vector again: 3 s instead of 156 s at 1M). Files
  are written to a temporary name, fsynced and renamed, and `meta.json` is replaced the
  same way, so a crash during a rebuild leaves the previous generation in force.
- `log` is an append-only operation log: each record (add ids+vectors, or remove ids) has a
  length and a CRC-32 and is fsynced before the change is applied in memory. A checkpoint
  applies the log to the slot files in place (vectors first, then ids, each fsynced),
  then overwrites the log with zeros and truncates it. The operations are set operations
  (add = insert or overwrite, remove = delete if present), so replaying a log that was
  partly applied before a crash gives the same state; a torn last record is dropped.
- A removal is checkpointed at once: the removed slots' vectors and codes are overwritten
  with zeros in the files and the log that may still hold them is zeroed, so an erased
  template's bytes leave the index's files when `remove` returns. (Files replaced by a new
  generation are unlinked, not overwritten: what the file system does with freed blocks is
  out of reach here, as for SQLite; full-disk encryption covers it.) Adds are checkpointed
  once the log passes `checkpoint_bytes`, on `checkpoint()`, and when the index is opened.
- Several processes may open one directory: writes to it take an exclusive `flock`, and each
  process keeps a private copy in memory (the store keeps it in step with the database).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrail.errors import InvalidInputError, StoreError
from facetrail.files import write_atomic
from facetrail.store.index import _MAX_BLOCK, _as_ids, check_queries, rows_to_add

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

META = "meta.json"
LOG = "log"
LOCK = ".lock"
FORMAT = 1

# Log record: magic, op, count, dim, payload length; then payload; then CRC-32 of both.
_HEAD = struct.Struct("<4sBIIQ")
_CRC = struct.Struct("<I")
_MAGIC = b"FTIX"
_ADD, _REMOVE = 1, 2

# Widest id range looked up through a table (bytes of table).
_TABLE_SPAN = 1 << 26

# Most rows one growth of the in-memory buffers adds.
_MAX_GROW_ROWS = 1 << 18

# HNSW breadth when assigning added vectors to their inverted list.
_ADD_EF = 128

# Training: faiss wants at least 39 points per centroid; 64 gives stabler centroids.
_POINTS_PER_LIST = 64


def _faiss():  # type: ignore[no-untyped-def]
    """Import faiss on first use: the exact backend must not need it."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise StoreError(f"the approximate index needs faiss-cpu: {e}") from None
    return faiss


def choose_nlist(n: int) -> int:
    """Inverted lists for `n` vectors: about 4*sqrt(n), a power of two, at least
    `_POINTS_PER_LIST` training points per list, and at most 8192 (1M -> 4096, 10M -> 8192).

    The cap: k-means training costs lists x points, which at 16384 lists takes longer than
    the rest of a 10M build on a few cores, while 8192 lists keep a 10M query's scan (128
    lists of about 1,200 codes) to a few milliseconds.
    """
    if n < 2 * _POINTS_PER_LIST:
        return 1
    target = 4.0 * np.sqrt(n)
    nlist = 1 << max(0, round(np.log2(target)))
    return int(max(1, min(nlist, n // _POINTS_PER_LIST, 8192)))


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on an index directory, across processes (flock)."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_meta(path: Path) -> dict[str, object] | None:
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StoreError(f"index metadata {path / META} is unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"index metadata {path / META} is not one this facetrail knows")
    return meta


def _encode(op: int, ids: np.ndarray, vectors: np.ndarray | None, dim: int) -> bytes:
    payload = ids.astype("<i8").tobytes()
    if vectors is not None:
        payload += np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    head = _HEAD.pack(_MAGIC, op, ids.shape[0], dim, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(head + payload))


def _read_log(path: Path) -> tuple[list[tuple[int, np.ndarray, np.ndarray | None]], int]:
    """The log's valid records, and the byte length they span (a torn or damaged tail,
    left by a crash in the middle of an append, ends the log there)."""
    try:
        data = (path / LOG).read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    at = 0
    while at + _HEAD.size <= len(data):
        magic, op, count, dim, size = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + size
        if magic != _MAGIC or op not in (_ADD, _REMOVE) or end + _CRC.size > len(data):
            break
        (crc,) = _CRC.unpack_from(data, end)
        if crc != zlib.crc32(data[at:end]):
            break
        body = data[at + _HEAD.size : end]
        ids = np.frombuffer(body, dtype="<i8", count=count).astype(np.int64)
        vectors = None
        if op == _ADD:
            if size != count * 8 + count * dim * 4:
                break
            vectors = np.frombuffer(body, dtype="<f4", offset=count * 8).reshape(count, dim)
        records.append((op, ids, vectors))
        at = end + _CRC.size
    return records, at


def _clear_log(path: Path) -> None:
    """Overwrite the log with zeros, then empty it: records may hold erased vectors."""
    log = path / LOG
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(log, "r+b") as f:
        for start in range(0, size, 1 << 24):
            f.write(bytes(min(1 << 24, size - start)))
        f.flush()
        os.fsync(f.fileno())
        f.truncate(0)
        f.flush()
        os.fsync(f.fileno())


def _append_log(path: Path, record: bytes) -> int:
    """Append one record durably; returns the log's size after it."""
    fd = os.open(path / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, record)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _read_into(path: Path, out: np.ndarray) -> int:
    """Fill `out` from the start of a file; returns the bytes read (one read call returns
    at most about 2 GiB on Linux, so loop)."""
    if out.nbytes == 0:
        return 0
    view = memoryview(out.reshape(-1)).cast("B")
    done = 0
    with open(path, "rb", buffering=0) as f:
        while done < len(view):
            got = f.readinto(view[done : done + (1 << 30)])
            if not got:
                break
            done += got
    return done


def _member(big: np.ndarray, few: np.ndarray) -> np.ndarray:
    """`np.isin(big, few)` for a large id array and a few ids: a lookup table over the few
    ids' range when it is small (one pass over `big`, ~30 ms at 10M), where `np.isin`'s
    default sorts or loops (seconds at 10M, several times per erasure)."""
    if few.size == 0 or big.size == 0:
        return np.zeros(big.shape, dtype=bool)
    if int(few.max()) - int(few.min()) < _TABLE_SPAN:
        return np.isin(big, few, kind="table")
    return np.isin(big, few)


def _reserve(rows: int, used: int, dim: int) -> np.ndarray:
    """A (rows, dim) float32 array over an anonymous memory map with room for about half as
    many rows again (at least `_MAX_GROW_ROWS`); the first `used` rows are the caller's to
    fill, the rest are zeros. `_regrow` extends it in place while the room lasts."""
    room = max(rows + rows // 2, rows + _MAX_GROW_ROWS, 1024)
    buf = mmap.mmap(-1, room * dim * 4)
    return np.frombuffer(buf, dtype=np.float32, count=rows * dim).reshape(rows, dim)


def _regrow(vecs: np.ndarray, rows: int, dim: int) -> np.ndarray:
    """`vecs` with `rows` rows: a longer view of the same map when it has room, else a copy
    into a new reservation."""
    base = vecs.base
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    if isinstance(base, mmap.mmap) and len(base) >= rows * dim * 4:
        return np.frombuffer(base, dtype=np.float32, count=rows * dim).reshape(rows, dim)
    out = _reserve(rows, vecs.shape[0], dim)
    out[: vecs.shape[0]] = vecs
    return out


def _runs(slots: np.ndarray) -> Iterator[tuple[int, int]]:
    """Sorted slots grouped into contiguous (start, stop) runs, for fewer writes."""
    if slots.size == 0:
        return
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    for part in np.split(slots, breaks):
        yield int(part[0]), int(part[-1]) + 1


def _checkpoint(path: Path) -> None:
    """Apply the log to the slot files in place, then clear it. Caller holds the lock.

    Idempotent: records are set operations, so a log applied partly before a crash is
    simply applied again.
    """
    records, _ = _read_log(path)
    meta = _read_meta(path)
    if not records or meta is None:
        _clear_log(path)
        return
    dim = int(meta["dim"])  # type: ignore[arg-type]
    ids_file = path / str(meta["ids"])
    vec_file = path / str(meta["vectors"])
    ids = np.fromfile(ids_file, dtype="<i8").astype(np.int64)
    # Vectors are written before ids, so the vectors file is never the shorter one.
    changed: dict[int, np.ndarray] = {}  # slot -> new vector (zeros for removed)
    for op, rec_ids, vectors in records:
        if op == _REMOVE:
            for slot in np.flatnonzero(_member(ids, rec_ids)).tolist():
                ids[slot] = -1
                changed[slot] = np.zeros(dim, np.float32)
            continue
        assert vectors is not None
        if vectors.shape[1] != dim:
            raise StoreError(f"index log in {path} has vectors of another length")
        # Ids already in a slot are overwritten there (a replay of a partly applied log).
        at = np.flatnonzero(_member(ids, rec_ids))
        present = dict(zip(ids[at].tolist(), at.tolist(), strict=True))
        free = np.flatnonzero(ids < 0).tolist()
        free.reverse()
        grow = []
        for tid, vec in zip(rec_ids.tolist(), vectors, strict=True):
            slot = present.get(tid)
            if slot is None:
                slot = free.pop() if free else ids.shape[0] + len(grow)
                if slot >= ids.shape[0]:
                    grow.append(tid)
            changed[slot] = vec
            if slot < ids.shape[0]:
                ids[slot] = tid
        if grow:
            ids = np.concatenate([ids, np.asarray(grow, dtype=np.int64)])
    slots = np.fromiter(sorted(changed), dtype=np.int64, count=len(changed))
    with open(vec_file, "r+b") as f:
        for start, stop in _runs(slots):
            f.seek(start * dim * 4)
            f.write(np.stack([changed[s] for s in range(start, stop)]).astype("<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
    if meta.get("codes"):
        _write_codes(path, meta, slots, ids, changed)
    with open(ids_file, "r+b") as f:
        for start, stop in _runs(slots):
            f.seek(start * 8)
            f.write(ids[start:stop].astype("<i8").tobytes())
        f.flush()
        os.fsync(f.fileno())
    _clear_log(path)
    _sweep(path, meta)


def _write_codes(
    path: Path,
    meta: dict[str, object],
    slots: np.ndarray,
    ids: np.ndarray,
    changed: dict[int, np.ndarray],
) -> None:
    """Update the codes file for changed slots: added vectors are encoded with the stored
    quantiser, removed slots zeroed (a zero first byte: no valid code)."""
    rec = int(meta["code_bytes"])  # type: ignore[arg-type]
    live = [int(s) for s in slots.tolist() if ids[s] >= 0]
    encoded: dict[int, bytes] = {}
    if live:
        faiss = _faiss()
        ivf = faiss.deserialize_index(
            np.frombuffer((path / str(meta["ivf"])).read_bytes(), dtype=np.uint8)
        )
        _set_ef(ivf, _ADD_EF)
        codes = ivf.sa_encode(np.stack([changed[s] for s in live]).astype(np.float32))
        if codes.shape[1] + 1 != rec:
            raise StoreError(f"the index codes in {path} do not match its quantiser")
        encoded = {s: b"\x01" + c.tobytes() for s, c in zip(live, codes, strict=True)}
    empty = bytes(rec)
    with open(path / str(meta["codes"]), "r+b") as f:
        for start, stop in _runs(slots):
            f.seek(start * rec)
            f.write(b"".join(encoded.get(s, empty) for s in range(start, stop)))
        f.flush()
        os.fsync(f.fileno())


def _sweep(path: Path, meta: dict[str, object] | None) -> None:
    """Delete files the metadata does not name: leftovers of a crashed rebuild, which may
    hold templates erased since."""
    keep = {META, LOG, LOCK}
    if meta is not None:
        keep.update(str(meta[k]) for k in ("ids", "vectors", "ivf", "codes") if meta.get(k))
    for child in path.iterdir():
        if child.name not in keep and child.is_file():
            with contextlib.suppress(OSError):
                child.unlink()


def _new_generation(
    path: Path, dim: int, ids: np.ndarray, vectors: np.ndarray, ivf_bytes: bytes | None
) -> None:
    """Write a whole new generation of files and switch `meta.json` to it. Caller holds the
    lock; the log is applied into the new generation by the caller beforehand."""
    gen = f"{int(time.time() * 1000):x}{secrets.token_hex(3)}"
    meta: dict[str, object] = {
        "format": FORMAT,
        "dim": dim,
        "ids": f"ids-{gen}.i64",
        "vectors": f"vectors-{gen}.f32",
        "ivf": f"ivf-{gen}.faiss" if ivf_bytes is not None else None,
    }
    write_atomic(path / str(meta["vectors"]), np.ascontiguousarray(vectors, dtype="<f4"))
    write_atomic(path / str(meta["ids"]), np.ascontiguousarray(ids, dtype="<i8"))
    if ivf_bytes is not None:
        write_atomic(path / str(meta["ivf"]), ivf_bytes)
    write_atomic(path / META, json.dumps(meta).encode())
    _clear_log(path)
    _sweep(path, meta)


def erase_on_disk(path: Path, ids: np.ndarray) -> None:
    """Remove templates from an index directory that no object in this process holds
    (an erasure must reach the files even if nothing here has the index loaded)."""
    gone = _as_ids(ids)
    if gone.size == 0 or not (path / META).exists():
        return
    with _dir_lock(path):
        meta = _read_meta(path)
        if meta is None:
            return
        _append_log(path, _encode(_REMOVE, gone, None, int(meta["dim"])))  # type: ignore[arg-type]
        _checkpoint(path)


def _trim() -> None:
    """Hand memory freed during a build back to the system (glibc keeps it otherwise: the
    inverted lists grow by reallocation, which left about 1.8 GB of freed blocks at 10M)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _set_ef(ivf, ef: int) -> None:  # type: ignore[no-untyped-def]
    """Breadth of the search in an HNSW coarse quantiser (faiss hands the quantiser back as
    a plain Index, so downcast it first). Its default, 16, finds too few of the nearest
    lists, both for probing and for assigning added vectors to their list."""
    quantizer = _faiss().downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = ef


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True, slots=True)
class AnnParams:
    """Tuning of the approximate index (defaults measured on 1M clustered templates)."""

    nprobe: int = 128  # inverted lists visited per query
    shortlist: int = 64  # codes re-ranked exactly per query (at least k)
    min_train: int = 20_000  # below this many templates: exact scan, no quantiser
    retrain_growth: float = 4.0  # retrain once the gallery is this many times the trained size
    checkpoint_bytes: int = 64 << 20  # apply adds to the slot files past this much log


class AnnIndex:
    """Approximate inner-product index with exact re-ranking; see the module docstring.

    Implements `TemplateIndex`. One lock serialises searches and updates in this process
    (faiss does not allow a search during an add); a single query takes about a millisecond.
    """

    def __init__(self, dim: int, path: Path | None = None, params: AnnParams | None = None) -> None:
        """An empty index; use `open` for one kept in a directory."""
        if not isinstance(dim, int | np.integer) or dim <= 0:
            raise InvalidInputError("index dimension must be a positive integer")
        self._dim = int(dim)
        self.path = path
        self.params = params or AnnParams()
        self._lock = threading.RLock()
        self._ids = np.full(0, -1, dtype=np.int64)  # per row; -1: free
        self._vecs = np.empty((0, self._dim), dtype=np.float32)
        self._hi = 0  # rows [0, hi) have been used; free ones among them are in _free
        self._free: list[int] = []
        self._n = 0
        self._max_id = -1  # largest id ever added: new ids above it need no duplicate check
        self._ivf = None  # faiss.IndexIVFScalarQuantizer, ids = rows
        self._trained_n = 0
        self.build_seconds: float | None = None  # time of the last quantiser build
        self.encoded_on_open = 0  # rows that had no stored code when opened (slow path)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path, dim: int | None = None, params: AnnParams | None = None) -> AnnIndex:
        """Load the index kept in `path` (replaying its log), or create an empty one there.

        `dim` is needed to create one; an existing index of another length is refused.
        """
        path = Path(path)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _dir_lock(path):
            meta = _read_meta(path)
            if meta is None:
                if dim is None:
                    raise StoreError(f"no index in {path} and no dimension to create one")
                _new_generation(
                    path, int(dim), np.empty(0, np.int64), np.empty((0, int(dim)), np.float32), None
                )
                meta = _read_meta(path)
                assert meta is not None
            _checkpoint(path)  # replay what a crash may have left in the log
            _sweep(path, meta)
            stored_dim = int(meta["dim"])  # type: ignore[arg-type]
            if dim is not None and int(dim) != stored_dim:
                raise StoreError(f"the index in {path} has {stored_dim}-d vectors, not {dim}")
            ids = np.fromfile(path / str(meta["ids"]), dtype="<i8").astype(np.int64)
            # Read straight into an array numpy owns, so that it can later grow in place.
            vecs = _reserve(ids.size, ids.size, stored_dim)
            if _read_into(path / str(meta["vectors"]), vecs) != vecs.nbytes:
                raise StoreError(f"the index files in {path} are truncated (damaged?)")
            idx = cls(stored_dim, path, params)
            idx._adopt(ids, vecs)
            # Fill the quantiser's lists from the stored codes while the files cannot change
            # (fast: no assignment, no encoding); what has no valid code is encoded after.
            rest = idx._fill_from_codes(path, meta)
        idx._finish_load(rest)
        return idx

    def _adopt(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Take over slot arrays read from disk: row i is slot i."""
        live = ids >= 0
        self._ids, self._vecs, self._hi = ids, vecs, ids.shape[0]
        self._free = np.flatnonzero(~live)[::-1].tolist()
        self._n = int(live.sum())
        self._max_id = int(ids.max()) if ids.size else -1

    def _fill_from_codes(self, path: Path, meta: dict[str, object]) -> np.ndarray | None:
        """Load the stored quantiser and add every live slot that has a valid stored code.

        Returns the live rows still to add from their vectors, or None when there is no
        stored quantiser (or too few templates to use one). The codes file is read through a
        memory map in chunks, so it is never held whole in memory.
        """
        if not meta.get("ivf") or self._n < self.params.min_train:
            return None
        faiss = _faiss()
        start = time.perf_counter()
        raw = np.frombuffer((path / str(meta["ivf"])).read_bytes(), dtype=np.uint8)
        ivf = faiss.deserialize_index(raw)
        if ivf.ntotal:
            ivf.reset()
        live = self._ids[: self._hi] >= 0
        valid = np.zeros_like(live)
        rec = int(meta.get("code_bytes") or 0)  # type: ignore[call-overload]
        codes_file = path / str(meta["codes"]) if meta.get("codes") else None
        if codes_file is not None and rec == ivf.sa_code_size() + 1:
            rows = min(self._hi, codes_file.stat().st_size // rec)
            if rows:
                codes = np.memmap(codes_file, dtype=np.uint8, mode="r", shape=(rows, rec))
                valid[:rows] = live[:rows] & (codes[:, 0] == 1)
                todo = np.flatnonzero(valid).astype(np.int64)
                step = 1 << 18
                for s in range(0, todo.size, step):
                    chunk = todo[s : s + step]
                    ivf.add_sa_codes(np.ascontiguousarray(codes[chunk, 1:]), chunk)
                del codes
        self._ivf, self._trained_n = ivf, self._n
        self.build_seconds = time.perf_counter() - start
        _trim()
        return np.flatnonzero(live & ~valid).astype(np.int64)

    def _finish_load(self, rest: np.ndarray | None) -> None:
        """Add the rows without a stored code (then store their codes), or train a
        quantiser if the files had none and the gallery is large enough."""
        if rest is None:
            if self._n >= self.params.min_train:
                self._train(persist=True)
            return
        self.encoded_on_open = int(rest.size)
        if not rest.size:
            return
        assert self._ivf is not None
        start = time.perf_counter()
        _set_ef(self._ivf, _ADD_EF)
        step = 1 << 18
        for s in range(0, rest.size, step):
            self._ivf.add_with_ids(self._vecs[rest[s : s + step]], rest[s : s + step])
        self.build_seconds = (self.build_seconds or 0.0) + time.perf_counter() - start
        _trim()
        self._save_quantiser(write_ivf=False)

    @classmethod
    def build(
        cls,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        path: Path | None = None,
        params: AnnParams | None = None,
    ) -> AnnIndex:
        """A new index of these templates (taking ownership of `vectors` when it is a
        contiguous float32 matrix), written as a new generation of `path` if given."""
        idx = cls(dim, path, params)
        new_ids, v = rows_to_add(ids, vectors, dim)
        idx._ids, idx._vecs = new_ids.copy(), np.ascontiguousarray(v)
        idx._hi = idx._n = new_ids.shape[0]
        idx._max_id = int(new_ids.max()) if new_ids.size else -1
        if idx._n >= idx.params.min_train:
            idx._train(persist=False)
        if path is not None:
            path = Path(path)
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _dir_lock(path):
                _new_generation(path, idx._dim, idx._ids, idx._vecs, idx._ivf_bytes())
            if idx._ivf is not None:
                idx._save_quantiser(write_ivf=False)
        return idx

    # ------------------------------------------------------------------ the quantiser

    def _ivf_bytes(self) -> bytes | None:
        """The trained quantiser without data (centroids and SQ ranges only)."""
        if self._ivf is None:
            return None
        faiss = _faiss()
        empty = faiss.clone_index(self._ivf)
        empty.reset()
        return faiss.serialize_index(empty).tobytes()

    def _train(self, *, persist: bool) -> None:
        """Train a quantiser on a sample of the live rows and add them all to it."""
        faiss = _faiss()
        start = time.perf_counter()
        rows = np.flatnonzero(self._ids[: self._hi] >= 0).astype(np.int64)
        nlist = choose_nlist(rows.size)
        coarse = (
            faiss.IndexHNSWFlat(self._dim, 32, faiss.METRIC_INNER_PRODUCT)
            if nlist >= 4096
            else faiss.IndexFlatIP(self._dim)
        )
        ivf = faiss.IndexIVFScalarQuantizer(
            coarse, self._dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        # k-means costs nlist x points x iterations: past 4096 lists (galleries over about
        # 1.5M) train on the minimum faiss accepts (39 points a list) with 10 iterations, or
        # training alone would take the better part of an hour on a few cores at 10M.
        per_list = _POINTS_PER_LIST if nlist <= 4096 else 39
        if nlist > 4096:
            ivf.cp.niter = 10
        rng = np.random.default_rng(0)
        sample = (
            rows
            if rows.size <= nlist * per_list
            else rng.choice(rows, nlist * per_list, replace=False)
        )
        ivf.train(self._vecs[np.sort(sample)])
        _set_ef(ivf, _ADD_EF)
        for s in range(0, rows.size, 1 << 18):
            ivf.add_with_ids(self._vecs[rows[s : s + (1 << 18)]], rows[s : s + (1 << 18)])
        self._ivf, self._trained_n = ivf, int(rows.size)
        self.build_seconds = time.perf_counter() - start
        _trim()
        if persist and self.path is not None:
            self._save_quantiser(write_ivf=True)

    def _save_quantiser(self, *, write_ivf: bool) -> None:
        """Store the quantiser (if `write_ivf`) and every slot's code, taken from the
        inverted lists, so that opening needs neither training nor encoding.

        A slot's code is written only where the file's slot holds the same id as this
        object's row of that number (true after an open or a build; after updates from
        several processes the layouts can differ): other slots are marked without a code
        and encoded at the next open. Written to a new file through a memory map, so that
        10M codes do not need a second copy in anonymous memory.
        """
        faiss = _faiss()
        assert self._ivf is not None and self.path is not None
        ivf = self._ivf
        rec = ivf.sa_code_size() + 1
        cs = ivf.coarse_code_size()
        with _dir_lock(self.path):
            _checkpoint(self.path)
            meta = _read_meta(self.path)
            if meta is None:
                return
            disk_ids = np.fromfile(self.path / str(meta["ids"]), dtype="<i8")
            n = disk_ids.size
            name = f"codes-{secrets.token_hex(6)}.u8"
            tmp = self.path / f".{name}.tmp"
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(n, 1), rec))
            inv = ivf.invlists
            for lst in range(ivf.nlist):
                size = inv.list_size(lst)
                if not size:
                    continue
                rows = faiss.rev_swig_ptr(inv.get_ids(lst), size).copy()
                rows = rows[rows < n]
                if not rows.size:
                    continue
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), size * ivf.code_size)
                codes = codes.reshape(size, ivf.code_size)
                keep = faiss.rev_swig_ptr(inv.get_ids(lst), size) < n
                out[rows, 0] = 1
                out[rows, 1 : 1 + cs] = np.array([lst], "<u8").view(np.uint8)[:cs]
                out[rows, 1 + cs :] = codes[keep]
            mismatch = np.flatnonzero(disk_ids[: min(n, self._hi)] != self._ids[: min(n, self._hi)])
            out[mismatch] = 0
            out.flush()
            del out
            with open(tmp, "r+b") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
            if write_ivf:
                ivf_name = f"ivf-{secrets.token_hex(6)}.faiss"
                write_atomic(self.path / ivf_name, self._ivf_bytes() or b"")
                meta["ivf"] = ivf_name
            meta["codes"], meta["code_bytes"] = name, rec
            write_atomic(self.path / META, json.dumps(meta).encode())
            _sweep(self.path, meta)

    # ------------------------------------------------------------------ protocol

    @property
    def dim(self) -> int:
        """Length of every vector in the index."""
        return self._dim

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        """The ids in the index, in row order (a copy)."""
        with self._lock:
            ids = self._ids[: self._hi]
            return ids[ids >= 0].copy()

    @property
    def max_id(self) -> int:
        """The largest id ever added here (-1: none): the store reads only newer rows."""
        return self._max_id

    @property
    def trained(self) -> bool:
        """Whether searches use the quantiser (False: exact scan of a small gallery)."""
        return self._ivf is not None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add rows; ids must be new and unique. Durable (logged) when this returns."""
        new_ids, v = rows_to_add(ids, vectors, self._dim)
        k = new_ids.shape[0]
        if k == 0:
            return
        with self._lock:
            if new_ids.min() <= self._max_id and _member(self._ids[: self._hi], new_ids).any():
                raise InvalidInputError("id already in the index")
            if self.path is not None:
                with _dir_lock(self.path):
                    size = _append_log(self.path, _encode(_ADD, new_ids, v, self._dim))
                    if size >= self.params.checkpoint_bytes:
                        _checkpoint(self.path)
            self._add_rows(new_ids, v)

    def _add_rows(self, new_ids: np.ndarray, v: np.ndarray) -> None:
        k = new_ids.shape[0]
        reuse = [self._free.pop() for _ in range(min(k, len(self._free)))]
        extra = k - len(reuse)
        if self._hi + extra > self._ids.shape[0]:
            # Grow by a quarter, but by at most 256k rows (128 MB at 128-d): spare rows are
            # zeroed, so they count in memory, and at 10M a quarter would be 1.2 GB.
            step = min(max(self._hi // 4, 1024), _MAX_GROW_ROWS)
            self._grow(max(self._hi + extra, self._hi + step))
        rows = np.asarray(reuse + list(range(self._hi, self._hi + extra)), dtype=np.int64)
        self._hi += extra
        self._vecs[rows] = v
        self._ids[rows] = new_ids
        self._n += k
        self._max_id = max(self._max_id, int(new_ids.max()))
        if self._ivf is not None:
            _set_ef(self._ivf, _ADD_EF)
            self._ivf.add_with_ids(self._vecs[rows], rows)
        if (self._ivf is None and self._n >= self.params.min_train) or (
            self._ivf is not None and self._n > self.params.retrain_growth * self._trained_n
        ):
            self._train(persist=True)

    def _grow(self, cap: int) -> None:
        """More rows. The vectors live in an anonymous memory map reserved with room to
        spare (address space only: pages cost memory once written), so growing within it
        is a new view, not a copy: at 10M a copy would need 5 GB more for a moment.
        Past the reservation (or for a caller's array adopted by `build`) they are copied
        once into a new, larger one."""
        old = self._ids.shape[0]
        vecs = _regrow(self._vecs, cap, self._dim)
        ids = np.full(cap, -1, dtype=np.int64)
        ids[:old] = self._ids[:old]
        self._vecs, self._ids = vecs, ids

    def remove(self, ids: np.ndarray) -> int:
        """Drop these ids (unknown ones are ignored); returns how many went.

        When this returns, the removed vectors are zeroed in memory and in the files, and
        no log record holding them is left.
        """
        gone = _as_ids(ids)
        if gone.size == 0:
            return 0
        with self._lock:
            rows = np.flatnonzero(_member(self._ids[: self._hi], gone)).astype(np.int64)
            if self.path is not None:
                # Also when nothing is here: the files may hold what this copy never saw.
                with _dir_lock(self.path):
                    _append_log(self.path, _encode(_REMOVE, gone, None, self._dim))
                    _checkpoint(self.path)
            if rows.size == 0:
                return 0
            if self._ivf is not None:
                self._ivf.remove_ids(rows)
            self._vecs[rows] = 0.0
            self._ids[rows] = -1
            self._free.extend(sorted(rows.tolist(), reverse=True))
            self._n -= int(rows.size)
            return int(rows.size)

    def checkpoint(self) -> None:
        """Apply the log to the slot files now (it is also done when the index is opened)."""
        if self.path is not None:
            with self._lock, _dir_lock(self.path):
                _checkpoint(self.path)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each query row, scores exact and descending.

        Returns (scores, ids), both of shape (m, min(k, len)). Small galleries, and requests
        for a large share of the gallery, are answered by an exact scan.
        """
        q = check_queries(queries, k)
        with self._lock:
            m = q.shape[0]
            kk = min(int(k), self._n)
            if kk == 0:
                return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
            if q.shape[1] != self._dim:
                raise InvalidInputError(f"queries must have {self._dim} columns")
            q = np.ascontiguousarray(q)
            if self._ivf is None or kk * 8 > self._n:
                return self._exact(q, kk)
            return self._approximate(q, kk)

    def _exact(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        hi = self._hi
        ids, vecs = self._ids[:hi], self._vecs[:hi]
        dead = ids < 0
        m = q.shape[0]
        out_s = np.empty((m, kk), dtype=np.float32)
        out_i = np.empty((m, kk), dtype=np.int64)
        step = max(1, _MAX_BLOCK // max(hi, 1))
        for start in range(0, m, step):
            scores = q[start : start + step] @ vecs.T
            scores[:, dead] = -np.inf
            part = np.argpartition(scores, hi - kk, axis=1)[:, hi - kk :]
            top = np.take_along_axis(scores, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            out_s[start : start + step] = np.take_along_axis(top, order, axis=1)
            out_i[start : start + step] = ids[np.take_along_axis(part, order, axis=1)]
        return out_s, out_i

    def _approximate(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Shortlist from the quantised codes, then exact scores of the shortlist."""
        assert self._ivf is not None
        self._ivf.nprobe = min(self.params.nprobe, self._ivf.nlist)
        _set_ef(self._ivf, max(64, 2 * self._ivf.nprobe))
        s = max(self.params.shortlist, kk)
        _, rows = self._ivf.search(q, s)
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        scores = np.einsum("msd,md->ms", self._vecs[safe], q)
        scores[~valid] = -np.inf
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        out_s = np.take_along_axis(top, order, axis=1).astype(np.float32)
        out_rows = np.take_along_axis(np.take_along_axis(safe, part, axis=1), order, axis=1)
        out_i = self._ids[out_rows]
        short = ~np.isfinite(out_s).all(axis=1)
        if short.any():  # the probed lists held fewer than k templates: scan those queries
            out_s[short], out_i[short] = self._exact(q[short], kk)
        return out_s, out_i
