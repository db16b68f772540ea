"""Live recognition: one deployment's frames in, alerts out, and nothing else kept.

A `LiveRunner` has two threads. The reader pulls frames from the source (a network stream or
camera device through PyAV, or a video file played at its real-time pace) and hands each to a
`FrameSlot`, which holds only the newest frame: when analysis falls behind, the older frame is
dropped and counted, so memory stays flat however long the run. The processing thread (the
caller's, in `run`) takes the newest frame, detects, aligns and describes its faces with the
video pipeline, links them into tracks, and ranks every updated track's descriptor against
the watchlist's subjects only. A track raises one alert per subject, the first time it scores
above the threshold, never one per frame. Faces that match nothing live only in the tracker's
memory until their track ends; only counters are reported.

A network source that fails or ends is reopened with backoff, a bounded number of times. The
run stops by itself at its end time, on `stop()`, or when a file source ends.
"""

from __future__ import annotations

import re
import threading
import time as clock
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from facetrail.errors import FacetrailError, InvalidInputError, MediaError
from facetrail.media.chips import png_bytes
from facetrail.media.video import open_video
from facetrail.service.results import Candidate
from facetrail.service.tables import Alert, Deployment, User
from facetrail.store.models import utcnow
from facetrail.vision.pipeline import FaceAnalyzer
from facetrail.vision.tracker import Track, Tracker, TrackerConfig

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "rtp")
_CREDENTIALS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")
# Open and read timeouts for network sources, microseconds (FFmpeg's unit).
_NETWORK_OPTIONS = {"rw_timeout": "5000000", "timeout": "5000000", "stimeout": "5000000"}


def strip_credentials(source: str) -> str:
    """The source without any `user:password@` in its URL: what may be stored and shown."""
    return _CREDENTIALS.sub(r"\1", source)


def source_kind(source: str) -> str:
    """'file', 'network' or 'device'; InvalidInputError for anything else."""
    if not isinstance(source, str) or not source.strip() or len(source) > 1000:
        raise InvalidInputError("a source is a video file, a stream URL or a camera device")
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme in NETWORK_SCHEMES:
        return "network"
    if source.startswith("/dev/video"):
        return "device"
    if scheme:
        raise InvalidInputError(f"unsupported source scheme {scheme!r}")
    if not Path(source).is_file():
        raise MediaError(f"{Path(source).name}: file does not exist")
    return "file"


@dataclass(frozen=True)
class LiveFrame:
    index: int  # position among the frames received
    time: float  # seconds from the start of the stream
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    arrived: float  # epoch seconds when the reader had it decoded: where latency starts


class FrameSlot:
    """The bounded hand-off from reader to processor: holds at most `capacity` frames; a new
    frame pushes out the oldest (dropped and counted), so the processor always gets the
    newest frames and nothing queues without bound."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._frames: deque[Any] = deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self.received += 1
            if len(self._frames) >= self._capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(item)
            self._cond.notify()

    def take(self, timeout: float | None = None) -> Any | None:
        """The oldest frame still held, or None after `timeout` (or when closed and empty)."""
        with self._cond:
            if not self._frames and not self._closed:
                self._cond.wait(timeout)
            return self._frames.popleft() if self._frames else None

    def close(self) -> None:
        """No more frames will come."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and not self._frames

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


@dataclass
class Counters:
    frames_received: int = 0
    frames_dropped: int = 0
    frames_analysed: int = 0
    faces_seen: int = 0
    alerts: int = 0


@dataclass(frozen=True)
class RaisedAlert:
    """What the runner hands out for one (track, subject): the service stores it."""

    track: int
    subject: str
    score: float
    fmr: float | None
    time: float  # seconds into the stream of the best shot
    at: datetime
    best_shot: bytes | None  # PNG of the track's best shot (a crop around the face)
    frame: int  # the frame that raised it
    frame_arrived: float  # epoch seconds when that frame arrived


@dataclass
class LiveOptions:
    analyzer: FaceAnalyzer
    tracker: TrackerConfig
    until: datetime
    pace: float = 1.0  # file sources: playback speed (1.0: real time)
    reconnect_attempts: int = 5
    backoff: float = 0.5  # seconds before the first reconnection; doubles, at most 10 s
    max_pixels: int = 50_000_000
    heartbeat: float = 1.0  # seconds between `on_counters` calls
    slot_capacity: int = 1


Rank = Callable[[np.ndarray], list[list[Candidate]]]


