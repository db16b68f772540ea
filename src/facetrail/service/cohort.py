"""The score-normalisation cohort (issue 10): faces of people who are not subjects.

Search scores are normalised against this cohort (AS-norm + cosine by default,
`vision.normalisation`) when it exists and the configuration asks for it. The cohort holds
descriptors only: the image each came from is named by its hash and its source (the folder
given to `facetrail cohort build`), never kept. Descriptors are sealed like templates when a
key is configured; erasing a source deletes its rows, and on SQLite the WAL is checkpointed so
the bytes do not linger there (secure_delete zeroes the freed pages).

The gallery side of AS-norm (each template's statistics against the cohort) is kept by
`GalleryStats`, per model and cohort version: when the store's generation moves (subjects
enrolled or erased, by this process or another), only the templates it has not seen are
scored against the cohort, and erased ones are dropped, so a search never pays for it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from facetrail.errors import FacetrailError, InvalidInputError, NotFoundError
from facetrail.media import IMAGE_SUFFIXES, load_image
from facetrail.service.enrol import reason_of, reference_face
from facetrail.service.tables import CohortFace
from facetrail.store import Store
from facetrail.vision.compare import normalise
from facetrail.vision.normalisation import (
    DEFAULT_TOP_K,
    CohortStats,
    cohort_stats,
    normalise_with,
)
from facetrail.vision.pipeline import FaceAnalyzer

MAX_SOURCE = 255
WRITE_BATCH = 256


def _context_model(model: str) -> str:
    # Sealed cohort vectors are bound to "cohort/<model>", so a cohort row can never be
    # passed off as a template (whose associated data names the model alone), nor back.
    return f"cohort/{model}"


@dataclass(frozen=True)
class CohortBuildReport:
    source: str
    model: str
    images: int
    added: int
    duplicates: int  # images already in the cohort for this model
    skipped: list[dict[str, str]] = field(default_factory=list)  # image, reason


@dataclass(frozen=True)
class CohortSource:
    source: str
    model: str
    faces: int
    created_by: str
    first_added: datetime
    last_added: datetime


@dataclass(frozen=True)
class CohortErasure:
    source: str | None
    faces: int
    sources: list[str]
    wal_checkpointed: bool | None


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def check_source(source: str) -> str:
    source = source.strip()
    if not source or len(source) > MAX_SOURCE or any(ord(c) < 32 for c in source):
        raise InvalidInputError(f"cohort source must be 1-{MAX_SOURCE} printable characters")
    return source


def build(
    store: Store,
    analyzer: FaceAnalyzer,
    folder: Path,
    *,
    source: str,
    created_by: str,
    max_pixels: int,
    max_bytes: int,
    min_quality: float,
    on_write: Callable[[Session, int], None],
    progress: Callable[[int], None] | None = None,
) -> CohortBuildReport:
    """Describe the one clear face of every image under `folder` and add it to the cohort.
    `on_write(session, added)` runs in each writing transaction (the audit event)."""
    source = check_source(source)
    paths = images_in(folder)
    if not paths:
        raise InvalidInputError(f"{folder}: no image files")
    model = analyzer.model_id
    skipped: list[dict[str, str]] = []
    rows: list[dict] = []

    def prepare(path: Path) -> tuple[np.ndarray, str]:
        loaded = load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
        return loaded.pixels, loaded.sha256

    def select_face(faces, pixels):  # type: ignore[no-untyped-def]
        return reference_face(faces, min_quality)

    for result in analyzer.stream(paths, prepare, mode="primary", select=select_face):
        if progress:
            progress(1)
        if result.error is not None:
            skipped.append({"image": str(result.item), "reason": reason_of(result.error)})
            continue
        faces = result.faces
        assert faces is not None and faces.descriptors is not None
        rows.append(
            _row(
                model,
                faces.descriptors[0],
                source,
                str(result.extra),
                float(faces.quality[0]),
                created_by,
            )
        )
    added, duplicates = _write(store, model, rows, on_write)
    return CohortBuildReport(source, model, len(paths), added, duplicates, skipped)


def _row(model: str, vector: np.ndarray, source: str, sha: str, quality: float, by: str) -> dict:
    vector = normalise(vector[None])[0].astype("<f4")
    return {
        "model": model,
        "dim": int(vector.shape[0]),
        "plain": vector.tobytes(),
        "source": source,
        "image_sha256": sha,
        "quality": float(quality),
        "created_by": by,
    }


def _write(
    store: Store, model: str, rows: list[dict], on_write: Callable[[Session, int], None]
) -> tuple[int, int]:
    """Seal and insert `rows` in one transaction, skipping images already in the model's
    cohort; `on_write(session, added)` runs inside it. Returns (added, duplicates)."""
    duplicates = 0
    with store.session() as s:
        known = set(s.scalars(select(CohortFace.image_sha256).where(CohortFace.model == model)))
        fresh = []
        for row in rows:
            if row["image_sha256"] in known:
                duplicates += 1
                continue
            known.add(row["image_sha256"])
            plain = row.pop("plain")
            row["vector"] = store._seal_template(plain, _context_model(model))
            fresh.append(row)
        for start in range(0, len(fresh), WRITE_BATCH):
            s.add_all(CohortFace(**r) for r in fresh[start : start + WRITE_BATCH])
        on_write(s, len(fresh))
    return len(fresh), duplicates


@dataclass(frozen=True)
class CaseFace:
    """A kept probe face of a closed case that may join the cohort (see `closed_case_faces`)."""

    case: str
    chip_sha256: str
    quality: float


def case_source(reference: str) -> str:
    return check_source(f"case {reference}")


def build_from_cases(
    store: Store,
    analyzer: FaceAnalyzer,
    faces: list[CaseFace],
    *,
    created_by: str,
    on_write: Callable[[Session, str, int], None],
    progress: Callable[[int], None] | None = None,
) -> list[CohortBuildReport]:
    """Describe the stored chips of `faces` and add them to the cohort, one source per case
    ("case REFERENCE"). Only the descriptor is kept, named by the chip's hash."""
    model = analyzer.model_id
    size = analyzer.descriptor.chip_size
    reports = []
    by_case: dict[str, list[CaseFace]] = {}
    for face in faces:
        by_case.setdefault(face.case, []).append(face)
    for reference, group in by_case.items():
        source = case_source(reference)
        rows: list[dict] = []
        skipped: list[dict[str, str]] = []
        # A batch of chips at a time: a large case never holds all its chips in memory.
        for start in range(0, len(group), WRITE_BATCH):
            chips, kept = [], []
            for face in group[start : start + WRITE_BATCH]:
                chip = _chip(store, face.chip_sha256, size)
                if chip is None:
                    reason = "stored chip unreadable, or of another model's size"
                    skipped.append({"image": face.chip_sha256, "reason": reason})
                else:
                    chips.append(chip)
                    kept.append(face)
                if progress:
                    progress(1)
            if chips:
                vectors = analyzer.descriptor.describe(np.stack(chips))
                rows += [
                    _row(model, v, source, f.chip_sha256, f.quality, created_by)
                    for v, f in zip(vectors, kept, strict=True)
                ]
        added, duplicates = _write(store, model, rows, lambda s, n, src=source: on_write(s, src, n))
        reports.append(CohortBuildReport(source, model, len(group), added, duplicates, skipped))
    return reports


