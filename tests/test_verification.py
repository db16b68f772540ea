"""1:1 verification metrics on score arrays: thresholds, cross-validation, TAR at FAR."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facetrail.evaluation.verification import (
    FoldResult,
    best_threshold,
    cross_validated_accuracy,
    tar_at_far,
)


def _accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(((scores > threshold) == same.astype(bool)).mean())


def _best_achievable(scores: np.ndarray, same: np.ndarray) -> float:
    """O(n^2): every distinct way to split the pairs by `score > t`, accept-all included."""
    candidates = [float(scores.min()) - 1.0, *(float(s) for s in np.unique(scores))]
    return max(_accuracy(scores, same, t) for t in candidates)


# Scores like cosine similarities: on a coarse grid (many ties) or anywhere in [-1, 1].
_score = st.one_of(
    st.integers(-8, 8).map(lambda k: k / 8),
    st.floats(-1.0, 1.0, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_score, st.booleans()), min_size=1, max_size=30))
def test_best_threshold_achieves_the_best_accuracy(pairs):
    scores = np.array([p[0] for p in pairs], np.float64)
    same = np.array([p[1] for p in pairs])
    threshold = best_threshold(scores, same)
    assert np.isfinite(threshold)
    assert _accuracy(scores, same, threshold) == pytest.approx(_best_achievable(scores, same))


def test_best_threshold_simple_cases():
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    t = best_threshold(scores, np.array([0, 0, 1, 1]))
    assert 0.2 < t < 0.8
    assert t == pytest.approx(0.5)  # the midpoint of the gap
    # All genuine: accept everything; all impostor: reject everything.
    assert best_threshold(scores, np.ones(4, int)) < 0.1
    assert best_threshold(scores, np.zeros(4, int)) >= 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_best_threshold_between_ties_and_neighbouring_floats(dtype):
    # Ties: a threshold cannot separate equal scores, so the best is to accept all three.
    tied, labels = np.zeros(3, dtype), np.array([0, 1, 1])
    assert best_threshold(tied, labels) < 0
    assert _accuracy(tied, labels, best_threshold(tied, labels)) == pytest.approx(2 / 3)
    # Two neighbouring floats still split: the threshold lands on or above the lower one.
    low = dtype(0.7)
    scores = np.array([low, np.nextafter(low, dtype(1))], dtype)
    same = np.array([0, 1])
    threshold = best_threshold(scores, same)
    assert _accuracy(scores, same, threshold) == 1.0


def test_cross_validated_accuracy_on_separable_scores():
    rng = np.random.default_rng(3)
    n = 600
    same = rng.random(n) < 0.5
    scores = np.where(same, rng.uniform(0.6, 1.0, n), rng.uniform(-1.0, 0.4, n))
    folds = np.arange(n) % 10
    results = cross_validated_accuracy(scores, same, folds)
    assert [r.fold for r in results] == list(range(10))
    assert all(isinstance(r, FoldResult) for r in results)
    assert [r.accuracy for r in results] == [1.0] * 10
    assert sum(r.pairs for r in results) == n
    for r in results:
        assert 0.4 <= r.threshold < 0.6


def test_cross_validated_accuracy_picks_thresholds_on_the_other_folds():
    # Fold 0's genuine pairs score lower than anything else; its threshold comes from folds
    # 1 and 2, so fold 0 loses them, while folds 1 and 2 stay perfect.
    scores = np.array([0.30, 0.31, -0.5, -0.6, 0.9, 0.8, -0.2, -0.1, 0.7, 0.95, -0.3, 0.0])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    folds = np.repeat([0, 1, 2], 4)
    results = cross_validated_accuracy(scores, same, folds)
    assert [r.accuracy for r in results] == [0.5, 1.0, 1.0]


def test_tar_at_far_basic_cases():
    impostors = np.linspace(-0.5, 0.4, 10)  # -0.5, -0.4, ..., 0.4
    genuines = np.array([0.2, 0.35, 0.5, 0.6, 0.7])
    scores = np.concatenate([impostors, genuines])
    same = np.concatenate([np.zeros(10, bool), np.ones(5, bool)])
    # FAR 0: accept only above the highest impostor (0.4).
    tar, threshold = tar_at_far(scores, same, 0.0)
    assert threshold == pytest.approx(0.4)
    assert tar == pytest.approx(3 / 5)
    # FAR 0.1 allows one impostor of ten: accept above the second highest (0.3).
    tar, threshold = tar_at_far(scores, same, 0.1)
    assert threshold == pytest.approx(0.3)
    assert tar == pytest.approx(4 / 5)
    # FAR 0.15 still allows only one.
    assert tar_at_far(scores, same, 0.15)[1] == pytest.approx(0.3)
    # FAR 1: everything is accepted.
    tar, threshold = tar_at_far(scores, same, 1.0)
    assert tar == 1.0
    assert threshold < scores.min()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(_score, st.booleans()), min_size=2, max_size=40).filter(
        lambda pairs: {p[1] for p in pairs} == {False, True}
    ),
    st.floats(0.0, 1.0),
)
def test_tar_at_far_respects_the_far(pairs, far):
    scores = np.array([p[0] for p in pairs], np.float64)
    same = np.array([p[1] for p in pairs])
    tar, threshold = tar_at_far(scores, same, far)
    impostor, genuine = scores[~same], scores[same]
    assert (impostor > threshold).mean() <= far + 1e-12
    assert tar == pytest.approx((genuine > threshold).mean())
    # The smallest such threshold: one step lower would let in too many impostors.
    lower = impostor[impostor <= threshold]
    if len(lower) and (impostor >= threshold).sum() > 0:
        below = impostor[impostor < threshold]
        if len(below):
            assert (impostor > below.max()).mean() > far
