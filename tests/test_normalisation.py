"""Score normalisation and template fusion (issue 10): the maths on hand-computed fixtures,
the cross-cohort protocol, and the calibration of normalised scores."""

from __future__ import annotations

import numpy as np
import pytest

from facetrail.evaluation.identification import best_template_cosine
from facetrail.evaluation.protocols import cohort_folds, open_set_split
from facetrail.vision.calibration import fit_score_calibration
from facetrail.vision.normalisation import (
    SOFTMAX_BETA,
    CohortScorer,
    CohortStats,
    cohort_stats,
    fuse_templates,
    normalise_pairs,
    normalise_scores,
    normalised_comparisons,
    top_k_rows,
)


def test_cohort_stats_of_the_top_k_by_hand() -> None:
    # Scores of [1, 0] against the cohort: 1, 0, 0.6 -> top 2: {1, 0.6}: mean 0.8, std 0.2.
    cohort = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    stats = cohort_stats(np.array([[1.0, 0.0]]), cohort, top_k=2)
    assert stats.mean == pytest.approx([0.8])
    assert stats.std == pytest.approx([0.2])
    # All of them (s-norm): mean 1.6 / 3, population std.
    every = cohort_stats(np.array([[1.0, 0.0]]), cohort, top_k=None)
    assert every.mean == pytest.approx([1.6 / 3])
    assert every.std == pytest.approx([np.std([1.0, 0.0, 0.6])])
    assert sorted(top_k_rows(np.array([[3.0, 1.0, 2.0]]), 2)[0]) == [2.0, 3.0]


def test_identical_cohort_faces_do_not_divide_by_zero() -> None:
    stats = cohort_stats(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]] * 3), top_k=2)
    assert stats.std[0] > 0 and np.isfinite(stats.std).all()


def test_z_t_and_as_norm_by_hand() -> None:
    raw = np.array([[0.9, 0.7]])
    probe = CohortStats(np.array([0.8]), np.array([0.2]))
    gallery = CohortStats(np.array([0.5, 0.6]), np.array([0.1, 0.05]))
    # z = (0.9 - 0.8) / 0.2 = 0.5, (0.7 - 0.8) / 0.2 = -0.5
    assert normalise_scores(raw, "z-norm", probe, None) == pytest.approx(np.array([[0.5, -0.5]]))
    # t = (0.9 - 0.5) / 0.1 = 4, (0.7 - 0.6) / 0.05 = 2
    assert normalise_scores(raw, "t-norm", None, gallery) == pytest.approx(np.array([[4.0, 2.0]]))
    # as-norm: the mean of both
    assert normalise_scores(raw, "as-norm", probe, gallery) == pytest.approx(
        np.array([[2.25, 0.75]])
    )
    # as-norm + cosine: 2.25 + 70 x 0.9 = 65.25, 0.75 + 70 x 0.7 = 49.75
    hybrid = normalise_scores(raw, "as-norm+cosine", probe, gallery)
    assert hybrid == pytest.approx(np.array([[65.25, 49.75]]))
    assert normalise_scores(raw, "none", None, None) == pytest.approx(raw)
    with pytest.raises(ValueError, match="probes' cohort statistics"):
        normalise_scores(raw, "as-norm", None, gallery)


def test_fusion_across_a_subjects_templates_by_hand() -> None:
    # Subject 0 has three templates (0.2, 0.9, 0.5), subject 1 one (0.4), subject 2 none.
    scores = np.array([[0.2, 0.9, 0.5, 0.4]])
    cols = np.array([0, 0, 0, 1])
    assert fuse_templates(scores, cols, 3, "max")[0] == pytest.approx([0.9, 0.4, -np.inf])
    assert fuse_templates(scores, cols, 3, "mean")[0] == pytest.approx([1.6 / 3, 0.4, -np.inf])
    assert fuse_templates(scores, cols, 3, "top2-mean")[0] == pytest.approx([0.7, 0.4, -np.inf])
    w = np.exp(SOFTMAX_BETA * np.array([0.2, 0.9, 0.5]))
    soft = float((w * [0.2, 0.9, 0.5]).sum() / w.sum())
    assert fuse_templates(scores, cols, 3, "softmax")[0] == pytest.approx([soft, 0.4, -np.inf])
    # Two templates tying for best: the runner-up is the best itself.
    tied = fuse_templates(np.array([[0.9, 0.1, 0.9]]), np.array([0, 0, 0]), 1, "top2-mean")
    assert tied[0] == pytest.approx([0.9])
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_templates(scores, cols, 3, "median")  # type: ignore[arg-type]