class LiveRunner:
    """One deployment's run. `run()` blocks until it ends and returns how it ended:
    "ended" (end time reached or the file ended), "stopped", "shutdown" (the process is
    stopping), or "interrupted" (the source was lost and could not be reopened; `error` says
    why)."""

    def __init__(
        self,
        source: str,
        rank: Rank,
        options: LiveOptions,
        *,
        on_alert: Callable[[RaisedAlert], None],
        on_counters: Callable[[Counters], bool] | None = None,
    ) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.rank = rank
        self.options = options
        self.on_alert = on_alert
        self.on_counters = on_counters
        self.counters = Counters()
        self.error: str | None = None
        self._stop = threading.Event()
        self._slot = FrameSlot(options.slot_capacity)
        self._reader_outcome = "ended"
        self._shutdown = False

    def stop(self, *, shutdown: bool = False) -> None:
        """End the run; `shutdown`: because the process is stopping (the run ends as
        "shutdown", which the service may resume when it starts again)."""
        self._shutdown = self._shutdown or shutdown
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- reading -------------------------------------------------------------------------
    def _file_frames(self) -> Iterator[LiveFrame]:
        pace = self.options.pace if self.options.pace > 0 else 1.0
        with open_video(self.source, max_pixels=self.options.max_pixels) as video:
            started = clock.monotonic()
            for frame in video.frames():
                due = started + frame.time / pace
                if self._stop.wait(max(0.0, due - clock.monotonic())):
                    return
                yield LiveFrame(frame.index, frame.time, frame.pixels, clock.time())

    def _stream_frames(self) -> Iterator[LiveFrame]:
        """A network or device source, reopened with backoff when lost."""
        failures, index = 0, 0
        opts = self.options
        while not self._stop.is_set():
            got = False
            try:
                if self.kind == "device":
                    container = av.open(self.source, format="v4l2", timeout=5.0)
                else:
                    container = av.open(self.source, options=_NETWORK_OPTIONS, timeout=5.0)
                try:
                    first: float | None = None
                    started = clock.monotonic()
                    for frame in container.decode(video=0):
                        if self._stop.is_set():
                            return
                        got = True
                        t = frame.time
                        if t is None:
                            t = clock.monotonic() - started
                        first = t if first is None else first
                        pixels = frame.to_ndarray(format="rgb24")
                        yield LiveFrame(index, max(0.0, float(t) - first), pixels, clock.time())
                        index += 1
                finally:
                    container.close()
                reason = "the stream ended"
            except (av.FFmpegError, OSError, ValueError) as e:
                reason = str(e).split(": '", 1)[0] or type(e).__name__
            failures = 0 if got else failures + 1
            if failures > opts.reconnect_attempts:
                self.error = f"source lost: {reason}"
                self._reader_outcome = "interrupted"
                return
            delay = min(10.0, opts.backoff * 2 ** max(0, failures - 1))
            if self._stop.wait(delay):
                return

    def _read(self) -> None:
        try:
            frames = self._file_frames() if self.kind == "file" else self._stream_frames()
            for frame in frames:
                self._slot.put(frame)
        except FacetrailError as exc:
            self.error = str(exc)
            self._reader_outcome = "interrupted"
        except Exception as exc:  # a reader must never die silently
            self.error = f"source failed: {exc}"
            self._reader_outcome = "interrupted"
        finally:
            self._slot.close()

    # -- processing ----------------------------------------------------------------------
    def run(self) -> str:
        self._warm_up()
        reader = threading.Thread(target=self._read, name="facetrail-live-reader", daemon=True)
        beats = threading.Thread(target=self._heartbeats, name="facetrail-live-beat", daemon=True)
        reader.start()
        beats.start()
        tracker = Tracker(self.options.tracker)
        alerted: dict[int, set[str]] = {}
        outcome = "ended"
        try:
            while True:
                if self._stop.is_set():
                    outcome = "shutdown" if self._shutdown else "stopped"
                    break
                if utcnow() >= self.options.until:
                    outcome = "ended"
                    break
                frame = self._slot.take(timeout=0.1)
                if frame is None:
                    if self._slot.closed:  # the reader ended (or saw the stop first)
                        outcome = self._reader_outcome
                        if self._stop.is_set():
                            outcome = "shutdown" if self._shutdown else "stopped"
                        break
                else:
                    self._analyse(frame, tracker, alerted)
        finally:
            self._stop.set()
            reader.join(timeout=15)
            beats.join(timeout=15)
            self._sync()
        self._beat()
        return outcome

    def _warm_up(self) -> None:
        """Run the models once before the stream opens, so that the first alert of a
        deployment (the one that matters most) does not also pay for their start."""
        analyzer = self.options.analyzer
        analyzer.locate(np.zeros((720, 1280, 3), np.uint8), "thorough")
        size = analyzer.descriptor.chip_size
        analyzer.descriptor.describe(np.zeros((1, size, size, 3), np.uint8))

    def _heartbeats(self) -> None:
        """Report the counters every `heartbeat` seconds, off the processing thread (a
        database write must not delay a frame); the service's refusal stops the run."""
        while not self._stop.wait(self.options.heartbeat):
            if not self._beat():
                self._stop.set()

    def _sync(self) -> None:
        self.counters.frames_received = self._slot.received
        self.counters.frames_dropped = self._slot.dropped + len(self._slot)

    def _beat(self) -> bool:
        """Report the counters; False when the service says the run must stop."""
        self._sync()
        if self.on_counters is None:
            return True
        return self.on_counters(self.counters)

    def _analyse(self, frame: LiveFrame, tracker: Tracker, alerted: dict[int, set[str]]) -> None:
        analyzer = self.options.analyzer
        faces = analyzer.describe([analyzer.locate(frame.pixels, "thorough")])[0]
        self.counters.frames_analysed += 1
        self.counters.faces_seen += len(faces)
        ids = tracker.update(frame.index, frame.time, faces, frame.pixels)
        for done in tracker.pop_finished():
            alerted.pop(done.id, None)
        if not ids:
            return
        open_tracks = {t.id: t for t in tracker.open_tracks()}
        tracks = [open_tracks[i] for i in dict.fromkeys(ids)]
        ranked = self.rank(np.stack([t.descriptor for t in tracks]))
        for track, candidates in zip(tracks, ranked, strict=True):
            seen = alerted.setdefault(track.id, set())
            for c in candidates:
                if not c.above_threshold or c.subject in seen:
                    continue
                seen.add(c.subject)
                self.counters.alerts += 1
                self.on_alert(self._alert(track, c, frame))

    @staticmethod
    def _alert(track: Track, candidate: Candidate, frame: LiveFrame) -> RaisedAlert:
        best = track.best
        assert best is not None
        image = best.context if best.context is not None else best.chip
        return RaisedAlert(
            track=track.id,
            subject=candidate.subject,
            score=candidate.score,
            fmr=candidate.fmr,
            time=round(best.time, 3),
            at=utcnow(),
            best_shot=None if image is None else png_bytes(np.asarray(image)),
            frame=frame.index,
            frame_arrived=frame.arrived,
        )


