"""1:1 verification metrics: cross-validated accuracy and TAR at fixed FAR, on score arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold that maximises accuracy on these pairs (midpoint between scores)."""
    order = np.argsort(scores)
    s, y = scores[order], same[order].astype(np.int64)
    # Accepting everything above index i: correct = impostors at or below i + genuines above i.
    impostors_below = np.cumsum(1 - y)
    genuine_above = y.sum() - np.cumsum(y)
    correct = impostors_below + genuine_above
    # A threshold can only fall between two different scores: never split a run of ties.
    correct[:-1][s[1:] == s[:-1]] = -1
    i = int(np.argmax(correct))
    upper = s[i + 1] if i + 1 < len(s) else s[i] + 1e-6
    # Accepting all (threshold below the lowest score) is a candidate too.
    if y.sum() > correct[i]:
        return float(s[0] - 1e-6)
    middle = (s[i] + upper) / 2
    # Between two neighbouring floats the midpoint rounds to one of them; keep it below upper.
    return float(middle if middle < upper else s[i])


@dataclass(frozen=True)
class FoldResult:
    fold: int
    threshold: float
    accuracy: float
    pairs: int


def cross_validated_accuracy(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> list[FoldResult]:
    """Per-fold accuracy, each fold's threshold chosen on the other folds (LFW protocol)."""
    out = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(scores[~test], same[~test])
        accepted = scores[test] > threshold
        accuracy = float((accepted == same[test].astype(bool)).mean())
        out.append(FoldResult(int(fold), threshold, accuracy, int(test.sum())))
    return out


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the smallest threshold whose false accept rate is <= `far`."""
    impostor = np.sort(scores[~same.astype(bool)])[::-1]
    genuine = scores[same.astype(bool)]
    allowed = int(np.floor(far * len(impostor)))
    # Accept scores strictly above the (allowed+1)-th highest impostor score.
    threshold = float(impostor[allowed]) if allowed < len(impostor) else float(impostor[-1]) - 1e-6
    return float((genuine > threshold).mean()), threshold
