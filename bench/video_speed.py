"""Video search speed: facetrail against a face_recognition per-frame loop on the same footage.

What it measures
    Seconds of video processed per wall-clock second ("x real time") on the same real clip at
    640x360 and 1280x720, in one run, with

    - face_recognition 1.3.0 the way its own video example does it
      (`examples/facerec_from_video_file.py`): every frame, `face_locations(rgb)` (HOG,
      upsample 1), `face_encodings(rgb, locations)`, then `compare_faces(known, encoding,
      tolerance=0.50)` (and `face_distance`) against the encodings of lin-manuel-miranda.png
      and alex-lacamoire.png, computed before the clock starts as in the example. Frames are
      decoded with PyAV (threaded FFmpeg decoding, RGB), as facetrail's reader does, so only
      the recognition differs. The loop is slow, so by default only the first
      `--baseline-frames` frames are timed and its rate is taken from them (the output says
      so); `--baseline-full` runs the whole clip.
    - facetrail through its public Python API, as a user would: a fresh data directory,
      `ft.init`, the two reference photos enrolled as subjects, an investigator and an
      authoriser added, a case opened and a gallery search approved in it; then
      `investigator.search([video], case=ref)` is timed whole: decoding, detection, tracking,
      descriptors, ranking and the writes. Default settings. Models are loaded and the video
      path exercised before the clock starts (a search of a one-second cut of the clip).
      If video search raises, or returns a probe with an error, the facetrail rows say
      "not available yet: <error>" and the baseline is still reported.

Footage
    640x360: `../shared/data/examples/face_recognition/short_hamilton_clip.mp4` (29.97 fps,
    9.2 s, H.264). 1280x720: made from it by this script (every frame decoded with PyAV,
    scaled by FFmpeg's Lanczos scaler, encoded with libx264 at crf 20, preset medium, same frame
    rate and timestamps) and cached under `--cache-dir`, keyed by the source's sha256, so
    reruns start at once. `--repeat N` concatenates the clip N times (frames and packets are
    streamed, never all held); the original size is then remuxed, not re-encoded.

Reported per resolution and side: video seconds, wall seconds, process CPU seconds (all
threads, plus any child processes), x real time (video s / wall s), frames decoded and analysed
(when the search result says), faces / appearances found, and facetrail's speed ratio to the
face_recognition loop. Each side runs `--runs` / `--baseline-runs` times, interleaved; medians.

Run
    pip install --no-deps face_recognition==1.3.0   # the baseline, for this benchmark only
    python bench/video_speed.py                     # both sides, both sizes
    python bench/video_speed.py --baseline-frames 30 --only baseline
    python bench/video_speed.py --json out.json     # also write the numbers as JSON
    python bench/video_speed.py --json > out.json   # JSON on stdout, the table on stderr

Exit status 2 when face_recognition or the clip is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

import facetrail
from facetrail.media.video import sha256_of

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "data" / "examples" / "face_recognition"
DEFAULT_CLIP = EXAMPLES / "short_hamilton_clip.mp4"
KNOWN = {"lin-manuel-miranda": "lin-manuel-miranda.png", "alex-lacamoire": "alex-lacamoire.png"}
INSTALL_HINT = "pip install --no-deps face_recognition==1.3.0"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "facetrail-bench-video"
CRF, PRESET = 20, "medium"
CACHE_VERSION = 1  # bump when the way footage is made changes
TOLERANCE = 0.50  # face_recognition's video example
TARGET_REALTIME_720P, TARGET_RATIO = 4.0, 5.0
_MIB = 1024 * 1024


# -- footage -------------------------------------------------------------------------------


@dataclass
class Footage:
    label: str  # "640x360"
    path: Path
    width: int
    height: int
    frames: int  # video packets (one frame each for these files)
    seconds: float  # duration of the video stream
    fps: float  # average frame rate
    sha256: str
    made: str  # how the file came to be


def describe(path: Path, label: str, made: str) -> Footage:
    """Frame count and duration from the packets (no decoding): the timestamps' span."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first, end, frames = None, None, 0
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            frames += 1
            first = packet.pts if first is None else min(first, packet.pts)
            stop = packet.pts + (packet.duration or 0)
            end = stop if end is None else max(end, stop)
        width, height = stream.codec_context.width, stream.codec_context.height
        if frames == 0:
            raise SystemExit(f"{path}: no video packets")
        seconds = float((end - first) * stream.time_base)
        if seconds <= 0 and stream.average_rate:
            seconds = frames / float(stream.average_rate)
    return Footage(
        label, path, width, height, frames, seconds, frames / seconds, sha256_of(path), made
    )


