"""The video reader: a real clip, every container and codec this PyAV build can write, variable
frame rate, phone rotation, damaged and hostile files, and flat memory on long footage.

Every synthetic video is written here with PyAV. Its frames carry their own number (8 white or
black cells along the bottom) and a red square that moves, so a test can tell which frame it
got, whether the frames differ, and whether the channels are in RGB order.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import tracemalloc
import weakref
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest

from facetrail.errors import MediaError
from facetrail.media.video import open_video

W, H = 64, 48  # small frames keep writing and reading fast
RATE = 25
HAMILTON = "examples/face_recognition/short_hamilton_clip.mp4"
TRUTH = Path(__file__).parent / "data" / "hamilton_truth.json"


# --------------------------------------------------------------------------- fixtures


def picture(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Frame `i`: grey, a red square moving right, and `i` in binary along the bottom."""
    img = np.full((h, w, 3), 40, np.uint8)
    x = (i * 2) % (w - 12)
    img[4:16, x : x + 12] = (230, 30, 30)
    for bit in range(8):
        if i >> bit & 1:
            img[h - 8 : h, bit * 8 : bit * 8 + 8] = 255
    return img


def number_of(pixels: np.ndarray) -> int:
    """The frame number drawn by `picture`, read back from decoded pixels."""
    h = pixels.shape[0]
    cells = [pixels[h - 6 : h - 2, bit * 8 + 2 : bit * 8 + 6].mean() for bit in range(8)]
    return sum(1 << bit for bit, level in enumerate(cells) if level > 150)


