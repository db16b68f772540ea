"""The LFW View-2 protocol: parsing, a CI-sized real run, and (slow) the full folds 1-5."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Team
from facetrail.errors import InvalidInputError
from facetrail.evaluation.lfw import read_pairs
from facetrail.vision.calibration import find_calibration


@pytest.fixture(scope="module")
def lfw(shared_data: Path) -> Path:
    root = shared_data / "lfw"
    if not (root / "pairs.txt").is_file():
        pytest.skip("LFW is not in the shared data")
    return root


def test_read_pairs_follows_the_official_format(lfw: Path) -> None:
    pairs = read_pairs(lfw / "pairs.txt")
    assert len(pairs) == 6000
    assert [sum(p.fold == f for p in pairs) for f in range(1, 11)] == [600] * 10
    first_fold = [p for p in pairs if p.fold == 1]
    assert sum(p.same for p in first_fold) == 300
    assert all(p.same for p in first_fold[:300]) and not any(p.same for p in first_fold[300:])
    assert first_fold[0].a.endswith(".jpg") and "/" in first_fold[0].a


def _mini_lfw(lfw: Path, dest: Path, per_side: int) -> Path:
    """A two-fold LFW of the first pairs of folds 1 and 2, by symbolic links (no copies)."""
    lines = (lfw / "pairs.txt").read_text().splitlines()
    body = lines[1:]
    chosen = []
    for fold in (0, 1):
        block = body[fold * 600 : (fold + 1) * 600]
        chosen += block[:per_side] + block[300 : 300 + per_side]
    dest.mkdir()
    (dest / "pairs.txt").write_text(f"2\t{per_side}\n" + "\n".join(chosen) + "\n")
    for line in chosen:
        parts = line.split()
        names = [parts[0], parts[0]] if len(parts) == 3 else [parts[0], parts[2]]
        for name in names:
            link = dest / name
            if not link.exists():
                link.symlink_to(lfw / name, target_is_directory=True)
    return dest


def test_lfw_protocol_on_a_small_real_subset(lfw: Path, tmp_path: Path, team: Team) -> None:
    root = _mini_lfw(lfw, tmp_path / "lfw", per_side=40)
    with team.open("admin") as ft:  # saving a calibration is an administrator's change
        report = ft.eval_lfw(root, calibrate=True)
        saved = find_calibration(ft.analyzer.model_id, ft.calibration_dir)
    assert report.pairs == 160 and len(report.folds) == 2
    assert report.mean_accuracy >= 0.95
    assert all(f["pairs"] == 80 for f in report.folds)
    assert 0 <= report.no_face_images < report.images
    assert set(report.tar_at_far) == {"0.01", "0.001"}
    assert saved is not None and saved.source.startswith("LFW")


def test_lfw_folder_without_pairs_is_refused(tmp_path: Path, team: Team) -> None:
    with (
        team.open("auditor") as ft,
        pytest.raises(InvalidInputError, match=r"pairs\.txt"),
    ):
        ft.eval_lfw(tmp_path)


@pytest.mark.slow
def test_full_lfw_folds_1_to_5_reach_the_accuracy_target(lfw: Path, team: Team) -> None:
    with team.open("auditor") as ft:
        report = ft.eval_lfw(lfw)
    assert report.pairs == 3000
    assert report.mean_accuracy >= 0.991
