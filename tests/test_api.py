"""The HTTP API over a real data directory and real images: the whole flow, every operation
as every role (against the documented table of tests/test_access.py), problem+json errors,
upload limits and typing, pagination, the log-in rate limit, OpenAPI, and what stays out of
the logs and off the disk."""

from __future__ import annotations

import base64
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import CASE, PASSWORD, ROLES, Team, make_team
from facetrail.config import Settings
from facetrail.web import auth
from facetrail.web.app import create_app
from facetrail.web.auth import LoginLimiter
from test_access import DOCUMENTED

FR = "examples/face_recognition"
V1 = "/api/v1"
PROBLEM = "application/problem+json"
WATCHLIST = "wl-base"  # authorised, members obama and biden
ERASABLE = "alex_lacamoire"  # erased by the administrator's allowed erase
KEPT = "biden"  # what refused erasures and renewals aim at
# Evaluation reads a labelled data set on the server, and a bulk export of templates writes a
# file of biometric data on it: CLI only.
CLI_ONLY = {"evaluate", "gallery.export"}


def files(*paths: Path, field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart parts, all sent as application/octet-stream: the content decides."""
    return [(field, (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def days(n: int) -> str:
    return (datetime.now(UTC) + timedelta(days=n)).isoformat()


def is_problem(r: Any, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status and body["detail"]
    return body


@dataclass
class Api:
    """One served data directory: a team, its client, and what the tests share."""

    team: Team
    client: TestClient
    fr: Path
    search_id: int = 0
    candidate_id: int = 0
    kept_sha: str = ""
    _n: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.team.data

    def name(self, what: str) -> str:
        return f"{what}-{next(self._n)}"

    def auth(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.team.tokens[role]}"}

    def call(self, role: str | None, method: str, url: str, **kw: Any) -> Any:
        return self.client.request(method, V1 + url, headers=self.auth(role), **kw)

    def ok(self, role: str, method: str, url: str, status: int = 200, **kw: Any) -> Any:
        r = self.call(role, method, url, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        return r.json()

    def wait(self, role: str, job: dict, timeout: float = 180) -> dict:
        """Poll a job until it ends; every poll is a 200."""
        deadline = time.monotonic() + timeout
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job {job['id']} still {job['status']}"
            time.sleep(0.05)
            job = self.ok(role, "GET", f"/jobs/{job['id']}")
        return job


def serve(team: Team, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(data=team.data, **settings)))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Api]:
    """A team; three subjects enrolled over HTTP; an authorised watchlist; the operator in
    CASE; one search in CASE with an obama candidate."""
    team = make_team(tmp_path_factory.mktemp("api") / "data")
    with serve(team) as client:
        a = Api(team, client, shared_data / FR)
        train = a.fr / "knn_examples/train"
        for subject in ("obama", "biden", ERASABLE):
            pictures = sorted((train / subject).iterdir())
            report = a.ok(
                "admin", "POST", f"/subjects/{subject}/images", 201, files=files(*pictures)
            )
            assert report["enrolled"] >= 1 and not report["skipped"]
        detail = a.ok("admin", "GET", f"/subjects/{KEPT}")
        a.kept_sha = detail["images"][0]["sha256"]
        a.ok("investigator", "POST", "/watchlists", 201, json=_watchlist(WATCHLIST))
        members = {"subjects": ["obama", KEPT], "reason": "tests"}
        a.ok("investigator", "POST", f"/watchlists/{WATCHLIST}/members", 201, json=members)
        auth = {"reason": "tests"}
        a.ok("authoriser", "POST", f"/watchlists/{WATCHLIST}/authorisation", json=auth)
        a.ok("investigator", "POST", f"/cases/{CASE}/members", 201, json={"user": "operator"})
        probe = a.fr / "knn_examples/test/obama1.jpg"
        job = a.ok(
            "investigator", "POST", "/searches", 202, files=files(probe), data={"case": CASE}
        )
        job = a.wait("investigator", job)
        assert job["status"] == "done", job
        a.search_id = job["search_id"]
        found = a.ok("investigator", "GET", f"/searches/{a.search_id}")
        assert found["candidates"][0]["subject"] == "obama"
        a.candidate_id = found["candidates"][0]["id"]
        yield a


def _watchlist(name: str) -> dict:
    return {"name": name, "purpose": "tests", "expires": days(30)}


# --------------------------------------------------------------------------- the flow


def test_the_whole_flow_over_http(team: Team, shared_data: Path) -> None:
    fr = shared_data / FR
    with serve(team) as client:
        a = Api(team, client, fr)

        # Log in: a token for each user, from the name and password alone.
        for role in ROLES:
            r = client.post(f"{V1}/login", json={"name": role, "password": PASSWORD})
            assert r.status_code == 200, r.text
            assert r.json()["user"] == role and len(r.json()["token"]) > 30
            team.tokens[role] = r.json()["token"]
        assert a.ok("investigator", "GET", "/me")["role"] == "investigator"

        # The administrator enrols by upload.
        report = a.ok(
            "admin",
            "POST",
            "/subjects/obama/images",
            201,
            files=files(fr / "obama.jpg", fr / "knn_examples/train/obama/obama2.jpg"),
        )
        assert report["enrolled"] == 2 and report["subjects"] == ["obama"]
        assert {i["image"] for i in report["items"]} == {"obama.jpg", "obama2.jpg"}  # as uploaded
        # A manifest with reference numbers; it names uploaded files, never server paths.
        manifest = b"subject,image,reference\nbiden,biden.jpg,CU-0042\n"
        parts = [*files(fr / "biden.jpg"), ("manifest", ("gallery.csv", manifest, "text/csv"))]
        report = a.ok("admin", "POST", "/enrolments", 201, files=parts)
        assert report["subjects"] == ["biden"] and report["items"][0]["image"] == "biden.jpg"
        assert a.ok("admin", "GET", "/subjects/biden")["reference"] == "CU-0042"
        outside = b"subject,image\nbiden,/etc/hosts\n"
        parts = [*files(fr / "biden.jpg"), ("manifest", ("m.csv", outside, "text/csv"))]
        assert (
            "not uploaded"
            in is_problem(a.call("admin", "POST", "/enrolments", files=parts), 400)["detail"]
        )
        # A PNG sent as notes.txt is a PNG: the content decides, and names the saved file.
        lin = [("files", ("notes.txt", (fr / "lin-manuel-miranda.png").read_bytes(), "text/plain"))]
        report = a.ok("admin", "POST", "/subjects/lin-manuel-miranda/images", 201, files=lin)
        assert report["enrolled"] == 1 and report["items"][0]["image"] == "notes.png"
        subject = a.ok("admin", "GET", "/subjects/obama")
        image = subject["images"][0]
        r = a.call("investigator", "GET", f"/subjects/obama/files/{image['sha256']}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store" and r.content[:3] == b"\xff\xd8\xff"

        # The investigator opens a case that needs a second reviewer, and a watchlist the
        # authoriser authorises.
        case = {"reference": "OP/2026/7", "purpose": "robbery", "legal_basis": "tests"}
        opened = a.ok("investigator", "POST", "/cases", 201, json={**case, "second_review": True})
        assert opened["members"] == ["investigator"] and opened["second_review"]
        assert a.ok("investigator", "GET", "/cases/OP/2026/7")["reference"] == "OP/2026/7"
        a.ok("investigator", "POST", "/watchlists", 201, json=_watchlist("robbery"))
        subjects = ["obama", "biden", "lin-manuel-miranda"]
        added = {"subjects": subjects, "reason": "seen near the scene"}
        w = a.ok("investigator", "POST", "/watchlists/robbery/members", 201, json=added)
        assert w["status"] == "awaiting authorisation"
        refused = a.call("investigator", "POST", "/watchlists/robbery/authorisation", json=added)
        is_problem(refused, 403)
        w = a.ok("authoriser", "POST", "/watchlists/robbery/authorisation", json=added)
        assert w["status"] == "authorised" and w["authorised_by"] == "authoriser"

        # A search upload: 202 and a job, polled until done; then the candidates.
        probe = fr / "knn_examples/test/obama_and_biden.jpg"
        form = {"case": "OP/2026/7", "watchlist": "robbery"}
        job = a.ok("investigator", "POST", "/searches", 202, files=files(probe), data=form)
        assert job["kind"] == "search" and job["files"] == 1
        job = a.wait("investigator", job)
        assert job["status"] == "done" and job["files_done"] == 1, job
        probes = job["result"]["probes"]
        assert probes[0]["probe"] == "obama_and_biden.jpg"  # not a path on the server
        found = {c["subject"] for f in probes[0]["faces"] for c in f["candidates"]}
        assert {"obama", "biden"} <= found
        mine = a.ok("investigator", "GET", "/jobs")
        assert [j["id"] for j in mine["items"]] == [job["id"]] and "result" not in mine["items"][0]
        assert a.ok("authoriser", "GET", "/jobs")["total"] == 0  # jobs are their owner's
        is_problem(a.call("authoriser", "GET", f"/jobs/{job['id']}"), 404)

        view = a.ok("investigator", "GET", f"/searches/{job['search_id']}")
        obama = next(c for c in view["candidates"] if c["subject"] == "obama" and c["rank"] == 1)
        assert obama["probe"] == "obama_and_biden.jpg" and obama["outcome"] == "undecided"
        face = a.call("investigator", "GET", f"/candidates/{obama['id']}/face.png")
        assert face.status_code == 200 and face.headers["content-type"] == "image/png"
        assert face.headers["cache-control"] == "no-store" and face.content[:4] == b"\x89PNG"
        listed = a.ok("investigator", "GET", "/cases/OP/2026/7/searches")
        assert [s["id"] for s in listed["items"]] == [job["search_id"]]

        # A decision, and a second reviewer's confirmation.
        note = {"verdict": "match", "note": "ears and hairline agree"}
        decided = a.ok(
            "investigator", "POST", f"/candidates/{obama['id']}/decisions", 201, json=note
        )
        assert decided["outcome"] == "match (awaiting confirmation)"
        same = a.call("investigator", "POST", f"/candidates/{obama['id']}/confirmations", json=note)
        is_problem(same, 409)  # not by the person who decided
        confirmed = a.ok(
            "authoriser",
            "POST",
            f"/candidates/{obama['id']}/confirmations",
            201,
            json={"note": "agreed"},
        )
        assert confirmed["outcome"] == "match (confirmed)"

        # A video: per-video progress, and appearances at the end.
        clip = fr / "short_hamilton_clip.mp4"
        job = a.ok("investigator", "POST", "/searches", 202, files=files(clip), data=form)
        job = a.wait("investigator", job)
        assert job["status"] == "done", job
        progress = job["videos"]["short_hamilton_clip.mp4"]
        assert progress["frames"] > 0 and progress["seconds"] > 8 and progress["duration"] > 8
        video = job["result"]["probes"][0]
        assert video["kind"] == "video" and video["video"]["complete"]
        appearances = [f for f in video["faces"] if f["track"] is not None]
        assert appearances and all(f["end"] >= f["start"] for f in appearances)
        who = {c["subject"] for f in appearances for c in f["candidates"]}
        assert "lin-manuel-miranda" in who

        # A clustering job: the same unknown person in two files.
        media = files(fr / "obama.jpg", fr / "obama2.jpg", fr / "biden.jpg")
        job = a.ok(
            "investigator", "POST", "/clusters", 202, files=media, data={"case": "OP/2026/7"}
        )
        assert job["kind"] == "cluster"
        job = a.wait("investigator", job)
        assert job["status"] == "done", job
        result = job["result"]
        assert result["recurring"] >= 1 and result["persons"][0]["files"] == 2
        seen = {s["media"] for p in result["persons"] for s in p["sightings"]}
        assert seen == {"obama.jpg", "obama2.jpg", "biden.jpg"}

        # Verification answers at once.
        pair = files(fr / "obama.jpg", field="a") + files(fr / "obama2.jpg", field="b")
        verdict = a.ok("investigator", "POST", "/verify", files=pair, data={"case": "OP/2026/7"})
        assert verdict["match"] and verdict["a"]["probe"] == "obama.jpg"

        # Tokens: create, list, revoke; log out.
        made = a.ok("investigator", "POST", "/tokens", 201, json={"label": "script", "days": 1})
        listed = a.ok("investigator", "GET", "/tokens")
        assert made["id"] in {t["id"] for t in listed["items"]}
        assert all("token" not in t for t in listed["items"])
        script = {"Authorization": f"Bearer {made['token']}"}
        assert client.get(f"{V1}/me", headers=script).status_code == 200
        assert a.ok("investigator", "DELETE", f"/tokens/{made['id']}") == {"revoked": made["id"]}
        is_problem(client.get(f"{V1}/me", headers=script), 401)
        assert a.ok("investigator", "POST", "/logout") == {"logged_out": True}
        is_problem(a.call("investigator", "GET", "/me"), 401)

        # The trail is intact and tells the story.
        assert a.ok("auditor", "GET", "/audit/verify")["ok"]
        events = a.ok("auditor", "GET", "/audit/events", params={"limit": 500})["items"]
        actions = {e["action"] for e in events}
        assert {
            "login",
            "enrol",
            "case.open",
            "watchlist.authorise",
            "search",
            "cluster",
        } <= actions
        assert {"review.decide", "review.confirm", "verify", "token.revoke", "logout"} <= actions
        assert list((team.data / "uploads").iterdir()) == []


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class Req:
    """One request; `allowed`: the status an allowed role gets (None: any 2xx)."""

    method: str
    url: str
    kw: dict = field(default_factory=dict)
    allowed: int | None = None


def _users(a: Api, role: str) -> list[Req]:
    name = a.name(f"new-by-{role}")
    user = {"name": name, "role": "investigator", "password": PASSWORD}
    return [
        Req("GET", "/users"),
        Req("POST", "/users", {"json": user}, 201),
        Req("PATCH", f"/users/{name}", {"json": {"active": False}}),
    ]


def _policy_read(a: Api, role: str) -> list[Req]:
    return [Req("GET", "/policy")]


def _policy_change(a: Api, role: str) -> list[Req]:
    change = {"key": "approval_days", "value": 5, "reason": "tests"}
    return [Req("PATCH", "/policy", {"json": change})]


def _enrol(a: Api, role: str) -> list[Req]:
    single, listed = a.name(f"enrolled-by-{role}"), a.name(f"listed-by-{role}")
    manifest = f"subject,image,reference\n{listed},obama.jpg,CU-{role}\n".encode()
    parts = [*files(a.fr / "obama.jpg"), ("manifest", ("m.csv", manifest, "text/csv"))]
    return [
        Req("POST", f"/subjects/{single}/images", {"files": files(a.fr / "obama.jpg")}, 201),
        Req("POST", "/enrolments", {"files": parts}, 201),
    ]


def _gallery_read(a: Api, role: str) -> list[Req]:
    return [
        Req("GET", "/subjects"),
        Req("GET", f"/subjects/{KEPT}"),
        Req("GET", f"/subjects/{KEPT}/files/{a.kept_sha}"),
    ]


def _erase(a: Api, role: str) -> list[Req]:
    subject = ERASABLE if role in DOCUMENTED["gallery.erase"] else KEPT
    return [Req("DELETE", f"/subjects/{subject}", {"params": {"reason": "tests"}})]


def _renew(a: Api, role: str) -> list[Req]:
    return [Req("POST", f"/subjects/{KEPT}/renewal", {"json": {"until": days(30), "reason": "t"}})]


def _case_open(a: Api, role: str) -> list[Req]:
    case = {"reference": a.name(f"OPEN-{role}"), "purpose": "tests", "legal_basis": "tests"}
    return [Req("POST", "/cases", {"json": case}, 201)]


def _case_read(a: Api, role: str) -> list[Req]:
    return [Req("GET", "/cases"), Req("GET", f"/cases/{CASE}")]


def _case_manage(a: Api, role: str) -> list[Req]:
    # A fresh case of the investigator's, so that closing it leaves CASE open.
    reference = a.name(f"MANAGE-{role}")
    case = {"reference": reference, "purpose": "tests", "legal_basis": "tests"}
    a.ok("investigator", "POST", "/cases", 201, json=case)
    return [
        Req("POST", f"/cases/{reference}/members", {"json": {"user": "operator"}}, 201),
        Req("POST", f"/cases/{reference}/close", {"json": {"reason": "tests"}}),
    ]


def _approve(a: Api, role: str) -> list[Req]:
    approval = {"scope": "gallery", "reason": "tests", "days": 1}
    return [Req("POST", f"/cases/{CASE}/approvals", {"json": approval}, 201)]


def _watchlist_read(a: Api, role: str) -> list[Req]:
    return [Req("GET", "/watchlists"), Req("GET", f"/watchlists/{WATCHLIST}")]


def _watchlist_edit(a: Api, role: str) -> list[Req]:
    created = a.name(f"wl-by-{role}")
    # An allowed role edits the watchlist it made; a refused one tries the authorised one.
    target = created if role in DOCUMENTED["watchlist.edit"] else WATCHLIST
    remove = {"params": {"subject": ["obama"], "reason": "tests"}}
    return [
        Req("POST", "/watchlists", {"json": _watchlist(created)}, 201),
        Req(
            "POST",
            f"/watchlists/{target}/members",
            {"json": {"subjects": ["obama", KEPT], "reason": "t"}},
            201,
        ),
        Req("DELETE", f"/watchlists/{target}/members", remove),
    ]


def _watchlist_authorise(a: Api, role: str) -> list[Req]:
    # Made and filled by the investigator, so the authoriser is not its last editor.
    name = a.name(f"wl-to-authorise-{role}")
    a.ok("investigator", "POST", "/watchlists", 201, json=_watchlist(name))
    members = {"subjects": [KEPT], "reason": "tests"}
    a.ok("investigator", "POST", f"/watchlists/{name}/members", 201, json=members)
    return [Req("POST", f"/watchlists/{name}/authorisation", {"json": {"reason": "tests"}})]


def _search(a: Api, role: str) -> list[Req]:
    # Against the authorised watchlist: CASE's gallery approval is the authoriser's own.
    probe = a.fr / "knn_examples/test/obama1.jpg"
    form = {"case": CASE, "watchlist": WATCHLIST}
    return [
        Req("POST", "/searches", {"files": files(probe), "data": form}, 202),
        Req("POST", "/clusters", {"files": files(probe), "data": {"case": CASE}}, 202),
    ]


def _verify(a: Api, role: str) -> list[Req]:
    pair = files(a.fr / "obama.jpg", field="a") + files(a.fr / "obama2.jpg", field="b")
    return [Req("POST", "/verify", {"files": pair, "data": {"case": CASE}})]


def _review_read(a: Api, role: str) -> list[Req]:
    return [
        Req("GET", f"/searches/{a.search_id}"),
        Req("GET", f"/cases/{CASE}/searches"),
        Req("GET", f"/candidates/{a.candidate_id}/face.png"),
    ]


def _decide(a: Api, role: str) -> list[Req]:
    note = {"verdict": "match", "note": f"by {role}"}
    calls = [Req("POST", f"/candidates/{a.candidate_id}/decisions", {"json": note}, 201)]
    if role not in DOCUMENTED["review.decide"]:
        confirm = {"json": {"note": f"by {role}"}}
        calls.append(Req("POST", f"/candidates/{a.candidate_id}/confirmations", confirm))
    return calls


def _audit(a: Api, role: str) -> list[Req]:
    since = {"limit": 5, "since": "2020-01-01T00:00:00"}  # no zone: UTC
    return [Req("GET", "/audit/verify"), Req("GET", "/audit/events", {"params": since})]


def _retention_run(a: Api, role: str) -> list[Req]:
    return [Req("POST", "/retention/run")]


def _retention_report(a: Api, role: str) -> list[Req]:
    return [Req("GET", "/retention/report", {"params": {"days": 10}})]


def _storage(a: Api, role: str) -> list[Req]:
    # No encryption key is configured: an allowed role gets past the role check to that.
    return [Req("POST", "/storage/encryption", allowed=400)]


def _live_deploy(a: Api, role: str) -> list[Req]:
    # A file on the server is refused over HTTP once the role allows deploying; no such
    # deployment to stop once the role allows stopping (tests/test_live_web.py runs streams).
    start = {"watchlist": WATCHLIST, "source": "/etc/hosts", "until": days(1)}
    return [
        Req("POST", "/live/deployments", {"json": start}, allowed=400),
        Req("POST", "/live/deployments/999999/stop", {"json": {}}, allowed=404),
    ]


def _live_read(a: Api, role: str) -> list[Req]:
    return [
        Req("GET", "/live/deployments"),
        Req("GET", "/live/report"),
        Req("GET", "/live/deployments/999999", allowed=404),
        Req("GET", "/live/deployments/999999/alerts", allowed=404),
        Req("GET", "/live/alerts/999999/best-shot.png", allowed=404),
        Req("GET", "/live/events", {"params": {"deployment": 999999}}, allowed=404),
    ]


def _alert_review(a: Api, role: str) -> list[Req]:
    review = {"outcome": "false", "note": "tests"}
    return [Req("POST", "/live/alerts/999999/review", {"json": review}, allowed=404)]


def _case_report(a: Api, role: str) -> list[Req]:
    return [Req("GET", f"/cases/{CASE}/report")]


def _transparency(a: Api, role: str) -> list[Req]:
    today = datetime.now(UTC).date()
    period = {"from": str(today - timedelta(days=30)), "to": str(today)}
    return [Req("GET", "/reports/transparency", {"params": period})]


ROUTES: dict[str, Callable[[Api, str], list[Req]]] = {
    "users.manage": _users,
    "policy.read": _policy_read,
    "policy.change": _policy_change,
    "gallery.enrol": _enrol,
    "gallery.read": _gallery_read,
    "gallery.erase": _erase,
    "subject.renew": _renew,
    "case.open": _case_open,
    "case.read": _case_read,
    "case.manage": _case_manage,
    "search.approve": _approve,
    "watchlist.read": _watchlist_read,
    "watchlist.edit": _watchlist_edit,
    "watchlist.authorise": _watchlist_authorise,
    "search": _search,
    "verify": _verify,
    "review.read": _review_read,
    "review.decide": _decide,
    "audit.read": _audit,
    "retention.run": _retention_run,
    "retention.report": _retention_report,
    "storage.manage": _storage,
    "live.deploy": _live_deploy,
    "live.read": _live_read,
    "alert.review": _alert_review,
    "case.report": _case_report,
    "report.transparency": _transparency,
}


def test_every_documented_operation_has_a_route() -> None:
    assert set(ROUTES) | CLI_ONLY == set(DOCUMENTED)
    assert not set(ROUTES) & CLI_ONLY


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", sorted(ROUTES))
def test_operation_as_role_over_http(api: Api, op: str, role: str) -> None:
    jobs = []
    for req in ROUTES[op](api, role):
        r = api.call(role, req.method, req.url, **req.kw)
        if role in DOCUMENTED[op]:
            expected = req.allowed
            if expected is None:
                assert 200 <= r.status_code < 300, (req, r.status_code, r.text)
            else:
                assert r.status_code == expected, (req, r.status_code, r.text)
            if r.status_code == 202:
                jobs.append(r.json())
        else:
            body = is_problem(r, 403)
            assert body["title"] == "PermissionDeniedError" and op in body["detail"]
    for job in jobs:  # an allowed role's job runs to the end
        assert api.wait(role, job)["status"] == "done"


@pytest.mark.parametrize("op", sorted(ROUTES))
def test_operation_without_a_token_is_401(api: Api, op: str) -> None:
    for req in ROUTES[op](api, "nobody"):
        r = api.call(None, req.method, req.url, **req.kw)
        is_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_wrong_token_is_401(api: Api) -> None:
    r = api.client.get(f"{V1}/subjects", headers={"Authorization": "Bearer not-a-token"})
    assert is_problem(r, 401)["title"] == "AuthenticationError"
    r = api.client.get(f"{V1}/subjects", headers={"Authorization": "Basic dXNlcjpwdw=="})
    is_problem(r, 401)


# --------------------------------------------------------------------------- errors


def test_problem_statuses(api: Api) -> None:
    # 400: the service refuses the input (nothing to change); an empty upload.
    assert is_problem(api.call("admin", "PATCH", "/users/operator", json={}), 400)["title"] == (
        "InvalidInputError"
    )
    empty = [("files", ("empty.jpg", b"", "image/jpeg"))]
    is_problem(api.call("admin", "POST", "/subjects/x/images", files=empty), 400)
    # 401, 403, 404.
    is_problem(api.call(None, "GET", "/policy"), 401)
    is_problem(api.call("operator", "GET", "/users"), 403)
    assert "nobody" in is_problem(api.call("admin", "GET", "/subjects/nobody"), 404)["detail"]
    is_problem(api.call("investigator", "GET", "/cases/NO-SUCH-CASE"), 404)
    is_problem(api.call("admin", "GET", f"/subjects/{KEPT}/files/{'0' * 64}"), 404)
    # 409: policy. A token longer than policy allows; a gallery search on the authoriser's
    # own approval, refused before the upload is kept (no job).
    token = {"label": "long", "days": 9999}
    assert is_problem(api.call("investigator", "POST", "/tokens", json=token), 409)["title"] == (
        "PolicyError"
    )
    probe = files(api.fr / "obama.jpg")
    r = api.call("authoriser", "POST", "/searches", files=probe, data={"case": CASE})
    assert "approval" in is_problem(r, 409)["detail"]
    # 415: a text file named .jpg, as a probe and as a reference image.
    text = [("files", ("photo.jpg", b"just some text, not a picture\n" * 20, "image/jpeg"))]
    r = api.call("investigator", "POST", "/searches", files=text, data={"case": CASE})
    assert "by content" in is_problem(r, 415)["detail"]
    is_problem(api.call("admin", "POST", "/subjects/x/images", files=text), 415)
    # 422: validation, without echoing the input back.
    r = api.call("investigator", "POST", "/cases", json={"reference": "X-1", "purpose": "p"})
    assert "legal_basis" in is_problem(r, 422)["detail"]
    secret = "hunter2-hunter2"
    r = api.call("admin", "POST", "/users", json={"name": "x", "role": "auditor", "password": 7})
    assert is_problem(r, 422)
    r = api.call("admin", "PATCH", "/users/operator", json={"active": secret})
    assert secret not in is_problem(r, 422)["detail"]
    is_problem(api.call("investigator", "POST", "/searches", data={"case": CASE}), 422)
    is_problem(api.call("investigator", "GET", "/searches/not-a-number"), 422)
    bad_date = {"name": "wl-x", "purpose": "p", "expires": "next tuesday"}
    is_problem(api.call("investigator", "POST", "/watchlists", json=bad_date), 422)
    assert list((api.data / "uploads").iterdir()) == []


def test_uploads_over_the_limit_are_413(tmp_path: Path, shared_data: Path) -> None:
    team = make_team(tmp_path / "data", approvals=False)
    fr = shared_data / FR
    small = fr / "obama_small.jpg"
    big = fr / "obama.jpg"
    limit = small.stat().st_size + 1
    assert big.stat().st_size > limit
    with serve(team, max_file_bytes=limit, max_upload_bytes=2048) as client:
        a = Api(team, client, fr)
        r = a.call("admin", "POST", "/subjects/x/images", files=files(big))
        assert "limit" in is_problem(r, 413)["detail"]
        clip = fr / "short_hamilton_clip.mp4"  # a video has its own limit
        r = a.call("admin", "POST", "/subjects/x/images", files=files(small, clip))
        assert "video limit" in is_problem(r, 413)["detail"]
        a.ok("admin", "POST", "/subjects/x/images", 201, files=files(small))
        assert list((team.data / "uploads").iterdir()) == []


# --------------------------------------------------------------------------- lists, log-in


def test_pagination(api: Api) -> None:
    everyone = api.ok("admin", "GET", "/subjects", params={"limit": 500})
    total = everyone["total"]
    assert total == len(everyone["items"]) >= 3
    page = api.ok("admin", "GET", "/subjects", params={"limit": 1, "offset": 1})
    assert page["total"] == total and page["limit"] == 1 and page["offset"] == 1
    assert page["items"] == everyone["items"][1:2]
    past = api.ok("admin", "GET", "/subjects", params={"offset": total})
    assert past["items"] == [] and past["total"] == total

    users = api.ok("admin", "GET", "/users", params={"limit": 2})
    assert users["total"] >= 5 and len(users["items"]) == 2
    second = api.ok("admin", "GET", "/users", params={"limit": 2, "offset": 2})
    names = [u["name"] for u in users["items"] + second["items"]]
    assert names[:4] == ["admin", "authoriser", "investigator", "operator"]
    assert api.ok("admin", "GET", "/users")["limit"] == 50  # the default

    for url in ("/subjects", "/users", "/cases", "/audit/events"):
        is_problem(api.call("admin", "GET", url, params={"limit": 501}), 422)
        is_problem(api.call("admin", "GET", url, params={"limit": 0}), 422)
        is_problem(api.call("admin", "GET", url, params={"offset": -1}), 422)


def test_log_in_rate_limit(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh limiter with a tiny window, on a clock of the test's own (argon2 takes real
    # time, so a real clock would let early failures age out on a slow machine).
    clock = [1000.0]
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(api.client.app.state, "limiter", LoginLimiter(attempts=5, window=1.0))
    wrong = {"name": "operator", "password": "not the password"}
    for _ in range(5):
        is_problem(api.client.post(f"{V1}/login", json=wrong), 401)
        clock[0] += 0.1
    r = api.client.post(f"{V1}/login", json=wrong)
    is_problem(r, 429)
    assert r.headers["retry-after"] == "1"
    right = {"name": "operator", "password": PASSWORD}
    is_problem(api.client.post(f"{V1}/login", json=right), 429)  # even the right password
    clock[0] += 1.0  # the window has passed
    r = api.client.post(f"{V1}/login", json=right)
    assert r.status_code == 200 and r.json()["user"] == "operator"


def test_openapi_and_docs(api: Api) -> None:
    r = api.client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/login", "post"),
        ("/users/{name}", "patch"),
        ("/tokens/{token_id}", "delete"),
        ("/policy", "patch"),
        ("/subjects/{name}/images", "post"),
        ("/subjects/{name}/files/{sha256}", "get"),
        ("/subjects/{name}", "delete"),
        ("/enrolments", "post"),
        ("/cases/{reference}/approvals", "post"),
        ("/watchlists/{name}/members", "delete"),
        ("/searches", "post"),
        ("/jobs/{job_id}", "get"),
        ("/clusters", "post"),
        ("/verify", "post"),
        ("/candidates/{candidate_id}/decisions", "post"),
        ("/audit/events", "get"),
        ("/retention/report", "get"),
    ]:
        assert method in paths[V1 + path], path
    assert "facetrail eval lfw" in spec["info"]["description"]  # evaluation: CLI only


# --------------------------------------------------------------------------- what is not kept

FLOATS = re.compile(r"(-?\d+\.\d+[,\s]+){16,}")


def test_no_biometric_data_in_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    probe = api.fr / "knn_examples/test/obama1.jpg"
    raw = probe.read_bytes()
    chunks = [raw[i : i + 48] for i in range(256, len(raw) - 48, len(raw) // 8)]
    needles = [c.hex() for c in chunks] + [base64.b64encode(c).decode() for c in chunks]
    caplog.set_level(logging.DEBUG)
    job = api.ok("investigator", "POST", "/searches", 202, files=files(probe), data={"case": CASE})
    job = api.wait("investigator", job)
    assert job["status"] == "done"
    api.ok("investigator", "GET", f"/searches/{job['search_id']}")
    api.ok("admin", "GET", f"/subjects/{KEPT}")
    ft = api.client.app.state.ft  # the descriptors that must not be logged
    descriptors = np.asarray(ft.store.templates(ft.analyzer.model_id).vectors)
    assert caplog.records, "nothing was logged at all: the check would be empty"
    for record in caplog.records:
        text = record.getMessage()
        assert not FLOATS.search(text), text[:200]
        assert not any(n in text for n in needles)
        assert not any(f"{v:.6f}" in text for v in descriptors[:, :4].ravel())
        for arg in record.args if isinstance(record.args, tuple) else ():
            assert not isinstance(arg, np.ndarray)
            assert not (isinstance(arg, bytes | bytearray) and len(arg) > 64)
    assert list((api.data / "uploads").iterdir()) == []
