"""The case and transparency reports, and `facetrail calibrate`.

The reports are written by the CLI with `--json`, then rendered in Chromium: every number
the page shows is read back and compared with the JSON's, formatted by the report's own
filters. Roles are checked (refusals write nothing), making a report is audited, and the web
workspace serves the same pages with a CSP of their own. `calibrate` runs on real labelled
faces from the shared data: a dry run saves nothing, saving is for administrators only and
is audited, and a data set too small to measure what the service needs is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import CASE, Team, make_team
from facetrail.errors import NotFoundError, PermissionDeniedError, PolicyError
from facetrail.reports.common import (
    format_count,
    format_duration,
    format_fmr,
    format_one_in,
    format_percent,
    format_score,
)

FR = "examples/face_recognition"
CHROMIUM = Path("/usr/bin/chromium")


def cli(team: Team, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facetrail", *args],
        capture_output=True, text=True, env={**os.environ, **team.env(role)}, timeout=300,
    )  # fmt: skip


def events(team: Team) -> list[dict]:
    with team.open("admin") as admin:
        return admin.store.export_audit()


# --------------------------------------------------------------------------- formats


def test_number_formats() -> None:
    # The Met's own example: 10 false alerts out of 3.1 million faces seen.
    assert format_percent(10 / 3_100_000) == "0.00032%"
    assert format_one_in(10 / 3_100_000) == "1 in 310,000"
    assert format_percent(0.25) == "25%" and format_percent(1 / 3) == "33%"
    assert format_percent(0.0) == "0%" and format_percent(None) == "n/a"
    assert format_one_in(0.0) == "none" and format_one_in(0.5) == "1 in 2"
    assert format_count(3_100_000) == "3,100,000"
    assert format_duration(5400) == "1 h 30 min"
    assert format_fmr(None) == "not calibrated"


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    team: Team
    search_id: int
    candidates: list[int]
    start: date
    end: date


def _deployment(ft: Any, started: datetime, hours: float, **counts: int) -> int:
    from facetrail.service.tables import Deployment, User

    with ft.store.session() as s:
        operator = s.query(User).filter_by(name="operator").one()
        row = Deployment(
            watchlist_name="wl-report",
            source="rtsp://camera-1/stream",
            threshold=0.93,
            started_by=operator.id,
            started_at=started,
            until=started + timedelta(hours=hours),
            stopped_at=started + timedelta(hours=hours),
            status="ended",
            **counts,
        )
        s.add(row)
        s.flush()
        return row.id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> World:
    """A team; a gallery of the knn examples; one search in CASE with two probes, one
    candidate decided a match and confirmed, one decided no-match; and live deployments,
    two in the reported period (one with the Met's published figures) and one before it."""
    team = make_team(tmp_path_factory.mktemp("reports") / "data")
    fr = shared_data / FR
    with team.open("admin") as admin:
        admin.enrol([fr / "knn_examples" / "train"])
    with team.open("investigator") as inv:
        report = inv.search(
            [fr / "knn_examples/test/obama1.jpg", fr / "knn_examples/test/obama_and_biden.jpg"],
            case=CASE,
            top_k=2,
            reason="report test",
        )
        ids = [c.id for p in report.probes for f in p.faces for c in f.candidates]
        assert len(ids) >= 3
        inv.decide(ids[0], "match", note="same person")
        inv.decide(ids[1], "no-match", note="not him")
    with team.open("authoriser") as aut:
        aut.confirm(ids[0], note="agreed")
    now = datetime.now(UTC)
    with team.open("admin") as admin:
        _deployment(admin, now - timedelta(days=2), 6, faces_seen=3_100_000, alerts=12,
                    confirmed=2, false_alerts=10)  # fmt: skip
        _deployment(admin, now - timedelta(days=1), 2.5, faces_seen=5_000, alerts=1,
                    confirmed=1, false_alerts=0)  # fmt: skip
        _deployment(admin, now - timedelta(days=40), 1, faces_seen=99, alerts=9,
                    confirmed=0, false_alerts=9)  # fmt: skip
    # The period ends on the day the world was finished, not the day the module was imported:
    # a run that crosses midnight UTC still has its search inside the period.
    today = datetime.now(UTC).date()
    return World(team, report.search_id, ids, today - timedelta(days=7), today)


def _chromium() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    return sync_api


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    sync_api = _chromium()
    from test_web import CHROMIUM_ARGS

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _self_contained(html: Path) -> None:
    source = html.read_text()
    assert "@media print" in source and "<script" not in source
    assert 'src="http' not in source and "href=" not in source and "url(" not in source


# --------------------------------------------------------------------------- case report


def test_case_report_in_chromium_shows_the_json_numbers(
    world: World, page: Any, tmp_path: Path
) -> None:
    html = tmp_path / "case.html"
    proc = cli(world.team, "investigator", "report", "case", CASE, "--out", str(html), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["report"] == str(html)
    assert report["case"]["reference"] == CASE
    [search] = report["searches"]
    assert search["id"] == world.search_id and search["reason"] == "report test"
    assert len(search["inputs"]) == 2 and all(len(i["sha256"]) == 64 for i in search["inputs"])
    assert [c["id"] for c in search["candidates"]] == world.candidates
    outcomes = {c["id"]: c["outcome"] for c in search["candidates"]}
    assert outcomes[world.candidates[0]] == "match (confirmed)"
    assert outcomes[world.candidates[1]] == "no-match"
    totals = report["totals"]
    assert (totals["searches"], totals["inputs"], totals["decided"]) == (1, 2, 2)
    assert (totals["matches"], totals["confirmed"]) == (1, 1)
    assert totals["candidates"] == len(world.candidates) == search["candidates_returned"]
    assert {"case.open", "search", "review.decide", "review.confirm"} <= {
        e["action"] for e in report["audit"]
    }
    assert totals["audit_events"] == len(report["audit"])
    _self_contained(html)

    page.goto(html.as_uri())
    for field, value in totals.items():
        assert page.locator(f"#totals [data-field='{field}']").inner_text() == format_count(value)
    section = f"#search-{search['id']}"
    for field in ("probes", "faces", "candidates_returned", "unmatched_faces_deleted"):
        shown = page.locator(f"{section} [data-field='{field}']").inner_text()
        assert shown == format_count(search[field])
    assert page.locator(f"{section} [data-field='threshold']").inner_text() == format_score(
        search["threshold"]
    )
    assert page.locator(f"{section} [data-field='model']").inner_text() == search["model"]
    hashes = page.locator(f"{section} .inputs [data-field='sha256']").all_inner_texts()
    assert hashes == [i["sha256"] for i in search["inputs"]]
    for c in search["candidates"]:
        row = page.locator(f"tr[data-candidate='{c['id']}']")

        def cell(field: str, row: Any = row) -> str:
            return row.locator(f"[data-field='{field}']").inner_text().strip()

        assert cell("score") == format_score(c["score"])
        assert cell("fmr") == format_fmr(c["fmr"])
        assert cell("rank") == str(c["rank"])
        assert cell("subject") == c["subject"]
        assert cell("outcome").startswith(c["outcome"])
        # Each candidate's probe face crop is embedded and decodes.
        assert c["face_sha256"] is not None
        width = row.locator("img.crop").evaluate("img => img.naturalWidth")
        assert width > 0
    actions = page.locator("#audit [data-field='action']").all_inner_texts()
    assert actions == [e["action"] for e in report["audit"]]
    assert page.pdf(format="A4")[:4] == b"%PDF"


def test_a_case_report_is_audited_with_the_case_and_the_faces_it_shows(world: World) -> None:
    with world.team.open("auditor") as aud:
        report = aud.case_report(CASE)
    last = events(world.team)[-1]
    assert (last["action"], last["actor"], last["case"]) == ("report.case", "auditor", CASE)
    assert last["object_type"] == "candidate" and last["object_ids"] == world.candidates
    assert report.crops and set(report.crops) <= set(world.candidates)
    assert "crops" not in report.to_dict()  # faces travel in the page only


def test_case_reports_only_for_those_who_may_read_the_case(world: World) -> None:
    with world.team.open("admin") as admin:
        admin.add_user("outsider", "investigator", "a-long-test-password")
        outsider = admin.as_caller(None)
        outsider.login("outsider", "a-long-test-password")
        before = len(events(world.team))
        with pytest.raises(NotFoundError):
            outsider.case_report(CASE)  # not a member: told as for a case that does not exist
        for role in ("admin", "operator"):
            handle = admin.as_caller(None)
            handle.use_token(world.team.tokens[role])
            with pytest.raises(PermissionDeniedError, match=r"may not case\.report"):
                handle.case_report(CASE)
        assert len(events(world.team)) == before
    proc = cli(world.team, "operator", "report", "case", CASE, "--json")
    assert proc.returncode != 0 and json.loads(proc.stdout)["error"]["type"] == (
        "PermissionDeniedError"
    )


def test_a_purged_search_still_names_its_inputs_by_hash(shared_data: Path, tmp_path: Path) -> None:
    """Retention deletes a closed case's probe files and their rows; the report still lists
    each input's SHA-256, from the search's audit event."""
    from facetrail.service import retention

    team = make_team(tmp_path / "data")
    fr = shared_data / FR
    with team.open("admin") as admin:
        admin.enrol([fr / "knn_examples/train/obama"], subject="obama")
    with team.open("investigator") as inv:
        found = inv.search([fr / "knn_examples/test/obama1.jpg"], case=CASE)
        sha = found.probes[0].sha256
        inv.close_case(CASE, reason="done")
        with inv.store.session() as s:
            retention.purge_search(s, found.search_id)
        report = inv.case_report(CASE)
    [search] = report.searches
    assert search.purged_at is not None and search.candidates == []
    assert [i.sha256 for i in search.inputs] == [sha] and not search.inputs[0].kept
    assert report.totals.candidates == search.candidates_returned > 0  # the counts stay


# --------------------------------------------------------------------------- transparency


def test_transparency_report_in_chromium_shows_the_json_numbers(
    world: World, page: Any, tmp_path: Path
) -> None:
    html = tmp_path / "transparency.html"
    period = ["--from", str(world.start), "--to", str(world.end)]
    proc = cli(
        world.team, "auditor", "report", "transparency", *period, "--out", str(html), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    retro, live = report["retrospective"], report["live"]
    assert (retro["searches"], retro["cases"], retro["probes"]) == (1, 1, 2)
    assert retro["candidates"] == len(world.candidates)
    assert (retro["candidates_reviewed"], retro["match_decisions"]) == (2, 1)
    assert (retro["no_match_decisions"], retro["confirmed_matches"]) == (1, 1)
    # The deployment 40 days ago is outside the period.
    assert len(report["deployments"]) == 2
    assert (live["faces_seen"], live["alerts"], live["confirmed"]) == (3_105_000, 13, 3)
    assert (live["false_alerts"], live["unreviewed"]) == (10, 0)
    assert live["false_alert_rate"] == pytest.approx(10 / 3_105_000)
    assert live["false_alerts_per_alert"] == pytest.approx(10 / 13)
    met = report["deployments"][0]
    assert met["false_alert_rate"] == pytest.approx(10 / 3_100_000)
    assert report["deployments"][1]["false_alert_rate"] == 0.0
    _self_contained(html)

    page.goto(html.as_uri())

    def shown(selector: str) -> str:
        return page.locator(selector).inner_text().strip()

    for field, value in retro.items():
        assert shown(f"#retrospective [data-field='{field}']") == format_count(value)
    for field in ("faces_seen", "alerts", "confirmed", "false_alerts", "unreviewed"):
        assert shown(f"#live [data-field='{field}']") == format_count(live[field])
    assert shown("#live [data-field='deployments']") == str(len(report["deployments"]))
    assert shown("#live [data-field='duration']") == format_duration(live["duration_s"])
    assert shown("#live [data-field='false_alert_rate']") == format_percent(
        live["false_alert_rate"]
    )
    assert shown("#live [data-field='false_alert_one_in']") == format_one_in(
        live["false_alert_rate"]
    )
    assert shown("#live [data-field='false_alerts_per_alert']") == format_percent(
        live["false_alerts_per_alert"]
    )
    for d in report["deployments"]:
        row = f"#deployments tr[data-deployment='{d['id']}']"
        for field in ("faces_seen", "alerts", "confirmed", "false_alerts", "unreviewed"):
            assert shown(f"{row} [data-field='{field}']") == format_count(d[field])
        assert shown(f"{row} [data-field='false_alert_rate']") == format_percent(
            d["false_alert_rate"]
        )
        assert shown(f"{row} [data-field='duration']") == format_duration(d["duration_s"])
    assert shown(f"#deployments tr[data-deployment='{met['id']}'] "
                 "[data-field='false_alert_rate']") == "0.00032%"  # fmt: skip
    width = page.locator("figure img").evaluate("img => img.naturalWidth")
    assert width > 100
    assert page.pdf(format="A4")[:4] == b"%PDF"


def test_transparency_report_roles_and_audit(world: World) -> None:
    for role in ("admin", "authoriser", "auditor"):
        with world.team.open(role) as ft:
            ft.transparency_report(world.start, world.end)
        last = events(world.team)[-1]
        assert (last["action"], last["actor"]) == ("report.transparency", role)
        assert last["details"] == {"start": str(world.start), "end": str(world.end)}
    before = len(events(world.team))
    for role in ("investigator", "operator"):
        with world.team.open(role) as ft, pytest.raises(PermissionDeniedError):
            ft.transparency_report(world.start, world.end)
    assert len(events(world.team)) == before
    with world.team.open("auditor") as ft, pytest.raises(Exception, match="before it starts"):
        ft.transparency_report(world.end, world.start)
    proc = cli(world.team, "auditor", "report", "transparency", "--from", "yesterday",
               "--to", str(world.end))  # fmt: skip
    assert proc.returncode == 2 and "not a date" in proc.stderr


# --------------------------------------------------------------------------- web


@pytest.fixture(scope="module")
def site(world: World) -> Iterator[Any]:
    from facetrail.config import Settings
    from facetrail.web.app import create_app

    app = create_app(Settings(data=world.team.data))
    try:
        yield app
    finally:
        app.state.jobs.shutdown()
        app.state.ft.close()


def _client(app: Any, who: str) -> Any:
    from test_web_pages import browser

    return browser(app, who)


def test_the_workspace_serves_and_links_the_reports(world: World, site: Any) -> None:
    inv = _client(site, "investigator")
    case_page = inv.get(f"/cases/{CASE}")
    assert f'href="/cases/{CASE}/report"' in case_page.text
    assert 'href="/reports/transparency"' not in case_page.text  # not the investigator's
    r = inv.get(f"/cases/{CASE}/report")
    assert r.status_code == 200 and f"Case report: {CASE}" in r.text
    csp = r.headers["content-security-policy"]
    assert "img-src data:" in csp and "script-src" not in csp and "default-src 'none'" in csp
    assert r.headers["cache-control"] == "no-store"
    assert 'src="data:image/png;base64,' in r.text
    assert events(world.team)[-1]["action"] == "report.case"
    assert inv.get("/reports/transparency").status_code == 403

    aud = _client(site, "auditor")
    form = aud.get("/reports/transparency")
    assert form.status_code == 200 and 'name="from"' in form.text
    assert 'href="/reports/transparency"' in form.text  # in the menu
    r = aud.get(f"/reports/transparency?from={world.start}&to={world.end}")
    assert r.status_code == 200 and "transparency report" in r.text
    assert "img-src data:" in r.headers["content-security-policy"]
    assert aud.get("/reports/transparency?from=2026-13-01&to=2026-01-01").status_code == 400

    operator = _client(site, "operator")
    refused = operator.get(f"/cases/{CASE}/report")
    assert refused.status_code == 403 and "may not case.report" in refused.text
    assert "img-src 'self';" in refused.headers["content-security-policy"]  # the usual one


# --------------------------------------------------------------------------- calibrate


@pytest.fixture(scope="module")
def lfw80(shared_data: Path) -> Path:
    root = shared_data / "lfw"
    if not root.is_dir():
        pytest.skip("the LFW images are not in the shared data")
    return root


def test_calibrate_dry_run_then_save_as_administrator(lfw80: Path, tmp_path: Path) -> None:
    team = make_team(tmp_path / "data", approvals=False)
    cache = tmp_path / "cache"
    saved = team.data / "calibration"
    before = len(events(team))
    proc = cli(team, "auditor", "calibrate", str(lfw80), "--limit", "80", "--cache", str(cache),
               "--dry-run", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["dry_run"] and run["saved"] is None and not saved.exists()
    assert run["protocol"] == "identities" and run["people"] == 80
    n = run["images"]
    assert run["genuine_comparisons"] + run["impostor_comparisons"] == n * (n - 1) // 2
    assert run["min_fmr"] == pytest.approx(1 / run["impostor_comparisons"])
    assert run["usable"] and run["impostor_comparisons"] >= 10_000
    target = run["target"]
    assert target["target_fmr"] == 1e-3 and target["measurable"] and target["threshold"]
    assert target["impostors_above"] == round(1e-3 * run["impostor_comparisons"])
    # 1e-5 needs 100,000 impostor comparisons: not measurable here, and said so.
    low = next(p for p in run["operating_points"] if p["target_fmr"] == 1e-5)
    assert not low["measurable"] and low["threshold"] is None
    assert low["impostors_needed"] == 100_000
    assert run["previous"]["source"].startswith("LFW")  # the packaged one, for comparison
    assert len(events(team)) == before  # a dry run changes nothing

    refused = cli(team, "auditor", "calibrate", str(lfw80), "--limit", "80", "--cache",
                  str(cache), "--json")  # fmt: skip
    assert refused.returncode != 0 and "policy.change" in refused.stderr
    assert not saved.exists()

    proc = cli(team, "admin", "calibrate", str(lfw80), "--limit", "80", "--cache", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "calibration saved" in proc.stdout and "not measurable" in proc.stdout
    [file] = saved.iterdir()
    event = events(team)[-1]
    assert (event["action"], event["actor"]) == ("calibrate", "admin")
    assert event["details"]["file"] == file.name
    assert event["details"]["impostor_comparisons"] == run["impostor_comparisons"]
    # Every score shown from now on carries an FMR from this calibration.
    with team.open("investigator") as inv:
        assert inv.scoring().calibration.source == run["source"]  # type: ignore[union-attr]
        assert inv.scoring().threshold == pytest.approx(target["threshold"], abs=1e-4)


def test_calibrate_from_labelled_pairs_too_few_to_save(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "deepface"
    pairs = root / "master.csv"
    if not pairs.is_file():
        pytest.skip("the deepface pairs (master.csv) are not in the shared data")
    team = make_team(tmp_path / "data", approvals=False)
    with team.open("admin") as admin:
        run = admin.calibrate(root, labels=pairs, dry_run=True)
        assert run.protocol == "pairs" and run.people is None
        listed = len(pairs.read_text().strip().splitlines()) - 1  # after the header
        assert run.genuine_comparisons + run.impostor_comparisons == listed
        assert not run.target.measurable and not run.usable
        assert any("cannot be measured" in note for note in run.notes)
        with pytest.raises(PolicyError, match="not saved"):
            admin.calibrate(root, labels=pairs)
    assert not (team.data / "calibration").exists()
    with team.open("investigator") as inv, pytest.raises(PermissionDeniedError):
        inv.calibrate(root, labels=pairs, dry_run=True)


def test_a_calibration_from_scores_is_the_one_from_all_pairs() -> None:
    """`calibrate` with a pairs list fits from the listed scores: given every pair of a set,
    it must give exactly the table that fitting on the set gives."""
    import numpy as np

    from facetrail.vision.calibration import fit_calibration, fit_calibration_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 3)
    centres = rng.normal(size=(40, 16))
    vectors = centres[labels] + rng.normal(scale=0.6, size=(len(labels), 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    a, b = np.triu_indices(len(labels), k=1)
    scores = (vectors[a] * vectors[b]).sum(axis=1)
    same = labels[a] == labels[b]
    whole = fit_calibration(vectors, labels, model="m", source="s")
    listed = fit_calibration_scores(scores[same], scores[~same], model="m", source="s")
    assert listed == whole


def test_calibrate_with_a_cohort_calibrates_normalised_scores_too(
    lfw80: Path, tmp_path: Path
) -> None:
    """A force's own calibration replaces LFW's for normalised searches too: without a cohort
    searches fall back to plain scores with the own table (never the packaged normalised one
    beside it); with one, `calibrate` fits the normalised table on the same comparisons
    against that cohort, saves it with the plain one, and searches use it."""
    import shutil

    import facetrail
    from facetrail.vision.calibration import normalised_model

    team = make_team(tmp_path / "data", approvals=False)
    cache = tmp_path / "cache"
    # Eight people with a single image, from the far end of the alphabet: none of them is
    # among the first 80 people that the calibration describes.
    strangers = tmp_path / "strangers"
    strangers.mkdir()
    singles = [p for p in sorted(lfw80.iterdir(), reverse=True) if len(list(p.glob("*.jpg"))) == 1]
    for person in singles[:8]:
        image = next(person.glob("*.jpg"))
        shutil.copy(image, strangers / image.name)

    def admin() -> facetrail.Facetrail:
        return facetrail.open(team.data, token=team.tokens["admin"], cohort_top_k=4)

    with admin() as ft:
        first = ft.calibrate(lfw80, limit=80, cache=cache)
        assert first.saved and first.normalised is None
        assert any("no cohort" in note for note in first.notes)
        assert ft.build_cohort(strangers, source="strangers").added == 8
        scoring = ft.search_scoring()
        # The cohort exists and LFW's normalised table ships, but scores were calibrated on
        # this population: plain scores with the own table.
        assert scoring.normaliser is None
        assert scoring.calibration.source == first.source  # type: ignore[union-attr]

        second = ft.calibrate(lfw80, limit=80, cache=cache)
        normalised = second.normalised
        assert normalised is not None and normalised["saved"]
        assert normalised["cohort_faces"] == 8 and normalised["top_k"] == 4
        model = normalised_model(ft.analyzer.model_id, "as-norm+cosine")
        assert normalised["model"] == model and Path(normalised["saved"]).is_file()
        scoring = ft.search_scoring()
        assert scoring.normaliser is not None
        table = scoring.calibration
        assert table is not None and (table.model, table.source) == (model, second.source)
        # The same comparisons as the plain table, on the normalised scale.
        assert table.impostor_comparisons == second.impostor_comparisons
        assert table.genuine_comparisons == second.genuine_comparisons
        assert scoring.threshold == pytest.approx(normalised["threshold"], abs=1e-3)
        assert scoring.threshold > 2  # not a cosine
    event = events(team)[-1]
    assert event["action"] == "calibrate"
    assert event["details"]["normalised_file"] == Path(normalised["saved"]).name
