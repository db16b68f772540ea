"""An action and its audit event commit in one transaction: a crash between them leaves neither.

Each test runs one action in a child process that stops, inside the commit of the
transaction holding the action's audit event, in a SQLAlchemy `before_commit` hook (fault
injection lives in the child's script only; production code is untouched). The parent kills
the child with SIGKILL there, then looks at the database itself: it must be exactly as it was
before the action (same SQL dump, so no effect and no audit event), the audit chain must
verify, and the next real action must work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import CASE, Team, make_team, sql
from facetrail.store import Store
from facetrail.store.models import utcnow

FR = "examples/face_recognition"
DB = "facetrail.db"
TABLES = (
    "subjects",
    "images",
    "faces",
    "templates",
    "cases",
    "approvals",
    "searches",
    "probe_media",
    "probe_faces",
    "candidates",
    "decisions",
    "audit_events",
)

# The child: open the data directory, record the database as it is, then run the action with
# a hook that blocks forever in the commit of the transaction holding the action's audit event.
CHILD = r"""
import json, os, sqlite3, sys, time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event, update
from sqlalchemy.orm import Session

import facetrail
from facetrail.service.tables import Case
from facetrail.store.models import AuditEvent, utcnow

args = json.loads(sys.argv[1])
data = Path(args["data"])


def flushed(session, _context):
    # Audit events are flushed as they are appended; note their actions on the session.
    seen = session.info.setdefault("test.audit_actions", set())
    seen.update(o.action for o in session.new if isinstance(o, AuditEvent))


def hook(session):
    pending = {o.action for o in session.new if isinstance(o, AuditEvent)}
    if args["action"] in pending | session.info.get("test.audit_actions", set()):
        Path(args["marker"] + ".tmp").write_text(str(os.getpid()))
        os.replace(args["marker"] + ".tmp", args["marker"])
        while True:
            time.sleep(3600)


def snapshot():
    db = sqlite3.connect(data / "facetrail.db")
    try:
        Path(args["before"]).write_text("\n".join(db.iterdump()))
    finally:
        db.close()


ft = None
if not args["on_start"]:
    ft = facetrail.open(data, token=args["token"])
    if args["backdate_case"]:
        with ft.store.session() as s:
            long_ago = utcnow() - timedelta(days=400)
            where = Case.reference == args["backdate_case"]
            s.execute(update(Case).where(where).values(closed_at=long_ago))
