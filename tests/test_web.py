"""The web workspace end to end: headless Debian Chromium (driven by Playwright, which
downloads nothing: it is pointed at /usr/bin/chromium) against the app served by uvicorn.

An investigator logs in, opens a case, an authoriser approves a gallery search in it, the
investigator uploads a probe, sees the candidates and records a decision; a video search
shows its timeline; an auditor finds those events in the audit view; an operator is refused
an authoriser's page. Also: a form post without its CSRF token changes nothing, the session
cookie is HttpOnly and SameSite=Strict, and the sixth wrong password is refused with 429.

The run saves screenshots of the main pages to docs/screenshots/ (shown in the README).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CASE, PASSWORD, Team, make_team, serve_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
FR = "examples/face_recognition"
WEB_CASE = "WEB-1"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright (Python) is not installed: pip install playwright"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)",
)


class Site:
    """The app served on a free port of 127.0.0.1, with its data directory's team."""

    def __init__(self, team: Team, app: Any, url: str, shared: Path) -> None:
        self.team, self.app, self.url, self.shared = team, app, url, shared


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Site]:
    from facetrail.config import Settings
    from facetrail.web.app import create_app

    team = make_team(tmp_path_factory.mktemp("web") / "data")
    with team.open("admin") as admin:
        admin.enrol([shared_data / FR / "knn_examples" / "train"])
        admin.enrol([shared_data / FR / "lin-manuel-miranda.png"], subject="lin-manuel-miranda")
    app = create_app(Settings(data=team.data))
    with serve_app(app) as url:
        yield Site(team, app, url, shared_data)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


