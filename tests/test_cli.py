"""The `facetrail` command end to end, as a user runs it: real images, real models, a real
SQLite data directory, each command a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import CASE, Team, make_team

FR = "examples/face_recognition"


def run(
    data: Path | Team, *args: str, check: bool = True, role: str = "investigator"
) -> subprocess.CompletedProcess[str]:
    """Run `facetrail ARGS` as a separate process, as `role` when `data` is a Team."""
    if isinstance(data, Team):
        env = {**os.environ, **data.env(role)}
    else:
        env = {**os.environ, "FACETRAIL_DATA": str(data)}
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def run_json(data: Path | Team, *args: str, check: bool = True, role: str = "investigator") -> dict:
    proc = run(data, *args, "--json", check=check, role=role)
    return json.loads(proc.stdout)  # exactly one JSON document on stdout


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Team:
    """A team's data directory with the knn_examples gallery enrolled (5 subjects, 9 images)."""
    data = make_team(tmp_path_factory.mktemp("gallery") / "data")
    train = str(shared_data / FR / "knn_examples/train")
    report = run_json(data, "enrol", train, role="admin")
    assert report["enrolled"] == 9, report
    assert report["skipped"] == 0
    assert report["subjects"] == [
        "alex_lacamoire",
        "biden",
        "kit_harington",
        "obama",
        "rose_leslie",
    ]
    return data


def top_subjects(probe: dict) -> set[str]:
    return {f["candidates"][0]["subject"] for f in probe["faces"] if f["candidates"]}


def test_search_identifies_the_knn_probes(gallery: Path, shared_data: Path) -> None:
    test = shared_data / FR / "knn_examples/test"
    expected = {
        "alex_lacamoire1.jpg": {"alex_lacamoire"},
        "obama1.jpg": {"obama"},
        "obama_and_biden.jpg": {"obama", "biden"},
        "kit_with_rose.jpg": {"kit_harington", "rose_leslie"},
        "johnsnow_test1.jpg": {"kit_harington"},
    }
    report = run_json(gallery, "search", "--case", CASE, *(str(test / name) for name in expected))
    assert report["gallery_subjects"] == 5
    assert 0 < report["threshold"] < 1 and report["target_fmr"] == pytest.approx(1e-3)
    for probe in report["probes"]:
        name = Path(probe["probe"]).name
        assert top_subjects(probe) == expected[name], (name, probe)
        for face in probe["faces"]:
            x1, y1, x2, y2 = face["box"]
            assert 0 <= x1 < x2 <= probe["width"] + 1 and 0 <= y1 < y2 <= probe["height"] + 1
            assert 0 <= face["quality"] <= 1
            for rank, cand in enumerate(face["candidates"], start=1):
                assert cand["rank"] == rank
                assert cand["score"] >= report["threshold"]
                assert 0 < cand["fmr"] <= 1e-3 * 1.01  # above the threshold means below target FMR


def test_search_all_lists_candidates_below_threshold(gallery: Team, shared_data: Path) -> None:
    probe = str(shared_data / FR / "knn_examples/test/obama1.jpg")
    plain = run_json(gallery, "search", probe, "--case", CASE, "--top-k", "3")
    everyone = run_json(gallery, "search", probe, "--case", CASE, "--top-k", "3", "--all")
    plain_c = plain["probes"][0]["faces"][0]["candidates"]
    all_c = everyone["probes"][0]["faces"][0]["candidates"]
    assert [c["subject"] for c in plain_c] == ["obama"]
    assert len(all_c) == 3 and all_c[0]["subject"] == "obama"
    assert [c["score"] for c in all_c] == sorted((c["score"] for c in all_c), reverse=True)
    assert not all_c[1]["above_threshold"] and all_c[1]["fmr"] > all_c[0]["fmr"]


def test_verify_matches_and_rejects(gallery: Team, shared_data: Path) -> None:
    images = shared_data / FR / "test_images"

    def verify(a: str, b: str) -> dict:
        return run_json(gallery, "verify", str(images / a), str(images / b), "--case", CASE)

    same = verify("obama.jpg", "obama2.jpg")
    other = verify("obama.jpg", "biden.jpg")
    assert same["match"] is True and same["score"] > same["threshold"]
    assert other["match"] is False and other["score"] < other["threshold"]
    assert other["fmr"] > same["fmr"]
    assert "false match rate" in same["meaning"]
    human = run(
        gallery, "verify", str(images / "obama.jpg"), str(images / "obama3.jpg"), "--case", CASE
    )
    assert "same person" in human.stdout


def test_subjects_and_subject(gallery: Team) -> None:
    listing = run_json(gallery, "subjects")["subjects"]
    assert {s["name"]: s["images"] for s in listing}["obama"] == 2
    enrolled_at = datetime.fromisoformat(listing[0]["created_at"])  # ISO 8601, in UTC
    assert "T" in listing[0]["created_at"] and enrolled_at.utcoffset() == timedelta(0)
    detail = run_json(gallery, "subject", "biden")
    assert detail["name"] == "biden" and len(detail["images"]) == 2
    assert all(len(img["sha256"]) == 64 and img["faces"] for img in detail["images"])
    missing = run(gallery, "subject", "nobody", check=False)
    assert (
        missing.returncode != 0 and "nobody" in missing.stderr and "Traceback" not in missing.stderr
    )


