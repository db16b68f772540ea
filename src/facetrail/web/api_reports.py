"""The reports of the JSON API: a case's report and a period's transparency figures, as the
objects the HTML reports are rendered from (`facetrail report case|transparency --json`).
The printable pages themselves are in the web workspace (/cases/{ref}/report,
/reports/transparency)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from facetrail.web.api import plain
from facetrail.web.auth import Caller

router = APIRouter(tags=["reports"])


@router.get("/cases/{reference:path}/report")
def case_report(reference: str, ft: Caller) -> dict:
    """Everything done in a case: inputs and their SHA-256, parameters, candidates with
    their face crops, decisions and reviewers, the case's audit events (making it is audited)."""
    return plain(ft.case_report(reference))


@router.get("/reports/transparency")
def transparency_report(
    ft: Caller,
    since: Annotated[date, Query(alias="from", description="First day (UTC).")],
    until: Annotated[date, Query(alias="to", description="Last day, included.")],
) -> dict:
    """A period's figures for publication: searches, faces, reviews, live deployments with
    faces seen, alerts, confirmed and false alerts, and the false alert rate."""
    return plain(ft.transparency_report(since, until))
