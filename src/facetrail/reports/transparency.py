"""The transparency report: what facial recognition was used for in a period, in figures.

Aggregate figures only (no names, no faces), in the shape the Metropolitan Police publishes
its own: for retrospective searches, how many were run, how many faces they processed, how
many candidates they returned and how many people reviewed and confirmed; for live
deployments, each deployment with its faces seen, alerts, confirmed and false alerts, and
the false alert rate: false alerts / faces seen (the Met's definition: "10 false alerts out
of 3.1 million faces seen, 0.0003%"), with false alerts / alerts beside it, since both are
quoted and they answer different questions (how often is a passer-by wrongly flagged; how
often is an alert wrong).

Where the figures come from, and why:
- searches: the searches table, by when the search ran. Its counts (probes, faces,
  candidates) outlive retention, which deletes the probes and candidates themselves.
- decisions: the audit trail's `review.decide` and `review.confirm` events made in the period,
  since retention deletes decision rows with their candidates, and the trail keeps them;
  a candidate's verdict is the last one recorded for it in the period.
- live deployments: those started in the period, with their counters (which outlive their
  alerts). A deployment's counters are not split in time: a deployment that ran past the
  period's end counts whole in the period it started.
The period is whole UTC days, `start` to `end` inclusive.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facetrail import __version__
from facetrail.errors import InvalidInputError
from facetrail.reports.common import environment, plain
from facetrail.service.tables import Deployment, Search
from facetrail.store import audit

DECISION_ACTIONS = ("review.decide", "review.confirm")
MAX_DAYS = 3660


@dataclass(frozen=True)
class Retrospective:
    searches: int
    cases: int  # distinct cases searched in
    probes: int  # files searched
    faces: int  # faces found in them (processed), kept or not
    candidates: int  # candidates returned
    candidates_reviewed: int  # distinct candidates given a decision in the period
    match_decisions: int  # of those, last verdict in the period "match"
    no_match_decisions: int
    inconclusive_decisions: int
    confirmed_matches: int  # distinct candidates whose match a second reviewer confirmed


@dataclass(frozen=True)
class LiveFigures:
    """One deployment's figures, or (id None) the period's totals."""

    id: int | None
    watchlist: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    status: str | None
    duration_s: float
    faces_seen: int
    alerts: int
    confirmed: int
    false_alerts: int
    unreviewed: int  # alerts neither confirmed nor marked false
    false_alert_rate: float | None  # false alerts / faces seen (None: no face seen)
    false_alerts_per_alert: float | None  # false alerts / alerts (None: no alert)


@dataclass(frozen=True)
class TransparencyReport:
    start: date
    end: date  # inclusive
    generated_at: datetime
    generated_by: str
    software: str
    retrospective: Retrospective
    deployments: list[LiveFigures]
    live: LiveFigures  # totals over `deployments`
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def period_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00 UTC, the day after end 00:00 UTC)."""
    if end < start:
        raise InvalidInputError(f"the period ends ({end}) before it starts ({start})")
    if (end - start).days >= MAX_DAYS:
        raise InvalidInputError(f"a period is at most {MAX_DAYS} days")
    lo = datetime.combine(start, time(0), tzinfo=UTC)
    return lo, datetime.combine(end + timedelta(days=1), time(0), tzinfo=UTC)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _figures(
    *,
    id: int | None,
    watchlist: str | None,
    started_at: datetime | None,
    stopped_at: datetime | None,
    status: str | None,
    duration_s: float,
    faces_seen: int,
    alerts: int,
    confirmed: int,
    false_alerts: int,
) -> LiveFigures:
    return LiveFigures(
        id=id,
        watchlist=watchlist,
        started_at=started_at,
        stopped_at=stopped_at,
        status=status,
        duration_s=round(duration_s, 1),
        faces_seen=faces_seen,
        alerts=alerts,
        confirmed=confirmed,
        false_alerts=false_alerts,
        unreviewed=max(0, alerts - confirmed - false_alerts),
        false_alert_rate=_ratio(false_alerts, faces_seen),
        false_alerts_per_alert=_ratio(false_alerts, alerts),
    )


