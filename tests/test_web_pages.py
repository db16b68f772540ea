"""The web workspace's pages without a browser (Starlette's test client): sessions, CSRF,
log-in limits, roles, uploads checked by content, and the review forms, including a second
reviewer's confirmation. tests/test_web.py drives the same pages with Chromium."""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CASE, PASSWORD, Team, make_team

FR = "examples/face_recognition"
CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Any]:
    from facetrail.config import Settings
    from facetrail.web.app import create_app

    team = make_team(tmp_path_factory.mktemp("pages") / "data")
    with team.open("admin") as admin:
        admin.enrol([shared_data / FR / "knn_examples" / "train"])
    app = create_app(Settings(data=team.data))
    app.state.team, app.state.shared = team, shared_data
    try:
        yield app
    finally:
        app.state.jobs.shutdown()
        app.state.ft.close()


def browser(app: Any, who: str | None = None, *, https: bool = False) -> Any:
    from fastapi.testclient import TestClient

    base = "https://testserver" if https else "http://testserver"
    client = TestClient(app, base_url=base, follow_redirects=False)
    if who is not None:
        assert log_in(client, who).status_code == 303
    return client


def log_in(client: Any, who: str, password: str = PASSWORD) -> Any:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"name": who, "password": password, "csrf": token})


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no CSRF field on the page"
    return html.unescape(found.group(1))


def events(team: Team) -> list[dict]:
    with team.open("admin") as admin:
        return admin.store.export_audit()