def test_unnormalised_max_scorer_is_the_search_rule() -> None:
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(30, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    gallery, probes, cohort = unit[:10], unit[10:20], unit[20:]
    labels = np.array(list("aabbcdefgh"))
    expected, subjects = best_template_cosine(gallery, labels, probes)
    got, got_subjects = CohortScorer(cohort, "none", None, "max")(gallery, labels, probes)
    assert list(got_subjects) == list(subjects)
    assert got == pytest.approx(expected, abs=1e-6)
    # AS-norm of one template is the hand formula on its own statistics.
    scorer = CohortScorer(cohort, "as-norm", 4, "max")
    normed, _ = scorer(gallery[4:5], labels[4:5], probes[:1])
    p, g = cohort_stats(probes[:1], cohort, 4), cohort_stats(gallery[4:5], cohort, 4)
    raw = float(probes[0] @ gallery[4])
    by_hand = 0.5 * ((raw - p.mean[0]) / p.std[0] + (raw - g.mean[0]) / g.std[0])
    assert normed[0, 0] == pytest.approx(by_hand, rel=1e-5)


def test_cross_cohort_folds_keep_cohort_and_probes_apart() -> None:
    people = {
        "a": ["a/1", "a/2", "a/3", "a/4"],
        "b": ["b/1", "b/2"],
        **{f"s{i}": [f"s{i}/1"] for i in range(5)},
    }
    split = open_set_split(people)
    assert split.gallery == ["a/1", "b/1"] and split.mated == 4
    three = open_set_split(people, templates=3)
    # a keeps one image as a probe; b (two images) enrols one.
    assert three.gallery == ["a/1", "a/2", "a/3", "b/1"]
    assert three.probes[: three.mated] == ["a/4", "b/2"]
    folds = cohort_folds(split, 2)
    seen: list[int] = []
    for cohort, probes in folds:
        assert not set(cohort) & set(probes)
        assert all(i >= split.mated for i in cohort + probes)  # single-image people only
        seen += probes
    assert sorted(seen) == list(range(split.mated, len(split.probes)))  # each once


def test_calibration_of_scores_on_any_scale() -> None:
    impostor = np.arange(1000, dtype=np.float64)  # 0 .. 999: FMR(990) = 10 / 1000
    genuine = np.arange(1000, 2000, dtype=np.float64)
    cal = fit_score_calibration(impostor, genuine, model="m+as-norm", source="test")
    assert cal.threshold_for(1e-2) == pytest.approx(990, abs=1.0)
    assert float(cal.fmr(995.0)) == pytest.approx(5e-3, rel=0.3)
    assert float(cal.fmr(5000.0)) == pytest.approx(1e-3)  # beyond: bounded, 1 / impostors


def test_compare_techniques_without_normalisation_is_the_plain_evaluation() -> None:
    from facetrail.evaluation.identification import evaluate_open_set
    from facetrail.evaluation.techniques import DEFAULT_VARIANTS, compare_techniques, table

    rng = np.random.default_rng(1)
    people: dict[str, list[str]] = {}
    vectors: dict[str, np.ndarray] = {}
    for i in range(40):
        centre = rng.normal(size=16)
        n = 1 if i % 2 else 1 + i % 5  # half the people have a single image
        people[f"p{i:02d}"] = [f"p{i:02d}/{j}" for j in range(n)]
        for name in people[f"p{i:02d}"]:
            v = centre + 0.6 * rng.normal(size=16)
            vectors[name] = (v / np.linalg.norm(v)).astype(np.float32)
    results = compare_techniques(people, vectors)
    assert len(results) == len(DEFAULT_VARIANTS)
    split = open_set_split(people)
    plain = evaluate_open_set(
        np.stack([vectors[n] for n in split.gallery]),
        split.gallery_labels,
        np.stack([vectors[n] for n in split.probes]),
        split.probe_labels,
    )
    none = results[0]
    assert (none.method, none.templates) == ("none", 1)
    # Pooled over two cohort folds: every non-mated probe once, every mated one twice.
    assert none.non_mated_probes == plain.non_mated_probes
    assert none.mated_outcomes == 2 * plain.mated_probes
    assert none.fnir_fpir_1pct == pytest.approx(plain.operating_points[0].fnir)
    assert none.rank1 == pytest.approx(plain.rank_hits["1"])
    assert sum(none.cohort_per_fold) == plain.non_mated_probes  # each single once a cohort
    assert "as-norm+cosine top 200" in table(results)


@pytest.mark.parametrize("method", ["z-norm", "t-norm", "s-norm", "as-norm", "as-norm+cosine"])
def test_listed_pairs_and_all_pairs_normalise_alike(method: str) -> None:
    """`normalise_pairs` (a list of comparisons, as `calibrate --labels pairs.csv` has) gives
    each pair the score `normalise_scores` gives it in the full matrix, and
    `normalised_comparisons` (every pair of a labelled set) splits that matrix's upper
    triangle into impostor and genuine scores."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cohort = rng.normal(size=(30, 8)).astype(np.float32)
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    k = None if method == "s-norm" else 5
    stats = cohort_stats(x, cohort, k)
    matrix = normalise_scores((x @ x.T).astype(np.float64), method, stats, stats)
    a, b = np.triu_indices(len(x), k=1)
    raw = (x[a] * x[b]).sum(axis=1).astype(np.float64)
    listed = normalise_pairs(raw, method, stats.take(a), stats.take(b))
    np.testing.assert_allclose(listed, matrix[a, b], rtol=1e-6, atol=1e-6)
    labels = np.repeat(np.arange(4), 3)
    impostor, genuine = normalised_comparisons(x, labels, cohort, method, k, chunk=5)
    same = labels[a] == labels[b]
    np.testing.assert_allclose(np.sort(genuine), np.sort(matrix[a, b][same]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.sort(impostor), np.sort(matrix[a, b][~same]), rtol=1e-5, atol=1e-5
    )
