"""`Facetrail`: the use cases over one data directory, and what `facetrail.open()` returns.

Every front door (CLI, Python, HTTP) goes through this object, and this is the only place
that checks policy. Each method: checks the caller's role (`access.require`), checks the
rules (case, approvals, watchlist authorisation, threshold floor), does the work, and appends
its audit event in the same transaction, so an action and its record commit together or not
at all. A `Facetrail` is bound to one caller; `as_caller` gives another caller a handle on
the same store and models (one per HTTP request, say). Models load on first use.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from facetrail.config import Settings
from facetrail.errors import (
    AuthenticationError,
    FacetrailError,
    InvalidInputError,
    NotFoundError,
    PolicyError,
)
from facetrail.evaluation.calibrate import OWN_DATA
from facetrail.files import write_atomic
from facetrail.media.chips import as_png
from facetrail.service import (
    accounts,
    cases,
    clustering,
    cohort,
    live,
    retention,
    review,
    sheets,
    transfer,
    watchlists,
)
from facetrail.service import enrol as enrolment
from facetrail.service import policy as policies
from facetrail.service import search as searching
from facetrail.service.access import SYSTEM, Caller, Op, Role, authenticated, require
from facetrail.service.evaluation_desk import EvaluationDesk
from facetrail.service.footage import VideoOptions, VideoProgress
from facetrail.service.live_desk import LiveDesk
from facetrail.service.live_events import EventHub
from facetrail.service.results import (
    EnrolItemResult,
    EnrolReport,
    ProbeResult,
    SearchReport,
    VerifyReport,
)
from facetrail.service.tables import (
    CandidateRecord,
    Case,
    ProbeFace,
    ProbeMedia,
    User,
)
from facetrail.service.webhook import WebhookSender
from facetrail.store import (
    AuditRecord,
    ChainReport,
    ErasureReport,
    Store,
    SubjectDetail,
    SubjectSummary,
)
from facetrail.store.models import Subject, utcnow
from facetrail.vision.calibration import (
    calibration_file,
    find_calibration,
    normalised_model,
)
from facetrail.vision.descriptor import DescriptorModel
from facetrail.vision.detector import DetectorKind, build_detector
from facetrail.vision.pipeline import FaceAnalyzer
from facetrail.vision.tracker import TrackerConfig

if TYPE_CHECKING:  # the reports load Jinja: only when one is asked for
    from facetrail.reports.case import CaseReport
    from facetrail.reports.transparency import TransparencyReport

RETENTION_ACTIONS = ("retention.purge", "retention.erase", "retention.alerts", "retention.run")


@dataclasses.dataclass(frozen=True)
class Appearance:
    """A kept probe face of a search (in a video: one appearance, a track) with its
    candidates' ids, best first, and for videos when it was on screen."""

    face: int
    candidates: list[int]
    track: int | None
    start: float | None
    end: float | None
    best_time: float | None


@dataclasses.dataclass(frozen=True)
class ProbeMediaView:
    """A searched file as a timeline shows it: its name, kind, length and appearances."""

    name: str
    kind: str  # "image" or "video"
    duration: float | None
    complete: bool
    error: str | None
    appearances: list[Appearance]


