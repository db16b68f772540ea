"""Plain values that cross the store's boundary.

The service layer and front doors get these frozen dataclasses, never ORM objects, so a
detached row can't lazy-load behind their back and nothing outside `store` depends on the
schema. Byte and vector fields are left out of repr and equality: an error message or log
line must never carry a face image or a descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An original reference image: its content address, metadata and exact file bytes."""

    sha256: str
    name: str
    format: str
    width: int
    height: int
    data: bytes = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """One detected face of an `ImageRecord`, with its aligned chip and descriptor."""

    box: Box
    landmarks: list[Point] | tuple[Point, ...]
    detector_score: float
    quality: float
    chip_image: bytes | None = field(repr=False, compare=False)
    descriptor: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NewReference:
    """One reference image to enrol: the subject it shows, its image and its faces."""

    subject: str
    reference: str | None
    image: ImageRecord
    faces: tuple[FaceRecord, ...]


@dataclass(frozen=True, slots=True)
class AddedReference:
    """What `Store.add_reference` did; `duplicate` means the image was already enrolled."""

    subject_id: int
    subject: str
    image_id: int
    face_ids: tuple[int, ...]
    template_ids: tuple[int, ...]
    duplicate: bool
    created_subject: bool
    generation: int


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """Counts of what `Store.erase_subject` removed, for the audit trail.

    `blobs` and `wal_checkpointed` are None when the erasure ran inside a caller's session:
    blob deletion and the WAL checkpoint then happen after that session commits.
    `wal_checkpointed` is also None on databases other than SQLite.
    """

    subject_id: int
    subject: str
    images: int
    faces: int
    templates: int
    blobs: int | None
    wal_checkpointed: bool | None
    generation: int


@dataclass(frozen=True, slots=True)
class SubjectSummary:
    """One gallery subject as a listing shows it."""

    id: int
    name: str
    reference: str | None
    created_at: datetime
    images: int
    templates: int


@dataclass(frozen=True, slots=True)
class FaceDetail:
    """A stored face, without its descriptor (templates are read through `Store.templates`)."""

    id: int
    box: Box
    landmarks: tuple[Point, ...]
    detector_score: float
    quality: float
    chip_sha256: str | None
    templates: int


@dataclass(frozen=True, slots=True)
class ImageDetail:
    """A stored reference image and its faces; the bytes are in the blob store under sha256."""

    id: int
    sha256: str
    name: str
    format: str
    width: int
    height: int
    created_at: datetime
    faces: tuple[FaceDetail, ...]


@dataclass(frozen=True, slots=True)
class SubjectDetail:
    """One subject with all its reference images and faces."""

    id: int
    name: str
    reference: str | None
    created_at: datetime
    images: tuple[ImageDetail, ...]


@dataclass(frozen=True, eq=False)
class TemplateMatrix:
    """All templates of one model as contiguous arrays, ready to build an index from.

    Row i of `vectors` is template `template_ids[i]` of subject `subject_ids[i]`, with exactly
    the float32 values that were stored.
    """

    model: str
    dim: int
    template_ids: np.ndarray = field(repr=False)
    subject_ids: np.ndarray = field(repr=False)
    vectors: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.template_ids.shape[0])


@dataclass(frozen=True, eq=False)
class TemplateSet:
    """Templates of one model with whom they belong to, as bulk import and export move them
    (a migration from or to another system). Row i of `vectors` (float32, unit length) is a
    template of subject `subjects[i]`, whose reference number is `references[i]`, described
    from the image whose sha256 is `image_sha256[i]` (None where unknown)."""

    model: str
    subjects: tuple[str, ...]
    references: tuple[str | None, ...]
    image_sha256: tuple[str | None, ...]
    vectors: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.subjects)


@dataclass(frozen=True, slots=True)
class TemplateImport:
    """What `Store.import_templates` did: templates `added` (ids in `template_ids`), exact
    copies of templates the subject already had (or of an earlier row) skipped as
    `duplicates`, the subjects the set names (`subject_ids`) and how many were new."""

    model: str
    added: int
    duplicates: int
    subject_ids: tuple[int, ...]
    created_subjects: int
    template_ids: tuple[int, ...]
    generation: int
