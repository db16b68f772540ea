"""The reports in the web workspace: a case's report and a period's transparency report.

GET /cases/{ref}/report and GET /reports/transparency?from=&to= answer with the very page the
CLI writes (`facetrail report case`, `report transparency`): one self-contained HTML document
the browser can print to PDF or save. The service checks the role and case membership and
audits each report, exactly as for the CLI. /reports/transparency without a period is a small
workspace page with the form to choose one.

A report page embeds its images as data: URLs and its style inline (that is what makes it
self-contained), which the workspace's CSP forbids; these responses get a CSP of their own
that allows exactly that and nothing else: no script, no connection, no external anything.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from facetrail.service.access import Op, require
from facetrail.store.models import utcnow
from facetrail.web.pages import PageRoute, Session, me, render

REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _report(html: str) -> Response:
    # PageRoute adds the other security headers (no-store, nosniff, ...) with setdefault.
    return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_CSP})


@router.get("/cases/{reference:path}/report")
def case_report(ft: Session, reference: str) -> Response:
    from facetrail.reports.case import render_case_report

    return _report(render_case_report(ft.case_report(reference)))


@router.get("/reports/transparency")
def transparency_report(
    request: Request,
    ft: Session,
    start: Annotated[date | None, Query(alias="from")] = None,
    end: Annotated[date | None, Query(alias="to")] = None,
) -> Response:
    if start is None or end is None:
        require(me(ft), Op.TRANSPARENCY)  # the form only for those who may have the report
        # Default: the last full calendar month, the period such figures are published for.
        first_of_month = utcnow().date().replace(day=1)
        last = first_of_month - timedelta(days=1)
        return render(
            request,
            "transparency_form.html",
            title="Transparency report",
            start=start or last.replace(day=1),
            end=end or last,
        )
    from facetrail.reports.transparency import render_transparency_report

    return _report(render_transparency_report(ft.transparency_report(start, end)))
