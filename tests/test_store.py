"""Tests of the store layer on real databases (no mocks): SQLite files, and PostgreSQL where
a server can be had (see conftest's `database_url`)."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sqlalchemy import inspect, text

import facetrail.service.tables  # noqa: F401 - the service's tables share the schema
from conftest import store_url
from facetrail.errors import InvalidInputError, NotFoundError, StoreError
from facetrail.store import (
    BlobStore,
    ExactIndex,
    FaceRecord,
    ImageRecord,
    NewReference,
    Store,
    TemplateIndex,
    alembic_config,
)
from facetrail.store.models import Base

MODEL = "test-model-v1"
DIM = 128


# --------------------------------------------------------------------------- helpers


def png_bytes(rng: np.random.Generator, size: int = 16) -> bytes:
    """A small PNG of random noise: unique bytes that are easy to search for."""
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def descriptor(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make_reference(
    rng: np.random.Generator, n_faces: int = 1, dim: int = DIM
) -> tuple[ImageRecord, list[FaceRecord]]:
    data = png_bytes(rng)
    image = ImageRecord(
        sha256=hashlib.sha256(data).hexdigest(),
        name="ref.png",
        format="PNG",
        width=16,
        height=16,
        data=data,
    )
    faces = [
        FaceRecord(
            box=(1.0 + i, 2.0, 10.0, 12.0),
            landmarks=[(3.0, 4.0), (7.0, 4.0), (5.0, 6.0), (4.0, 8.0), (6.0, 8.0)],
            detector_score=0.99,
            quality=0.75,
            chip_image=png_bytes(rng, 8),
            descriptor=descriptor(rng, dim),
        )
        for i in range(n_faces)
    ]
    return image, faces


def all_file_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def found_anywhere(root: Path, needle: bytes) -> list[Path]:
    return [p for p, data in all_file_bytes(root).items() if needle in data]


def row_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
            for t in ("subjects", "images", "faces", "templates")
        }


@pytest.fixture
def store(tmp_path: Path, database_url: str | None):
    with Store.open(tmp_path / "data", database_url) as s:
        yield s


def sqlite(store: Store) -> bool:
    return store.engine.dialect.name == "sqlite"


# --------------------------------------------------------------------------- schema


def test_open_creates_layout_schema_and_pragmas(store: Store) -> None:
    data_dir = store.data_dir
    assert (data_dir / "facetrail.db").is_file() == sqlite(store)
    assert (data_dir / ".lock").is_file()
    tables = set(inspect(store.engine).get_table_names())
    assert {"subjects", "images", "faces", "templates", "store_state", "audit_events"} <= tables
    assert store.generation() == 0
    with store.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    if not sqlite(store):
        with store.session() as s:  # writers queue on a row lock, then see the newest rows
            level = s.execute(text("SHOW transaction_isolation")).scalar_one()
            assert level == "read committed"
        with store.session(write=False) as s:  # a reader sees one snapshot
            level = s.execute(text("SHOW transaction_isolation")).scalar_one()
            assert level == "repeatable read"
        return
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA secure_delete")).scalar_one() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 60000


def test_migrations_match_models(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_downgrade_and_reopen(tmp_path: Path, database_url: str | None) -> None:
    with Store.open(tmp_path, database_url) as s, s.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
        # every table of every revision dropped
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    with Store.open(tmp_path, database_url) as s:  # upgrades again
        assert s.generation() == 0
        assert s.subjects() == []


def test_newer_schema_is_refused(tmp_path: Path, database_url: str | None) -> None:
    with Store.open(tmp_path, database_url) as s, s.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path, database_url)


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "facetrail.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store.open(tmp_path)


def test_unusable_database_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unusable database URL"):
        Store.open(tmp_path, "not a url")
    with pytest.raises(StoreError, match="unusable database URL"):
        Store.open(tmp_path, "nosuchdb://x/y")
    # psycopg, found for a bare postgresql:// URL; nothing listens on port 1.
    with pytest.raises(StoreError, match="cannot open the database"):
        Store.open(tmp_path, "postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=5")


# --------------------------------------------------------------------------- writes


def test_add_reference_round_trips_exactly(store: Store) -> None:
    rng = np.random.default_rng(1)
    image, faces = make_reference(rng, n_faces=2)
    added = store.add_reference(
        subject="Alice Example", reference="CUST-1", image=image, faces=faces, model=MODEL
    )
    assert not added.duplicate and added.created_subject
    assert len(added.face_ids) == 2 and len(added.template_ids) == 2
    assert added.generation == store.generation() == 1

    matrix = store.templates(MODEL)
    assert matrix.dim == DIM and len(matrix) == 2
    assert matrix.vectors.dtype == np.float32 and matrix.vectors.shape == (2, DIM)
    assert list(matrix.template_ids) == list(added.template_ids)
    assert list(matrix.subject_ids) == [added.subject_id] * 2
    for row, face in zip(matrix.vectors, faces, strict=True):
        assert row.tobytes() == face.descriptor.tobytes()

    assert store.blobs.get(image.sha256) == image.data
    detail = store.subject("Alice Example")
    assert detail.reference == "CUST-1"
    assert detail.created_at.tzinfo is not None
    (img,) = detail.images
    assert (img.sha256, img.name, img.format, img.width, img.height) == (
        image.sha256,
        "ref.png",
        "PNG",
        16,
        16,
    )
    assert [f.box for f in img.faces] == [f.box for f in faces]
    assert img.faces[0].landmarks == tuple(faces[0].landmarks)
    for stored, face in zip(img.faces, faces, strict=True):
        assert stored.chip_sha256 is not None
        assert store.blobs.get(stored.chip_sha256) == face.chip_image
        assert stored.templates == 1

    (summary,) = store.subjects()
    assert (summary.name, summary.reference, summary.images, summary.templates) == (
        "Alice Example",
        "CUST-1",
        1,
        2,
    )
    assert store.subject_names([added.subject_id, 999]) == {added.subject_id: "Alice Example"}
    empty = store.templates("no-such-model")
    assert empty.vectors.shape == (0, 0) and empty.template_ids.dtype == np.int64


def test_duplicate_image_is_idempotent(store: Store) -> None:
    rng = np.random.default_rng(2)
    image, faces = make_reference(rng)
    first = store.add_reference(
        subject="Bob", reference=None, image=image, faces=faces, model=MODEL
    )
    before = row_counts(store)
    again = store.add_reference(
        subject="Bob", reference=None, image=image, faces=faces, model=MODEL
    )
    assert again.duplicate
    assert again.image_id == first.image_id and again.template_ids == first.template_ids
    assert row_counts(store) == before
    assert store.generation() == first.generation
    # The same bytes for another subject are a new reference sharing one blob.
    other = store.add_reference(
        subject="Carol", reference=None, image=image, faces=faces, model=MODEL
    )
    assert not other.duplicate
    assert sum(1 for _ in store.blobs.iter_hashes()) == 2  # image + chip, shared


def test_reference_number_conflicts(store: Store) -> None:
    rng = np.random.default_rng(3)
    image, faces = make_reference(rng)
    store.add_reference(subject="Dan", reference=None, image=image, faces=faces, model=MODEL)
    image2, faces2 = make_reference(rng)
    store.add_reference(subject="Dan", reference="R-1", image=image2, faces=faces2, model=MODEL)
    assert store.subject("Dan").reference == "R-1"  # filled in where it was empty
    image3, faces3 = make_reference(rng)
    before = row_counts(store)
    with pytest.raises(InvalidInputError):
        store.add_reference(subject="Dan", reference="R-2", image=image3, faces=faces3, model=MODEL)
    assert row_counts(store) == before
    assert not store.blobs.exists(image3.sha256)


def test_bad_input_is_refused_and_writes_nothing(store: Store) -> None:
    rng = np.random.default_rng(4)
    image, faces = make_reference(rng)
    store.add_reference(subject="Eve", reference=None, image=image, faces=faces, model=MODEL)
    before = row_counts(store)
    img2, faces2 = make_reference(rng)
    bad_faces = [
        FaceRecord(
            box=f.box,
            landmarks=f.landmarks,
            detector_score=f.detector_score,
            quality=f.quality,
            chip_image=f.chip_image,
            descriptor=f.descriptor.astype(np.float64),
        )
        for f in faces2
    ]
    _, short_faces = make_reference(rng, dim=64)
    wrong_hash = ImageRecord("0" * 64, "x.png", "PNG", 16, 16, img2.data)
    cases = [
        {"subject": "", "image": img2, "faces": faces2},
        {"subject": " padded", "image": img2, "faces": faces2},
        {"subject": "x" * 201, "image": img2, "faces": faces2},
        {"subject": "Eve", "image": img2, "faces": bad_faces},
        {"subject": "Eve", "image": img2, "faces": short_faces},  # model is 128-d
        {"subject": "Eve", "image": wrong_hash, "faces": faces2},
    ]
    for case in cases:
        with pytest.raises(InvalidInputError):
            store.add_reference(reference=None, model=MODEL, **case)
    assert row_counts(store) == before
    assert store.generation() == 1


def test_bulk_add_references_handles_each_request_alone(store: Store) -> None:
    """One transaction for a batch: good requests are written, a refused one is reported
    without stopping the others, and repeats (in the store or in the batch) are duplicates."""
    rng = np.random.default_rng(11)
    image_a, faces_a = make_reference(rng)
    image_b, faces_b = make_reference(rng)
    image_c, faces_c = make_reference(rng, n_faces=2)
    store.add_reference(subject="kept", reference="R-1", image=image_a, faces=faces_a, model="m")
    bad_face = FaceRecord((0.0, 0.0, 1.0, 1.0), [], 1.0, 1.0, None, np.zeros(3, np.float64))
    requests = [
        NewReference("kept", "R-1", image_a, tuple(faces_a)),  # already stored
        NewReference("new", "N-1", image_b, tuple(faces_b)),  # new subject
        NewReference("new", None, image_c, tuple(faces_c)),  # second image of it, two faces
        NewReference("kept", "R-2", image_c, tuple(faces_c)),  # contradicts R-1
        NewReference("new", "N-1", image_b, tuple(faces_b)),  # repeat within the batch
        NewReference("broken", None, image_b, (bad_face,)),  # float64 descriptor
    ]
    before = store.generation()
    out = store.add_references(requests, model="m")
    assert [type(o).__name__ for o in out] == [
        "AddedReference",
        "AddedReference",
        "AddedReference",
        "InvalidInputError",
        "AddedReference",
        "InvalidInputError",
    ]
    assert out[0].duplicate and out[4].duplicate and out[4].image_id == out[1].image_id
    assert out[1].created_subject and not out[2].created_subject
    assert len(out[2].template_ids) == 2 and out[2].subject_id == out[1].subject_id
    assert "reference number" in str(out[3])
    assert store.generation() == before + 1
    assert row_counts(store) == {"subjects": 2, "images": 3, "faces": 4, "templates": 4}
    stored = store.templates("m")
    by_id = dict(zip(stored.template_ids.tolist(), stored.vectors, strict=True))
    assert by_id[out[2].template_ids[1]].tobytes() == faces_c[1].descriptor.tobytes()
    assert {s.name: s.reference for s in store.subjects()} == {"kept": "R-1", "new": "N-1"}
    assert len(store.index("m")) == 4


def test_failed_transaction_leaves_nothing_and_sweep_removes_blobs(store: Store) -> None:
    rng = np.random.default_rng(5)
    kept_image, kept_faces = make_reference(rng)
    store.add_reference(
        subject="Kept", reference=None, image=kept_image, faces=kept_faces, model=MODEL
    )
    before = row_counts(store)
    generation = store.generation()
    image, faces = make_reference(rng, n_faces=2)
    with pytest.raises(RuntimeError, match="boom"), store.session() as s:
        store.add_reference(
            subject="Ghost", reference="G-1", image=image, faces=faces, model=MODEL, session=s
        )
        raise RuntimeError("boom")
    assert row_counts(store) == before
    assert store.generation() == generation
    with pytest.raises(NotFoundError):
        store.subject("Ghost")
    # The blobs were written before the (failed) commit; they are now garbage.
    assert store.blobs.exists(image.sha256)
    assert store.sweep_blobs() == 3  # image and two chips
    assert not store.blobs.exists(image.sha256)
    assert store.blobs.get(kept_image.sha256) == kept_image.data
    assert store.sweep_blobs() == 0


def test_composed_session_commits_all_and_runs_post_commit_work(store: Store) -> None:
    rng = np.random.default_rng(6)
    image, faces = make_reference(rng)
    with store.session() as s:
        store.add_reference(
            subject="Fay", reference=None, image=image, faces=faces, model=MODEL, session=s
        )
        with pytest.raises(StoreError, match="already open"):
            store.add_reference(subject="F2", reference=None, image=image, faces=[], model=MODEL)
        report = store.erase_subject("Fay", session=s)
        assert report.blobs is None and report.wal_checkpointed is None
        assert (report.images, report.faces, report.templates) == (1, 1, 1)
    assert row_counts(store)["subjects"] == 0
    assert not store.blobs.exists(image.sha256)  # swept after the commit
    with Store.open(store.data_dir, store_url(store)) as other, pytest.raises(InvalidInputError):
        other.erase_subject("Fay", session=s)


def test_erase_removes_every_trace(tmp_path: Path, database_url: str | None) -> None:
    """On SQLite nothing of the subject is left in any file of the data directory (the
    database and its WAL included); on PostgreSQL none of its blobs or rows."""
    data_dir = tmp_path / "data"
    rng = np.random.default_rng(7)
    in_dir = database_url is None  # the database's files are in the data directory
    with Store.open(data_dir, database_url) as store:
        gone_image, gone_faces = make_reference(rng, n_faces=2)
        kept_image, kept_faces = make_reference(rng)
        store.add_reference(
            subject="Gone", reference="G", image=gone_image, faces=gone_faces, model=MODEL
        )
        kept = store.add_reference(
            subject="Kept", reference="K", image=kept_image, faces=kept_faces, model=MODEL
        )
        index = store.index(MODEL)
        assert len(index) == 3
        # More writes and reads so the WAL holds several versions of the pages.
        for i in range(5):
            img, fcs = make_reference(rng)
            store.add_reference(
                subject=f"Other {i}", reference=None, image=img, faces=fcs, model=MODEL
            )
        assert len(store.templates(MODEL)) == 8

        report = store.erase_subject("Gone")
        assert (report.images, report.faces, report.templates, report.blobs) == (1, 2, 2, 3)
        assert report.wal_checkpointed is (True if in_dir else None)
        assert report.generation == store.generation()

        with pytest.raises(NotFoundError):
            store.subject("Gone")
        assert "Gone" not in [s.name for s in store.subjects()]
        matrix = store.templates(MODEL)
        assert len(matrix) == 6
        assert store.index(MODEL) is index and len(index) == 6  # updated in place
        gone_vectors = {f.descriptor.tobytes() for f in gone_faces}
        assert not {row.tobytes() for row in matrix.vectors} & gone_vectors
        for face in gone_faces:
            assert face.chip_image is not None
            assert not store.blobs.exists(hashlib.sha256(face.chip_image).hexdigest())

        def check_no_trace() -> None:
            assert (data_dir / "facetrail.db").is_file() == in_dir
            for face in gone_faces:
                assert found_anywhere(data_dir, face.descriptor.tobytes()) == []
                assert face.chip_image is not None
                assert found_anywhere(data_dir, face.chip_image) == []
            assert found_anywhere(data_dir, gone_image.data) == []
            assert (found_anywhere(data_dir, kept_faces[0].descriptor.tobytes()) != []) == in_dir
            assert found_anywhere(data_dir, kept_image.data) != []
            if not in_dir:
                with Store.open(data_dir, database_url) as other, other.engine.connect() as c:
                    vectors = {bytes(v) for (v,) in c.execute(text("SELECT vector FROM templates"))}
                    assert kept_faces[0].descriptor.tobytes() in vectors
                    assert not vectors & {f.descriptor.tobytes() for f in gone_faces}
                    assert c.execute(text("SELECT count(*) FROM faces")).scalar_one() == 6

        check_no_trace()  # while the store is still open
        assert store.subject("Kept").id == kept.subject_id
    check_no_trace()  # and after it is closed
    if in_dir:
        with Store.open(data_dir) as store, store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"


def test_erase_unknown_subject_changes_nothing(store: Store) -> None:
    rng = np.random.default_rng(8)
    image, faces = make_reference(rng)
    store.add_reference(subject="Hal", reference=None, image=image, faces=faces, model=MODEL)
    before = (row_counts(store), store.generation(), sorted(store.blobs.iter_hashes()))
    with pytest.raises(NotFoundError):
        store.erase_subject("Nobody")
    assert (row_counts(store), store.generation(), sorted(store.blobs.iter_hashes())) == before


def test_ids_of_erased_rows_are_not_reused(store: Store) -> None:
    rng = np.random.default_rng(9)
    image, faces = make_reference(rng)
    first = store.add_reference(
        subject="Ida", reference=None, image=image, faces=faces, model=MODEL
    )
    store.erase_subject("Ida")
    image, faces = make_reference(rng)
    second = store.add_reference(
        subject="Jay", reference=None, image=image, faces=faces, model=MODEL
    )
    assert second.subject_id > first.subject_id
    assert min(second.template_ids) > max(first.template_ids)


# --------------------------------------------------------------------------- concurrency


def _enrol_worker(data_dir: str, worker: int, count: int, barrier, url: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Runs in a spawned process: open the store (racing the other) and enrol `count`."""
    barrier.wait(timeout=60)
    rng = np.random.default_rng(1000 + worker)
    with Store.open(Path(data_dir), url) as store:
        for i in range(count):
            image, faces = make_reference(rng)
            store.add_reference(
                subject=f"worker{worker}-{i:02d}",
                reference=f"R{worker}-{i}",
                image=image,
                faces=faces,
                model=MODEL,
            )


