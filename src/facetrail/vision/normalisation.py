"""Score normalisation against a cohort, and fusion of a subject's templates (issue 10).

A raw cosine score says how alike two faces are, but not how unusual that likeness is for
*these* two faces: some faces (a "hub" in the gallery, a blurred probe) score high against
everybody. Normalising a score against a cohort (faces of people who are not subjects) asks
instead how far the score stands out from what each side scores against strangers:

- Z-norm (probe side): (s - mean_p) / std_p, with the probe's scores against the cohort.
- T-norm (gallery side): (s - mean_g) / std_g, with the template's scores against the cohort.
- S-norm: the average of both, with all cohort scores.
- AS-norm (adaptive S-norm): the average of both, each side's statistics taken over its
  `top_k` highest cohort scores only, so they describe the look-alikes, which are what an
  impostor score has to beat (Cumani et al. 2011, Matejka et al. 2017).
- AS-norm + cosine: AS-norm plus `COSINE_WEIGHT` times the raw cosine. AS-norm alone forgets
  how alike the two faces are in absolute terms: a probe and a template that both sit in a
  sparse region of face space can stand out from their cohorts with a middling cosine. Adding
  the cosine back (a fixed linear fusion of the two scores) keeps both kinds of evidence.

The gallery side's statistics depend only on the template and the cohort, so they are
computed once per template (`cohort_stats`) and kept with the gallery; a search computes the
probe side's (one matrix product with the cohort, the size of a search against a gallery of
that many people). Measured on LFW (bench/RESULTS.md, issue 10): AS-norm is the best of the
pure normalisations, S-norm (all cohort scores) is worse than none, and AS-norm + cosine is
best at FPIR 1% (the weight was chosen on that data: any weight from 50 to 150 does as well).

Fusion turns the scores of a subject's templates into one subject score: `max` (the search's
historical rule), `mean`, `top2-mean` (mean of the best two) and `softmax` (a soft maximum).

Everything is vectorised numpy; the inputs are unit descriptors (float32 or float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["none", "z-norm", "t-norm", "s-norm", "as-norm", "as-norm+cosine"]
METHODS: tuple[Method, ...] = ("none", "z-norm", "t-norm", "s-norm", "as-norm", "as-norm+cosine")
Fusion = Literal["max", "mean", "top2-mean", "softmax"]
FUSIONS: tuple[Fusion, ...] = ("max", "mean", "top2-mean", "softmax")
DEFAULT_TOP_K = 200
# A std below this (a cohort of identical faces, or of one face) would blow a score up to
# infinity; it is far below any std measured on real cohorts (about 0.02 for dlib cosine).
MIN_STD = 1e-4
SOFTMAX_BETA = 50.0  # on cosine scores: a 0.02 lead weighs e times more
# AS-norm + cosine: AS-norm scores spread over a few units, impostor cosines near the top over
# a few hundredths, so 70 gives the two about equal say (LFW: 50 to 150 measure alike).
COSINE_WEIGHT = 70.0


@dataclass(frozen=True)
class CohortStats:
    """Per row (a probe or a template): mean and std of its top-k cohort scores."""

    mean: np.ndarray  # (n,) float64
    std: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.mean)

    def take(self, rows: np.ndarray) -> CohortStats:
        return CohortStats(self.mean[rows], self.std[rows])

    @classmethod
    def concat(cls, parts: list[CohortStats]) -> CohortStats:
        if not parts:
            return cls(np.zeros(0), np.zeros(0))
        return cls(np.concatenate([p.mean for p in parts]), np.concatenate([p.std for p in parts]))


def top_k_rows(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Each row's `k` highest values (unordered); all of them when k is None or >= width."""
    if k is None or k >= scores.shape[1]:
        return scores
    if k < 1:
        raise ValueError("top_k must be at least 1")
    # argpartition is O(n) per row: no full sort of thousands of cohort scores.
    return -np.partition(-scores, k - 1, axis=1)[:, :k]


