"""The service layer's own records: users and tokens, policy, cases, approvals, watchlists,
searches with their probe faces and candidates, and review decisions.

They share the store's declarative base (one schema, one Alembic history, one transaction
for an action and its audit event), but only the service layer reads or writes them: the
store below knows nothing of users, roles or cases.

Nothing here holds a descriptor. Probe images and face crops are blobs in the store's blob
store (encrypted when a key is configured), named by their SHA-256.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from facetrail.store.models import Base, UTCDateTime, utcnow
from facetrail.store.store import register_blob_column

_AUTOINC: dict[str, Any] = {"sqlite_autoincrement": True}


class User(Base):
    """A person who uses facetrail, with one role. Never deleted, only disabled, so the
    audit trail's names keep meaning someone."""

    __tablename__ = "users"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class ApiToken(Base):
    """A bearer token: only its SHA-256 is kept (the token itself is 256 random bits, so a
    fast hash is enough; passwords get argon2)."""

    __tablename__ = "api_tokens"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    label: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PolicySetting(Base):
    """One policy value (see `service.policy.Policy`); changed only by an admin, audited."""

    __tablename__ = "policy_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=False)
    changed_by: Mapped[str] = mapped_column(String(100), nullable=False)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class Case(Base):
    """The investigative context every search belongs to."""

    __tablename__ = "cases"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    purpose: Mapped[str] = mapped_column(String(1000), nullable=False)
    legal_basis: Mapped[str] = mapped_column(String(1000), nullable=False)
    second_review: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    opened_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    closed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)


