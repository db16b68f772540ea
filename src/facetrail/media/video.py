"""Video files: untrusted footage in, a stream of upright RGB frames with their times out.

Footage is decoded by FFmpeg through PyAV, one packet at a time, so memory stays flat however
long the video is: a frame is converted to RGB only if the sampling policy keeps it, and none
is held after the caller moves on. Damaged footage is the normal case for CCTV exports: a
packet FFmpeg cannot decode is skipped and counted, and the rest is processed; the caller
reads the counts in `stats` and decides what "complete" means. Phone video's display rotation
is honoured. Everything that makes a file unusable becomes one `MediaError` naming it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from facetrail.errors import MediaError

__all__ = ["VIDEO_SUFFIXES", "DecodeStats", "Frame", "Video", "VideoInfo", "open_video"]

VIDEO_SUFFIXES: frozenset[str] = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".3gp",
        ".mjpeg",
        ".h264",
        ".h265",
        ".hevc",
    }
)

# A file that fails this many packets in a row is not footage with damage in it; it is damage.
_MAX_CONSECUTIVE_ERRORS = 500
_MIB = 1024 * 1024


@dataclass
class VideoInfo:
    """What the container says about the video stream. The display rotation (and with it
    the displayed width and height) is known from the first decoded frame on."""

    name: str
    sha256: str
    format: str  # container, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # e.g. "h264"
    width: int  # as displayed, after rotation
    height: int
    fps: float | None  # average frame rate, if the container knows it
    duration: float | None  # seconds, if the container knows it
    rotation: int  # display rotation applied to every frame, degrees counter-clockwise


@dataclass(frozen=True)
class Frame:
    """One decoded frame: `pixels` (H, W, 3) uint8 RGB, upright, read-only."""

    index: int  # position among all decoded frames, from 0
    time: float  # seconds from the start of the stream
    pixels: np.ndarray


@dataclass
class DecodeStats:
    """How decoding went; a result built from a video carries these."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    packets_skipped: int = 0  # undecodable packets, skipped
    last_time: float = 0.0  # the time of the last decoded frame
    warnings: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return self.packets_skipped > 0


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces (videos are too large to hold)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _as_float(value: Fraction | float | int | None) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ZeroDivisionError):
        return None
    return f if f > 0 else None