def new_context(browser: Any) -> tuple[Any, list[str]]:
    """A fresh browser profile, and the script errors and Content-Security-Policy refusals
    its pages report (there should be none: the pages use no inline script or style)."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(30_000)
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            problems.append(message.text)

    ctx.on("console", on_console)
    ctx.on("weberror", lambda error: problems.append(str(error.error)))
    return ctx, problems


@pytest.fixture()
def context(browser: Any) -> Iterator[Any]:
    ctx, problems = new_context(browser)
    try:
        yield ctx
    finally:
        ctx.close()
    assert not problems, problems


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def log_in(page: Any, site: Site, who: str, password: str = PASSWORD) -> Any:
    page.goto(f"{site.url}/login")
    page.get_by_label("Name").fill(who)
    page.get_by_label("Password").fill(password)
    with page.expect_response(
        lambda r: r.url.endswith("/login") and r.request.method == "POST"
    ) as r:
        page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    return r.value


def test_investigator_opens_a_case_searches_and_decides(site: Site, browser: Any) -> None:
    investigator, problems = new_context(browser)
    page = investigator.new_page()
    page.goto(f"{site.url}/cases")
    assert "/login" in page.url  # no session: the page asks for one
    shot(page, "login")
    assert log_in(page, site, "investigator").status == 303
    assert page.url.endswith("/cases")

    session = next(c for c in investigator.cookies() if c["name"] == "facetrail_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"

    # Open a case.
    page.get_by_label("Reference").fill(WEB_CASE)
    page.get_by_label("Purpose").fill("robbery at 3 High St, CCTV stills")
    page.get_by_label("Legal basis").fill("common law policing purpose")
    page.get_by_role("button", name="Open case").click()
    page.wait_for_url(f"**/cases/{WEB_CASE}?done=opened")
    assert page.get_by_role("status").inner_text() == "Case opened."

    # An authoriser approves a gallery-wide search in it, on their own desk.
    authoriser, problems_too = new_context(browser)
    desk = authoriser.new_page()
    log_in(desk, site, "authoriser")
    desk.goto(f"{site.url}/approvals")
    card = desk.locator("article.card", has_text=WEB_CASE)
    card.get_by_label("Scope").select_option("gallery")
    card.get_by_label("Reason").fill("necessary and proportionate: one still, one robbery")
    card.get_by_role("button", name="Approve").click()
    desk.wait_for_url("**/approvals?done=approved")
    shot(desk, "approvals")
    authoriser.close()

    # The investigator uploads a probe through the form and follows the job.
    page.goto(f"{site.url}/cases")
    shot(page, "cases")
    page.get_by_role("link", name=WEB_CASE).click()
    page.get_by_role("link", name="Search probes").click()
    page.set_input_files("#files", str(site.shared / FR / "knn_examples" / "test" / "obama1.jpg"))
    page.get_by_label("Candidates per face").fill("3")
    shot(page, "upload")
    page.get_by_role("button", name="Upload and search").click()
    page.wait_for_url("**/searches/*", timeout=60_000)  # the job page's script moves on

    first = page.locator("li.candidate").first
    assert first.get_attribute("data-rank") == "1"
    assert first.get_attribute("data-subject") == "obama"
    assert first.locator("[data-outcome]").inner_text() == "undecided"
    assert first.locator(".refs img").count() >= 1  # the subject's reference faces beside it
    for img in [page.locator("figure.probe img").first, first.locator(".refs img").first]:
        assert img.evaluate("i => i.complete && i.naturalWidth > 0")
    src = page.locator("figure.probe img").first.get_attribute("src")
    face = page.request.get(f"{site.url}{src}")
    assert face.status == 200 and face.headers["cache-control"] == "no-store"
    shot(page, "review")

    first.get_by_label("Your decision's note").fill("ears, hairline and scar on the lip agree")
    first.get_by_role("button", name="Match", exact=True).click()
    page.wait_for_url("**done=decided*")
    first = page.locator("li.candidate").first
    assert first.locator("[data-outcome]").inner_text() == "match"
    assert "ears, hairline" in first.locator("ol.history").inner_text()

    page.goto(f"{site.url}/cases/{WEB_CASE}")
    assert "1 match" in page.locator("table", has_text="search").first.inner_text()
    shot(page, "case")
    investigator.close()
    assert not problems + problems_too


def test_a_video_is_shown_as_a_timeline_of_appearances(site: Site, context: Any) -> None:
    page = context.new_page()
    log_in(page, site, "investigator")
    page.goto(f"{site.url}/cases/{CASE}/search")
    # Drop the clip onto the form, as a person would drag it from their files.
    clip = (site.shared / FR / "short_hamilton_clip.mp4").read_bytes()
    page.evaluate(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "video/mp4" }));
            const zone = document.querySelector("[data-dropzone]");
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
        }""",
        ["short_hamilton_clip.mp4", base64.b64encode(clip).decode()],
    )
    assert page.locator("#files").evaluate("i => i.files.length") == 1
    assert "short_hamilton_clip.mp4" in page.locator("[data-chosen]").inner_text()
    page.get_by_role("button", name="Upload and search").click()
    page.wait_for_url("**/searches/*", timeout=90_000)

    timeline = page.locator("section.timeline")
    assert "short_hamilton_clip" in timeline.locator("h2").inner_text()
    assert timeline.locator("rect.appearance").count() >= 1
    shots = timeline.locator("ol.shots img")
    assert shots.count() >= 1
    assert shots.first.evaluate("i => i.complete && i.naturalWidth > 0")
    assert "lin-manuel-miranda" in timeline.inner_text()
    shot(page, "timeline")

    page.goto(f"{site.url}/jobs")  # newest first: this video's job
    page.get_by_role("link", name="search").first.click()
    page.wait_for_url("**/jobs/*")
    assert page.locator("[data-job-status]").inner_text() == "done"
    assert "short_hamilton_clip.mp4" in page.locator("[data-job-videos]").inner_text()
    shot(page, "job")


def test_an_auditor_sees_the_search_and_the_decision(site: Site, context: Any) -> None:
    page = context.new_page()
    log_in(page, site, "auditor")
    page.goto(f"{site.url}/audit")
    assert page.locator("[data-chain]").get_attribute("data-chain") == "intact"
    assert "intact" in page.locator("[data-chain]").inner_text()
    shot(page, "audit")
    for action in ("search", "review.decide"):
        page.get_by_label("Action").select_option(action)
        page.get_by_label("Case").fill(WEB_CASE)
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(f"**action={action}*")
        rows = page.locator(f'tr[data-action="{action}"]')
        assert rows.count() >= 1
        assert WEB_CASE in rows.first.inner_text()
        assert "investigator" in rows.first.inner_text()
    assert "match" in page.locator('tr[data-action="review.decide"]').first.inner_text()


