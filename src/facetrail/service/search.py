"""1:1 verification and 1:N search against the gallery.

Search is exact in this version: every probe face of a batch is scored against every template
in one matrix product (the store's index), and a subject's score is its best template's.
Each score carries the estimated false match rate from the model's calibration, so a reader
sees what a score means, not just a number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrail.errors import NoFaceError
from facetrail.media import LoadedImage, load_image
from facetrail.service.cohort import Normaliser
from facetrail.service.enrol import reason_of
from facetrail.service.footage import Appearance, VideoOptions, is_video, search_video
from facetrail.service.results import (
    Candidate,
    FaceResult,
    ProbeResult,
    SearchReport,
    VerifyReport,
)
from facetrail.store import ExactIndex, Store
from facetrail.store.index import TemplateIndex
from facetrail.vision.calibration import Calibration
from facetrail.vision.compare import normalise, similarity
from facetrail.vision.faces import Faces
from facetrail.vision.miss_rates import miss_rate
from facetrail.vision.pipeline import FaceAnalyzer

# Tracks videos elsewhere: given (input position, path) of each video and the ranking of
# this search, yields (input position, probe result, kept appearances) as each finishes,
# exactly what `search_video` returns for it.
RemoteVideos = Callable[
    [list[tuple[int, Path]], Callable[[np.ndarray], list[list[Candidate]]]],
    Iterable[tuple[int, ProbeResult, list[Appearance]]],
]


@dataclass(frozen=True)
class Scoring:
    """How scores are judged: the threshold and what each score means."""

    threshold: float
    target_fmr: float | None
    calibration: Calibration | None
    # Cohort normalisation (issue 10): with one, scores are AS-norm scores (not cosines) and
    # `calibration` is the one fitted on AS-norm scores, so FMRs keep their meaning.
    normaliser: Normaliser | None = None

    @property
    def method(self) -> str:
        return "cosine" if self.normaliser is None else f"{self.normaliser.method}"

    def fmr(self, scores: np.ndarray) -> np.ndarray | None:
        return None if self.calibration is None else self.calibration.fmr(scores)

    def meaning(self, score: float) -> str:
        if self.calibration is None:
            return "this model has no calibration: the score's false match rate is unknown"
        fmr = float(self.calibration.fmr(score))
        if fmr <= self.calibration.min_fmr:
            return (
                f"estimated false match rate below 1 in {self.calibration.impostor_comparisons:,} "
                f"(no impostor comparison in the calibration scored this high)"
            )
        return (
            f"estimated false match rate {fmr:.2g}: about 1 in {max(1, round(1 / fmr)):,} "
            "comparisons of two different people score this high"
        )


def _face_results(faces: Faces) -> list[FaceResult]:
    return [
        FaceResult(
            box=[round(float(v), 1) for v in faces.boxes[i]],
            quality=round(float(faces.quality[i]), 4),
            detector_score=round(float(faces.scores[i]), 4),
        )
        for i in range(len(faces))
    ]


@dataclass(frozen=True)
class _ProbeImage:
    """What a result says of its image, and its file's bytes (kept as evidence of the
    search); the pixels themselves are let go after detection."""

    sha256: str
    width: int
    height: int
    data: bytes

    @classmethod
    def of(cls, loaded: LoadedImage) -> _ProbeImage:
        return cls(loaded.sha256, loaded.width, loaded.height, loaded.data)


@dataclass(frozen=True)
class Evidence:
    """What a search keeps of one probe besides its result: the file (images; a video is
    named by its hash only) and, per face in result order, its aligned crop and (video) a
    wider crop of its best shot."""

    data: bytes | None
    chips: list[np.ndarray | None] | np.ndarray | None
    contexts: list[np.ndarray | None] | None = None


def exclusive_claims(
    faces: list[FaceResult], together: Callable[[int, int], bool]
) -> list[FaceResult]:
    """Two faces seen together (one image, one frame) are never both claimed for one subject:
    a subject stays with the face that scores it highest and leaves the others' lists."""
    order = sorted(
        range(len(faces)),
        key=lambda i: -(faces[i].candidates[0].score if faces[i].candidates else -2.0),
    )
    claims: list[tuple[int, str]] = []
    out = list(faces)
    for i in order:
        face = faces[i]
        kept = [
            c
            for c in face.candidates
            if not any(s == c.subject and together(i, j) for j, s in claims)
        ]
        if len(kept) != len(face.candidates):
            kept = [dataclasses.replace(c, rank=r) for r, c in enumerate(kept, start=1)]
            out[i] = dataclasses.replace(face, candidates=kept)
        claims.extend((i, c.subject) for c in kept if c.above_threshold)
    return out


