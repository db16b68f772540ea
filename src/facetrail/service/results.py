"""What the use cases return: plain dataclasses that every front door renders (JSON, tables).

Their `to_dict` forms are the JSON schemas documented in the README; change them together.
Nothing here holds a descriptor or pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _round(x: float, digits: int = 4) -> float:
    return float(round(float(x), digits))


@dataclass(frozen=True)
class Candidate:
    subject: str
    score: float
    fmr: float | None  # estimated false match rate at this score; None if uncalibrated
    rank: int
    above_threshold: bool
    id: int | None = None  # the candidate's record, for review decisions


@dataclass(frozen=True)
class FaceResult:
    """A face of an image, or (video) one appearance: a track, shown by its best shot."""

    box: list[float]  # x1, y1, x2, y2 in the probe's pixels (after EXIF/display rotation)
    quality: float
    detector_score: float
    candidates: list[Candidate] = field(default_factory=list)
    # Video only: the track, when it was on screen (seconds from the first frame), and the
    # time of the best shot that `box` and `quality` describe.
    track: int | None = None
    start: float | None = None
    end: float | None = None
    best_time: float | None = None
    # For a face of this quality, the measured share of searches for someone who is in the
    # gallery that did not show them first above this threshold (`vision.miss_rates`); None
    # where not measured (another model, threshold or calibration).
    miss_rate: float | None = None


@dataclass(frozen=True)
class VideoSummary:
    """How a video was read: what was decoded and analysed, and what went wrong."""

    duration: float  # seconds of footage decoded
    fps: float | None
    frames_decoded: int
    frames_analysed: int
    packets_skipped: int
    tracks: int  # all appearances found, with or without candidates
    complete: bool  # False when packets were skipped or reading stopped early
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    sha256: str | None
    width: int | None
    height: int | None
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    kind: str = "image"  # or "video"
    video: VideoSummary | None = None


@dataclass(frozen=True)
class SearchReport:
    model: str
    threshold: float
    target_fmr: float | None
    top_k: int
    gallery_subjects: int  # of the searched set: the watchlist, or the whole gallery
    gallery_templates: int
    probes: list[ProbeResult]
    search_id: int | None = None
    case: str | None = None
    scope: str | None = None  # "watchlist" or "gallery"
    watchlist: str | None = None
    unmatched_faces_deleted: int = 0
    # "cosine", or "as-norm" when scores were normalised against the cohort (issue 10)
    scoring: str = "cosine"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    model: str
    a: ProbeResult
    b: ProbeResult
    score: float
    threshold: float
    match: bool
    fmr: float | None
    meaning: str
    case: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnrolItemResult:
    subject: str
    image: str
    status: str  # "enrolled", "duplicate" or "skipped"
    reason: str | None = None
    quality: float | None = None


@dataclass
class EnrolReport:
    model: str
    results: list[EnrolItemResult] = field(default_factory=list)

    @property
    def enrolled(self) -> int:
        return sum(r.status == "enrolled" for r in self.results)

    @property
    def skipped(self) -> list[EnrolItemResult]:
        return [r for r in self.results if r.status == "skipped"]

    def to_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for r in self.skipped:
            reasons[r.reason or "?"] = reasons.get(r.reason or "?", 0) + 1
        return {
            "model": self.model,
            "enrolled": self.enrolled,
            "duplicates": sum(r.status == "duplicate" for r in self.results),
            "skipped": len(self.skipped),
            "skipped_reasons": reasons,
            "subjects": sorted({r.subject for r in self.results if r.status == "enrolled"}),
            "items": [asdict(r) for r in self.results],
        }
