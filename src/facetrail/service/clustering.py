"""Unknown persons: the faces and video appearances of many files grouped by who they are,
without a gallery ("the same unknown person is in video 1 at 00:12 and in video 3 at 04:40").

Greedy centroid clustering: sightings are taken best quality first; each joins the person
whose mean descriptor it is most like, if that is at least the threshold and the person was
never seen in the same image or video frame as it (two faces seen together are two people);
otherwise it starts a new person. Best-first means a person's mean is formed by their clearest
faces before the blurred ones are compared with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facetrail.media import load_image
from facetrail.service.enrol import reason_of
from facetrail.service.footage import VideoOptions, is_video, search_video
from facetrail.service.results import ProbeResult
from facetrail.vision.compare import normalise
from facetrail.vision.pipeline import FaceAnalyzer


@dataclass(frozen=True)
class Sighting:
    """One face of an image, or one appearance (track) in a video."""

    media: str
    sha256: str | None
    kind: str  # "image" or "video"
    box: list[float]
    quality: float
    start: float | None = None  # video: when on screen, and the best shot's time
    end: float | None = None
    best_time: float | None = None


@dataclass(frozen=True)
class Person:
    id: int
    sightings: list[Sighting]
    files: int  # distinct media files this person is in


@dataclass(frozen=True)
class ClusterReport:
    model: str
    threshold: float
    sightings: int
    persons: list[Person]  # most-seen first
    recurring: int  # persons seen in two or more files
    probes: list[ProbeResult] = field(default_factory=list)  # per file: errors and video stats


@dataclass
class _Item:
    sighting: Sighting
    unit: np.ndarray
    image: np.ndarray | None  # for the contact sheet
    group: int  # the file it came from
    frames: frozenset[int] | None  # video frames it was seen in (None: a still image)


def seen_together(a: _Item, b: _Item) -> bool:
    if a.group != b.group:
        return False
    if a.frames is None or b.frames is None:
        return True  # two faces of one image
    return not a.frames.isdisjoint(b.frames)


def assign(items: list[_Item], threshold: float) -> list[list[int]]:
    """Indices of `items` per person, by the greedy rule in the module docstring."""
    order = sorted(range(len(items)), key=lambda i: -items[i].sighting.quality)
    members: list[list[int]] = []
    sums: list[np.ndarray] = []
    for i in order:
        item = items[i]
        chosen = None
        if sums:
            centroids = normalise(np.stack(sums))
            sims = centroids @ item.unit
            for p in np.argsort(-sims):
                if sims[p] < threshold:
                    break
                if not any(seen_together(item, items[j]) for j in members[p]):
                    chosen = int(p)
                    break
        weight = max(item.sighting.quality, 1e-3)
        if chosen is None:
            members.append([i])
            sums.append(weight * item.unit)
        else:
            members[chosen].append(i)
            sums[chosen] = sums[chosen] + weight * item.unit
    return members


def collect(
    analyzer: FaceAnalyzer,
    paths: list[Path],
    video: VideoOptions,
    *,
    max_pixels: int,
    max_bytes: int,
    progress: Callable[[ProbeResult], None] | None = None,
) -> tuple[list[_Item], list[ProbeResult]]:
    """Every face of the images and every appearance of the videos, described."""
    items: list[_Item] = []
    probes: list[ProbeResult] = []

    def prepare(path: Path) -> tuple[np.ndarray, object]:
        loaded = load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
        return loaded.pixels, loaded.sha256

    images = [p for p in paths if not is_video(p)]
    for group, result in enumerate(analyzer.stream(images, prepare, mode="thorough")):
        name = str(result.item)
        if result.error is not None or result.faces is None:
            probe = ProbeResult(name, None, None, None, [], reason_of(result.error))
        else:
            faces = result.faces
            assert faces.descriptors is not None
            units = normalise(faces.descriptors)
            sha = str(result.extra)
            for i in range(len(faces)):
                box = [round(float(v), 1) for v in faces.boxes[i]]
                sighting = Sighting(name, sha, "image", box, round(float(faces.quality[i]), 4))
                chip = None if faces.chips is None else faces.chips[i]
                items.append(_Item(sighting, units[i], chip, group, None))
            probe = ProbeResult(name, sha, None, None, [])
        probes.append(probe)
        if progress:
            progress(probe)
    for offset, path in enumerate(p for p in paths if is_video(p)):
        probe, appearances = search_video(path, lambda d: [[] for _ in d], video, keep_all=True)
        for a in appearances:
            f = a.face
            sighting = Sighting(
                str(path), probe.sha256, "video", f.box, f.quality, f.start, f.end, f.best_time
            )
            image = a.context if a.context is not None else a.chip
            items.append(_Item(sighting, a.descriptor, image, len(images) + offset, a.frames))
        probes.append(probe)
        if progress:
            progress(probe)
    return items, probes


def report(
    model: str, threshold: float, items: list[_Item], probes: list[ProbeResult]
) -> tuple[ClusterReport, dict[int, np.ndarray | None]]:
    """The persons, most-seen first, and each person's clearest face (for a contact sheet)."""
    groups = sorted(assign(items, threshold), key=lambda m: (-len(m), m[0]))
    persons, faces = [], {}
    for number, members in enumerate(groups, start=1):
        sightings = sorted(
            (items[i].sighting for i in members), key=lambda s: (s.media, s.start or 0.0)
        )
        persons.append(Person(number, sightings, len({s.media for s in sightings})))
        faces[number] = items[max(members, key=lambda i: items[i].sighting.quality)].image
    result = ClusterReport(
        model=model,
        threshold=round(threshold, 4),
        sightings=len(items),
        persons=persons,
        recurring=sum(p.files >= 2 for p in persons),
        probes=probes,
    )
    return result, faces
