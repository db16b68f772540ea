"""ORM models of the gallery schema.

Generic SQLAlchemy types only, so the same models serve SQLite and PostgreSQL. Every change
to the schema goes through an Alembic migration in `migrations/versions`; a test checks that
the migrations and these models agree. Constraint names come from one naming convention so
that future migrations (and SQLite's batch mode) can refer to them by name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# AUTOINCREMENT on SQLite so that ids of erased rows are never handed out again: an audit
# event or a stale index that names template 42 must never come to mean somebody else.
_TABLE_ARGS: dict[str, Any] = {"sqlite_autoincrement": True}

GENERATION_KEY = "generation"


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite keeps no zone, PostgreSQL does; this makes both behave the same to callers.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Subject(Base):
    """A known person in the gallery."""

    __tablename__ = "subjects"
    __table_args__ = (_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    # When the record must be reviewed (kept only if renewed); None: the policy's period
    # from `created_at` applies.
    review_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    images: Mapped[list[Image]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", passive_deletes=True
    )


class Image(Base):
    """A reference image of a subject; its bytes live in the blob store under `sha256`."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("subject_id", "sha256"), _TABLE_ARGS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("subjects.id", ondelete="CASCADE"), nullable=False
    )
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

    subject: Mapped[Subject] = relationship(back_populates="images")
    faces: Mapped[list[Face]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class Face(Base):
    """One detected face in a reference image."""

    __tablename__ = "faces"
    __table_args__ = (_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True
    )
    x1: Mapped[float] = mapped_column(Float, nullable=False)
    y1: Mapped[float] = mapped_column(Float, nullable=False)
    x2: Mapped[float] = mapped_column(Float, nullable=False)
    y2: Mapped[float] = mapped_column(Float, nullable=False)
    landmarks: Mapped[list[list[float]]] = mapped_column(JSON, nullable=False)
    detector_score: Mapped[float] = mapped_column(Float, nullable=False)
    quality: Mapped[float] = mapped_column(Float, nullable=False)
    chip_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    image: Mapped[Image] = relationship(back_populates="faces")
    templates: Mapped[list[Template]] = relationship(
        back_populates="face", cascade="all, delete-orphan", passive_deletes=True
    )


class Template(Base):
    """A stored descriptor: `dim` little-endian float32 values in `vector`.

    `subject_id` repeats what face -> image -> subject already says, so that the index can map
    template ids to subjects from one table. An imported template (migrated from another
    system) has no face here: `face_id` is None and `image_sha256` may name its source image.
    """

    __tablename__ = "templates"
    __table_args__ = (_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    face_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("faces.id", ondelete="CASCADE"), nullable=True, index=True
    )
    subject_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("subjects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    model: Mapped[str] = mapped_column(String(100), nullable=False, index=True)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    image_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    face: Mapped[Face | None] = relationship(back_populates="templates")


class StoreState(Base):
    """Small key/value counters; `generation` changes with every change to templates."""

    __tablename__ = "store_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, nullable=False)


class AuditEvent(Base):
    """One entry of the append-only audit trail, chained to the one before by SHA-256.

    `seq` counts from 1 without gaps; `hash` covers this event's fields and the previous
    event's hash, so editing, deleting, inserting or reordering rows breaks the chain.
    Events name objects by id and hash, never carry an image or a descriptor.
    """

    __tablename__ = "audit_events"
    __table_args__ = _TABLE_ARGS

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    case_ref: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    object_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    object_ids: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    reason: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