def need_encoder(codec: str) -> None:
    try:
        av.codec.Codec(codec, "w")
    except (ValueError, av.FFmpegError):
        pytest.skip(f"this PyAV/FFmpeg build has no {codec} encoder")


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    n: int = 30,
    fmt: str | None = None,
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    draw: Callable[[int], np.ndarray] = picture,
) -> Path:
    """Write `n` frames of `draw(i)` at RATE fps, or at the given times in milliseconds."""
    need_encoder(codec)
    first = draw(0)
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=RATE, options=options or {})
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(draw(i), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def read_all(path: Path, **kwargs):
    """(index, time, number drawn in the frame) for every frame, and the stats; no pixels kept."""
    with open_video(path, **kwargs) as video:
        seen = [(f.index, f.time, number_of(f.pixels)) for f in video.frames()]
        return seen, video.stats, video.info


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video")


@pytest.fixture(scope="module")
def clip(media: Path) -> Path:
    """One ordinary 30-frame H.264 mp4 for the tests that only need some valid video."""
    return write_video(media / "clip.mp4")


@pytest.fixture(scope="module")
def hamilton(shared_data: Path) -> Path:
    path = shared_data / HAMILTON
    if not path.is_file():
        pytest.skip(f"{HAMILTON} not present under {shared_data}")
    return path


# --------------------------------------------------------------------------- the real clip


def test_hamilton_info(hamilton: Path) -> None:
    with open_video(hamilton) as video:
        info = video.info
    assert info.name == "short_hamilton_clip.mp4"
    assert info.sha256 == hashlib.sha256(hamilton.read_bytes()).hexdigest()
    assert "mp4" in info.format.split(",")
    assert info.codec == "h264"
    assert (info.width, info.height) == (640, 360)
    assert info.fps == pytest.approx(30000 / 1001, abs=0.01)
    assert info.duration == pytest.approx(9.18, abs=0.05)
    assert info.rotation == 0


def test_hamilton_every_frame(hamilton: Path) -> None:
    times = []
    with open_video(hamilton) as video:
        for k, frame in enumerate(video.frames()):
            assert frame.index == k
            assert frame.pixels.shape == (360, 640, 3)
            assert frame.pixels.dtype == np.uint8
            assert not frame.pixels.flags.writeable
            times.append(frame.time)
        stats = video.stats
    assert len(times) == 275
    assert times[0] == 0.0
    assert all(b > a for a, b in pairwise(times))
    # Constant 29.97 fps: frame i at i * 1001/30000 s.
    assert times == pytest.approx([i * 1001 / 30000 for i in range(275)], abs=1e-3)
    assert (stats.frames_decoded, stats.frames_sampled, stats.packets_skipped) == (275, 275, 0)
    assert stats.last_time == pytest.approx(times[-1])
    assert stats.warnings == []
    assert not stats.damaged


@pytest.mark.parametrize(("fps", "expected"), [(4, 37), (1, 10)])
def test_hamilton_sampled(hamilton: Path, fps: float, expected: int) -> None:
    with open_video(hamilton, sample_fps=fps) as video:
        kept = [(f.index, f.time) for f in video.frames()]
        stats = video.stats
    assert abs(len(kept) - expected) <= 1
    assert kept[0] == (0, 0.0)
    assert stats.frames_decoded == 275
    assert stats.frames_sampled == len(kept)
    period, frame_time = 1 / fps, 1001 / 30000
    gaps = [b[1] - a[1] for a, b in pairwise(kept)]
    # Sampled on a grid of `period`: each kept frame is the first at or after a grid instant,
    # so consecutive ones are a period apart give or take one frame, and the grid doesn't drift.
    assert all(period - frame_time - 1e-6 <= g <= period + frame_time + 1e-6 for g in gaps), gaps
    assert kept[-1][1] == pytest.approx((len(kept) - 1) * period, abs=frame_time + 1e-6)


def frames_of(span: dict) -> range:
    return range(span["first_frame"], span["last_frame"] + 1)


def test_hamilton_truth_matches_the_clip(hamilton: Path) -> None:
    """The ground truth was written for this file and agrees with the reader's numbering:
    its shot boundaries are where the picture changes, and its times are the reader's."""
    truth = json.loads(TRUTH.read_text())
    assert truth["clip"]["sha256"] == hashlib.sha256(hamilton.read_bytes()).hexdigest()
    cuts = {shot["first_frame"] for shot in truth["shots"]} - {0}
    changes, previous = set(), None
    with open_video(hamilton) as video:
        for frame in video.frames():
            grey = frame.pixels[::4, ::4].astype(np.float32).mean(axis=2)
            if previous is not None and np.abs(grey - previous).mean() > 20:
                changes.add(frame.index)
            previous = grey
    assert changes == cuts
    intervals = list(truth["shots"])
    for person in truth["people"].values():
        intervals += person["intervals"]
    for spans in truth["absent"].values():
        intervals += spans
    for span in intervals:
        assert span["start"] == pytest.approx(span["first_frame"] * 1001 / 30000, abs=1e-3)
        assert span["end"] == pytest.approx(span["last_frame"] * 1001 / 30000, abs=1e-3)
        assert 0 <= span["first_frame"] <= span["last_frame"] < truth["clip"]["frames"]
    for person, spans in truth["people"].items():
        assert {s["status"] for s in spans["intervals"]} <= {"visible", "uncertain"}
        on_screen = {i for s in spans["intervals"] for i in frames_of(s)}
        absent = {i for s in truth["absent"][person] for i in frames_of(s)}
        assert not on_screen & absent
        assert on_screen | absent == set(range(275))


# --------------------------------------------------------------------------- containers and codecs

CODECS = [
    # suffix, container format to force, encoder, pixel format, decoder name, format name part
    ("mp4", None, "libx264", "yuv420p", "h264", "mp4"),
    ("mkv", None, "libx264", "yuv420p", "h264", "matroska"),
    ("mov", None, "libx264", "yuv420p", "h264", "mov"),
    ("ts", "mpegts", "libx264", "yuv420p", "h264", "mpegts"),
    ("avi", None, "mpeg4", "yuv420p", "mpeg4", "avi"),
    ("avi", None, "mjpeg", "yuvj420p", "mjpeg", "avi"),
    ("mpg", "mpeg", "mpeg2video", "yuv420p", "mpeg2video", "mpeg"),
    ("webm", None, "libvpx-vp9", "yuv420p", "vp9", "webm"),
]


@pytest.mark.parametrize(
    ("suffix", "fmt", "encoder", "pix_fmt", "decoder", "format_part"),
    CODECS,
    ids=[f"{c[0]}-{c[2]}" for c in CODECS],
)
def test_containers_and_codecs(
    media: Path,
    suffix: str,
    fmt: str | None,
    encoder: str,
    pix_fmt: str,
    decoder: str,
    format_part: str,
) -> None:
    path = write_video(media / f"codec-{encoder}.{suffix}", codec=encoder, fmt=fmt, pix_fmt=pix_fmt)
    with open_video(path) as video:
        info = video.info
        assert info.codec == decoder
        assert format_part in info.format.split(",")
        assert (info.width, info.height) == (W, H)
        assert info.fps == pytest.approx(RATE, rel=0.01)
        if decoder != "mpeg2video":  # FFmpeg's own estimate for a tiny MPEG-PS file is 0.04 s
            assert info.duration == pytest.approx(30 / RATE, abs=0.1)
        numbers, times = [], []
        for k, frame in enumerate(video.frames()):
            assert frame.index == k
            assert frame.pixels.shape == (H, W, 3)
            if k == 0:
                square = frame.pixels[6:14, 2:10].mean(axis=(0, 1))  # the red square at x=0
                assert square[0] > 150 and square[1] < 100 and square[2] < 100, square
                with pytest.raises(ValueError):
                    frame.pixels[0, 0, 0] = 1
            numbers.append(number_of(frame.pixels))
            times.append(frame.time)
    assert numbers == list(range(30))
    assert times == pytest.approx([i / RATE for i in range(30)], abs=1e-3)
    assert video.stats.frames_decoded == 30 and video.stats.warnings == []

    seen, stats, _ = read_all(path, sample_fps=5)
    assert [n for _, _, n in seen] == [0, 5, 10, 15, 20, 25]
    assert [t for _, t, _ in seen] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-3)
    assert (stats.frames_decoded, stats.frames_sampled) == (30, 6)


