"""One suite for every template index backend: exact (in memory), ann (the embedded faiss
IVF-SQ8 index with exact re-ranking, kept in files) and milvus (Milvus Lite, the embedded
edition of Milvus, on a local file: the same client code a Milvus cluster is used with).

Each backend must answer like the exact index on small data, forget erased templates at once
(the ann index also in its files, byte for byte), survive a reopen, and, through the store,
catch up with another handle's writes. The ann index must also survive a SIGKILL in the
middle of an update: the last good files plus the replayed log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from facetrail.errors import InvalidInputError
from facetrail.store import ExactIndex, Store, TemplateIndex
from facetrail.store.ann import LOG, AnnIndex, AnnParams
from facetrail.store.backends import IndexConfig, ann_dir
from test_store import make_reference

MODEL = "test-model-v1"
DIM = 32
# Small enough that a few hundred templates train a quantiser (so the IVF path runs), with
# every list probed, so that results must equal exact search.
PARAMS = AnnParams(nprobe=4096, shortlist=64, min_train=200)

try:
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401

    MILVUS_SKIP = ""
except ImportError as e:  # pragma: no cover - CI installs .[test], which includes them
    MILVUS_SKIP = f"pymilvus/milvus-lite not importable ({e}); pip install 'facetrail[milvus]'"


def clustered(n_ids: int, per_id: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Normalised descriptors: `per_id` noisy samples around each of `n_ids` identities."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim)).astype(np.float32)
    x = np.repeat(centres, per_id, axis=0) + 0.3 * rng.standard_normal(
        (n_ids * per_id, dim)
    ).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def files_bytes(path: Path) -> bytes:
    """Everything under `path`, concatenated: to look for a vector's exact bytes."""
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["exact", "ann", "milvus"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "milvus" and MILVUS_SKIP:
        pytest.skip(MILVUS_SKIP)
    return str(request.param)


@pytest.fixture()
def config(kind: str, tmp_path: Path) -> Iterator[IndexConfig]:
    uri = str(tmp_path / "milvus.db") if kind == "milvus" else None
    # FLAT in Milvus for an exact answer on small data (a cluster would use HNSW).
    yield IndexConfig(kind=kind, ann=PARAMS, milvus_uri=uri, milvus_index_type="FLAT")  # type: ignore[arg-type]
    if kind == "milvus":
        from facetrail.store.milvus_index import close_clients

        close_clients()


@pytest.fixture()
def make_index(config: IndexConfig, tmp_path: Path) -> Callable[[], TemplateIndex]:
    """Open the backend's index of MODEL (again: a second call reopens it)."""

    def make() -> TemplateIndex:
        if config.kind == "exact":
            return ExactIndex(DIM)
        if config.kind == "ann":
            return AnnIndex.open(tmp_path / "ann", DIM, PARAMS)
        from facetrail.store.milvus_index import MilvusIndex

        return MilvusIndex.connect(config, MODEL, DIM)

    return make


# --------------------------------------------------------------------------- index level


def test_semantics_match_exact(make_index: Callable[[], TemplateIndex]) -> None:
    x = clustered(60, 5, seed=1)  # 300 templates: the ann index trains at 200
    ids = np.arange(10, 10 + 3 * len(x), 3, dtype=np.int64)  # not 0..n-1: ids are not rows
    idx, ref = make_index(), ExactIndex(DIM)
    assert isinstance(idx, TemplateIndex) and idx.dim == DIM and len(idx) == 0
    assert idx.search(x[:2], 5)[1].shape == (2, 0)
    for part in (slice(0, 150), slice(150, 300)):  # two adds: incremental, and training
        idx.add(ids[part], x[part])
        ref.add(ids[part], x[part])
    if isinstance(idx, AnnIndex):
        assert idx.trained
    assert len(idx) == 300
    queries = clustered(60, 6, seed=1)[5::6][:20]  # fresh samples of enrolled identities

    def same() -> None:
        got_s, got_i = idx.search(queries, 5)
        want_s, want_i = ref.search(queries, 5)
        assert got_i.tolist() == want_i.tolist()
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)

    same()
    with pytest.raises(InvalidInputError):
        idx.add(ids[:1], x[:1])  # already there
    with pytest.raises(InvalidInputError):
        idx.add(np.array([1, 1]), x[:2])
    gone = ids[::7]
    assert idx.remove(gone) == ref.remove(gone) == gone.size
    assert idx.remove(np.array([999_999])) == 0
    assert len(idx) == 300 - gone.size
    same()
    # Removed ids may come back with new vectors (slots are reused).
    idx.add(gone[:3], x[-3:])
    ref.add(gone[:3], x[-3:])
    same()
    # k beyond the gallery: everything, exactly ordered.
    s_all, i_all = idx.search(queries[:1], 10_000)
    assert i_all.shape == (1, len(idx)) and np.all(np.diff(s_all[0]) <= 1e-6)


