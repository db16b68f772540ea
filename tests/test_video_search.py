"""Video search end to end on real footage, against ground truth written down by eye
(tests/data/hamilton_truth.json): appearances found, nobody claimed who is not on screen,
results stored for review and retention, crops and contact sheets, unknown persons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from conftest import CASE, Team, make_team

FR = "examples/face_recognition"
TRUTH = json.loads((Path(__file__).parent / "data" / "hamilton_truth.json").read_text())
PEOPLE = ("lin-manuel-miranda", "alex-lacamoire")


def _overlap(a: tuple[float, float], b: tuple[float, float], slack: float = 0.0) -> bool:
    return a[0] <= b[1] + slack and b[0] <= a[1] + slack


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    return shared_data / FR / "short_hamilton_clip.mp4"


@pytest.fixture(scope="module")
def hamilton(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Team:
    """The two performers enrolled, with obama and biden as people who are not on stage."""
    team = make_team(tmp_path_factory.mktemp("hamilton") / "data")
    with team.open("admin") as admin:
        for name in PEOPLE:
            admin.enrol([shared_data / FR / f"{name}.png"], subject=name)
        admin.enrol([shared_data / FR / "knn_examples/train/obama"], subject="obama")
        admin.enrol([shared_data / FR / "knn_examples/train/biden"], subject="biden")
    return team


@pytest.fixture(scope="module")
def found(hamilton: Team, clip: Path):
    with hamilton.open() as investigator:
        return investigator.search([clip], case=CASE, top_k=3)


def test_the_truth_is_about_this_clip(clip: Path) -> None:
    import hashlib

    assert hashlib.sha256(clip.read_bytes()).hexdigest() == TRUTH["clip"]["sha256"]


def test_appearances_are_found_and_nobody_absent_is_claimed(found) -> None:
    probe = found.probes[0]
    assert probe.kind == "video" and probe.error is None
    video = probe.video
    assert video.complete and video.frames_decoded == 275
    assert video.duration == pytest.approx(9.14, abs=0.05)
    claims = [
        (f.candidates[0].subject, (f.start, f.end), f)
        for f in probe.faces
        if f.candidates and f.candidates[0].above_threshold
    ]
    # Miranda is found in his long close-up (shot 3), and every claim of anyone falls where
    # that person is on screen: no claim in an interval the truth marks absent, and nobody
    # who is not on stage (obama, biden are in the gallery; Obama is in the audience shot in
    # profile, where the truth leaves a claim of him open).
    shot3 = TRUTH["people"]["lin-manuel-miranda"]["intervals"][1]
    assert any(
        who == "lin-manuel-miranda" and _overlap(span, (shot3["start"], shot3["end"]))
        for who, span, _ in claims
    )
    for who, span, face in claims:
        if who == "obama":
            # The truth: Obama is in the audience shot, in near-profile; a claim of him there
            # is neither required nor forbidden (the CNN detector finds that face, HOG does
            # not, and it matches him). Anywhere else it would be a false match.
            (audience,) = [s for s in TRUTH["shots"] if "barack-obama" in s["identities"]]
            assert audience["start"] - 0.05 <= span[0] and span[1] <= audience["end"] + 0.05
            continue
        assert who in PEOPLE, f"{who} claimed at {span} but is not on stage"
        for gone in TRUTH["absent"][who]:
            inside = gone["start"] + 0.05 <= span[0] and span[1] <= gone["end"] - 0.05
            assert not inside, f"{who} claimed at {span}, when absent"
        assert span[0] <= face.best_time <= span[1]


def test_two_faces_of_one_frame_never_claim_one_subject(found) -> None:
    faces = found.probes[0].faces
    for a in faces:
        for b in faces:
            if a is b or not (a.candidates and b.candidates):
                continue
            if _overlap((a.start, a.end), (b.start, b.end)):
                top_a, top_b = a.candidates[0], b.candidates[0]
                assert not (
                    top_a.above_threshold
                    and top_b.above_threshold
                    and top_a.subject == top_b.subject
                    and a.start == b.start
                )


def test_results_are_stored_for_review_and_retention(hamilton: Team, found) -> None:
    with hamilton.open() as investigator:
        view = investigator.search_results(found.search_id)
        with investigator.store.engine.connect() as conn:
            media = conn.execute(
                text(
                    "SELECT kind, sha256, media_sha256, duration, complete FROM probe_media "
                    "WHERE search_id = :s"
                ),
                {"s": found.search_id},
            ).one()
            tracks = conn.execute(
                text(
                    "SELECT f.track, f.start, f.end, f.best_time, f.chip_sha256 FROM probe_faces f "
                    "JOIN probe_media m ON m.id = f.media_id WHERE m.search_id = :s"
                ),
                {"s": found.search_id},
            ).all()
    assert media.kind == "video" and media.complete
    assert media.media_sha256 == TRUTH["clip"]["sha256"]
    assert media.sha256 is None  # the footage itself is named, not copied into the store
    kept = [f for f in found.probes[0].faces if f.candidates]
    assert len(tracks) == len(kept) >= 1
    assert all(t.chip_sha256 and t.start <= t.best_time <= t.end for t in tracks)
    assert {c.id for c in view.candidates} == {
        c.id for f in found.probes[0].faces for c in f.candidates
    }


def test_cli_json_out_dir_and_contact_sheet(hamilton: Team, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    env = {**os.environ, **hamilton.env("investigator")}
    command = ["search", str(clip), "--case", CASE, "--json", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    probe = body["probes"][0]
    assert probe["kind"] == "video" and probe["video"]["frames_decoded"] == 275
    for face in probe["faces"]:
        assert {"track", "start", "end", "best_time", "box", "quality", "candidates"} <= set(face)
    crops = sorted(p.name for p in out.glob("short_hamilton_clip-*.jpg"))
    assert len(crops) == len(probe["faces"]) >= 1
    sheet = Image.open(out / "contact_sheet.jpg")
    assert sheet.width >= 180 and sheet.height >= 180


def test_cluster_groups_one_person_across_files(hamilton: Team, clip: Path, shared_data: Path):
    with hamilton.open() as investigator:
        report = investigator.cluster(
            [clip, shared_data / FR / "lin-manuel-miranda.png", shared_data / FR / "obama.jpg"],
            case=CASE,
        )
    by_files = {
        p.id: {Path(s.media).name for s in p.sightings} for p in report.persons if p.files >= 2
    }
    assert {"short_hamilton_clip.mp4", "lin-manuel-miranda.png"} in by_files.values()
    # Obama's portrait is nobody else in these files.
    obama = [p for p in report.persons if any(s.media.endswith("obama.jpg") for s in p.sightings)]
    assert len(obama) == 1 and obama[0].files == 1
    assert report.recurring == len(by_files)


def _damaged_copy(clip: Path, folder: Path) -> Path:
    """The clip re-muxed to MPEG-TS with garbage written over a stretch in the middle."""
    target = folder / "damaged.ts"
    with av.open(str(clip)) as src, av.open(str(target), "w", format="mpegts") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = out
            dst.mux(packet)
    data = bytearray(target.read_bytes())
    rng = np.random.default_rng(0)
    middle = len(data) // 2
    data[middle : middle + 40_000] = rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def test_damaged_footage_is_searched_and_marked_incomplete(
    hamilton: Team, clip: Path, tmp_path: Path
) -> None:
    damaged = _damaged_copy(clip, tmp_path)
    with hamilton.open() as investigator:
        report = investigator.search([damaged], case=CASE)
    video = report.probes[0].video
    assert report.probes[0].error is None and video is not None
    assert not video.complete and video.warnings
    assert video.frames_decoded > 100
    with hamilton.open() as investigator, investigator.store.engine.connect() as conn:
        complete = conn.execute(
            text("SELECT complete FROM probe_media WHERE search_id = :s"),
            {"s": report.search_id},
        ).scalar_one()
    assert not complete


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unreadable_video_is_an_error_not_a_crash(
    hamilton: Team, tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with hamilton.open() as investigator:
        report = investigator.search([bad], case=CASE)
    assert report.probes[0].error and report.probes[0].faces == []


def test_retention_deletes_video_results_after_the_case_closes(
    tmp_path: Path, clip: Path, shared_data: Path
) -> None:
    team = make_team(tmp_path / "data")
    with team.open("admin") as admin:
        admin.enrol([shared_data / FR / "lin-manuel-miranda.png"], subject="lin-manuel-miranda")
    with team.open() as investigator:
        report = investigator.search([clip], case=CASE)
        assert report.probes[0].faces
        investigator.close_case(CASE)
    with team.open("admin") as admin:
        admin.set_policy("probe_retention_days", 0, reason="test: delete at once")
        run = admin.run_retention()
        assert run.searches_purged == [report.search_id]
        with admin.store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM probe_faces")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM probe_media")).scalar_one() == 0
    chips = [p for p in (team.data / "blobs").rglob("*") if p.is_file()]
    assert len(chips) == 2  # the reference image and its crop; the best shots are gone


def _face_video(path: Path, portrait: Path, on: tuple[float, float], fps: int = 25) -> None:
    """A 4 s 640x360 clip of noise in which a real portrait is on screen only during `on`."""
    face = Image.open(portrait).convert("RGB")
    face.thumbnail((220, 220))
    picture = np.asarray(face)
    rng = np.random.default_rng(11)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(4 * fps):
            frame = rng.integers(90, 140, (360, 640, 3), dtype=np.uint8)
            if on[0] <= i / fps < on[1]:
                x = 150 + 3 * i  # walking slowly to the right
                frame[60 : 60 + picture.shape[0], x : x + picture.shape[1]] = picture
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("start", [0.5, 1.13, 2.27])
def test_a_face_on_screen_for_one_second_is_found_with_the_defaults(
    hamilton: Team, shared_data: Path, tmp_path: Path, start: float
) -> None:
    """The default sampling (4 frames a second) with tracking misses no face that is visible
    for a second, whatever the phase of the sampling against its appearance."""
    clip = tmp_path / "one-second.mp4"
    _face_video(clip, shared_data / FR / "knn_examples/train/biden/biden.jpg", (start, start + 1))
    with hamilton.open() as investigator:
        report = investigator.search([clip], case=CASE)
    faces = report.probes[0].faces
    claims = [f for f in faces if f.candidates and f.candidates[0].subject == "biden"]
    assert len(claims) == 1, [(f.start, f.end, f.candidates) for f in faces]
    (seen,) = claims
    assert start - 0.05 <= seen.start <= seen.end <= start + 1.0
    assert seen.candidates[0].above_threshold
