"""Ingestion on a Ray cluster: decoding, detection and description spread over many machines.

`facetrail enrol --ray ADDRESS` and `facetrail search --ray ADDRESS` connect this process (the
driver) to a running Ray cluster. The work that costs (decode, detect, align, describe) runs
in Ray tasks; everything that writes stays here:

* The driver owns the store. Tasks are pure: they return descriptors, face crops, quality and
  reasons, and never open the store. Each result is written by the driver after its task
  returns, once, keyed by the item's position in the input.
* Ray re-runs a task whose worker process or node died (`max_retries`): its items are
  analysed again elsewhere, and since the dead attempt wrote nothing, no item is lost and
  none is written twice. Running the same enrolment again is harmless too: an image already
  enrolled for its subject (same sha256) comes back "duplicate" and changes nothing.
* Enrolment ships each image's bytes to the workers through Ray's object store (the driver
  has to read them anyway, to keep the original in its blob store), so workers need no view
  of the driver's files. Videos are too big to ship: a worker opens the video at its path,
  which must therefore be readable at the same path on every node (a shared filesystem).
* Workers need facetrail (same version) and its models installed. Each worker process builds
  its `FaceAnalyzer` once, from the settings shipped with the task (never the database URL,
  keys or other secrets), and keeps it for the tasks that follow. Every answer carries the
  worker's model id, and one unlike this process's stops the run: descriptors of another
  model must never be filed as this one's.
* Searching stays exact: a worker tracks the faces in its video and returns every track
  (descriptor, best shot); the driver ranks them against the gallery or watchlist, as a
  local search does.

Ray is an optional dependency (`pip install 'facetrail[ray]'`); without `--ray` nothing
here is imported and no cluster or server is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facetrail.config import Settings
from facetrail.errors import FacetrailError, InvalidInputError
from facetrail.media.image import load_image, read_image_file
from facetrail.service.enrol import (
    AnalysedReference,
    AuditFactory,
    EnrolItem,
    face_record,
    reason_of,
    reference_face,
    store_references,
)
from facetrail.service.footage import Appearance, VideoOptions, search_video
from facetrail.service.results import Candidate, EnrolItemResult, EnrolReport, ProbeResult
from facetrail.store import FaceRecord, ImageRecord, Store
from facetrail.vision.detector import build_detector
from facetrail.vision.faces import Faces
from facetrail.vision.pipeline import FaceAnalyzer
from facetrail.vision.tracker import TrackerConfig

RAY_HINT = "pip install 'facetrail[ray]'"
# A task that fails because its worker process or node died is run again this many times;
# an error raised by facetrail itself (a bad image) is an answer, not a failure.
MAX_RETRIES = 4
# Items per enrolment task: enough to batch the descriptor network, few enough that the
# cluster's workers all get some and a lost task costs little to redo.
MAX_TASK_ITEMS = 32
# Settings a worker is never sent: where this process keeps its data and how many threads
# it runs, where it sends alerts, and how its store indexes templates (secrets, typed
# SecretStr, are left out as well). The rest goes, so that a worker analyses exactly as this
# process would, whatever settings are added later.
NOT_SHIPPED = frozenset({"data", "workers", "encryption_key_file", "live_webhook_url", "index"})
NOT_SHIPPED_PREFIXES = ("milvus_", "ann_")


class ClusterError(FacetrailError):
    """The Ray cluster cannot be used (not installed, unreachable, or it gave up on a task)."""

    exit_code = 12


# --------------------------------------------------------------------------- the driver


def connect(address: str) -> Any:
    """The `ray` module, connected to the cluster at `address` (host:port of its head).

    A connection this process already has is reused (a notebook, a test)."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray here and on the cluster: {RAY_HINT}") from None
    if not address or not address.strip():
        raise InvalidInputError("--ray needs the address of the cluster's head (HOST:PORT)")
    if not ray.is_initialized():
        _cluster_messages_to_stderr()
        try:
            ray.init(
                address=address.strip(),
                logging_level="warning",
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return ray


def _cluster_messages_to_stderr() -> None:
    """Send the cluster's messages to the driver ("a worker died...") to stderr.

    Ray prints them on stdout, where `--json` promises exactly one JSON document; its
    listener looks the printer up in its module on every message, so replacing it there is
    enough. A Ray without that private function is left alone."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - Ray's internals moved
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_facetrail", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr._facetrail = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def vision_settings(settings: Settings) -> dict[str, Any]:
    """What a worker is sent of the settings: all but secrets and this process's own."""
    secret = {
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    store = {name for name in Settings.model_fields if name.startswith(NOT_SHIPPED_PREFIXES)}
    return settings.model_dump(mode="json", exclude=set(NOT_SHIPPED | secret | store))


def _cluster_cpus(ray: Any) -> int:
    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:  # pragma: no cover - an old Ray or a cluster going away
        return 1


def _get(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except FacetrailError:
        raise
    except Exception as exc:  # RayTaskError, WorkerCrashedError after the last retry...
        raise ClusterError(f"the Ray cluster could not finish a task: {exc}") from None


@dataclass(frozen=True)
class _Shipped:
    """An item read here, on its way to a worker."""

    key: int
    data: bytes
    sha256: str


def enrol(
    ray: Any,
    store: Store,
    settings: Settings,
    model: str,
    items: list[EnrolItem],
    *,
    audit: AuditFactory,
    progress: Callable[[EnrolItemResult], None] | None = None,
) -> EnrolReport:
    """Enrol `items` with their analysis done on the cluster; see the module docstring.

    The driver reads each file (a file it cannot read is skipped here, with `load_image`'s
    reason), sends batches to tasks, keeps about two tasks per cluster CPU in flight, and
    writes each returned batch in one transaction. The report lists items in input order."""
    shipped = _remote_function(ray, _analyse_references)
    options = vision_settings(settings)
    cpus = _cluster_cpus(ray)
    per_task = max(1, min(MAX_TASK_ITEMS, math.ceil(len(items) / (2 * cpus))))
    outcomes: dict[int, EnrolItemResult] = {}

    def record(results: list[tuple[int, EnrolItemResult]]) -> None:
        for key, outcome in results:
            if key in outcomes:  # pragma: no cover - a task's answer arrives once
                raise ClusterError(f"item {key} came back twice from the cluster")
            outcomes[key] = outcome
            if progress:
                progress(outcome)

    def write(batch: list[AnalysedReference], keys: list[int]) -> None:
        record(list(zip(keys, store_references(store, model, audit, batch), strict=True)))

    pending: dict[Any, list[_Shipped]] = {}
    source = _read_batches(items, per_task, settings.max_file_bytes)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < 2 * cpus:
                batch = next(source, None)
                if batch is None:
                    exhausted = True
                    continue
                ship, unreadable, keys = batch
                if unreadable:  # files that could not even be read are skipped at once
                    write(unreadable, keys)
                if ship:
                    pending[shipped.remote(options, [(b.key, b.data) for b in ship])] = ship
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            sent = pending.pop(done[0])
            worker_model, answers = _get(ray, done[0])
            _same_model(worker_model, model)
            if [a.key for a in answers] != [s.key for s in sent]:
                raise ClusterError("a task answered for other items than it was given")
            analysed = [_analysed(items[s.key], s, a) for s, a in zip(sent, answers, strict=True)]
            write(analysed, [s.key for s in sent])
    finally:
        _cancel(ray, pending)  # stopped early (an error, Ctrl-C): nothing more will be written
    report = EnrolReport(model=model)
    report.results.extend(outcomes[k] for k in sorted(outcomes))
    if len(outcomes) != len(items):  # pragma: no cover - every item is read or skipped
        raise ClusterError("some items were neither enrolled nor skipped")
    return report


def _read_batches(
    items: list[EnrolItem], per_task: int, max_bytes: int
) -> Iterator[tuple[list[_Shipped], list[AnalysedReference], list[int]]]:
    """(items to ship, items skipped because unreadable, their keys), a task's worth at a
    time, so that memory holds only the files in flight."""
    for start in range(0, len(items), per_task):
        ship: list[_Shipped] = []
        skipped: list[AnalysedReference] = []
        keys: list[int] = []
        for key in range(start, min(len(items), start + per_task)):
            try:
                data = read_image_file(items[key].path, max_bytes=max_bytes)
            except FacetrailError as exc:
                skipped.append(AnalysedReference(items[key], None, None, reason_of(exc)))
                keys.append(key)
                continue
            ship.append(_Shipped(key, data, hashlib.sha256(data).hexdigest()))
        yield ship, skipped, keys


def _analysed(item: EnrolItem, sent: _Shipped, answer: _Answer) -> AnalysedReference:
    if answer.reason is not None or answer.face is None:
        return AnalysedReference(item, None, None, answer.reason or "no usable face")
    image = ImageRecord(
        sha256=sent.sha256,
        name=os.path.basename(str(item.path)),
        format=answer.format,
        width=answer.width,
        height=answer.height,
        data=sent.data,
    )
    return AnalysedReference(item, image, answer.face, None)


def search_videos(
    ray: Any,
    settings: Settings,
    model: str,
    paths: Sequence[tuple[int, Path]],
    *,
    rank: Callable[[np.ndarray], list[list[Candidate]]],
    tracker: TrackerConfig,
    keep_all: bool,
) -> Iterator[tuple[int, ProbeResult, list[Appearance]]]:
    """(input position, probe result, kept appearances) of each video as its task finishes.

    One task per video; each returns every track it saw, and they are ranked here."""
    remote = _remote_function(ray, _track_video)
    options = vision_settings(settings)
    pending = {
        remote.remote(options, str(Path(path).absolute()), dataclasses.asdict(tracker)): (i, path)
        for i, path in paths
    }
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i, path = pending.pop(done[0])
            worker_model, probe, tracks = _get(ray, done[0])
            _same_model(worker_model, model)
            yield (i, *_rank_tracks(probe, tracks, str(path), rank, keep_all))
    finally:
        _cancel(ray, pending)


def _rank_tracks(
    probe: ProbeResult,
    tracks: list[Appearance],
    name: str,
    rank: Callable[[np.ndarray], list[list[Candidate]]],
    keep_all: bool,
) -> tuple[ProbeResult, list[Appearance]]:
    """What `search_video` would have kept had it ranked the tracks itself."""
    probe = dataclasses.replace(probe, probe=name)
    if not tracks:
        return probe, []
    ranked = rank(np.stack([t.descriptor for t in tracks]))
    kept = [
        dataclasses.replace(t, face=dataclasses.replace(t.face, candidates=c))
        for t, c in zip(tracks, ranked, strict=True)
        if c or keep_all
    ]
    return dataclasses.replace(probe, faces=[a.face for a in kept]), kept


def _cancel(ray: Any, pending: dict[Any, Any]) -> None:
    """Cancel tasks whose answers will not be used (they write nothing either way)."""
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def _same_model(worker: str, driver: str) -> None:
    """Refuse descriptors of another model than this process's: a node with other model
    files (or another facetrail) would otherwise file them under the wrong model."""
    if worker != driver:
        raise ClusterError(
            f"a Ray worker describes faces with model {worker!r}, this process with {driver!r}:"
            " install the same facetrail, models and settings on every node"
        )


def _remote_function(ray: Any, function: Callable[..., Any]) -> Any:
    return ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(function)


# --------------------------------------------------------------------------- the workers

# One analyser per worker process and settings: models load once, not per task.
_ANALYZERS: dict[tuple[str, bool], FaceAnalyzer] = {}
_ANALYZERS_LOCK = threading.Lock()


def _worker_analyzer(options: dict[str, Any], video: bool) -> FaceAnalyzer:
    key = (repr(sorted(options.items())), video)
    with _ANALYZERS_LOCK:
        if key not in _ANALYZERS:
            # A task holds one CPU of Ray's: one pipeline thread. The data directory only
            # caches the converted descriptor model, so a worker keeps its own.
            data = Path(tempfile.gettempdir()) / f"facetrail-ray-{os.getuid()}"
            settings = Settings(**options, data=data, workers=1)
            detector = None
            if video:  # as the driver's video analyzer (service.app) builds its detector
                detector = build_detector(
                    settings.video_detector_kind(),
                    settings.video_min_face,
                    settings.video_detect_pixels,
                    grey=True,
                    providers=settings.providers,
                )
            _ANALYZERS[key] = FaceAnalyzer(settings, detector=detector)
        return _ANALYZERS[key]


@dataclass(frozen=True)
class _Answer:
    """A worker's analysis of one reference image."""

    key: int
    format: str
    width: int
    height: int
    face: FaceRecord | None
    reason: str | None


def _analyse_references(
    options: dict[str, Any], batch: list[tuple[int, bytes]]
) -> tuple[str, list[_Answer]]:
    """Decode, detect, align and describe the reference face of each image (a Ray task);
    returns the worker's model id with the answers."""
    analyzer = _worker_analyzer(options, video=False)
    min_quality = float(options.get("min_quality", 0.0))
    max_pixels = int(options["max_image_pixels"])

    def prepare(entry: tuple[int, bytes]) -> tuple[np.ndarray, tuple[str, int, int]]:
        loaded = load_image(entry[1], max_pixels=max_pixels, max_bytes=len(entry[1]))
        return loaded.pixels, (loaded.format, loaded.width, loaded.height)

    def select(faces: Faces, pixels: np.ndarray) -> Faces:
        return reference_face(faces, min_quality)

    answers = []
    for result in analyzer.stream(batch, prepare, mode="primary", select=select):
        key = result.item[0]
        if result.error is not None or result.faces is None:
            reason = reason_of(result.error) if result.error else "no usable face"
            answers.append(_Answer(key, "", 0, 0, None, reason))
            continue
        fmt, width, height = result.extra  # type: ignore[misc]
        answers.append(_Answer(key, fmt, width, height, face_record(result.faces), None))
    return analyzer.model_id, answers


def _track_video(
    options: dict[str, Any], path: str, tracker: dict[str, Any]
) -> tuple[str, ProbeResult, list[Appearance]]:
    """Every track of one video, unranked (a Ray task), with the worker's model id; the
    driver ranks them."""
    analyzer = _worker_analyzer(options, video=True)
    fps = float(options["video_fps"])
    video = VideoOptions(
        analyzer=analyzer,
        sample_fps=fps if fps > 0 else None,
        tracker=TrackerConfig(**tracker),
        max_pixels=int(options["max_image_pixels"]),
        max_bytes=int(options["max_video_bytes"]),
    )
    unranked = search_video(Path(path), lambda d: [[] for _ in range(len(d))], video, keep_all=True)
    return (analyzer.model_id, *unranked)