class Video:
    """An open video file; iterate `frames()` once. Use `open_video` (a context manager)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample_fps: float | None = None,
        max_pixels: int = 50_000_000,
        max_bytes: int = 64 * 1024 * _MIB,
    ) -> None:
        path = Path(path)
        name = path.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise MediaError(f"{name}: file does not exist") from None
        except OSError as e:
            raise MediaError(f"{name}: cannot be read ({e.strerror})") from None
        if not path.is_file():
            raise MediaError(f"{name}: not a regular file")
        if size == 0:
            raise MediaError(f"{name}: no data (empty)")
        if size > max_bytes:
            raise MediaError(f"{name}: {size // _MIB} MiB, above the limit of {max_bytes // _MIB}")
        if sample_fps is not None and not sample_fps > 0:
            raise MediaError("the sampling rate must be a positive number of frames per second")
        try:
            self._container = av.open(str(path), mode="r", metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
            raise MediaError(f"{name}: not a readable video ({_reason(e)})") from None
        try:
            if not self._container.streams.video:
                kinds = sorted({s.type for s in self._container.streams}) or ["no streams"]
                raise MediaError(f"{name}: no video stream ({', '.join(kinds)} only)")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"  # frame and slice threads inside FFmpeg
            ctx = self._stream.codec_context
            width, height = int(ctx.width or 0), int(ctx.height or 0)
            if width <= 0 or height <= 0:
                raise MediaError(f"{name}: the video stream has no frame size")
            if width * height > max_pixels:
                raise MediaError(
                    f"{name}: frames of {width}x{height} are above the limit of "
                    f"{max_pixels / 1e6:.0f} MP"
                )
            duration = None
            if self._stream.duration is not None and self._stream.time_base is not None:
                duration = _as_float(self._stream.duration * self._stream.time_base)
            elif self._container.duration is not None:
                duration = _as_float(self._container.duration / av.time_base)
            self.info = VideoInfo(
                name=name,
                sha256=sha256_of(path),
                format=self._container.format.name,
                codec=ctx.name,
                width=width,
                height=height,
                fps=_as_float(self._stream.average_rate),
                duration=duration,
                rotation=0,
            )
        except BaseException:
            self._container.close()
            raise
        self.sample_fps = sample_fps
        self.max_pixels = max_pixels
        self.stats = DecodeStats()
        self._used = False

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        """The sampled frames, in order: every frame, or about `sample_fps` per second.

        A frame is kept when its time reaches the next sampling instant, so variable frame
        rate footage is sampled by time, not by count.
        """
        if self._used:
            raise MediaError(f"{self.info.name}: frames() can be read only once")
        self._used = True
        period = 1.0 / self.sample_fps if self.sample_fps else 0.0
        # A frame on a sampling instant is kept even where float rounding or a coarse time
        # base puts it a hair before it (in floating point, 1.4 < 1.3 + 0.1).
        slack = period / 20
        next_time = float("-inf")
        damaged_packets = damaged_frames = 0
        stats, name = self.stats, self.info.name
        consecutive = 0
        fallback_rate = self.info.fps or 25.0
        start = 0.0
        if self._stream.start_time is not None and self._stream.time_base is not None:
            start = float(self._stream.start_time * self._stream.time_base)
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, ValueError) as e:  # the demuxer itself gave up: truncated
                stats.warnings.append(f"reading stopped early: {_reason(e)}")
                break
            if packet.is_corrupt:  # the demuxer saw damage (an MPEG-TS continuity error, say)
                damaged_packets += 1
            try:
                decoded = packet.decode()
                consecutive = 0
            except (av.FFmpegError, ValueError):
                stats.packets_skipped += 1
                consecutive += 1
                if consecutive >= _MAX_CONSECUTIVE_ERRORS:
                    stats.warnings.append(f"gave up after {consecutive} undecodable packets")
                    break
                continue
            for frame in decoded:
                index = stats.frames_decoded
                stats.frames_decoded += 1
                if frame.is_corrupt:  # decoded, with the decoder's error concealment
                    damaged_frames += 1
                t = frame.time
                # Seconds from the first frame (containers often start at a non-zero time).
                time = max(0.0, float(t) - start) if t is not None else index / fallback_rate
                stats.last_time = max(stats.last_time, time)
                if period:
                    if time < next_time - slack:
                        continue
                    # On a grid of `period` from the first kept frame; after a gap in the
                    # footage, from this frame.
                    step_from = next_time if time - next_time < period else time
                    next_time = step_from + period
                pixels = self._pixels(frame)
                if pixels is None:
                    continue
                stats.frames_sampled += 1
                yield Frame(index, time, pixels)
        if damaged_packets:
            stats.warnings.append(f"{damaged_packets} damaged packets were decoded as they were")
        if damaged_frames:
            stats.warnings.append(f"{damaged_frames} frames were decoded with errors concealed")
        if stats.frames_decoded == 0:
            raise MediaError(f"{name}: no frame could be decoded (corrupt or truncated)")

    def _pixels(self, frame: av.VideoFrame) -> np.ndarray | None:
        if frame.width * frame.height > self.max_pixels:
            self.stats.warnings.append(f"a frame of {frame.width}x{frame.height} was skipped")
            return None
        pixels = frame.to_ndarray(format="rgb24")
        rotation = int(getattr(frame, "rotation", 0) or 0) % 360
        if rotation:
            # PyAV reports the display matrix's angle counter-clockwise; np.rot90 turns
            # counter-clockwise for positive k.
            pixels = np.ascontiguousarray(np.rot90(pixels, k=rotation // 90))
            if self.info.rotation != rotation:
                self.info.rotation = rotation
                self.info.height, self.info.width = pixels.shape[:2]
        pixels.flags.writeable = False
        return pixels


def open_video(
    path: str | os.PathLike[str],
    *,
    sample_fps: float | None = None,
    max_pixels: int = 50_000_000,
    max_bytes: int = 64 * 1024 * _MIB,
) -> Video:
    """Open a video for streaming; `with open_video(p) as v: for f in v.frames(): ...`."""
    return Video(path, sample_fps=sample_fps, max_pixels=max_pixels, max_bytes=max_bytes)


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.split(": '", 1)[0]