snapshot()
event.listen(Session, "after_flush", flushed)
event.listen(Session, "before_commit", hook)
exec(args["code"])
print("the action committed without the hook seeing its audit event", file=sys.stderr)
sys.exit(3)
"""


@dataclass(frozen=True)
class Base:
    team: Team
    candidate_id: int  # the kit_harington candidate of the search in CASE
    search_id: int


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Base:
    """A team with kit_harington enrolled and one search in CASE with a candidate for him."""
    team = make_team(tmp_path_factory.mktemp("crash") / "data")
    with team.open("admin") as ft:
        ft.enrol([shared_data / FR / "knn_examples/train/kit_harington/john1.jpeg"], subject="kit")
        inv = ft.as_caller(None)
        inv.use_token(team.tokens["investigator"])
        report = inv.search([shared_data / FR / "knn_examples/test/kit_with_rose.jpg"], case=CASE)
    (candidate,) = [c for f in report.probes[0].faces for c in f.candidates]
    assert candidate.subject == "kit" and candidate.id is not None
    assert report.search_id is not None
    return Base(team, candidate.id, report.search_id)


@pytest.fixture()
def team(base: Base, tmp_path: Path) -> Team:
    """A private copy of the base data directory (same users and tokens)."""
    data = tmp_path / "data"
    shutil.copytree(base.team.data, data)
    return Team(data, base.team.tokens)


def dump(data: Path) -> str:
    db = sqlite3.connect(data / DB)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


def counts(data: Path) -> dict[str, int]:
    return {t: sql(data, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def events(data: Path, action: str) -> int:
    return sql(data, "SELECT count(*) FROM audit_events WHERE action = ?", action)[0][0]


def crash(
    team: Team,
    role: str | None,
    action: str,
    code: str,
    *,
    backdate_case: str | None = None,
    on_start: bool = False,
) -> dict[str, int]:
    """Run `code` (with `ft`, `facetrail`, `data` and `args` in scope) in a child process and
    kill it inside the commit of the transaction holding its `action` audit event; check the
    database is unchanged and the audit chain intact. Returns the table counts before."""
    work = team.data.parent
    marker, before = work / "in-commit", work / "before.sql"
    args = {
        "data": str(team.data),
        "token": team.tokens[role] if role else None,
        "action": action,
        "code": code,
        "marker": str(marker),
        "before": str(before),
        "backdate_case": backdate_case,
        "on_start": on_start,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACETRAIL_")}
    with (work / "child.err").open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 180
            while not marker.exists():
                if child.poll() is not None:
                    pytest.fail(
                        f"child exited {child.returncode} before the commit: "
                        + (work / "child.err").read_text()[-3000:]
                    )
                if time.monotonic() > deadline:
                    pytest.fail("the child never reached the commit of " + action)
                time.sleep(0.02)
            assert int(marker.read_text()) == child.pid
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    was = before.read_text()
    assert dump(team.data) == was, "the killed action left something in the database"
    db = sqlite3.connect(":memory:")
    db.executescript(was)
    was_counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    was_events = db.execute(
        "SELECT count(*) FROM audit_events WHERE action = ?", (action,)
    ).fetchone()[0]
    db.close()
    assert counts(team.data) == was_counts
    assert events(team.data, action) == was_events
    with Store.open(team.data) as store:  # the store alone: no retention on start
        chain = store.verify_audit()
    assert chain.ok and chain.events == was_counts["audit_events"], chain
    return was_counts


def blob_files(data: Path) -> set[str]:
    return {p.name for p in (data / "blobs").rglob("*") if p.is_file()}


def check_audit(team: Team, action: str, more_events: int) -> None:
    """After the follow-up action: its event is there and the chain verifies."""
    with team.open("auditor") as ft:
        chain = ft.verify_audit()
    assert chain.ok, chain
    assert events(team.data, action) == more_events


def test_enrol(team: Team, shared_data: Path) -> None:
    image = shared_data / FR / "knn_examples/train/biden/biden.jpg"
    was = crash(team, "admin", "enrol", f"ft.enrol([{str(image)!r}], subject='biden')")
    assert sql(team.data, "SELECT id FROM subjects WHERE name = 'biden'") == []
    assert was["images"] == was["templates"] == 1
    # The next enrolment works (the blob files the dead one wrote are reused or swept).
    with team.open("admin") as ft:
        assert ft.enrol([image], subject="biden").enrolled == 1
        ft.store.sweep_blobs()
    assert counts(team.data)["templates"] == 2
    check_audit(team, "enrol", 2)


def test_erase(team: Team) -> None:
    (sid,) = sql(team.data, "SELECT id FROM subjects WHERE name = 'kit'")[0]
    shas = [
        r[0]
        for r in sql(team.data, "SELECT sha256 FROM images WHERE subject_id = ?", sid)
        + sql(
            team.data,
            "SELECT chip_sha256 FROM faces JOIN images ON images.id = faces.image_id "
            "WHERE images.subject_id = ?",
            sid,
        )
    ]
    assert len(shas) == 2 and all(shas)
    crash(team, "admin", "erase", "ft.erase('kit', reason='crash test')")
    # The subject is all there: rows, templates, and readable blob files.
    assert sql(team.data, "SELECT count(*) FROM templates WHERE subject_id = ?", sid) == [(1,)]
    assert sql(team.data, "SELECT subject_id FROM candidates") == [(sid,)]
    with Store.open(team.data) as store:
        for sha in shas:
            assert store.blobs.exists(sha)
            store.blobs.get(sha)  # checks the bytes against their hash
    with team.open("admin") as ft:
        assert ft.erase("kit").templates == 1
    assert sql(team.data, "SELECT count(*) FROM subjects") == [(0,)]
    assert not blob_files(team.data) & set(shas)
    check_audit(team, "erase", 1)


def test_search(team: Team, shared_data: Path) -> None:
    probe = shared_data / FR / "knn_examples/test/obama_and_biden.jpg"
    code = f"ft.search([{str(probe)!r}], case={CASE!r}, include_below=True)"
    was = crash(team, "investigator", "search", code)
    assert was["searches"] == was["probe_media"] == was["candidates"] == 1
    with team.open("investigator") as ft:
        report = ft.search([probe], case=CASE, include_below=True)
    n = len(report.probes[0].faces)  # each has a candidate: all scores are listed
    assert n >= 2
    now = counts(team.data)
    assert now["searches"] == 2 and now["probe_faces"] == now["candidates"] == 1 + n
    check_audit(team, "search", 2)


def test_decide(team: Team, base: Base) -> None:
    code = f"ft.decide({base.candidate_id}, 'match', note='the same man')"
    crash(team, "investigator", "review.decide", code)
    assert sql(team.data, "SELECT count(*) FROM decisions") == [(0,)]
    with team.open("investigator") as ft:
        assert ft.decide(base.candidate_id, "no-match", note="not him").outcome == "no-match"
    check_audit(team, "review.decide", 1)


def test_case_open(team: Team) -> None:
    code = "ft.open_case('T-2', purpose='a crash test', legal_basis='test data only')"
    crash(team, "investigator", "case.open", code)
    assert sql(team.data, "SELECT reference FROM cases") == [(CASE,)]
    with team.open("investigator") as ft:
        ft.open_case("T-2", purpose="after the crash", legal_basis="test data only")
    assert sql(team.data, "SELECT count(*) FROM cases") == [(2,)]
    check_audit(team, "case.open", 2)


def _closed_case_search(team: Team) -> list[str]:
    """Close CASE; returns the blob hashes of its search's probe file and face crop."""
    with team.open("investigator") as ft:
        ft.close_case(CASE, reason="crash test")
    shas = [
        r[0]
        for r in sql(team.data, "SELECT sha256 FROM probe_media")
        + sql(team.data, "SELECT chip_sha256 FROM probe_faces")
    ]
    assert len(shas) == 2 and set(shas) <= blob_files(team.data)
    return shas