# -- what the service shows ----------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentInfo:
    id: int
    watchlist: str
    source: str
    threshold: float
    started_by: str
    started_at: datetime
    until: datetime
    stopped_at: datetime | None
    status: str
    error: str | None
    frames_received: int
    frames_dropped: int
    frames_analysed: int
    faces_seen: int
    alerts: int
    confirmed: int
    false_alerts: int
    resumable: bool
    resumed: int  # times a service restart resumed it
    location: str | None
    watchlist_size: int | None


@dataclass(frozen=True)
class AlertInfo:
    id: int
    deployment: int
    subject: str
    score: float
    fmr: float | None
    at: datetime
    time: float
    track: int
    best_shot_sha256: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    outcome: str | None
    note: str | None


@dataclass(frozen=True)
class DeploymentSummary:
    """One deployment as a transparency report shows it."""

    id: int
    watchlist: str
    watchlist_size: int | None
    location: str | None
    started_at: datetime
    duration_s: float
    status: str
    faces_seen: int
    alerts: int
    confirmed: int
    false_alerts: int
    false_alert_rate: float | None  # false alerts per face seen, as the Met publishes it


@dataclass(frozen=True)
class LiveReport:
    since: datetime | None  # deployments started in [since, until)
    until: datetime | None
    deployments: list[DeploymentSummary]
    faces_seen: int
    alerts: int
    confirmed: int
    false_alerts: int
    unreviewed: int  # alerts neither confirmed nor marked false
    false_alert_rate: float | None


def false_alert_rate(false_alerts: int, faces_seen: int) -> float | None:
    return false_alerts / faces_seen if faces_seen else None


def deployment_info(s: Session, r: Deployment) -> DeploymentInfo:
    """A deployment row as its caller sees it."""
    starter = s.scalar(select(User.name).where(User.id == r.started_by)) or "?"
    return DeploymentInfo(
        id=r.id,
        watchlist=r.watchlist_name,
        source=r.source,
        threshold=r.threshold,
        started_by=starter,
        started_at=r.started_at,
        until=r.until,
        stopped_at=r.stopped_at,
        status=r.status,
        error=r.error,
        frames_received=r.frames_received,
        frames_dropped=r.frames_dropped,
        frames_analysed=r.frames_analysed,
        faces_seen=r.faces_seen,
        alerts=r.alerts,
        confirmed=r.confirmed,
        false_alerts=r.false_alerts,
        resumable=r.resumable,
        resumed=r.resumed,
        location=r.location,
        watchlist_size=r.watchlist_size,
    )


def alert_info(s: Session, a: Alert) -> AlertInfo:
    """An alert row as its reviewer sees it (the best shot by hash only)."""
    reviewer = None
    if a.reviewed_by is not None:
        reviewer = s.scalar(select(User.name).where(User.id == a.reviewed_by))
    return AlertInfo(
        id=a.id,
        deployment=a.deployment_id,
        subject=a.subject_name,
        score=a.score,
        fmr=a.fmr,
        at=a.at,
        time=a.time,
        track=a.track,
        best_shot_sha256=a.best_shot_sha256,
        reviewed_by=reviewer,
        reviewed_at=a.reviewed_at,
        outcome=a.outcome,
        note=a.note,
    )
