"""Retention and erasure, checked on the disk and in the database afterwards, not only in what
the API says: probe faces that matched nothing, probe media and results after their case
closes, subjects at their review date, `facetrail erase`, and `facetrail retention`. On
SQLite, then on PostgreSQL where a server can be had."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

import facetrail
from conftest import CASE, POSTGRES_DATA, Team, make_team, postgres_database, sql
from facetrail.service.retention import DueSearch, DueSubject
from facetrail.service.tables import Case
from facetrail.store.models import Subject, utcnow

FR = "examples/face_recognition"
TEST = f"{FR}/knn_examples/test"
GALLERY = {  # subject -> its one reference image
    "kit_harington": "knn_examples/train/kit_harington/john1.jpeg",
    "obama": "knn_examples/train/obama/obama.jpg",
    "biden": "knn_examples/train/biden/biden.jpg",
}
BLOB_COLUMNS = (
    ("images", "sha256"),
    ("faces", "chip_sha256"),
    ("probe_media", "sha256"),
    ("probe_faces", "chip_sha256"),
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def base(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_data: Path
) -> Iterator[Team]:
    """A team with three subjects enrolled, one reference image each."""
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database(request.getfixturevalue("postgres_server")))
        team = make_team(tmp_path_factory.mktemp("retention") / "data", database_url=url)
        with team.open("admin") as ft:
            for subject, image in GALLERY.items():
                assert ft.enrol([shared_data / FR / image], subject=subject).enrolled == 1
        yield team


@pytest.fixture()
def team(base: Team, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Team]:
    """A private copy of the base data directory and database (same users and tokens)."""
    data = tmp_path / "data"
    shutil.copytree(base.data, data)
    if base.database_url is None:
        yield Team(data, base.tokens)
        return
    server = request.getfixturevalue("postgres_server")
    with postgres_database(server, copy_of=base.database_url) as url:
        POSTGRES_DATA[data] = url
        yield Team(data, base.tokens, url)


# --------------------------------------------------------------------------- looking


def one(data: Path, query: str, *params: object) -> object:
    (row,) = sql(data, query, *params)
    return row[0]


def blob_files(data: Path) -> set[str]:
    """The names (sha256) of the blob files on disk."""
    return {p.name for p in (data / "blobs").rglob("*") if p.is_file()}


def referenced_blobs(data: Path) -> set[str]:
    out: set[str] = set()
    for table, column in BLOB_COLUMNS:
        out |= {r[0] for r in sql(data, f"SELECT {column} FROM {table}") if r[0]}
    return out


def assert_blobs_consistent(data: Path) -> None:
    """Every blob file is referenced by a row, and every referenced blob is on disk."""
    assert blob_files(data) == referenced_blobs(data)


def all_bytes(data: Path) -> bytes:
    """Every file under the data directory: the database, its WAL, blobs, everything (with
    PostgreSQL, whose files are the server's: blobs, and every stored template vector)."""
    files = b"".join(p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file())
    if data not in POSTGRES_DATA:
        return files
    return files + b"".join(bytes(v) for (v,) in sql(data, "SELECT vector FROM templates"))


def parsed(value: object) -> object:
    """A JSON column's value: SQLite gives its text, PostgreSQL the value."""
    return json.loads(value) if isinstance(value, str) else value


def subject_rows(data: Path, sid: int) -> dict[str, int]:
    images = "SELECT id FROM images WHERE subject_id = ?"
    return {
        "subjects": one(data, "SELECT count(*) FROM subjects WHERE id = ?", sid),
        "images": one(data, "SELECT count(*) FROM images WHERE subject_id = ?", sid),
        "faces": one(data, f"SELECT count(*) FROM faces WHERE image_id IN ({images})", sid),
        "templates": one(data, "SELECT count(*) FROM templates WHERE subject_id = ?", sid),
    }


def subject_files(data: Path, sid: int) -> dict[str, object]:
    """A subject's id, blob hashes (image and chip) and template vectors, from the database."""
    image = sql(data, "SELECT id, sha256 FROM images WHERE subject_id = ?", sid)
    chips = sql(
        data,
        "SELECT faces.id, chip_sha256 FROM faces JOIN images ON images.id = faces.image_id "
        "WHERE images.subject_id = ?",
        sid,
    )
    templates = sql(data, "SELECT id, vector FROM templates WHERE subject_id = ?", sid)
    return {
        "blobs": [sha for _, sha in image + chips],
        "vectors": [bytes(v) for _, v in templates],
        "template_ids": [t for t, _ in templates],
    }


def subject_id(data: Path, name: str) -> int:
    return int(one(data, "SELECT id FROM subjects WHERE name = ?", name))  # type: ignore[arg-type]


def audit(data: Path, action: str) -> list[dict]:
    rows = sql(
        data,
        "SELECT actor, object_type, object_ids, reason, details, case_ref FROM audit_events "
        "WHERE action = ? ORDER BY seq",
        action,
    )
    keys = ("actor", "object_type", "object_ids", "reason", "details", "case")
    events = [dict(zip(keys, r, strict=True)) for r in rows]
    for e in events:
        e["object_ids"], e["details"] = parsed(e["object_ids"]), parsed(e["details"])
    return events


def handles(team: Team, ft: facetrail.Facetrail, *roles: str) -> list[facetrail.Facetrail]:
    """Handles for `roles` sharing `ft`'s store and models."""
    out = []
    for role in roles:
        other = ft.as_caller(None)
        other.use_token(team.tokens[role])
        out.append(other)
    return out


def cli(team: Team, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACETRAIL_")}
    return subprocess.run(
        [sys.executable, "-m", "facetrail", *args],
        capture_output=True,
        text=True,
        env={**env, **team.env(role)},
        timeout=300,
    )


# --------------------------------------------------------------------------- probe faces


def test_unmatched_probe_faces_are_deleted_when_the_search_completes(
    team: Team, shared_data: Path
) -> None:
    two = shared_data / TEST / "kit_with_rose.jpg"  # kit is in the gallery, rose is not
    nobody = shared_data / TEST / "alex_lacamoire1.jpg"  # not in the gallery
    before = blob_files(team.data)
    with team.open("admin") as ft:
        admin, inv = ft, handles(team, ft, "investigator")[0]
        report = inv.search([two, nobody], case=CASE)
        kit_box = next(f.box for f in report.probes[0].faces if f.candidates)
        assert len(report.probes[0].faces) == 2 and len(report.probes[1].faces) >= 1
        assert not any(f.candidates for f in report.probes[1].faces)
        sid = report.search_id
        unmatched = 1 + len(report.probes[1].faces)
        assert report.unmatched_faces_deleted == unmatched

        faces = sql(
            team.data,
            "SELECT probe_faces.x1, probe_faces.y1, probe_faces.x2, probe_faces.y2, "
            "chip_sha256 FROM probe_faces JOIN probe_media ON probe_media.id = media_id "
            "WHERE search_id = ?",
            sid,
        )
        assert [list(f[:4]) for f in faces] == [kit_box]  # only the matched face has a row
        kit_chip = faces[0][4]
        media = dict(
            sql(team.data, "SELECT name, sha256 FROM probe_media WHERE search_id = ?", sid)
        )
        assert media == {str(two): report.probes[0].sha256, str(nobody): None}
        # On disk: exactly the probe file and the matched face's crop are new; nothing of
        # the probe none of whose faces matched; and nothing unreferenced.
        after = blob_files(team.data)
        assert after - before == {report.probes[0].sha256, kit_chip}
        assert report.probes[1].sha256 not in after
        assert_blobs_consistent(team.data)
        (event,) = audit(team.data, "search")
        assert event["object_ids"] == [sid]
        assert event["details"]["unmatched_faces_deleted"] == unmatched

        # With the policy keeping them, every face and both probe files are stored.
        admin.set_policy("keep_unmatched_probe_faces", True, reason="a test keeps them")
        kept = inv.search([two, nobody], case=CASE)
        assert kept.unmatched_faces_deleted == 0
    chips = [
        r[0]
        for r in sql(
            team.data,
            "SELECT chip_sha256 FROM probe_faces JOIN probe_media ON probe_media.id = media_id "
            "WHERE search_id = ? ORDER BY probe_faces.id",
            kept.search_id,
        )
    ]
    assert len(chips) == 2 + len(kept.probes[1].faces)
    assert kit_chip in chips  # the same crop as before: crops are reproducible, so...
    # ...the crops of the unmatched faces were never on disk after the first search.
    assert not (set(chips) - {kit_chip}) & after
    assert set(chips) <= blob_files(team.data)
    files = sql(team.data, "SELECT sha256 FROM probe_media WHERE search_id = ?", kept.search_id)
    assert {r[0] for r in files} == {p.sha256 for p in kept.probes}
    assert {p.sha256 for p in kept.probes} <= blob_files(team.data)
    assert_blobs_consistent(team.data)


# --------------------------------------------------------------------------- probe media


def test_probe_media_and_results_go_after_the_case_closes(team: Team, shared_data: Path) -> None:
    with team.open("admin") as admin:
        inv, aut = handles(team, admin, "investigator", "authoriser")
        old = inv.search([shared_data / TEST / "kit_with_rose.jpg"], case=CASE)
        (cand,) = [c for f in old.probes[0].faces for c in f.candidates]
        inv.decide(cand.id, "match", note="same man")
        inv.open_case("T-2", purpose="another case", legal_basis="test data only")
        aut.approve("T-2", scope="gallery", reason="tests search the gallery")
        other = inv.search([shared_data / TEST / "obama1.jpg"], case="T-2")
        assert [c.subject for f in other.probes[0].faces for c in f.candidates] == ["obama"]
        inv.close_case(CASE, reason="done")

        def rows(search_id: int) -> dict[str, int]:
            media = "SELECT id FROM probe_media WHERE search_id = ?"
            faces = f"SELECT id FROM probe_faces WHERE media_id IN ({media})"
            cands = f"SELECT id FROM candidates WHERE face_id IN ({faces})"
            return {
                "media": one(team.data, f"SELECT count(*) FROM ({media}) AS m", search_id),
                "faces": one(team.data, f"SELECT count(*) FROM ({faces}) AS f", search_id),
                "candidates": one(team.data, f"SELECT count(*) FROM ({cands}) AS c", search_id),
                "decisions": one(
                    team.data,
                    f"SELECT count(*) FROM decisions WHERE candidate_id IN ({cands})",
                    search_id,
                ),
            }

        def blobs(search_id: int) -> set[str]:
            return {
                r[0]
                for r in sql(
                    team.data,
                    "SELECT sha256 FROM probe_media WHERE search_id = ? UNION "
                    "SELECT chip_sha256 FROM probe_faces JOIN probe_media "
                    "ON probe_media.id = media_id WHERE search_id = ?",
                    search_id,
                    search_id,
                )
            }

        old_rows = rows(old.search_id)  # type: ignore[arg-type]
        assert old_rows == {"media": 1, "faces": 1, "candidates": 1, "decisions": 1}
        old_blobs, other_blobs = blobs(old.search_id), blobs(other.search_id)  # type: ignore
        other_rows = rows(other.search_id)  # type: ignore[arg-type]
        assert len(old_blobs) == len(other_blobs) == 2
        assert old_blobs | other_blobs <= blob_files(team.data)

        # Before the due date (31 days by default): listed as due within 40 days, not deleted.
        assert admin.retention_report(horizon_days=0).due == []
        due = admin.retention_report(horizon_days=40).due
        assert [(d.search_id, d.case) for d in due if isinstance(d, DueSearch)] == [
            (old.search_id, CASE)
        ]
        assert admin.run_retention().searches_purged == []
        assert rows(old.search_id) == old_rows  # type: ignore[arg-type]
        assert old_blobs <= blob_files(team.data)

        # 32 days after the case closed.
        with admin.store.session() as s:
            when = utcnow() - timedelta(days=32)
            s.execute(update(Case).where(Case.reference == CASE).values(closed_at=when))
        run = admin.run_retention()
        assert run.searches_purged == [old.search_id] and run.probe_files == 1
        assert run.blobs_deleted == 2

    assert rows(old.search_id) == dict.fromkeys(old_rows, 0)  # type: ignore[arg-type]
    purged, probes, faces, candidates = sql(
        team.data,
        "SELECT purged_at, probes, faces, candidates FROM searches WHERE id = ?",
        old.search_id,
    )[0]
    assert purged is not None and (probes, faces, candidates) == (1, 2, 1)
    assert not old_blobs & blob_files(team.data)
    # The open case's search is untouched.
    assert rows(other.search_id) == other_rows  # type: ignore[arg-type]
    assert other_blobs <= blob_files(team.data)
    assert one(team.data, "SELECT purged_at FROM searches WHERE id = ?", other.search_id) is None
    assert_blobs_consistent(team.data)

    (purge,) = audit(team.data, "retention.purge")
    assert purge["object_ids"] == [old.search_id] and purge["case"] == CASE
    assert purge["actor"] == "admin" and purge["details"] == {"probe_files": 1}
    runs = audit(team.data, "retention.run")
    assert [r["details"]["searches_purged"] for r in runs] == [0, 1]
    with team.open("auditor") as ft:
        report = ft.retention_report()
        view = ft.search_results(old.search_id)  # type: ignore[arg-type]
    deleted = [(e["action"], e["object_ids"]) for e in report.deleted]
    assert ("retention.purge", [old.search_id]) in deleted
    assert [a for a, _ in deleted] == ["retention.run", "retention.purge", "retention.run"]
    assert report.due == []
    assert view.purged_at is not None and view.candidates == [] and view.faces == 2


# --------------------------------------------------------------------------- subjects


def test_subjects_are_erased_at_review_unless_renewed(team: Team) -> None:
    kit, obama = subject_id(team.data, "kit_harington"), subject_id(team.data, "obama")
    biden = subject_id(team.data, "biden")
    files = {sid: subject_files(team.data, sid) for sid in (kit, obama, biden)}
    whole = all_bytes(team.data)
    for sid in (kit, obama, biden):  # the checks below can see what they look for
        assert files[sid]["vectors"] and all(v in whole for v in files[sid]["vectors"])
        assert set(files[sid]["blobs"]) <= blob_files(team.data)
    with team.open("admin") as admin:
        (aut,) = handles(team, admin, "authoriser")
        days = admin.policy().subject_review_days
        with admin.store.session() as s:
            when = utcnow() - timedelta(days=days + 1)
            s.execute(update(Subject).where(Subject.id.in_([kit, obama])).values(created_at=when))
        due = admin.retention_report(horizon_days=0).due
        assert sorted(d.subject for d in due if isinstance(d, DueSubject)) == [
            "kit_harington",
            "obama",
        ]
        aut.renew_subject("kit_harington", utcnow() + timedelta(days=30), reason="still wanted")
        run = admin.run_retention()
        assert run.subjects_erased == ["obama"]
        assert run.blobs_deleted == 2  # its image and its face crop
        model = admin.analyzer.model_id
        index_ids = set(admin.store.index(model).ids.tolist())

    assert subject_rows(team.data, obama) == dict.fromkeys(
        ("subjects", "images", "faces", "templates"), 0
    )
    assert subject_rows(team.data, kit) == {"subjects": 1, "images": 1, "faces": 1, "templates": 1}
    assert subject_rows(team.data, biden)["templates"] == 1
    on_disk = blob_files(team.data)
    assert not set(files[obama]["blobs"]) & on_disk
    assert set(files[kit]["blobs"]) | set(files[biden]["blobs"]) <= on_disk
    assert not set(files[obama]["template_ids"]) & index_ids
    whole = all_bytes(team.data)
    for vector in files[obama]["vectors"]:
        assert vector not in whole, "an erased template's bytes are still in a file"
    assert all(v in whole for v in files[kit]["vectors"])
    assert_blobs_consistent(team.data)

    (erased,) = audit(team.data, "retention.erase")
    assert erased["object_type"] == "subject" and erased["object_ids"] == [obama]
    assert erased["actor"] == "admin"
    assert erased["details"]["images"] == erased["details"]["templates"] == 1
    assert set(erased["details"]) == {"review_at", "images", "templates"}
    assert "obama" not in json.dumps(erased)  # the id only, not the name
    (renewed,) = audit(team.data, "subject.renew")
    assert renewed["object_ids"] == [kit] and renewed["actor"] == "authoriser"
    assert renewed["reason"] == "still wanted"


def test_the_service_applies_retention_when_it_starts(team: Team, shared_data: Path) -> None:
    with team.open("admin") as admin:
        (inv,) = handles(team, admin, "investigator")
        admin.set_policy("probe_retention_days", 0, reason="a test")
        search = inv.search([shared_data / TEST / "kit_with_rose.jpg"], case=CASE)
        inv.close_case(CASE)
        days = admin.policy().subject_review_days
        biden = subject_id(team.data, "biden")
        files = subject_files(team.data, biden)
        with admin.store.session() as s:
            when = utcnow() - timedelta(days=days + 1)
            s.execute(update(Subject).where(Subject.id == biden).values(created_at=when))
    assert one(team.data, "SELECT count(*) FROM probe_media") == 1
    assert subject_rows(team.data, biden)["subjects"] == 1
    # Opening the directory, with no token at all, does what is due.
    facetrail.open(team.data, **team.options()).close()
    assert subject_rows(team.data, biden) == dict.fromkeys(
        ("subjects", "images", "faces", "templates"), 0
    )
    assert not set(files["blobs"]) & blob_files(team.data)
    whole = all_bytes(team.data)
    assert not any(v in whole for v in files["vectors"])
    assert one(team.data, "SELECT count(*) FROM probe_media") == 0
    assert one(team.data, "SELECT purged_at IS NOT NULL FROM searches") == 1
    assert_blobs_consistent(team.data)
    for action, ids in (
        ("retention.purge", [search.search_id]),
        ("retention.erase", [biden]),
        ("retention.run", []),
    ):
        (event,) = audit(team.data, action)
        assert (event["actor"], event["object_ids"]) == ("system", ids)


# --------------------------------------------------------------------------- CLI


def test_cli_erase_removes_images_crops_templates_and_index_entries(
    team: Team, shared_data: Path
) -> None:
    probe = shared_data / TEST / "kit_with_rose.jpg"
    with team.open("investigator") as inv:
        search = inv.search([probe], case=CASE)
    (cand,) = [c for f in search.probes[0].faces for c in f.candidates]
    assert cand.subject == "kit_harington"
    kit = subject_id(team.data, "kit_harington")
    files = subject_files(team.data, kit)
    probe_blobs = {
        r[0]
        for r in sql(team.data, "SELECT sha256 FROM probe_media")
        + sql(team.data, "SELECT chip_sha256 FROM probe_faces")
    }
    assert len(probe_blobs) == 2

    proc = cli(team, "admin", "erase", "kit_harington", "--reason", "asked to", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["templates"] == 1

    assert subject_rows(team.data, kit) == dict.fromkeys(
        ("subjects", "images", "faces", "templates"), 0
    )
    on_disk = blob_files(team.data)
    assert not set(files["blobs"]) & on_disk
    assert probe_blobs <= on_disk  # the case's probe and crop stay with the search
    whole = all_bytes(team.data)
    assert not any(v in whole for v in files["vectors"])
    assert_blobs_consistent(team.data)
    (event,) = audit(team.data, "erase")
    assert event["actor"] == "admin" and event["object_ids"] == [kit]
    assert event["object_type"] == "subject" and event["reason"] == "asked to"
    assert event["details"] == {"images": 1, "faces": 1, "templates": 1}
    # The candidate stays as a record of the search, by name only.
    assert sql(
        team.data, "SELECT subject_id, subject_name FROM candidates WHERE id = ?", cand.id
    ) == [(None, "kit_harington")]
    with team.open("investigator") as inv:
        view = inv.search_results(search.search_id)  # type: ignore[arg-type]
        (shown,) = view.candidates
        assert (shown.id, shown.subject, shown.subject_erased) == (cand.id, "kit_harington", True)
        again = inv.search([probe], case=CASE, include_below=True, top_k=5)
        named = {c.subject for f in again.probes[0].faces for c in f.candidates}
        assert named == {"obama", "biden"}
        index_ids = set(inv.store.index(inv.analyzer.model_id).ids.tolist())
    assert index_ids and not set(files["template_ids"]) & index_ids


def test_cli_retention_run_and_report_by_role(team: Team) -> None:
    obama, biden = subject_id(team.data, "obama"), subject_id(team.data, "biden")
    with team.open("admin") as admin:
        days = admin.policy().subject_review_days
        with admin.store.session() as s:
            s.execute(
                update(Subject)
                .where(Subject.id == obama)
                .values(created_at=utcnow() - timedelta(days=days + 1))
            )
            s.execute(  # due in about ten days
                update(Subject)
                .where(Subject.id == biden)
                .values(created_at=utcnow() - timedelta(days=days - 10))
            )

    proc = cli(team, "admin", "retention", "run", "--json")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    # Opening the directory already erased obama (as the system); the run found nothing more.
    assert run["subjects_erased"] == [] and run["searches_purged"] == []
    assert subject_rows(team.data, obama)["subjects"] == 0
    assert subject_rows(team.data, biden)["subjects"] == 1
    assert [e["actor"] for e in audit(team.data, "retention.run")] == ["system", "admin"]

    for role in ("admin", "auditor"):
        proc = cli(team, role, "retention", "report", "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        erased = [e for e in report["deleted"] if e["action"] == "retention.erase"]
        assert [(e["actor"], e["object_ids"]) for e in erased] == [("system", [obama])]
        assert [d["subject"] for d in report["due"]] == ["biden"]
        assert report["policy"]["subject_review_days"] == days

    for role, args in (
        ("investigator", ("retention", "run")),
        ("investigator", ("retention", "report", "--json")),
        ("auditor", ("retention", "run")),
    ):
        proc = cli(team, role, *args)
        assert proc.returncode == 10, (role, args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "may not" in proc.stderr
    assert [e["actor"] for e in audit(team.data, "retention.run")] == ["system", "admin"]
    assert subject_rows(team.data, biden)["subjects"] == 1