# --------------------------------------------------------------------------- variable frame rate

# 10 ms between frames, with gaps of 300 ms (one, then two in a row).
VFR_MS = [10 * i for i in range(21)] + [500 + 10 * i for i in range(21)] + [1000]
VFR_MS += [1300 + 10 * i for i in range(11)]


@pytest.fixture(scope="module", params=["mp4", "mkv"])
def vfr(media: Path, request: pytest.FixtureRequest) -> Path:
    return write_video(media / f"vfr.{request.param}", n=len(VFR_MS), pts_ms=VFR_MS)


def test_vfr_times_are_the_timestamps(vfr: Path) -> None:
    seen, stats, _ = read_all(vfr)
    assert [n for _, _, n in seen] == list(range(len(VFR_MS)))
    assert [t for _, t, _ in seen] == pytest.approx([ms / 1000 for ms in VFR_MS], abs=1e-6)
    assert stats.last_time == pytest.approx(1.4, abs=1e-6)


def test_vfr_sampled_by_time(vfr: Path) -> None:
    seen, _, _ = read_all(vfr, sample_fps=10)
    # Every 0.1 s while frames are dense; the first frame after each gap; no burst after it.
    assert [t for _, t, _ in seen] == pytest.approx([0, 0.1, 0.2, 0.5, 0.6, 0.7, 1.0, 1.3, 1.4])
    assert [n for _, _, n in seen] == [VFR_MS.index(round(t * 1000)) for _, t, _ in seen]


@pytest.mark.parametrize("fps", [2, 4, 7, 30])
def test_vfr_sampling_keeps_every_due_frame_and_no_other(vfr: Path, fps: float) -> None:
    kept = [t for _, t, _ in read_all(vfr, sample_fps=fps)[0]]
    period, dense = 1 / fps, 0.010
    assert kept[0] == 0.0
    times = [ms / 1000 for ms in VFR_MS]
    for a, b in pairwise(kept):
        assert b - a >= period - dense - 1e-9, (a, b)  # no burst
        between = [t for t in times if a < t < b]
        assert all(t < a + period + dense for t in between), (a, b)  # nothing due was dropped
    assert kept[-1] >= times[-1] - period - dense  # the end of the footage is sampled too


# --------------------------------------------------------------------------- rotation

