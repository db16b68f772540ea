"""A calibration from the user's own labelled faces (`facetrail calibrate`).

The packaged calibration was measured on LFW: celebrities, press photographs. What a score
means for the people and cameras a force actually works with can differ (the bias report
shows by how much between groups), so an estimated false match rate is only honest when it
was measured on that population. This fits the same table (`vision.calibration`) from:

- a folder of identities (`DIR/<person>/<image>`, LFW layout): every pair of images of
  different people is an impostor comparison, of one person a genuine one;
- the same folder with `--labels` naming each image's (or folder's) identity (a CSV of two
  columns, `image,identity`: an image's own label wins over its folder's);
- a list of labelled pairs (`--labels` a CSV whose first three columns are `a,b,same`, paths
  relative to DIR, `same` one of yes/no, true/false, 1/0): only those comparisons count.

A false match rate below 1 / impostor comparisons cannot be measured from the data: the
result says so, with how many comparisons the target would need, rather than extrapolating.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facetrail.errors import InvalidInputError, ModelError
from facetrail.evaluation.descriptors import describe_images
from facetrail.evaluation.protocols import IMAGE_SUFFIXES, list_identities, read_group_labels
from facetrail.vision.calibration import (
    Calibration,
    fit_calibration,
    fit_calibration_scores,
    fit_score_calibration,
    normalised_model,
)
from facetrail.vision.normalisation import (
    DEFAULT_TOP_K,
    Method,
    cohort_stats,
    normalise_pairs,
    normalised_comparisons,
)
from facetrail.vision.pipeline import FaceAnalyzer

# How a calibration fitted here names its source: searches tell a force's own calibration from
# the packaged ones by it.
OWN_DATA = "own data"
_YES = {"yes", "y", "true", "1", "same", "match", "genuine"}
_NO = {"no", "n", "false", "0", "different", "non-match", "impostor"}


@dataclass(frozen=True)
class OperatingPoint:
    target_fmr: float
    measurable: bool  # target >= 1 / impostor comparisons
    threshold: float | None
    fnmr: float | None  # genuine comparisons below the threshold
    # Impostor comparisons at or above the threshold: how many the estimate rests on (a
    # handful: a rough estimate; at the bottom of the range, one).
    impostors_above: int | None
    impostors_needed: int  # comparisons needed to measure the target at all


@dataclass
class CalibrationRun:
    root: str
    labels: str | None
    protocol: str  # "identities" or "pairs"
    model: str
    source: str
    images: int
    people: int | None  # identities (None for a pairs list)
    no_face_images: int  # described from the centre of the image (no face detected)
    genuine_comparisons: int
    impostor_comparisons: int
    min_fmr: float  # 1 / impostor comparisons: the lowest FMR the data can show
    target: OperatingPoint
    operating_points: list[OperatingPoint]
    required_fmr: float  # the lowest FMR the service asks a calibration for
    usable: bool  # measures every FMR the service asks for, so it can be saved
    notes: list[str] = field(default_factory=list)
    previous: dict | None = None  # the calibration in use before, summarised
    saved: str | None = None  # the file written (None: a dry run, or not usable)
    dry_run: bool = False
    # The calibration of normalised scores fitted on the same comparisons against the data
    # directory's cohort (None: no cohort, or normalisation off): model, method, cohort
    # faces, top_k, threshold at the target FMR, and the file once saved.
    normalised: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def operating_point(calibration: Calibration, target: float) -> OperatingPoint:
    needed = math.ceil(1 / target - 1e-9)
    if target < calibration.min_fmr:
        return OperatingPoint(target, False, None, None, None, needed)
    t = calibration.threshold_for(target)
    above = max(1, round(target * calibration.impostor_comparisons))
    fnmr = round(calibration.fnmr_at(t), 4)
    return OperatingPoint(target, True, round(t, 4), fnmr, above, needed)


def _truth(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise InvalidInputError(f"{where}: {value!r} is not yes/no (same person or not)")


def read_pairs_csv(path: Path) -> list[tuple[str, str, bool]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path.name} is not a text CSV") from exc
    pairs = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 3:
            raise InvalidInputError(f"{path.name} line {n}: expected a,b,same")
        pairs.append((row[0].strip(), row[1].strip(), _truth(row[2], f"{path.name} line {n}")))
    if not pairs:
        raise InvalidInputError(f"{path.name} lists no pairs")
    return pairs


def _columns(path: Path) -> int:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}") from exc
    return len(header)


def _identities(root: Path, labels: Path | None, limit: int | None) -> tuple[list[str], list[str]]:
    """Image names and their identities."""
    people = list_identities(root, limit)
    names = [n for images in people.values() for n in images]
    if labels is None:
        return names, [n.split("/")[0] for n in names]
    by = read_group_labels(labels)
    labelled = [(n, by.group_of(n)) for n in names]
    # Images straight in DIR (no person folder) can be labelled too.
    loose = sorted(
        p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    labelled += [(n, by.group_of(n)) for n in loose]
    kept = [(n, who) for n, who in labelled if who is not None]
    if not kept:
        raise InvalidInputError(f"{labels.name} labels none of the images in {root}")
    return [n for n, _ in kept], [str(who) for _, who in kept]


def run_calibration(
    root: Path,
    analyzer: FaceAnalyzer,
    *,
    labels: Path | None,
    target_fmr: float,
    required_fmr: float,
    limit: int | None = None,
    cache: Path | None = None,
    cohort: np.ndarray | None = None,
    method: Method = "as-norm+cosine",
    top_k: int = DEFAULT_TOP_K,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> tuple[CalibrationRun, Calibration | None, Calibration | None]:
    """Describe the labelled images and fit a calibration; (the run's summary, the table or
    None where the data hold no impostor or no genuine comparison, and with a `cohort` the
    table of the same comparisons' `method` scores, normalised as a search normalises them)."""
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder")
    if not 0 < target_fmr < 1:
        raise InvalidInputError(f"target FMR {target_fmr} is not between 0 and 1")
    pairs_list = labels is not None and _columns(labels) >= 3
    normed_scores: tuple[np.ndarray, np.ndarray] | None = None  # (impostor, genuine)
    source = f"{OWN_DATA} {root.name}" + (f" ({labels.name})" if labels else "")
    if pairs_list:
        assert labels is not None
        pairs = read_pairs_csv(labels)
        names = sorted({p for a, b, _ in pairs for p in (a, b)})
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise InvalidInputError(
                f"{len(missing)} image(s) of {labels.name} are not in {root}, e.g. {missing[0]}"
            )
        vectors, counts = describe_images(root, names, analyzer, cache, progress, on_total)
        index = {n: i for i, n in enumerate(names)}
        a = np.array([index[p[0]] for p in pairs])
        b = np.array([index[p[1]] for p in pairs])
        same = np.array([p[2] for p in pairs])
        scores = np.einsum("ij,ij->i", vectors[a], vectors[b]).astype(np.float64)
        people = None
        try:
            calibration = fit_calibration_scores(
                scores[same], scores[~same], model=analyzer.model_id, source=source
            )
        except ModelError:
            calibration = None
        genuine, impostor = int(same.sum()), int((~same).sum())
        if calibration is not None and cohort is not None:
            stats = cohort_stats(vectors, cohort, top_k)
            normed = normalise_pairs(scores, method, stats.take(a), stats.take(b))
            normed_scores = (normed[~same], normed[same])
    else:
        names, who = _identities(root, labels, limit)
        vectors, counts = describe_images(root, names, analyzer, cache, progress, on_total)
        identity = np.array(who)
        people = len(set(who))
        try:
            calibration = fit_calibration(vectors, identity, model=analyzer.model_id, source=source)
        except ModelError:
            calibration = None
        if calibration is not None and cohort is not None:
            normed_scores = normalised_comparisons(vectors, identity, cohort, method, top_k)
        _, sizes = np.unique(identity, return_counts=True)
        genuine = int((sizes * (sizes - 1) // 2).sum())
        impostor = len(names) * (len(names) - 1) // 2 - genuine
    normalised = None
    if normed_scores is not None:
        normalised = fit_score_calibration(
            *normed_scores, model=normalised_model(analyzer.model_id, method), source=source
        )
    notes: list[str] = []
    if counts.get("no_face"):
        notes.append(
            f"{counts['no_face']} image(s) had no face near their centre: their centre region "
            "was described (LFW framing); crop such images to the face, or leave them out"
        )
    # What the run was, whether or not it gave a calibration.
    about: dict[str, Any] = {
        "root": str(root),
        "labels": str(labels) if labels else None,
        "protocol": "pairs" if pairs_list else "identities",
        "model": analyzer.model_id,
        "source": source,
        "images": len(names),
        "people": people,
        "no_face_images": int(counts.get("no_face", 0)),
        "required_fmr": required_fmr,
        "notes": notes,
    }
    if calibration is None:
        notes.append(
            "no calibration: the data need both genuine comparisons (two images of one "
            "person) and impostor comparisons (images of two different people)"
        )
        needed = math.ceil(1 / target_fmr - 1e-9)
        empty = OperatingPoint(target_fmr, False, None, None, None, needed)
        run = CalibrationRun(
            **about,
            genuine_comparisons=genuine,
            impostor_comparisons=impostor,
            min_fmr=1 / impostor if impostor else 1.0,
            target=empty,
            operating_points=[],
            usable=False,
        )
        return run, None, None
    target = operating_point(calibration, target_fmr)
    points = [operating_point(calibration, f) for f in (1e-2, 1e-3, 1e-4, 1e-5)]
    if not target.measurable:
        notes.append(
            f"the target FMR {target_fmr:g} is below 1 / {calibration.impostor_comparisons} "
            f"impostor comparisons ({calibration.min_fmr:.2g}): it cannot be measured from these "
            f"data, which would need at least {target.impostors_needed} impostor comparisons"
        )
    usable = calibration.min_fmr <= required_fmr
    if not usable:
        notes.append(
            f"searches and video tracking ask a calibration for an FMR of {required_fmr:g}, "
            f"which needs at least {math.ceil(1 / required_fmr - 1e-9)} impostor comparisons: "
            "this one cannot be saved (more people or more images, or use it as a dry run)"
        )
    run = CalibrationRun(
        **about,
        genuine_comparisons=calibration.genuine_comparisons,
        impostor_comparisons=calibration.impostor_comparisons,
        min_fmr=calibration.min_fmr,
        target=target,
        operating_points=points,
        usable=usable,
    )
    if normalised is not None:
        assert cohort is not None
        at_target = operating_point(normalised, target_fmr)
        run.normalised = {
            "model": normalised.model,
            "method": method,
            "cohort_faces": len(cohort),
            "top_k": top_k,
            "threshold": at_target.threshold,
            "fnmr": at_target.fnmr,
            "saved": None,
        }
    return run, calibration, normalised