def _chip(store: Store, sha: str, size: int) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(store.blobs.get(sha))) as image:
            chip = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, FacetrailError):
        return None
    return chip if chip.shape == (size, size, 3) else None


def seal_existing(store: Store, s: Session) -> int:
    """Seal the cohort rows written before a key was configured, in `s`; returns how many."""
    return store.seal_plain_vectors(s, CohortFace, _context_model)


def sources(s: Session) -> list[CohortSource]:
    stmt = (
        select(
            CohortFace.source,
            CohortFace.model,
            func.count(CohortFace.id),
            func.min(CohortFace.created_by),
            func.min(CohortFace.created_at),
            func.max(CohortFace.created_at),
        )
        .group_by(CohortFace.source, CohortFace.model)
        .order_by(CohortFace.source, CohortFace.model)
    )
    return [CohortSource(r[0], r[1], int(r[2]), r[3], r[4], r[5]) for r in s.execute(stmt)]


def source(s: Session, name: str) -> list[CohortSource]:
    found = [c for c in sources(s) if c.source == name]
    if not found:
        raise NotFoundError(f"no cohort source named {name!r}")
    return found


def erase(s: Session, name: str | None) -> tuple[int, list[str]]:
    """Delete the cohort faces of one source (None: all of them); (faces, sources)."""
    where = [] if name is None else [CohortFace.source == name]
    names = sorted(set(s.scalars(select(CohortFace.source).where(*where))))
    if name is not None and not names:
        raise NotFoundError(f"no cohort source named {name!r}")
    n = int(s.scalar(select(func.count()).select_from(CohortFace).where(*where)) or 0)
    s.execute(delete(CohortFace).where(*where))
    return n, names


@dataclass(frozen=True)
class Cohort:
    """The cohort of one model, loaded: unit vectors, and a version that changes whenever
    faces are added or erased (count and highest id: ids are never reused)."""

    model: str
    vectors: np.ndarray  # (n, dim) float32
    version: tuple[int, int]