class _Shared:
    """What every caller's handle on one data directory shares: the store and the models."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store.open(
            settings.data,
            settings.database(),
            key=settings.encryption_key_bytes(),
            index=settings.index_config(),
        )
        self._lock = threading.Lock()
        self._analyzer: FaceAnalyzer | None = None
        self._video_analyzer: FaceAnalyzer | None = None
        self._live_analyzer: FaceAnalyzer | None = None
        # Live deployments run by this process: id -> (runner, its thread or None).
        self.live: dict[int, tuple[live.LiveRunner, threading.Thread | None]] = {}
        self.live_lock = threading.Lock()
        self.hub = EventHub()
        self.webhook: WebhookSender | None = None
        # Templates' cohort statistics for AS-norm, kept current with the store (issue 10).
        self.cohort_stats = cohort.GalleryStats()

    @property
    def analyzer(self) -> FaceAnalyzer:
        with self._lock:  # built once, on first use, whichever caller's thread asks first
            if self._analyzer is None:
                self._analyzer = FaceAnalyzer(self.settings)
            return self._analyzer

    @property
    def video_analyzer(self) -> FaceAnalyzer:
        """The same descriptor behind the retrospective video detector (the CNN on a GPU,
        HOG on a CPU, unless configured): its own smallest face and pixel budget per frame."""
        with self._lock:
            if self._video_analyzer is None:
                self._video_analyzer = self._frames_analyzer(self.settings.video_detector_kind())
            return self._video_analyzer

    @property
    def live_analyzer(self) -> FaceAnalyzer:
        """The same for live streams, whose detector (HOG by default) keeps alerts fast."""
        with self._lock:
            if self._live_analyzer is None:
                self._live_analyzer = self._frames_analyzer(self.settings.live_detector)
            return self._live_analyzer

    def _frames_analyzer(self, kind: DetectorKind) -> FaceAnalyzer:
        s = self.settings
        detector = build_detector(
            kind, s.video_min_face, s.video_detect_pixels, grey=True, providers=s.providers
        )
        return FaceAnalyzer(s, detector=detector, descriptor=self._descriptor())

    def _descriptor(self) -> DescriptorModel:
        # Called under self._lock: build the still-image analyzer's descriptor once and share it.
        if self._analyzer is None:
            self._analyzer = FaceAnalyzer(self.settings)
        return self._analyzer.descriptor


@dataclasses.dataclass(frozen=True)
class AuditPage:
    events: list[dict]  # newest first, as `export_audit` gives them
    total: int  # events matching the filters
    page: int
    pages: int
    actions: list[str]  # every action in the trail, for choosing a filter


class Facetrail(LiveDesk, EvaluationDesk):
    def __init__(
        self, settings: Settings, *, token: str | None = None, _shared: _Shared | None = None
    ) -> None:
        self.settings = settings
        self._shared = _shared or _Shared(settings)
        self._owner = _shared is None
        self.caller: Caller | None = None
        if _shared is None:
            try:
                self.apply_retention()
                self._orphans()
                if token is not None:
                    self.use_token(token)
            except BaseException:
                self.close()
                raise

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self._owner:
            with self._shared.live_lock:
                running = list(self._shared.live.values())
            for runner, thread in running:
                runner.stop(shutdown=True)
                if thread is not None:
                    thread.join(timeout=30)
            if self._shared.webhook is not None:
                self._shared.webhook.close()
            self._shared.store.close()

    def __enter__(self) -> Facetrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        return self._shared.store

    @property
    def analyzer(self) -> FaceAnalyzer:
        return self._shared.analyzer

    def as_caller(self, caller: Caller | None) -> Facetrail:
        """A handle for `caller` (None: nobody yet, to `login`) sharing this one's store and
        models; closing it closes nothing."""
        other = Facetrail(self.settings, _shared=self._shared)
        other.caller = caller
        return other

    # -- plumbing --------------------------------------------------------------------------
    def _current(self) -> Caller:
        """The caller, after checking again that their token and account still stand."""
        caller = authenticated(self.caller)
        if caller.token_id is not None:
            with self._read() as s:
                accounts.recheck(s, caller)
        return caller

    def _need(self, op: Op) -> Caller:
        return require(self._current(), op)

    def require(self, op: Op) -> Caller:
        """The caller, if their role allows `op`. Front doors that receive files for an
        operation (HTTP uploads) ask first, so a refused caller's files are never stored;
        the operation checks again."""
        return self._need(op)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self.store.session() as s:
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self.store.session(write=False) as s:
            yield s

    def _audit(
        self,
        s: Session,
        caller: Caller,
        action: str,
        object_type: str | None = None,
        ids: Iterable[Any] = (),
        *,
        case: str | None = None,
        reason: str | None = None,
        **details: Any,
    ) -> None:
        record = AuditRecord(
            caller.name, action, object_type, list(ids), reason, details, caller.role.value, case
        )
        self.store.audit(record, session=s)

    def _policy(self, s: Session | None = None) -> policies.Policy:
        if s is not None:
            return policies.load(s)
        with self._read() as r:
            return policies.load(r)

    # -- accounts --------------------------------------------------------------------------
    def init(self, admin: str, password: str) -> accounts.IssuedToken:
        """Create the first administrator and write the default policy (a new directory
        only); the new admin is logged in."""
        with self._write() as s:
            if accounts.count_users(s):
                raise PolicyError("this data directory already has users: log in instead")
            default = policies.Policy()
            user = accounts.add_user(
                s, admin, Role.ADMIN, accounts.hash_password(password, default.min_password_length)
            )
            for key, value in default.model_dump().items():
                policies.save(s, key, value, admin)
            issued = accounts.issue_token(s, user, "init", default.token_days)
            self.caller = Caller(user.id, user.name, Role.ADMIN, issued.info.id)
            self._audit(s, self.caller, "init", "user", [user.id], policy=default.model_dump())
        return issued

    def login(self, name: str, password: str, *, label: str = "login") -> accounts.IssuedToken:
        """Check the password and issue a token; this handle then acts as that user."""
        try:
            with self._write() as s:
                user = accounts.check_password(s, name, password)
                issued = accounts.issue_token(s, user, label, self._policy(s).token_days)
                caller = Caller(user.id, user.name, Role(user.role), issued.info.id)
                self._audit(s, caller, "login", "user", [user.id], token=issued.info.id)
        except AuthenticationError:
            # The failure is recorded under the name only if it is a real user's (a password
            # typed into the name field must not land in the trail).
            with self._write() as s:
                known = s.scalar(select(User.id).where(User.name == name)) is not None
                record = AuditRecord(name if known else "unknown", "login.failed", "user")
                self.store.audit(record, session=s)
            raise
        self.caller = caller
        return issued

    def use_token(self, token: str) -> Caller:
        with self._read() as s:
            self.caller = accounts.caller_for_token(s, token)
        return self.caller

    def logout(self) -> None:
        caller = self._current()
        if caller.token_id is None:
            raise AuthenticationError("not logged in with a token")
        with self._write() as s:
            accounts.revoke(s, caller.token_id, caller.user_id)
            self._audit(s, caller, "logout", "token", [caller.token_id])
        self.caller = None

    def whoami(self) -> accounts.UserInfo:
        caller = self._current()
        with self._read() as s:
            return accounts.user_info(accounts.get_user(s, caller.name))

    def add_user(self, name: str, role: str, password: str) -> accounts.UserInfo:
        caller = self._need(Op.USERS)
        with self._write() as s:
            pw = accounts.hash_password(password, self._policy(s).min_password_length)
            user = accounts.add_user(s, name, accounts.parse_role(role), pw)
            self._audit(s, caller, "user.add", "user", [user.id], name=name, new_role=role)
            return accounts.user_info(user)

    def users(self) -> list[accounts.UserInfo]:
        self._need(Op.USERS)
        with self._read() as s:
            return [accounts.user_info(u) for u in s.scalars(select(User).order_by(User.id))]

    def set_user(
        self,
        name: str,
        *,
        role: str | None = None,
        active: bool | None = None,
        password: str | None = None,
    ) -> accounts.UserInfo:
        """Change a user's role, enable or disable them, or reset their password; a
        disabled account's tokens are revoked."""
        caller = self._need(Op.USERS)
        with self._write() as s:
            user = accounts.get_user(s, name)
            changes: dict[str, Any] = {}
            if role is not None:
                user.role = changes["new_role"] = accounts.parse_role(role).value
            if active is not None:
                if not active and user.id == caller.user_id:
                    raise PolicyError("an administrator cannot disable their own account")
                user.active = changes["active"] = active
            if password is not None:
                policy = self._policy(s)
                user.password_hash = accounts.hash_password(password, policy.min_password_length)
                changes["password"] = "reset"
            if not changes:
                raise InvalidInputError("nothing to change")
            if role is not None or active is False or password is not None:
                changes["tokens_revoked"] = accounts.revoke_all(s, user.id)
            self._audit(s, caller, "user.change", "user", [user.id], **changes)
            return accounts.user_info(user)

    def create_token(self, label: str, days: int | None = None) -> accounts.IssuedToken:
        """A new token for the caller (for scripts), valid at most the policy's days."""
        caller = self._current()
        with self._write() as s:
            limit = self._policy(s).token_days
            if days is not None and not 0 < days <= limit:
                raise PolicyError(f"policy allows tokens of 1 to {limit} days")
            user = accounts.get_user(s, caller.name)
            issued = accounts.issue_token(s, user, label, days or limit)
            self._audit(s, caller, "token.create", "token", [issued.info.id], label=label)
        return issued

    def tokens(self) -> list[accounts.TokenInfo]:
        """The caller's tokens (an administrator sees everyone's)."""
        caller = self._current()
        with self._read() as s:
            return accounts.tokens_of(s, None if caller.role == Role.ADMIN else caller.user_id)

    def revoke_token(self, token_id: int) -> None:
        caller = self._current()
        with self._write() as s:
            owner = None if caller.role == Role.ADMIN else caller.user_id
            accounts.revoke(s, token_id, owner)
            self._audit(s, caller, "token.revoke", "token", [token_id])

    # -- policy ----------------------------------------------------------------------------
    def policy(self) -> policies.Policy:
        self._need(Op.POLICY_READ)
        return self._policy()

    def set_policy(self, key: str, value: Any, *, reason: str) -> policies.Policy:
        caller = self._need(Op.POLICY_CHANGE)
        with self._write() as s:
            why = cases.check_text(reason, "the reason for the change")
            old, new = policies.save(s, key, value, caller.name)
            self._audit(s, caller, "policy.change", "policy", [key], reason=why, old=old, new=new)
            return policies.load(s)

    # -- gallery ---------------------------------------------------------------------------
    def enrol(
        self,
        paths: Iterable[str | Path] = (),
        *,
        subject: str | None = None,
        manifest: str | Path | None = None,
        progress: Callable[[EnrolItemResult], None] | None = None,
        on_total: Callable[[int], None] | None = None,
        ray: str | None = None,
    ) -> EnrolReport:
        """Enrol reference images; `ray`: the address of a Ray cluster that analyses them
        (this process still writes every result, see `service.distributed`)."""
        caller = self._need(Op.ENROL)
        items = enrolment.expand_paths([Path(p) for p in paths], subject)
        if manifest is not None:
            items += enrolment.read_manifest(Path(manifest))
        if not items:
            raise InvalidInputError("nothing to enrol: no image files in the given paths")
        if on_total:
            on_total(len(items))
        executor = {"executor": "ray"} if ray is not None else {}

        def audit(action: str, ids: list[int], details: dict) -> AuditRecord:
            details = {**details, **executor}
            return AuditRecord(caller.name, action, "image", ids, None, details, caller.role.value)

        if ray is not None:
            from facetrail.service import distributed

            cluster = distributed.connect(ray)
            model = self.analyzer.model_id  # the driver's model names the templates
            return distributed.enrol(
                cluster, self.store, self.settings, model, items, audit=audit, progress=progress
            )
        return enrolment.enrol(
            self.store,
            self.analyzer,
            items,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
            min_quality=self.settings.min_quality,
            audit=audit,
            progress=progress,
        )

    def export_templates(
        self, path: str | Path, *, model: str | None = None, reason: str | None = None
    ) -> transfer.TransferReport:
        """Write every template of `model` (default: the configured one) to a file, for
        migration to another system; see `service.transfer` for the format."""
        caller = self._need(Op.EXPORT)
        model = model or self.analyzer.model_id

        def audit(s: Session, ids: list[int], details: dict) -> None:
            self._audit(s, caller, "templates.export", "subject", ids, reason=reason, **details)

        return transfer.export_templates(self.store, Path(path), model, audit)

    def import_templates(
        self, path: str | Path, *, model: str | None = None, reason: str | None = None
    ) -> transfer.TransferReport:
        """Add the templates of a file made elsewhere (a migration), all or none. They must
        be of the configured model, unless `model` says on purpose which model they are."""
        caller = self._need(Op.ENROL)
        configured = self.analyzer
        model = model or configured.model_id
        dim = configured.descriptor.dim if model == configured.model_id else None

        def audit(s: Session, ids: list[int], details: dict) -> None:
            self._audit(s, caller, "templates.import", "subject", ids, reason=reason, **details)

        return transfer.import_templates(self.store, Path(path), model, dim, audit)

    def subjects(self) -> list[SubjectSummary]:
        self._need(Op.GALLERY_READ)
        return self.store.subjects()

    def subject(self, name: str) -> SubjectDetail:
        self._need(Op.GALLERY_READ)
        return self.store.subject(name)

    def subject_file(self, name: str, sha256: str) -> bytes:
        """A stored reference image or face crop of a subject (for people to look at)."""
        self._need(Op.GALLERY_READ)
        detail = self.store.subject(name)
        hashes = {i.sha256 for i in detail.images}
        hashes |= {f.chip_sha256 for i in detail.images for f in i.faces if f.chip_sha256}
        if sha256 not in hashes:
            raise NotFoundError(f"subject {name!r} has no stored file {sha256[:16]}")
        return self.store.blobs.get(sha256)

    def candidate_face(self, candidate_id: int) -> bytes:
        """The probe face crop (PNG) of a candidate, for its reviewer to look at."""
        caller = self._need(Op.REVIEW_READ)
        with self._read() as s:
            cand, _, _ = review.get_candidate(s, caller, candidate_id)
            chip = review.face_chip(s, cand)
        if chip is None:
            raise NotFoundError(f"candidate {candidate_id} has no stored face crop")
        return as_png(self.store.blobs.get(chip))

    def erase(self, name: str, *, reason: str | None = None) -> ErasureReport:
        """Erase a subject completely; the audit keeps that it happened (ids and counts)."""
        caller = self._need(Op.ERASE)
        with self._write() as s:
            report = self.store.erase_subject(name, session=s)
            self._audit(
                s,
                caller,
                "erase",
                "subject",
                [report.subject_id],
                reason=reason,
                images=report.images,
                faces=report.faces,
                templates=report.templates,
            )
        return report

    def renew_subject(self, name: str, until: datetime, *, reason: str) -> datetime:
        """Keep a subject past its review date, until `until` (at most one review period)."""
        caller = self._need(Op.RENEW)
        with self._write() as s:
            policy = self._policy(s)
            subj = s.scalar(select(Subject).where(Subject.name == name))
            if subj is None:
                raise NotFoundError(f"no subject named {name!r}")
            if until.tzinfo is None or until <= utcnow():
                raise InvalidInputError("the new review date must be a future time with a zone")
            if until > utcnow() + timedelta(days=policy.subject_review_days):
                raise PolicyError(
                    f"policy allows renewals of at most {policy.subject_review_days} days"
                )
            why = cases.check_text(reason, "the reason for keeping the record")
            old = retention.subject_review_at(subj, policy)
            subj.review_at = until
            self._audit(
                s,
                caller,
                "subject.renew",
                "subject",
                [subj.id],
                reason=why,
                old=old.isoformat(),
                new=until.isoformat(),
            )
        return until

    # -- cases -----------------------------------------------------------------------------
    def open_case(
        self, reference: str, *, purpose: str, legal_basis: str, second_review: bool = False
    ) -> cases.CaseInfo:
        caller = self._need(Op.CASE_OPEN)
        with self._write() as s:
            case = cases.open_case(s, caller, reference, purpose, legal_basis, second_review)
            self._audit(
                s,
                caller,
                "case.open",
                "case",
                [case.id],
                case=case.reference,
                purpose=case.purpose,
                legal_basis=case.legal_basis,
                second_review=case.second_review,
            )
            return cases.case_info(s, case)

    def close_case(self, reference: str, *, reason: str | None = None) -> cases.CaseInfo:
        caller = self._need(Op.CASE_MANAGE)
        with self._write() as s:
            case = cases.get_case(s, caller, reference)
            cases.close_case(s, caller, case)
            self._audit(s, caller, "case.close", "case", [case.id], case=reference, reason=reason)
            return cases.case_info(s, case)

    def add_case_member(self, reference: str, user: str) -> cases.CaseInfo:
        caller = self._need(Op.CASE_MANAGE)
        with self._write() as s:
            case = cases.get_case(s, caller, reference, need_open=True)
            member = accounts.get_user(s, user)
            cases.add_member(s, caller, case, member)
            self._audit(s, caller, "case.member", "user", [member.id], case=reference)
            return cases.case_info(s, case)

    def cases(self) -> list[cases.CaseInfo]:
        caller = self._need(Op.CASE_READ)
        with self._read() as s:
            return [cases.case_info(s, c) for c in cases.visible_cases(s, caller)]

    def case(self, reference: str) -> cases.CaseInfo:
        caller = self._need(Op.CASE_READ)
        with self._read() as s:
            return cases.case_info(s, cases.get_case(s, caller, reference))

    def approve(
        self,
        reference: str,
        *,
        scope: str,
        reason: str,
        days: int | None = None,
        min_threshold: float | None = None,
    ) -> cases.ApprovalInfo:
        """Record an authoriser's approval for a case's searches beyond the usual scope."""
        caller = self._need(Op.APPROVE)
        with self._write() as s:
            case = cases.get_case(s, caller, reference, need_open=True)
            limit = self._policy(s).approval_days
            if days is not None and not 0 < days <= limit:
                raise PolicyError(f"policy allows approvals of 1 to {limit} days")
            row = cases.approve(s, caller, case, scope, reason, days or limit, min_threshold)
            self._audit(
                s,
                caller,
                "search.approve",
                "approval",
                [row.id],
                case=reference,
                reason=row.reason,
                scope=scope,
                min_threshold=min_threshold,
                expires_at=row.expires_at.isoformat(),
            )
            return next(a for a in cases.case_info(s, case).approvals if a.id == row.id)

    # -- watchlists ------------------------------------------------------------------------
    def create_watchlist(
        self, name: str, *, purpose: str, expires_at: datetime
    ) -> watchlists.WatchlistInfo:
        caller = self._need(Op.WATCHLIST_EDIT)
        with self._write() as s:
            max_days = self._policy(s).watchlist_max_days
            w = watchlists.create(s, caller, name, purpose, expires_at, max_days)
            self._audit(
                s,
                caller,
                "watchlist.create",
                "watchlist",
                [w.id],
                name=name,
                purpose=w.purpose,
                expires_at=expires_at.isoformat(),
            )
            return watchlists.info(s, w)

    def add_to_watchlist(
        self, name: str, subjects: list[str], *, reason: str
    ) -> watchlists.WatchlistInfo:
        caller = self._need(Op.WATCHLIST_EDIT)
        with self._write() as s:
            w = watchlists.get(s, name)
            added = watchlists.add_members(s, caller, w, subjects, reason)
            self._audit(s, caller, "watchlist.add", "subject", added, reason=reason, watchlist=w.id)
            return watchlists.info(s, w)

    def remove_from_watchlist(
        self, name: str, subjects: list[str], *, reason: str
    ) -> watchlists.WatchlistInfo:
        caller = self._need(Op.WATCHLIST_EDIT)
        with self._write() as s:
            w = watchlists.get(s, name)
            gone = watchlists.remove_members(s, caller, w, subjects)
            why = cases.check_text(reason, "the reason")
            self._audit(s, caller, "watchlist.remove", "subject", gone, reason=why, watchlist=w.id)
            return watchlists.info(s, w)

    def authorise_watchlist(self, name: str, *, reason: str) -> watchlists.WatchlistInfo:
        caller = self._need(Op.WATCHLIST_AUTHORISE)
        with self._write() as s:
            w = watchlists.get(s, name)
            watchlists.authorise(s, caller, w)
            why = cases.check_text(reason, "the reason")
            self._audit(s, caller, "watchlist.authorise", "watchlist", [w.id], reason=why)
            return watchlists.info(s, w)

    def watchlists(self) -> list[watchlists.WatchlistInfo]:
        self._need(Op.WATCHLIST_READ)
        with self._read() as s:
            return [watchlists.info(s, w) for w in watchlists.all_watchlists(s)]

    def watchlist(self, name: str) -> watchlists.WatchlistInfo:
        self._need(Op.WATCHLIST_READ)
        with self._read() as s:
            return watchlists.info(s, watchlists.get(s, name))

    # -- comparison and search -------------------------------------------------------------
    def scoring(self, threshold: float | None = None) -> searching.Scoring:
        """The threshold to apply: explicit, else configured, else from the target FMR."""
        calibration = find_calibration(self.analyzer.model_id, self.calibration_dir)
        chosen = threshold if threshold is not None else self.settings.threshold
        if chosen is not None:
            if not -1.0 <= chosen <= 1.0:
                raise InvalidInputError(f"threshold {chosen} is outside the score range [-1, 1]")
            return searching.Scoring(chosen, None, calibration)
        if calibration is None:
            raise InvalidInputError(
                f"model {self.analyzer.model_id} has no calibration: set a threshold "
                "explicitly or run `facetrail eval lfw DIR --calibrate`"
            )
        target = self.settings.target_fmr
        return searching.Scoring(calibration.threshold_for(target), target, calibration)

    def search_scoring(self, threshold: float | None = None) -> searching.Scoring:
        """The scoring of a 1:N search: normalised against the cohort when configured
        (`score_normalisation`), no explicit threshold is set (a threshold is a cosine), no
        explicit policy floor is set (nor is that), the model's cohort has at least
        `cohort_top_k` faces and a calibration of such scores exists; else `scoring()`."""
        plain = self.scoring(threshold)
        s = self.settings
        if s.score_normalisation == "none" or threshold is not None or s.threshold is not None:
            return plain
        if self._policy().threshold_floor is not None:
            return plain
        model = self.analyzer.model_id
        normalised = normalised_model(model, s.score_normalisation)
        own = self.calibration_dir
        if (
            plain.calibration is not None
            and plain.calibration.source.startswith(OWN_DATA)
            and not (own / calibration_file(normalised)).is_file()
        ):
            # Scores are calibrated on this force's own faces (`calibrate`), normalised
            # scores not: the packaged table would show LFW's rates, so plain scores it is.
            return plain
        calibration = find_calibration(normalised, own)
        if calibration is None:
            return plain
        normaliser = self._shared.cohort_stats.normaliser(
            self.store, model, s.cohort_top_k, s.score_normalisation
        )
        if normaliser is None:
            return plain
        return searching.Scoring(
            calibration.threshold_for(s.target_fmr), s.target_fmr, calibration, normaliser
        )

    # -- cohort (issue 10) -----------------------------------------------------------------
    def build_cohort(
        self,
        folder: str | Path,
        *,
        source: str | None = None,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> cohort.CohortBuildReport:
        """Add the face of every image under `folder` to the cohort (people who are not
        subjects); `source` names them for listing and erasure (default: the folder name)."""
        caller = self._need(Op.ENROL)
        path = Path(folder)
        name = cohort.check_source(source if source is not None else path.resolve().name)

        def audit(s: Session, added: int) -> None:
            self._audit(s, caller, "cohort.build", "cohort", [name], added=added, folder=str(path))

        if on_total:
            on_total(len(cohort.images_in(path)))
        return cohort.build(
            self.store,
            self.analyzer,
            path,
            source=name,
            created_by=caller.name,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
            min_quality=self.settings.min_quality,
            on_write=audit,
            progress=progress,
        )

    def build_cohort_from_cases(
        self,
        *,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> list[cohort.CohortBuildReport]:
        """Add the kept probe faces of closed cases that review found to be nobody in the
        gallery to the cohort, one source per case ("case REF"), where the policy's
        `cohort_from_closed_cases` allows it. Described from their stored chips."""
        caller = self._need(Op.ENROL)
        with self._read() as s:
            if not self._policy(s).cohort_from_closed_cases:
                raise PolicyError(
                    "policy does not allow a cohort from closed cases "
                    "(policy set cohort_from_closed_cases true)"
                )
            faces = review.closed_case_faces(s)
        if on_total:
            on_total(len(faces))

        def audit(s: Session, source: str, added: int) -> None:
            self._audit(s, caller, "cohort.build", "cohort", [source], added=added)

        return cohort.build_from_cases(
            self.store,
            self.analyzer,
            faces,
            created_by=caller.name,
            on_write=audit,
            progress=progress,
        )

    def cohort_sources(self) -> list[cohort.CohortSource]:
        self._need(Op.GALLERY_READ)
        with self._read() as s:
            return cohort.sources(s)

    def cohort_source(self, source: str) -> list[cohort.CohortSource]:
        self._need(Op.GALLERY_READ)
        with self._read() as s:
            return cohort.source(s, source)

    def erase_cohort(
        self, source: str | None = None, *, reason: str | None = None
    ) -> cohort.CohortErasure:
        """Erase the cohort faces of `source` (None: the whole cohort); audited."""
        caller = self._need(Op.ERASE)
        with self._write() as s:
            faces, names = cohort.erase(s, source)
            self._audit(s, caller, "cohort.erase", "cohort", names, reason=reason, faces=faces)
        # As after a subject's erasure: the freed pages are zeroed (secure_delete) and the
        # WAL's copies of them truncated away.
        checkpointed = self.store._checkpoint()
        return cohort.CohortErasure(source, faces, names, checkpointed)

    def _video_options(
        self, scoring: searching.Scoring, progress: VideoProgress | None
    ) -> VideoOptions:
        """How videos are read and tracked. Tracks link faces that look alike at a lenient
        bar when their boxes overlap (estimated FMR 1e-2), or anywhere at a strict one (1e-4);
        without a calibration, the search threshold serves for both."""
        calibration = scoring.calibration
        if calibration is not None:
            link, same = calibration.threshold_for(1e-2), calibration.threshold_for(1e-4)
        else:
            link = same = scoring.threshold
        fps = self.settings.video_fps
        return VideoOptions(
            analyzer=self._shared.video_analyzer,
            sample_fps=fps if fps > 0 else None,
            tracker=TrackerConfig(link_similarity=link, same_similarity=max(link, same)),
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_video_bytes,
            progress=progress,
        )

    def _floor(self, policy: policies.Policy, scoring: searching.Scoring) -> float:
        if policy.threshold_floor is not None:
            return policy.threshold_floor
        if scoring.calibration is None:
            raise PolicyError(
                f"model {self.analyzer.model_id} has no calibration, so the threshold floor "
                "is unknown: an administrator must set the policy's threshold_floor"
            )
        return scoring.calibration.threshold_for(policy.floor_fmr)

    def _allowed_scope(
        self,
        s: Session,
        caller: Caller,
        case: Case,
        scoring: searching.Scoring,
        watchlist: str | None,
        include_below: bool,
    ) -> tuple[Any, set[int] | None, list[int]]:
        """(watchlist row, its subject ids, approvals used), or PolicyError naming what is
        missing."""
        policy = self._policy(s)
        used: list[int] = []
        w, subjects = None, None
        if watchlist is not None:
            w, subjects = watchlists.searchable_subjects(s, watchlist)
        elif policy.gallery_search_needs_approval:
            approval = cases.usable_approval(s, caller, case, "gallery")
            if approval is None:
                raise PolicyError(
                    f"searching the whole gallery needs an authoriser's approval in case "
                    f"{case.reference} (`facetrail case approve {case.reference} --scope "
                    "gallery`, by someone other than you); or search an authorised watchlist"
                )
            used.append(approval.id)
        floor = self._floor(policy, scoring)
        if include_below or scoring.threshold < floor - 1e-9:
            wanted = None if include_below else scoring.threshold
            approval = cases.usable_approval(s, caller, case, "below-floor", wanted)
            if approval is None:
                what = (
                    "listing candidates below the threshold"
                    if include_below
                    else (f"a threshold of {scoring.threshold:.4f}")
                )
                raise PolicyError(
                    f"{what} is below the policy's floor ({floor:.4f}) and needs an "
                    f"authoriser's below-floor approval in case {case.reference}"
                )
            used.append(approval.id)
        return w, subjects, used

    def check_search(
        self,
        *,
        case: str,
        watchlist: str | None = None,
        threshold: float | None = None,
        include_below: bool = False,
    ) -> None:
        """What `search` checks before it reads a probe (role, open case, scope, approvals),
        for front doors that take the probes now and search them later (HTTP jobs), so that
        a refusal comes at once; `search` checks it all again."""
        caller = self._need(Op.SEARCH)
        scoring = self.scoring(threshold)
        with self._read() as s:
            found = cases.get_case(s, caller, case, need_open=True)
            self._allowed_scope(s, caller, found, scoring, watchlist, include_below)

    def check_cluster(self, *, case: str) -> None:
        """What `cluster` checks before it reads any media (role, open case); see
        `check_search`."""
        caller = self._need(Op.SEARCH)
        with self._read() as s:
            cases.get_case(s, caller, case, need_open=True)

    def verify(
        self, a: str | Path, b: str | Path, *, case: str, threshold: float | None = None
    ) -> VerifyReport:
        caller = self._need(Op.VERIFY)
        with self._read() as s:
            found = cases.get_case(s, caller, case, need_open=True)
            reference = found.reference
        report = searching.verify(
            self.analyzer,
            Path(a),
            Path(b),
            self.scoring(threshold),
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
        )
        with self._write() as s:
            hashes = [p.sha256 for p in (report.a, report.b)]
            self._audit(
                s,
                caller,
                "verify",
                "probe",
                hashes,
                case=reference,
                model=report.model,
                threshold=report.threshold,
                match=report.match,
            )
        return dataclasses.replace(report, case=reference)

    def search(
        self,
        probes: Iterable[str | Path],
        *,
        case: str,
        watchlist: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        include_below: bool = False,
        reason: str | None = None,
        progress: Callable[[ProbeResult], None] | None = None,
        video_progress: VideoProgress | None = None,
        out: str | Path | None = None,
        names: Mapping[str, str] | None = None,
        ray: str | None = None,
    ) -> SearchReport:
        """Search each probe's faces (images) and appearances (videos) in a case, against an
        authorised watchlist or (with an approval) the whole gallery; the search, its kept
        faces and candidates are stored for review, faces that matched nothing are not.
        `out`: also write each kept face's best shot and a contact sheet there. `names`:
        what to call a probe in the report and the stored search instead of its path (the
        name a file was uploaded under, say). `ray`: the address of a Ray cluster that
        tracks the videos, one task per video (images are searched here)."""
        caller = self._need(Op.SEARCH)
        k = top_k or self.settings.top_k
        if k < 1:
            raise InvalidInputError("top-k must be at least 1")
        scoring = self.search_scoring(threshold)
        with self._read() as s:
            found = cases.get_case(s, caller, case, need_open=True)
            _, subjects, _ = self._allowed_scope(
                s, caller, found, scoring, watchlist, include_below
            )
            keep = self._policy(s).keep_unmatched_probe_faces
        # Tracking links faces by cosine similarity: the plain calibration's thresholds.
        video_options = self._video_options(self.scoring(threshold), video_progress)
        remote_videos = None
        if ray is not None:
            from facetrail.service import distributed

            cluster = distributed.connect(ray)

            def remote_videos(videos, rank):  # type: ignore[no-untyped-def]
                return distributed.search_videos(
                    cluster,
                    self.settings,
                    self.analyzer.model_id,
                    videos,
                    rank=rank,
                    tracker=video_options.tracker,
                    keep_all=keep,
                )

        report, evidence = searching.search(
            self.store,
            self.analyzer,
            [Path(p) for p in probes],
            scoring,
            top_k=k,
            include_below=include_below,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
            subjects=subjects,
            video=video_options,
            keep_all=keep,
            progress=progress,
            remote_videos=remote_videos,
        )
        if names:
            probes = [
                dataclasses.replace(p, probe=names.get(p.probe, p.probe)) for p in report.probes
            ]
            report = dataclasses.replace(report, probes=probes)
        with self._write() as s:
            # Checked again in the writing transaction: an approval or watchlist may have
            # expired, or the case closed, while the probes were analysed.
            found = cases.get_case(s, caller, case, need_open=True)
            w, _, used = self._allowed_scope(s, caller, found, scoring, watchlist, include_below)
            stored = review.persist(
                s,
                self.store,
                caller,
                found,
                report,
                evidence,
                watchlist=w,
                approval_ids=used,
                reason=reason,
                keep_unmatched=keep,
            )
            self._audit(
                s,
                caller,
                "search",
                "search",
                [stored.search_id],
                case=found.reference,
                reason=reason,
                scope=stored.scope,
                watchlist=stored.watchlist,
                approvals=used,
                probes=[p.sha256 for p in stored.probes],
                model=stored.model,
                threshold=stored.threshold,
                scoring=stored.scoring,
                faces=sum(len(p.faces) for p in stored.probes),
                candidates=sum(len(f.candidates) for p in stored.probes for f in p.faces),
                unmatched_faces_deleted=stored.unmatched_faces_deleted,
            )
        if out is not None:
            files = _export_best_shots(Path(out), stored, evidence, keep)
            with self._write() as s:
                self._audit(
                    s,
                    caller,
                    "search.export",
                    "search",
                    [stored.search_id],
                    case=found.reference,
                    folder=str(out),
                    files=len(files),
                )
        return stored

    def cluster(
        self,
        media: Iterable[str | Path],
        *,
        case: str,
        threshold: float | None = None,
        out: str | Path | None = None,
        progress: Callable[[ProbeResult], None] | None = None,
        video_progress: VideoProgress | None = None,
    ) -> clustering.ClusterReport:
        """Group the faces and appearances of many files into unknown persons, in a case.
        Nothing is stored; `out` writes a contact sheet with one tile per person."""
        caller = self._need(Op.SEARCH)
        with self._read() as s:
            reference = cases.get_case(s, caller, case, need_open=True).reference
        scoring = self.scoring()
        if threshold is None:
            if scoring.calibration is None:
                raise InvalidInputError("this model has no calibration: give --threshold")
            threshold = scoring.calibration.threshold_for(1e-4)
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInputError(f"threshold {threshold} is outside the score range [-1, 1]")
        items, probes = clustering.collect(
            self.analyzer,
            [Path(p) for p in media],
            self._video_options(scoring, video_progress),
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
            progress=progress,
        )
        result, faces = clustering.report(self.analyzer.model_id, threshold, items, probes)
        if out is not None:
            folder = sheets.prepare_dir(Path(out))
            tiles = [
                sheets.Tile(
                    np.asarray(faces[p.id]),
                    [
                        f"person {p.id}",
                        f"{len(p.sightings)} sightings, {p.files} files",
                        _where(p.sightings[0]),
                    ],
                )
                for p in result.persons
                if faces[p.id] is not None
            ]
            sheets.write_sheet(folder, "persons.jpg", tiles)
        with self._write() as s:
            self._audit(
                s,
                caller,
                "cluster",
                "probe",
                sorted({p.sha256 for p in probes if p.sha256}),
                case=reference,
                threshold=result.threshold,
                sightings=result.sightings,
                persons=len(result.persons),
                recurring=result.recurring,
                folder=None if out is None else str(out),
            )
        return result

    # -- review ----------------------------------------------------------------------------
    def searches(self, case: str) -> list[review.SearchView]:
        caller = self._need(Op.REVIEW_READ)
        with self._write() as s:
            found = cases.get_case(s, caller, case)
            views = [review.view(s, row, found) for row in review.case_searches(s, found)]
            ids = [v.id for v in views]
            self._audit(s, caller, "review.view", "search", ids, case=found.reference)
        return views

    def search_results(self, search_id: int) -> review.SearchView:
        """A search's candidates with their decisions; viewing them is audited."""
        caller = self._need(Op.REVIEW_READ)
        with self._write() as s:
            row, case = review.get_search(s, caller, search_id)
            result = review.view(s, row, case)
            ids = [c.id for c in result.candidates]
            self._audit(s, caller, "review.view", "candidate", ids, case=case.reference)
        return result

    def search_media(self, search_id: int) -> list[ProbeMediaView]:
        """A search's files and, per kept face, its candidates and (videos) when it was on
        screen: what a timeline of the search shows. Names and times only; the candidates
        themselves are read, and their viewing audited, through `search_results`."""
        caller = self._need(Op.REVIEW_READ)
        with self._read() as s:
            row, _ = review.get_search(s, caller, search_id)
            media = list(
                s.scalars(
                    select(ProbeMedia).where(ProbeMedia.search_id == row.id).order_by(ProbeMedia.id)
                )
            )
            faces = s.execute(
                select(ProbeFace, CandidateRecord.id)
                .join(CandidateRecord, CandidateRecord.face_id == ProbeFace.id)
                .where(ProbeFace.media_id.in_([m.id for m in media]))
                .order_by(ProbeFace.id, CandidateRecord.rank)
            ).all()
        by_face: dict[int, tuple[ProbeFace, list[int]]] = {}
        for face, candidate in faces:
            by_face.setdefault(face.id, (face, []))[1].append(candidate)
        return [
            ProbeMediaView(
                name=Path(m.name).name,
                kind=m.kind,
                duration=m.duration,
                complete=m.complete,
                error=m.error,
                appearances=[
                    Appearance(f.id, ids, f.track, f.start, f.end, f.best_time)
                    for f, ids in by_face.values()
                    if f.media_id == m.id
                ],
            )
            for m in media
        ]

    def decide(self, candidate_id: int, verdict: str, *, note: str) -> review.CandidateView:
        caller = self._need(Op.DECIDE)
        with self._write() as s:
            cand, case, _ = review.get_candidate(s, caller, candidate_id)
            row = review.decide(s, caller, cand, case, verdict, note)
            self._audit(
                s,
                caller,
                "review.decide",
                "candidate",
                [cand.id],
                case=case.reference,
                decision=row.id,
                verdict=verdict,
                supersedes=row.supersedes,
            )
        return self._candidate(caller, candidate_id)

    def confirm(self, candidate_id: int, *, note: str) -> review.CandidateView:
        caller = self._need(Op.DECIDE)
        with self._write() as s:
            cand, case, _ = review.get_candidate(s, caller, candidate_id)
            row = review.confirm(s, caller, cand, case, note)
            self._audit(
                s,
                caller,
                "review.confirm",
                "candidate",
                [cand.id],
                case=case.reference,
                decision=row.id,
                confirms=row.confirms,
            )
        return self._candidate(caller, candidate_id)

    def _candidate(self, caller: Caller, candidate_id: int) -> review.CandidateView:
        with self._read() as s:
            _, case, search = review.get_candidate(s, caller, candidate_id)
            return next(c for c in review.view(s, search, case).candidates if c.id == candidate_id)

    # -- reports ---------------------------------------------------------------------------
    def case_report(self, reference: str) -> CaseReport:
        """Everything done in a case, for its file (reports/case.py): inputs with their
        SHA-256, parameters, candidates with their face crops, decisions, and the case's audit
        events. It shows probe faces, so making it is audited in the case, naming them."""
        from facetrail.reports.case import collect

        caller = self._need(Op.CASE_REPORT)
        with self._write() as s:
            found = cases.get_case(s, caller, reference)
            report = collect(s, found, utcnow(), caller.name)
            shown = [c.id for x in report.searches for c in x.candidates]
            self._audit(
                s,
                caller,
                "report.case",
                "candidate",
                shown,
                case=found.reference,
                searches=report.totals.searches,
                audit_events=report.totals.audit_events,
            )
        crops: dict[int, bytes] = {}
        for search in report.searches:
            for c in search.candidates:
                if c.face_sha256 is not None:
                    try:
                        crops[c.id] = as_png(self.store.blobs.get(c.face_sha256))
                    except (FacetrailError, OSError):
                        continue  # the page says "—"; the JSON still names the crop's hash
        return dataclasses.replace(report, crops=crops)

    def transparency_report(self, start: date, end: date) -> TransparencyReport:
        """A period's figures (whole UTC days, `end` included) for publication: searches,
        faces, reviews; live deployments, alerts and false alert rates (reports/transparency)."""
        from facetrail.reports.transparency import collect

        caller = self._need(Op.TRANSPARENCY)
        with self._write() as s:
            report = collect(s, start, end, utcnow(), caller.name)
            self._audit(
                s,
                caller,
                "report.transparency",
                None,
                [],
                start=report.start.isoformat(),
                end=report.end.isoformat(),
            )
        return report

    # -- audit -----------------------------------------------------------------------------
    def verify_audit(self) -> ChainReport:
        self._need(Op.AUDIT)
        return self.store.verify_audit()

    def export_audit(self, since: datetime | None = None) -> list[dict]:
        caller = self._need(Op.AUDIT)
        events = self.store.export_audit(since)
        with self._write() as s:
            since_text = since.isoformat() if since else None
            self._audit(s, caller, "audit.export", None, [], since=since_text, events=len(events))
        return events

    def audit_page(
        self,
        page: int = 1,
        *,
        size: int = 100,
        action: str | None = None,
        actor: str | None = None,
        case: str | None = None,
    ) -> AuditPage:
        """One page of the trail, newest first, filtered and counted in the database (the
        workspace's audit page). Viewing it is itself recorded, as an export is."""
        caller = self._need(Op.AUDIT)
        if page < 1 or not 1 <= size <= 1000:
            raise InvalidInputError("page must be at least 1 and size between 1 and 1000")
        events, total, actions = self.store.audit_page(
            offset=(page - 1) * size, limit=size, action=action, actor=actor, case=case
        )
        with self._write() as s:
            self._audit(s, caller, "audit.export", None, [], since=None, events=len(events))
        return AuditPage(events, total, page, max(1, -(-total // size)), actions)

    # -- retention -------------------------------------------------------------------------
    def apply_retention(self) -> retention.RetentionRun | None:
        """What the service does on start: run retention as the system if anything is due."""
        with self._read() as s:
            if not accounts.count_users(s):
                return None
            policy = self._policy(s)
            now = utcnow()
            due = retention.due_searches(s, policy, now) or retention.due_subjects(s, policy, now)
            due = due or retention.due_alerts(s, policy, now)
        return self._retention(SYSTEM) if due else None

    def run_retention(self) -> retention.RetentionRun:
        return self._retention(self._need(Op.RETENTION_RUN))

    def _retention(self, caller: Caller) -> retention.RetentionRun:
        run = retention.RetentionRun(at=utcnow())
        swept = self.store.blobs_swept()  # erasures sweep when their transaction commits
        with self._write() as s:
            policy = self._policy(s)
            for due in retention.due_searches(s, policy, run.at):
                files = retention.purge_search(s, due.search_id)
                run.searches_purged.append(due.search_id)
                run.probe_files += files
                self._audit(
                    s,
                    caller,
                    "retention.purge",
                    "search",
                    [due.search_id],
                    case=due.case,
                    reason=f"{policy.probe_retention_days} days after the case closed",
                    probe_files=files,
                )
            for subj in retention.due_subjects(s, policy, run.at):
                report = self.store.erase_subject(subj.subject, session=s)
                run.subjects_erased.append(subj.subject)
                self._audit(
                    s,
                    caller,
                    "retention.erase",
                    "subject",
                    [subj.subject_id],
                    reason="review date passed without renewal",
                    review_at=subj.due_at.isoformat(),
                    images=report.images,
                    templates=report.templates,
                )
            alert_ids = retention.due_alerts(s, policy, run.at)
            if alert_ids:
                run.alerts_purged = retention.purge_alerts(s, alert_ids)
                self._audit(
                    s,
                    caller,
                    "retention.alerts",
                    "alert",
                    alert_ids,
                    reason=f"{policy.alert_retention_hours} hours after the alert",
                )
            self._audit(
                s,
                caller,
                "retention.run",
                None,
                [],
                searches_purged=len(run.searches_purged),
                subjects_erased=len(run.subjects_erased),
                alerts_purged=run.alerts_purged,
            )
        # The rows are gone; now the files nothing refers to (probe media, crops, images).
        self.store.sweep_blobs()
        run.blobs_deleted = self.store.blobs_swept() - swept
        return run

    def retention_report(self, horizon_days: int = 30) -> retention.RetentionReport:
        self._need(Op.RETENTION_REPORT)
        if not 0 <= horizon_days <= 36500:
            raise InvalidInputError("the horizon is 0 to 36500 days")
        until = utcnow() + timedelta(days=horizon_days)
        with self._read() as s:
            policy = self._policy(s)
            due: list[Any] = list(retention.due_searches(s, policy, until))
            due += retention.due_subjects(s, policy, until)
            due += retention.due_alert_groups(s, policy, until)
        deleted = self.store.export_audit(actions=RETENTION_ACTIONS)
        return retention.RetentionReport(policy.model_dump(), deleted, due)

    def encrypt_existing(self) -> dict[str, int]:
        """Encrypt images, crops, templates and cohort faces stored before a key was
        configured."""
        caller = self._need(Op.STORAGE)
        counts = self.store.encrypt_existing()
        with self._write() as s:
            counts["cohort_faces"] = cohort.seal_existing(self.store, s)
            self._audit(s, caller, "storage.encrypt", None, [], **counts)
        # The plain rows' old pages: zeroed when freed (secure_delete), and the WAL's copies
        # of them truncated away, as after an erasure.
        self.store._checkpoint()
        return counts


def open(
    data: str | Path | None = None, *, token: str | None = None, **overrides: object
) -> Facetrail:
    """Open (creating if needed) a facetrail data directory.

    `data` defaults to FACETRAIL_DATA or the per-user data directory; `token` (default:
    FACETRAIL_TOKEN) says who is acting, or call `login(name, password)` on the result;
    keyword arguments override any other setting (e.g. `min_face=30`).
    """
    if data is not None:
        overrides["data"] = Path(data)
    token = token if token is not None else os.environ.get("FACETRAIL_TOKEN") or None
    return Facetrail(Settings(**overrides), token=token)  # type: ignore[arg-type]


__all__ = ["Facetrail", "FacetrailError", "open"]


def _export_best_shots(
    out: Path, report: SearchReport, evidence: list[searching.Evidence], keep_all: bool
) -> list[str]:
    """Write each kept face's best shot (videos: a wider crop of the frame) and a contact
    sheet of them all; faces that matched nothing are not written unless policy keeps them."""
    out = sheets.prepare_dir(out)
    tiles, files = [], []
    for probe, ev in zip(report.probes, evidence, strict=True):
        for i, face in enumerate(probe.faces):
            context = ev.contexts[i] if ev.contexts else None
            image = (
                context if context is not None else (ev.chips[i] if ev.chips is not None else None)
            )
            if image is None or not (face.candidates or keep_all):
                continue
            top = face.candidates[0] if face.candidates else None
            name = Path(probe.probe).name
            when = f"face {i + 1}"
            suffix = ""
            if face.start is not None:
                when = f"{sheets.clock(face.start)}-{sheets.clock(face.end)}"
                suffix = f"-{face.best_time:07.2f}s"
            file = f"{sheets.safe_name(Path(probe.probe).stem)}-{i + 1:03d}{suffix}.jpg"
            write_atomic(out / file, sheets.jpeg(np.asarray(image)))
            files.append(file)
            label = f"{top.subject} {top.score:.3f}" if top else "no candidate"
            tiles.append(sheets.Tile(np.asarray(image), [name, when, label]))
    sheets.write_sheet(out, "contact_sheet.jpg", tiles)
    return files


def _where(sighting: clustering.Sighting) -> str:
    name = Path(sighting.media).name
    return f"{name} {sheets.clock(sighting.start)}" if sighting.start is not None else name
