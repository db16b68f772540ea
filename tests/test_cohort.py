"""The cohort (issue 10) over a real data directory: built from a folder, it turns search
scores into AS-norm scores exactly as the formula says; its statistics follow enrolment and
erasure; erasing it leaves no row and no descriptor byte behind; and `cohort build` runs
from the command line."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facetrail
from conftest import CASE, Team, sql
from facetrail.media import load_image
from facetrail.service import cohort as cohorts
from facetrail.store.crypto import OVERHEAD
from facetrail.vision.compare import normalise
from facetrail.vision.normalisation import cohort_stats

FR = "examples/face_recognition"
TOP_K = 4


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.fixture()
def strangers(shared_data: Path, tmp_path: Path) -> Path:
    """Eight LFW faces of people with a single image (none of them is enrolled here)."""
    lfw = shared_data / "lfw"
    if not lfw.is_dir():
        pytest.skip("../shared/data/lfw is not present")
    folder = tmp_path / "strangers"
    folder.mkdir()
    picked = 0
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        images = sorted(person.glob("*.jpg"))
        if len(images) == 1:
            shutil.copy(images[0], folder / images[0].name)
            picked += 1
        if picked == 8:
            break
    return folder


def _open(team: Team, role: str) -> facetrail.Facetrail:
    return facetrail.open(team.data, token=team.tokens[role], cohort_top_k=TOP_K)


def test_cohort_normalises_search_scores_and_erasure_leaves_nothing(
    team: Team, shared_data: Path, strangers: Path
) -> None:
    probe = shared_data / FR / "knn_examples/test/obama1.jpg"
    with _open(team, "admin") as ft:
        ft.enrol([shared_data / FR / "knn_examples/train"])
        inv = ft.as_caller(None)
        inv.use_token(team.tokens["investigator"])
        plain = inv.search([probe], case=CASE, top_k=3, include_below=True)
        assert plain.scoring == "cosine"

        built = ft.build_cohort(strangers, source="lfw-strangers")
        assert built.added == 8 and built.images == 8 and not built.skipped
        again = ft.build_cohort(strangers, source="lfw-strangers")
        assert again.added == 0 and again.duplicates == 8  # an image joins the cohort once
        [listed] = ft.cohort_sources()
        assert (listed.source, listed.faces, listed.created_by) == ("lfw-strangers", 8, "admin")

        normed = inv.search([probe], case=CASE, top_k=3, include_below=True)
        assert normed.scoring == "as-norm+cosine"  # the default
        # The stored search and its audit event say so too.
        assert inv.search_results(normed.search_id).scoring == "as-norm+cosine"
        assert inv.search_results(plain.search_id).scoring == "cosine"
        top = normed.probes[0].faces[0].candidates[0]
        assert top.subject == plain.probes[0].faces[0].candidates[0].subject == "obama"

        # By hand: AS-norm + 70 x cosine of the probe against obama's best template (the one
        # with the highest normalised score), statistics over the top TOP_K cohort scores.
        model = ft.analyzer.model_id
        matrix = ft.store.templates(model)
        cohort = cohorts.load(ft.store, model).vectors
        pixels = load_image(probe).pixels
        q = normalise(ft.analyzer.analyse(pixels, mode="thorough").descriptors)[:1]
        obama = next(s.id for s in ft.subjects() if s.name == "obama")
        templates = matrix.vectors[matrix.subject_ids == obama]
        p, g = cohort_stats(q, cohort, TOP_K), cohort_stats(templates, cohort, TOP_K)
        raw = (q @ templates.T)[0].astype(np.float64)
        by_hand = 0.5 * ((raw - p.mean[0]) / p.std[0] + (raw - g.mean) / g.std) + 70 * raw
        assert top.score == pytest.approx(by_hand.max(), abs=1e-3)
        assert top.fmr is not None  # from the calibration of normalised scores
        with facetrail.open(
            team.data,
            token=team.tokens["investigator"],
            cohort_top_k=TOP_K,
            score_normalisation="as-norm",
        ) as pure:
            as_norm = pure.search([probe], case=CASE, top_k=3, include_below=True)
        assert as_norm.scoring == "as-norm"
        best = as_norm.probes[0].faces[0].candidates[0]
        assert best.subject == "obama"
        as_norm_by_hand = by_hand - 70 * raw
        assert best.score == pytest.approx(as_norm_by_hand.max(), abs=1e-3)

        vectors = [v.tobytes() for v in cohort]
        assert all(v in _all_bytes(team.data) for v in vectors[:1])  # stored as written
        erased = ft.erase_cohort("lfw-strangers", reason="test")
        assert erased.faces == 8 and erased.sources == ["lfw-strangers"]
        assert sql(team.data, "SELECT count(*) FROM cohort_faces") == [(0,)]
        on_disk = _all_bytes(team.data)
        assert not any(v in on_disk for v in vectors)
        after = inv.search([probe], case=CASE, top_k=3, include_below=True)
        assert after.scoring == "cosine"
        actions = [r[0] for r in sql(team.data, "SELECT action FROM audit_events")]
        assert actions.count("cohort.build") == 2 and "cohort.erase" in actions


def test_template_statistics_follow_enrolment_and_erasure(
    team: Team, shared_data: Path, strangers: Path
) -> None:
    with _open(team, "admin") as ft:
        ft.enrol([shared_data / FR / "knn_examples/train/obama"], subject="obama")
        ft.build_cohort(strangers)
        model = ft.analyzer.model_id
        stats = ft._shared.cohort_stats
        first = stats.normaliser(ft.store, model, TOP_K)
        assert first is not None and len(first.template_ids) == 2  # obama: two images
        ft.enrol([shared_data / FR / "knn_examples/train/biden"], subject="biden")
        second = stats.normaliser(ft.store, model, TOP_K)
        assert second is not None
        matrix = ft.store.templates(model)
        assert list(second.template_ids) == sorted(matrix.template_ids)
        full = cohort_stats(matrix.vectors, cohorts.load(ft.store, model).vectors, TOP_K)
        order = np.argsort(matrix.template_ids)
        assert second.template_stats.mean == pytest.approx(full.mean[order])
        assert second.template_stats.std == pytest.approx(full.std[order])
        ft.erase("obama")
        third = stats.normaliser(ft.store, model, TOP_K)
        assert third is not None
        assert list(third.template_ids) == sorted(ft.store.templates(model).template_ids)
        # Fewer cohort faces than top-k: no normalisation.
        assert stats.normaliser(ft.store, model, 100) is None


def test_cli_cohort_build_list_erase(team: Team, strangers: Path) -> None:
    env = {**os.environ, **team.env("admin")}

    def run(*args: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "facetrail", "cohort", *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    built = run("build", str(strangers), "--source", "strangers")
    assert built["added"] == 8 and built["source"] == "strangers"
    [listed] = run("list")
    assert listed["source"] == "strangers" and listed["faces"] == 8
    assert run("show", "strangers")[0]["faces"] == 8
    erased = run("erase", "strangers", "--reason", "test")
    assert erased["faces"] == 8
    assert run("list") == []
    investigator = {**os.environ, **team.env("investigator")}
    refused = subprocess.run(
        [sys.executable, "-m", "facetrail", "cohort", "build", str(strangers)],
        capture_output=True,
        text=True,
        env=investigator,
        timeout=600,
    )
    assert refused.returncode != 0 and "may not gallery.enrol" in refused.stderr
    admin = {**os.environ, **team.env("admin")}
    for args, message in (
        (["--closed-cases"], "policy does not allow a cohort from closed cases"),
        ([str(strangers), "--closed-cases"], "give a FOLDER or --closed-cases"),
        ([], "give a FOLDER or --closed-cases"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "facetrail", "cohort", "build", *args],
            capture_output=True,
            text=True,
            env=admin,
            timeout=600,
        )
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "facetrail",
            "policy",
            "set",
            "cohort_from_closed_cases",
            "true",
            "--reason",
            "DPIA allows it",
        ],
        env=admin,
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert run("build", "--closed-cases") == []  # no closed case yet


def test_eval_identify_compare_reports_every_technique(
    team: Team, shared_data: Path, tmp_path: Path
) -> None:
    from facetrail.evaluation.techniques import DEFAULT_VARIANTS

    lfw = shared_data / "lfw"
    if not lfw.is_dir():
        pytest.skip("../shared/data/lfw is not present")
    out = tmp_path / "results"
    args = ["eval", "identify", str(lfw), "--limit", "40", "--out", str(out), "--compare"]
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", *args, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **team.env("auditor")},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = report["techniques"]
    assert len(rows) == len(DEFAULT_VARIANTS) and report["cohort_folds"] == 2
    assert {r["method"] for r in rows} >= {"none", "z-norm", "t-norm", "s-norm", "as-norm"}
    assert {r["fusion"] for r in rows} == {"max", "mean", "top2-mean", "softmax"}
    plain = rows[0]
    assert (plain["method"], plain["templates"]) == ("none", 1)
    # Without normalisation the cross-cohort folds change nothing: the plain evaluation.
    assert plain["non_mated_probes"] == report["non_mated_probes"]
    assert plain["fnir_fpir_1pct"] == pytest.approx(report["fnir_at_fpir"][0]["fnir"])
    assert plain["rank1"] == pytest.approx(report["rank_hits"]["1"])
    assert (out / "identify_techniques.md").read_text().startswith("| templates |")
    assert report["calibrations"] == []  # only with --calibrate (administrators)


def test_cohort_from_closed_cases_takes_only_faces_review_found_to_be_nobody(
    team: Team, shared_data: Path, strangers: Path
) -> None:
    """Where policy allows, `cohort build --closed-cases` adds the kept probe faces of closed
    cases whose review found nobody: not a confirmed match, not an inconclusive verdict, not
    a candidate above the threshold left undecided; one source per case, audited, erasable."""
    names = sorted(p.name for p in strangers.iterdir())[:3]
    obama = shared_data / FR / "knn_examples/test/obama1.jpg"
    probes = [obama, *(strangers / n for n in names)]
    with _open(team, "admin") as ft:
        ft.enrol([shared_data / FR / "knn_examples/train"])
        inv = ft.as_caller(None)
        inv.use_token(team.tokens["investigator"])
        report = inv.search(probes, case=CASE, top_k=2, include_below=True)
        view = inv.search_results(report.search_id)
        by_probe: dict[str, list] = {}
        for c in view.candidates:
            by_probe.setdefault(Path(c.probe).name, []).append(c)
        assert set(by_probe) == {p.name for p in probes}
        top = {name: min(cands, key=lambda c: c.rank) for name, cands in by_probe.items()}
        assert top[obama.name].subject == "obama" and top[obama.name].above_threshold
        # The strangers' candidates are all below the threshold (nobody here is enrolled).
        assert not any(c.above_threshold for n in names for c in by_probe[n])
        inv.decide(top[obama.name].id, "match", note="same person")
        inv.decide(top[names[1]].id, "no-match", note="different person")
        inv.decide(top[names[2]].id, "inconclusive", note="cannot tell")

        with pytest.raises(facetrail.FacetrailError, match="policy does not allow"):
            ft.build_cohort_from_cases()
        ft.set_policy("cohort_from_closed_cases", True, reason="DPIA 7 allows it")
        assert ft.build_cohort_from_cases() == []  # the case is still open
        inv.close_case(CASE)
        with pytest.raises(facetrail.FacetrailError):
            inv.build_cohort_from_cases()  # administrators only
        [built] = ft.build_cohort_from_cases()
        # names[0] (nothing decided, all below the threshold) and names[1] (no-match) only.
        assert (built.source, built.images, built.added, built.duplicates) == (
            f"case {CASE}",
            2,
            2,
            0,
        )
        chips = {
            c.id: sql(
                team.data,
                "SELECT f.chip_sha256 FROM candidates c JOIN probe_faces f ON f.id = c.face_id "
                "WHERE c.id = ?",
                c.id,
            )[0][0]
            for c in top.values()
        }
        stored = {r[0] for r in sql(team.data, "SELECT image_sha256 FROM cohort_faces")}
        assert stored == {chips[top[names[0]].id], chips[top[names[1]].id]}
        # The descriptor is the one the model gives the stored chip.
        cohort = cohorts.load(ft.store, ft.analyzer.model_id)
        assert cohort.vectors.shape == (2, 128)
        png = ft.store.blobs.get(chips[top[names[1]].id])
        chip = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[None]
        expected = normalise(ft.analyzer.descriptor.describe(chip))[0]
        assert np.abs(cohort.vectors - expected).max(axis=1).min() < 1e-5
        again = ft.build_cohort_from_cases()
        assert (again[0].added, again[0].duplicates) == (0, 2)
        sources = [r.source for r in ft.cohort_sources()]
        assert sources == [f"case {CASE}"]
        actions = [r[0] for r in sql(team.data, "SELECT action FROM audit_events")]
        assert actions.count("cohort.build") == 2
        assert ft.erase_cohort(f"case {CASE}", reason="test").faces == 2
        assert sql(team.data, "SELECT count(*) FROM cohort_faces") == [(0,)]


def test_encrypt_existing_seals_cohort_faces(team: Team, strangers: Path) -> None:
    """A cohort built before a key was configured is sealed by `encrypt_existing`: its plain
    vectors are gone from the files, and it still normalises searches with the key."""
    with _open(team, "admin") as ft:
        assert ft.build_cohort(strangers, source="strangers").added == 8
        model = ft.analyzer.model_id
        plain = cohorts.load(ft.store, model).vectors
    key = base64.b64encode(os.urandom(32)).decode()
    with facetrail.open(team.data, token=team.tokens["admin"], encryption_key=key) as ft:
        counts = ft.encrypt_existing()
        assert counts["cohort_faces"] == 8
        assert ft.encrypt_existing()["cohort_faces"] == 0  # idempotent
        np.testing.assert_array_equal(cohorts.load(ft.store, model).vectors, plain)
    on_disk = _all_bytes(team.data)
    assert not any(v.astype("<f4").tobytes() in on_disk for v in plain)
    sizes = {r[0] for r in sql(team.data, "SELECT length(vector) FROM cohort_faces")}
    assert sizes == {128 * 4 + OVERHEAD}  # sealed: header and tag around each vector
    actions = sql(team.data, "SELECT details FROM audit_events WHERE action = 'storage.encrypt'")
    assert len(actions) == 2
