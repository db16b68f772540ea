"""Persistence: gallery metadata in SQL, image bytes in a blob store, templates in an index.

Knows nothing about users, roles or policy; the service layer calls it.
"""

from __future__ import annotations

from facetrail.store.audit import AuditRecord, ChainReport
from facetrail.store.blobs import BlobStore
from facetrail.store.index import ExactIndex, TemplateIndex
from facetrail.store.records import (
    AddedReference,
    ErasureReport,
    FaceDetail,
    FaceRecord,
    ImageDetail,
    ImageRecord,
    NewReference,
    SubjectDetail,
    SubjectSummary,
    TemplateImport,
    TemplateMatrix,
    TemplateSet,
)
from facetrail.store.store import SQLITE_PRAGMAS, Store, alembic_config

__all__ = [
    "SQLITE_PRAGMAS",
    "AddedReference",
    "AuditRecord",
    "BlobStore",
    "ChainReport",
    "ErasureReport",
    "ExactIndex",
    "FaceDetail",
    "FaceRecord",
    "ImageDetail",
    "ImageRecord",
    "NewReference",
    "Store",
    "SubjectDetail",
    "SubjectSummary",
    "TemplateImport",
    "TemplateIndex",
    "TemplateMatrix",
    "TemplateSet",
    "alembic_config",
]