def _purge_survived(team: Team, shas: list[str]) -> None:
    assert sql(team.data, "SELECT purged_at FROM searches") == [(None,)]
    assert counts(team.data)["probe_faces"] == counts(team.data)["candidates"] == 1
    assert set(shas) <= blob_files(team.data)
    for action in ("retention.purge", "retention.run"):
        assert events(team.data, action) == 0


def _purged(team: Team, shas: list[str], actor: str) -> None:
    assert sql(team.data, "SELECT purged_at IS NOT NULL FROM searches") == [(1,)]
    now = counts(team.data)
    assert now["probe_media"] == now["probe_faces"] == now["candidates"] == 0
    assert not set(shas) & blob_files(team.data)
    runs = sql(team.data, "SELECT actor FROM audit_events WHERE action = 'retention.run'")
    assert runs == [(actor,)]


def test_retention_run(team: Team) -> None:
    shas = _closed_case_search(team)
    # The child moves the closing date back (so the search's results are due), then runs.
    crash(team, "admin", "retention.run", "ft.run_retention()", backdate_case=CASE)
    _purge_survived(team, shas)
    # Opening the directory now finds the search due and purges it (as the system).
    with team.open("auditor") as ft:
        assert ft.verify_audit().ok
    _purged(team, shas, "system")


def test_retention_on_start(team: Team) -> None:
    shas = _closed_case_search(team)
    long_ago = (utcnow() - timedelta(days=400)).strftime("%Y-%m-%d %H:%M:%S.%f")
    db = sqlite3.connect(team.data / DB)
    with db:
        db.execute("UPDATE cases SET closed_at = ? WHERE reference = ?", (long_ago, CASE))
    db.close()
    # Opening the directory runs the retention that is due, as the system: killed in its commit.
    crash(team, None, "retention.run", "facetrail.open(data)", on_start=True)
    _purge_survived(team, shas)
    with team.open("auditor") as ft:
        assert ft.verify_audit().ok
    _purged(team, shas, "system")