# The upright picture a phone user saw: portrait, a white block top left, a red one top right.
UPRIGHT = np.full((64, 48, 3), 30, np.uint8)
UPRIGHT[0:16, 0:12] = 255
UPRIGHT[0:16, 36:48] = (230, 30, 30)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_video_comes_out_upright(media: Path, rotation: int) -> None:
    """A display matrix that turns the stored picture by `rotation` degrees counter-clockwise
    (FFmpeg's and PyAV's convention; a phone held upright typically stores its picture turned
    90 degrees counter-clockwise and records -90, shown by ffprobe as "rotation of -90.00
    degrees" and by the old `rotate` tag as 90, and players turn it clockwise to show it)."""
    need_encoder("libx264")
    # What is stored: the upright picture turned the other way, by `rotation` clockwise.
    stored = np.ascontiguousarray(np.rot90(UPRIGHT, k=-(rotation // 90)))
    path = media / f"rotated{rotation}.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p"
        if hasattr(stream, "set_display_rotation"):  # PyAV 16 and later
            stream.set_display_rotation(rotation)
        else:
            stream.metadata["rotate"] = str(-rotation % 360)  # the old tag is clockwise
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        raw = next(container.decode(video=0))
        written = getattr(raw, "rotation", 0)
    if written % 360 != rotation % 360:
        pytest.skip(
            f"this PyAV {av.__version__}/FFmpeg build did not write a display rotation to mp4 "
            f"(read back {written}, wanted {rotation})"
        )
    with open_video(path) as video:
        frames = list(video.frames())
        info = video.info
    assert len(frames) == 5
    assert info.rotation % 360 == rotation % 360
    assert (info.width, info.height) == (48, 64)
    for frame in frames:
        assert frame.pixels.shape == (64, 48, 3)
        assert not frame.pixels.flags.writeable
        assert frame.pixels[2:14, 2:10].mean() > 200  # white block top left
        red = frame.pixels[2:14, 38:46].mean(axis=(0, 1))
        assert red[0] > 150 and red[1] < 100, red  # red block top right: not mirrored
        assert frame.pixels[40:60, 4:44].mean() < 60  # the bottom is plain
        assert np.abs(frame.pixels.astype(int) - UPRIGHT).mean() < 8


# --------------------------------------------------------------------------- bad input


def assert_media_error(path: Path, match: str, **kwargs) -> MediaError:
    with pytest.raises(MediaError, match=match) as caught, open_video(path, **kwargs) as video:
        for _ in video.frames():
            pass
    assert path.name in str(caught.value) or "sampling rate" in str(caught.value)
    return caught.value


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert_media_error(tmp_path / "empty.mp4", "empty")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("This is not a video, whatever its name says.\n" * 50)
    assert_media_error(path, "not a readable video")


def test_random_bytes_named_mkv(tmp_path: Path) -> None:
    path = tmp_path / "noise.mkv"
    path.write_bytes(random.Random(7).randbytes(20_000))
    assert_media_error(path, "not a readable video|no video stream|no frame")


def test_audio_only(tmp_path: Path) -> None:
    need_encoder("aac")
    path = tmp_path / "speech.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for i in range(20):
            tone = np.sin(np.arange(1024) * 0.05 + i).astype(np.float32)[None, :] * 0.2
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    error = assert_media_error(path, "no video stream")
    assert "audio" in str(error)


def test_directory_and_missing_path(tmp_path: Path) -> None:
    folder = tmp_path / "footage.mp4"
    folder.mkdir()
    assert_media_error(folder, "not a regular file")
    assert_media_error(tmp_path / "gone.mp4", "does not exist")


def test_frames_twice(clip: Path) -> None:
    with open_video(clip) as video:
        assert len(list(video.frames())) == 30
        with pytest.raises(MediaError, match=r"clip\.mp4.*once"):
            list(video.frames())


@pytest.mark.parametrize("fps", [0, -1, float("nan")])
def test_bad_sampling_rate(clip: Path, fps: float) -> None:
    assert_media_error(clip, "sampling rate", sample_fps=fps)


def test_frame_size_limit_is_checked_before_decoding(clip: Path) -> None:
    with pytest.raises(MediaError, match=r"clip\.mp4.*64x48.*limit"):
        open_video(clip, max_pixels=W * H - 1)  # raised on opening: nothing decoded
    with open_video(clip, max_pixels=W * H) as video:
        assert len(list(video.frames())) == 30


def test_file_size_limit(clip: Path) -> None:
    size = clip.stat().st_size
    with pytest.raises(MediaError, match=r"clip\.mp4.*limit"):
        open_video(clip, max_bytes=size - 1)
    with open_video(clip, max_bytes=size) as video:
        assert len(list(video.frames())) == 30


TRUNCATED = [
    # name, format to force, container options
    ("fragmented.mp4", None, {"movflags": "frag_keyframe+empty_moov"}),
    ("stream.ts", "mpegts", {}),
    ("faststart.mp4", None, {"movflags": "faststart"}),  # index first, media data cut short
    ("plain.mp4", None, {}),  # index at the end, so cut off: unreadable, a clear MediaError
]


@pytest.mark.parametrize(("name", "fmt", "options"), TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_file(media: Path, name: str, fmt: str | None, options: dict[str, str]) -> None:
    whole = write_video(
        media / f"whole-{name}", n=100, fmt=fmt, options={"g": "10"}, container_options=options
    )
    data = whole.read_bytes()
    cut = media / f"cut-{name}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    try:
        seen, stats, _ = read_all(cut)
    except MediaError as e:  # acceptable only as a clear error naming the file...
        assert cut.name in str(e)
        if name != "plain.mp4":  # ...where the format leaves nothing to read
            pytest.fail(f"{name} cut at 60% should still give its first frames: {e}")
        return
    # The frames up to the cut, each the frame it says it is, at its own time.
    assert 30 <= len(seen) < 100, len(seen)
    assert [n for _, _, n in seen] == [round(t * RATE) for _, t, _ in seen]
    assert seen[0][2] == 0
    assert all(b[1] > a[1] for a, b in pairwise(seen))
    assert stats.frames_decoded == len(seen)


@pytest.mark.parametrize("codec", ["libx264", "mpeg2video"])
def test_corrupt_packets_are_survived_and_reported(media: Path, codec: str) -> None:
    whole = write_video(
        media / f"whole-{codec}.ts", codec=codec, n=100, fmt="mpegts", options={"g": "10"}
    )
    data = bytearray(whole.read_bytes())
    rng = random.Random(1)
    for where in (0.4, 0.55):  # two stretches of garbage in the middle
        start = int(len(data) * where)
        data[start : start + 2000] = rng.randbytes(2000)
    damaged = media / f"damaged-{codec}.ts"
    damaged.write_bytes(bytes(data))
    seen, stats, _ = read_all(damaged)
    # The damage costs some frames, not the file: the end of it is still read. (Inside the
    # damaged stretch the decoder's concealment can give frames out of time order.)
    assert 50 <= len(seen) < 100
    assert [i for i, _, _ in seen] == list(range(len(seen)))
    tail = seen[-20:]
    assert [n for _, _, n in tail] == list(range(80, 100))
    assert [t for _, t, _ in tail] == pytest.approx([n / RATE for n in range(80, 100)], abs=1e-3)
    # The frames before the damage are exact.
    assert [(i, n) for i, _, n in seen[:30]] == [(i, i) for i in range(30)]
    assert [t for _, t, _ in seen[:30]] == pytest.approx([i / RATE for i in range(30)], abs=1e-3)
    # ... and the damage is reported, so nobody takes the result for a complete reading.
    assert stats.packets_skipped > 0 or stats.warnings, stats


# --------------------------------------------------------------------------- memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_on_long_footage(media: Path) -> None:
    """3000 frames: Python's peak allocation over frames 300-3000 is no higher than over the
    first 300, and no frame outlives the caller's hold on it.

    tracemalloc sees Python objects; pixel buffers come from FFmpeg's allocator, which it
    does not see, so weak references check that the frames themselves are released, and
    the resident size (where /proc exists) is a backstop: holding 2700 frames of 64x48
    would add more than 25 MB.
    """
    codec = "mpeg4" if "mpeg4" in av.codecs_available else "libx264"
    path = write_video(media / "long.avi", codec=codec, n=3000)
    recent: deque[weakref.ref] = deque(maxlen=3)
    every_300th: list[weakref.ref] = []
    gc.collect()
    tracemalloc.start()
    try:
        with open_video(path) as video:
            for k, frame in enumerate(video.frames()):
                recent.append(weakref.ref(frame.pixels))
                if k % 300 == 0:
                    every_300th.append(recent[-1])
                if k >= 2:
                    assert recent[0]() is None, f"frame {k - 2} is still held"
                if k == 299:
                    first_peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.reset_peak()
                    rss_at_300 = _rss() if os.path.exists("/proc/self/statm") else 0
                    rss_top = rss_at_300
                elif k > 299 and k % 100 == 0 and rss_at_300:
                    rss_top = max(rss_top, _rss())
            later_peak = tracemalloc.get_traced_memory()[1]
            stats = video.stats
    finally:
        tracemalloc.stop()
    del frame
    assert stats.frames_decoded == stats.frames_sampled == 3000
    assert later_peak <= first_peak + 256 * 1024, (first_peak, later_peak)
    gc.collect()
    assert len(every_300th) == 10
    assert all(ref() is None for ref in every_300th)
    if rss_at_300:
        assert rss_top - rss_at_300 < 12 * 1024 * 1024, rss_top - rss_at_300
