"""The audit trail: every action appends a chained event in the same transaction, any
direct change to the rows is found by `verify`, and processes writing at once (on SQLite and
on a shared PostgreSQL database) still make one unbroken chain."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conftest import CASE, Team, make_team
from facetrail.errors import InvalidInputError, PermissionDeniedError
from facetrail.store import AuditRecord, Store

FR = "examples/face_recognition"


def _events(store: Store, n: int) -> None:
    for i in range(n):
        store.audit(AuditRecord("local:test", "search", "probe", [f"sha-{i}"], None, {"i": i}))


@pytest.fixture()
def store(tmp_path: Path, database_url: str | None):
    with Store.open(tmp_path / "data", database_url) as handle:
        _events(handle, 5)
        yield handle


def _sql(store: Store, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement))


def test_intact_chain_verifies_and_exports(store: Store) -> None:
    report = store.verify_audit()
    assert report.ok and report.events == 5
    exported = store.export_audit()
    assert [e["seq"] for e in exported] == [1, 2, 3, 4, 5]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(exported))
    assert store.export_audit(datetime.now(UTC) + timedelta(hours=1)) == []


@pytest.mark.parametrize(
    ("tamper", "broken"),
    [
        ("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 3", 3),  # edit
        ("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 1", 1),  # edit
        ("DELETE FROM audit_events WHERE seq = 2", 2),  # delete in the middle
        ("DELETE FROM audit_events WHERE seq = 5", 5),  # cut the end
        ("swap 2 and 3", 2),  # reorder two events
    ],
)
def test_direct_changes_are_detected(store: Store, tamper: str, broken: int) -> None:
    if tamper.startswith("swap"):  # through a free key, as the primary key is unique
        _sql(store, "UPDATE audit_events SET seq = 100 WHERE seq = 2")
        _sql(store, "UPDATE audit_events SET seq = 2 WHERE seq = 3")
        _sql(store, "UPDATE audit_events SET seq = 3 WHERE seq = 100")
    else:
        _sql(store, tamper)
    report = store.verify_audit()
    assert not report.ok and report.first_broken == broken, report


def test_inserted_event_is_detected(store: Store) -> None:
    row = store.export_audit()[-1]
    _sql(
        store,
        "INSERT INTO audit_events (seq, at, actor, action, object_type, object_ids, reason, "
        f"details, prev_hash, hash) VALUES (6, '2026-01-01 00:00:00', 'x', 'erase', NULL, '[]', "
        f"NULL, '{{}}', '{row['hash']}', '{'f' * 64}')",
    )
    report = store.verify_audit()
    assert not report.ok and report.first_broken == 6


def test_action_and_event_commit_together(tmp_path: Path, database_url: str | None) -> None:
    with Store.open(tmp_path / "data", database_url) as store:
        with pytest.raises(RuntimeError), store.session() as session:
            store.audit(AuditRecord("local:test", "erase", "subject", [1]), session=session)
            raise RuntimeError("crash between the action and the commit")
        assert store.export_audit() == [] and store.verify_audit().ok


def test_service_actions_are_audited(team: Team, shared_data: Path) -> None:
    with team.open("admin") as admin, team.open("investigator") as investigator:
        admin.enrol([shared_data / FR / "knn_examples/train"])
        investigator.search([shared_data / FR / "knn_examples/test/obama1.jpg"], case=CASE)
        investigator.verify(
            shared_data / FR / "obama.jpg", shared_data / FR / "obama2.jpg", case=CASE
        )
        admin.erase("biden")
        events = admin.export_audit()
        assert admin.verify_audit().ok
    acted = [e for e in events if e["action"] in ("enrol", "search", "verify", "erase")]
    assert [e["action"] for e in acted] == ["enrol", "search", "verify", "erase"]
    assert [(e["actor"], e["role"]) for e in acted] == [
        ("admin", "admin"),
        ("investigator", "investigator"),
        ("investigator", "investigator"),
        ("admin", "admin"),
    ]
    assert [e["case"] for e in acted] == [None, CASE, CASE, None]
    assert len(acted[0]["object_ids"]) == 9 and acted[0]["details"]["templates"] == 9
    assert acted[3]["details"] == {"images": 2, "faces": 2, "templates": 2}
    assert all(len(h) == 64 for h in acted[1]["details"]["probes"])  # probes by hash
    assert all(len(h) == 64 for h in acted[2]["object_ids"])
    # No descriptor or pixel data: every value is short.
    assert max(len(json.dumps(e)) for e in events) < 2000


def test_cli_verify_names_the_broken_link(tmp_path: Path, database_url: str | None) -> None:
    team = make_team(tmp_path / "data", approvals=False, database_url=database_url)
    with Store.open(team.data, database_url) as store:
        _events(store, 3)
        _sql(store, "UPDATE audit_events SET reason = 'edited' WHERE seq = 2")
    env = {**os.environ, **team.env("auditor")}
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", "audit", "verify"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 8
    assert "event 2" in proc.stderr and "Traceback" not in proc.stderr
    exported = subprocess.run(
        [sys.executable, "-m", "facetrail", "audit", "export", "--since", "2000-01-01"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seqs = [json.loads(line)["seq"] for line in exported.stdout.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 3


# --------------------------------------------------------------------------- many writers

WORKERS = 4
ROUNDS = 12


def _writer(data: str, url: str | None, token: str, worker: int, barrier) -> None:  # type: ignore[no-untyped-def]
    """Runs in a spawned process: through the service, open cases (each audited in its own
    transaction); through the store, enrol references with their events in the same one;
    and append bare events, all at once with the other writers."""
    import facetrail
    from test_store import make_reference

    rng = np.random.default_rng(worker)
    extra = {"database_url": url} if url else {}
    with facetrail.open(Path(data), token=token, **extra) as ft:
        store = ft.store
        barrier.wait(timeout=120)
        for i in range(ROUNDS):
            name = f"w{worker}-{i:02d}"
            if i % 3 == 0:
                ft.open_case(f"C-{name}", purpose="concurrency test", legal_basis="tests")
            elif i % 3 == 1:
                image, faces = make_reference(rng)
                with store.session() as s:
                    added = store.add_reference(
                        subject=name, reference=None, image=image, faces=faces, model="m", session=s
                    )
                    record = AuditRecord(
                        f"worker{worker}", "enrol", "subject", [added.subject_id], None, {"i": i}
                    )
                    store.audit(record, session=s)
            else:
                store.audit(AuditRecord(f"worker{worker}", "note", "round", [name], None, {"i": i}))


def test_processes_writing_at_once_make_one_chain(tmp_path: Path, database_url: str | None) -> None:
    """Several processes (service handles, as separate service processes would be) share one
    database and data directory and write events at once: no event is lost, none is chained
    twice onto the same predecessor, and the chain verifies."""
    team = make_team(tmp_path / "data", approvals=False, database_url=database_url)
    with Store.open(team.data, database_url) as store:
        before = len(store.export_audit())
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [
        ctx.Process(
            target=_writer,
            args=(str(team.data), database_url, team.tokens["investigator"], w, barrier),
        )
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    with Store.open(team.data, database_url) as store:
        report = store.verify_audit()
        events = store.export_audit()[before:]
        subjects = [s.name for s in store.subjects()]
    assert report.ok, report
    assert report.events == before + WORKERS * ROUNDS
    assert [e["seq"] for e in events] == list(range(before + 1, report.events + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(events))
    opened = sorted(e["case"] for e in events if e["action"] == "case.open")
    per_round = {0: "case.open", 1: "enrol", 2: "note"}
    want = sorted(f"C-w{w}-{i:02d}" for w in range(WORKERS) for i in range(ROUNDS) if i % 3 == 0)
    assert opened == want
    assert len(subjects) == sum(1 for i in range(ROUNDS) if i % 3 == 1) * WORKERS
    for w in range(WORKERS):  # each writer's events in the order it wrote them
        mine = [
            e
            for e in events
            if e["actor"] in (f"worker{w}", "investigator")
            and (e["actor"] != "investigator" or e["case"].startswith(f"C-w{w}-"))
        ]
        assert [e["action"] for e in mine] == [per_round[i % 3] for i in range(ROUNDS)]


def test_audit_page_filters_and_pages_in_the_database(team: Team) -> None:
    """The workspace's page of the trail: newest first, filtered by action, actor and case,
    counted and paged by the database, the same events an export filtered by hand gives; and
    each view is itself recorded."""
    with team.open("admin") as admin:
        for i in range(7):
            admin.set_policy("approval_days", 3 + i, reason=f"change {i}")
    with team.open("auditor") as auditor:
        trail = auditor.store.export_audit()  # the store's, so not itself audited
        newest_first = list(reversed(trail))
        page = auditor.audit_page(2, size=3)
        assert page.total == len(trail) and page.pages == -(-len(trail) // 3)
        assert page.events == newest_first[3:6]
        assert page.actions == sorted({e["action"] for e in trail})
        changes = [e for e in newest_first if e["action"] == "policy.change"]
        assert len(changes) >= 7
        by_admin = auditor.audit_page(1, size=5, action="policy.change", actor="admin")
        assert by_admin.total == len(changes) and by_admin.events == changes[:5]
        in_case = auditor.audit_page(1, size=1000, case=CASE)
        assert (
            in_case.events == [e for e in auditor.store.export_audit() if e["case"] == CASE][::-1]
        )
        assert auditor.audit_page(99, size=3).events == []  # past the end: empty, not an error
        views = [e for e in auditor.store.export_audit() if e["action"] == "audit.export"]
        assert len(views) == 4 and views[-1]["actor"] == "auditor"
        with pytest.raises(InvalidInputError):
            auditor.audit_page(0)
    with team.open("investigator") as investigator, pytest.raises(PermissionDeniedError):
        investigator.audit_page()
