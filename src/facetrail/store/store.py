"""The gallery store: SQL metadata, content-addressed blobs and the template index.

One `Store` is one handle on a data directory. Several handles, in one process or many, can
share a directory: SQLite runs in WAL mode, every write transaction starts with
`BEGIN IMMEDIATE` so writers queue instead of failing, and a `generation` counter that
changes with every change to templates tells each handle when its in-memory index is stale.

The metadata can live in PostgreSQL instead (`Store.open(data, url)`), shared by many
processes; blobs stay files in the data directory, which those processes share too. There a
write transaction runs at READ COMMITTED and starts by locking the `generation` row
(`SELECT ... FOR UPDATE`), so writers queue exactly as they do on SQLite; read transactions
run at REPEATABLE READ, one snapshot like a SQLite read transaction; migrations run under an
advisory lock, and appending to the audit trail takes one too.

The store knows nothing about users, roles or policy; the service layer decides what may be
done and calls these methods to do it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import (
    URL,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from facetrail.errors import InvalidInputError, NotFoundError, StoreError
from facetrail.store import audit
from facetrail.store.audit import AuditRecord, ChainReport
from facetrail.store.backends import IndexConfig, build_index, erase_elsewhere, open_index
from facetrail.store.blobs import BlobStore, check_sha256
from facetrail.store.crypto import KEY_HINT, OVERHEAD, Cipher, check_key, not_configured
from facetrail.store.index import ExactIndex, TemplateIndex
from facetrail.store.models import (
    GENERATION_KEY,
    Face,
    Image,
    StoreState,
    Subject,
    Template,
    utcnow,
)
from facetrail.store.records import (
    AddedReference,
    ErasureReport,
    FaceDetail,
    FaceRecord,
    ImageDetail,
    ImageRecord,
    NewReference,
    SubjectDetail,
    SubjectSummary,
    TemplateImport,
    TemplateMatrix,
    TemplateSet,
)

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DB_NAME = "facetrail.db"
BLOBS_DIR = "blobs"
LOCK_NAME = ".lock"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Chosen pragmas. synchronous=FULL rather than NORMAL: in WAL mode NORMAL can lose the last
# committed transactions on power failure, and an acknowledged erasure or audit event must
# not come back or vanish. The price is one fsync of the WAL per commit.
SQLITE_PRAGMAS: tuple[tuple[str, str], ...] = (
    ("busy_timeout", "60000"),
    ("foreign_keys", "ON"),
    ("secure_delete", "ON"),
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
)

# Keys of PostgreSQL advisory locks (one 64-bit number each, any database-wide constant).
PG_MIGRATION_LOCK = 0x6661_6365_7472_0001  # held while the schema is migrated
PG_AUDIT_LOCK = audit.PG_AUDIT_LOCK

_WRITE_OPTION = "facetrail_write"
_INFO_OWNER = "facetrail.store"
_INFO_WRITE = "facetrail.write"
_INFO_HOOKS = "facetrail.after_commit"
ENCRYPTED_KEY = "encrypted"  # store_state: 1 once a key has been used on this store
_IN_CHUNK = 500  # bound on bound parameters per IN (...) query

# Every column that names a blob by its sha256. A blob none of them names is garbage that
# `sweep_blobs` deletes; layers above that keep blobs of their own (probe media) add their
# columns with `register_blob_column`.
BLOB_REFERENCES: list[Any] = [Image.sha256, Face.chip_sha256]


def register_blob_column(column: Any) -> None:
    """Declare another column whose values are blob hashes, so sweeps keep those blobs."""
    if not any(c is column for c in BLOB_REFERENCES):
        BLOB_REFERENCES.append(column)


_MAX_NAME = 200
_MAX_REFERENCE = 200
_MAX_MODEL = 100
_MAX_IMAGE_NAME = 255
_MAX_FORMAT = 16


# --------------------------------------------------------------------------- SQLite hooks


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Take BEGIN away from the sqlite3 driver and set the pragmas on every new connection."""
    # The driver's legacy transaction control would BEGIN (deferred) on its own; SQLAlchemy's
    # begin hook below emits the BEGIN instead (SQLAlchemy's documented pysqlite recipe).
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    try:
        for name, value in SQLITE_PRAGMAS:
            row = cur.execute(f"PRAGMA {name}={value}").fetchone()
            if name == "journal_mode" and (row is None or str(row[0]).lower() != "wal"):
                raise StoreError("the database cannot use write-ahead logging (journal_mode=WAL)")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """Emit BEGIN IMMEDIATE for write transactions so writers wait for the lock up front.

    A deferred transaction that reads and then writes can fail with SQLITE_BUSY when another
    process wrote in between, and busy_timeout cannot help it; IMMEDIATE takes the write lock
    at BEGIN, where the busy handler does wait.
    """
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on `path` across processes (flock), held for the `with` body."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:  # pragma: no cover - Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:  # pragma: no cover - Windows
                import msvcrt

                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


