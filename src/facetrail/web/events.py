"""Server-sent events: live alerts pushed to an operator as they happen.

One stream per operator page or API client (`text/event-stream`). It wakes as soon as this
process's event hub reports an alert, and otherwise checks the store once a second, so alerts
raised by a deployment that another process runs (`facetrail live start` on the command line)
arrive too. Alerts are read through the service as the stream's user, so the role is checked
again on every read (a revoked token ends the stream) and every alert shown is audited as
viewed. An alert's id is the event id: a browser that reconnects sends `Last-Event-ID` and
gets the alerts it missed, none twice.

Event types:
- `alert`: an alert as `GET .../alerts` shows it, plus `best_shot` (a URL) and, when raised in
  this process, `frame` and `frame_arrived` (epoch seconds when the frame that raised it was
  received: the latency benchmark's start).
- `deployment`: a deployment's counters (about once a second while it runs) or its new status.
- `review`: an alert was marked confirmed or false.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from facetrail.service.app import Facetrail
from facetrail.service.live import AlertInfo
from facetrail.service.live_events import LiveEvent

POLL_S = 1.0  # how often the store is checked for alerts of other processes
KEEPALIVE_S = 15.0  # a comment line, so that proxies keep the connection open
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _message(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    return int(raw) if raw.isdigit() else 0


def stream(
    request: Request,
    ft: Facetrail,
    deployment: int | None,
    best_shot_url: Callable[[int], str],
) -> StreamingResponse:
    """The event stream for `ft`'s caller (who must be allowed to read live data: checked
    here, before the response starts, so that a refusal is a plain error)."""
    if deployment is not None:
        ft.deployment(deployment)  # an unknown id is a 404 now, not an empty stream
    subscription = ft.live_events(deployment)
    after = last_event_id(request)

    async def events() -> AsyncIterator[str]:
        nonlocal after
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        subscription.waker = lambda: loop.call_soon_threadsafe(wake.set)
        last_sent = time.monotonic()
        try:
            yield "retry: 2000\n\n"
            pending: list[LiveEvent] = []
            while True:
                arrivals = {e.data["alert"]: e.data for e in pending if e.kind == "alert"}
                alerts: list[AlertInfo] = await run_in_threadpool(
                    partial(ft.alerts_since, after, deployment, audit=False)
                )
                for alert in alerts:
                    body = asdict(alert) | {"best_shot": best_shot_url(alert.id)}
                    seen = arrivals.get(alert.id)
                    if seen is not None:
                        body |= {"frame": seen["frame"], "frame_arrived": seen["arrived"]}
                    yield _message("alert", body, alert.id)
                    after = max(after, alert.id)
                if alerts:  # sent first, then recorded as viewed
                    await run_in_threadpool(ft.alerts_shown, [a.id for a in alerts])
                for e in pending:
                    if e.kind != "alert":
                        yield _message(e.kind, {"deployment": e.deployment, **e.data})
                if alerts or pending:
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if await request.is_disconnected():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_S)
                wake.clear()
                pending = subscription.drain()
        finally:
            subscription.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers=HEADERS)