def test_erasure(make_index: Callable[[], TemplateIndex], kind: str, tmp_path: Path) -> None:
    x = clustered(50, 5, seed=2)
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    idx = make_index()
    idx.add(ids, x)
    victim = 17
    scores, found = idx.search(x[victim - 1 : victim], 1)
    assert found[0, 0] == victim and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert idx.remove(np.array([victim])) == 1
    _, found = idx.search(x[victim - 1 : victim], 5)
    assert victim not in found[0].tolist()
    if kind == "ann":
        assert isinstance(idx, AnnIndex)
        on_disk = files_bytes(tmp_path / "ann")
        assert x[victim - 1].tobytes() not in on_disk  # the erased vector's exact bytes
        assert x[victim].tobytes() in on_disk  # ...where a kept one is found
        # Also when the erased template was still only in the log (not yet checkpointed).
        idx.add(np.array([1000]), x[:1] * 0.5 + x[1:2] * 0.5)
        fresh = (x[:1] * 0.5 + x[1:2] * 0.5).tobytes()
        assert fresh in files_bytes(tmp_path / "ann")
        idx.remove(np.array([1000]))
        assert fresh not in files_bytes(tmp_path / "ann")


def test_persistence_round_trip(make_index: Callable[[], TemplateIndex], kind: str) -> None:
    if kind == "exact":
        pytest.skip("the exact index lives in memory by design; the store rebuilds it")
    x = clustered(50, 5, seed=3)
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    idx = make_index()
    idx.add(ids[:200], x[:200])
    idx.remove(ids[:5])
    idx.add(ids[200:], x[200:])
    before = idx.search(x[::9], 5)
    if isinstance(idx, AnnIndex):
        assert os.path.getsize(idx.path / LOG) > 0  # the last add is still only in the log
    again = make_index()
    assert len(again) == len(idx) == 245
    after = again.search(x[::9], 5)
    assert after[1].tolist() == before[1].tolist()
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    if isinstance(again, AnnIndex):
        assert again.trained and os.path.getsize(again.path / LOG) == 0  # replayed, applied
        assert again.encoded_on_open == 0  # every code came from the codes file


# --------------------------------------------------------------------------- crash safety

CHILD = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np
import facetrail.store.ann as ann

args = json.loads(sys.argv[1])
x = np.load(args["x"])
params = ann.AnnParams(nprobe=4096, shortlist=64, min_train=200, checkpoint_bytes=1)

def stop(*_a, **_k):
    Path(args["marker"] + ".tmp").write_text(str(os.getpid()))
    os.replace(args["marker"] + ".tmp", args["marker"])
    while True:
        time.sleep(3600)

idx = ann.AnnIndex.open(Path(args["path"]), x.shape[1], params)
ids = np.arange(1, len(x) + 1, dtype=np.int64)
idx.add(ids[:250], x[:250])  # completes: the last good state
setattr(ann, args["where"], stop)  # then the next update stops (and is killed) right there
if args["op"] == "add":
    idx.add(ids[250:], x[250:])
else:
    idx.remove(ids[:10])
