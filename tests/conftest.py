"""Fixtures shared by the test modules: the shared real-image data and one warm analyser."""

from __future__ import annotations

import sqlite3
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

    def open(self, role: str = "investigator"):
        import facetrail

        return facetrail.open(self.data, token=self.tokens[role])

    def env(self, role: str = "investigator") -> dict[str, str]:
        return {"FACETRAIL_DATA": str(self.data), "FACETRAIL_TOKEN": self.tokens[role]}


def make_team(data: Path, *, approvals: bool = True) -> Team:
    import facetrail

    with facetrail.open(data) as ft:
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
    return Team(data, tokens)


@pytest.fixture()
def team(tmp_path: Path) -> Team:
    return make_team(tmp_path / "data")


def sql(data: Path, query: str, *params: object) -> list[tuple]:
    """Rows of a query on a data directory's database, read directly (not through facetrail):
    what is really on disk."""
    db = sqlite3.connect(data / "facetrail.db")
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()