def cohort_stats(
    vectors: np.ndarray, cohort: np.ndarray, top_k: int | None = DEFAULT_TOP_K, chunk: int = 4096
) -> CohortStats:
    """Mean and std of each vector's `top_k` highest cosine scores against the cohort
    (None: all of them). Chunked, so a large gallery never holds the whole matrix."""
    n = len(vectors)
    mean, std = np.zeros(n), np.zeros(n)
    if len(cohort) == 0:
        raise ValueError("an empty cohort has no statistics")
    c = np.asarray(cohort, np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(vectors[start : start + chunk], np.float32) @ c.T
        top = top_k_rows(block, top_k)  # summed in float64 below, without a float64 copy
        mean[start : start + chunk] = top.mean(axis=1, dtype=np.float64)
        std[start : start + chunk] = top.std(axis=1, dtype=np.float64)
    return CohortStats(mean, np.maximum(std, MIN_STD))


def normalise_scores(
    raw: np.ndarray,
    method: Method,
    probe: CohortStats | None,
    gallery: CohortStats | None,
) -> np.ndarray:
    """Normalised scores of a (probes x templates) raw score matrix.

    `probe` holds one row of statistics per probe, `gallery` one per template (column); for
    s-norm both must have been computed with all cohort scores (top_k None), for the others
    with the method's top_k. "none" returns the raw scores.
    """
    p = None if probe is None else (probe.mean[:, None], probe.std[:, None])
    g = None if gallery is None else (gallery.mean[None, :], gallery.std[None, :])
    return normalise_with(np.asarray(raw, np.float64), method, p, g)


def normalise_pairs(raw: np.ndarray, method: Method, a: CohortStats, b: CohortStats) -> np.ndarray:
    """Normalised scores of n listed comparisons: raw[i] compares a face with statistics
    a[i] (the probe side) to one with b[i] (the template side)."""
    return normalise_with(np.asarray(raw, np.float64), method, (a.mean, a.std), (b.mean, b.std))


def normalise_with(
    s: np.ndarray,
    method: Method,
    probe: tuple[np.ndarray, np.ndarray] | None,
    gallery: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """The formulas of the module docstring, on (mean, std) arrays that broadcast to `s`."""
    if method == "none":
        return s
    z = t = None
    if method in ("z-norm", "s-norm", "as-norm", "as-norm+cosine"):
        if probe is None:
            raise ValueError(f"{method} needs the probes' cohort statistics")
        z = (s - probe[0]) / probe[1]
    if method in ("t-norm", "s-norm", "as-norm", "as-norm+cosine"):
        if gallery is None:
            raise ValueError(f"{method} needs the templates' cohort statistics")
        t = (s - gallery[0]) / gallery[1]
    if method == "as-norm+cosine":
        assert z is not None and t is not None
        return 0.5 * (z + t) + COSINE_WEIGHT * s
    if z is not None and t is not None:
        return 0.5 * (z + t)
    out = z if z is not None else t
    assert out is not None
    return out


def normalised_comparisons(
    vectors: np.ndarray,
    labels: np.ndarray,
    cohort: np.ndarray,
    method: Method,
    top_k: int | None = DEFAULT_TOP_K,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """(impostor, genuine) normalised scores of every pair of `vectors` (unit descriptors),
    genuine where the labels agree, each side normalised against `cohort` as a search
    normalises a probe and a template: what a calibration of normalised scores is fitted on."""
    x = np.asarray(vectors, np.float32)
    stats = cohort_stats(x, cohort, top_k)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    imp: list[np.ndarray] = []
    gen: list[np.ndarray] = []
    n = len(x)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        normed = normalise_scores(
            (x[rows] @ x.T).astype(np.float64), method, stats.take(rows), stats
        )
        upper = np.arange(n)[None, :] > rows[:, None]  # each unordered pair once
        same = codes[rows][:, None] == codes[None, :]
        imp.append(normed[upper & ~same].astype(np.float32))
        gen.append(normed[upper & same].astype(np.float32))
    return np.concatenate(imp), np.concatenate(gen)


def fuse_templates(
    scores: np.ndarray, columns: np.ndarray, n_subjects: int, fusion: Fusion = "max"
) -> np.ndarray:
    """(probes x templates) scores -> (probes x subjects): template j belongs to subject
    `columns[j]` (0 .. n_subjects - 1). A subject without a template scores -inf.

    - max: the best template (one good reference is enough; a bad one cannot hurt).
    - mean: every template counts equally (a bad reference pulls the subject down).
    - top2-mean: the mean of the best two (one template: that one), between the two.
    - softmax: sum of s * w with w = softmax(beta * s) over the subject's templates, a soft
      maximum that still lets a second good template add a little evidence.
    """
    s = np.asarray(scores, np.float64)
    cols = np.asarray(columns, np.int64)
    n = s.shape[0]
    out = np.full((n, n_subjects), -np.inf)
    if s.shape[1] == 0:
        return out
    counts = np.bincount(cols, minlength=n_subjects)
    if fusion == "max" or counts.max() == 1:
        np.maximum.at(out.T, cols, s.T)
        return out
    if fusion == "mean":
        sums = np.zeros((n, n_subjects))
        np.add.at(sums.T, cols, s.T)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
        return out
    if fusion == "top2-mean":
        first = np.full((n, n_subjects), -np.inf)
        np.maximum.at(first.T, cols, s.T)
        at_best = s >= first[:, cols]
        # Two templates tying for best: the runner-up is the best itself.
        ties = np.zeros((n, n_subjects))
        np.add.at(ties.T, cols, at_best.T.astype(np.float64))
        second = np.full((n, n_subjects), -np.inf)
        np.maximum.at(second.T, cols, np.where(at_best, -np.inf, s).T)
        second = np.where(ties >= 2, first, second)
        return np.where(np.isfinite(second), 0.5 * (first + second), first)
    if fusion == "softmax":
        first = np.full((n, n_subjects), -np.inf)
        np.maximum.at(first.T, cols, s.T)
        # Subtract each subject's max before exp: no overflow, same weights.
        w = np.exp(SOFTMAX_BETA * (s - first[:, cols]))
        num = np.zeros((n, n_subjects))
        den = np.zeros((n, n_subjects))
        np.add.at(num.T, cols, (w * s).T)
        np.add.at(den.T, cols, w.T)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), -np.inf)
    raise ValueError(f"unknown fusion {fusion!r}: one of {', '.join(FUSIONS)}")


@dataclass(frozen=True)
class CohortScorer:
    """A `Scorer` for `evaluate_open_set`: cosine scores, normalised against `cohort` by
    `method`, fused per subject by `fusion`. The gallery's statistics are computed once per
    gallery array (as the search keeps them per template), the probes' per call."""

    cohort: np.ndarray
    method: Method = "as-norm"
    top_k: int | None = DEFAULT_TOP_K
    fusion: Fusion = "max"

    @property
    def __name__(self) -> str:  # what the report calls this scorer
        k = "" if self.method in ("none", "s-norm") else f"-top{self.top_k}"
        return f"{self.method}{k}/{self.fusion}"

    def _k(self) -> int | None:
        return None if self.method == "s-norm" else self.top_k

    def __call__(
        self, gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        subjects, column = np.unique(gallery_labels, return_inverse=True)
        raw = np.asarray(probes, np.float32) @ np.asarray(gallery, np.float32).T
        g_stats = p_stats = None
        if self.method != "none":
            g_stats = _gallery_stats(self, gallery)
            p_stats = cohort_stats(probes, self.cohort, self._k())
        scores = normalise_scores(raw, self.method, p_stats, g_stats)
        return fuse_templates(scores, column, len(subjects), self.fusion), subjects


_GALLERY_CACHE: list[tuple[np.ndarray, np.ndarray, int | None, CohortStats]] = []


def _gallery_stats(scorer: CohortScorer, gallery: np.ndarray) -> CohortStats:
    # An evaluation scores many probe chunks against one gallery: its statistics are kept for
    # the latest (gallery, cohort) pair only. The entry holds the arrays themselves, so an
    # identity test cannot be fooled by a new array at a freed one's address.
    k = scorer._k()
    for g, c, kk, stats in _GALLERY_CACHE:
        if g is gallery and c is scorer.cohort and kk == k:
            return stats
    stats = cohort_stats(gallery, scorer.cohort, k)
    _GALLERY_CACHE[:] = [(gallery, scorer.cohort, k, stats)]
    return stats