def test_enrol_skips_bad_references_and_goes_on(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "people" / "mixed"
    folder.mkdir(parents=True)
    (folder / "good.jpg").write_bytes((shared_data / FR / "obama.jpg").read_bytes())
    (folder / "two.jpg").write_bytes((shared_data / FR / "two_people.jpg").read_bytes())
    (folder / "corrupt.jpg").write_bytes((shared_data / FR / "obama.jpg").read_bytes()[:5000])
    (folder / "text.png").write_text("not an image")
    from PIL import Image

    Image.new("RGB", (300, 200), (90, 120, 150)).save(folder / "noface.png")
    data = make_team(tmp_path / "data")
    report = run_json(data, "enrol", str(tmp_path / "people"), role="admin")
    by_name = {Path(i["image"]).name: i for i in report["items"]}
    assert by_name["good.jpg"]["status"] == "enrolled"
    assert by_name["two.jpg"]["reason"].startswith("2 faces")
    assert "truncated" in by_name["corrupt.jpg"]["reason"]
    assert "not an image" in by_name["text.png"]["reason"]
    assert by_name["noface.png"]["reason"] == "no face found"
    assert report["enrolled"] == 1 and report["skipped"] == 4
    again = run_json(data, "enrol", str(tmp_path / "people"), role="admin")
    assert again["enrolled"] == 0 and again["duplicates"] == 1


def test_whole_command_failures_exit_non_zero_and_change_nothing(
    gallery: Team, tmp_path: Path
) -> None:
    before = run_json(gallery, "subjects")
    cases = [
        ("admin", "enrol", str(tmp_path / "does-not-exist.jpg"), "--subject", "x"),
        ("investigator", "search", str(tmp_path / "does-not-exist.jpg"), "--case", CASE),
        (
            "investigator",
            "verify",
            str(tmp_path / "nope.jpg"),
            str(tmp_path / "nope2.jpg"),
            "--case",
            CASE,
        ),
        ("admin", "erase", "nobody"),
        ("investigator", "search", "x.jpg", "--case", CASE, "--threshold", "7"),
        ("investigator", "search", "x.jpg", "--case", "NO-SUCH-CASE"),
        ("admin", "search", "x.jpg", "--case", CASE),  # the wrong role
        ("investigator", "enrol", str(tmp_path), "--subject", "x"),
    ]
    for role, *args in cases:
        proc = run(gallery, *args, check=False, role=role)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        as_json = run(gallery, *args, "--json", check=False, role=role)
        assert "error" in json.loads(as_json.stdout)
    assert run_json(gallery, "subjects") == before


def test_manifest_enrols_with_reference_numbers(tmp_path: Path, shared_data: Path) -> None:
    manifest = tmp_path / "custody.csv"
    images = shared_data / FR
    manifest.write_text(
        "subject,image,reference\n"
        f"Barack Obama,{images / 'obama.jpg'},CUST-0001\n"
        f"Joe Biden,{images / 'biden.jpg'},CUST-0002\n"
    )
    data = make_team(tmp_path / "data")
    assert run_json(data, "enrol", "--manifest", str(manifest), role="admin")["enrolled"] == 2
    refs = {s["name"]: s["reference"] for s in run_json(data, "subjects")["subjects"]}
    assert refs == {"Barack Obama": "CUST-0001", "Joe Biden": "CUST-0002"}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,path\nx,y\n")
    proc = run(data, "enrol", "--manifest", str(bad), check=False, role="admin")
    assert proc.returncode != 0 and "subject" in proc.stderr


def test_erase_removes_the_subject_from_search(tmp_path: Path, shared_data: Path) -> None:
    data = make_team(tmp_path / "data")
    run_json(data, "enrol", str(shared_data / FR / "knn_examples/train"), role="admin")
    probe = str(shared_data / FR / "knn_examples/test/obama1.jpg")
    assert top_subjects(run_json(data, "search", probe, "--case", CASE)["probes"][0]) == {"obama"}
    erased = run_json(data, "erase", "obama", role="admin")
    assert erased["images"] == 2 and erased["templates"] == 2
    after = run_json(data, "search", probe, "--case", CASE, "--all")
    assert all(
        c["subject"] != "obama" for f in after["probes"][0]["faces"] for c in f["candidates"]
    )
    assert "obama" not in {s["name"] for s in run_json(data, "subjects")["subjects"]}


def test_two_processes_enrolling_at_once(tmp_path: Path, shared_data: Path) -> None:
    data = make_team(tmp_path / "data")
    train = shared_data / FR / "knn_examples/train"
    env = {**os.environ, **data.env("admin")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facetrail",
                "enrol",
                str(train / who),
                "--subject",
                who,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for who in ("obama", "biden", "kit_harington", "rose_leslie")
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read() if p.stderr else ""
    listing = {s["name"]: s["templates"] for s in run_json(data, "subjects")["subjects"]}
    assert listing == {"obama": 2, "biden": 2, "kit_harington": 2, "rose_leslie": 2}
    chain = run_json(data, "audit", "verify", role="auditor")  # four writers, one chain
    assert chain["ok"]
    events = [
        json.loads(line)
        for line in run(data, "audit", "export", role="auditor").stdout.splitlines()
    ]
    assert sum(e["action"] == "enrol" for e in events) == 4


def test_demo_runs_offline(tmp_path: Path) -> None:
    result = run_json(tmp_path / "data", "demo")
    probes = {Path(p["probe"]).name: p for p in result["search"]["probes"]}
    assert result["enrolled"]["enrolled"] == 2
    assert probes["no-face.png"]["faces"] == []
    assert result["audit"]["ok"] and result["search"]["watchlist"] == "demo"
    for name in ("cctv-still-mirrored-small.jpg", "doorbell-dark-noisy.jpg"):
        best = probes[name]["faces"][0]["candidates"][0]
        assert best["subject"] == "Grace Hopper" and best["above_threshold"]
    human = run(tmp_path / "data", "demo")
    assert "facetrail enrol" in human.stdout
