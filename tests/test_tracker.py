"""Tracking and exclusive claims on constructed faces: what links, what does not, and why.

Descriptors here are built so that "same person" and "different person" are known: each
person is a random unit vector, each sighting that vector plus a little noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from facetrail.service.results import Candidate, FaceResult
from facetrail.service.search import exclusive_claims
from facetrail.vision.compare import normalise
from facetrail.vision.faces import Faces
from facetrail.vision.tracker import Tracker, TrackerConfig, iou

DIM = 128
CONFIG = TrackerConfig(link_similarity=0.80, same_similarity=0.93, max_gap=1.0, keep=3)


def person(rng: np.random.Generator) -> np.ndarray:
    return normalise(rng.normal(size=(1, DIM)))[0]


def sighting(rng: np.random.Generator, who: np.ndarray, noise: float = 0.02) -> np.ndarray:
    return normalise((who + rng.normal(scale=noise, size=DIM))[None])[0]


def faces(boxes: list[list[float]], descriptors: list[np.ndarray], quality=None) -> Faces:
    n = len(boxes)
    return Faces(
        boxes=np.array(boxes, np.float32).reshape(n, 4),
        scores=np.ones(n, np.float32),
        landmarks=np.zeros((n, 5, 2), np.float32),
        quality=np.array(quality or [0.5] * n, np.float32),
        chips=np.zeros((n, 8, 8, 3), np.uint8),
        descriptors=np.stack(descriptors).astype(np.float32) if n else np.zeros((0, DIM)),
    )


def box_at(x: float, y: float = 100, size: float = 60) -> list[float]:
    return [x, y, x + size, y + size]


def test_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_one_person_walking_through_the_scene_is_one_track() -> None:
    rng = np.random.default_rng(1)
    alice = person(rng)
    tracker = Tracker(CONFIG)
    ids = []
    for step in range(12):  # 4 samples a second, 12 px a sample
        t = step * 0.25
        ids += tracker.update(step, t, faces([box_at(50 + 12 * step)], [sighting(rng, alice)]))
    tracks = tracker.finish()
    assert len(set(ids)) == 1 and len(tracks) == 1
    track = tracks[0]
    assert (track.start, track.end, track.faces) == (0.0, 2.75, 12)
    assert float(track.descriptor @ alice) > 0.99


def test_two_people_crossing_are_two_tracks() -> None:
    rng = np.random.default_rng(2)
    alice, bob = person(rng), person(rng)
    tracker = Tracker(CONFIG)
    seen: dict[str, set[int]] = {"alice": set(), "bob": set()}
    for step in range(15):
        # They walk towards each other; their boxes overlap in the middle steps.
        xa, xb = 40 + 20 * step, 320 - 20 * step
        ids = tracker.update(
            step,
            step * 0.25,
            faces([box_at(xa), box_at(xb)], [sighting(rng, alice), sighting(rng, bob)]),
        )
        assert ids[0] != ids[1]  # two faces of one frame never join one track
        seen["alice"].add(ids[0])
        seen["bob"].add(ids[1])
    assert len(seen["alice"]) == 1 and len(seen["bob"]) == 1
    assert len(tracker.finish()) == 2


def test_a_stranger_in_the_same_place_starts_a_new_track() -> None:
    rng = np.random.default_rng(3)
    alice, bob = person(rng), person(rng)
    tracker = Tracker(CONFIG)
    first = tracker.update(0, 0.0, faces([box_at(100)], [sighting(rng, alice)]))
    second = tracker.update(1, 0.25, faces([box_at(100)], [sighting(rng, bob)]))
    assert first != second


def test_a_short_gap_is_bridged_and_a_long_one_ends_the_track() -> None:
    rng = np.random.default_rng(4)
    alice = person(rng)
    tracker = Tracker(CONFIG)
    a = tracker.update(0, 0.0, faces([box_at(100)], [sighting(rng, alice)]))
    tracker.update(1, 0.25, faces([], []))  # hidden for a moment
    b = tracker.update(2, 0.75, faces([box_at(110)], [sighting(rng, alice)]))
    assert a == b
    assert tracker.pop_finished() == []
    c = tracker.update(3, 2.5, faces([box_at(110)], [sighting(rng, alice)]))  # gap of 1.75 s
    assert c != b
    finished = tracker.pop_finished()
    assert [t.id for t in finished] == a and finished[0].end == 0.75


def test_reappearing_elsewhere_links_only_when_very_alike() -> None:
    rng = np.random.default_rng(5)
    alice = person(rng)
    tracker = Tracker(CONFIG)
    a = tracker.update(0, 0.0, faces([box_at(10)], [sighting(rng, alice, noise=0.01)]))
    far = tracker.update(1, 0.25, faces([box_at(500)], [sighting(rng, alice, noise=0.01)]))
    assert far == a  # no overlap, but the same face beyond `same_similarity`
    lookalike = normalise((alice + rng.normal(scale=0.05, size=DIM))[None])[0]
    assert CONFIG.link_similarity < float(lookalike @ alice) < CONFIG.same_similarity
    moved = tracker.update(2, 0.5, faces([box_at(900)], [lookalike]))
    assert moved != a  # only somewhat alike and somewhere else: not linked


def test_best_shot_is_the_best_quality_face_and_the_descriptor_weights_quality() -> None:
    rng = np.random.default_rng(6)
    alice = person(rng)
    tracker = Tracker(CONFIG)
    qualities = [0.2, 0.9, 0.4, 0.6, 0.1]
    for step, q in enumerate(qualities):
        frame = np.full((400, 600, 3), step * 40, np.uint8)
        tracker.update(
            step, step * 0.25, faces([box_at(100 + step)], [sighting(rng, alice)], [q]), frame
        )
    (track,) = tracker.finish()
    assert track.best is not None and track.best.quality == pytest.approx(0.9)
    assert track.best.time == 0.25 and track.best.frame == 1
    assert track.best.context is not None and int(track.best.context[0, 0, 0]) == 40
    assert [round(q, 1) for q, _ in track._top] == [0.9, 0.6, 0.4]  # keep = 3


def _face(*candidates: tuple[str, float]) -> FaceResult:
    return FaceResult(
        [0, 0, 1, 1],
        0.5,
        1.0,
        [Candidate(s, score, None, r, score >= 0.9) for r, (s, score) in enumerate(candidates, 1)],
    )


def test_two_faces_seen_together_are_never_both_claimed_for_one_subject() -> None:
    faces_ = [_face(("obama", 0.93), ("biden", 0.91)), _face(("obama", 0.97))]
    out = exclusive_claims(faces_, lambda a, b: True)
    assert [c.subject for c in out[1].candidates] == ["obama"]
    assert [(c.subject, c.rank) for c in out[0].candidates] == [("biden", 1)]
    # Not seen together (different frames of a video): both keep their candidates.
    apart = exclusive_claims(faces_, lambda a, b: False)
    assert [c.subject for c in apart[0].candidates] == ["obama", "biden"]
