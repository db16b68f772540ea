"""Demographic differentials: false match and false non-match rates per group.

Given the scores of genuine pairs (two images of one person) and impostor pairs (two people of
the same group), each group's FMR (impostor pairs scoring at or above the threshold) and FNMR
(genuine pairs below it) are measured at the operating threshold, with 95% percentile bootstrap
intervals, and compared: the ratio of the worst group's rate to the best's, and the lowest
threshold at which every group's FMR is at most a target.

Why the bootstrap resamples people, not pairs: pairs share people (one person's images appear
in many genuine and impostor pairs), so pairs are not independent and resampling them would
give intervals that are too narrow. Each replicate draws the group's people with replacement
(the people appearing in its pairs); a person drawn c times counts c times in each of their
genuine pairs, and an impostor pair of people drawn c and d times counts c * d times. A
replicate in which no pair is left (possible for tiny groups) is dropped. Groups are resampled
independently, seeded, so a run is repeatable.

Nothing here raises for thin data: an empty group, a group with nobody photographed twice
(no genuine pairs) or with fewer than two people (no impostor pairs) gets None for the rate
that cannot be measured, with the reason in `notes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from facetrail.evaluation.identification import Curve, det_curve, thin_curve, threshold_for_rate

CONFIDENCE = 0.95


@dataclass(frozen=True)
class GroupRates:
    group: str
    people: int
    images: int | None
    genuine_pairs: int
    impostor_pairs: int
    false_matches: int | None
    false_non_matches: int | None
    fmr: float | None
    fmr_ci: list[float] | None  # [low, high], 95% percentile bootstrap over people
    fnmr: float | None
    fnmr_ci: list[float] | None
    # This group's own lowest threshold with FMR <= target; `measurable`: it has at least
    # 1 / target impostor pairs, else the threshold is only "above every impostor".
    threshold_for_target: float | None
    target_measurable: bool
    det: Curve  # x: FMR, y: FNMR, thresholds
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Differential:
    """Worst over best group for one rate, among the groups where it could be measured."""

    rate: str  # "fmr" or "fnmr"
    worst_group: str | None
    worst: float | None
    best_group: str | None
    best: float | None
    ratio: float | None
    note: str | None = None


@dataclass(frozen=True)
class TargetThreshold:
    """The lowest threshold at which every measurable group's FMR is at most `target_fmr`,
    and each group's rates there."""

    target_fmr: float
    threshold: float | None
    limiting_group: str | None  # the group whose FMR sets it
    fmr: dict[str, float | None]
    fnmr: dict[str, float | None]
    measurable: bool  # every group had at least 1 / target impostor pairs
    note: str | None = None


