"""The template index in Milvus, through pymilvus' `MilvusClient`: the gallery beyond one
machine.

One collection per model (`<prefix>_<model slug>`), primary key the template id, one
FLOAT_VECTOR field, inner-product metric, Strong consistency (a search sees every write
acknowledged before it). The URI is a Milvus cluster (`http(s)://host:19530`, with a token)
or a local file path, which pymilvus opens with Milvus Lite, the embedded edition the tests
use (a test double: slow, and it builds only HNSW, IVF_FLAT, IVF_SQ8 and FLAT).

Erasure: `remove` deletes by primary key, then asks Milvus to compact the collection.
A Milvus delete is a tombstone: the vector stops being returned at once, but its bytes stay
in the segment files (object storage, for a cluster) until compaction rewrites the segment
and Milvus' garbage collection deletes the old files, which happens later and is run by
Milvus, not by us. Milvus Lite keeps them even after compaction. An erasure the law relies on
must therefore also be checked in the cluster's storage; see the README.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np

from facetrail.errors import InvalidInputError, StoreError
from facetrail.store.backends import IndexConfig, model_slug
from facetrail.store.index import _as_ids, rows_to_add

_BATCH = 2_000  # rows per insert/delete call (gRPC messages stay small)
_clients: dict[tuple[str, str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def _client(config: IndexConfig) -> Any:
    """One MilvusClient per (uri, token, db) per process: Milvus Lite allows one opener."""
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise StoreError(
            f"the milvus index needs pymilvus (pip install 'facetrail[milvus]'): {e}"
        ) from None
    key = (str(config.milvus_uri), config.milvus_token, config.milvus_db)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            kwargs: dict[str, Any] = {"uri": str(config.milvus_uri)}
            if config.milvus_token:
                kwargs["token"] = config.milvus_token
            if config.milvus_db:
                kwargs["db_name"] = config.milvus_db
            try:
                client = MilvusClient(**kwargs)
            except Exception as e:  # pymilvus raises its own and gRPC errors
                raise StoreError(f"cannot connect to Milvus: {type(e).__name__}: {e}") from None
            _clients[key] = client
        return client


def close_clients() -> None:
    """Close every client this process opened (tests; Milvus Lite holds its file)."""
    with _clients_lock:
        for client in _clients.values():
            with contextlib.suppress(Exception):  # best effort at shutdown
                client.close()
        _clients.clear()


def collection_name(config: IndexConfig, model: str) -> str:
    return f"{config.milvus_prefix}_{model_slug(model)}"


class MilvusIndex:
    """`TemplateIndex` over one Milvus collection; see the module docstring."""

    def __init__(self, client: Any, collection: str, dim: int, index_type: str) -> None:
        self._client = client
        self.collection = collection
        self._dim = int(dim)
        self._index_type = index_type
        self.max_id = -1  # largest id seen: the store's catch-up reads only newer rows

    @classmethod
    def connect(cls, config: IndexConfig, model: str, dim: int) -> MilvusIndex:
        """The collection of `model`, created (with its vector index) if absent."""
        client = _client(config)
        name = collection_name(config, model)
        idx = cls(client, name, dim, config.milvus_index_type)
        if not client.has_collection(name):
            idx._create()
        else:
            desc = client.describe_collection(name)
            fields = {f["name"]: f for f in desc.get("fields", [])}
            have = int(fields.get("vector", {}).get("params", {}).get("dim", dim))
            if have != dim:
                raise StoreError(f"Milvus collection {name} holds {have}-d vectors, not {dim}")
            client.load_collection(name)
            ids = idx.ids
            idx.max_id = int(ids.max()) if ids.size else -1
        return idx

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        params = MilvusClient.prepare_index_params()
        extra = {"M": 32, "efConstruction": 200} if self._index_type == "HNSW" else {}
        if self._index_type.startswith("IVF"):
            extra = {"nlist": 1024}
        params.add_index(
            field_name="vector", index_type=self._index_type, metric_type="IP", params=extra
        )
        self._client.create_collection(
            self.collection,
            schema=schema,
            index_params=params,
            consistency_level="Strong",
        )
        self._client.load_collection(self.collection)

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    @property
    def ids(self) -> np.ndarray:
        """Every template id in the collection (a full scan: used when opening)."""
        out: list[int] = []
        it = self._client.query_iterator(
            self.collection, batch_size=10_000, filter="id >= 0", output_fields=["id"]
        )
        try:
            while batch := it.next():
                out.extend(int(r["id"]) for r in batch)
        finally:
            it.close()
        return np.sort(np.asarray(out, dtype=np.int64))

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for s in range(0, ids.size, _BATCH):
            chunk = ids[s : s + _BATCH].tolist()
            rows = self._client.query(self.collection, ids=chunk, output_fields=["id"])
            found.extend(int(r["id"]) for r in rows)
        return np.asarray(found, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert rows; ids must be new and unique (checked, as the exact index does)."""
        new_ids, v = rows_to_add(ids, vectors, self._dim)
        if new_ids.size == 0:
            return
        if new_ids.min() <= self.max_id and self._existing(new_ids).size:
            raise InvalidInputError("id already in the index")
        for s in range(0, new_ids.size, _BATCH):
            rows = [
                {"id": int(i), "vector": vec}
                for i, vec in zip(
                    new_ids[s : s + _BATCH].tolist(), v[s : s + _BATCH].tolist(), strict=True
                )
            ]
            self._client.insert(self.collection, rows)
        self.max_id = max(self.max_id, int(new_ids.max()))

    def remove(self, ids: np.ndarray) -> int:
        """Delete these ids (unknown ones ignored), then request a compaction."""
        gone = _as_ids(ids)
        if gone.size == 0:
            return 0
        present = self._existing(gone)
        for s in range(0, gone.size, _BATCH):
            self._client.delete(self.collection, ids=gone[s : s + _BATCH].tolist())
        if present.size:
            # Compaction is Milvus' background job; the delete stands whatever it answers.
            with contextlib.suppress(Exception):
                self._client.compact(self.collection)
        return int(present.size)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product, scores descending; shape (m, min(k, len))."""
        q = np.asarray(queries)
        if q.ndim != 2 or q.dtype != np.float32 or not np.isfinite(q).all():
            raise InvalidInputError("queries must be a finite float32 2-d array")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise InvalidInputError("k must be a non-negative integer")
        m = q.shape[0]
        kk = min(int(k), len(self)) if k else 0
        if kk == 0 or m == 0:
            return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
        if q.shape[1] != self._dim:
            raise InvalidInputError(f"queries must have {self._dim} columns")
        params: dict[str, Any] = {"metric_type": "IP", "params": {}}
        if self._index_type == "HNSW":
            params["params"] = {"ef": max(128, kk)}
        elif self._index_type.startswith("IVF"):
            params["params"] = {"nprobe": 64}
        hits = self._client.search(
            self.collection, data=q.tolist(), limit=kk, search_params=params, output_fields=[]
        )
        scores = np.full((m, kk), -np.inf, dtype=np.float32)
        out = np.full((m, kk), -1, dtype=np.int64)
        for r, row in enumerate(hits):
            for c, hit in enumerate(list(row)[:kk]):
                out[r, c] = int(hit["id"])
                scores[r, c] = float(hit["distance"])
        return scores, out


def erase_in_collections(config: IndexConfig, ids: np.ndarray, skip: set[str]) -> None:
    """Delete template ids from every collection of this store not named in `skip`."""
    gone = _as_ids(ids)
    if gone.size == 0:
        return
    client = _client(config)
    prefix = f"{config.milvus_prefix}_"
    for name in client.list_collections():
        if name.startswith(prefix) and name[len(prefix) :] not in skip:
            for s in range(0, gone.size, _BATCH):
                client.delete(name, ids=gone[s : s + _BATCH].tolist())
