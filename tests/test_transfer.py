"""Bulk export and import of templates (`templates export FILE`, `templates import FILE`): a
round trip into a fresh store searches the same, and a bad file changes nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CASE, Team, make_team, sql
from facetrail.errors import InvalidInputError, NotFoundError, PermissionDeniedError

KNN = "examples/face_recognition/knn_examples"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Team:
    """A gallery enrolled from images: the system templates are migrated from."""
    team = make_team(tmp_path_factory.mktemp("source") / "data")
    with team.open("admin") as admin:
        report = admin.enrol([shared_data / KNN / "train"])
    assert report.enrolled == 9
    return team


@pytest.fixture(scope="module")
def exported(source: Team, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "gallery.npz"
    with source.open("admin") as admin:
        report = admin.export_templates(path, reason="migration test")
    assert report.templates == 9 and report.subjects == 5
    return path


def _search(team: Team, probes: list[Path]) -> list[list[tuple[str, float]]]:
    with team.open() as investigator:
        report = investigator.search(probes, case=CASE, top_k=5, include_below=True)
    return [[(c.subject, c.score) for c in f.candidates] for p in report.probes for f in p.faces]


def _state(team: Team) -> tuple:
    """What an import may change: subjects, templates, the generation and the audit trail."""
    return (
        sql(team.data, "SELECT id, name, reference FROM subjects ORDER BY id"),
        sql(team.data, "SELECT id, subject_id, model, vector FROM templates ORDER BY id"),
        sql(team.data, "SELECT value FROM store_state ORDER BY key"),
        sql(team.data, "SELECT count(*) FROM audit_events"),
    )


def _events(team: Team, action: str) -> list[dict]:
    with team.open("auditor") as auditor:
        return [e for e in auditor.export_audit() if e["action"] == action]


def test_export_file_format(exported: Path, source: Team) -> None:
    with np.load(exported, allow_pickle=False) as archive:
        assert str(archive["format"]) == "facetrail-templates" and int(archive["version"]) == 1
        vectors = archive["descriptors"]
        assert vectors.dtype == np.float32 and vectors.shape == (9, 128)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert sorted(set(archive["subjects"])) == [
            "alex_lacamoire",
            "biden",
            "kit_harington",
            "obama",
            "rose_leslie",
        ]
        shas = sql(source.data, "SELECT sha256 FROM images")
        assert set(archive["image_sha256"]) == {s for (s,) in shas}
    assert os.stat(exported).st_mode & 0o077 == 0  # biometric data: private to its owner
    (event,) = _events(source, "templates.export")
    assert event["details"]["templates"] == 9 and event["reason"] == "migration test"
    assert "descriptors" not in json.dumps(event) and len(event["object_ids"]) == 5


def test_round_trip_into_a_fresh_store_searches_the_same(
    exported: Path, source: Team, tmp_path: Path, shared_data: Path
) -> None:
    fresh = make_team(tmp_path / "data")
    with fresh.open("admin") as admin:
        report = admin.import_templates(exported, reason="migration test")
        assert (report.added, report.duplicates, report.created_subjects) == (9, 0, 5)
        assert [s.templates for s in admin.subjects()] == [1, 2, 2, 2, 2]
        # The same file again adds nothing: every row is already held.
        again = admin.import_templates(exported)
        assert (again.added, again.duplicates) == (0, 9)
        # Exported again, it is the same file's content, source image hashes included.
        back = admin.export_templates(tmp_path / "back.npz")
    with np.load(exported) as a, np.load(tmp_path / "back.npz") as b:
        for key in ("model", "subjects", "references", "image_sha256", "descriptors"):
            np.testing.assert_array_equal(a[key], b[key])
    assert back.sha256 == report.sha256
    probes = sorted((shared_data / KNN / "test").iterdir())
    assert _search(fresh, probes) == _search(source, probes)
    first, second = _events(fresh, "templates.import")
    assert second["details"]["added"] == 0 and second["details"]["duplicates"] == 9
    event = first
    assert event["details"]["added"] == 9 and event["details"]["sha256"] == report.sha256


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good(exported: Path) -> dict[str, np.ndarray]:
    with np.load(exported) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture()
def target(tmp_path: Path, exported: Path) -> Team:
    """A store that already holds one imported template, which a refused file must keep."""
    team = make_team(tmp_path / "data")
    arrays = _good(exported)
    one = {k: (v[:1] if v.ndim else v) for k, v in arrays.items()}
    with team.open("admin") as admin:
        admin.import_templates(_write(tmp_path / "one.npz", **one))
    return team


def test_bad_files_change_nothing_and_say_why(target: Team, exported: Path, tmp_path: Path) -> None:
    good = _good(exported)
    n = good["descriptors"].shape[0]
    nan = good["descriptors"].copy()
    nan[3, 7] = np.nan
    raw = exported.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    unit64 = np.eye(n, 64, dtype=np.float32)
    cases = {
        "wrong dims": (_write(tmp_path / "d.npz", **{**good, "descriptors": unit64}), "128"),
        "not finite": (_write(tmp_path / "n.npz", **{**good, "descriptors": nan}), "row 3"),
        "not unit": (
            _write(tmp_path / "u.npz", **{**good, "descriptors": good["descriptors"] * 2}),
            "length 2",
        ),
        "wrong model": (
            _write(tmp_path / "m.npz", **{**good, "model": np.array("other-model:1")}),
            "--model other-model:1",
        ),
        "truncated": (truncated, "not a readable template file"),
        "not npz": (_write(tmp_path / "x.npz", subjects=good["subjects"]), "not a template file"),
        "short column": (
            _write(tmp_path / "s.npz", **{**good, "subjects": good["subjects"][:-1]}),
            "subjects for",
        ),
        "pickled": (
            _write(tmp_path / "p.npz", **{**good, "subjects": good["subjects"].astype(object)}),
            "not a readable template file",
        ),
        "bad image hash": (
            _write(tmp_path / "h.npz", **{**good, "image_sha256": np.array(["zz"] * n)}),
            "image_sha256",
        ),
        "contradicting reference": (
            _write(
                tmp_path / "r.npz",
                **{**good, "references": np.array([f"R-{i}" for i in range(n)])},
            ),
            "two reference numbers",
        ),
    }
    before = _state(target)
    with target.open("admin") as admin:
        for what, (path, says) in cases.items():
            with pytest.raises(InvalidInputError) as caught:
                admin.import_templates(path)
            assert says in str(caught.value), (what, str(caught.value))
            assert _state(target) == before, what


def test_templates_of_another_model_are_kept_as_that_model(
    target: Team, exported: Path, tmp_path: Path
) -> None:
    other = {**_good(exported), "model": np.array("other-model:1")}
    path = _write(tmp_path / "other.npz", **other)
    with target.open("admin") as admin:
        report = admin.import_templates(path, model="other-model:1")
        assert report.added == 9 and report.model == "other-model:1"
        assert admin.store.template_models()["other-model:1"] == 9
        # The configured model's gallery is what it was: one template.
        assert admin.store.gallery_size(admin.analyzer.model_id) == (1, 1)


def test_roles_and_an_empty_export(target: Team, tmp_path: Path, exported: Path) -> None:
    with target.open("investigator") as investigator:
        with pytest.raises(PermissionDeniedError):
            investigator.export_templates(tmp_path / "x.npz")
        with pytest.raises(PermissionDeniedError):
            investigator.import_templates(exported)
    with target.open("admin") as admin, pytest.raises(NotFoundError, match="no templates"):
        admin.export_templates(tmp_path / "none.npz", model="no-such-model")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "none.npz").exists()


def test_cli_export_and_import(source: Team, tmp_path: Path) -> None:
    def run(team: Team, *args: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "facetrail", "templates", *args, "--json"],
            env={**os.environ, **team.env("admin")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    path = tmp_path / "cli.npz"
    exported = run(source, "export", str(path))
    assert exported["templates"] == 9 and path.is_file()
    fresh = make_team(tmp_path / "data")
    imported = run(fresh, "import", str(path))
    assert imported["added"] == 9 and imported["sha256"] == exported["sha256"]
    np.load(io.BytesIO(path.read_bytes()))  # a plain .npz any NumPy reads


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_store_bulk_import_export_and_erasure(
    tmp_path: Path, database_url: str | None, sealed: bool
) -> None:
    """The store's side on each database, with and without encryption at rest: imported
    templates come back bit for bit, join the index, and go with their subject."""
    from facetrail.store import Store, TemplateSet

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(6, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = ("ann", "ann", "bob", "cy", "cy", "cy")
    templates = TemplateSet(
        model="m:1",
        subjects=names,
        references=("R-1", None, None, "R-3", "R-3", None),
        image_sha256=("a" * 64, None, "b" * 64, None, None, None),
        vectors=vectors,
    )
    key = os.urandom(32) if sealed else None
    with Store.open(tmp_path / "data", database_url, key=key) as store:
        assert len(store.index("m:1")) == 0  # cached before the import, updated by it
        done = store.import_templates(templates)
        assert (done.added, done.duplicates, done.created_subjects) == (6, 0, 3)
        assert len(store.index("m:1")) == 6
        back, ids = store.export_templates("m:1")
        assert back.vectors.tobytes() == vectors.tobytes()
        assert back.subjects == names and back.image_sha256 == templates.image_sha256
        assert back.references == ("R-1", "R-1", None, "R-3", "R-3", "R-3")
        assert list(ids) == list(done.template_ids)
        assert store.import_templates(templates).duplicates == 6
        wrong = TemplateSet("m:1", ("dan",), (None,), (None,), np.ones((1, 8), np.float32))
        with pytest.raises(InvalidInputError, match="16-d templates"):
            store.import_templates(wrong)
        assert [s.name for s in store.subjects()] == ["ann", "bob", "cy"]
        report = store.erase_subject("cy")
        assert report.templates == 3 and report.images == 0
        assert store.gallery_size("m:1") == (2, 3) and len(store.index("m:1")) == 3
