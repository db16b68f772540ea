"""The LFW View-2 protocol: 10 folds of 300 genuine and 300 impostor pairs (`pairs.txt`).

Only folds whose images are all present are scored (the shared development copy holds folds
1-5). Each fold's accuracy uses the threshold that is best on the other scored folds, as the
protocol asks. LFW images are the original framing with the face in the centre, so when an
image holds several faces the one nearest the centre is the subject, and when the detector
finds none the protocol-defined centre box is used (and counted), rather than dropping a pair.

The same descriptors also give a calibration: every pair of images of different people in the
scored folds is an impostor comparison (millions of them), which is what the false match rate
table needs at 1e-4 and below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from facetrail.errors import InvalidInputError
from facetrail.evaluation.verification import cross_validated_accuracy, tar_at_far
from facetrail.media import load_image
from facetrail.vision.calibration import Calibration, fit_calibration
from facetrail.vision.compare import normalise
from facetrail.vision.faces import Faces
from facetrail.vision.pipeline import FaceAnalyzer

# LFW crops are a Viola-Jones box enlarged 2.2 times, so the face spans about 1/2.2 of the image.
_LFW_FACE_SHARE = 1 / 2.2
# A detected face whose centre is further than this share of the image from the centre is not
# the subject (measured on folds 1-5: bench/RESULTS.md).
_CENTRE_TOLERANCE = 1 / 6


@dataclass(frozen=True)
class Pair:
    fold: int
    a: str  # image path relative to the LFW root
    b: str
    same: bool


def _image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_pairs(path: Path) -> list[Pair]:
    """Parse `pairs.txt`: a header 'folds<TAB>n', then per fold n genuine and n impostor lines."""
    try:
        lines = path.read_text().split("\n")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    header = lines[0].split()
    try:
        n_folds, per_side = int(header[0]), int(header[1])
    except (IndexError, ValueError) as exc:
        raise InvalidInputError(
            f"{path.name} does not start with '<folds> <pairs per fold>'"
        ) from exc
    rows = [line.split() for line in lines[1:] if line.strip()]
    if len(rows) != n_folds * 2 * per_side:
        raise InvalidInputError(
            f"{path.name} has {len(rows)} pairs, expected {n_folds * 2 * per_side}"
        )
    pairs = []
    for i, row in enumerate(rows):
        fold = i // (2 * per_side) + 1
        if len(row) == 3:
            pairs.append(Pair(fold, _image(row[0], row[1]), _image(row[0], row[2]), True))
        elif len(row) == 4:
            pairs.append(Pair(fold, _image(row[0], row[1]), _image(row[2], row[3]), False))
        else:
            raise InvalidInputError(f"{path.name} line {i + 2} is not a pair")
    return pairs


@dataclass
class LfwReport:
    root: str
    model: str
    folds: list[dict]
    mean_accuracy: float
    std_accuracy: float
    tar_at_far: dict[str, float]
    pairs: int
    images: int
    no_face_images: int
    multi_face_images: int
    folds_skipped: list[int] = field(default_factory=list)
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def centre_box(height: int, width: int) -> np.ndarray:
    side = _LFW_FACE_SHARE * min(height, width)
    cx, cy = width / 2, height / 2
    return np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]], np.float32)


class Described(NamedTuple):
    vectors: np.ndarray  # (n, dim) unit descriptors, in the order of the names
    quality: np.ndarray  # (n,) the quality score of each described face
    no_face: int  # images described from their centre box (no face near the centre)
    multi: int  # images with more than one face found


def describe_lfw_images(
    root: Path,
    names: list[str],
    analyzer: FaceAnalyzer,
    progress: Callable[[int], None] | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Described:
    """Describe the LFW subject of each of `names`: the face nearest the centre, else the
    centre box. `transform` changes the decoded pixels first (bench/quality_effect.py uses it
    to degrade probes on purpose)."""
    counts = {"no_face": 0, "multi": 0}
    lock = threading.Lock()  # `select` runs in the pipeline's worker threads

    def prepare(name: str) -> tuple[np.ndarray, object]:
        pixels = load_image(root / name).pixels
        return (transform(pixels) if transform else pixels), None

    def select(faces: Faces, pixels: np.ndarray) -> Faces:
        height, width = pixels.shape[:2]
        if len(faces):
            centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
            offset = np.linalg.norm(centres - np.array([width / 2, height / 2]), axis=1)
            nearest = int(np.argmin(offset))
            # A face well off-centre is someone else in the picture, not the LFW subject.
            if offset[nearest] <= _CENTRE_TOLERANCE * min(height, width):
                with lock:
                    counts["multi"] += len(faces) > 1
                return faces.select([nearest])
        with lock:
            counts["no_face"] += 1
        return analyzer.locate(pixels, "primary", boxes=centre_box(height, width))

    vectors = np.zeros((len(names), analyzer.descriptor.dim), np.float32)
    quality = np.zeros(len(names), np.float32)
    for i, result in enumerate(analyzer.stream(names, prepare, mode="primary", select=select)):
        if result.error is not None:
            raise result.error
        faces = result.faces
        assert faces is not None and faces.descriptors is not None
        vectors[i], quality[i] = faces.descriptors[0], faces.quality[0]
        if progress:
            progress(1)
    return Described(normalise(vectors), quality, counts["no_face"], counts["multi"])


def evaluate_lfw(
    root: Path,
    analyzer: FaceAnalyzer,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> tuple[LfwReport, Calibration]:
    pairs_file = root / "pairs.txt"
    if not pairs_file.is_file():
        raise InvalidInputError(f"{root} has no pairs.txt: not an LFW folder")
    pairs = read_pairs(pairs_file)
    by_fold: dict[int, list[Pair]] = {}
    for p in pairs:
        by_fold.setdefault(p.fold, []).append(p)
    present = {
        f
        for f, ps in by_fold.items()
        if all((root / p.a).is_file() and (root / p.b).is_file() for p in ps)
    }
    if len(present) < 2:
        raise InvalidInputError(f"{root}: fewer than two complete folds of pairs.txt are present")
    pairs = [p for p in pairs if p.fold in present]
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    if on_total:
        on_total(len(names))
    vectors, _, no_face, multi = describe_lfw_images(root, names, analyzer, progress)
    index = {n: i for i, n in enumerate(names)}
    a = np.array([index[p.a] for p in pairs])
    b = np.array([index[p.b] for p in pairs])
    scores = (vectors[a] * vectors[b]).sum(axis=1)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    results = cross_validated_accuracy(scores, same, folds)
    accuracies = np.array([r.accuracy for r in results])
    tar = {}
    for far in (1e-2, 1e-3):
        tar[f"{far:g}"] = tar_at_far(scores, same, far)[0]

    people = np.array([n.split("/")[0] for n in names])
    calibration = fit_calibration(
        vectors, people, model=analyzer.model_id, source=f"LFW {root.name}"
    )
    report = LfwReport(
        root=str(root),
        model=analyzer.model_id,
        folds=[asdict(r) for r in results],
        mean_accuracy=float(accuracies.mean()),
        std_accuracy=float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        tar_at_far=tar,
        pairs=len(pairs),
        images=len(names),
        no_face_images=no_face,
        multi_face_images=multi,
        folds_skipped=sorted(set(by_fold) - present),
        calibration=calibration.summary(),
    )
    return report, calibration
