"""Which template index the store keeps, and how each backend is opened.

- `exact` (default): the in-memory brute-force `ExactIndex`, rebuilt from the database when
  another handle changed the gallery.
- `ann`: the embedded approximate index (`store.ann.AnnIndex`), kept in the data directory
  under `index/` and brought up to date with the database incrementally.
- `milvus`: a collection per model in Milvus (`store.milvus_index.MilvusIndex`): a Milvus
  cluster (`http(s)://host:19530`) or Milvus Lite, its embedded edition, on a local file.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from facetrail.errors import StoreError
from facetrail.store.ann import AnnIndex, AnnParams, erase_on_disk
from facetrail.store.index import TemplateIndex

IndexKind = Literal["exact", "ann", "milvus"]
INDEX_DIR = "index"


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """The store's index backend and its settings (see `Settings.index_config`)."""

    kind: IndexKind = "exact"
    ann: AnnParams = field(default_factory=AnnParams)
    milvus_uri: str | None = None  # a local file (Milvus Lite) or http(s)://host:19530
    milvus_token: str | None = field(default=None, repr=False)  # user:password or API key
    milvus_db: str | None = None
    milvus_prefix: str = "facetrail"
    milvus_index_type: str = "HNSW"  # HNSW, IVF_FLAT, IVF_SQ8 or FLAT

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "ann", "milvus"):
            raise StoreError(f"unknown index backend {self.kind!r}")
        if self.kind == "milvus" and not self.milvus_uri:
            raise StoreError("the milvus index needs a URI (FACETRAIL_MILVUS_URI)")


def model_slug(model: str) -> str:
    """A file- and collection-safe name for a model: readable part plus a hash."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", model).strip("_")[:40]
    return f"{readable}_{hashlib.sha256(model.encode('utf-8')).hexdigest()[:10]}"


def ann_dir(data_dir: Path, model: str) -> Path:
    return Path(data_dir) / INDEX_DIR / model_slug(model)


def _milvus_allowed(persist: bool) -> None:
    """An encrypted store must not send its templates to Milvus in the clear."""
    if not persist:
        raise StoreError(
            "this store is encrypted at rest, and the milvus index would keep its templates "
            "unencrypted in Milvus: use FACETRAIL_INDEX=ann (kept in memory only when "
            "encrypted) or exact"
        )


def open_index(
    config: IndexConfig, data_dir: Path, model: str, dim: int, *, persist: bool
) -> TemplateIndex:
    """Open (or create empty) the persistent index of `model`.

    An embedded index whose files are damaged is deleted and comes back empty, for the
    store to rebuild from the database. `persist=False` keeps an embedded index in memory
    only (an encrypted store: the index files would hold the templates in the clear).
    """
    if config.kind == "milvus":
        from facetrail.store.milvus_index import MilvusIndex

        _milvus_allowed(persist)
        return MilvusIndex.connect(config, model, dim)
    if not persist:
        return AnnIndex(dim, None, config.ann)
    path = ann_dir(data_dir, model)
    try:
        return AnnIndex.open(path, dim, config.ann)
    except StoreError:
        # Damaged or of another length: the database has every template, start over.
        shutil.rmtree(path, ignore_errors=True)
        return AnnIndex.open(path, dim, config.ann)


def build_index(
    config: IndexConfig,
    data_dir: Path,
    model: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    persist: bool,
) -> TemplateIndex:
    """A fresh index of all of `model`'s templates (first use, or after damage)."""
    dim = int(vectors.shape[1])
    if config.kind == "milvus":
        from facetrail.store.milvus_index import MilvusIndex

        _milvus_allowed(persist)
        idx = MilvusIndex.connect(config, model, dim)
        idx.add(ids, vectors)
        return idx
    path = ann_dir(data_dir, model) if persist else None
    return AnnIndex.build(dim, ids, vectors, path, config.ann)


def erase_elsewhere(config: IndexConfig, data_dir: Path, ids: np.ndarray, done: set[str]) -> None:
    """Remove these template ids from every persistent index of any model not in `done`
    (models whose loaded index already removed them): an erasure must reach the index's
    storage even where this process has no index loaded."""
    if config.kind == "ann":
        root = Path(data_dir) / INDEX_DIR
        skip = {model_slug(m) for m in done}
        if root.is_dir():
            for path in sorted(root.iterdir()):
                if path.is_dir() and path.name not in skip:
                    erase_on_disk(path, ids)
    elif config.kind == "milvus":
        from facetrail.store.milvus_index import erase_in_collections

        with contextlib.suppress(ImportError):
            erase_in_collections(config, ids, skip={model_slug(m) for m in done})
