"""Encryption at rest: sealed blobs and templates on real files and a real SQLite database."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import CASE, make_team
from facetrail.config import Settings
from facetrail.errors import InvalidInputError, StoreError
from facetrail.store import BlobStore, FaceRecord, ImageRecord, Store
from facetrail.store.crypto import MAGIC, OVERHEAD, Cipher, generate_key_file, is_sealed

MODEL = "test-model-v1"
DIM = 128
KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
PNG_MAGIC = b"\x89PNG"
JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------------------- helpers


def png_bytes(rng: np.random.Generator, size: int = 16) -> bytes:
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_record(data: bytes, fmt: str = "PNG", size: tuple[int, int] = (16, 16)) -> ImageRecord:
    return ImageRecord(
        sha256=hashlib.sha256(data).hexdigest(),
        name=f"ref.{fmt.lower()}",
        format=fmt,
        width=size[0],
        height=size[1],
        data=data,
    )


def face_record(rng: np.random.Generator) -> FaceRecord:
    v = rng.standard_normal(DIM).astype(np.float32)
    return FaceRecord(
        box=(1.0, 2.0, 10.0, 12.0),
        landmarks=[(3.0, 4.0), (7.0, 4.0), (5.0, 6.0), (4.0, 8.0), (6.0, 8.0)],
        detector_score=0.99,
        quality=0.75,
        chip_image=png_bytes(rng, 8),
        descriptor=v / np.linalg.norm(v),
    )


def enrol(
    store: Store, rng: np.random.Generator, subject: str, image: ImageRecord | None = None
) -> tuple[ImageRecord, FaceRecord]:
    image = image or image_record(png_bytes(rng))
    face = face_record(rng)
    store.add_reference(subject=subject, reference=None, image=image, faces=[face], model=MODEL)
    return image, face


def blob_files(store: Store) -> dict[str, bytes]:
    return {sha: store.blobs.path(sha).read_bytes() for sha in store.blobs.iter_hashes()}


def raw_vectors(data_dir: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(data_dir / "facetrail.db")
    try:
        return {int(i): bytes(v) for i, v in conn.execute("SELECT id, vector FROM templates")}
    finally:
        conn.close()


def set_raw_vector(data_dir: Path, template_id: int, vector: bytes) -> None:
    conn = sqlite3.connect(data_dir / "facetrail.db")
    try:
        with conn:
            conn.execute("UPDATE templates SET vector = ? WHERE id = ?", (vector, template_id))
    finally:
        conn.close()


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def found_anywhere(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and want.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


# --------------------------------------------------------------------------- the cipher


def test_cipher_round_trip_binds_context_and_key() -> None:
    c = Cipher(KEY)
    sealed = c.seal(b"plaintext bytes", b"blob:abc")
    assert sealed.startswith(MAGIC) and is_sealed(sealed)
    assert len(sealed) == len(b"plaintext bytes") + OVERHEAD
    assert b"plaintext" not in sealed
    assert c.seal(b"plaintext bytes", b"blob:abc") != sealed  # a fresh nonce every time
    assert c.open(sealed, b"blob:abc") == b"plaintext bytes"
    with pytest.raises(StoreError, match="wrong key or damaged data"):
        c.open(sealed, b"blob:abd")  # another purpose
    with pytest.raises(StoreError, match="wrong key or damaged data"):
        Cipher(OTHER_KEY).open(sealed, b"blob:abc")
    for at in (0, 5, len(sealed) - 1):  # header, nonce, tag
        with pytest.raises(StoreError, match="cannot decrypt"):
            c.open(flip(sealed, at), b"blob:abc")
    assert not is_sealed(b"FTE1")  # too short to hold a tag
    assert KEY.hex() not in repr(c) and "Cipher" in repr(c)


@pytest.mark.parametrize("key", [b"", b"x" * 16, b"x" * 31, b"x" * 33, "x" * 32, None])
def test_cipher_refuses_bad_keys(key: object) -> None:
    with pytest.raises(InvalidInputError, match="32 bytes"):
        Cipher(key)  # type: ignore[arg-type]


def test_generate_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    generate_key_file(path)
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600
    key = Settings(data=tmp_path, encryption_key_file=path).encryption_key_bytes()
    assert key is not None and len(key) == 32
    assert base64.urlsafe_b64decode(path.read_bytes().strip()) == key
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="already exists"):
        generate_key_file(path)
    assert path.read_bytes() == before
    other = tmp_path / "key2"
    generate_key_file(other)
    assert other.read_bytes() != before


# --------------------------------------------------------------------------- sealed store


def test_sealed_at_rest_and_round_trip_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data_dir = tmp_path / "data"
    with Store.open(data_dir, key=KEY) as store:
        assert store.encrypted
        enrolled = [enrol(store, rng, f"subject {i}") for i in range(3)]
        files = blob_files(store)
        assert len(files) == 6  # three images and three chips
        for sha, raw in files.items():
            assert raw.startswith(MAGIC)
            assert PNG_MAGIC not in raw and JPEG_MAGIC not in raw
            assert hashlib.sha256(raw).hexdigest() != sha
        for image, face in enrolled:
            assert store.blobs.get(image.sha256) == image.data
            assert face.chip_image is not None
            assert store.blobs.get(hashlib.sha256(face.chip_image).hexdigest()) == face.chip_image
        matrix = store.templates(MODEL)
        assert_same_bits(matrix.vectors, np.stack([f.descriptor for _, f in enrolled]))
        assert len(store.index(MODEL)) == 3

    vectors = raw_vectors(data_dir)
    for (_, face), stored in zip(enrolled, vectors.values(), strict=True):
        plain = face.descriptor.astype("<f4").tobytes()
        assert stored != plain and stored.startswith(MAGIC)
        assert len(stored) == len(plain) + OVERHEAD
        # Nowhere in the directory: not in the database, its WAL, or any blob.
        assert found_anywhere(data_dir, plain) == []
    for image, face in enrolled:
        assert found_anywhere(data_dir, image.data) == []
        assert face.chip_image is not None and found_anywhere(data_dir, face.chip_image) == []

    with Store.open(data_dir, key=KEY) as store:  # another handle with the same key
        assert_same_bits(
            store.templates(MODEL).vectors, np.stack([f.descriptor for _, f in enrolled])
        )
        assert store.blobs.get(enrolled[0][0].sha256) == enrolled[0][0].data


def test_real_jpeg_is_sealed(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "examples" / "face_recognition" / "obama.jpg"
    if not src.is_file():
        pytest.skip(f"{src} not present")
    data = src.read_bytes()
    with PILImage.open(io.BytesIO(data)) as im:
        size = im.size
    rng = np.random.default_rng(2)
    with Store.open(tmp_path / "data", key=KEY) as store:
        image, _ = enrol(store, rng, "obama", image_record(data, "JPEG", size))
        raw = store.blobs.path(image.sha256).read_bytes()
        assert JPEG_MAGIC not in raw and b"JFIF" not in raw and b"Exif" not in raw
        assert data[1000:1100] not in raw
        assert store.blobs.get(image.sha256) == data


def test_wrong_key_and_missing_key_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data_dir = tmp_path / "data"
    with Store.open(data_dir, key=KEY) as store:
        image, _ = enrol(store, rng, "alice")
    with Store.open(data_dir, key=OTHER_KEY) as store:
        with pytest.raises(StoreError, match="wrong key or damaged data"):
            store.templates(MODEL)
        with pytest.raises(StoreError, match="wrong key or damaged data"):
            store.index(MODEL)
        with pytest.raises(StoreError, match="wrong key or damaged data"):
            store.blobs.get(image.sha256)
    # A store once opened with a key refuses handles without one, which would write new
    # images and templates in the clear.
    with pytest.raises(StoreError, match="FACETRAIL_ENCRYPTION_KEY") as e:
        Store.open(data_dir)
    assert "encrypted" in str(e.value)
    # Below the store, the blob files themselves refuse to be read or rewritten without it.
    blobs = BlobStore(data_dir / "blobs")
    with pytest.raises(StoreError, match="encryption_key_file"):
        blobs.get(image.sha256)
    with pytest.raises(StoreError, match="encrypted"):
        blobs.put(image.data)
    assert blobs.path(image.sha256).read_bytes().startswith(MAGIC)


def test_store_open_refuses_a_bad_key_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="32 bytes"):
        Store.open(tmp_path / "data", key=b"short")
    assert not (tmp_path / "data").exists()


def test_damage_is_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data_dir = tmp_path / "data"
    with Store.open(data_dir, key=KEY) as store:
        image, _ = enrol(store, rng, "alice")
        enrol(store, rng, "bob")
        path = store.blobs.path(image.sha256)
        good = path.read_bytes()
        for at in (0, 6, len(good) // 2, len(good) - 1):
            path.write_bytes(flip(good, at))
            with pytest.raises(StoreError, match=f"blob {image.sha256}"):
                store.blobs.get(image.sha256)
        path.write_bytes(good)
        assert store.blobs.get(image.sha256) == image.data

        vectors = raw_vectors(data_dir)
        tid, stored = max(vectors.items())
        for at in (0, 10, len(stored) // 2, len(stored) - 1):
            set_raw_vector(data_dir, tid, flip(stored, at))
            with pytest.raises(StoreError, match=f"template {tid} of model"):
                store.templates(MODEL)
        set_raw_vector(data_dir, tid, stored[:-1])  # truncated
        with pytest.raises(StoreError, match="wrong size"):
            store.templates(MODEL)
        set_raw_vector(data_dir, tid, stored)
        assert len(store.templates(MODEL)) == 2


def test_sealed_values_cannot_be_swapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data_dir = tmp_path / "data"
    with Store.open(data_dir, key=KEY) as store:
        a, _ = enrol(store, rng, "alice")
        b, _ = enrol(store, rng, "bob")
        store.add_reference(
            subject="carol",
            reference=None,
            image=image_record(png_bytes(rng)),
            faces=[face_record(rng)],
            model="other-model",
        )
        # One blob's sealed file under another's name.
        pa, pb = store.blobs.path(a.sha256), store.blobs.path(b.sha256)
        good_b = pb.read_bytes()
        pb.write_bytes(pa.read_bytes())
        with pytest.raises(StoreError, match="wrong key or damaged data"):
            store.blobs.get(b.sha256)
        pb.write_bytes(good_b)
        # A template sealed for one model read as another's.
        vectors = raw_vectors(data_dir)
        ids = sorted(vectors)
        set_raw_vector(data_dir, ids[0], vectors[ids[-1]])
        with pytest.raises(StoreError, match="wrong key or damaged data"):
            store.templates(MODEL)
        set_raw_vector(data_dir, ids[0], vectors[ids[0]])
        # A sealed template (same length as no blob, but sealed) put in a blob file.
        pb.write_bytes(vectors[ids[0]])
        with pytest.raises(StoreError, match="wrong key or damaged data"):
            store.blobs.get(b.sha256)


# --------------------------------------------------------------------------- migration


def test_plain_data_stays_readable_and_encrypt_existing_seals_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        assert not store.encrypted
        old = [enrol(store, rng, f"old {i}") for i in range(3)]
        with pytest.raises(InvalidInputError, match="no encryption key"):
            store.encrypt_existing()
    assert all(not is_sealed(v) for v in raw_vectors(data_dir).values())

    with Store.open(data_dir, key=KEY) as store:
        # Plain data from before the key reads as before; new data is sealed (a mixed table).
        assert_same_bits(store.templates(MODEL).vectors, np.stack([f.descriptor for _, f in old]))
        assert store.blobs.get(old[0][0].sha256) == old[0][0].data
        new = [enrol(store, rng, f"new {i}") for i in range(2)]
        # Enrolling an old image again (another subject) seals its existing plain file.
        everything = [*old, *new, enrol(store, rng, "old again", old[1][0])]
        assert sum(is_sealed(v) for v in raw_vectors(data_dir).values()) == 3
        assert_same_bits(
            store.templates(MODEL).vectors, np.stack([f.descriptor for _, f in everything])
        )
        plain_blobs = [sha for sha, raw in blob_files(store).items() if not raw.startswith(MAGIC)]
        assert len(plain_blobs) == 5  # two old images and three old chips

        counts = store.encrypt_existing()
        assert counts == {"blobs": 5, "templates": 3, "temporary_files": 0}
        assert store.encrypt_existing() == {"blobs": 0, "templates": 0, "temporary_files": 0}
        before = store.templates(MODEL).vectors

    blobs = BlobStore(data_dir / "blobs")
    assert len(list(blobs.iter_hashes())) == 11  # five images, six chips
    for sha in blobs.iter_hashes():
        raw = blobs.path(sha).read_bytes()
        assert raw.startswith(MAGIC), sha
        assert PNG_MAGIC not in raw
    assert all(is_sealed(v) for v in raw_vectors(data_dir).values())
    for image, face in old:
        assert found_anywhere(data_dir, image.data) == []
        assert found_anywhere(data_dir, face.descriptor.astype("<f4").tobytes()) == []

    with Store.open(data_dir, key=KEY) as store:
        after = store.templates(MODEL)
        assert_same_bits(after.vectors, before)
        assert_same_bits(after.vectors[:3], np.stack([f.descriptor for _, f in old]))
        for image, _ in old:
            assert store.blobs.get(image.sha256) == image.data
    with pytest.raises(StoreError, match="encrypted"):
        Store.open(data_dir)


def test_encrypt_existing_removes_temporary_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    with Store.open(tmp_path / "data", key=KEY) as store:
        image, _ = enrol(store, rng, "alice")
        leftover = store.blobs.path(image.sha256).parent / ".tmp-crashed"
        leftover.write_bytes(image.data)
        assert store.encrypt_existing() == {"blobs": 0, "templates": 0, "temporary_files": 1}
        assert not leftover.exists()


# --------------------------------------------------------------------------- settings


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACETRAIL_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("FACETRAIL_ENCRYPTION_KEY_FILE", raising=False)


def private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.usefixtures("no_env_key")
def test_settings_key_none_by_default(tmp_path: Path) -> None:
    assert Settings(data=tmp_path).encryption_key_bytes() is None


@pytest.mark.usefixtures("no_env_key")
@pytest.mark.parametrize(
    "content",
    [
        KEY,
        base64.b64encode(KEY),
        base64.b64encode(KEY) + b"\n",
        b"  " + base64.urlsafe_b64encode(OTHER_KEY) + b"\r\n",
        base64.urlsafe_b64encode(OTHER_KEY).rstrip(b"="),
    ],
)
def test_settings_key_from_file(tmp_path: Path, content: bytes) -> None:
    path = private_file(tmp_path / "key", content)
    key = Settings(data=tmp_path, encryption_key_file=path).encryption_key_bytes()
    assert key in (KEY, OTHER_KEY)


@pytest.mark.usefixtures("no_env_key")
def test_settings_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACETRAIL_ENCRYPTION_KEY", base64.b64encode(KEY).decode())
    settings = Settings(data=tmp_path)
    assert settings.encryption_key_bytes() == KEY
    assert base64.b64encode(KEY).decode() not in repr(settings)
    monkeypatch.setenv("FACETRAIL_ENCRYPTION_KEY", base64.urlsafe_b64encode(OTHER_KEY).decode())
    assert Settings(data=tmp_path).encryption_key_bytes() == OTHER_KEY


@pytest.mark.usefixtures("no_env_key")
def test_settings_refuses_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = private_file(tmp_path / "key", KEY)
    monkeypatch.setenv("FACETRAIL_ENCRYPTION_KEY", base64.b64encode(KEY).decode())
    with pytest.raises(InvalidInputError, match="both"):
        Settings(data=tmp_path, encryption_key_file=path).encryption_key_bytes()


@pytest.mark.usefixtures("no_env_key")
@pytest.mark.parametrize(
    "content",
    [
        b"",
        KEY[:16],
        KEY + b"x",
        base64.b64encode(KEY[:31]),
        base64.b64encode(KEY + b"x"),
        b"not a key at all, not base64 either!!",
    ],
)
def test_settings_refuses_wrong_length_file(tmp_path: Path, content: bytes) -> None:
    path = private_file(tmp_path / "key", content)
    with pytest.raises(InvalidInputError, match="32-byte key") as e:
        Settings(data=tmp_path, encryption_key_file=path).encryption_key_bytes()
    assert content.decode("latin-1") not in str(e.value) or not content


@pytest.mark.usefixtures("no_env_key")
def test_settings_refuses_wrong_length_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = base64.b64encode(KEY[:24]).decode()
    monkeypatch.setenv("FACETRAIL_ENCRYPTION_KEY", value)
    with pytest.raises(InvalidInputError, match="FACETRAIL_ENCRYPTION_KEY") as e:
        Settings(data=tmp_path).encryption_key_bytes()
    assert value not in str(e.value)


@pytest.mark.usefixtures("no_env_key")
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_settings_refuses_key_file_open_to_others(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "key", base64.b64encode(KEY))
    path.chmod(mode)
    with pytest.raises(InvalidInputError, match="chmod 600") as e:
        Settings(data=tmp_path, encryption_key_file=path).encryption_key_bytes()
    assert f"{mode:04o}" in str(e.value)
    assert base64.b64encode(KEY).decode() not in str(e.value)
    path.chmod(0o400)
    assert Settings(data=tmp_path, encryption_key_file=path).encryption_key_bytes() == KEY


@pytest.mark.usefixtures("no_env_key")
def test_settings_refuses_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read encryption key file"):
        Settings(data=tmp_path, encryption_key_file=tmp_path / "missing").encryption_key_bytes()
    with pytest.raises(InvalidInputError, match="not a regular file"):
        Settings(data=tmp_path, encryption_key_file=tmp_path).encryption_key_bytes()


def test_blob_plaintext_that_looks_sealed(tmp_path: Path) -> None:
    """Plain bytes that happen to start with the sealed header are still told apart."""
    data = MAGIC + bytes(range(64))
    plain = BlobStore(tmp_path / "blobs")
    sha = plain.put(data)
    assert plain.get(sha) == data
    sealed = BlobStore(tmp_path / "blobs", cipher=Cipher(KEY))
    assert sealed.get(sha) == data  # written before the key: read as is
    assert sealed.put(data) == sha  # and resealed
    assert sealed.path(sha).read_bytes() != data
    assert sealed.get(sha) == data
    assert sealed.seal_existing(sha) is False


# --------------------------------------------------------------------------- service


def test_service_seals_gallery_and_probe_files(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a key in the environment, every file the service keeps is sealed: reference
    images, crops, a search's probe file and its face crop; search still finds the subject."""
    monkeypatch.setenv("FACETRAIL_ENCRYPTION_KEY", base64.b64encode(KEY).decode())
    images = shared_data / "examples/face_recognition"
    probe = images / "knn_examples/test/obama1.jpg"
    team = make_team(tmp_path / "data")
    with team.open("admin") as admin:
        admin.enrol([images / "knn_examples/train/obama"], subject="obama")
    with team.open("investigator") as investigator:
        report = investigator.search([probe], case=CASE)
        assert report.probes[0].faces[0].candidates[0].subject == "obama"
        files = blob_files(investigator.store)
    assert len(files) == 2 + 2 + 2  # two images and their crops, the probe and its crop
    assert all(raw.startswith(MAGIC) for raw in files.values())
    assert found_anywhere(team.data, probe.read_bytes()[:4096]) == []
    monkeypatch.delenv("FACETRAIL_ENCRYPTION_KEY")
    with pytest.raises(StoreError, match="encrypted"):
        team.open("investigator")
