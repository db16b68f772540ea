"""The live routes of the JSON API, /api/v1/live: deployments, their alerts and the event
stream, each a thin call into the service as the bearer's user (as `facetrail live ...`).

Over HTTP a source is a stream URL or a camera device of the server: a video file on the
server's disk is for rehearsals from the command line (`facetrail live start --source FILE`),
so that no web user can make the server open its files. Deployments started here are
resumable: a restart of the service resumes them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from facetrail.errors import InvalidInputError
from facetrail.service import live
from facetrail.service.access import Op
from facetrail.service.app import Facetrail
from facetrail.web import events
from facetrail.web.api import NO_STORE, Moment, Note, Page, Pages, paged, plain
from facetrail.web.auth import Caller

router = APIRouter(prefix="/live", tags=["live"])


def start(
    ft: Facetrail,
    watchlist: str,
    source: str,
    until: datetime,
    threshold: float | None,
    location: str | None = None,
) -> live.DeploymentInfo:
    """Start a resumable deployment from a network or camera source (HTTP and pages)."""
    ft.require(Op.LIVE_DEPLOY)  # the role first: a refused caller learns nothing of files
    if live.source_kind(source.strip()) == "file":
        raise InvalidInputError(
            "a deployment started over HTTP watches a stream URL or a camera device; "
            "rehearse with a video file on the command line"
        )
    return ft.start_deployment(
        watchlist, source.strip(), until, threshold, resumable=True, location=location
    )


class NewDeployment(BaseModel):
    watchlist: str = Field(min_length=1, max_length=100)
    source: str = Field(
        min_length=1,
        max_length=1000,
        description="rtsp://, http(s)://, udp://, tcp://, srt:// ... URL, or /dev/videoN.",
    )
    until: Moment = Field(description="End time (UTC if no zone); at most the watchlist's.")
    threshold: float | None = Field(None, ge=-1, le=1)
    location: str | None = Field(None, max_length=200, description="Where it watches.")


class Stop(BaseModel):
    reason: str | None = Field(None, max_length=1000)


class AlertReview(BaseModel):
    outcome: str = Field(description="confirmed or false")
    note: Note = Field(description="The action taken (audited).")


@router.get("/deployments")
def deployments(ft: Caller, p: Pages) -> Page:
    """Deployments, oldest first, with their counters."""
    return paged(ft.deployments(), p)


@router.post("/deployments", status_code=201)
def start_deployment(body: NewDeployment, ft: Caller) -> dict:
    """Start watching a stream against an authorised watchlist (runs in the service)."""
    return plain(start(ft, body.watchlist, body.source, body.until, body.threshold, body.location))


@router.get("/deployments/{deployment_id}")
def deployment(deployment_id: int, ft: Caller) -> dict:
    return plain(ft.deployment(deployment_id))


@router.post("/deployments/{deployment_id}/stop")
def stop_deployment(deployment_id: int, body: Stop, ft: Caller) -> dict:
    return plain(ft.stop_deployment(deployment_id, reason=body.reason))


@router.get("/deployments/{deployment_id}/alerts")
def alerts(deployment_id: int, ft: Caller, p: Pages) -> Page:
    """The deployment's alerts still kept (viewing is audited)."""
    return paged(ft.alerts(deployment_id), p)


@router.get("/alerts/{alert_id}/best-shot.png")
def best_shot(alert_id: int, ft: Caller) -> Response:
    return Response(ft.alert_best_shot(alert_id), media_type="image/png", headers=NO_STORE)


@router.post("/alerts/{alert_id}/review")
def review(alert_id: int, body: AlertReview, ft: Caller) -> dict:
    """Mark an alert confirmed or false, with the action taken."""
    return plain(ft.review_alert(alert_id, body.outcome, note=body.note))


@router.get("/report")
def report(
    ft: Caller,
    since: Annotated[Moment | None, Query(alias="from")] = None,
    until: Annotated[Moment | None, Query(alias="to")] = None,
) -> dict:
    """Per deployment started in [from, to): location, watchlist size, faces seen, alerts,
    confirmed and false alerts, false alert rate, duration."""
    return plain(ft.live_report(since, until))


@router.get("/events", response_class=StreamingResponse)
def event_stream(
    request: Request,
    ft: Caller,
    deployment: Annotated[int | None, Query(description="One deployment's events only.")] = None,
) -> StreamingResponse:
    """Server-sent events (`text/event-stream`): `alert` (id: the alert's id; a reconnection
    with `Last-Event-ID`, or `?after=ID`, gets the alerts missed), `deployment` (counters,
    status) and `review`. Without either, every alert still kept is sent first."""
    return events.stream(
        request, ft, deployment, lambda a: f"/api/v1/live/alerts/{a}/best-shot.png"
    )
