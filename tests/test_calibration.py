"""Score calibration on synthetic descriptors: what a score means as a false match rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facetrail.errors import ModelError
from facetrail.vision.calibration import (
    Calibration,
    calibration_file,
    find_calibration,
    fit_calibration,
)
from facetrail.vision.compare import normalise

IDENTITIES, SAMPLES, DIM = 40, 5, 32


def _synthetic(seed: int = 0, noise: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors scattered around one random centre per identity."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(IDENTITIES, DIM)))
    vectors = np.repeat(centres, SAMPLES, axis=0) + noise * rng.normal(
        size=(IDENTITIES * SAMPLES, DIM)
    )
    return normalise(vectors), np.repeat(np.arange(IDENTITIES), SAMPLES)


def _pair_scores(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(impostor scores, genuine scores) of every unordered pair."""
    a, b = np.triu_indices(len(vectors), 1)
    scores = (vectors[a] * vectors[b]).sum(axis=1)
    same = labels[a] == labels[b]
    return scores[~same], scores[same]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _synthetic()


@pytest.fixture(scope="module")
def calibration(data) -> Calibration:
    vectors, labels = data
    return fit_calibration(vectors, labels, model="test-model:abc+flip", source="synthetic")


def test_counts_every_pair_once(calibration):
    n = IDENTITIES * SAMPLES
    genuine = IDENTITIES * SAMPLES * (SAMPLES - 1) // 2
    assert calibration.genuine_comparisons == genuine
    assert calibration.impostor_comparisons == n * (n - 1) // 2 - genuine
    assert calibration.min_fmr == pytest.approx(1 / calibration.impostor_comparisons)
    assert calibration.model == "test-model:abc+flip"
    assert calibration.source == "synthetic"


def test_table_is_ordered(calibration):
    scores, fmrs, fnmrs = map(np.array, (calibration.scores, calibration.fmrs, calibration.fnmrs))
    assert len(scores) == len(fmrs) == len(fnmrs) >= 10
    assert np.all(np.diff(scores) > 0)
    assert np.all(np.diff(fmrs) < 0)
    assert np.all(np.diff(fnmrs) >= 0)
    assert np.all((fnmrs >= 0) & (fnmrs <= 1))


def test_fmr_is_non_increasing_and_bounded(calibration):
    grid = np.linspace(-1.5, 1.5, 3001)
    fmr = calibration.fmr(grid)
    assert fmr.shape == grid.shape
    assert np.all(np.diff(fmr) <= 1e-15)
    assert np.all(fmr >= calibration.min_fmr * (1 - 1e-12))
    assert np.all(fmr <= 1.0)
    assert fmr[0] == 1.0
    assert fmr[-1] == pytest.approx(calibration.min_fmr)
    assert float(calibration.fmr(0.3)) == pytest.approx(calibration.fmr(np.array([0.3]))[0])


def test_threshold_for_gives_the_target_fmr(calibration, data):
    impostors, _ = _pair_scores(*data)
    for target in (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4):
        threshold = calibration.threshold_for(target)
        # The table's own estimate at that threshold is the target ...
        assert float(calibration.fmr(threshold)) == pytest.approx(target, rel=1e-6)
        # ... and the share of impostor pairs scoring at or above it is close to it.
        measured = (impostors >= threshold).mean()
        assert target / 2 <= measured <= target * 2, (target, measured)
    # Stricter targets give higher thresholds.
    thresholds = [calibration.threshold_for(t) for t in (0.1, 0.01, 1e-3, 1e-4)]
    assert thresholds == sorted(thresholds)


def test_threshold_for_never_exceeds_the_target(calibration):
    # Down to the smallest FMR the calibration can vouch for, the threshold it gives has an
    # estimated FMR at or below the target (never a laxer threshold than asked for).
    for target in np.geomspace(calibration.min_fmr, 1.0, 200):
        estimate = float(calibration.fmr(calibration.threshold_for(target)))
        assert estimate <= target * (1 + 1e-9), (target, estimate)