"""


@pytest.mark.parametrize(
    ("op", "where"),
    [
        ("add", "_checkpoint"),  # logged, not yet applied to the slot files
        ("add", "_clear_log"),  # applied to the slot files, log not yet cleared
        ("remove", "_checkpoint"),  # an erasure logged, files not yet zeroed
        ("remove", "_clear_log"),  # files zeroed, the log not yet cleared
    ],
)
def test_ann_crash_mid_update(tmp_path: Path, op: str, where: str) -> None:
    x = clustered(60, 5, seed=4)
    np.save(tmp_path / "x.npy", x)
    path, marker = tmp_path / "ann", str(tmp_path / "stopped")
    args = {"x": str(tmp_path / "x.npy"), "path": str(path), "marker": marker}
    args |= {"op": op, "where": where}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            assert child.poll() is None, "the child exited before reaching the stop"
            assert time.monotonic() < deadline, "the child never reached the stop"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    idx = AnnIndex.open(path, DIM, PARAMS)
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    # The update was logged (fsynced) before the stop, so the replay completes it.
    want = ExactIndex(DIM, ids, x) if op == "add" else ExactIndex(DIM, ids[10:250], x[10:250])
    assert len(idx) == len(want)
    assert sorted(idx.ids.tolist()) == sorted(want.ids.tolist())
    got, exp = idx.search(x[::7], 3), want.search(x[::7], 3)
    assert got[1].tolist() == exp[1].tolist()
    assert os.path.getsize(path / LOG) == 0
    if op == "remove":
        assert x[0].tobytes() not in files_bytes(path)
    # A record torn by a crash in the middle of an append is dropped, not misread.
    with open(path / LOG, "ab") as f:
        f.write(b"FTIX\x01" + b"\x07" * 40)
    again = AnnIndex.open(path, DIM, PARAMS)
    assert len(again) == len(want) and os.path.getsize(path / LOG) == 0


# --------------------------------------------------------------------------- through the store


def test_store_catches_up(tmp_path: Path, config: IndexConfig) -> None:
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    with Store.open(data, index=config) as a, Store.open(data, index=config) as b:
        assert len(a.index(MODEL)) == 0
        refs = [make_reference(rng, n_faces=2, dim=DIM) for _ in range(6)]
        for i, (image, faces) in enumerate(refs[:4]):
            b.add_reference(subject=f"S{i}", reference=None, image=image, faces=faces, model=MODEL)
        index = a.index(MODEL)
        assert len(index) == 8
        probe = refs[1][1][0].descriptor[None, :]
        _, ids = index.search(probe, 1)
        assert b.template_subjects(ids)[0, 0] == a.subjects()[1].id
        if config.kind != "exact":
            # Another handle's write: the same index object catches up, no rebuild.
            image, faces = refs[4]
            b.add_reference(subject="S4", reference=None, image=image, faces=faces, model=MODEL)
            assert a.index(MODEL) is index and len(index) == 10
        # This handle's own write updates it in place.
        image, faces = refs[5]
        a.add_reference(subject="S5", reference=None, image=image, faces=faces, model=MODEL)
        assert a.index(MODEL) is a.index(MODEL)
        # Erasure by the other handle: gone from the index here, and from the files even
        # before this handle looks again.
        gone = b.erase_subject("S1")
        assert gone.templates == 2
        erased = refs[1][1][0].descriptor.astype(np.float32).tobytes()
        if config.kind == "ann":
            assert erased not in files_bytes(ann_dir(data, MODEL))
        now = a.index(MODEL)
        _, ids = now.search(probe, 3)
        assert a.template_subjects(ids).min() >= 0  # every hit is a template that exists
        assert sorted(now.ids.tolist()) == sorted(a.templates(MODEL).template_ids.tolist())  # type: ignore[attr-defined]
    if config.kind != "exact":
        # A new process (here: a new handle) reopens the kept index and checks it against
        # the database instead of rebuilding it.
        with Store.open(data, index=config) as c:
            again = c.index(MODEL)
            assert sorted(again.ids.tolist()) == sorted(c.templates(MODEL).template_ids.tolist())  # type: ignore[attr-defined]


def test_encrypted_store_keeps_ann_index_in_memory(tmp_path: Path) -> None:
    """The ann index's files would hold templates in the clear: an encrypted store keeps it
    in memory only, and refuses to send its templates to Milvus."""
    rng = np.random.default_rng(6)
    config = IndexConfig(kind="ann", ann=PARAMS)
    with Store.open(tmp_path, key=bytes(range(32)), index=config) as store:
        image, faces = make_reference(rng, n_faces=2, dim=DIM)
        store.add_reference(subject="K", reference=None, image=image, faces=faces, model=MODEL)
        index = store.index(MODEL)
        assert isinstance(index, AnnIndex) and index.path is None and len(index) == 2
        assert not (tmp_path / "index").exists()
    if not MILVUS_SKIP:
        from facetrail.errors import StoreError

        milvus = IndexConfig(kind="milvus", milvus_uri=str(tmp_path / "m.db"))
        with (
            Store.open(tmp_path, key=bytes(range(32)), index=milvus) as store,
            pytest.raises(StoreError, match="encrypted"),
        ):
            store.index(MODEL)
