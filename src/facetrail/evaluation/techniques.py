"""`eval identify --compare`: every score technique of issue 10 on the same descriptors.

Protocol (documented in bench/RESULTS.md):
- Cohort: the cohort must share no person with the gallery or the probes. In LFW's open-set
  protocol every person is used (gallery: people with two or more images; non-mated probes:
  people with one), so the cohort comes from the non-mated people by cross-cohort folds
  (`protocols.cohort_folds`): with 2 folds, half of the single-image people are the cohort
  while the other half are the non-mated probes, then the halves swap. The folds' outcomes are
  pooled, so every non-mated probe is scored once (2034 on LFW, as without a cohort) and every
  mated probe once per fold (each fold's mated outcome counts; FNIR is their mean). Without
  normalisation both folds score identically, so "none" equals the plain evaluation exactly.
- Templates: "1 template" is the standard protocol (one gallery image per person); fusion is
  measured on "3 templates" (up to the first three images of each person enrolled, leaving
  at least one as a mated probe), where a subject has several references to fuse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from facetrail.evaluation.identification import (
    ProbeOutcomes,
    identification_metrics,
    probe_outcomes,
)
from facetrail.evaluation.protocols import cohort_folds, open_set_split
from facetrail.vision.calibration import Calibration, fit_score_calibration, normalised_model
from facetrail.vision.normalisation import (
    CohortScorer,
    Fusion,
    Method,
    normalised_comparisons,
)


@dataclass(frozen=True)
class Variant:
    method: Method
    top_k: int | None
    fusion: Fusion
    templates: int  # gallery images per person (protocol)


@dataclass(frozen=True)
class VariantResult:
    name: str
    method: str
    top_k: int | None
    fusion: str
    templates: int
    subjects: int
    gallery_templates: int
    mated_outcomes: int  # mated probes x folds
    non_mated_probes: int
    cohort_per_fold: list[int]
    fnir_fpir_1pct: float | None
    fnir_fpir_01pct: float | None
    threshold_1pct: float | None
    threshold_01pct: float | None
    rank1: float | None

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("none", None, "max", 1),
    Variant("z-norm", 200, "max", 1),
    Variant("t-norm", 200, "max", 1),
    Variant("s-norm", None, "max", 1),
    Variant("as-norm", 50, "max", 1),
    Variant("as-norm", 100, "max", 1),
    Variant("as-norm", 200, "max", 1),
    Variant("as-norm", 400, "max", 1),
    Variant("as-norm+cosine", 50, "max", 1),
    Variant("as-norm+cosine", 200, "max", 1),
    *(
        Variant(m, k, f, 3)
        for m, k in (("none", None), ("as-norm", 200), ("as-norm+cosine", 200))
        for f in ("max", "mean", "top2-mean", "softmax")
    ),
)


def _pool(parts: list[ProbeOutcomes]) -> ProbeOutcomes:
    fields = ("mated", "mate_score", "rank", "top_score")
    return ProbeOutcomes(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def compare_techniques(
    people: dict[str, list[str]],
    vectors: dict[str, np.ndarray],
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS,
    folds: int = 2,
) -> list[VariantResult]:
    """Every variant's FNIR at FPIR 1% and 0.1% and rank-1, cross-cohort (see module)."""
    results = []
    splits = {}
    for v in variants:
        if v.templates not in splits:
            split = open_set_split(people, v.templates)
            g = np.stack([vectors[n] for n in split.gallery])
            p = np.stack([vectors[n] for n in split.probes])
            splits[v.templates] = (split, g, p, cohort_folds(split, folds))
        split, g, p, fold_idx = splits[v.templates]
        g_labels = np.asarray(split.gallery_labels)
        p_labels = np.asarray(split.probe_labels)
        mated = np.arange(split.mated)
        parts = []
        for cohort_i, non_mated_i in fold_idx:
            scorer = CohortScorer(p[cohort_i], v.method, v.top_k, v.fusion)
            rows = np.concatenate([mated, np.asarray(non_mated_i, np.int64)])
            parts.append(probe_outcomes(g, g_labels, p[rows], p_labels[rows], scorer))
        n_subjects = len(np.unique(g_labels))
        m = identification_metrics(_pool(parts), n_subjects)
        op = {pt.target_fpir: pt for pt in m.operating_points}
        results.append(
            VariantResult(
                name=CohortScorer(p[:1], v.method, v.top_k, v.fusion).__name__,
                method=v.method,
                top_k=v.top_k,
                fusion=v.fusion,
                templates=v.templates,
                subjects=n_subjects,
                gallery_templates=len(g),
                mated_outcomes=m.mated_probes,
                non_mated_probes=m.non_mated_probes,
                cohort_per_fold=[len(c) for c, _ in fold_idx],
                fnir_fpir_1pct=op[1e-2].fnir,
                fnir_fpir_01pct=op[1e-3].fnir,
                threshold_1pct=op[1e-2].threshold,
                threshold_01pct=op[1e-3].threshold,
                rank1=m.rank_hits.get("1"),
            )
        )
    return results


def table(results: list[VariantResult]) -> str:
    """A Markdown table of the results (what `--compare` prints and RESULTS.md keeps)."""
    lines = [
        "| templates | scoring | fusion | FNIR @ FPIR 1% | FNIR @ FPIR 0.1% | rank-1 |",
        "|---|---|---|---|---|---|",
    ]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in results:
        k = "" if r.top_k is None or r.method in ("none", "s-norm") else f" top {r.top_k}"
        lines.append(
            f"| {r.templates} | {r.method}{k} | {r.fusion} | {pct(r.fnir_fpir_1pct)} | "
            f"{pct(r.fnir_fpir_01pct)} | {pct(r.rank1)} |"
        )
    return "\n".join(lines)


def normalised_calibration(
    people: dict[str, list[str]],
    vectors: dict[str, np.ndarray],
    *,
    model: str,
    source: str,
    method: Method = "as-norm+cosine",
    top_k: int = 200,
    chunk: int = 1024,
) -> Calibration:
    """A calibration of AS-norm scores: every pair of images of people with two or more
    images (genuine: same person; impostor: different), each side normalised against a cohort
    of every single-image person (nobody in the pairs), as a search normalises against the
    data directory's cohort. Saved under `normalised_model(model, method)`."""
    paired = [img for imgs in people.values() if len(imgs) >= 2 for img in imgs]
    labels = np.array([img.split("/", 1)[0] for img in paired])
    cohort = np.stack([vectors[imgs[0]] for imgs in people.values() if len(imgs) == 1])
    x = np.stack([vectors[n] for n in paired])
    impostor, genuine = normalised_comparisons(x, labels, cohort, method, top_k, chunk)
    return fit_score_calibration(
        impostor,
        genuine,
        model=normalised_model(model, method),
        source=source,
    )