def version(s: Session, model: str) -> tuple[int, int]:
    row = s.execute(
        select(func.count(CohortFace.id), func.max(CohortFace.id)).where(CohortFace.model == model)
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


def load(store: Store, model: str) -> Cohort:
    with store.session(write=False) as s:
        rows = s.execute(
            select(CohortFace.id, CohortFace.dim, CohortFace.vector)
            .where(CohortFace.model == model)
            .order_by(CohortFace.id)
        ).all()
    if not rows:
        return Cohort(model, np.zeros((0, 0), np.float32), (0, 0))
    dim = int(rows[0][1])
    plain = store._open_templates(
        [r[2] for r in rows], _context_model(model), dim, [int(r[0]) for r in rows]
    )
    vectors = np.frombuffer(bytearray().join(plain), "<f4").reshape(len(rows), dim)
    return Cohort(model, vectors.astype(np.float32), (len(rows), int(rows[-1][0])))


class GalleryStats:
    """Each template's top-k cohort statistics, kept current with the store (see module).

    One per shared store handle; thread-safe. `normaliser(store, model, top_k)` returns what a
    search needs, or None when the model has no cohort of at least `top_k` faces."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cohorts: dict[str, Cohort] = {}
        # model -> (cohort version, top_k, store generation, sorted template ids, stats)
        self._stats: dict[str, tuple[tuple[int, int], int, int, np.ndarray, CohortStats]] = {}

    def cohort(self, store: Store, model: str) -> Cohort:
        with store.session(write=False) as s:
            current = version(s, model)
        with self._lock:
            cached = self._cohorts.get(model)
            if cached is None or cached.version != current:
                cached = load(store, model)
                self._cohorts[model] = cached
                self._stats.pop(model, None)
            return cached

    def normaliser(
        self, store: Store, model: str, top_k: int, method: str = "as-norm+cosine"
    ) -> Normaliser | None:
        cohort = self.cohort(store, model)
        if len(cohort.vectors) < top_k:
            return None
        generation = store.generation()
        with self._lock:
            kept = self._stats.get(model)
            if kept is None or kept[0] != cohort.version or kept[1] != top_k:
                kept = (cohort.version, top_k, -1, np.zeros(0, np.int64), CohortStats.concat([]))
            if kept[2] != generation:
                kept = self._refresh(store, model, cohort, top_k, generation, kept)
                self._stats[model] = kept
            _, _, _, ids, stats = kept
        return Normaliser(cohort, top_k, ids, stats, method)

    @staticmethod
    def _refresh(
        store: Store,
        model: str,
        cohort: Cohort,
        top_k: int,
        generation: int,
        kept: tuple[tuple[int, int], int, int, np.ndarray, CohortStats],
    ) -> tuple[tuple[int, int], int, int, np.ndarray, CohortStats]:
        # Only templates not seen before are scored against the cohort; erased ones go.
        matrix = store.templates(model)
        old_ids, old_stats = kept[3], kept[4]
        keep = np.isin(old_ids, matrix.template_ids)
        new = ~np.isin(matrix.template_ids, old_ids)
        fresh = (
            cohort_stats(matrix.vectors[new], cohort.vectors, top_k)
            if new.any()
            else CohortStats.concat([])
        )
        ids = np.concatenate([old_ids[keep], matrix.template_ids[new]])
        stats = CohortStats.concat([old_stats.take(np.flatnonzero(keep)), fresh])
        order = np.argsort(ids, kind="stable")
        return cohort.version, top_k, generation, ids[order], stats.take(order)


@dataclass(frozen=True)
class Normaliser:
    """AS-norm (or AS-norm + cosine) for one search: the cohort, and every template's
    statistics by id. The formula is `vision.normalisation.normalise_scores`'s, applied to a
    pool of templates that differs per probe."""

    cohort: Cohort
    top_k: int
    template_ids: np.ndarray  # sorted
    template_stats: CohortStats
    method: str = "as-norm+cosine"

    def __post_init__(self) -> None:
        if self.method not in ("as-norm", "as-norm+cosine"):
            raise InvalidInputError(f"unknown score normalisation {self.method!r}")

    def normalise(self, queries: np.ndarray, raw: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Normalised scores of `raw` (queries x k) whose templates are `ids` (-1: padding)."""
        probe = cohort_stats(queries, self.cohort.vectors, self.top_k)
        p_mean, p_std = probe.mean[:, None], probe.std[:, None]
        pos = np.clip(np.searchsorted(self.template_ids, ids), 0, len(self.template_ids) - 1)
        found = (ids >= 0) & (self.template_ids[pos] == ids)
        # A template enrolled after these statistics were taken (a race with an enrolment)
        # is judged on the probe side alone rather than dropped: given the probe's statistics
        # in place of its own, its two sides agree. Padding stays -inf.
        mean = np.where(found, self.template_stats.mean[pos], p_mean)
        std = np.where(found, self.template_stats.std[pos], p_std)
        out = normalise_with(
            np.asarray(raw, np.float64),
            self.method,
            (p_mean, p_std),
            (mean, std),  # type: ignore[arg-type]
        )
        return np.where(ids >= 0, out, -np.inf)


__all__ = [
    "DEFAULT_TOP_K",
    "Cohort",
    "CohortBuildReport",
    "CohortErasure",
    "CohortSource",
    "GalleryStats",
    "Normaliser",
    "build",
    "erase",
    "load",
    "sources",
]
