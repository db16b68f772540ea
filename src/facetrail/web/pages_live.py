"""The live pages of the web workspace: deployments, and the operator's alert desk.

/live lists deployments and starts one; /live/{id} is the operator's page: the counters and
the alerts, newest first, each with its best shot and a form to mark it confirmed or false
with the action taken. The page's script subscribes to /live/events (server-sent events)
and adds each new alert as it arrives; without the script, the page shows what there was when
it was loaded (and reloading shows the rest).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import StreamingResponse

from facetrail.errors import InvalidInputError
from facetrail.service.access import Op, allowed
from facetrail.store.models import utcnow
from facetrail.web import events
from facetrail.web.api_live import start
from facetrail.web.pages import (
    MESSAGES,
    PageRoute,
    Posted,
    Session,
    me,
    redirect,
    render,
)

MESSAGES.update(
    {
        "started": "Deployment started.",
        "stopped": "Deployment stopped.",
        "reviewed": "Alert reviewed.",
    }
)
MAX_HOURS = 24 * 7

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/live")
def live_page(request: Request, ft: Session) -> Response:
    deployments = list(reversed(ft.deployments()))
    watchlists = []
    if allowed(me(ft).role, Op.LIVE_DEPLOY) and allowed(me(ft).role, Op.WATCHLIST_READ):
        watchlists = [w for w in ft.watchlists() if w.status == "authorised"]
    return render(
        request, "live.html", title="Live", deployments=deployments, watchlists=watchlists
    )


@router.post("/live")
def start_deployment(
    ft: Posted,
    watchlist: Annotated[str, Form(max_length=100)],
    source: Annotated[str, Form(max_length=1000)],
    hours: Annotated[float, Form(gt=0, le=MAX_HOURS)],
    threshold: Annotated[str, Form(max_length=20)] = "",
    location: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    try:
        chosen = float(threshold) if threshold.strip() else None
    except ValueError:
        raise InvalidInputError("the threshold is a number between -1 and 1") from None
    until = utcnow() + timedelta(hours=hours)
    d = start(ft, watchlist, source, until, chosen, location.strip() or None)
    return redirect(f"/live/{d.id}", "started")


@router.get("/live/events", response_class=StreamingResponse)
def live_events(
    request: Request, ft: Session, deployment: Annotated[int | None, Query()] = None
) -> StreamingResponse:
    """The page's event stream (cookie-authenticated; see web.events)."""
    return events.stream(request, ft, deployment, lambda a: f"/alerts/{a}/best-shot.png")


@router.get("/live/{deployment_id}")
def deployment_page(request: Request, ft: Session, deployment_id: int) -> Response:
    d = ft.deployment(deployment_id)
    alerts = list(reversed(ft.alerts(deployment_id)))
    last = max((a.id for a in alerts), default=0)
    return render(
        request, "deployment.html", title=f"Deployment {d.id}", d=d, alerts=alerts, last=last
    )


@router.post("/live/{deployment_id}/stop")
def stop_deployment(
    ft: Posted, deployment_id: int, reason: Annotated[str, Form(max_length=1000)] = ""
) -> Response:
    ft.stop_deployment(deployment_id, reason=reason.strip() or None)
    return redirect(f"/live/{deployment_id}", "stopped")


@router.get("/alerts/{alert_id}/best-shot.png")
def best_shot(ft: Session, alert_id: int) -> Response:
    return Response(ft.alert_best_shot(alert_id), media_type="image/png")


@router.post("/alerts/{alert_id}/review")
def review_alert(
    ft: Posted,
    alert_id: int,
    outcome: Annotated[str, Form(max_length=20)],
    note: Annotated[str, Form(max_length=2000)],
) -> Response:
    reviewed = ft.review_alert(alert_id, outcome, note=note)
    return redirect(f"/live/{reviewed.deployment}", "reviewed", anchor=f"alert-{alert_id}")
