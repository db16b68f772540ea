"""The template index: nearest templates to a batch of query descriptors.

Everything that searches templates goes through the small `TemplateIndex` protocol, so the
exact in-memory index here can be swapped for an approximate or distributed one by
configuration. Scores are inner products; callers normalise vectors (then the score is the
cosine similarity), the index does not.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

import numpy as np

from facetrail.errors import InvalidInputError

# Upper bound on the (queries x templates) score block computed by one matmul, in floats.
_MAX_BLOCK = 1 << 26  # 256 MiB of float32


@runtime_checkable
class TemplateIndex(Protocol):
    """What the service needs from a template index."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def _as_ids(ids: np.ndarray | list[int] | tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError("ids must be a 1-d integer array")
    return arr.astype(np.int64, copy=False)


def check_vectors(vectors: np.ndarray, n: int, dim: int) -> np.ndarray:
    """`vectors` if they are n finite float32 rows of length `dim` (what every index takes)."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape != (n, dim):
        raise InvalidInputError(f"vectors must have shape ({n}, {dim})")
    if v.dtype != np.float32:
        raise InvalidInputError("vectors must be float32")
    if not np.isfinite(v).all():
        raise InvalidInputError("vectors must be finite")
    return v


def rows_to_add(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and vectors of an add, checked as every index checks them: 1-d integer ids
    without repeats, and as many finite float32 rows of length `dim`."""
    new_ids = _as_ids(ids)
    v = check_vectors(vectors, new_ids.shape[0], dim)
    if np.unique(new_ids).shape[0] != new_ids.shape[0]:
        raise InvalidInputError("duplicate ids in one add")
    return new_ids, v


def check_queries(queries: np.ndarray, k: object) -> np.ndarray:
    """`queries` if they are a finite float32 matrix and k a count (the columns are checked
    against the index once it is known not to be empty)."""
    q = np.asarray(queries)
    if q.ndim != 2:
        raise InvalidInputError("queries must be a 2-d array (m, dim)")
    if q.dtype != np.float32:
        raise InvalidInputError("queries must be float32")
    if not np.isfinite(q).all():
        raise InvalidInputError("queries must be finite")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise InvalidInputError("k must be a non-negative integer")
    return q


class ExactIndex:
    """Brute-force inner-product search over one contiguous float32 matrix.

    Exact, and fast enough for millions of templates: one BLAS matmul per block of queries,
    then `argpartition` and a sort of k columns per query. Rows are kept in a buffer with
    spare capacity so that adding one reference does not copy the whole gallery; removal
    compacts into fresh arrays and zeroes the removed rows, so erased descriptors do not stay
    in memory. Searches read an immutable snapshot and can run alongside add/remove.
    """

    def __init__(
        self,
        dim: int,
        ids: np.ndarray | None = None,
        vectors: np.ndarray | None = None,
        *,
        copy: bool = True,
    ) -> None:
        if not isinstance(dim, int | np.integer) or dim < 0:
            raise InvalidInputError("index dimension must be a non-negative integer")
        self._dim = int(dim)
        self._lock = threading.Lock()
        # Snapshot: (n, ids buffer, vectors buffer); rows [:n] are live.
        self._snap: tuple[int, np.ndarray, np.ndarray] = (
            0,
            np.empty(0, dtype=np.int64),
            np.empty((0, self._dim), dtype=np.float32),
        )
        if ids is not None or vectors is not None:
            if ids is None or vectors is None:
                raise InvalidInputError("give both ids and vectors, or neither")
            self.add(ids, vectors, _copy=copy)

    @property
    def dim(self) -> int:
        """Length of every vector in the index."""
        return self._dim

    def __len__(self) -> int:
        return self._snap[0]

    @property
    def ids(self) -> np.ndarray:
        """The ids in the index, in row order (a copy)."""
        n, ids, _ = self._snap
        return ids[:n].copy()

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, _copy: bool = True) -> None:
        """Add rows; ids must be new and unique.

        The index keeps its own copy (`copy=False` at construction hands over ownership of
        a contiguous float32 matrix instead, to avoid doubling memory on a large load).
        """
        new_ids, v = rows_to_add(ids, vectors, self._dim)
        k = new_ids.shape[0]
        if k == 0:
            return
        with self._lock:
            n, id_buf, vec_buf = self._snap
            if np.isin(new_ids, id_buf[:n]).any():
                raise InvalidInputError("id already in the index")
            if n + k <= id_buf.shape[0]:
                # Rows past n are invisible to running searches, so fill them in place.
                id_buf[n : n + k] = new_ids
                vec_buf[n : n + k] = v
            elif n == 0:
                id_buf = new_ids.copy()
                vec_buf = np.ascontiguousarray(v)
                if _copy and vec_buf is v:
                    vec_buf = vec_buf.copy()
            else:
                cap = max(n + k, n + n // 2, 1024)
                grown_ids = np.empty(cap, dtype=np.int64)
                grown_vecs = np.empty((cap, self._dim), dtype=np.float32)
                grown_ids[:n] = id_buf[:n]
                grown_vecs[:n] = vec_buf[:n]
                grown_ids[n : n + k] = new_ids
                grown_vecs[n : n + k] = v
                id_buf, vec_buf = grown_ids, grown_vecs
            self._snap = (n + k, id_buf, vec_buf)

    def remove(self, ids: np.ndarray) -> int:
        """Drop the rows with these ids (unknown ids are ignored); returns how many went."""
        gone = _as_ids(ids)
        with self._lock:
            n, id_buf, vec_buf = self._snap
            if n == 0 or gone.size == 0:
                return 0
            mask = np.isin(id_buf[:n], gone)
            count = int(mask.sum())
            if count == 0:
                return 0
            keep = ~mask
            self._snap = (
                n - count,
                np.ascontiguousarray(id_buf[:n][keep]),
                np.ascontiguousarray(vec_buf[:n][keep]),
            )
            # Overwrite the removed descriptors in the old buffer before it is freed.
            vec_buf[:n][mask] = 0.0
            return count

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each query row.

        Returns (scores, ids), both of shape (m, min(k, len)), scores descending per row.
        """
        q = check_queries(queries, k)
        n, id_buf, vec_buf = self._snap
        m = q.shape[0]
        kk = min(int(k), n)
        if kk == 0:
            return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
        if q.shape[1] != self._dim:
            raise InvalidInputError(f"queries must have {self._dim} columns")
        ids = id_buf[:n]
        vecs = vec_buf[:n]
        out_scores = np.empty((m, kk), dtype=np.float32)
        out_ids = np.empty((m, kk), dtype=np.int64)
        step = max(1, _MAX_BLOCK // n)
        for start in range(0, m, step):
            block = q[start : start + step]
            scores = block @ vecs.T
            if kk < n:
                part = np.argpartition(scores, n - kk, axis=1)[:, n - kk :]
                top = np.take_along_axis(scores, part, axis=1)
            else:
                part = np.broadcast_to(np.arange(n), scores.shape)
                top = scores
            order = np.argsort(-top, axis=1, kind="stable")
            out_scores[start : start + step] = np.take_along_axis(top, order, axis=1)
            out_ids[start : start + step] = ids[np.take_along_axis(part, order, axis=1)]
        return out_scores, out_ids
