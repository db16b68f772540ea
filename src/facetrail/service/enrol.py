"""Enrolment: reference images in, subjects with templates out.

Inputs are expanded into (subject, image, reference) items first, so a bad folder or manifest
is refused before anything is written. Then every item is analysed in the vision pipeline and
stored in its own transaction: one bad image is skipped with its reason and the batch goes on,
and a crash half-way leaves every earlier reference enrolled and nothing half-written.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrail.errors import InvalidInputError, NoFaceError
from facetrail.media import IMAGE_SUFFIXES, LoadedImage, load_image
from facetrail.media.chips import chip_bytes
from facetrail.service.results import EnrolItemResult, EnrolReport
from facetrail.store import (
    AddedReference,
    AuditRecord,
    FaceRecord,
    ImageRecord,
    NewReference,
    Store,
)
from facetrail.vision.compare import normalise
from facetrail.vision.faces import Faces
from facetrail.vision.pipeline import Analysed, FaceAnalyzer

# Makes the audit event of an enrolment batch: (action, image ids, details) -> record, so
# that the caller's identity stays with the service that knows it.
AuditFactory = Callable[[str, list[int], dict], AuditRecord]

# A second face at least this share of the main face's width makes the reference ambiguous;
# smaller ones are people in the background and are ignored.
COMPARABLE_FACE = 0.5
MAX_NAME = 200
# References written per transaction: one commit (and fsync) per batch, not per image.
WRITE_BATCH = 64


@dataclass(frozen=True)
class EnrolItem:
    subject: str
    path: Path
    reference: str | None = None


def _check_name(name: str, where: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidInputError(f"{where}: subject name must be 1-{MAX_NAME} printable characters")
    return name


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def expand_paths(paths: Iterable[Path], subject: str | None) -> list[EnrolItem]:
    """Folders of sub-folders enrol one subject per sub-folder; anything else needs `subject`."""
    items: list[EnrolItem] = []
    for path in paths:
        if not path.exists():
            raise InvalidInputError(f"{path}: no such file or folder")
        if path.is_dir() and subject is None:
            folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not folders:
                raise InvalidInputError(
                    f"{path}: has no sub-folders named after subjects; use --subject NAME "
                    "to enrol its images as one subject"
                )
            for folder in folders:
                name = _check_name(folder.name, str(folder))
                items += [EnrolItem(name, p) for p in _images_in(folder)]
        elif path.is_dir():
            items += [EnrolItem(subject, p) for p in _images_in(path)]
        elif subject is None:
            raise InvalidInputError(f"{path}: a loose image needs --subject NAME")
        else:
            items.append(EnrolItem(subject, path))
    return items


def read_manifest(manifest: Path) -> list[EnrolItem]:
    """CSV with columns subject, image and optionally reference; images relative to the CSV."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            if not {"subject", "image"} <= columns:
                raise InvalidInputError(f"{manifest.name}: needs columns 'subject' and 'image'")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{manifest.name}: cannot read the manifest ({exc})") from exc
    items = []
    for line, row in enumerate(rows, start=2):
        where = f"{manifest.name} line {line}"
        name = _check_name(row.get("subject") or "", where)
        image = (row.get("image") or "").strip()
        if not image:
            raise InvalidInputError(f"{where}: empty image path")
        path = Path(image) if Path(image).is_absolute() else manifest.parent / image
        reference = (row.get("reference") or "").strip() or None
        items.append(EnrolItem(name, path, reference))
    return items


def reference_face(faces: Faces, min_quality: float) -> Faces:
    """The one usable face of a reference image, or NoFaceError saying why there is none."""
    if len(faces) == 0:
        raise NoFaceError("no face found")
    widths = faces.widths
    main = int(np.argmax(widths))
    if (widths >= COMPARABLE_FACE * widths[main]).sum() > 1:
        raise NoFaceError(
            f"{int((widths >= COMPARABLE_FACE * widths[main]).sum())} faces of similar size"
        )
    face = faces.select([main])
    if face.quality[0] < min_quality:
        raise NoFaceError(f"face quality {face.quality[0]:.2f} below the minimum {min_quality:.2f}")
    return face


def reason_of(error: Exception) -> str:
    """The error's reason without the file name it starts with (names are in `image`)."""
    text = str(error)
    head, sep, tail = text.partition(": ")
    return tail if sep and "/" not in head and " " not in head.strip() else text