def with_miss_rates(probe: ProbeResult, model: str, scoring: Scoring) -> ProbeResult:
    """Each face's measured miss rate at its quality (see `vision.miss_rates`)."""
    method, threshold = scoring.method, scoring.threshold
    faces = [
        dataclasses.replace(f, miss_rate=miss_rate(model, method, threshold, f.quality))
        for f in probe.faces
    ]
    return dataclasses.replace(probe, faces=faces)


def _probe(
    name: str, loaded: _ProbeImage | None, faces: list[FaceResult], error: str | None = None
) -> ProbeResult:
    return ProbeResult(
        probe=name,
        sha256=loaded.sha256 if loaded else None,
        width=loaded.width if loaded else None,
        height=loaded.height if loaded else None,
        faces=faces,
        error=error,
    )


NORMALISED_POOL = 32  # at least this many templates re-ranked by normalised score per probe


def rank_candidates(
    store: Store,
    index: TemplateIndex,
    descriptors: np.ndarray,
    scoring: Scoring,
    top_k: int,
    include_below: bool,
) -> list[list[Candidate]]:
    """For each probe descriptor, its best `top_k` subjects (best template per subject)."""
    if len(descriptors) == 0 or len(index) == 0:
        return [[] for _ in range(len(descriptors))]
    queries = normalise(descriptors)
    # Ask for more templates than subjects wanted, since a subject may hold several; with
    # normalisation, that pool of the best raw scores (at least NORMALISED_POOL) is re-ranked
    # by normalised score: on LFW (801 subjects, 4347 probes) the AS-norm top-1 within the
    # raw top 20 was the AS-norm top-1 over the whole gallery for every probe, and a pool
    # keeps the cost of a search that of the index (an approximate one included).
    normaliser = scoring.normaliser
    want = min(len(index), top_k * 4 if normaliser is None else max(top_k * 4, NORMALISED_POOL))
    while True:
        scores, ids = index.search(queries, want)
        if normaliser is not None:
            normed = normaliser.normalise(queries, scores.astype(np.float64), ids)
            order = np.argsort(-normed, axis=1, kind="stable")
            rows = np.arange(len(order))[:, None]
            scores, ids = normed[rows, order], ids[rows, order]
        subjects = store.template_subjects(ids)
        fewest = min(len(np.unique(row[row >= 0])) for row in subjects)
        if fewest >= top_k or want >= len(index):
            break
        want = min(len(index), want * 4)
    names = store.subject_names(subjects[subjects >= 0])
    out = []
    for row_scores, row_subjects in zip(scores, subjects, strict=True):
        best: dict[int, float] = {}
        for score, sid in zip(row_scores.tolist(), row_subjects.tolist(), strict=True):
            if sid >= 0 and sid not in best:
                best[sid] = score  # rows come in descending score order
        ranked = list(best.items())[:top_k]
        fmrs = scoring.fmr(np.array([s for _, s in ranked], np.float64))
        candidates = []
        for rank, (sid, score) in enumerate(ranked, start=1):
            above = score >= scoring.threshold
            if not above and not include_below:
                continue
            candidates.append(
                Candidate(
                    subject=names[sid],
                    score=round(score, 4),
                    fmr=None if fmrs is None else float(f"{fmrs[rank - 1]:.3g}"),
                    rank=rank,
                    above_threshold=above,
                )
            )
        out.append(candidates)
    return out


def _subset_index(store: Store, model: str, subjects: set[int]) -> ExactIndex:
    """An index of the templates of `subjects` only: a watchlist is searched as if it
    were the whole gallery, so its members are never crowded out by people not on it."""
    matrix = store.templates(model)
    keep = np.isin(matrix.subject_ids, np.fromiter(subjects, np.int64, len(subjects)))
    return ExactIndex(matrix.dim, matrix.template_ids[keep], matrix.vectors[keep])