@dataclass(frozen=True)
class BiasMetrics:
    threshold: float
    groups: list[GroupRates]
    fmr_ratio: Differential
    fnmr_ratio: Differential
    target: TargetThreshold
    bootstrap: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile_interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_rates(
    id_a: np.ndarray,
    id_b: np.ndarray,
    genuine: np.ndarray,
    error: np.ndarray,
    replicates: int,
    rng: np.random.Generator,
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of (FMR, FNMR) of one group, resampling its people (see the module notes).
    `error`: per pair, a false match (impostor) or false non-match (genuine). A rate with no
    pair left in a replicate is nan there."""
    people, local = np.unique(np.concatenate([id_a, id_b]), return_inverse=True)
    m = len(people)
    a, b = local[: len(id_a)], local[len(id_a) :]
    counts = rng.multinomial(m, np.full(m, 1.0 / m), size=replicates).astype(np.float64)
    err = error.astype(np.float64)

    # Genuine pairs: a person's pairs count as often as the person is drawn.
    g_total = np.bincount(a[genuine], minlength=m).astype(np.float64)
    g_errors = np.bincount(a[genuine], weights=err[genuine], minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        fnmr = (counts @ g_errors) / (counts @ g_total)

    # Impostor pairs: grouped by (person, person), weighted by both people's draw counts.
    imp = ~genuine
    lo, hi = np.minimum(a[imp], b[imp]), np.maximum(a[imp], b[imp])
    codes, inverse = np.unique(lo * m + hi, return_inverse=True)
    p, q = codes // m, codes % m
    n_pq = np.bincount(inverse, minlength=len(codes)).astype(np.float64)
    e_pq = np.bincount(inverse, weights=err[imp], minlength=len(codes))
    wrong = e_pq > 0
    denominator = np.zeros(replicates)
    for start in range(0, replicates, chunk):
        c = counts[start : start + chunk]
        denominator[start : start + chunk] = (c[:, p] * c[:, q]) @ n_pq
    numerator = (counts[:, p[wrong]] * counts[:, q[wrong]]) @ e_pq[wrong]
    with np.errstate(invalid="ignore", divide="ignore"):
        fmr = numerator / denominator
    return fmr, fnmr


def _group_rates(
    name: str,
    scores: np.ndarray,
    genuine: np.ndarray,
    id_a: np.ndarray,
    id_b: np.ndarray,
    people: int,
    images: int | None,
    threshold: float,
    target_fmr: float,
    replicates: int,
    rng: np.random.Generator,
) -> GroupRates:
    imp_scores, gen_scores = scores[~genuine], scores[genuine]
    notes = []
    if images == 0 or (images is None and not len(scores)):
        notes.append("no labelled images of this group")
    if not len(gen_scores):
        notes.append("no genuine pairs: nobody in this group has two images")
    if not len(imp_scores):
        notes.append("no impostor pairs: this group has fewer than two people")
    false_match = imp_scores >= threshold
    false_non_match = gen_scores < threshold
    fmr = float(false_match.mean()) if len(imp_scores) else None
    fnmr = float(false_non_match.mean()) if len(gen_scores) else None
    fmr_ci = fnmr_ci = None
    if len(scores) and replicates > 0:
        error = np.where(genuine, scores < threshold, scores >= threshold)
        fmr_reps, fnmr_reps = bootstrap_rates(id_a, id_b, genuine, error, replicates, rng)
        fmr_ci = _percentile_interval(fmr_reps) if fmr is not None else None
        fnmr_ci = _percentile_interval(fnmr_reps) if fnmr is not None else None
    own, measurable = (None, False)
    if len(imp_scores):
        t, measurable = threshold_for_rate(imp_scores, target_fmr)
        own = t if np.isfinite(t) else None
    if len(imp_scores) and len(gen_scores):
        t_c, fmr_c, fnmr_c = det_curve(imp_scores, gen_scores, len(gen_scores))
        det = thin_curve(fmr_c, fnmr_c, t_c)
    else:
        det = Curve([], [], [])
    return GroupRates(
        group=name,
        people=people,
        images=images,
        genuine_pairs=len(gen_scores),
        impostor_pairs=len(imp_scores),
        false_matches=int(false_match.sum()) if fmr is not None else None,
        false_non_matches=int(false_non_match.sum()) if fnmr is not None else None,
        fmr=fmr,
        fmr_ci=fmr_ci,
        fnmr=fnmr,
        fnmr_ci=fnmr_ci,
        threshold_for_target=own,
        target_measurable=measurable,
        det=det,
        notes=notes,
    )


def differential(groups: list[GroupRates], rate: str) -> Differential:
    measured = [(g.group, getattr(g, rate)) for g in groups if getattr(g, rate) is not None]
    if len(measured) < 2:
        return Differential(rate, None, None, None, None, None, "fewer than two groups measured")
    worst = max(measured, key=lambda item: item[1])
    best = min(measured, key=lambda item: item[1])
    if best[1] > 0:
        ratio, note = worst[1] / best[1], None
    elif worst[1] == 0:
        ratio, note = None, "no group has any error at this threshold"
    else:
        ratio, note = None, f"{best[0]} has no error at this threshold: the ratio is unbounded"
    return Differential(rate, worst[0], worst[1], best[0], best[1], ratio, note)


def target_threshold(
    groups: list[GroupRates],
    scores: np.ndarray,
    genuine: np.ndarray,
    group: np.ndarray,
    target_fmr: float,
) -> TargetThreshold:
    candidates = [g for g in groups if g.impostor_pairs]
    if not candidates:
        return TargetThreshold(target_fmr, None, None, {}, {}, False, "no group has impostor pairs")
    # A group whose impostors never reach the target has threshold -inf (None): it sets no bar.
    own = [(g.threshold_for_target, g) for g in candidates]
    finite = [(t, g) for t, g in own if t is not None]
    if finite:
        threshold, limiting = max(finite, key=lambda item: item[0])
    else:
        threshold, limiting = -np.inf, None
    fmr: dict[str, float | None] = {}
    fnmr: dict[str, float | None] = {}
    for i, g in enumerate(groups):
        imp = (group == i) & ~genuine
        gen = (group == i) & genuine
        fmr[g.group] = float((scores[imp] >= threshold).mean()) if imp.any() else None
        fnmr[g.group] = float((scores[gen] < threshold).mean()) if gen.any() else None
    measurable = all(g.target_measurable for g in candidates)
    left_out = [g.group for g in groups if not g.impostor_pairs]
    note = f"not constrained (no impostor pairs): {', '.join(left_out)}" if left_out else None
    return TargetThreshold(
        target_fmr,
        float(threshold) if np.isfinite(threshold) else None,
        limiting.group if limiting is not None else None,
        fmr,
        fnmr,
        measurable,
        note,
    )


def bias_metrics(
    scores: np.ndarray,
    genuine: np.ndarray,
    group: np.ndarray,
    id_a: np.ndarray,
    id_b: np.ndarray,
    group_names: Sequence[str],
    *,
    threshold: float,
    target_fmr: float,
    people: Sequence[int] | None = None,
    images: Sequence[int] | None = None,
    replicates: int = 1000,
    seed: int = 0,
) -> BiasMetrics:
    """Per-group rates of pair scores. `group[i]` indexes `group_names`; `id_a`, `id_b` are
    the people compared by pair i; `people`, `images`: per group, for the report (default:
    people counted from the pairs, images unknown)."""
    genuine = np.asarray(genuine, bool)
    rng = np.random.default_rng(seed)
    groups = []
    for i, name in enumerate(group_names):
        sel = group == i
        ids = np.unique(np.concatenate([id_a[sel], id_b[sel]]))
        n_people = people[i] if people is not None else len(ids)
        n_images = images[i] if images is not None else None
        groups.append(
            _group_rates(
                name,
                scores[sel],
                genuine[sel],
                id_a[sel],
                id_b[sel],
                n_people,
                n_images,
                threshold,
                target_fmr,
                replicates,
                rng,
            )
        )
    return BiasMetrics(
        threshold=float(threshold),
        groups=groups,
        fmr_ratio=differential(groups, "fmr"),
        fnmr_ratio=differential(groups, "fnmr"),
        target=target_threshold(groups, scores, genuine, group, target_fmr),
        bootstrap={
            "replicates": replicates,
            "seed": seed,
            "confidence": CONFIDENCE,
            "method": "percentile",
            "unit": "person",
        },
    )
