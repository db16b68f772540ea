"""Open-set 1:N identification metrics from descriptors and a pluggable scorer.

The maths here never sees an image: `evaluate_open_set` takes gallery descriptors with their
subject labels, probe descriptors with theirs, and a `Scorer` that turns them into a
probes x subjects score matrix. The default scorer is the search's own (cosine similarity, a
subject's best template); score normalisation or template fusion are other scorers, compared on
the same cached descriptors.

Definitions (ISO/IEC 19795-1 and NIST FRVT 1:N usage; a candidate is returned when its score
is at or above the threshold, as in `facetrail search`):
- A probe is mated when its subject is in the gallery, non-mated otherwise.
- Rank of a mated probe: 1 + the number of other subjects scoring at or above its mate.
- FPIR(t): share of non-mated probes whose top candidate scores at or above t.
- FNIR(t): share of mated probes whose mate is not the rank-1 candidate at or above t
  (identification mode: the one candidate an operator would be shown first).
- CMC(k): share of mated probes of rank <= k, whatever the score (closed-set view).
- FNIR at FPIR x: FNIR at the lowest threshold whose FPIR is at most x.

Ties are broken pessimistically for the mated: a subject tying with the mate ranks ahead of it
(so a tie at the top is a rank-2, not a hit), and the threshold for an FPIR is set just above
the non-mated score that it has to exclude, so a mate tying with that score is a miss. Where a
target FPIR is below 1 / (non-mated probes), it cannot be measured: the point is computed at
the strictest threshold (above every non-mated score) and flagged `measurable: false`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# (gallery descriptors, gallery subject labels, probe descriptors) -> (scores, subjects):
# scores[i, j] is probe i against subject j, subjects the labels of the columns.
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

FPIR_TARGETS = (1e-2, 1e-3)
RANKS = (1, 10)


def best_template_cosine(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of unit descriptors; a subject with several templates scores its
    best one (what `facetrail search` does)."""
    subjects, column = np.unique(gallery_labels, return_inverse=True)
    raw = probes @ gallery.T
    if len(subjects) == len(gallery_labels):
        out = np.empty_like(raw)
        out[:, column] = raw
        return out, subjects
    out = np.full((len(probes), len(subjects)), -np.inf, raw.dtype)
    np.maximum.at(out.T, column, raw.T)
    return out, subjects


@dataclass(frozen=True)
class ProbeOutcomes:
    """What the metrics need of each probe, whatever the scorer."""

    mated: np.ndarray  # bool per probe
    mate_score: np.ndarray  # mated probes' score against their own subject (nan for others)
    rank: np.ndarray  # mated probes' pessimistic rank (0 for non-mated)
    top_score: np.ndarray  # best score over all subjects


def outcomes_from_scores(
    scores: np.ndarray, subjects: np.ndarray, probe_labels: np.ndarray
) -> ProbeOutcomes:
    subjects = np.asarray(subjects)
    lookup = {s: i for i, s in enumerate(subjects.tolist())}
    column = np.array([lookup.get(p, -1) for p in np.asarray(probe_labels).tolist()], np.int64)
    mated = column >= 0
    n = len(column)
    mate = np.full(n, np.nan)
    rank = np.zeros(n, np.int64)
    rows = np.flatnonzero(mated)
    if len(rows):
        mate[rows] = scores[rows, column[rows]]
        # Every subject at or above the mate's score, the mate itself included: ties count
        # against the mate.
        rank[rows] = (scores[rows] >= mate[rows, None]).sum(axis=1)
    top = scores.max(axis=1) if scores.shape[1] else np.full(n, -np.inf)
    return ProbeOutcomes(mated, mate, rank, top.astype(np.float64))


def probe_outcomes(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    probe_labels: np.ndarray,
    scorer: Scorer = best_template_cosine,
    chunk: int = 2048,
) -> ProbeOutcomes:
    """Score probes in chunks (the score matrix of a large gallery is never held whole)."""
    parts = []
    for start in range(0, len(probes), chunk):
        scores, subjects = scorer(gallery, gallery_labels, probes[start : start + chunk])
        parts.append(outcomes_from_scores(scores, subjects, probe_labels[start : start + chunk]))
    if not parts:
        empty = np.zeros(0)
        return ProbeOutcomes(empty.astype(bool), empty, empty.astype(np.int64), empty)
    return ProbeOutcomes(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("mated", "mate_score", "rank", "top_score")
        )
    )


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class OperatingPoint:
    target_fpir: float
    threshold: float | None  # candidates at or above it are returned
    fpir: float | None  # achieved (at most the target)
    fnir: float | None
    measurable: bool  # False: fewer than 1 / target non-mated probes


@dataclass(frozen=True)
class Curve:
    """A DET or CMC curve as parallel lists (JSON-ready)."""

    x: list[float]
    y: list[float]
    thresholds: list[float] | None = None