def search_by_form(client: Any, case: str, *files: tuple[str, bytes], **fields: str) -> int:
    """Upload through the search form, wait for the job; the search's id."""
    token = csrf_of(client.get(f"/cases/{case}/search").text)
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    r = client.post(f"/cases/{case}/search", data={"csrf": token, **fields}, files=parts)
    assert r.status_code == 303, r.text
    job = r.headers["location"]
    deadline = time.monotonic() + 60
    while True:
        progress = client.get(f"{job}/progress", headers={"Accept": "application/json"}).json()
        if progress["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert progress["status"] == "done", progress["error"]
    return int(progress["result_url"].rsplit("/", 1)[1])


def cookie_header(response: Any, name: str) -> str:
    return next(h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}="))


# --------------------------------------------------------------------------- sessions


def test_pages_need_a_session_and_say_where_to_log_in(site: Any) -> None:
    client = browser(site)
    r = client.get("/cases?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fcases%3Fx%3D1"
    r = client.get("/jobs/abc/progress", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    client.cookies.set("facetrail_session", "ft_not-a-real-token")
    assert client.get("/cases").status_code == 303  # an unknown token is no session either


def test_the_session_cookie_is_httponly_strict_and_secure_over_https(site: Any) -> None:
    plain = log_in(browser(site), "investigator")
    cookie = cookie_header(plain, "facetrail_session").lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie
    secure = log_in(browser(site, https=True), "investigator")
    assert "; secure" in cookie_header(secure, "facetrail_session").lower()


def test_log_out_revokes_the_token(site: Any) -> None:
    client = browser(site, "auditor")
    token = client.cookies.get("facetrail_session")
    page = client.get("/audit")
    r = client.post("/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = browser(site)
    replay.cookies.set("facetrail_session", token)
    assert replay.get("/audit").status_code == 303  # the old cookie is worth nothing now
    assert events(site.state.team)[-1]["action"] == "logout"


def test_log_in_needs_its_form_token_and_goes_only_to_local_pages(site: Any) -> None:
    client = browser(site)
    r = client.post("/login", data={"name": "investigator", "password": PASSWORD})
    assert r.status_code == 403 and "facetrail_session" not in r.headers.get("set-cookie", "")
    page = client.get("/login", params={"next": "//evil.example/x"})
    assert 'name="next" value="/"' in page.text
    r = client.post(
        "/login",
        data={
            "name": "investigator",
            "password": PASSWORD,
            "csrf": csrf_of(page.text),
            "next": "https://evil.example/",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_the_sixth_failed_log_in_is_refused_with_429(site: Any) -> None:
    from facetrail.web.auth import LoginLimiter

    client = browser(site)
    try:
        codes = [log_in(client, "operator", "not-the-password").status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        r = log_in(client, "operator")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "Too many failed log-in attempts" in r.text
    finally:
        site.state.limiter = LoginLimiter()


def test_failed_log_ins_do_not_write_passwords_to_the_trail(site: Any) -> None:
    from facetrail.web.auth import LoginLimiter

    assert log_in(browser(site), "a-password-typed-as-a-name", "x").status_code == 401
    site.state.limiter = LoginLimiter()
    last = events(site.state.team)[-1]
    assert last["action"] == "login.failed" and last["actor"] == "unknown"


# --------------------------------------------------------------------------- CSRF


def post_routes(app: Any) -> list[str]:
    from facetrail.web import pages

    paths = []
    for route in pages.router.routes:
        if "POST" in route.methods and route.path != "/login":
            paths.append(
                route.path.replace("{reference:path}", CASE)
                .replace("{candidate_id}", "1")
                .replace("{name}", "obama")
            )
    return paths


def test_every_form_is_refused_without_its_csrf_token_and_changes_nothing(site: Any) -> None:
    team = site.state.team
    paths = post_routes(site)
    assert len(paths) >= 15
    before = len(events(team))
    for role in ("admin", "authoriser", "investigator"):
        client = browser(site, role)
        start = len(events(team))
        other = csrf_of(browser(site, role).get("/subjects").text)  # another session's token
        for path in paths:
            for token in (None, "", "0" * 64, other):
                data = {"reason": "r", "note": "n", "verdict": "match", "search": "1"}
                if token is not None:
                    data["csrf"] = token
                r = client.post(path, data=data)
                assert r.status_code == 403, (role, path, token, r.status_code)
                assert "nothing was changed" in r.text
        assert len(events(team)) == start + 1  # the other session's log-in, nothing more
    assert len(events(team)) == before + 6


# --------------------------------------------------------------------------- roles


PAGES = {
    "/cases": "case.read",
    "/approvals": "search.approve",
    "/jobs": "search",
    "/subjects": "gallery.read",
    "/watchlists": "watchlist.read",
    "/audit": "audit.read",
    "/retention": "retention.report",
    "/users": "users.manage",
}


@pytest.mark.parametrize("role", ["admin", "authoriser", "investigator", "operator", "auditor"])
def test_each_page_answers_as_the_roles_table_says(site: Any, role: str) -> None:
    from facetrail.service.access import Op, Role, allowed

    client = browser(site, role)
    home = client.get("/subjects")
    for path, op in PAGES.items():
        may = allowed(Role(role), Op(op))
        r = client.get(path)
        assert r.status_code == (200 if may else 403), (role, path)
        assert r.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert (f'href="{path}"' in home.text) == may  # the menu offers only what is allowed
        if not may:
            assert "Not allowed" in r.text and f"may not {op}" in r.text
    assert client.get("/").headers["location"] in PAGES


def test_an_operator_cannot_authorise_even_by_posting_the_form(site: Any) -> None:
    team = site.state.team
    with team.open("investigator") as investigator:
        investigator.create_watchlist("ops", purpose="tests", expires_at=_days(10))
        investigator.add_to_watchlist("ops", ["biden"], reason="tests")
    client = browser(site, "operator")
    page = client.get("/watchlists/ops")
    assert page.status_code == 200 and "Authorise ops" not in page.text
    r = client.post("/watchlists/ops/authorise", data={"csrf": csrf_of(page.text), "reason": "x"})
    assert r.status_code == 403 and "may not watchlist.authorise" in r.text
    with team.open("auditor") as auditor:
        assert auditor.watchlist("ops").status == "awaiting authorisation"


def _days(n: int):
    from datetime import timedelta

    from facetrail.store.models import utcnow

    return utcnow() + timedelta(days=n)


# --------------------------------------------------------------------------- uploads


def test_uploads_are_checked_by_content_not_by_name(site: Any) -> None:
    client = browser(site, "investigator")
    token = csrf_of(client.get(f"/cases/{CASE}/search").text)
    fake = ("files", ("cctv.jpg", b"MZ\x90\x00 this is not a picture", "image/jpeg"))
    r = client.post(f"/cases/{CASE}/search", data={"csrf": token}, files=[fake])
    assert r.status_code == 415 and "not an image or video" in r.text
    uploads = site.state.settings.data / "uploads"
    assert not any(uploads.glob("job-*/*"))  # nothing of it was kept
    r = client.post(f"/cases/{CASE}/search", data={"csrf": token})
    assert r.status_code == 400


def test_a_search_by_form_is_reviewed_and_confirmed_by_a_second_reviewer(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    team, shared = site.state.team, site.state.shared
    investigator = browser(site, "investigator")
    page = investigator.get("/cases")
    r = investigator.post(
        "/cases",
        data={
            "csrf": csrf_of(page.text),
            "reference": "SR-1",
            "purpose": "second review",
            "legal_basis": "tests",
            "second_review": "true",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/cases/SR-1?done=opened"
    authoriser = browser(site, "authoriser")
    desk = authoriser.get("/approvals")
    r = authoriser.post(
        "/cases/SR-1/approvals",
        data={"csrf": csrf_of(desk.text), "scope": "gallery", "reason": "ok", "next": "/approvals"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/approvals?done=approved"

    probe = (shared / FR / "knn_examples" / "test" / "obama1.jpg").read_bytes()
    search = search_by_form(investigator, "SR-1", ("a-still.jpeg", probe), top_k="2")
    page = investigator.get(f"/searches/{search}")
    assert page.status_code == 200
    first = re.search(r'id="candidate-(\d+)" data-subject="([^"]+)" data-rank="1"', page.text)
    assert first and first.group(2) == "obama"
    cid = int(first.group(1))
    face = investigator.get(f"/candidates/{cid}/face.png")
    assert face.headers["content-type"] == "image/png"
    assert face.headers["cache-control"] == "no-store"
    assert face.content.startswith(b"\x89PNG")
    ref = re.search(r'src="(/subjects/obama/files/[0-9a-f]{64})"', page.text)
    assert ref, "the subject's reference faces are shown beside the candidate"
    crop = investigator.get(ref.group(1))
    assert crop.status_code == 200 and crop.headers["cache-control"] == "no-store"
    assert crop.headers["content-type"].startswith("image/")

    r = investigator.post(
        f"/candidates/{cid}/decision",
        data={"csrf": csrf_of(page.text), "search": search, "verdict": "match", "note": "ears"},
    )
    assert r.headers["location"] == f"/searches/{search}?done=decided#candidate-{cid}"
    page = investigator.get(f"/searches/{search}")
    assert "match (awaiting confirmation)" in page.text
    assert f"/candidates/{cid}/confirmation" not in page.text  # not the decider's to confirm

    review = authoriser.get(f"/searches/{search}")
    assert f"/candidates/{cid}/confirmation" in review.text
    r = authoriser.post(
        f"/candidates/{cid}/confirmation",
        data={"csrf": csrf_of(review.text), "search": search, "note": "agree: ears, scar"},
    )
    assert r.status_code == 303
    assert "match (confirmed)" in authoriser.get(f"/searches/{search}").text
    actions = [e["action"] for e in events(team) if e["case"] == "SR-1"]
    assert actions.count("review.decide") == 1 and actions.count("review.confirm") == 1
    # Nothing about the faces reaches the service's logs: no names, no file names. (httpx
    # is the test's own client, logging the URLs it asks for.)
    for record in caplog.records:
        if record.name.startswith("httpx"):
            continue
        text = record.getMessage()
        assert "obama" not in text and "a-still" not in text, text


def test_a_clustering_by_form_lists_the_persons(site: Any) -> None:
    client = browser(site, "investigator")
    token = csrf_of(client.get(f"/cases/{CASE}/cluster").text)
    shared = site.state.shared
    files = [
        ("files", (n, (shared / FR / "knn_examples" / "test" / n).read_bytes(), "image/jpeg"))
        for n in ("obama1.jpg", "obama_and_biden.jpg")
    ]
    r = client.post(f"/cases/{CASE}/cluster", data={"csrf": token}, files=files)
    assert r.status_code == 303
    job = r.headers["location"]
    deadline = time.monotonic() + 60
    while client.get(f"{job}/progress", headers={"Accept": "application/json"}).json()[
        "status"
    ] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    page = client.get(job)
    assert "unknown person(s)" in page.text and "person 1" in page.text
    assert "1 seen in two or more files" in page.text  # Obama, in both


def test_watchlists_subjects_and_retention_by_form(site: Any) -> None:
    team = site.state.team
    investigator = browser(site, "investigator")
    page = investigator.get("/watchlists")
    r = investigator.post(
        "/watchlists",
        data={
            "csrf": csrf_of(page.text),
            "name": "robbery",
            "purpose": "suspects",
            "expires": _days(20).date().isoformat(),
        },
    )
    assert r.headers["location"] == "/watchlists/robbery?done=created"
    page = investigator.get("/watchlists/robbery")
    r = investigator.post(
        "/watchlists/robbery/members",
        data={"csrf": csrf_of(page.text), "subjects": ["obama", "biden"], "reason": "seen"},
    )
    assert r.status_code == 303
    authoriser = browser(site, "authoriser")
    page = authoriser.get("/watchlists/robbery")
    assert "Authorise robbery" in page.text
    r = authoriser.post(
        "/watchlists/robbery/authorise", data={"csrf": csrf_of(page.text), "reason": "fine"}
    )
    assert r.status_code == 303
    page = authoriser.get("/watchlists/robbery")
    assert "authorised" in page.text and "obama" in page.text and "biden" in page.text

    subject = authoriser.get("/subjects/obama")
    r = authoriser.post(
        "/subjects/obama/renew",
        data={
            "csrf": csrf_of(subject.text),
            "until": _days(400).date().isoformat(),
            "reason": "still wanted",
        },
    )
    assert r.headers["location"] == "/subjects/obama?done=renewed"
    assert events(team)[-1]["action"] == "subject.renew"
    bad = authoriser.post(
        "/subjects/obama/renew",
        data={"csrf": csrf_of(subject.text), "until": "soon", "reason": "x"},
    )
    assert bad.status_code == 400 and "must be a date" in bad.text

    auditor = browser(site, "auditor")
    report = auditor.get("/retention", params={"days": 36500})
    assert report.status_code == 200 and 'subject <a href="/subjects/obama">' in report.text
    admin = browser(site, "admin")
    page = admin.get("/retention")
    r = admin.post("/retention/run", data={"csrf": csrf_of(page.text)})
    assert r.headers["location"] == "/retention?done=retention"
    assert "retention.run" in admin.get("/retention").text


def test_a_closed_case_takes_no_more_searches(site: Any) -> None:
    with site.state.team.open() as investigator:
        investigator.open_case("CL-1", purpose="to close", legal_basis="tests")
    client = browser(site, "investigator")
    page = client.get("/cases/CL-1")
    assert "Search probes" in page.text
    r = client.post("/cases/CL-1/close", data={"csrf": csrf_of(page.text), "reason": "done"})
    assert r.headers["location"] == "/cases/CL-1?done=closed"
    page = client.get(r.headers["location"])
    assert "Case closed." in page.text and "Search probes" not in page.text
    r = client.get("/cases/CL-1/search")
    assert r.status_code == 409 and "case CL-1 is closed" in r.text
