"""Fixtures shared by the test modules: the shared real-image data, one warm analyser, and
the databases (SQLite in a data directory, or a fresh PostgreSQL database)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from facetrail.config import Settings

# Real test images live beside the repository (../shared/data), never inside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; tests that need it are skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not present (expected under {SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def analyzer(tmp_path_factory: pytest.TempPathFactory):
    """One FaceAnalyzer (default models, flip averaging) on a fresh data directory."""
    from facetrail.vision.pipeline import FaceAnalyzer

    return FaceAnalyzer(Settings(data=tmp_path_factory.mktemp("data")))


# --------------------------------------------------------------------------- databases

POSTGRES_URL_ENV = "FACETRAIL_TEST_POSTGRES_URL"
POSTGRES_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres"
# Data directories of the tests' teams whose database is PostgreSQL, with its URL (for `sql`).
POSTGRES_DATA: dict[Path, str] = {}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL database whose role may create databases.

    FACETRAIL_TEST_POSTGRES_URL when set (.ci/run starts a server and sets it; `skip` skips
    the PostgreSQL tests); otherwise a throwaway server this session starts with .ci/postgres
    where PostgreSQL is installed and stops at the end; otherwise the PostgreSQL tests skip,
    saying why.
    """
    url = os.environ.get(POSTGRES_URL_ENV)
    if url == "skip":
        pytest.skip(f"PostgreSQL tests skipped: {POSTGRES_URL_ENV}=skip")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests need psycopg: pip install -e '.[test]'")
    if url:
        yield url
        return
    if not POSTGRES_SCRIPT.is_file() or shutil.which("bash") is None:
        pytest.skip(f"no PostgreSQL server for the tests: set {POSTGRES_URL_ENV}")
    proc = subprocess.run(
        ["bash", str(POSTGRES_SCRIPT), "start"], capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["it failed"])[-1]
        pytest.skip(
            f"no PostgreSQL server for the tests: set {POSTGRES_URL_ENV} or install "
            f"PostgreSQL (apt-get install postgresql) so that one can be started ({why})"
        )
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        yield found[POSTGRES_URL_ENV]
    finally:
        subprocess.run(
            ["bash", str(POSTGRES_SCRIPT), "stop", found["FACETRAIL_TEST_POSTGRES_DIR"]],
            capture_output=True,
            timeout=120,
        )


@contextlib.contextmanager
def postgres_database(server_url: str, *, copy_of: str | None = None) -> Iterator[str]:
    """A new database on the server of `server_url`, dropped at the end: empty, or a copy of
    the database of URL `copy_of` (which nobody may be connected to)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from facetrail.store.store import database_url

    server = database_url(server_url)
    name = f"facetrail_t_{uuid.uuid4().hex[:20]}"
    template = f' TEMPLATE "{database_url(copy_of).database}"' if copy_of else ""
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture()
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database of this test's own, dropped after it."""
    with postgres_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each database in turn: None (SQLite in the data directory) or the URL of a fresh
    PostgreSQL database (skipped, saying why, where no server can be had)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


def store_url(store) -> str | None:  # type: ignore[no-untyped-def]
    """The URL to open another handle on `store`'s database (None: its data directory's)."""
    if store.engine.dialect.name == "sqlite":
        return None
    return store.engine.url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------- teams

PASSWORD = "a-long-test-password"
CASE = "T-1"
ROLES = ("admin", "authoriser", "investigator", "operator", "auditor")


@dataclass(frozen=True)
class Team:
    """A data directory with one user of each role (named after the role), each with a
    token, and an open case CASE of the investigator's in which the authoriser has approved
    gallery-wide and below-floor searches."""

    data: Path
    tokens: dict[str, str]
    database_url: str | None = None  # None: SQLite in `data`

    def options(self) -> dict[str, str]:
        """The settings that `facetrail.open(self.data, ...)` needs to find the database."""
        return {"database_url": self.database_url} if self.database_url else {}

    def open(self, role: str = "investigator"):
        import facetrail

        return facetrail.open(self.data, token=self.tokens[role], **self.options())

    def env(self, role: str = "investigator") -> dict[str, str]:
        env = {"FACETRAIL_DATA": str(self.data), "FACETRAIL_TOKEN": self.tokens[role]}
        if self.database_url:
            env["FACETRAIL_DATABASE_URL"] = self.database_url
        return env


def make_team(data: Path, *, approvals: bool = True, database_url: str | None = None) -> Team:
    import facetrail

    extra = {"database_url": database_url} if database_url else {}
    if database_url:
        POSTGRES_DATA[data] = database_url
    with facetrail.open(data, **extra) as ft:
        tokens = {"admin": ft.init("admin", PASSWORD).token}
        for role in ROLES[1:]:
            ft.add_user(role, role, PASSWORD)
            tokens[role] = ft.as_caller(None).login(role, PASSWORD).token
        investigator = ft.as_caller(None)
        investigator.use_token(tokens["investigator"])
        investigator.open_case(CASE, purpose="tests", legal_basis="test data only")
        if approvals:
            authoriser = ft.as_caller(None)
            authoriser.use_token(tokens["authoriser"])
            authoriser.approve(CASE, scope="gallery", reason="tests search the gallery")
            authoriser.approve(CASE, scope="below-floor", reason="tests list all scores")
    return Team(data, tokens, database_url)


@pytest.fixture()
def team(tmp_path: Path) -> Team:
    return make_team(tmp_path / "data")


def sql(data: Path, query: str, *params: object) -> list[tuple]:
    """Rows of a query (with ? placeholders) on a data directory's database, read directly
    (not through facetrail): what is really on disk, or in PostgreSQL for a team made with a
    PostgreSQL database (JSON columns then come back parsed)."""
    url = POSTGRES_DATA.get(data)
    if url is not None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        from facetrail.store.store import database_url

        engine = create_engine(database_url(url), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(query.replace("?", "%s"), tuple(params))
                return [tuple(r) for r in rows]
        finally:
            engine.dispose()
    db = sqlite3.connect(data / "facetrail.db")
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()


@contextlib.contextmanager
def serve_app(app: object) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free port of 127.0.0.1, running its lifespan, in
    a thread; yields its base URL and stops it afterwards."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the web app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