def _span(path: Path) -> tuple[int, int]:
    """(first pts, length) of a file's video stream, in its time base."""
    with av.open(str(path)) as container:
        s = container.streams.video[0]
        stamps = [(p.pts, p.duration or 0) for p in container.demux(s) if p.pts is not None]
    first = min(pts for pts, _ in stamps)
    return first, max(pts + d for pts, d in stamps) - first


def remux(source: Path, target: Path, *, repeat: int = 1, max_packets: int | None = None) -> None:
    """Copy the video packets (no re-encoding), `repeat` times one after another, or only the
    first `max_packets` of them. Written to a temporary name, then moved into place."""
    part = target.with_name(target.name + f".{os.getpid()}.part")
    with av.open(str(source)) as probe:
        template = probe.streams.video[0]
        _, length = _span(source)
        with av.open(str(part), "w", format="mp4") as out:
            ostream = out.add_stream_from_template(template)
            for k in range(repeat):
                with av.open(str(source)) as container:
                    stream = container.streams.video[0]
                    for i, packet in enumerate(container.demux(stream)):
                        if packet.dts is None:  # the demuxer's flush packet
                            continue
                        if max_packets is not None and i >= max_packets:
                            break
                        packet.pts += k * length
                        packet.dts += k * length
                        packet.stream = ostream
                        out.mux(packet)
    os.replace(part, target)