class CaseMember(Base):
    __tablename__ = "case_members"

    case_id: Mapped[int] = mapped_column(
        ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    added_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class Approval(Base):
    """An authoriser's recorded approval, within one case, to search the whole gallery
    (`scope="gallery"`) or below the policy's threshold floor (`scope="below-floor"`, down to
    `min_threshold`; None: any threshold, candidates below it listed too)."""

    __tablename__ = "approvals"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(
        ForeignKey("cases.id", ondelete="CASCADE"), nullable=False, index=True
    )
    scope: Mapped[str] = mapped_column(String(32), nullable=False)
    min_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(String(1000), nullable=False)
    approved_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class Watchlist(Base):
    """A named subset of subjects for a purpose; searchable only while authorised and not
    expired. Changing its members withdraws the authorisation."""

    __tablename__ = "watchlists"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    purpose: Mapped[str] = mapped_column(String(1000), nullable=False)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    # Who last changed the members: the authoriser must be someone else.
    changed_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    authorised_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    authorised_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WatchlistMember(Base):
    __tablename__ = "watchlist_members"

    watchlist_id: Mapped[int] = mapped_column(
        ForeignKey("watchlists.id", ondelete="CASCADE"), primary_key=True
    )
    # An erased subject leaves every watchlist with it.
    subject_id: Mapped[int] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    reason: Mapped[str] = mapped_column(String(1000), nullable=False)
    added_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class Search(Base):
    """One retrospective search in a case. Its counts outlive its results: when retention
    deletes the probes, faces and candidates, `purged_at` records it."""

    __tablename__ = "searches"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(
        ForeignKey("cases.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    watchlist_id: Mapped[int | None] = mapped_column(
        ForeignKey("watchlists.id", ondelete="SET NULL"), nullable=True
    )
    scope: Mapped[str] = mapped_column(String(32), nullable=False)  # "watchlist" | "gallery"
    approval_ids: Mapped[list[int]] = mapped_column(JSON, nullable=False, default=list)
    model: Mapped[str] = mapped_column(String(100), nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    top_k: Mapped[int] = mapped_column(Integer, nullable=False)
    # What the scores and threshold are: "cosine", or a cohort normalisation (issue 10).
    scoring: Mapped[str] = mapped_column(String(32), nullable=False, server_default="cosine")
    reason: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    probes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    faces: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    candidates: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    unmatched_faces_deleted: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ProbeMedia(Base):
    """A probe file of a search; its bytes are a blob until retention deletes them."""

    __tablename__ = "probe_media"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[int] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    # The file as a stored blob (an image with a kept face), until retention deletes it.
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, server_default="image")
    # The file's hash whether or not it is kept (videos never are: they are named by it).
    media_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    # False when a video was damaged (packets skipped, reading stopped early): its
    # appearances are what could be read, and `warnings` says what could not.
    complete: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    warnings: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class ProbeFace(Base):
    """A face found in a probe that was kept: it has candidates, or policy keeps all faces."""

    __tablename__ = "probe_faces"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    media_id: Mapped[int] = mapped_column(
        ForeignKey("probe_media.id", ondelete="CASCADE"), nullable=False, index=True
    )
    x1: Mapped[float] = mapped_column(Float, nullable=False)
    y1: Mapped[float] = mapped_column(Float, nullable=False)
    x2: Mapped[float] = mapped_column(Float, nullable=False)
    y2: Mapped[float] = mapped_column(Float, nullable=False)
    quality: Mapped[float] = mapped_column(Float, nullable=False)
    detector_score: Mapped[float] = mapped_column(Float, nullable=False)
    chip_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Video: the appearance (track) this face is the best shot of, and when it was on screen.
    track: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start: Mapped[float | None] = mapped_column(Float, nullable=True)
    end: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_time: Mapped[float | None] = mapped_column(Float, nullable=True)


class CandidateRecord(Base):
    """A probe face paired with a subject: what a reviewer decides on."""

    __tablename__ = "candidates"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    face_id: Mapped[int] = mapped_column(
        ForeignKey("probe_faces.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # After the subject is erased the candidate still says who it was about, by name only.
    subject_id: Mapped[int | None] = mapped_column(
        ForeignKey("subjects.id", ondelete="SET NULL"), nullable=True, index=True
    )
    subject_name: Mapped[str] = mapped_column(String(200), nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    fmr: Mapped[float | None] = mapped_column(Float, nullable=True)
    above_threshold: Mapped[bool] = mapped_column(Boolean, nullable=False)


class Decision(Base):
    """A reviewer's verdict on a candidate. Never edited: a change is a new row that
    `supersedes` the old one; a second reviewer's agreement is a row that `confirms` it."""

    __tablename__ = "decisions"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    verdict: Mapped[str] = mapped_column(String(32), nullable=False)
    note: Mapped[str] = mapped_column(String(2000), nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    supersedes: Mapped[int | None] = mapped_column(
        ForeignKey("decisions.id", ondelete="CASCADE"), nullable=True
    )
    confirms: Mapped[int | None] = mapped_column(
        ForeignKey("decisions.id", ondelete="CASCADE"), nullable=True
    )


class Deployment(Base):
    """A live run: a source watched against an authorised watchlist until an end time. Its
    counters outlive its alerts (retention deletes those), so the transparency report stands."""

    __tablename__ = "deployments"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    watchlist_id: Mapped[int | None] = mapped_column(
        ForeignKey("watchlists.id", ondelete="SET NULL"), nullable=True
    )
    watchlist_name: Mapped[str] = mapped_column(String(100), nullable=False)
    # The source as given, without any user:password@ (credentials are never stored).
    source: Mapped[str] = mapped_column(String(1000), nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    started_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    until: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # "running", "stopped", "ended" or "interrupted"
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    # When the process running it last wrote its counters (a heartbeat), and which process
    # that is ("host:pid"; None while no process runs it).
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Started by the service from a source without credentials: a restart resumes it.
    resumable: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    resumed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Where it watched (free text, as the transparency report shows it) and how many subjects
    # its watchlist held when it started.
    location: Mapped[str | None] = mapped_column(String(200), nullable=True)
    watchlist_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    frames_received: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    frames_dropped: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    frames_analysed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    faces_seen: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    alerts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    confirmed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    false_alerts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class Alert(Base):
    """A track of a live deployment that matched a watchlist subject; kept (with its best
    shot) for the policy's `alert_retention_hours`, then deleted."""

    __tablename__ = "alerts"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    subject_id: Mapped[int | None] = mapped_column(
        ForeignKey("subjects.id", ondelete="SET NULL"), nullable=True, index=True
    )
    subject_name: Mapped[str] = mapped_column(String(200), nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    fmr: Mapped[float | None] = mapped_column(Float, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    time: Mapped[float] = mapped_column(Float, nullable=False)  # seconds into the stream
    track: Mapped[int] = mapped_column(Integer, nullable=False)
    best_shot_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)  # confirmed | false
    note: Mapped[str | None] = mapped_column(String(2000), nullable=True)  # the action taken


# Probe images and face crops are blobs too: sweeps after an erasure must keep them.
register_blob_column(ProbeMedia.sha256)
register_blob_column(ProbeFace.chip_sha256)
register_blob_column(Alert.best_shot_sha256)


class CohortFace(Base):
    """A face of someone who is not a subject, kept only as a descriptor to normalise search
    scores against (issue 10; `service.cohort`). `vector` is sealed like a template when a
    key is configured; the image itself is not kept, only its hash and where it came from."""

    __tablename__ = "cohort_faces"
    __table_args__ = (_AUTOINC,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(100), nullable=False, index=True)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    source: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    quality: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_by: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