def enrol(
    store: Store,
    analyzer: FaceAnalyzer,
    items: list[EnrolItem],
    *,
    max_pixels: int,
    max_bytes: int,
    min_quality: float,
    audit: AuditFactory,
    progress: Callable[[EnrolItemResult], None] | None = None,
) -> EnrolReport:
    report = EnrolReport(model=analyzer.model_id)

    def prepare(item: EnrolItem) -> tuple[np.ndarray, ImageRecord]:
        # Keep the file's bytes and facts for the store, not its pixels: the pipeline holds
        # many images in flight, and pixels are only needed until the faces are found.
        loaded = load_image(item.path, max_pixels=max_pixels, max_bytes=max_bytes)
        return loaded.pixels, _image_record(loaded)

    def select(faces: Faces, pixels: np.ndarray) -> Faces:
        return reference_face(faces, min_quality)

    def record(outcomes: list[EnrolItemResult]) -> None:
        report.results.extend(outcomes)
        if progress:
            for outcome in outcomes:
                progress(outcome)

    # Writing (blob files with fsync, then one transaction) runs in its own thread, one batch
    # at a time, while the pipeline analyses the next batch.
    model = analyzer.model_id
    batch: list[Analysed[EnrolItem]] = []
    writing: Future[list[EnrolItemResult]] | None = None
    with ThreadPoolExecutor(1) as writer, ThreadPoolExecutor(analyzer.settings.workers) as pngs:
        for result in analyzer.stream(items, prepare, mode="primary", select=select):
            batch.append(result)
            if len(batch) >= WRITE_BATCH:
                if writing is not None:
                    record(writing.result())
                writing = writer.submit(_store_batch, store, model, audit, batch, pngs)
                batch = []
        if writing is not None:
            record(writing.result())
        record(_store_batch(store, model, audit, batch, pngs))
    return report


@dataclass(frozen=True)
class AnalysedReference:
    """One reference image after analysis, wherever that ran (here, or on a Ray worker):
    its file and usable face, or the reason it is skipped."""

    item: EnrolItem
    image: ImageRecord | None
    face: FaceRecord | None
    reason: str | None


def _store_batch(
    store: Store,
    model: str,
    audit: AuditFactory,
    batch: list[Analysed[EnrolItem]],
    pngs: ThreadPoolExecutor,
) -> list[EnrolItemResult]:
    ok = [r for r in batch if r.error is None]
    faces = iter(list(pngs.map(_face_record, ok)))
    analysed = [
        AnalysedReference(r.item, None, None, reason_of(r.error))
        if r.error is not None
        else AnalysedReference(r.item, r.extra, next(faces), None)  # type: ignore[arg-type]
        for r in batch
    ]
    return store_references(store, model, audit, analysed)


def store_references(
    store: Store, model: str, audit: AuditFactory, batch: list[AnalysedReference]
) -> list[EnrolItemResult]:
    """Write a batch of analysed references in one transaction with bulk inserts (one commit,
    one fsync); a reference the store refuses (a contradicting reference number) is skipped
    alone. An image already enrolled for its subject comes back "duplicate" and changes
    nothing, so writing the same batch twice enrols it once."""
    ok = [r for r in batch if _usable(r)]
    requests = [
        NewReference(r.item.subject, r.item.reference, r.image, (r.face,))  # type: ignore[arg-type]
        for r in ok
    ]
    stored = _write_references(store, model, audit, requests) if requests else []
    added = iter(stored)
    outcomes = []
    for result in batch:
        item = result.item
        where = (item.subject, str(item.path))
        if not _usable(result):
            outcomes.append(EnrolItemResult(*where, "skipped", result.reason or "no usable face"))
            continue
        assert result.face is not None
        outcome, quality = next(added), round(result.face.quality, 4)
        if isinstance(outcome, InvalidInputError):
            outcomes.append(EnrolItemResult(*where, "skipped", str(outcome)))
        elif outcome.duplicate:
            reason = "image already enrolled for this subject"
            outcomes.append(EnrolItemResult(*where, "duplicate", reason, quality))
        else:
            outcomes.append(EnrolItemResult(*where, "enrolled", None, quality))
    return outcomes


def _usable(result: AnalysedReference) -> bool:
    return result.reason is None and result.image is not None and result.face is not None


def _write_references(
    store: Store, model: str, audit: AuditFactory, requests: list[NewReference]
) -> list[AddedReference | InvalidInputError]:
    """Store the references and audit the enrolment in one transaction."""
    with store.session() as session:
        stored = store.add_references(requests, model=model, session=session)
        enrolled = [o for o in stored if isinstance(o, AddedReference) and not o.duplicate]
        if enrolled:
            event = audit(
                "enrol",
                [o.image_id for o in enrolled],
                {
                    "subjects": sorted({o.subject for o in enrolled}),
                    "templates": sum(len(o.template_ids) for o in enrolled),
                    "model": model,
                },
            )
            store.audit(event, session=session)
    return stored


def _image_record(loaded: LoadedImage) -> ImageRecord:
    return ImageRecord(
        sha256=loaded.sha256,
        name=loaded.name,
        format=loaded.format,
        width=loaded.width,
        height=loaded.height,
        data=loaded.data,
    )


def _face_record(result: Analysed[EnrolItem]) -> FaceRecord:
    assert result.faces is not None
    return face_record(result.faces)


def face_record(face: Faces) -> FaceRecord:
    """The stored form of the one face of a reference (chip as lossless WebP, unit descriptor)."""
    assert face.descriptors is not None
    return FaceRecord(
        box=tuple(float(v) for v in face.boxes[0]),
        landmarks=[(float(x), float(y)) for x, y in face.landmarks[0]],
        detector_score=float(face.scores[0]),
        quality=float(face.quality[0]),
        chip_image=chip_bytes(face.chips[0]) if face.chips is not None else None,
        descriptor=normalise(face.descriptors[:1])[0],  # templates are unit vectors
    )
