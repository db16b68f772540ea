"""Open-set 1:N identification: metrics against values worked out by hand on a small score
matrix (with ties), the LFW-layout split, and `facetrail eval identify` on a few real people."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import Team
from facetrail.evaluation.identification import (
    best_template_cosine,
    evaluate_open_set,
    threshold_for_rate,
)
from facetrail.evaluation.protocols import open_set_split

# Subjects A, B, C; four mated probes, then four non-mated (people D-G, not enrolled).
SUBJECTS = np.array(["A", "B", "C"])
SCORES = np.array(
    [
        [0.90, 0.50, 0.40],  # A: mate 0.90, rank 1
        [0.60, 0.70, 0.10],  # A: mate 0.60, rank 2
        [0.30, 0.80, 0.80],  # B: mate 0.80 ties with C: rank 2 (pessimistic)
        [0.20, 0.10, 0.75],  # C: mate 0.75, rank 1, ties the second non-mated top score
        [0.85, 0.20, 0.10],  # non-mated, top 0.85
        [0.30, 0.75, 0.20],  # non-mated, top 0.75
        [0.50, 0.40, 0.60],  # non-mated, top 0.60
        [0.10, 0.20, 0.30],  # non-mated, top 0.30
    ]
)
PROBE_LABELS = ["A", "A", "B", "C", "D", "E", "F", "G"]


def table_scorer(gallery, gallery_labels, probes):
    """A scorer that looks the scores up: each probe 'descriptor' is its row number."""
    return SCORES[probes[:, 0].astype(int)], SUBJECTS


def evaluate(targets=(0.1, 0.25, 0.5), labels=PROBE_LABELS, rows=None):
    rows = np.arange(len(SCORES)) if rows is None else np.asarray(rows)
    probes = rows[:, None].astype(np.float64)
    gallery = np.zeros((3, 1))
    return evaluate_open_set(
        gallery, SUBJECTS, probes, np.array(labels)[rows], table_scorer, fpir_targets=targets
    )


def test_counts_ranks_and_cmc_by_hand() -> None:
    m = evaluate()
    assert (m.mated_probes, m.non_mated_probes, m.subjects) == (4, 4, 3)
    # Ranks 1, 2, 2, 1: the tie at 0.80 puts B's mate second.
    assert m.rank_hits == {"1": 0.5, "10": 1.0}
    assert m.cmc.x == [1.0, 2.0, 3.0]
    assert m.cmc.y == [0.5, 1.0, 1.0]


def test_fnir_at_fpir_by_hand_with_ties_against_the_mated() -> None:
    low, quarter, half = evaluate().operating_points
    # FPIR 0.25 of 4 non-mated: one may pass, so the threshold sits just above the second
    # highest non-mated top score (0.75). C's mate ties 0.75 and is a miss; only A's 0.90
    # (rank 1) is found: FNIR 3/4.
    assert quarter.threshold == np.nextafter(0.75, 1)
    assert (quarter.fpir, quarter.fnir, quarter.measurable) == (0.25, 0.75, True)
    # FPIR 0.5: above 0.60; A's 0.90 and C's 0.75 found (A's 0.60 mate is rank 2 anyway).
    assert quarter.threshold > half.threshold == np.nextafter(0.60, 1)
    assert (half.fpir, half.fnir) == (0.5, 0.5)
    # FPIR 0.1 needs 10 non-mated probes to measure: strictest threshold, flagged.
    assert low.threshold == np.nextafter(0.85, 1)
    assert (low.fpir, low.fnir, low.measurable) == (0.0, 0.75, False)


def test_det_curve_holds_the_hand_computed_points() -> None:
    m = evaluate()
    points = set(zip(m.det.x, m.det.y, strict=True))
    assert {(0.25, 0.75), (0.5, 0.5), (0.0, 0.75), (1.0, 0.5)} <= points
    assert m.det.x[-1] == 0.0 and m.det.y[-1] == 1.0  # above every score: nothing returned
    assert m.det.thresholds[-1] is None  # +inf is not JSON


def test_probes_are_scored_in_chunks_with_the_same_result() -> None:
    from facetrail.evaluation import identification

    whole = evaluate()
    gallery = np.zeros((3, 1))
    probes = np.arange(8)[:, None].astype(np.float64)
    outcomes = identification.probe_outcomes(
        gallery, SUBJECTS, probes, np.array(PROBE_LABELS), table_scorer, chunk=3
    )
    chunked = identification.identification_metrics(outcomes, 3, (0.1, 0.25, 0.5))
    assert chunked == whole


def test_without_non_mated_probes_fnir_at_fpir_is_null_not_an_error() -> None:
    m = evaluate(rows=[0, 1, 2, 3])
    assert all(p.fnir is None and p.threshold is None for p in m.operating_points)
    assert m.rank_hits["1"] == 0.5
    assert m.det.x == []


def test_threshold_for_rate_excludes_a_whole_run_of_ties() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    threshold, measurable = threshold_for_rate(scores, 0.2)  # one of five may pass
    assert threshold == np.nextafter(0.8, 1) and measurable
    assert (scores >= threshold).sum() == 1
    threshold, _ = threshold_for_rate(scores, 0.4)  # two may pass, but 0.8 is a run of three
    assert (scores >= threshold).sum() == 1
    assert threshold_for_rate(scores, 1.0)[0] == -np.inf


def test_best_template_cosine_takes_a_subjects_best_template() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = np.array(["B", "A", "B"])
    probes = np.array([[0.8, 0.6], [0.0, 1.0]])
    scores, subjects = best_template_cosine(gallery, labels, probes)
    assert subjects.tolist() == ["A", "B"]
    np.testing.assert_allclose(scores, [[0.6, 0.96], [1.0, 0.8]])


def test_open_set_split_of_an_lfw_layout() -> None:
    people = {
        "Ann": ["Ann/1.jpg", "Ann/2.jpg", "Ann/3.jpg"],
        "Bob": ["Bob/1.jpg"],
        "Cy": ["Cy/1.jpg", "Cy/2.jpg"],
    }
    split = open_set_split(people)
    assert split.gallery == ["Ann/1.jpg", "Cy/1.jpg"]
    assert split.probes == ["Ann/2.jpg", "Ann/3.jpg", "Cy/2.jpg", "Bob/1.jpg"]
    assert split.probe_labels == ["Ann", "Ann", "Cy", "Bob"]
    assert (split.mated, split.non_mated) == (3, 1)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def lfw(shared_data: Path) -> Path:
    root = shared_data / "lfw"
    if not (root / "pairs.txt").is_file():
        pytest.skip("LFW is not in the shared data")
    return root


def test_eval_identify_command_on_real_people(lfw: Path, team: Team, tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, **team.env("auditor")}
    cmd = [sys.executable, "-m", "facetrail", "eval", "identify", str(lfw), "--limit", "60"]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON document
    assert report["people"] == 60
    assert (
        report["gallery"] + report["mated_probes"] + report["non_mated_probes"] == report["images"]
    )
    assert report["mated_probes"] > 0 and report["non_mated_probes"] > 0
    assert report["rank_hits"]["1"] >= 0.8  # a few dozen people: nearly all found first
    assert [p["target_fpir"] for p in report["fnir_at_fpir"]] == [0.01, 0.001]
    assert report["descriptors"]["described"] == report["images"]
    assert json.loads((out / "identify.json").read_text()) == report
    for name in ("identify_cmc.png", "identify_det.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second run describes nothing: the descriptors are cached in the output folder.
    again = subprocess.run(
        [*cmd, "--out", str(out), "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    second = json.loads(again.stdout)
    assert second["descriptors"]["cached"] == report["images"]
    assert second["fnir_at_fpir"] == report["fnir_at_fpir"]
    # An investigator may not run evaluations.
    denied = subprocess.run(
        [*cmd, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **team.env("investigator")},
        timeout=120,
    )
    assert denied.returncode == 10 and denied.stderr.count("\n") == 1


def test_eval_identify_refuses_a_folder_without_people(team: Team, tmp_path: Path) -> None:
    env = {**os.environ, **team.env("auditor")}
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", "eval", "identify", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["type"] == "InvalidInputError"