@dataclass(frozen=True)
class IdentificationMetrics:
    mated_probes: int
    non_mated_probes: int
    subjects: int
    operating_points: list[OperatingPoint]
    rank_hits: dict[str, float | None]  # "1", "10" -> hit rate
    cmc: Curve  # x: rank, y: hit rate
    det: Curve  # x: FPIR, y: FNIR, thresholds

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_for_rate(impostor_scores: np.ndarray, target: float) -> tuple[float, bool]:
    """The lowest threshold t (accepting scores >= t) at which at most `target` of these
    scores are accepted, and whether the target is measurable with this many scores.

    With k = floor(target * n) acceptances allowed, t sits just above the (k+1)-th highest
    score, so a whole run of tied scores there is excluded (pessimistic for the mated).
    """
    n = len(impostor_scores)
    allowed = int(np.floor(target * n + 1e-9))  # 1e-9: 0.01 * 300 is 3, not 2.9999...
    if allowed >= n:
        return -np.inf, True
    ordered = np.sort(impostor_scores)[::-1]
    return float(np.nextafter(ordered[allowed], np.inf)), allowed >= 1


def det_curve(
    negatives: np.ndarray, positives_accepted_at: np.ndarray, n_positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, false positive rate, false negative rate) at every threshold where either
    changes. `positives_accepted_at`: the scores at or above which each positive that can be
    accepted at all is accepted (mates at rank 1 here, genuine pairs in verification);
    `n_positives` counts the others too, which are misses at every threshold."""
    neg = np.sort(negatives)
    pos = np.sort(positives_accepted_at)
    thresholds = np.unique(np.concatenate([neg, pos, [np.inf]]))
    fp = (len(neg) - np.searchsorted(neg, thresholds, side="left")) / max(len(neg), 1)
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fn = 1.0 - tp / max(n_positives, 1)
    return thresholds, fp, fn


def thin_curve(x: np.ndarray, y: np.ndarray, t: np.ndarray, max_points: int = 400) -> Curve:
    """At most `max_points` of a step curve, kept evenly in log(x) (a DET chart's axis) and
    always with both ends, so the JSON stays small while the chart keeps its shape."""
    if len(x) > max_points:
        positive = x[x > 0]
        # A rate of 0 sits just below the smallest measured one, not at an arbitrary 1e-9.
        floor = positive.min() / 2 if len(positive) else 1e-9
        grid = np.log10(np.maximum(x, floor))
        targets = np.linspace(grid.min(), grid.max(), max_points)
        order = np.argsort(grid, kind="stable")
        picks = order[np.clip(np.searchsorted(grid[order], targets), 0, len(x) - 1)]
        keep = np.unique(np.concatenate([[0, len(x) - 1], picks]))
        x, y, t = x[keep], y[keep], t[keep]
    finite = [float(v) if np.isfinite(v) else None for v in t]
    return Curve([float(v) for v in x], [float(v) for v in y], finite)  # type: ignore[arg-type]


def identification_metrics(
    outcomes: ProbeOutcomes,
    subjects: int,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
    ranks: Sequence[int] = RANKS,
    max_rank: int = 50,
) -> IdentificationMetrics:
    mated = outcomes.mated
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    non_top = outcomes.top_score[~mated]
    rank = outcomes.rank[mated]
    mate = outcomes.mate_score[mated]
    rank1_mate = mate[rank == 1]

    points = []
    for target in fpir_targets:
        if n_non == 0 or n_mated == 0:
            points.append(OperatingPoint(target, None, None, None, False))
            continue
        threshold, measurable = threshold_for_rate(non_top, target)
        fpir = float((non_top >= threshold).mean())
        fnir = 1.0 - float((rank1_mate >= threshold).sum()) / n_mated
        points.append(
            OperatingPoint(
                target, threshold if np.isfinite(threshold) else None, fpir, fnir, measurable
            )
        )

    top_rank = min(max_rank, subjects) if subjects else 0
    ks = np.arange(1, top_rank + 1)
    if n_mated:
        hits = np.searchsorted(np.sort(rank), ks, side="right") / n_mated
    else:
        hits = np.full(len(ks), np.nan)
    rank_hits: dict[str, float | None] = {}
    for k in ranks:
        if n_mated == 0 or subjects == 0:
            rank_hits[str(k)] = None
        else:
            rank_hits[str(k)] = float((rank <= k).mean())
    cmc = Curve([float(k) for k in ks], [None if np.isnan(h) else float(h) for h in hits])  # type: ignore[misc]

    if n_mated and n_non:
        t, fpir_c, fnir_c = det_curve(non_top, rank1_mate, n_mated)
        det = thin_curve(fpir_c, fnir_c, t)
    else:
        det = Curve([], [], [])
    return IdentificationMetrics(n_mated, n_non, subjects, points, rank_hits, cmc, det)


def evaluate_open_set(
    gallery: np.ndarray,
    gallery_labels: Sequence[str] | np.ndarray,
    probes: np.ndarray,
    probe_labels: Sequence[str] | np.ndarray,
    scorer: Scorer = best_template_cosine,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
    ranks: Sequence[int] = RANKS,
) -> IdentificationMetrics:
    """Score every probe against the gallery with `scorer` and measure the result."""
    g_labels = np.asarray(gallery_labels)
    outcomes = probe_outcomes(gallery, g_labels, probes, np.asarray(probe_labels), scorer)
    return identification_metrics(outcomes, len(np.unique(g_labels)), fpir_targets, ranks)
