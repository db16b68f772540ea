"""Video probes: a timeline of appearances, each a track shown by its best shot.

Frames are decoded and sampled by `media.video`, analysed by the vision pipeline (detection
and alignment in worker threads, descriptors in batches), linked into tracks, and each track
that ends is ranked against the gallery (or watchlist) by its quality-weighted descriptor. Only
tracks with candidates are kept (with their best shot), so memory does not grow with the
length of the footage; the counts say how many appearances there were in all.
"""

from __future__ import annotations

import time as clock
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrail.errors import FacetrailError
from facetrail.media.video import VIDEO_SUFFIXES, open_video
from facetrail.service.enrol import reason_of
from facetrail.service.results import Candidate, FaceResult, ProbeResult, VideoSummary
from facetrail.vision.pipeline import FaceAnalyzer
from facetrail.vision.tracker import Track, Tracker, TrackerConfig

# (probe name, frames decoded, seconds of footage done, its duration if known, wall seconds)
VideoProgress = Callable[[str, int, float, float | None, float], None]


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoOptions:
    analyzer: FaceAnalyzer  # the pipeline with the video detector
    sample_fps: float | None  # None: every frame
    tracker: TrackerConfig
    max_pixels: int
    max_bytes: int
    progress: VideoProgress | None = None


@dataclass
class Appearance:
    """A kept track: its result, the sampled frames it was seen in, and its best shot."""

    face: FaceResult
    frames: frozenset[int]
    chip: np.ndarray | None
    context: np.ndarray | None
    descriptor: np.ndarray  # the track's quality-weighted unit descriptor


def _face_result(track: Track, candidates: list[Candidate]) -> FaceResult:
    best = track.best
    assert best is not None
    return FaceResult(
        box=[round(float(v), 1) for v in best.box],
        quality=round(best.quality, 4),
        detector_score=round(best.detector_score, 4),
        candidates=candidates,
        track=track.id,
        start=round(track.start, 3),
        end=round(track.end, 3),
        best_time=round(best.time, 3),
    )


def search_video(
    path: Path,
    rank: Callable[[np.ndarray], list[list[Candidate]]],
    options: VideoOptions,
    *,
    keep_all: bool = False,
) -> tuple[ProbeResult, list[Appearance]]:
    """The appearances in one video; tracks without candidates are dropped unless
    `keep_all` (policy keeps unmatched faces)."""
    name = str(path)
    try:
        video = open_video(
            path,
            sample_fps=options.sample_fps,
            max_pixels=options.max_pixels,
            max_bytes=options.max_bytes,
        )
    except FacetrailError as exc:
        return ProbeResult(name, None, None, None, [], reason_of(exc), kind="video"), []
    tracker = Tracker(options.tracker)
    kept: list[Appearance] = []
    tracks_seen = 0
    started = clock.perf_counter()
    frames_analysed = 0

    def finish(tracks: list[Track]) -> None:
        nonlocal tracks_seen
        if not tracks:
            return
        tracks_seen += len(tracks)
        ranked = rank(np.stack([t.descriptor for t in tracks]))
        for track, candidates in zip(tracks, ranked, strict=True):
            if candidates or keep_all:
                best = track.best
                assert best is not None
                kept.append(
                    Appearance(
                        _face_result(track, candidates),
                        frozenset(track.frames),
                        best.chip,
                        best.context,
                        track.descriptor,
                    )
                )

    with video:
        try:
            for result in options.analyzer.stream(
                video.frames(), lambda f: (f.pixels, f), mode="thorough"
            ):
                frame = result.extra
                if result.error is not None or result.faces is None:
                    video.stats.warnings.append(f"a frame was skipped: {result.error}")
                    continue
                frames_analysed += 1
                tracker.update(frame.index, frame.time, result.faces, frame.pixels)  # type: ignore[attr-defined]
                finish(tracker.pop_finished())
                if options.progress:
                    options.progress(
                        name,
                        video.stats.frames_decoded,
                        frame.time,  # type: ignore[attr-defined]
                        video.info.duration,
                        clock.perf_counter() - started,
                    )
        except FacetrailError as exc:
            return (
                ProbeResult(name, video.info.sha256, None, None, [], reason_of(exc), kind="video"),
                [],
            )
        finish(tracker.finish())
    stats, info = video.stats, video.info
    summary = VideoSummary(
        duration=round(stats.last_time, 3),
        fps=info.fps,
        frames_decoded=stats.frames_decoded,
        frames_analysed=frames_analysed,
        packets_skipped=stats.packets_skipped,
        tracks=tracks_seen,
        complete=not stats.damaged and not stats.warnings,
        warnings=list(dict.fromkeys(stats.warnings))[:20],
    )
    kept.sort(key=lambda a: (a.face.start or 0.0, a.face.track or 0))
    probe = ProbeResult(
        probe=name,
        sha256=info.sha256,
        width=info.width,
        height=info.height,
        faces=[a.face for a in kept],
        kind="video",
        video=summary,
    )
    return probe, kept
