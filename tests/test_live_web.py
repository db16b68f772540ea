"""Live recognition over HTTP: an operator starts a deployment on a real loopback stream
through the API, receives its alerts as server-sent events as they happen, looks at the best
shot and reviews the alert; the control room's webhook receives each alert, signed, without
the face; every step is checked against the caller's role and audited."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import streams
from conftest import Team, make_team, serve_app

FR = "examples/face_recognition"
MIRANDA = "lin-manuel-miranda"
WATCHLIST = "wl-web-live"
SECRET = "webhook-secret-for-tests"


class Receiver:
    """A control room's webhook endpoint on loopback: keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Served:
    def __init__(self, team: Team, url: str, receiver: Receiver, clip: Path) -> None:
        self.team, self.url, self.receiver, self.clip = team, url, receiver, clip

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.team.tokens[role]}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Served]:
    from facetrail.config import Settings
    from facetrail.web.app import create_app

    team = make_team(tmp_path_factory.mktemp("live-web") / "data")
    with team.open("admin") as ft:
        ft.enrol([shared_data / FR / "lin-manuel-miranda.png"], subject=MIRANDA)
        ft.enrol([shared_data / FR / "obama.jpg"], subject="obama")
    with team.open("investigator") as ft:
        ft.create_watchlist(WATCHLIST, purpose="tests", expires_at=_in(days=2))
        ft.add_to_watchlist(WATCHLIST, [MIRANDA], reason="tests")
    with team.open("authoriser") as ft:
        ft.authorise_watchlist(WATCHLIST, reason="tests")
    receiver = Receiver()
    settings = Settings(data=team.data, live_webhook_url=receiver.url, live_webhook_secret=SECRET)
    try:
        with serve_app(create_app(settings)) as url:
            yield Served(team, url, receiver, shared_data / FR / "short_hamilton_clip.mp4")
    finally:
        receiver.close()


def _in(**kw: float) -> datetime:
    return datetime.now(UTC) + timedelta(**kw)


def _events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(event type, data, id) of a text/event-stream response, as they come."""
    kind, data, event_id = "message", "", None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line == "" and data:
            yield kind, json.loads(data), event_id
            kind, data, event_id = "message", "", None


def test_alerts_are_pushed_to_the_operator_and_the_webhook(served: Served) -> None:
    api = f"{served.url}/api/v1/live"
    stream, server = streams.serve(served.clip, pace=2, loops=3)
    try:
        with httpx.Client(timeout=30) as client:
            body = {"watchlist": WATCHLIST, "source": stream, "until": _in(minutes=5).isoformat()}
            r = client.post(f"{api}/deployments", json=body, headers=served.auth("operator"))
            assert r.status_code == 201, r.text
            d = r.json()
            assert d["status"] == "running" and d["resumable"] and d["source"] == stream

            alert = None
            with client.stream(
                "GET",
                f"{api}/events",
                params={"deployment": d["id"]},
                headers=served.auth("operator"),
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                for kind, data, event_id in _events(response):
                    if kind == "alert":
                        alert, received = data, time.time()
                        assert event_id == str(data["id"])
                        break
            assert alert is not None and alert["subject"] == MIRANDA
            assert alert["deployment"] == d["id"] and alert["fmr"] is not None
            # Raised in the service's process: the frame's arrival time is known.
            assert 0 < received - alert["frame_arrived"] < 10
            shot = client.get(served.url + alert["best_shot"], headers=served.auth("operator"))
            assert shot.status_code == 200 and shot.content.startswith(b"\x89PNG")
            assert shot.headers["cache-control"] == "no-store"

            # A reconnection after this alert does not get it again.
            with client.stream(
                "GET",
                f"{api}/events",
                params={"deployment": d["id"]},
                headers={**served.auth("auditor"), "Last-Event-ID": str(alert["id"])},
            ) as response:
                for kind, data, _ in _events(response):
                    if kind == "alert":
                        assert data["id"] > alert["id"]
                    if kind == "deployment":
                        break  # counters: the stream is alive and caught up

            review = {"outcome": "confirmed", "note": "stopped and spoken to"}
            r = client.post(
                f"{api}/alerts/{alert['id']}/review", json=review, headers=served.auth("operator")
            )
            assert r.status_code == 200 and r.json()["outcome"] == "confirmed"
            r = client.post(
                f"{api}/deployments/{d['id']}/stop",
                json={"reason": "tests"},
                headers=served.auth("operator"),
            )
            assert r.status_code == 200 and r.json()["status"] == "stopped"
            report = client.get(f"{api}/report", headers=served.auth("auditor")).json()
            row = next(x for x in report["deployments"] if x["id"] == d["id"])
            assert row["confirmed"] == 1 and row["alerts"] >= 1
    finally:
        server.kill()
        server.wait()

    # The control room got the alert, signed, without the face (not configured to send it).
    deadline = time.monotonic() + 20
    while not any(b'"event":"alert"' in body for _, body in served.receiver.received):
        assert time.monotonic() < deadline, "the webhook received no alert"
        time.sleep(0.1)
    headers, body = next(
        (h, b) for h, b in served.receiver.received if json.loads(b)["event"] == "alert"
    )
    parts = dict(p.split("=", 1) for p in headers["X-Facetrail-Signature"].split(","))
    stamp, mac = parts["t"], parts["v1"]
    assert abs(int(stamp) - time.time()) < 60
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(mac, expected.hexdigest())
    sent = json.loads(body)
    assert sent["subject"] == MIRANDA and sent["deployment"] == d["id"]
    assert "best_shot_png" not in sent and sent["best_shot_sha256"]
    with served.team.open("auditor") as ft:
        events = ft.store.export_audit()
    delivered = [e for e in events if e["action"] == "live.webhook"]
    assert delivered and delivered[0]["details"]["status"] == 204
    views = [e for e in events if e["action"] == "alert.view" and alert["id"] in e["object_ids"]]
    assert {e["actor"] for e in views} >= {"operator"}  # the pushed alert counts as viewed


def test_the_event_stream_checks_the_role(served: Served) -> None:
    api = f"{served.url}/api/v1/live"
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{api}/events", headers=served.auth("investigator"))
        assert r.status_code == 403 and "live.read" in r.json()["detail"]
        r = client.get(f"{api}/events")
        assert r.status_code == 401
        r = client.get(f"{api}/events", params={"deployment": 999}, headers=served.auth("operator"))
        assert r.status_code == 404


def test_a_file_source_is_refused_over_http(served: Served) -> None:
    body = {"watchlist": WATCHLIST, "source": str(served.clip), "until": _in(hours=1).isoformat()}
    r = httpx.post(
        f"{served.url}/api/v1/live/deployments", json=body, headers=served.auth("operator")
    )
    assert r.status_code == 400 and "command line" in r.json()["detail"]