def test_an_operator_is_refused_an_authorisers_page(site: Site, context: Any) -> None:
    page = context.new_page()
    log_in(page, site, "operator")
    nav = page.get_by_role("navigation", name="Main").inner_text()
    assert "Approvals" not in nav and "Audit" not in nav  # offered only what the role may do
    response = page.goto(f"{site.url}/approvals")
    assert response is not None and response.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
    assert "may not search.approve" in page.get_by_role("alert").inner_text()
    shot(page, "forbidden")


def test_an_operator_sees_alerts_arrive_and_reviews_one(site: Site, context: Any) -> None:
    """A deployment started from the page on a loopback stream: the alert appears on the
    operator's page as it happens (server-sent events, no reload), and is reviewed there."""
    from datetime import UTC, datetime, timedelta

    import streams

    with site.team.open("investigator") as ft:
        ft.create_watchlist(
            "wl-web-live", purpose="tests", expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        ft.add_to_watchlist("wl-web-live", ["lin-manuel-miranda"], reason="tests")
    with site.team.open("authoriser") as ft:
        ft.authorise_watchlist("wl-web-live", reason="tests")
    url, server = streams.serve(site.shared / FR / "short_hamilton_clip.mp4", pace=1, loops=3)
    try:
        page = context.new_page()
        log_in(page, site, "operator")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Live").click()
        page.get_by_label("Watchlist (authorised)").select_option("wl-web-live")
        page.get_by_label("Camera or stream").fill(url)
        page.get_by_label("Run for").fill("0.5")
        page.get_by_role("button", name="Start").click()
        page.wait_for_url("**/live/*?done=started")
        assert page.locator("ol.alerts > li").count() == 0
        page.locator("ol.alerts > li").first.wait_for(timeout=60_000)  # pushed, not reloaded
        assert "New alert: lin-manuel-miranda" in page.locator("[data-live-status]").inner_text()
        card = page.locator("ol.alerts > li").first
        assert card.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
        shot(page, "live-alert")
        card.get_by_label("confirmed").check()
        card.get_by_label("Action taken").fill("stopped and spoken to")
        card.get_by_role("button", name="Record").click()
        page.wait_for_url(re.compile(r"done=reviewed#alert-"))
        assert "Marked confirmed by operator" in page.locator("ol.alerts > li").first.inner_text()
        page.get_by_role("button", name="Stop the deployment").click()
        page.wait_for_url(re.compile(r"done=stopped"))
        assert page.locator("[data-field=status]").inner_text() == "stopped"
    finally:
        server.kill()
        server.wait()


def test_an_admin_manages_users_and_roles(site: Site, context: Any) -> None:
    page = context.new_page()
    log_in(page, site, "admin")
    page.goto(f"{site.url}/users")
    page.get_by_label("Name", exact=True).fill("ivy")
    page.get_by_label("Role", exact=True).select_option("investigator")
    page.get_by_label("Initial password").fill("another-long-password")
    page.get_by_role("button", name="Add user").click()
    page.wait_for_url("**/users?done=user")
    assert page.locator("tr", has_text="ivy").count() == 1
    shot(page, "users")


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    site: Site, context: Any
) -> None:
    page = context.new_page()
    log_in(page, site, "investigator")
    page.goto(f"{site.url}/cases")
    statuses = page.evaluate(
        """async () => {
            const out = [];
            for (const csrf of [null, "forged"]) {
                const body = new FormData();
                body.append("reference", "CSRF-1");
                body.append("purpose", "p");
                body.append("legal_basis", "b");
                if (csrf) body.append("csrf", csrf);
                const r = await fetch("/cases", { method: "POST", body, redirect: "manual" });
                out.push(r.status);
            }
            return out;
        }"""
    )
    assert statuses == [403, 403]
    with site.team.open() as investigator:
        assert "CSRF-1" not in {c.reference for c in investigator.cases()}


def test_the_sixth_wrong_password_is_refused_with_429(site: Site, context: Any) -> None:
    from facetrail.web.auth import LoginLimiter

    page = context.new_page()
    try:
        statuses = [log_in(page, site, "auditor", "wrong-password").status for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        assert "Too many failed log-in attempts" in page.get_by_role("alert").inner_text()
        # Refused even with the right password until the window has passed.
        assert log_in(page, site, "auditor").status == 429
    finally:
        site.app.state.limiter = LoginLimiter()
