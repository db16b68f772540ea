"""Searches as records, and people's decisions on their candidates.

A completed search is written in one transaction with its audit event: the search row, each
probe file, the probe faces that have candidates, and the candidates. Probe faces that
matched nothing are never written unless policy keeps them, so they are gone when the search
completes; so is the file of a probe none of whose faces was kept.

Each candidate then gets decisions. Decisions are never edited: a new decision supersedes the
newest one, and a second reviewer's agreement with a match is a row of its own that confirms
it. A candidate's outcome is read from that history.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from facetrail.errors import InvalidInputError, NotFoundError, PolicyError
from facetrail.media.chips import chip_bytes
from facetrail.service.access import Caller
from facetrail.service.cases import check_text, get_case
from facetrail.service.cohort import CaseFace
from facetrail.service.results import SearchReport
from facetrail.service.search import Evidence
from facetrail.service.tables import (
    CandidateRecord,
    Case,
    Decision,
    ProbeFace,
    ProbeMedia,
    Search,
    User,
    Watchlist,
)
from facetrail.store import Store
from facetrail.store.models import Subject
from facetrail.vision.miss_rates import miss_rate

VERDICTS = ("match", "no-match", "inconclusive")


@dataclass(frozen=True)
class DecisionInfo:
    id: int
    verdict: str
    note: str
    by: str
    at: datetime
    supersedes: int | None
    confirms: int | None


@dataclass(frozen=True)
class CandidateView:
    id: int
    probe: str
    box: list[float]
    quality: float
    subject: str
    subject_erased: bool
    rank: int
    score: float
    fmr: float | None
    above_threshold: bool
    outcome: str  # undecided, match, match (awaiting confirmation), match (confirmed), ...
    decisions: list[DecisionInfo]
    miss_rate: float | None = None  # at the probe face's quality (`vision.miss_rates`)


@dataclass(frozen=True)
class SearchView:
    id: int
    case: str
    by: str
    at: datetime
    scope: str
    watchlist: str | None
    model: str
    threshold: float
    top_k: int
    probes: int
    faces: int
    unmatched_faces_deleted: int
    purged_at: datetime | None
    candidates: list[CandidateView]
    scoring: str = "cosine"  # what the scores and threshold are (issue 10)


def persist(
    s: Session,
    store: Store,
    caller: Caller,
    case: Case,
    report: SearchReport,
    evidence: list[Evidence],
    *,
    watchlist: Watchlist | None,
    approval_ids: list[int],
    reason: str | None,
    keep_unmatched: bool,
) -> SearchReport:
    """Write the search; returns the report with the search's and candidates' ids."""
    row = Search(
        case_id=case.id,
        user_id=caller.user_id,
        watchlist_id=watchlist.id if watchlist else None,
        scope="watchlist" if watchlist else "gallery",
        approval_ids=approval_ids,
        model=report.model,
        threshold=report.threshold,
        top_k=report.top_k,
        scoring=report.scoring,
        reason=reason,
    )
    s.add(row)
    s.flush()
    names = {c.subject for p in report.probes for f in p.faces for c in f.candidates}
    subject_ids = dict(
        s.execute(select(Subject.name, Subject.id).where(Subject.name.in_(names))).all()
    )
    probes, n_faces, n_candidates, deleted = [], 0, 0, 0
    for probe, ev in zip(report.probes, evidence, strict=True):
        kept = [i for i, f in enumerate(probe.faces) if f.candidates or keep_unmatched]
        n_faces += len(probe.faces)
        deleted += len(probe.faces) - len(kept)
        video = probe.video
        media = ProbeMedia(
            search_id=row.id,
            name=probe.probe[-255:],
            sha256=store.blobs.put(ev.data) if kept and ev.data is not None else None,
            width=probe.width,
            height=probe.height,
            error=probe.error[:1000] if probe.error else None,
            kind=probe.kind,
            media_sha256=probe.sha256,
            duration=video.duration if video else None,
            complete=video.complete if video else probe.error is None,
            warnings=video.warnings if video and video.warnings else None,
        )
        s.add(media)
        s.flush()
        faces = list(probe.faces)
        for i in kept:
            face = faces[i]
            chip = ev.chips[i] if ev.chips is not None else None
            face_row = ProbeFace(
                media_id=media.id,
                x1=face.box[0],
                y1=face.box[1],
                x2=face.box[2],
                y2=face.box[3],
                quality=face.quality,
                detector_score=face.detector_score,
                chip_sha256=store.blobs.put(chip_bytes(chip)) if chip is not None else None,
                track=face.track,
                start=face.start,
                end=face.end,
                best_time=face.best_time,
            )
            s.add(face_row)
            s.flush()
            records = [
                CandidateRecord(
                    face_id=face_row.id,
                    subject_id=subject_ids.get(c.subject),
                    subject_name=c.subject,
                    rank=c.rank,
                    score=c.score,
                    fmr=c.fmr,
                    above_threshold=c.above_threshold,
                )
                for c in face.candidates
            ]
            s.add_all(records)
            s.flush()
            n_candidates += len(records)
            faces[i] = dataclasses.replace(
                face,
                candidates=[
                    dataclasses.replace(c, id=r.id)
                    for c, r in zip(face.candidates, records, strict=True)
                ],
            )
        probes.append(dataclasses.replace(probe, faces=faces))
    row.probes, row.faces, row.candidates = len(report.probes), n_faces, n_candidates
    row.unmatched_faces_deleted = deleted
    s.flush()
    return dataclasses.replace(
        report,
        probes=probes,
        search_id=row.id,
        case=case.reference,
        scope=row.scope,
        watchlist=watchlist.name if watchlist else None,
        unmatched_faces_deleted=deleted,
    )


# --------------------------------------------------------------------------- reading


def _decisions(s: Session, candidate_ids: list[int]) -> dict[int, list[DecisionInfo]]:
    out: dict[int, list[DecisionInfo]] = {i: [] for i in candidate_ids}
    if not candidate_ids:
        return out
    rows = s.execute(
        select(Decision, User.name)
        .join(User, User.id == Decision.user_id)
        .where(Decision.candidate_id.in_(candidate_ids))
        .order_by(Decision.id)
    )
    for d, name in rows:
        out[d.candidate_id].append(
            DecisionInfo(d.id, d.verdict, d.note, name, d.at, d.supersedes, d.confirms)
        )
    return out


def standing_verdicts(s: Session, candidate_ids: list[int]) -> dict[int, str]:
    """The standing verdict of each decided candidate ("match", "no-match", ...)."""
    out: dict[int, str] = {}
    for start in range(0, len(candidate_ids), 500):
        for cid, decisions in _decisions(s, candidate_ids[start : start + 500]).items():
            now = current(decisions)
            if now is not None:
                out[cid] = now.verdict
    return out


def closed_case_faces(s: Session) -> list[CaseFace]:
    """Probe faces of closed cases, not yet purged, that the review found to be nobody in
    the gallery: every candidate's standing verdict is "no-match", or the face has only
    candidates below the threshold that nobody marked a match. A face with a match, an
    inconclusive verdict, or a candidate above the threshold left undecided may be a
    subject, and a cohort must hold only people who are not."""
    rows = s.execute(
        select(Case.reference, ProbeFace.id, ProbeFace.chip_sha256, ProbeFace.quality)
        .join(ProbeMedia, ProbeFace.media_id == ProbeMedia.id)
        .join(Search, ProbeMedia.search_id == Search.id)
        .join(Case, Search.case_id == Case.id)
        .where(
            Case.closed_at.is_not(None),
            Search.purged_at.is_(None),
            ProbeFace.chip_sha256.is_not(None),
        )
        .order_by(Case.reference, ProbeFace.id)
    ).all()
    if not rows:
        return []
    face_ids = [r[1] for r in rows]
    candidates = []
    for start in range(0, len(face_ids), 500):
        chunk = face_ids[start : start + 500]
        candidates += s.execute(
            select(
                CandidateRecord.id, CandidateRecord.face_id, CandidateRecord.above_threshold
            ).where(CandidateRecord.face_id.in_(chunk))
        ).all()
    verdicts = standing_verdicts(s, [c[0] for c in candidates])
    excluded = {
        face
        for cid, face, above in candidates
        if verdicts.get(cid, "undecided" if above else "no-match") != "no-match"
    }
    return [CaseFace(r[0], r[2], float(r[3])) for r in rows if r[1] not in excluded]


def current(decisions: list[DecisionInfo]) -> DecisionInfo | None:
    """The newest decision that is not a confirmation of another."""
    standing = [d for d in decisions if d.confirms is None]
    return standing[-1] if standing else None


def outcome(decisions: list[DecisionInfo], second_review: bool) -> str:
    now = current(decisions)
    if now is None:
        return "undecided"
    if now.verdict != "match":
        return now.verdict
    confirmed = any(d.confirms == now.id for d in decisions)
    if confirmed:
        return "match (confirmed)"
    return "match (awaiting confirmation)" if second_review else "match"


def get_search(s: Session, caller: Caller, search_id: int) -> tuple[Search, Case]:
    row = s.get(Search, search_id) if isinstance(search_id, int) else None
    if row is None:
        raise NotFoundError(f"no search {search_id}")
    case = s.get(Case, row.case_id)
    assert case is not None
    try:
        get_case(s, caller, case.reference)
    except NotFoundError:
        raise NotFoundError(f"no search {search_id} in a case you are a member of") from None
    return row, case


def view(s: Session, search: Search, case: Case) -> SearchView:
    rows = s.execute(
        select(CandidateRecord, ProbeFace, ProbeMedia.name)
        .join(ProbeFace, ProbeFace.id == CandidateRecord.face_id)
        .join(ProbeMedia, ProbeMedia.id == ProbeFace.media_id)
        .where(ProbeMedia.search_id == search.id)
        .order_by(ProbeMedia.id, ProbeFace.id, CandidateRecord.rank)
    ).all()
    decisions = _decisions(s, [c.id for c, _, _ in rows])
    by = s.get(User, search.user_id)
    watchlist = s.get(Watchlist, search.watchlist_id) if search.watchlist_id else None
    return SearchView(
        id=search.id,
        case=case.reference,
        by=by.name if by else "?",
        at=search.at,
        scope=search.scope,
        watchlist=watchlist.name if watchlist else None,
        model=search.model,
        threshold=search.threshold,
        top_k=search.top_k,
        probes=search.probes,
        faces=search.faces,
        unmatched_faces_deleted=search.unmatched_faces_deleted,
        purged_at=search.purged_at,
        scoring=search.scoring,
        candidates=[
            CandidateView(
                id=c.id,
                probe=name,
                box=[f.x1, f.y1, f.x2, f.y2],
                quality=f.quality,
                subject=c.subject_name,
                subject_erased=c.subject_id is None,
                rank=c.rank,
                score=c.score,
                fmr=c.fmr,
                above_threshold=c.above_threshold,
                outcome=outcome(decisions[c.id], case.second_review),
                decisions=decisions[c.id],
                miss_rate=miss_rate(search.model, search.scoring, search.threshold, f.quality),
            )
            for c, f, name in rows
        ],
    )


def case_searches(s: Session, case: Case) -> list[Search]:
    return list(s.scalars(select(Search).where(Search.case_id == case.id).order_by(Search.id)))


# --------------------------------------------------------------------------- deciding


def get_candidate(
    s: Session, caller: Caller, candidate_id: int
) -> tuple[CandidateRecord, Case, Search]:
    row = s.get(CandidateRecord, candidate_id) if isinstance(candidate_id, int) else None
    if row is None:
        raise NotFoundError(f"no candidate {candidate_id}")
    face = s.get(ProbeFace, row.face_id)
    media = s.get(ProbeMedia, face.media_id) if face else None
    search = s.get(Search, media.search_id) if media else None
    assert search is not None
    try:
        _, case = get_search(s, caller, search.id)
    except NotFoundError:
        raise NotFoundError(f"no candidate {candidate_id} in a case you are a member of") from None
    return row, case, search


def face_chip(s: Session, candidate: CandidateRecord) -> str | None:
    face = s.get(ProbeFace, candidate.face_id)
    return face.chip_sha256 if face else None


def decide(
    s: Session, caller: Caller, candidate: CandidateRecord, case: Case, verdict: str, note: str
) -> Decision:
    if verdict not in VERDICTS:
        raise InvalidInputError(f"a verdict is one of: {', '.join(VERDICTS)}")
    if case.closed_at is not None:
        raise PolicyError(f"case {case.reference} is closed")
    now = current(_decisions(s, [candidate.id])[candidate.id])
    row = Decision(
        candidate_id=candidate.id,
        verdict=verdict,
        note=check_text(note, "a note", 2000),
        user_id=caller.user_id,
        supersedes=now.id if now else None,
    )
    s.add(row)
    s.flush()
    return row


def confirm(
    s: Session, caller: Caller, candidate: CandidateRecord, case: Case, note: str
) -> Decision:
    """A second reviewer's agreement with the standing match decision."""
    if case.closed_at is not None:
        raise PolicyError(f"case {case.reference} is closed")
    history = _decisions(s, [candidate.id])[candidate.id]
    now = current(history)
    if now is None or now.verdict != "match":
        raise PolicyError("only a standing match decision can be confirmed")
    first = s.get(Decision, now.id)
    assert first is not None
    if first.user_id == caller.user_id:
        raise PolicyError("a match must be confirmed by a different reviewer")
    if any(d.confirms == now.id for d in history):
        raise PolicyError("this match is already confirmed")
    row = Decision(
        candidate_id=candidate.id,
        verdict="match",
        note=check_text(note, "a note", 2000),
        user_id=caller.user_id,
        confirms=now.id,
    )
    s.add(row)
    s.flush()
    return row
