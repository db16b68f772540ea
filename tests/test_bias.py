"""Demographic differentials: per-group rates against values worked out by hand (ties at the
threshold, an empty group, a group with no impostor pairs), the person-level bootstrap, the
pairs and labels of the protocol, `facetrail eval bias` on real people, and the HTML report
rendered in Chromium showing the JSON's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_team
from facetrail.errors import InvalidInputError
from facetrail.evaluation.bias import bias_metrics, bootstrap_rates
from facetrail.evaluation.protocols import bias_pairs, read_group_labels
from facetrail.reports.common import format_interval, format_rate, format_score

# (group, person a, person b, genuine, score). People 0-2 are "f", 3-4 "m", 5 "y"; "x" has
# nobody. Threshold 0.7: a score of exactly 0.7 is a match (search's rule: at or above).
PAIRS = [
    ("f", 0, 0, True, 0.90),
    ("f", 0, 0, True, 0.70),  # at the threshold: accepted
    ("f", 1, 1, True, 0.65),  # false non-match
    ("f", 0, 1, False, 0.70),  # at the threshold: a false match
    ("f", 0, 2, False, 0.30),
    ("f", 1, 2, False, 0.50),
    ("f", 0, 1, False, 0.20),
    ("m", 3, 3, True, 0.95),
    ("m", 4, 4, True, 0.50),  # false non-match
    ("m", 3, 4, False, 0.10),
    ("m", 3, 4, False, 0.72),  # false match
    ("m", 3, 4, False, 0.80),  # false match
    ("y", 5, 5, True, 0.99),
]
GROUPS = ["f", "m", "x", "y"]


def hand_fixture(**kwargs: Any):
    group = np.array([GROUPS.index(p[0]) for p in PAIRS])
    a = np.array([p[1] for p in PAIRS])
    b = np.array([p[2] for p in PAIRS])
    genuine = np.array([p[3] for p in PAIRS])
    scores = np.array([p[4] for p in PAIRS])
    options = {
        "threshold": 0.7,
        "target_fmr": 0.25,
        "people": [3, 2, 0, 1],
        "images": [6, 4, 0, 2],
        "replicates": 200,
        "seed": 1,
    }
    return bias_metrics(scores, genuine, group, a, b, GROUPS, **{**options, **kwargs})


def by_group(metrics) -> dict:
    return {g.group: g for g in metrics.groups}


def test_rates_per_group_by_hand() -> None:
    g = by_group(hand_fixture())
    assert (g["f"].fmr, g["f"].false_matches, g["f"].impostor_pairs) == (0.25, 1, 4)
    assert (g["f"].fnmr, g["f"].false_non_matches, g["f"].genuine_pairs) == (1 / 3, 1, 3)
    assert (g["m"].fmr, g["m"].fnmr) == (2 / 3, 0.5)
    assert g["f"].notes == [] and g["m"].notes == []


def test_a_group_without_impostor_pairs_has_no_fmr_and_says_why() -> None:
    y = by_group(hand_fixture())["y"]
    assert (y.fmr, y.fmr_ci, y.false_matches, y.impostor_pairs) == (None, None, None, 0)
    assert y.fnmr == 0.0 and y.fnmr_ci == [0.0, 0.0]
    assert y.notes == ["no impostor pairs: this group has fewer than two people"]
    assert y.threshold_for_target is None and y.det.x == []


def test_an_empty_group_has_no_rates_and_says_why() -> None:
    x = by_group(hand_fixture())["x"]
    assert (x.fmr, x.fnmr, x.fmr_ci, x.fnmr_ci) == (None, None, None, None)
    assert (x.people, x.images, x.genuine_pairs, x.impostor_pairs) == (0, 0, 0, 0)
    assert x.notes[0] == "no labelled images of this group"


def test_worst_to_best_ratios_by_hand() -> None:
    m = hand_fixture()
    assert (m.fmr_ratio.worst_group, m.fmr_ratio.best_group) == ("m", "f")
    assert m.fmr_ratio.ratio == pytest.approx((2 / 3) / 0.25)
    # y has no false non-match: FNMR's ratio is unbounded, so it is null with the reason.
    assert (m.fnmr_ratio.worst_group, m.fnmr_ratio.best_group) == ("m", "y")
    assert m.fnmr_ratio.ratio is None and "unbounded" in (m.fnmr_ratio.note or "")


def test_threshold_at_which_every_group_meets_the_target_by_hand() -> None:
    t = hand_fixture().target
    # f: 4 impostors, FMR <= 0.25 lets one pass: just above the second highest (0.5).
    # m: 3 impostors, none may pass: just above 0.8, and 1/0.25 = 4 pairs are needed to
    # measure 0.25, so m's point is not measurable. The bar is m's.
    g = by_group(hand_fixture())
    assert g["f"].threshold_for_target == np.nextafter(0.5, 1) and g["f"].target_measurable
    assert g["m"].threshold_for_target == np.nextafter(0.8, 1) and not g["m"].target_measurable
    assert t.threshold == np.nextafter(0.8, 1) and t.limiting_group == "m"
    assert t.fmr == {"f": 0.0, "m": 0.0, "x": None, "y": None}
    assert t.fnmr == {"f": 2 / 3, "m": 0.5, "x": None, "y": 0.0}
    assert not t.measurable
    assert t.note == "not constrained (no impostor pairs): x, y"


class FixedDraws:
    """A stand-in generator whose people are drawn the given numbers of times."""

    def __init__(self, counts: list[list[int]]) -> None:
        self.counts = np.array(counts)

    def multinomial(self, n: int, p: np.ndarray, size: int) -> np.ndarray:
        assert self.counts.shape == (size, len(p)) and (self.counts.sum(axis=1) == n).all()
        return self.counts


def test_bootstrap_weights_pairs_by_the_draws_of_their_people() -> None:
    f = [p for p in PAIRS if p[0] == "f"]
    a, b = np.array([p[1] for p in f]), np.array([p[2] for p in f])
    genuine = np.array([p[3] for p in f])
    scores = np.array([p[4] for p in f])
    error = np.where(genuine, scores < 0.7, scores >= 0.7)
    # Replicate 1: person 0 twice, person 1 once, person 2 never. Genuine pairs count as often
    # as their person: FNMR = 1 (person 1's miss) / (2 + 2 + 1). Impostor pairs count
    # draws(a) * draws(b): only the two (0, 1) pairs, weight 2 each, one a false match: 2/4.
    # Replicate 2: each person once: the plain rates. Replicate 3: person 2 three times: no
    # genuine pair is left (nan) and no impostor pair either.
    rng = FixedDraws([[2, 1, 0], [1, 1, 1], [0, 0, 3]])
    fmr, fnmr = bootstrap_rates(a, b, genuine, error, 3, rng)  # type: ignore[arg-type]
    np.testing.assert_allclose(fmr[:2], [0.5, 0.25])
    np.testing.assert_allclose(fnmr[:2], [0.2, 1 / 3])
    assert np.isnan(fmr[2]) and np.isnan(fnmr[2])


def test_bootstrap_intervals_are_seeded_and_ordered() -> None:
    first, second = hand_fixture(seed=7), hand_fixture(seed=7)
    assert first == second
    for g in first.groups:
        for ci in (g.fmr_ci, g.fnmr_ci):
            if ci is not None:
                assert 0.0 <= ci[0] <= ci[1] <= 1.0
    assert first.bootstrap["unit"] == "person"


def test_labels_by_image_and_by_person(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("person,group\nAnn,a\nBob,b\nBob/Bob_0002.jpg,a\n")
    labels = read_group_labels(csv)
    assert labels.attribute == "group" and labels.groups == ["a", "b"]
    assert labels.group_of("Ann/Ann_0001.jpg") == "a"
    assert labels.group_of("Bob/Bob_0001.jpg") == "b"
    assert labels.group_of("Bob/Bob_0002.jpg") == "a"  # the image's own label wins
    assert labels.group_of("Cy/Cy_0001.jpg") is None
    bad = tmp_path / "bad.csv"
    bad.write_text("image,gender\nAnn/1.jpg,f\nAnn/1.jpg,m\n")
    with pytest.raises(InvalidInputError, match="two groups"):
        read_group_labels(bad)


def test_bias_pairs_all_genuine_and_within_group_impostors(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image,gender\n"
        + "".join(
            f"{n}/{n}_{i}.jpg,{g}\n"
            for n, g, k in (
                ("A", "f", 3),
                ("B", "f", 2),
                ("C", "m", 1),
                ("D", "m", 2),
                ("E", "z", 1),
            )
            for i in range(1, k + 1)
        )
    )
    people = {
        n: [f"{n}/{n}_{i}.jpg" for i in range(1, k + 1)]
        for n, k in (("A", 3), ("B", 2), ("C", 1), ("D", 2), ("E", 1), ("F", 2))
    }
    pairs = bias_pairs(people, read_group_labels(csv), impostors_per_group=100)
    assert pairs.groups == ["f", "m", "z"]
    assert pairs.unlabelled_images == 2  # F's
    same = pairs.identity[pairs.a] == pairs.identity[pairs.b]
    assert (same == pairs.genuine).all()
    # Genuine: 3 (A) + 1 (B) + 1 (D); impostors: f 3 x 2 = 6, m 1 x 2 = 2, z none.
    assert np.bincount(pairs.group[pairs.genuine], minlength=3).tolist() == [4, 1, 0]
    assert np.bincount(pairs.group[~pairs.genuine], minlength=3).tolist() == [6, 2, 0]
    # Sampling keeps distinct within-group pairs, repeatably.
    few = bias_pairs(people, read_group_labels(csv), impostors_per_group=4, seed=3)
    imp = ~few.genuine & (few.group == 0)
    assert imp.sum() == 4
    assert len({tuple(sorted(p)) for p in zip(few.a[imp], few.b[imp], strict=True)}) == 4
    again = bias_pairs(people, read_group_labels(csv), impostors_per_group=4, seed=3)
    assert (again.a == few.a).all() and (again.b == few.b).all()


def test_large_impostor_samples_are_distinct() -> None:
    from facetrail.evaluation.protocols import _impostor_sample

    identity = np.repeat(np.arange(300), 2)
    members = np.arange(len(identity))
    a, b = _impostor_sample(members, identity, 5000, np.random.default_rng(0))
    assert len(a) == 5000
    assert (identity[a] != identity[b]).all()
    assert len(set(zip(np.minimum(a, b), np.maximum(a, b), strict=True))) == 5000


# --------------------------------------------------------------------------- real data, report


@pytest.fixture(scope="module")
def bias_results(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """`facetrail eval bias` on the first 80 LFW people with the gender labels, as an auditor."""

    lfw, labels = shared_data / "lfw", shared_data / "lfw_gender" / "gender.csv"
    if not labels.is_file():
        pytest.skip("the LFW gender labels are not in the shared data")
    root = tmp_path_factory.mktemp("bias")
    team = make_team(root / "data")
    out = root / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", "eval", "bias", str(lfw), "--labels", str(labels),
         "--limit", "80", "--target-fmr", "0.01", "--out", str(out), "--json"],
        capture_output=True, text=True, env={**os.environ, **team.env("auditor")}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_eval_bias_command_on_real_people(bias_results: tuple[dict, Path]) -> None:
    report, out = bias_results
    assert report["attribute"] == "gender"
    assert [g["group"] for g in report["groups"]] == ["female", "male"]
    assert sum(g["people"] for g in report["groups"]) == report["people"] <= 80
    assert all(g["genuine_pairs"] > 0 and g["impostor_pairs"] > 0 for g in report["groups"])
    assert report["target"]["target_fmr"] == 0.01
    assert report["threshold_source"].startswith("calibrated for target FMR")
    assert json.loads((out / "bias.json").read_text()) == report
    assert (out / "bias_det.png").read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_a_file_that_is_not_bias_results(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"root": "."}')
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", "report", "bias", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "not the result of" in proc.stderr


CHROMIUM = Path("/usr/bin/chromium")


def test_bias_report_in_chromium_shows_the_json_numbers(
    bias_results: tuple[dict, Path], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    from test_web import CHROMIUM_ARGS

    report, out = bias_results
    html = tmp_path / "bias.html"
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", "report", "bias", str(out / "bias.json"),
         "--out", str(html), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"report": str(html)}
    source = html.read_text()
    assert "@media print" in source and "<script" not in source
    assert 'src="http' not in source and "href=" not in source  # self-contained

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(html.as_uri())

            def cell(group: str, field: str, table: str = "rates") -> str:
                selector = f"#{table} tr[data-group='{group}'] [data-field='{field}']"
                return page.locator(selector).inner_text().strip()

            for g in report["groups"]:
                name = g["group"]
                assert cell(name, "fmr") == format_rate(g["fmr"])
                assert cell(name, "fnmr") == format_rate(g["fnmr"])
                assert cell(name, "fmr_ci") == format_interval(g["fmr_ci"])
                assert cell(name, "fnmr_ci") == format_interval(g["fnmr_ci"])
                for field in ("people", "images", "genuine_pairs", "impostor_pairs",
                              "false_matches", "false_non_matches"):  # fmt: skip
                    assert cell(name, field) == str(g[field])
                assert cell(name, "target_fmr", "target") == format_rate(
                    report["target"]["fmr"][name]
                )
                assert cell(name, "target_fnmr", "target") == format_rate(
                    report["target"]["fnmr"][name]
                )
            assert page.locator("[data-field='threshold']").inner_text() == format_score(
                report["threshold"]
            )
            assert page.locator("[data-field='target-threshold']").inner_text() == format_score(
                report["target"]["threshold"]
            )
            for rate in ("fmr", "fnmr"):
                ratio = report[f"{rate}_ratio"]["ratio"]
                shown = page.locator(f"[data-ratio='{rate}'] [data-field='ratio']").inner_text()
                assert shown == ("n/a" if ratio is None else f"{ratio:.2f}")
            # The chart is embedded and decodes.
            width = page.locator("figure img").evaluate("img => img.naturalWidth")
            assert width > 100
            assert page.pdf(format="A4")[:4] == b"%PDF"  # prints
        finally:
            browser.close()


def test_evaluations_are_for_evaluators_only(tmp_path: Path) -> None:
    from facetrail.errors import PermissionDeniedError

    team = make_team(tmp_path / "data", approvals=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("person,group\nAnn,a\n")
    with team.open("investigator") as ft:
        with pytest.raises(PermissionDeniedError):
            ft.eval_bias(tmp_path, labels, tmp_path / "out")
        with pytest.raises(PermissionDeniedError):
            ft.eval_identify(tmp_path, tmp_path / "out")
    with team.open("auditor") as ft, pytest.raises(InvalidInputError, match="not a folder"):
        ft.eval_bias(tmp_path / "empty-folder-that-is-absent", labels, tmp_path / "out")
