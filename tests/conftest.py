"""Fixtures shared by the test modules: the shared real-image data and one warm analyser."""

from __future__ import annotations

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