def database_url(url: str | URL) -> URL:
    """`url` as SQLAlchemy understands it; PostgreSQL without a driver means psycopg (v3).

    `postgresql://...` and `postgres://...` would otherwise ask for psycopg2, which facetrail
    does not install. StoreError if the URL cannot be parsed.
    """
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        # Not the URL itself in the message: it may hold a password.
        raise StoreError(
            "unusable database URL (expected postgresql://user:password@host:port/database)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code, pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


# --------------------------------------------------------------------------- validation


def _check_text(value: object, what: str, max_len: int, *, strip_ok: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty string")
    if len(value) > max_len:
        raise InvalidInputError(f"{what} is longer than {max_len} characters")
    if not strip_ok and value != value.strip():
        raise InvalidInputError(f"{what} must not start or end with whitespace")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInputError(f"{what} must not contain control characters")
    return value


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidInputError(f"{what} must be a number")
    f = float(value)
    if not math.isfinite(f):
        raise InvalidInputError(f"{what} must be finite")
    return f


@dataclass(frozen=True, slots=True)
class _PreparedFace:
    box: tuple[float, float, float, float]
    landmarks: list[list[float]]
    detector_score: float
    quality: float
    chip_image: bytes | None
    vector: np.ndarray  # float32 (dim,)


def _prepare_face(face: FaceRecord) -> _PreparedFace:
    if not isinstance(face, FaceRecord):
        raise InvalidInputError("faces must be FaceRecord values")
    if len(face.box) != 4:
        raise InvalidInputError("a face box is (x1, y1, x2, y2)")
    x1, y1, x2, y2 = (_finite(v, "face box") for v in face.box)
    landmarks: list[list[float]] = []
    for point in face.landmarks:
        if len(point) != 2:
            raise InvalidInputError("a landmark is an (x, y) pair")
        landmarks.append([_finite(point[0], "landmark"), _finite(point[1], "landmark")])
    chip = face.chip_image
    if chip is not None and not isinstance(chip, bytes | bytearray):
        raise InvalidInputError("a face chip must be image bytes or None")
    d = face.descriptor
    if not isinstance(d, np.ndarray) or d.ndim != 1 or d.size == 0:
        raise InvalidInputError("a descriptor must be a non-empty 1-d numpy array")
    if d.dtype != np.float32:
        raise InvalidInputError("a descriptor must be float32 (it is stored exactly as given)")
    if not np.isfinite(d).all():
        raise InvalidInputError("a descriptor must be finite")
    return _PreparedFace(
        box=(x1, y1, x2, y2),
        landmarks=landmarks,
        detector_score=_finite(face.detector_score, "detector score"),
        quality=_finite(face.quality, "quality"),
        chip_image=bytes(chip) if chip is not None else None,
        vector=d,
    )


def _check_image(image: ImageRecord) -> None:
    if not isinstance(image, ImageRecord):
        raise InvalidInputError("image must be an ImageRecord")
    check_sha256(image.sha256)
    if not isinstance(image.data, bytes | bytearray) or not image.data:
        raise InvalidInputError("image data must be non-empty bytes")
    if hashlib.sha256(image.data).hexdigest() != image.sha256:
        raise InvalidInputError("image sha256 does not match its bytes")
    _check_text(image.name, "image name", _MAX_IMAGE_NAME, strip_ok=True)
    _check_text(image.format, "image format", _MAX_FORMAT)
    for what, v in (("width", image.width), ("height", image.height)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
            raise InvalidInputError(f"image {what} must be a positive integer")


def _insert_ids(
    s: Session, model: type[Subject | Image | Face | Template], rows: list[dict]
) -> list[int]:
    """Insert rows in one statement and return their new ids, in the rows' order."""
    if not rows:
        return []
    stmt = insert(model).returning(model.id, sort_by_parameter_order=True)
    return [int(row[0]) for row in s.execute(stmt, rows)]


def _to_le_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


# --------------------------------------------------------------------------- the store


@dataclass(slots=True)
class _CachedIndex:
    generation: int
    index: TemplateIndex


class Store:
    """A handle on one data directory; see the module docstring. Use `Store.open`."""

    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        *,
        key: bytes | None = None,
        index: IndexConfig | None = None,
    ) -> None:
        """Wrap an engine whose schema is already migrated (use `open` instead).

        With a 32-byte `key`, blobs and templates are written sealed (AES-256-GCM) and sealed
        ones are opened on read; plain ones from before a key was set stay readable.
        `index` selects the template index backend (default: exact, in memory).
        """
        self.data_dir = data_dir
        self._cipher = Cipher(key) if key is not None else None
        self.blobs = BlobStore(data_dir / BLOBS_DIR, cipher=self._cipher)
        self._engine: Engine | None = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_sessions = sessionmaker(
            bind=engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        # A SQLite read transaction sees one snapshot; REPEATABLE READ gives PostgreSQL's
        # read transactions the same (READ COMMITTED would re-read between statements, and a
        # generation read with templates from after it would mislabel a cached index).
        reads = (
            engine if self._sqlite else engine.execution_options(isolation_level="REPEATABLE READ")
        )
        self._read_sessions = sessionmaker(bind=reads, expire_on_commit=False)
        self._index_lock = threading.Lock()
        self._indexes: dict[str, _CachedIndex] = {}
        self.index_config = index or IndexConfig()
        self._local = threading.local()

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def open(
        cls,
        data_dir: Path,
        url: str | None = None,
        *,
        key: bytes | None = None,
        index: IndexConfig | None = None,
    ) -> Store:
        """Open (creating and migrating if needed) the store in `data_dir`.

        `url` selects another database (PostgreSQL: `postgresql://user:password@host/db`,
        through psycopg); blobs and the lock file stay in `data_dir`. Migration runs under an
        exclusive file lock (and on PostgreSQL an advisory lock, for processes on other
        machines) so that two processes opening a new store at once do not both try to
        create the schema. `key` is the encryption key at rest (see `__init__`), checked
        before anything is created; `index` the template index backend.
        """
        if key is not None:
            key = check_key(key)
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create data directory {data_dir}: {e.strerror}") from None
        if url is None:
            db_path = data_dir / DB_NAME
            # Create the file private before SQLite does; its -wal and -shm inherit the mode.
            os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
            db_url = URL.create("sqlite+pysqlite", database=str(db_path))
        else:
            db_url = database_url(url)
        options: dict[str, Any] = {}
        if db_url.get_backend_name() == "postgresql":
            # Writers queue on a row lock and then must see what the writer before them
            # committed: READ COMMITTED, whatever the server's default. Long-lived service
            # processes outlive connections (server restarts): test each before use.
            options = {"isolation_level": "READ COMMITTED", "pool_pre_ping": True}
        try:
            engine = create_engine(db_url, **options)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as e:
            raise StoreError(f"unusable database URL: {e}") from None
        except ImportError as e:
            hint = " (pip install 'facetrail[postgres]')" if "psycopg" in str(e) else ""
            raise StoreError(f"the database URL needs a driver: {e}{hint}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        try:
            with _file_lock(data_dir / LOCK_NAME):
                cls._migrate(engine)
                cls._check_encryption(engine, key)
        except BaseException:
            engine.dispose()
            raise
        return cls(data_dir, engine, key=key, index=index)

    @staticmethod
    def _check_encryption(engine: Engine, key: bytes | None) -> None:
        """Once a key has been used here, refuse handles without one: they would write new
        images and templates in the clear into an encrypted store."""
        with engine.execution_options(**{_WRITE_OPTION: True}).begin() as conn:
            if engine.dialect.name != "sqlite":  # the write lock, as in `session`
                conn.execute(
                    select(StoreState.value)
                    .where(StoreState.key == GENERATION_KEY)
                    .with_for_update()
                )
            marked = conn.execute(
                select(StoreState.value).where(StoreState.key == ENCRYPTED_KEY)
            ).scalar()
            if key is None and marked:
                raise StoreError(
                    f"this data directory is encrypted at rest: configure its key ({KEY_HINT})"
                )
            if key is not None and not marked:
                conn.execute(insert(StoreState).values(key=ENCRYPTED_KEY, value=1))

    @staticmethod
    def _migrate(engine: Engine) -> None:
        """Bring the schema to the newest revision inside one transaction."""
        sqlite = engine.dialect.name == "sqlite"
        try:
            with engine.execution_options(**{_WRITE_OPTION: True}).connect() as conn:
                driver = conn.connection.driver_connection
                if sqlite:
                    # Alembic's batch mode rebuilds tables; with foreign keys on, dropping
                    # the old table would cascade. Off for the migration, checked after.
                    driver.execute("PRAGMA foreign_keys=OFF")
                try:
                    with conn.begin():
                        if engine.dialect.name == "postgresql":  # released at the end
                            conn.execute(select(func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
                        command.upgrade(alembic_config(conn), "head")
                        if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                            raise StoreError("migration left broken foreign keys; rolled back")
                finally:
                    if sqlite:
                        driver.execute("PRAGMA foreign_keys=ON")
        except CommandError as e:
            raise StoreError(
                f"the database schema is not one this facetrail knows (newer version?): {e}"
            ) from None
        except sa_exc.OperationalError as e:
            raise StoreError(f"cannot open the database: {e.orig}") from None
        except sa_exc.DatabaseError as e:
            raise StoreError(
                f"the database is damaged or not a facetrail database: {e.orig}"
            ) from None

    def close(self) -> None:
        """Release connections and drop cached indexes; the handle is unusable afterwards."""
        with self._index_lock:
            self._indexes.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for the service layer's own tables and for tests)."""
        if self._engine is None:
            raise StoreError("the store is closed")
        return self._engine

    # ----------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception.

        A write session holds the database's write lock from its start (BEGIN IMMEDIATE on
        SQLite, a row lock on `store_state` elsewhere), so writers run one at a time and a
        read-then-write sequence inside it cannot be invalidated. Pass it to the write
        methods as `session=` to make them part of a larger transaction (an action and its
        audit event). Work that must follow the commit (index updates, blob deletion) runs
        when this context exits successfully.
        """
        factory = self._write_sessions if write else self._read_sessions
        self.engine  # noqa: B018 - raises if closed
        if write and getattr(self._local, "writing", False):
            # The inner BEGIN IMMEDIATE would wait on the outer one for busy_timeout.
            raise StoreError(
                "a write transaction is already open in this thread; pass it as session="
            )
        s = factory()
        s.info[_INFO_OWNER] = self
        s.info[_INFO_WRITE] = write
        s.info[_INFO_HOOKS] = []
        hooks: list[Callable[[], None]] = s.info[_INFO_HOOKS]
        if write:
            self._local.writing = True
        try:
            if write:
                self._lock_writes(s)
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()
            if write:
                self._local.writing = False
        self._run_hooks(hooks)  # reached only after a successful commit

    @staticmethod
    def _run_hooks(hooks: list[Callable[[], None]]) -> None:
        error: BaseException | None = None
        for hook in hooks:
            try:
                hook()
            except BaseException as e:  # run them all, report the first failure
                error = error or e
        if error is not None:
            raise error

    def _lock_writes(self, s: Session) -> None:
        if self._sqlite:
            s.connection()  # autobegin now: BEGIN IMMEDIATE takes the write lock
        else:
            s.execute(
                select(StoreState.value).where(StoreState.key == GENERATION_KEY).with_for_update()
            )

    @contextlib.contextmanager
    def _write(self, session: Session | None) -> Iterator[Session]:
        if session is None:
            with self.session(write=True) as s:
                yield s
        else:
            if session.info.get(_INFO_OWNER) is not self or not session.info.get(_INFO_WRITE):
                raise InvalidInputError("pass a session from this store's session(write=True)")
            yield session

    @staticmethod
    def _after_commit(s: Session, hook: Callable[[], None]) -> None:
        s.info[_INFO_HOOKS].append(hook)

    @staticmethod
    def _read_generation(s: Session) -> int:
        value = s.scalar(select(StoreState.value).where(StoreState.key == GENERATION_KEY))
        if value is None:
            raise StoreError("the database has no generation counter (damaged?)")
        return int(value)

    def _bump_generation(self, s: Session) -> tuple[int, int]:
        """Advance the generation in the current transaction; returns (old, new)."""
        result = s.execute(
            update(StoreState)
            .where(StoreState.key == GENERATION_KEY)
            .values(value=StoreState.value + 1)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StoreError("the database has no generation counter (damaged?)")
        new = self._read_generation(s)
        return new - 1, new

    # ----------------------------------------------------------------- writes

    def add_reference(
        self,
        *,
        subject: str,
        reference: str | None,
        image: ImageRecord,
        faces: Sequence[FaceRecord],
        model: str,
        session: Session | None = None,
    ) -> AddedReference:
        """Enrol one reference image of `subject` with its faces and their templates.

        Gets or creates the subject by name. The same image bytes enrolled again for the same
        subject change nothing and come back with `duplicate=True`. Blobs are written inside
        the write transaction, before it commits: a failed transaction can leave blobs but
        never rows pointing at missing blobs, and `sweep_blobs` removes the leftovers.
        """
        request = NewReference(subject, reference, image, tuple(faces))
        (outcome,) = self.add_references([request], model=model, session=session)
        if isinstance(outcome, InvalidInputError):
            raise outcome
        return outcome

    def add_references(
        self, requests: Sequence[NewReference], *, model: str, session: Session | None = None
    ) -> list[AddedReference | InvalidInputError]:
        """Enrol many references in one transaction, with bulk inserts.

        Each request comes back as its `AddedReference`, or as the `InvalidInputError` that
        refused it alone (a bad record, a reference number contradicting its subject's, a
        descriptor length unlike the model's); the others are still written. Errors of the
        store itself (a full disk) abort the whole transaction.
        """
        _check_text(model, "model", _MAX_MODEL)
        outcomes: list[AddedReference | InvalidInputError | None] = [None] * len(requests)
        valid: list[tuple[int, NewReference, list[_PreparedFace], int]] = []
        for i, req in enumerate(requests):
            try:
                _check_text(req.subject, "subject name", _MAX_NAME)
                if req.reference is not None:
                    _check_text(req.reference, "reference number", _MAX_REFERENCE)
                _check_image(req.image)
                prepared = [_prepare_face(f) for f in req.faces]
                dims = {p.vector.shape[0] for p in prepared}
                if len(dims) > 1:
                    raise InvalidInputError("descriptors of one reference must have one length")
                valid.append((i, req, prepared, dims.pop() if dims else 0))
            except InvalidInputError as e:
                outcomes[i] = e

        with self._write(session) as s:
            model_dim = s.scalar(select(Template.dim).where(Template.model == model).limit(1))
            subjects = self._subjects_by_name(s, {req.subject for _, req, _, _ in valid})
            new_subjects: dict[str, str | None] = {}
            accepted: list[tuple[int, NewReference, list[_PreparedFace], int]] = []
            for i, req, prepared, dim in valid:
                known = subjects.get(req.subject)
                stored_ref = known[1] if known else new_subjects.get(req.subject)
                if dim and model_dim is not None and dim != model_dim:
                    outcomes[i] = InvalidInputError(
                        f"model {model!r} has {model_dim}-d templates, not {dim}-d"
                    )
                elif req.reference and stored_ref and stored_ref != req.reference:
                    outcomes[i] = InvalidInputError(
                        f"subject {req.subject!r} already has a different reference number"
                    )
                else:
                    if model_dim is None and dim:
                        model_dim = dim  # the batch's first template fixes the model's length
                    if known is None:
                        new_subjects[req.subject] = stored_ref or req.reference
                    elif known[1] is None and req.reference:
                        subjects[req.subject] = (known[0], req.reference)
                        s.execute(
                            update(Subject)
                            .where(Subject.id == known[0])
                            .values(reference=req.reference)
                        )
                    accepted.append((i, req, prepared, dim))
            created = set(new_subjects)
            if new_subjects:
                rows = [
                    {"name": n, "reference": r, "created_at": utcnow()}
                    for n, r in new_subjects.items()
                ]
                ids = _insert_ids(s, Subject, rows)
                for (name, ref), sid in zip(new_subjects.items(), ids, strict=True):
                    subjects[name] = (sid, ref)

            enrolled = self._enrolled_images(s, {req.image.sha256 for _, req, _, _ in accepted})
            first_in_batch: dict[tuple[int, str], int] = {}  # (subject, image) -> request
            fresh: list[tuple[int, NewReference, list[_PreparedFace], int, int]] = []
            for i, req, prepared, dim in accepted:
                key = (subjects[req.subject][0], req.image.sha256)
                if key in enrolled:
                    outcomes[i] = self._duplicate(s, req.subject, key[0], enrolled[key])
                elif key not in first_in_batch:
                    first_in_batch[key] = i
                    fresh.append((i, req, prepared, dim, key[0]))
            for i, outcome in self._insert_references(s, fresh, model, created):
                outcomes[i] = outcome
            for i, req, _, _ in accepted:  # repeats of an image earlier in this batch
                if outcomes[i] is None:
                    key = (subjects[req.subject][0], req.image.sha256)
                    first = outcomes[first_in_batch[key]]
                    assert isinstance(first, AddedReference)
                    outcomes[i] = self._duplicate(s, req.subject, key[0], first.image_id)
        if any(o is None for o in outcomes):  # pragma: no cover - every branch above sets one
            raise StoreError("a reference was neither written nor refused")
        return outcomes  # type: ignore[return-value]

    def _insert_references(
        self,
        s: Session,
        fresh: list[tuple[int, NewReference, list[_PreparedFace], int, int]],
        model: str,
        created: set[str],
    ) -> list[tuple[int, AddedReference]]:
        if not fresh:
            return []
        try:
            for _, req, _, _, _ in fresh:
                self.blobs.put(bytes(req.image.data), expect=req.image.sha256)
            chips = [
                [
                    self.blobs.put(p.chip_image) if p.chip_image is not None else None
                    for p in prepared
                ]
                for _, _, prepared, _, _ in fresh
            ]
        except OSError as e:
            raise StoreError(f"cannot write to the blob store: {e.strerror}") from None
        now = utcnow()
        image_ids = _insert_ids(
            s,
            Image,
            [
                {
                    "subject_id": sid,
                    "sha256": req.image.sha256,
                    "name": req.image.name,
                    "format": req.image.format,
                    "width": int(req.image.width),
                    "height": int(req.image.height),
                    "created_at": now,
                }
                for _, req, _, _, sid in fresh
            ],
        )
        face_rows = [
            {
                "image_id": image_id,
                "x1": p.box[0],
                "y1": p.box[1],
                "x2": p.box[2],
                "y2": p.box[3],
                "landmarks": p.landmarks,
                "detector_score": p.detector_score,
                "quality": p.quality,
                "chip_sha256": chip,
            }
            for (_, _, prepared, _, _), image_id, shas in zip(fresh, image_ids, chips, strict=True)
            for p, chip in zip(prepared, shas, strict=True)
        ]
        face_ids = _insert_ids(s, Face, face_rows)
        template_rows, vectors, per_ref = [], [], []
        at = 0
        for _, _, prepared, dim, sid in fresh:
            ids = face_ids[at : at + len(prepared)]
            at += len(prepared)
            per_ref.append(ids)
            for fid, p in zip(ids, prepared, strict=True):
                template_rows.append(
                    {
                        "face_id": fid,
                        "subject_id": sid,
                        "model": model,
                        "dim": dim,
                        "vector": self._seal_template(_to_le_bytes(p.vector), model),
                    }
                )
                vectors.append(p.vector)
        template_ids = _insert_ids(s, Template, template_rows)
        if template_ids:
            old, generation = self._bump_generation(s)
            ids_array = np.asarray(template_ids, dtype=np.int64)
            matrix = np.stack(vectors).astype(np.float32, copy=False)
            self._after_commit(
                s, lambda: self._index_changed(old, generation, model, (ids_array, matrix), None)
            )
        else:
            generation = self._read_generation(s)
        out, at = [], 0
        for (i, req, _, _, sid), image_id, ids in zip(fresh, image_ids, per_ref, strict=True):
            tids = tuple(template_ids[at : at + len(ids)])
            at += len(ids)
            out.append(
                (
                    i,
                    AddedReference(
                        subject_id=sid,
                        subject=req.subject,
                        image_id=image_id,
                        face_ids=tuple(ids),
                        template_ids=tids,
                        duplicate=False,
                        created_subject=req.subject in created,
                        generation=generation,
                    ),
                )
            )
            created.discard(req.subject)  # only the first image of a new subject created it
        return out

    def _subjects_by_name(self, s: Session, names: set[str]) -> dict[str, tuple[int, str | None]]:
        found: dict[str, tuple[int, str | None]] = {}
        wanted = sorted(names)
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            stmt = select(Subject.id, Subject.name, Subject.reference).where(
                Subject.name.in_(chunk)
            )
            found.update((name, (int(sid), ref)) for sid, name, ref in s.execute(stmt))
        return found

    def _enrolled_images(self, s: Session, shas: set[str]) -> dict[tuple[int, str], int]:
        """(subject id, sha256) -> image id, for images with these hashes already stored."""
        found: dict[tuple[int, str], int] = {}
        wanted = sorted(shas)
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            stmt = select(Image.id, Image.subject_id, Image.sha256).where(Image.sha256.in_(chunk))
            found.update(((int(sid), sha), int(iid)) for iid, sid, sha in s.execute(stmt))
        return found

    def _duplicate(self, s: Session, subject: str, sid: int, image_id: int) -> AddedReference:
        """The outcome of enrolling an image that is already enrolled for this subject."""
        face_ids = tuple(
            s.scalars(select(Face.id).where(Face.image_id == image_id).order_by(Face.id))
        )
        template_ids = tuple(
            s.scalars(
                select(Template.id)
                .join(Face, Template.face_id == Face.id)
                .where(Face.image_id == image_id)
                .order_by(Template.id)
            )
        )
        return AddedReference(
            subject_id=sid,
            subject=subject,
            image_id=image_id,
            face_ids=face_ids,
            template_ids=template_ids,
            duplicate=True,
            created_subject=False,
            generation=self._read_generation(s),
        )

    def erase_subject(self, name: str, *, session: Session | None = None) -> ErasureReport:
        """Erase a subject completely: rows, blobs, index entries, and WAL copies.

        The rows go in one transaction. After it commits, every blob no longer referenced is
        deleted and, on SQLite, the WAL is checkpointed and truncated so the deleted bytes do
        not linger there (secure_delete has already zeroed them in the database pages). Inside
        a caller's `session` the post-commit part runs when that session commits, and the
        report's `blobs` and `wal_checkpointed` are None. If the post-commit part fails, the
        rows are already gone and the error says so; `sweep_blobs` finishes the job.
        """
        if not isinstance(name, str):
            raise InvalidInputError("subject name must be a string")
        with self._write(session) as s:
            subj = s.scalar(select(Subject).where(Subject.name == name))
            if subj is None:
                raise NotFoundError(f"no subject named {name!r}")
            sid = subj.id
            image_ids = select(Image.id).where(Image.subject_id == sid)
            face_ids = select(Face.id).where(Face.image_id.in_(image_ids))
            n_images = s.scalar(
                select(func.count()).select_from(Image).where(Image.subject_id == sid)
            )
            n_faces = s.scalar(select(func.count()).select_from(Face).where(Face.id.in_(face_ids)))
            template_ids = np.fromiter(
                s.scalars(
                    select(Template.id).where(
                        or_(Template.subject_id == sid, Template.face_id.in_(face_ids))
                    )
                ),
                dtype=np.int64,
            )
            s.execute(delete(Subject).where(Subject.id == sid))
            left = s.scalar(select(func.count()).select_from(Image).where(Image.subject_id == sid))
            left_t = s.scalar(
                select(func.count()).select_from(Template).where(Template.subject_id == sid)
            )
            if left or left_t:
                raise StoreError("deleting the subject did not cascade (foreign keys off?)")
            if template_ids.size:
                old, generation = self._bump_generation(s)
                self._after_commit(
                    s, lambda: self._index_changed(old, generation, None, None, template_ids)
                )
            else:
                generation = self._read_generation(s)
            report = ErasureReport(
                subject_id=sid,
                subject=name,
                images=int(n_images or 0),
                faces=int(n_faces or 0),
                templates=int(template_ids.size),
                blobs=None,
                wal_checkpointed=None,
                generation=generation,
            )
            if session is not None:
                self._after_commit(s, self._sweep_and_checkpoint)
                return report
        blobs = self.sweep_blobs()
        return ErasureReport(
            subject_id=report.subject_id,
            subject=report.subject,
            images=report.images,
            faces=report.faces,
            templates=report.templates,
            blobs=blobs,
            wal_checkpointed=self._checkpoint(),
            generation=report.generation,
        )

    def _sweep_and_checkpoint(self) -> None:
        self.sweep_blobs()
        self._checkpoint()

    def sweep_blobs(self) -> int:
        """Delete every blob no image or face refers to; returns how many were deleted.

        Runs under the write lock: blob writes only happen inside write transactions, so
        every unreferenced blob seen here is garbage (an erased record, or a crash leftover),
        never one an uncommitted enrolment is about to use. Temporary files from crashed
        writes go too.
        """
        removed = 0
        with self.session(write=True) as s:
            try:
                self.blobs.remove_temporary_files()
                batch: list[str] = []
                for sha in self.blobs.iter_hashes():
                    batch.append(sha)
                    if len(batch) >= _IN_CHUNK:
                        removed += self._delete_unreferenced(s, batch)
                        batch = []
                if batch:
                    removed += self._delete_unreferenced(s, batch)
            except OSError as e:
                raise StoreError(f"cannot clean the blob store: {e.strerror}") from None
        self._local.swept = self.blobs_swept() + removed
        return removed

    def blobs_swept(self) -> int:
        """How many blob files this thread's sweeps have deleted so far, the sweeps run after
        a caller's commit (`erase_subject(session=...)`) included; take the difference around
        the work whose deletions are to be reported."""
        return int(getattr(self._local, "swept", 0))

    def _delete_unreferenced(self, s: Session, batch: list[str]) -> int:
        used: set[str] = set()
        for column in BLOB_REFERENCES:
            used.update(s.scalars(select(column).where(column.in_(batch))))
        return sum(1 for sha in batch if sha not in used and self.blobs.delete(sha))

    def _checkpoint(self) -> bool | None:
        """Copy the WAL into the database and truncate it to zero bytes (SQLite only).

        Returns False if readers elsewhere kept it from completing within busy_timeout.
        """
        if not self._sqlite:
            return None
        raw = self.engine.raw_connection()
        try:
            row = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            raw.close()
        return row is not None and row[0] == 0

    # ----------------------------------------------------------------- reads

    def generation(self) -> int:
        """The counter that changes with every change to templates."""
        with self.session(write=False) as s:
            return self._read_generation(s)

    def subjects(self) -> list[SubjectSummary]:
        """All subjects with their image and template counts, ordered by name."""
        n_images = (
            select(func.count(Image.id)).where(Image.subject_id == Subject.id).scalar_subquery()
        )
        n_templates = (
            select(func.count(Template.id))
            .where(Template.subject_id == Subject.id)
            .scalar_subquery()
        )
        stmt = select(
            Subject.id, Subject.name, Subject.reference, Subject.created_at, n_images, n_templates
        ).order_by(Subject.name)
        with self.session(write=False) as s:
            return [
                SubjectSummary(
                    id=r[0],
                    name=r[1],
                    reference=r[2],
                    created_at=r[3],
                    images=int(r[4]),
                    templates=int(r[5]),
                )
                for r in s.execute(stmt)
            ]

    def subject(self, name: str) -> SubjectDetail:
        """One subject with its images and faces; NotFoundError if there is none."""
        with self.session(write=False) as s:
            subj = s.scalar(select(Subject).where(Subject.name == name))
            if subj is None:
                raise NotFoundError(f"no subject named {name!r}")
            images = list(
                s.scalars(select(Image).where(Image.subject_id == subj.id).order_by(Image.id))
            )
            faces = list(
                s.scalars(
                    select(Face)
                    .join(Image, Face.image_id == Image.id)
                    .where(Image.subject_id == subj.id)
                    .order_by(Face.id)
                )
            )
            counts: dict[int, int] = {
                int(face_id): int(n)
                for face_id, n in s.execute(
                    select(Template.face_id, func.count(Template.id))
                    .where(Template.subject_id == subj.id)
                    .group_by(Template.face_id)
                )
            }
        by_image: dict[int, list[FaceDetail]] = {}
        for f in faces:
            by_image.setdefault(f.image_id, []).append(
                FaceDetail(
                    id=f.id,
                    box=(f.x1, f.y1, f.x2, f.y2),
                    landmarks=tuple((float(p[0]), float(p[1])) for p in f.landmarks),
                    detector_score=f.detector_score,
                    quality=f.quality,
                    chip_sha256=f.chip_sha256,
                    templates=int(counts.get(f.id, 0)),
                )
            )
        return SubjectDetail(
            id=subj.id,
            name=subj.name,
            reference=subj.reference,
            created_at=subj.created_at,
            images=tuple(
                ImageDetail(
                    id=i.id,
                    sha256=i.sha256,
                    name=i.name,
                    format=i.format,
                    width=i.width,
                    height=i.height,
                    created_at=i.created_at,
                    faces=tuple(by_image.get(i.id, ())),
                )
                for i in images
            ),
        )

    def templates(self, model: str) -> TemplateMatrix:
        """Every template of `model`, in id order, with exactly the stored float32 values."""
        with self.session(write=False) as s:
            return self._read_templates(s, model)

    def _read_templates(self, s: Session, model: str) -> TemplateMatrix:
        rows = s.execute(
            select(Template.id, Template.subject_id, Template.dim, Template.vector)
            .where(Template.model == model)
            .order_by(Template.id)
        ).all()
        n = len(rows)
        if n == 0:
            return TemplateMatrix(
                model=model,
                dim=0,
                template_ids=np.empty(0, dtype=np.int64),
                subject_ids=np.empty(0, dtype=np.int64),
                vectors=np.empty((0, 0), dtype=np.float32),
            )
        dim = int(rows[0][2])
        if any(r[2] != dim for r in rows):
            raise StoreError(f"templates of model {model!r} have mixed lengths (damaged?)")
        stored = [r[3] for r in rows]
        if self._cipher is not None or any(len(v) != dim * 4 for v in stored):
            stored = self._open_templates(stored, model, dim, [r[0] for r in rows])
        raw = bytearray().join(stored)  # one writable buffer
        if len(raw) != n * dim * 4:
            raise StoreError(f"a template of model {model!r} has the wrong size (damaged?)")
        vectors = np.frombuffer(raw, dtype="<f4").reshape(n, dim).astype(np.float32, copy=False)
        return TemplateMatrix(
            model=model,
            dim=dim,
            template_ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=n),
            subject_ids=np.fromiter((r[1] for r in rows), dtype=np.int64, count=n),
            vectors=vectors,
        )

    # ----------------------------------------------------------------- encryption at rest

    @property
    def encrypted(self) -> bool:
        """Whether this handle has a key: new blobs and templates are written sealed."""
        return self._cipher is not None

    @staticmethod
    def _template_context(model: str) -> bytes:
        """Associated data of a sealed template: it is one of `model`'s, not a blob."""
        return b"template:" + model.encode("utf-8")

    def _seal_template(self, plain: bytes, model: str) -> bytes:
        if self._cipher is None:
            return plain
        return self._cipher.seal(plain, self._template_context(model))

    def _open_templates(
        self, stored: list[bytes], model: str, dim: int, template_ids: list[int]
    ) -> list[bytes]:
        """Plaintexts of stored template vectors, sealed or (from before a key) plain.

        The size tells the two apart: dim*4 bytes is plain, dim*4 + OVERHEAD is sealed, so a
        plain vector whose bytes happen to start like sealed data is never mistaken. Rows of
        any other size pass through for the caller's size check.
        """
        sealed_size = dim * 4 + OVERHEAD
        if self._cipher is None:
            if any(len(v) == sealed_size for v in stored):
                raise not_configured(f"templates of model {model!r}")
            return stored
        context = self._template_context(model)
        what = f"templates of model {model!r}"
        try:
            if all(len(v) == sealed_size for v in stored):  # the usual case: all sealed
                return self._cipher.open_many(stored, context, what=what)
            return [
                self._cipher.open(v, context, what=what) if len(v) == sealed_size else v
                for v in stored
            ]
        except StoreError:
            # Name the first row that fails, for whoever has to repair it.
            for tid, v in zip(template_ids, stored, strict=True):
                if len(v) == sealed_size:
                    self._cipher.open(v, context, what=f"template {tid} of model {model!r}")
            raise

    def encrypt_existing(self) -> dict[str, int]:
        """Seal every plain blob file and template row (written before a key was set).

        Runs in one write transaction, so no enrolment interleaves; each blob is rewritten
        atomically, and template rows commit together. Idempotent: sealed data is left
        alone. Returns counts: `blobs` and `templates` sealed now, `temporary_files` (left by
        crashed writes, possibly plaintext) removed. InvalidInputError without a key.
        """
        if self._cipher is None:
            raise InvalidInputError(f"no encryption key configured ({KEY_HINT})")
        blobs = 0
        with self.session(write=True) as s:
            try:
                temporary = self.blobs.remove_temporary_files()
                for sha in self.blobs.iter_hashes():
                    blobs += self.blobs.seal_existing(sha)
            except OSError as e:
                raise StoreError(f"cannot encrypt the blob store: {e.strerror}") from None
            templates = self.seal_plain_vectors(s, Template)
        return {"blobs": blobs, "templates": templates, "temporary_files": temporary}

    def seal_plain_vectors(
        self, s: Session, table: Any, context: Callable[[str], str] = lambda model: model
    ) -> int:
        """Seal, in `s`, the rows of `table` (a mapped class with id, model, dim and vector
        columns, as templates and cohort faces have) still stored plain: exactly dim x 4
        bytes long. `context(model)` is what each vector is sealed to. Returns how many."""
        last = sealed = 0
        while True:
            rows = s.execute(
                select(table.id, table.model, table.vector)
                .where(table.id > last, func.length(table.vector) == table.dim * 4)
                .order_by(table.id)
                .limit(_IN_CHUNK)
            ).all()
            if not rows:
                return sealed
            s.execute(
                update(table),
                [{"id": i, "vector": self._seal_template(v, context(m))} for i, m, v in rows],
            )
            sealed += len(rows)
            last = int(rows[-1][0])

    def subject_names(self, subject_ids: Iterable[int]) -> dict[int, str]:
        """Names of the given subject ids; ids that no longer exist are left out."""
        wanted = sorted({int(i) for i in subject_ids})
        out: dict[int, str] = {}
        if not wanted:
            return out
        with self.session(write=False) as s:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                stmt = select(Subject.id, Subject.name).where(Subject.id.in_(chunk))
                out.update((int(i), str(n)) for i, n in s.execute(stmt))
        return out

    def template_subjects(self, template_ids: np.ndarray) -> np.ndarray:
        """The subject id of each template id (-1 where the template no longer exists)."""
        wanted = sorted({int(i) for i in np.asarray(template_ids).ravel()})
        found: dict[int, int] = {}
        with self.session(write=False) as s:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                stmt = select(Template.id, Template.subject_id).where(Template.id.in_(chunk))
                found.update((int(t), int(sub)) for t, sub in s.execute(stmt))
        lookup = np.vectorize(lambda t: found.get(int(t), -1), otypes=[np.int64])
        return lookup(template_ids) if np.size(template_ids) else np.zeros_like(template_ids)

    def gallery_size(self, model: str) -> tuple[int, int]:
        """(subjects with a template of `model`, templates of `model`)."""
        with self.session(write=False) as s:
            row = s.execute(
                select(
                    func.count(func.distinct(Template.subject_id)), func.count(Template.id)
                ).where(Template.model == model)
            ).one()
        return int(row[0]), int(row[1])

    # ----------------------------------------------------------------- bulk transfer

    def import_templates(
        self, templates: TemplateSet, *, session: Session | None = None
    ) -> TemplateImport:
        """Add templates computed elsewhere (a migration from another system), all or none.

        Each row becomes a template of its subject with no face here (`face_id` None),
        keeping the source image's sha256 when given. Subjects are found or created by name;
        a reference number is set where the subject has none. Any bad row (a name or
        reference the store refuses, a reference contradicting the subject's, a length
        unlike the model's templates, a value that is not finite) refuses the whole set with
        InvalidInputError before anything is written. A row equal, bit for bit, to a template
        its subject already has for this model (or to an earlier row) is skipped as a
        duplicate, so importing the same file twice adds it once.
        """
        model = _check_text(templates.model, "model", _MAX_MODEL)
        vectors = templates.vectors
        n = len(templates)
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.shape[0] != n:
            raise InvalidInputError("templates must be a 2-d array, one row per subject entry")
        if len(templates.references) != n or len(templates.image_sha256) != n:
            raise InvalidInputError("every template needs its subject, reference and image")
        if vectors.dtype != np.float32 or vectors.shape[1] == 0:
            raise InvalidInputError("templates must be non-empty float32 rows")
        if not np.isfinite(vectors).all():
            raise InvalidInputError("templates must be finite")
        wanted: dict[str, str | None] = {}
        for i, (name, ref, sha) in enumerate(
            zip(templates.subjects, templates.references, templates.image_sha256, strict=True)
        ):
            where = f"row {i}"
            _check_text(name, f"{where}: subject name", _MAX_NAME)
            if ref is not None:
                _check_text(ref, f"{where}: reference number", _MAX_REFERENCE)
            if sha is not None:
                check_sha256(sha)
            known = wanted.get(name)
            if ref and known and known != ref:
                raise InvalidInputError(f"{where}: subject {name!r} has two reference numbers")
            wanted[name] = known or ref
        dim = int(vectors.shape[1])
        rows = np.ascontiguousarray(vectors, dtype="<f4")

        with self._write(session) as s:
            model_dim = s.scalar(select(Template.dim).where(Template.model == model).limit(1))
            if model_dim is not None and int(model_dim) != dim:
                raise InvalidInputError(
                    f"model {model!r} has {model_dim}-d templates here, not {dim}-d"
                )
            subjects = self._subjects_by_name(s, set(wanted))
            for name, ref in wanted.items():
                known = subjects.get(name)
                if known is not None and ref and known[1] and known[1] != ref:
                    raise InvalidInputError(
                        f"subject {name!r} already has a different reference number"
                    )
            new = [name for name in wanted if name not in subjects]
            ids = _insert_ids(
                s,
                Subject,
                [{"name": n, "reference": wanted[n], "created_at": utcnow()} for n in new],
            )
            subjects.update((name, (sid, wanted[name])) for name, sid in zip(new, ids, strict=True))
            for name, ref in wanted.items():
                sid, stored_ref = subjects[name]
                if ref and stored_ref is None:
                    s.execute(update(Subject).where(Subject.id == sid).values(reference=ref))

            # What each subject already holds of this model, to skip exact copies.
            held = self._template_bytes(s, model, dim, {subjects[n][0] for n in wanted})
            fresh: list[int] = []
            duplicates = 0
            for i, name in enumerate(templates.subjects):
                key = (subjects[name][0], rows[i].tobytes())
                if key in held:
                    duplicates += 1
                else:
                    held.add(key)
                    fresh.append(i)
            template_ids = _insert_ids(
                s,
                Template,
                [
                    {
                        "face_id": None,
                        "subject_id": subjects[templates.subjects[i]][0],
                        "model": model,
                        "dim": dim,
                        "vector": self._seal_template(rows[i].tobytes(), model),
                        "image_sha256": templates.image_sha256[i],
                    }
                    for i in fresh
                ],
            )
            if template_ids:
                old, generation = self._bump_generation(s)
                added = (np.asarray(template_ids, dtype=np.int64), rows[fresh].copy())
                self._after_commit(
                    s, lambda: self._index_changed(old, generation, model, added, None)
                )
            else:
                generation = self._read_generation(s)
        return TemplateImport(
            model=model,
            added=len(template_ids),
            duplicates=duplicates,
            subject_ids=tuple(sorted({subjects[n][0] for n in wanted})),
            created_subjects=len(new),
            template_ids=tuple(template_ids),
            generation=generation,
        )

    def _template_bytes(
        self, s: Session, model: str, dim: int, subject_ids: set[int]
    ) -> set[tuple[int, bytes]]:
        """(subject id, plain little-endian bytes) of the subjects' templates of `model`."""
        found: set[tuple[int, bytes]] = set()
        wanted = sorted(subject_ids)
        for start in range(0, len(wanted), _IN_CHUNK):
            rows = s.execute(
                select(Template.id, Template.subject_id, Template.vector).where(
                    Template.model == model,
                    Template.subject_id.in_(wanted[start : start + _IN_CHUNK]),
                )
            ).all()
            if not rows:
                continue
            plain = self._open_templates([r[2] for r in rows], model, dim, [r[0] for r in rows])
            found.update((int(r[1]), bytes(v)) for r, v in zip(rows, plain, strict=True))
        return found

    def export_templates(self, model: str) -> tuple[TemplateSet, np.ndarray]:
        """Every template of `model` with its subject, reference number and source image
        (the enrolled image's sha256, or the one an import gave), in template id order;
        returns the set and the template ids."""
        with self.session(write=False) as s:
            rows = s.execute(
                select(
                    Template.id,
                    Subject.name,
                    Subject.reference,
                    func.coalesce(Image.sha256, Template.image_sha256),
                )
                .join(Subject, Subject.id == Template.subject_id)
                .outerjoin(Face, Face.id == Template.face_id)
                .outerjoin(Image, Image.id == Face.image_id)
                .where(Template.model == model)
                .order_by(Template.id)
            ).all()
            matrix = self._read_templates(s, model)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not np.array_equal(ids, matrix.template_ids):  # pragma: no cover - one snapshot
            raise StoreError("templates changed while they were exported")
        vectors = matrix.vectors if len(rows) else np.zeros((0, 0), np.float32)
        return (
            TemplateSet(
                model=model,
                subjects=tuple(str(r[1]) for r in rows),
                references=tuple(r[2] for r in rows),
                image_sha256=tuple(r[3] for r in rows),
                vectors=vectors,
            ),
            ids,
        )

    def subject_ids(self, names: Iterable[str]) -> dict[str, int]:
        """Ids of the named subjects; names no subject has are left out."""
        with self.session(write=False) as s:
            found = self._subjects_by_name(s, set(names))
        return {name: sid for name, (sid, _) in found.items()}

    def template_models(self) -> dict[str, int]:
        """Each model that has templates here, with how many."""
        with self.session(write=False) as s:
            rows = s.execute(
                select(Template.model, func.count(Template.id)).group_by(Template.model)
            ).all()
        return {str(m): int(n) for m, n in rows}

    # ----------------------------------------------------------------- audit

    def audit(self, record: AuditRecord, *, session: Session | None = None) -> int:
        """Append an audit event; pass the action's session so both commit together."""
        with self._write(session) as s:
            return audit.append(s, record)

    def verify_audit(self) -> ChainReport:
        with self.session(write=False) as s:
            return audit.verify(s)

    def export_audit(
        self,
        since: datetime | None = None,
        *,
        actions: tuple[str, ...] = (),
        case: str | None = None,
    ) -> list[dict[str, Any]]:
        with self.session(write=False) as s:
            return list(audit.export(s, since, actions=actions, case=case))

    def audit_page(
        self,
        *,
        offset: int,
        limit: int,
        action: str | None = None,
        actor: str | None = None,
        case: str | None = None,
    ) -> tuple[list[dict[str, Any]], int, list[str]]:
        """One page of events, newest first, the count that match, and every action."""
        with self.session(write=False) as s:
            rows, total = audit.page(
                s, offset=offset, limit=limit, action=action, actor=actor, case=case
            )
            return rows, total, audit.actions(s)

    # ----------------------------------------------------------------- index

    def index(self, model: str) -> TemplateIndex:
        """The template index of `model`, current as of this call.

        Cached per model with the generation it reflects. This handle's own writes update the
        cached index in place. With the exact backend, a change by any other handle or
        process changes the generation and makes this call rebuild from `templates(model)`;
        the persistent backends (`ann`, `milvus`) instead catch up with the difference.
        """
        if self.index_config.kind != "exact":
            return self._persistent_index(model)
        current = self.generation()
        with self._index_lock:
            cached = self._indexes.get(model)
            if cached is not None and cached.generation == current:
                return cached.index
            with self.session(write=False) as s:
                generation = self._read_generation(s)
                matrix = self._read_templates(s, model)
            idx = ExactIndex(matrix.dim, matrix.template_ids, matrix.vectors, copy=False)
            self._indexes[model] = _CachedIndex(generation, idx)
            return idx

    def _persistent_index(self, model: str) -> TemplateIndex:
        """Open the model's ANN or Milvus index once, then bring it up to date with the
        database on every generation change, adding and removing only the difference."""
        current = self.generation()
        with self._index_lock:
            cached = self._indexes.get(model)
            if cached is not None and cached.generation == current:
                return cached.index
            persist = self._cipher is None  # never write templates in the clear
            with self.session(write=False) as s:
                generation = self._read_generation(s)
                idx = cached.index if cached is not None else None
                if idx is None or isinstance(idx, ExactIndex):  # nothing yet, or a placeholder
                    dim = s.scalar(select(Template.dim).where(Template.model == model).limit(1))
                    if dim is None:  # no template of this model yet: nothing to persist
                        idx = ExactIndex(0)
                    else:
                        idx = open_index(
                            self.index_config, self.data_dir, model, int(dim), persist=persist
                        )
                        if len(idx) == 0:
                            matrix = self._read_templates(s, model)
                            idx = build_index(
                                self.index_config,
                                self.data_dir,
                                model,
                                matrix.template_ids,
                                matrix.vectors,
                                persist=persist,
                            )
                        else:
                            self._catch_up(s, model, idx, full=True)
                else:
                    self._catch_up(s, model, idx, full=False)
            if not isinstance(idx, ExactIndex):
                generation = self._settle(model, idx, generation)
            self._indexes[model] = _CachedIndex(generation, idx)
            return idx

    def _settle(self, model: str, idx: TemplateIndex, generation: int) -> int:
        """Catch up again until no write landed during the last catch-up (a long build or a
        large catch-up reads one snapshot; an erasure committed after it may have cleared
        the index's storage before this catch-up wrote the template back)."""
        for _ in range(8):
            with self.session(write=False) as s:
                now = self._read_generation(s)
                if now == generation:
                    break
                self._catch_up(s, model, idx, full=False)
                generation = now
        return generation

    def _catch_up(self, s: Session, model: str, idx: TemplateIndex, *, full: bool) -> None:
        """Apply to `idx` what the database has that it lacks and remove what it has that
        the database no longer has.

        Template ids only grow (AUTOINCREMENT on SQLite, a sequence on PostgreSQL), so the
        cheap path reads the rows above the highest id the index has seen, and counts the
        rows at or below it: if that count equals the index's size, nothing was removed.
        Otherwise (and when opening) the id sets are compared.
        """
        seen = int(getattr(idx, "max_id", -1))
        in_model = Template.model == model
        if not full:
            below = s.scalar(
                select(func.count()).select_from(Template).where(in_model, Template.id <= seen)
            )
            full = int(below or 0) != len(idx)
        if full:
            db_ids = np.fromiter(s.scalars(select(Template.id).where(in_model)), dtype=np.int64)
            have = np.asarray(idx.ids, dtype=np.int64)  # type: ignore[attr-defined]
            extra = np.setdiff1d(have, db_ids, assume_unique=True)
            missing = np.setdiff1d(db_ids, have, assume_unique=True)
            if extra.size:
                idx.remove(extra)
            for start in range(0, missing.size, _IN_CHUNK):
                chunk = missing[start : start + _IN_CHUNK].tolist()
                ids, vectors = self._template_rows(s, model, Template.id.in_(chunk))
                if ids.size:
                    idx.add(ids, vectors)
        else:
            ids, vectors = self._template_rows(s, model, Template.id > seen)
            if ids.size:
                idx.add(ids, vectors)

    def _template_rows(self, s: Session, model: str, where: Any) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of `model`'s templates matching `where`, in id order."""
        rows = s.execute(
            select(Template.id, Template.dim, Template.vector)
            .where(Template.model == model, where)
            .order_by(Template.id)
        ).all()
        if not rows:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        dim = int(rows[0][1])
        stored = [r[2] for r in rows]
        if self._cipher is not None or any(len(v) != dim * 4 for v in stored):
            stored = self._open_templates(stored, model, dim, [r[0] for r in rows])
        raw = bytearray().join(stored)
        if len(raw) != len(rows) * dim * 4:
            raise StoreError(f"a template of model {model!r} has the wrong size (damaged?)")
        vectors = np.frombuffer(raw, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), vectors

    def _index_changed(
        self,
        old: int,
        new: int,
        model: str | None,
        added: tuple[np.ndarray, np.ndarray] | None,
        removed: np.ndarray | None,
    ) -> None:
        """Apply this handle's committed change to cached indexes that were current before it.

        Indexes at any other generation missed someone else's change and are left to rebuild
        (exact) or catch up (persistent). Removals also reach the storage of persistent
        indexes that are not loaded here: an erasure must not wait for a search.
        """
        persistent = self.index_config.kind != "exact"
        with self._index_lock:
            done: set[str] = set()
            for name, cached in list(self._indexes.items()):
                if cached.generation != old:
                    continue
                if persistent and isinstance(cached.index, ExactIndex):
                    del self._indexes[name]  # a placeholder: open the real index next time
                    continue
                if removed is not None:
                    cached.index.remove(removed)
                    done.add(name)
                if added is not None and name == model:
                    ids, vectors = added
                    if cached.index.dim != vectors.shape[1]:
                        if len(cached.index) or persistent:
                            del self._indexes[name]
                            continue
                        cached.index = ExactIndex(vectors.shape[1])
                    cached.index.add(ids, vectors)
                cached.generation = new
            if persistent and removed is not None and removed.size:
                erase_elsewhere(self.index_config, self.data_dir, removed, done)