def search(
    store: Store,
    analyzer: FaceAnalyzer,
    probes: Iterable[Path],
    scoring: Scoring,
    *,
    top_k: int,
    include_below: bool,
    max_pixels: int,
    max_bytes: int,
    subjects: set[int] | None = None,
    video: VideoOptions | None = None,
    keep_all: bool = False,
    progress: Callable[[ProbeResult], None] | None = None,
    remote_videos: RemoteVideos | None = None,
) -> tuple[SearchReport, list[Evidence]]:
    """Search every face of each probe image, and every appearance in each probe video;
    returns the report and, per probe in input order, its evidence. `remote_videos`: track
    the videos elsewhere (a Ray cluster) instead of here; see `RemoteVideos`."""
    model = analyzer.model_id
    index = store.index(model) if subjects is None else _subset_index(store, model, subjects)
    paths = list(probes)

    def rank(descriptors: np.ndarray) -> list[list[Candidate]]:
        return rank_candidates(store, index, descriptors, scoring, top_k, include_below)

    def prepare(path: Path) -> tuple[np.ndarray, _ProbeImage]:
        loaded = load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
        return loaded.pixels, _ProbeImage.of(loaded)

    found: dict[int, tuple[ProbeResult, Evidence]] = {}
    images = [i for i, p in enumerate(paths) if video is None or not is_video(p)]
    streamed = analyzer.stream([paths[i] for i in images], prepare, mode="thorough")
    for i, result in zip(images, streamed, strict=True):
        name = str(result.item)
        if result.error is not None:
            found[i] = (_probe(name, None, [], reason_of(result.error)), Evidence(None, None))
        else:
            faces = result.faces
            assert faces is not None and faces.descriptors is not None
            face_results = [
                FaceResult(f.box, f.quality, f.detector_score, c)
                for f, c in zip(_face_results(faces), rank(faces.descriptors), strict=True)
            ]
            face_results = exclusive_claims(face_results, lambda a, b: True)
            found[i] = (
                _probe(name, result.extra, face_results),  # type: ignore[arg-type]
                Evidence(result.extra.data, faces.chips),  # type: ignore[union-attr]
            )
        if progress:
            progress(found[i][0])
    videos = [(i, path) for i, path in enumerate(paths) if i not in found and video is not None]
    if remote_videos is not None and videos:
        tracked: Iterable[tuple[int, ProbeResult, list[Appearance]]] = remote_videos(videos, rank)
    else:
        tracked = (
            (i, *search_video(path, rank, video, keep_all=keep_all))  # type: ignore[arg-type]
            for i, path in videos
        )
    for i, probe, appearances in tracked:
        frames = [a.frames for a in appearances]
        faces = exclusive_claims(
            [a.face for a in appearances],
            lambda a, b, frames=frames: not frames[a].isdisjoint(frames[b]),  # type: ignore[misc]
        )
        probe = dataclasses.replace(probe, faces=faces)
        chips = [a.chip for a in appearances]
        found[i] = (probe, Evidence(None, chips, [a.context for a in appearances]))
        if progress:
            progress(probe)
    results = [with_miss_rates(found[i][0], model, scoring) for i in range(len(paths))]
    evidence = [found[i][1] for i in range(len(paths))]
    if subjects is None:
        n_subjects, n_templates = store.gallery_size(model)
    else:
        n_subjects, n_templates = len(subjects), len(index)
    report = SearchReport(
        model=model,
        threshold=round(scoring.threshold, 4),
        target_fmr=scoring.target_fmr,
        top_k=top_k,
        gallery_subjects=n_subjects,
        gallery_templates=n_templates,
        probes=results,
        scoring=scoring.method,
    )
    return report, evidence


def verify(
    analyzer: FaceAnalyzer,
    a: Path,
    b: Path,
    scoring: Scoring,
    *,
    max_pixels: int,
    max_bytes: int,
) -> VerifyReport:
    """Compare the main (largest) face of two images."""
    described = []
    for path in (a, b):
        loaded = load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
        faces = analyzer.analyse(loaded.pixels, mode="primary")
        if len(faces) == 0:
            raise NoFaceError(f"{loaded.name}: no face found")
        main = faces.select([int(np.argmax(faces.widths))])
        described.append((_ProbeImage.of(loaded), main, len(faces)))
    (la, fa, _), (lb, fb, _) = described
    assert fa.descriptors is not None and fb.descriptors is not None
    score = float(similarity(fa.descriptors, fb.descriptors)[0])
    fmr = scoring.fmr(np.array([score]))
    return VerifyReport(
        model=analyzer.model_id,
        a=_probe(str(a), la, _face_results(fa)),
        b=_probe(str(b), lb, _face_results(fb)),
        score=round(score, 4),
        threshold=round(scoring.threshold, 4),
        match=score >= scoring.threshold,
        fmr=None if fmr is None else float(f"{fmr[0]:.3g}"),
        meaning=scoring.meaning(score),
    )


def all_failed(report: SearchReport) -> bool:
    return bool(report.probes) and all(p.error is not None for p in report.probes)