def test_two_processes_enrol_concurrently(tmp_path: Path, database_url: str | None) -> None:
    data_dir = tmp_path / "fresh"  # does not exist yet: both processes race to create it
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_enrol_worker, args=(str(data_dir), w, 30, barrier, database_url))
        for w in (1, 2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store.open(data_dir, database_url) as store:
        names = [s.name for s in store.subjects()]
        assert len(names) == 60
        assert names == sorted(f"worker{w}-{i:02d}" for w in (1, 2) for i in range(30))
        assert len(store.templates(MODEL)) == 60
        assert store.generation() == 60
        if database_url is not None:
            return
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
            assert conn.execute(text("PRAGMA foreign_key_check")).first() is None


def test_index_notices_another_handle(tmp_path: Path, database_url: str | None) -> None:
    rng = np.random.default_rng(10)
    with Store.open(tmp_path, database_url) as a, Store.open(tmp_path, database_url) as b:
        assert len(a.index(MODEL)) == 0
        image, faces = make_reference(rng)
        added = b.add_reference(
            subject="Kim", reference=None, image=image, faces=faces, model=MODEL
        )
        index = a.index(MODEL)
        assert len(index) == 1 and index.dim == DIM
        scores, ids = index.search(faces[0].descriptor[None, :], 5)
        assert ids.tolist() == [list(added.template_ids)]
        assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
        assert a.index(MODEL) is index  # nothing changed: cached
        # a's own write updates its cache in place; b's cache is rebuilt on next use.
        image2, faces2 = make_reference(rng)
        a.add_reference(subject="Lee", reference=None, image=image2, faces=faces2, model=MODEL)
        assert a.index(MODEL) is index and len(index) == 2
        assert len(b.index(MODEL)) == 2
        b.erase_subject("Kim")
        assert len(a.index(MODEL)) == 1
        assert a.index(MODEL).ids.tolist() == list(a.templates(MODEL).template_ids)


# --------------------------------------------------------------------------- blob store


def test_blob_store(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"some image bytes"
    sha = blobs.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert blobs.path(sha) == tmp_path / "blobs" / sha[:2] / sha[2:4] / sha
    assert blobs.put(data) == sha  # idempotent
    assert blobs.exists(sha) and blobs.get(sha) == data
    assert list(blobs.iter_hashes()) == [sha]
    with pytest.raises(InvalidInputError):
        blobs.put(data, expect="f" * 64)
    for bad in ("../../etc/passwd", "A" * 64, sha[:-1], sha + "0", ""):
        with pytest.raises(InvalidInputError):
            blobs.path(bad)
    blobs.path(sha).write_bytes(b"tampered")
    with pytest.raises(StoreError, match="corrupt"):
        blobs.get(sha)
    assert blobs.put(data) == sha and blobs.get(sha) == data  # put repairs a damaged copy
    assert blobs.delete(sha) and not blobs.delete(sha)
    with pytest.raises(NotFoundError):
        blobs.get(sha)
    assert list(blobs.iter_hashes()) == []


# --------------------------------------------------------------------------- index


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):  # type: ignore[no-untyped-def]
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order], scores


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    dim=st.integers(1, 9),
    m=st.integers(1, 5),
    k=st.integers(0, 50),
    seed=st.integers(0, 2**32 - 1),
    remove_fraction=st.floats(0.0, 1.0),
)
def test_exact_index_matches_brute_force(
    n: int, dim: int, m: int, k: int, seed: int, remove_fraction: float
) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = rng.permutation(10 * n + 1)[:n].astype(np.int64)
    queries = rng.standard_normal((m, dim)).astype(np.float32)
    index = ExactIndex(dim)
    half = n // 2
    index.add(ids[:half], vectors[:half])  # two adds exercise the growth path
    index.add(ids[half:], vectors[half:])
    assert isinstance(index, TemplateIndex)

    def check(vecs: np.ndarray, live: np.ndarray) -> None:
        scores, got = index.search(queries, k)
        kk = min(k, len(live))
        assert scores.shape == got.shape == (m, kk)
        assert scores.dtype == np.float32 and got.dtype == np.int64
        want_scores, _, full = brute_force(vecs, live, queries, kk)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(scores, axis=1) <= 0)
        position = {int(t): j for j, t in enumerate(live)}
        for row in range(m):
            assert len(set(got[row].tolist())) == kk
            true = [full[row, position[int(t)]] for t in got[row]]
            np.testing.assert_allclose(scores[row], true, rtol=1e-5, atol=1e-5)

    check(vectors, ids)
    gone = ids[rng.random(n) < remove_fraction]
    assert index.remove(np.concatenate([gone, [-1]])) == len(gone)
    keep = ~np.isin(ids, gone)
    assert len(index) == int(keep.sum())
    assert sorted(index.ids.tolist()) == sorted(ids[keep].tolist())
    check(vectors[keep], ids[keep])


def test_exact_index_remove_compacts_and_validates() -> None:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((5, 4)).astype(np.float32)
    index = ExactIndex(4, np.arange(5), vectors)
    vectors[0] = 0  # the index kept its own copy
    assert index.search(rng.standard_normal((1, 4)).astype(np.float32), 10)[1].shape == (1, 5)
    assert index.remove(np.array([1, 3])) == 2
    assert len(index) == 3 and index.ids.tolist() == [0, 2, 4]
    _, ids = index.search(vectors[2:3], 1)
    assert ids.tolist() == [[2]]
    assert index.remove(np.array([1, 3])) == 0
    with pytest.raises(InvalidInputError):
        index.add(np.array([2]), vectors[:1])  # already present
    with pytest.raises(InvalidInputError):
        index.add(np.array([9]), vectors[:1].astype(np.float64))
    with pytest.raises(InvalidInputError):
        index.search(np.zeros((1, 3), np.float32), 1)
    empty = ExactIndex(4)
    scores, ids = empty.search(np.zeros((2, 4), np.float32), 3)
    assert scores.shape == ids.shape == (2, 0)
