"""The case report: everything done in one case, as one self-contained HTML page.

For disclosure and review: the case's purpose and legal basis, its approvals, and for each
search every input with its SHA-256, the parameters (scope, watchlist, approvals, threshold,
top-k), the model, the candidates with their face crops, scores and estimated false match
rates, each decision and who made it; then the audit events of the case. `collect` reads it
all into a `CaseReport` (the facade checks the role and membership, and audits the report);
the HTML (`render_case_report`) and the JSON (`CaseReport.to_dict`) are both made from that
one object, so they cannot disagree. Face crops travel in the page as base64 PNGs, never in
the JSON (which names each by its SHA-256).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from facetrail import __version__
from facetrail.reports.common import environment, plain
from facetrail.service import cases, review
from facetrail.service.tables import CandidateRecord, Case, ProbeFace, ProbeMedia
from facetrail.store import audit


@dataclass(frozen=True)
class ReportInput:
    """A searched file: what it was, its SHA-256, and whether it is still kept."""

    name: str
    kind: str  # "image" or "video"
    sha256: str | None  # of the file as received (None only for a file that could not be read)
    width: int | None
    height: int | None
    duration: float | None
    complete: bool
    error: str | None
    kept: bool  # the file itself is stored (an image with a kept face, until retention)


@dataclass(frozen=True)
class ReportCandidate:
    id: int
    probe: str
    box: list[float]
    quality: float
    rank: int
    subject: str
    subject_erased: bool
    score: float
    fmr: float | None
    above_threshold: bool
    outcome: str
    decisions: list[review.DecisionInfo]
    face_sha256: str | None  # the probe face crop (shown in the page, not in the JSON)


@dataclass(frozen=True)
class ReportSearch:
    id: int
    at: datetime
    by: str
    scope: str
    watchlist: str | None
    approvals: list[int]
    reason: str | None
    model: str
    threshold: float
    top_k: int
    probes: int
    faces: int
    candidates_returned: int
    unmatched_faces_deleted: int
    purged_at: datetime | None
    inputs: list[ReportInput]
    candidates: list[ReportCandidate]


@dataclass(frozen=True)
class CaseTotals:
    searches: int
    inputs: int
    faces: int
    candidates: int
    decided: int  # candidates with a standing decision
    matches: int  # standing verdict "match" (confirmed or not)
    confirmed: int  # matches a second reviewer confirmed
    audit_events: int


@dataclass(frozen=True)
class CaseReport:
    generated_at: datetime
    generated_by: str
    software: str
    case: cases.CaseInfo
    totals: CaseTotals
    searches: list[ReportSearch]
    audit: list[dict[str, Any]]
    # Candidate id -> its face crop (PNG bytes): for the page only.
    crops: dict[int, bytes] = field(default_factory=dict, repr=False, metadata={"json": False})

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def collect(s: Session, case: Case, generated_at: datetime, generated_by: str) -> CaseReport:
    """The report of `case` as it stands (the caller has checked who may read it); crops are
    filled in by the caller from the blob store."""
    info = cases.case_info(s, case)
    events = list(audit.export(s, case=case.reference))
    # What the trail recorded of each search's inputs: their hashes outlive retention.
    audited = {
        e["object_ids"][0]: e["details"].get("probes") or []
        for e in events
        if e["action"] == "search" and e["object_ids"]
    }
    searches: list[ReportSearch] = []
    for row in review.case_searches(s, case):
        view = review.view(s, row, case)
        media = s.scalars(
            select(ProbeMedia).where(ProbeMedia.search_id == row.id).order_by(ProbeMedia.id)
        )
        inputs = [
            ReportInput(
                name=m.name,
                kind=m.kind,
                sha256=m.media_sha256 or m.sha256,
                width=m.width,
                height=m.height,
                duration=m.duration,
                complete=m.complete,
                error=m.error,
                kept=m.sha256 is not None,
            )
            for m in media
        ]
        if not inputs and row.purged_at is not None:
            inputs = [
                ReportInput(
                    name="(deleted by retention; hash from the audit trail)",
                    kind="unknown",
                    sha256=h,
                    width=None,
                    height=None,
                    duration=None,
                    complete=True,
                    error=None,
                    kept=False,
                )
                for h in audited.get(row.id, [])
            ]
        ids = [c.id for c in view.candidates]
        chips = dict(
            s.execute(
                select(CandidateRecord.id, ProbeFace.chip_sha256)
                .join(ProbeFace, ProbeFace.id == CandidateRecord.face_id)
                .where(CandidateRecord.id.in_(ids))
            ).all()
        )
        searches.append(
            ReportSearch(
                id=row.id,
                at=row.at,
                by=view.by,
                scope=row.scope,
                watchlist=view.watchlist,
                approvals=list(row.approval_ids or []),
                reason=row.reason,
                model=row.model,
                threshold=row.threshold,
                top_k=row.top_k,
                probes=row.probes,
                faces=row.faces,
                candidates_returned=row.candidates,
                unmatched_faces_deleted=row.unmatched_faces_deleted,
                purged_at=row.purged_at,
                inputs=inputs,
                candidates=[
                    ReportCandidate(
                        id=c.id,
                        probe=c.probe,
                        box=c.box,
                        quality=c.quality,
                        rank=c.rank,
                        subject=c.subject,
                        subject_erased=c.subject_erased,
                        score=c.score,
                        fmr=c.fmr,
                        above_threshold=c.above_threshold,
                        outcome=c.outcome,
                        decisions=c.decisions,
                        face_sha256=chips.get(c.id),
                    )
                    for c in view.candidates
                ],
            )
        )
    shown = [c for search in searches for c in search.candidates]
    totals = CaseTotals(
        searches=len(searches),
        inputs=sum(len(x.inputs) for x in searches),
        faces=sum(x.faces for x in searches),
        candidates=sum(x.candidates_returned for x in searches),
        decided=sum(c.outcome != "undecided" for c in shown),
        matches=sum(c.outcome.startswith("match") for c in shown),
        confirmed=sum(c.outcome == "match (confirmed)" for c in shown),
        audit_events=len(events),
    )
    return CaseReport(
        generated_at=generated_at,
        generated_by=generated_by,
        software=f"facetrail {__version__}",
        case=info,
        totals=totals,
        searches=searches,
        audit=events,
    )


def render_case_report(report: CaseReport) -> str:
    crops = {i: base64.b64encode(png).decode("ascii") for i, png in report.crops.items()}
    return environment().get_template("case.html").render(r=report, crops=crops)