def upscale(source: Path, target: Path, width: int, height: int, *, repeat: int = 1) -> None:
    """Decode, scale every frame (FFmpeg's Lanczos), encode H.264 with the same timestamps."""
    part = target.with_name(target.name + f".{os.getpid()}.part")
    with av.open(str(source)) as probe:
        template = probe.streams.video[0]
        rate = template.average_rate or Fraction(30000, 1001)
        time_base = template.time_base
        _, length = _span(source)
    with av.open(str(part), "w", format="mp4") as out:
        ostream = out.add_stream("libx264", rate=rate)
        ostream.width, ostream.height, ostream.pix_fmt = width, height, "yuv420p"
        ostream.codec_context.time_base = time_base
        ostream.options = {"crf": str(CRF), "preset": PRESET}
        for k in range(repeat):
            with av.open(str(source)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    scaled = frame.reformat(
                        width=width, height=height, format="yuv420p", interpolation="LANCZOS"
                    )
                    scaled.pts = frame.pts + k * length
                    scaled.time_base = time_base
                    for packet in ostream.encode(scaled):
                        out.mux(packet)
        for packet in ostream.encode(None):
            out.mux(packet)
    os.replace(part, target)


def prepare_footage(
    clip: Path, sizes: list[tuple[int, int]], repeat: int, cache: Path
) -> tuple[list[Footage], Footage]:
    """The footage at each size (cached), and a one-second cut of the clip for warming up."""
    cache.mkdir(parents=True, exist_ok=True)
    source = describe(clip, "source", "original")
    key = source.sha256[:16]
    out = []
    for width, height in sizes:
        label = f"{width}x{height}"
        native = (width, height) == (source.width, source.height)
        if native and repeat == 1:
            out.append(dataclasses.replace(source, label=label, made="original clip"))
            continue
        if native:
            target = cache / f"{key}-{label}-x{repeat}-remux-v{CACHE_VERSION}.mp4"
            how = f"original clip remuxed {repeat} times end to end"
        else:
            target = cache / f"{key}-{label}-crf{CRF}-x{repeat}-v{CACHE_VERSION}.mp4"
            how = f"scaled from the clip (Lanczos), libx264 crf {CRF} preset {PRESET}"
            if repeat > 1:
                how += f", {repeat} times end to end"
        if target.is_file():
            how += f"; cached in {cache}"
        else:
            print(f"  making {label} footage: {target} ...", end="", flush=True, file=sys.stderr)
            start = time.perf_counter()
            if native:
                remux(clip, target, repeat=repeat)
            else:
                upscale(clip, target, width, height, repeat=repeat)
            print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
            how += f"; made now in {cache}"
        out.append(describe(target, label, how))
    warm_path = cache / f"{key}-warmup-1s-v{CACHE_VERSION}.mp4"
    if not warm_path.is_file():
        remux(clip, warm_path, max_packets=max(2, round(source.fps)))
    return out, describe(warm_path, "warm-up", "first second of the clip, remuxed")


# -- the runs ------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    cpu: float
    video_seconds: float
    frames_decoded: int | None = None
    frames_analysed: int | None = None
    faces: int | None = None  # face_recognition: detections; facetrail: probe faces reported
    appearances: int | None = None
    matches: dict[str, int] = field(default_factory=dict)
    detail: dict = field(default_factory=dict)

    @property
    def realtime(self) -> float:
        return self.video_seconds / self.wall


class Clock:
    """Wall and CPU time of this process (all threads) and of any child processes it reaped."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return time.process_time() + t.children_user + t.children_system


def known_encodings(fr) -> list[np.ndarray]:
    """As the example: the first face of each reference photo (this also loads the models)."""
    return [fr.face_encodings(fr.load_image_file(str(EXAMPLES / f)))[0] for f in KNOWN.values()]


def run_face_recognition(fr, footage: Footage, known: list, max_frames: int | None) -> Run:
    """The example's loop: every frame, locations, encodings, compare with the known faces."""
    names = list(KNOWN)
    frames = faces = 0
    matches: Counter[str] = Counter()
    with Clock() as clock, av.open(str(footage.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as facetrail's reader
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            locations = fr.face_locations(rgb)
            encodings = fr.face_encodings(rgb, locations)
            for encoding in encodings:
                match = fr.compare_faces(known, encoding, tolerance=TOLERANCE)
                distances = fr.face_distance(known, encoding)
                best = int(np.argmin(distances))
                if match[best]:
                    matches[names[best]] += 1
            faces += len(locations)
            frames += 1
            if max_frames is not None and frames >= max_frames:
                break
    video_seconds = footage.seconds if frames >= footage.frames else frames / footage.fps
    return Run(
        clock.wall,
        clock.cpu,
        video_seconds,
        frames_decoded=frames,
        frames_analysed=frames,
        faces=faces,
        matches=dict(matches),
        detail={"partial": frames < footage.frames},
    )


class Unavailable(Exception):
    """facetrail's video search does not work (yet) for this footage."""


def _as_dict(obj: object) -> dict:
    if isinstance(obj, dict):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {}


def _lookup(d: dict, *names: str) -> object:
    """The first of `names` found in `d` or in a dict nested in it (breadth first)."""
    queue = [d]
    while queue:
        here = queue.pop(0)
        for name in names:
            if here.get(name) is not None:
                return here[name]
        queue.extend(v for v in here.values() if isinstance(v, dict))
    return None


def _count(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def probe_facts(probe: object) -> dict:
    """What a video probe's result says, read defensively (the schema is young)."""
    d = _as_dict(probe)
    faces = d.get("faces") or []
    matches: Counter[str] = Counter()
    for face in faces:
        face = _as_dict(face)
        above = [_as_dict(c) for c in face.get("candidates") or []]
        above = [c for c in above if c.get("above_threshold")]
        if above:
            matches[min(above, key=lambda c: c.get("rank", 0)).get("subject", "?")] += 1
    appearances = _count(_lookup(d, "appearances", "tracks", "n_tracks"))
    return {
        "error": d.get("error"),
        "frames_decoded": _count(_lookup(d, "frames_decoded")),
        "frames_analysed": _count(
            _lookup(d, "frames_analysed", "frames_analyzed", "frames_sampled")
        ),
        "faces": len(faces),
        "appearances": appearances if appearances is not None else len(faces),
        "matches": dict(matches),
        "video": {
            k: d[k]
            for k in d
            if k not in ("faces", "probe", "sha256", "error") and not isinstance(d[k], list)
        },
    }


class FacetrailSide:
    """A fresh data directory set up as a user would, and an investigator's handle on it."""

    CASE = "BENCH-VIDEO-1"

    def __init__(self, tmp: Path) -> None:
        self.ft = facetrail.open(tmp / "data")
        password = {role: secrets.token_urlsafe(18) for role in ("admin", "inv", "auth")}
        self.ft.init("bench-admin", password["admin"])
        for subject, filename in KNOWN.items():
            self.ft.enrol([EXAMPLES / filename], subject=subject)  # also loads the models
        self.ft.add_user("bench-investigator", "investigator", password["inv"])
        self.ft.add_user("bench-authoriser", "authoriser", password["auth"])
        self.investigator = self.ft.as_caller(None)
        self.investigator.login("bench-investigator", password["inv"])
        authoriser = self.ft.as_caller(None)
        authoriser.login("bench-authoriser", password["auth"])
        self.investigator.open_case(
            self.CASE,
            purpose="benchmark: video search speed",
            legal_basis="benchmark on published example footage",
        )
        authoriser.approve(self.CASE, scope="gallery", reason="benchmark of gallery search")

    def close(self) -> None:
        self.ft.close()

    def settings(self) -> dict:
        """The settings that bear on speed (nothing secret)."""
        words = ("video", "sample", "fps", "track", "worker", "batch", "min_face", "flip", "top_k")
        secret = ("key", "password", "secret", "token")
        out = {}
        for k, v in self.ft.settings.model_dump().items():
            if any(w in k for w in words) and not any(s in k for s in secret):
                out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        return out

    def search(self, footage: Footage) -> Run:
        try:
            with Clock() as clock:
                report = self.investigator.search([footage.path], case=self.CASE)
        except Exception as e:  # the feature is being built: say why, keep the baseline
            raise Unavailable(f"{type(e).__name__}: {e}") from None
        probes = list(report.probes)
        if len(probes) != 1:
            raise Unavailable(f"expected one probe result, got {len(probes)}")
        facts = probe_facts(probes[0])
        if facts["error"]:
            raise Unavailable(str(facts["error"]))
        return Run(
            clock.wall,
            clock.cpu,
            footage.seconds,
            frames_decoded=facts["frames_decoded"],
            frames_analysed=facts["frames_analysed"],
            faces=facts["faces"],
            appearances=facts["appearances"],
            matches=facts["matches"],
            detail={"probe": facts["video"], "search_id": report.search_id},
        )


# -- main ----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import dlib
    import onnxruntime

    out = {"python": platform.python_version()}
    for dist in ("facetrail", "face_recognition"):  # face_recognition.__version__ says 1.2.3
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    out["dlib"] = dlib.__version__
    out["onnxruntime"] = onnxruntime.__version__
    out["numpy"] = np.__version__
    out["av"] = av.__version__
    major, minor, micro = av.library_versions["libavcodec"]
    out["libavcodec"] = f"{major}.{minor}.{micro}"
    return out


def source_commit() -> str:
    """The checkout's commit, read from .git without running git; "-" if unknown."""
    try:
        git = REPO / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (REPO / git.read_text().split(":", 1)[1].strip()).resolve()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()[:7]
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:7]
    except OSError:
        pass
    return "-"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        w, _, h = item.strip().lower().partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) % 2 or int(h) % 2:
            raise argparse.ArgumentTypeError(f"{item!r}: want even WIDTHxHEIGHT, e.g. 1280x720")
        sizes.append((int(w), int(h)))
    return sizes


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(label: str, side: str, runs: list[Run], error: str | None) -> dict:
    row: dict = {"footage": label, "side": side, "available": error is None, "error": error}
    if error is not None or not runs:
        return row
    last = runs[-1]
    row.update(
        {
            "runs": len(runs),
            "video_seconds": round(last.video_seconds, 3),
            "wall_seconds": round(median([r.wall for r in runs]), 3),
            "wall_seconds_each": [round(r.wall, 3) for r in runs],
            "cpu_seconds": round(median([r.cpu for r in runs]), 3),
            "cpu_seconds_each": [round(r.cpu, 3) for r in runs],
            "realtime": round(median([r.realtime for r in runs]), 3),
            "frames_decoded": last.frames_decoded,
            "frames_analysed": last.frames_analysed,
            "faces": last.faces,
            "appearances": last.appearances,
            "matches": last.matches,
            "detail": last.detail,
        }
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="the source clip")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[(640, 360), (1280, 720)],
        help="comma-separated WIDTHxHEIGHT (default 640x360,1280x720); the clip's own size "
        "is used as is, others are scaled and encoded once, then cached",
    )
    parser.add_argument("--repeat", type=int, default=1, help="the clip N times end to end")
    parser.add_argument("--runs", type=int, default=3, help="facetrail runs per size (median)")
    parser.add_argument("--baseline-runs", type=int, default=1, help="face_recognition runs")
    parser.add_argument(
        "--baseline-frames",
        type=int,
        default=60,
        help="time face_recognition on the first N frames only (default 60)",
    )
    parser.add_argument(
        "--baseline-full", action="store_true", help="time face_recognition on every frame"
    )
    parser.add_argument("--only", choices=("facetrail", "baseline"), help="run one side only")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="made footage")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the numbers as one JSON document to PATH; with no PATH, to stdout "
        "(the table then goes to stderr)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.runs < 1 or args.baseline_runs < 1 or args.baseline_frames < 1:
        parser.error("--repeat, --runs, --baseline-runs and --baseline-frames must be >= 1")
    out = sys.stderr if args.json == "-" else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    do_baseline, do_facetrail = args.only != "facetrail", args.only != "baseline"
    fr = None
    if do_baseline:
        try:
            import face_recognition as fr
        except ImportError:
            print(
                "face_recognition is not installed; it is the benchmark's baseline only.\n"
                f"Install it with:  {INSTALL_HINT}  (or pass --only facetrail)",
                file=sys.stderr,
            )
            return 2
    clip = args.clip.resolve()
    missing = [p for p in [clip, *(EXAMPLES / f for f in KNOWN.values())] if not p.is_file()]
    if missing:
        print("not found: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2

    footage, warmup = prepare_footage(clip, args.sizes, args.repeat, args.cache_dir)
    max_frames = None if args.baseline_full else args.baseline_frames

    info = versions()
    load_before = os.getloadavg()
    say(f"clip: {clip} (sha256 {footage[0].sha256[:16] if footage else '-'}...)")
    for f in footage:
        say(
            f"  {f.label}: {f.frames} frames, {f.seconds:.2f} s at {f.fps:.2f} fps, "
            f"{f.path.stat().st_size / _MIB:.1f} MiB; {f.made}"
        )
    say(f"machine: {os.cpu_count()} CPUs (os.cpu_count), {platform.machine()}, {platform.system()}")
    say("load average before: " + " ".join(f"{x:.2f}" for x in load_before))
    say("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    commit = source_commit()
    say(f"facetrail source: commit {commit} (read from .git; local changes not detected)")
    say(
        f"runs: facetrail {args.runs}, face_recognition {args.baseline_runs} per size, "
        "interleaved; medians reported"
    )
    if do_baseline:
        say(
            "face_recognition: "
            + (
                "every frame of the clip"
                if max_frames is None
                else f"the first {max_frames} frames only (--baseline-frames); its x real time "
                "is from those frames"
            )
        )
    say("timing excludes one-time model loading on both sides")
    say()

    known = known_encodings(fr) if fr is not None else []
    side: FacetrailSide | None = None
    setup_error: str | None = None
    settings: dict = {}
    tmp = tempfile.TemporaryDirectory(prefix="facetrail-bench-video-")
    if do_facetrail:
        print("  facetrail: setting up a data directory ...", end="", file=sys.stderr, flush=True)
        try:
            with Clock() as clock:
                side = FacetrailSide(Path(tmp.name))
                settings = side.settings()
                side.search(warmup)  # not timed: builds the models, runs the video path once
            print(f" {clock.wall:.1f} s (with warm-up)", file=sys.stderr, flush=True)
        except Unavailable as e:
            setup_error = str(e)
            print(f" video search failed: {e}", file=sys.stderr, flush=True)
        except Exception as e:
            setup_error = f"set-up failed: {type(e).__name__}: {e}"
            print(f" {setup_error}", file=sys.stderr, flush=True)

    rows = []
    try:
        for f in footage:
            base_runs: list[Run] = []
            ft_runs: list[Run] = []
            ft_error = setup_error
            for r in range(max(args.runs if do_facetrail else 0, args.baseline_runs)):
                if do_baseline and r < args.baseline_runs:
                    print(f"  {f.label} face_recognition run {r + 1} ...", end="", file=sys.stderr)
                    run = run_face_recognition(fr, f, known, max_frames)
                    base_runs.append(run)
                    print(
                        f" {run.wall:.2f} s for {run.frames_decoded} frames",
                        file=sys.stderr,
                        flush=True,
                    )
                if do_facetrail and ft_error is None and side is not None and r < args.runs:
                    print(f"  {f.label} facetrail run {r + 1} ...", end="", file=sys.stderr)
                    try:
                        run = side.search(f)
                        ft_runs.append(run)
                        print(f" {run.wall:.2f} s", file=sys.stderr, flush=True)
                    except Unavailable as e:
                        ft_error = str(e)
                        print(f" failed: {e}", file=sys.stderr, flush=True)
            if do_baseline:
                rows.append(summarise(f.label, "face_recognition", base_runs, None))
            if do_facetrail:
                row = summarise(f.label, "facetrail", ft_runs, ft_error)
                if row["available"] and base_runs:
                    row["ratio"] = round(row["realtime"] / rows[-1]["realtime"], 3)
                rows.append(row)
    finally:
        if side is not None:
            side.close()
        tmp.cleanup()
    load_after = os.getloadavg()

    header = (
        f"{'footage':<10} {'side':<17} {'runs':>4} {'video s':>8} {'wall s':>8} {'cpu s':>8} "
        f"{'x real':>7} {'decoded':>8} {'analysed':>8} {'faces':>6} {'appear.':>7} {'ratio':>7}"
    )
    say(header)
    say("-" * len(header))

    def cell(value: object, width: int, fmt: str = "") -> str:
        return f"{'-' if value is None else format(value, fmt):>{width}}"

    for row in rows:
        if not row["available"]:
            say(f"{row['footage']:<10} {row['side']:<17} not available yet: {row['error']}")
            continue
        partial = row["side"] == "face_recognition" and row["detail"].get("partial")
        ratio = row.get("ratio")
        say(
            f"{row['footage']:<10} {row['side'] + ('*' if partial else ''):<17} "
            f"{row['runs']:>4} {row['video_seconds']:>8.2f} {row['wall_seconds']:>8.2f} "
            f"{row['cpu_seconds']:>8.2f} {row['realtime']:>7.2f} "
            f"{cell(row['frames_decoded'], 8)} {cell(row['frames_analysed'], 8)} "
            f"{cell(row['faces'], 6)} "
            f"{cell(row['appearances'] if row['side'] == 'facetrail' else None, 7)} "
            + (f"{ratio:>6.2f}x" if ratio is not None else f"{'-':>7}")
        )
    say(
        "x real: seconds of video per wall-clock second (median); wall s, cpu s: medians; "
        "cpu s: process CPU, all threads\n"
        "faces: face_recognition = detections over the frames analysed; facetrail = faces "
        "(appearances) reported with candidates\n"
        "appear.: facetrail's appearances (tracks) found, with or without candidates; "
        "analysed: frames facetrail sampled and analysed\n"
        "ratio: facetrail x real / face_recognition x real on the same footage"
    )
    if do_baseline and max_frames is not None:
        say(
            f"* face_recognition timed on the first {max_frames} frames only "
            "(--baseline-frames; --baseline-full for the whole clip)"
        )
    for row in rows:
        if row["available"] and row["matches"]:
            found = ", ".join(f"{k} {v}" for k, v in sorted(row["matches"].items()))
            say(f"{row['footage']} {row['side']}: recognised {found}")
    say(
        "load average after (includes this benchmark): "
        + " ".join(f"{x:.2f}" for x in load_after)
        + (
            "  (other work was running before the start: the timings are noisy)"
            if load_before[0] > 0.5
            else ""
        )
    )
    if settings:
        say("facetrail settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))

    targets = {}
    ft720 = next((r for r in rows if r["footage"] == "1280x720" and r["side"] == "facetrail"), None)
    if ft720 is not None:
        if ft720["available"]:
            targets["realtime_720p"] = {
                "target": TARGET_REALTIME_720P,
                "measured": ft720["realtime"],
                "met": ft720["realtime"] >= TARGET_REALTIME_720P,
            }
            if "ratio" in ft720:
                targets["ratio_720p"] = {
                    "target": TARGET_RATIO,
                    "measured": ft720["ratio"],
                    "met": ft720["ratio"] >= TARGET_RATIO,
                }
        for name, t in targets.items():
            say(
                f"target {name}: >= {t['target']:g}, measured {t['measured']:.2f}: "
                + ("met" if t["met"] else "NOT met")
            )

    if args.json:
        result = {
            "benchmark": "video_speed",
            "machine": {
                "cpus": os.cpu_count(),
                "arch": platform.machine(),
                "system": platform.system(),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in load_after],
            },
            "versions": info,
            "source_commit": commit,
            "options": {
                "runs": args.runs,
                "baseline_runs": args.baseline_runs,
                "baseline_frames": max_frames,
                "repeat": args.repeat,
                "only": args.only,
            },
            "footage": [
                {
                    "label": f.label,
                    "path": str(f.path),
                    "width": f.width,
                    "height": f.height,
                    "frames": f.frames,
                    "seconds": round(f.seconds, 3),
                    "fps": round(f.fps, 3),
                    "sha256": f.sha256,
                    "made": f.made,
                }
                for f in footage
            ],
            "facetrail_settings": settings,
            "results": rows,
            "targets": targets,
        }
        text = json.dumps(result, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
            say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