def _decisions(s: Session, lo: datetime, hi: datetime) -> dict[str, int]:
    last: dict[Any, str] = {}  # candidate id -> last verdict in the period
    confirmed: set[Any] = set()
    for e in audit.export(s, lo, actions=DECISION_ACTIONS):
        if datetime.fromisoformat(e["at"]) >= hi:
            continue  # (events come oldest first, but a clock step must not cut the list)
        for candidate in e["object_ids"]:
            if e["action"] == "review.confirm":
                confirmed.add(candidate)
            else:
                last[candidate] = str((e["details"] or {}).get("verdict"))
    verdicts = list(last.values())
    return {
        "candidates_reviewed": len(last.keys() | confirmed),
        "match_decisions": verdicts.count("match"),
        "no_match_decisions": verdicts.count("no-match"),
        "inconclusive_decisions": verdicts.count("inconclusive"),
        "confirmed_matches": len(confirmed),
    }


def collect(
    s: Session, start: date, end: date, generated_at: datetime, generated_by: str
) -> TransparencyReport:
    lo, hi = period_bounds(start, end)
    in_period = (Search.at >= lo) & (Search.at < hi)
    searches, cases, probes, faces, candidates = s.execute(
        select(
            func.count(Search.id),
            func.count(func.distinct(Search.case_id)),
            func.coalesce(func.sum(Search.probes), 0),
            func.coalesce(func.sum(Search.faces), 0),
            func.coalesce(func.sum(Search.candidates), 0),
        ).where(in_period)
    ).one()
    retro = Retrospective(
        searches=int(searches),
        cases=int(cases),
        probes=int(probes),
        faces=int(faces),
        candidates=int(candidates),
        **_decisions(s, lo, hi),
    )
    rows = s.scalars(
        select(Deployment)
        .where((Deployment.started_at >= lo) & (Deployment.started_at < hi))
        .order_by(Deployment.started_at, Deployment.id)
    )
    deployments = [
        _figures(
            id=r.id,
            watchlist=r.watchlist_name,
            started_at=r.started_at,
            stopped_at=r.stopped_at,
            status=r.status,
            duration_s=((r.stopped_at or generated_at) - r.started_at).total_seconds(),
            faces_seen=r.faces_seen,
            alerts=r.alerts,
            confirmed=r.confirmed,
            false_alerts=r.false_alerts,
        )
        for r in rows
    ]
    totals = _figures(
        id=None,
        watchlist=None,
        started_at=None,
        stopped_at=None,
        status=None,
        duration_s=sum(d.duration_s for d in deployments),
        faces_seen=sum(d.faces_seen for d in deployments),
        alerts=sum(d.alerts for d in deployments),
        confirmed=sum(d.confirmed for d in deployments),
        false_alerts=sum(d.false_alerts for d in deployments),
    )
    notes = []
    running = [d.id for d in deployments if d.stopped_at is None]
    if running:
        notes.append(
            "deployments still running when this report was made (their figures so far): "
            + ", ".join(str(i) for i in running)
        )
    if hi > generated_at:
        notes.append("the period had not ended when this report was made")
    return TransparencyReport(
        start=start,
        end=end,
        generated_at=generated_at,
        generated_by=generated_by,
        software=f"facetrail {__version__}",
        retrospective=retro,
        deployments=deployments,
        live=totals,
        notes=notes,
    )


def render_transparency_report(report: TransparencyReport) -> str:
    chart = _chart(report)
    return environment().get_template("transparency.html").render(r=report, chart_png=chart)


def _chart(report: TransparencyReport) -> str | None:
    """Faces seen and alerts (confirmed, false, unreviewed) per deployment, as a base64 PNG;
    None when there is no deployment to draw."""
    if not report.deployments:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = [f"{d.id}\n{d.started_at:%m-%d}" for d in report.deployments if d.started_at]
    confirmed = [d.confirmed for d in report.deployments]
    false = [d.false_alerts for d in report.deployments]
    unreviewed = [d.unreviewed for d in report.deployments]
    faces = [d.faces_seen for d in report.deployments]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, dpi=110)
    try:
        x = range(len(labels))
        top.bar(x, faces, color="#5b6470")
        top.set_ylabel("faces seen")
        bottom.bar(x, confirmed, color="#2f6f3e", label="confirmed")
        bottom.bar(x, false, bottom=confirmed, color="#b3261e", label="false")
        stacked = [c + f for c, f in zip(confirmed, false, strict=True)]
        bottom.bar(x, unreviewed, bottom=stacked, color="#c9cdd2", label="not reviewed")
        bottom.set_ylabel("alerts")
        bottom.set_xticks(list(x), labels, fontsize=8)
        bottom.set_xlabel("deployment (id, start date)")
        bottom.legend(fontsize=8, frameon=False)
        top.set_title(f"Live deployments {report.start} to {report.end}")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
