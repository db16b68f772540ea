"""Tracks: the faces of one person across consecutive (sampled) video frames.

Each new frame's faces are linked to the open tracks by what they look like (descriptor
similarity) and where they are (box overlap with the track's last box). A pair is linked when
it is close in both, or very close in looks alone (a person who turns away for a moment, or is
hidden as someone walks past). Assignment is one-to-one within a frame, greedily by strength,
so two faces of one frame never join one track: one person walking through the scene is one
track and two people crossing are two, because their descriptors tell them apart where their
boxes overlap. A track not seen for `max_gap` seconds is finished and handed out, so memory
holds only the tracks on screen, however long the video.

A track keeps its `keep` best faces by quality; its descriptor is their quality-weighted mean
(normalised), and its best shot is the single best face, with a context crop for people to look
at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facetrail.vision.compare import normalise
from facetrail.vision.faces import Faces


@dataclass(frozen=True)
class TrackerConfig:
    link_similarity: float  # looks alike enough to link when the boxes also overlap
    same_similarity: float  # looks alike enough to link wherever the box is
    min_overlap: float = 0.1  # IoU of the track's last box and the new box
    max_gap: float = 1.5  # seconds unseen before a track is finished
    keep: int = 5  # best faces kept per track for its descriptor


@dataclass
class BestShot:
    time: float
    frame: int
    box: np.ndarray  # (4,) x1, y1, x2, y2
    quality: float
    detector_score: float
    chip: np.ndarray | None  # aligned crop (the descriptor's input)
    context: np.ndarray | None  # a wider crop of the frame around the face, for people


@dataclass
class Track:
    id: int
    start: float
    end: float
    faces: int = 0  # faces linked (one per sampled frame at most)
    frames: list[int] = field(default_factory=list)  # sampled frame indices it appears in
    best: BestShot | None = None
    last_box: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))
    recent: np.ndarray | None = None  # the newest face's descriptor (unit length)
    _top: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (quality, unit desc)

    @property
    def descriptor(self) -> np.ndarray:
        """Quality-weighted mean of the best faces' unit descriptors, normalised."""
        weights = np.array([max(q, 1e-3) for q, _ in self._top], np.float32)
        stacked = np.stack([d for _, d in self._top])
        return normalise((weights[:, None] * stacked).sum(axis=0, keepdims=True))[0]

    def overlaps(self, other: Track) -> bool:
        """Whether both were seen in one frame (then they are two people)."""
        if self.end < other.start or other.end < self.start:
            return False
        return not set(self.frames).isdisjoint(other.frames)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (n, 4) with every box of `b` (m, 4): (n, m)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def context_crop(pixels: np.ndarray, box: np.ndarray, margin: float = 0.6) -> np.ndarray:
    """The face with `margin` of its size around it on each side, clipped to the frame."""
    h, w = pixels.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
    return np.array(pixels[top:bottom, left:right])


class Tracker:
    """Feed it each sampled frame's described faces in time order; collect finished tracks."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self._open: list[Track] = []
        self._finished: list[Track] = []
        self._next_id = 1

    def update(
        self, frame: int, time: float, faces: Faces, pixels: np.ndarray | None = None
    ) -> list[int]:
        """Link this frame's faces; returns each face's track id, in face order."""
        self._finish_unseen(time)
        n = len(faces)
        if n == 0:
            return []
        assert faces.descriptors is not None, "faces must be described before tracking"
        units = normalise(faces.descriptors)
        assigned = self._assign(faces.boxes, units)
        ids = []
        for i in range(n):
            track = assigned.get(i)
            if track is None:
                track = Track(self._next_id, time, time)
                self._next_id += 1
                self._open.append(track)
            self._add(track, frame, time, faces, i, units[i], pixels)
            ids.append(track.id)
        return ids

    def _assign(self, boxes: np.ndarray, units: np.ndarray) -> dict[int, Track]:
        if not self._open:
            return {}
        cfg = self.config
        tracks = self._open
        sims = np.stack([t.recent for t in tracks]) @ units.T  # (tracks, faces)
        means = np.stack([t.descriptor for t in tracks]) @ units.T
        sims = np.maximum(sims, means)  # like the newest face, or like the track as a whole
        overlaps = iou(np.stack([t.last_box for t in tracks]), boxes)
        near = (overlaps >= cfg.min_overlap) & (sims >= cfg.link_similarity)
        same = sims >= cfg.same_similarity
        strength = np.where(near | same, sims + 0.5 * overlaps, -np.inf)
        out: dict[int, Track] = {}
        used: set[int] = set()
        # Strongest pairs first; each track and each face at most once.
        for flat in np.argsort(-strength, axis=None):
            ti, fi = np.unravel_index(flat, strength.shape)
            if not np.isfinite(strength[ti, fi]):
                break
            if ti in used or fi in out:
                continue
            used.add(int(ti))
            out[int(fi)] = tracks[int(ti)]
        return out

    def _add(
        self,
        track: Track,
        frame: int,
        time: float,
        faces: Faces,
        i: int,
        unit: np.ndarray,
        pixels: np.ndarray | None,
    ) -> None:
        quality = float(faces.quality[i])
        # Damaged footage can step back in time; a track still spans what it saw.
        track.start, track.end = min(track.start, time), max(track.end, time)
        track.faces += 1
        track.frames.append(frame)
        track.last_box = faces.boxes[i].astype(np.float32)
        track.recent = unit
        track._top.append((quality, unit))
        track._top.sort(key=lambda qd: -qd[0])
        del track._top[self.config.keep :]
        if track.best is None or quality > track.best.quality:
            track.best = BestShot(
                time=time,
                frame=frame,
                box=faces.boxes[i].astype(np.float32),
                quality=quality,
                detector_score=float(faces.scores[i]),
                chip=None if faces.chips is None else np.array(faces.chips[i]),
                context=None if pixels is None else context_crop(pixels, faces.boxes[i]),
            )

    def _finish_unseen(self, time: float) -> None:
        still = []
        for track in self._open:
            if time - track.end > self.config.max_gap:
                self._finished.append(track)
            else:
                still.append(track)
        self._open = still

    def open_tracks(self) -> list[Track]:
        """The tracks still on screen (live recognition ranks them as they grow)."""
        return list(self._open)

    def pop_finished(self) -> list[Track]:
        """Tracks that have ended since the last call (by id order)."""
        done, self._finished = self._finished, []
        return sorted(done, key=lambda t: t.id)

    def finish(self) -> list[Track]:
        """End of video: every track is finished."""
        self._finished.extend(self._open)
        self._open = []
        return self.pop_finished()