def test_bound_means_above_every_impostor(calibration, data):
    # "Below 1 in N" is reported only for scores no impostor comparison reached.
    impostors, _ = _pair_scores(*data)
    top = impostors.max()
    assert float(calibration.fmr(top)) > calibration.min_fmr
    assert calibration.threshold_for(calibration.min_fmr) > top
    assert float(calibration.fmr(1.0)) == pytest.approx(calibration.min_fmr)


def test_target_below_what_was_measured_is_refused(calibration):
    with pytest.raises(ModelError, match="below what this calibration measured"):
        calibration.threshold_for(calibration.min_fmr / 2)


def test_fnmr_at_and_summary(calibration, data):
    _, genuines = _pair_scores(*data)
    fnmr = [calibration.fnmr_at(t) for t in np.linspace(-1, 1, 201)]
    assert np.all(np.diff(fnmr) >= 0)
    threshold = calibration.threshold_for(1e-3)
    assert calibration.fnmr_at(threshold) == pytest.approx((genuines < threshold).mean(), abs=0.02)
    summary = calibration.summary()
    assert summary["impostor_comparisons"] == calibration.impostor_comparisons
    # 1e-5 is below this calibration's 1 / 19500: not reported.
    assert set(summary["operating_points"]) == {"0.01", "0.001", "0.0001"}
    json.dumps(summary)


def test_chunking_does_not_change_the_result(data, calibration):
    vectors, labels = data
    chunked = fit_calibration(vectors, labels, model=calibration.model, source="synthetic", chunk=7)
    assert chunked == calibration


def test_labels_of_any_kind(data, calibration):
    vectors, labels = data
    named = np.array([f"person-{k}" for k in labels])
    assert fit_calibration(vectors, named, model=calibration.model, source="synthetic") == (
        calibration
    )


def test_needs_both_kinds_of_pair(data):
    vectors, labels = data
    with pytest.raises(ModelError):
        fit_calibration(vectors[:5], labels[:5], model="m", source="s")  # one identity
    with pytest.raises(ModelError):
        fit_calibration(vectors[::5], labels[::5], model="m", source="s")  # no repeats


def test_tiny_calibration_still_answers():
    # Three images, two people: two impostor pairs and one genuine pair.
    vectors = normalise(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    tiny = fit_calibration(vectors, np.array([0, 0, 1]), model="m", source="s")
    assert tiny.impostor_comparisons == 2
    assert tiny.min_fmr == 0.5
    threshold = tiny.threshold_for(0.5)
    assert float(tiny.fmr(threshold)) <= 0.5
    assert float(tiny.fmr(-1.0)) == 1.0


def test_save_and_load_round_trip(calibration, tmp_path):
    path = tmp_path / "nested" / calibration_file(calibration.model)
    calibration.save(path)
    assert Calibration.load(path) == calibration
    assert not list(path.parent.glob("*.tmp"))
    assert json.loads(path.read_text())["model"] == calibration.model


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"model": "m"}'])
def test_unreadable_calibration_file(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ModelError):
        Calibration.load(path)
    with pytest.raises(ModelError):
        Calibration.load(tmp_path / "missing.json")


def test_find_calibration_prefers_the_override_dir(calibration, tmp_path):
    model = calibration.model
    assert calibration_file(model) == "test-model_abc_flip.json"
    assert find_calibration(model, tmp_path) is None  # nothing packaged for this model
    assert find_calibration(model) is None
    calibration.save(tmp_path / calibration_file(model))
    found = find_calibration(model, tmp_path)
    assert found == calibration
    # A refreshed table in the data directory wins over whatever ships with the package.
    refreshed = Calibration(**{**calibration.__dict__, "source": "refreshed"})
    refreshed.save(tmp_path / calibration_file(model))
    assert find_calibration(model, tmp_path).source == "refreshed"
    assert find_calibration("other-model", tmp_path) is None


def test_packaged_calibrations_are_readable():
    from facetrail.vision import calibration as module

    folder = Path(module.PACKAGED)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for path in files:
        table = Calibration.load(path)
        assert path.name == calibration_file(table.model)
        assert np.all(np.diff(table.scores) > 0)
        assert np.all(np.diff(table.fmrs) < 0)
