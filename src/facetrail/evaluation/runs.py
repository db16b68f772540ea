"""`eval identify` and `eval bias` end to end: folder -> protocol -> descriptors -> metrics ->
JSON and charts in an output folder.

Each step is its own function elsewhere (protocols, descriptors, identification, bias,
charts); this module only strings them together and writes the files, so a study of another
scorer (issue 10: score normalisation, template fusion) calls `evaluate_open_set` on the same
cached descriptors instead of running this again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from facetrail.errors import InvalidInputError
from facetrail.evaluation import charts
from facetrail.evaluation.bias import bias_metrics
from facetrail.evaluation.descriptors import describe_images
from facetrail.evaluation.identification import (
    Scorer,
    best_template_cosine,
    evaluate_open_set,
)
from facetrail.evaluation.protocols import (
    bias_pairs,
    list_identities,
    open_set_split,
    read_group_labels,
)
from facetrail.files import write_atomic
from facetrail.vision.calibration import Calibration
from facetrail.vision.pipeline import FaceAnalyzer

Progress = Callable[[int], None]


@dataclass
class IdentifyReport:
    root: str
    model: str
    scorer: str
    limit: int | None
    people: int
    images: int
    gallery: int  # one image per enrolled person
    mated_probes: int
    non_mated_probes: int
    fnir_at_fpir: list[dict]
    rank_hits: dict[str, float | None]
    cmc: dict
    det: dict
    descriptors: dict
    files: dict[str, str] = field(default_factory=dict)
    # `--compare` (issue 10): every score technique, cross-cohort (evaluation.techniques).
    techniques: list[dict] = field(default_factory=list)
    cohort_folds: int | None = None
    # `--calibrate`: the calibrations of normalised scores fitted here (their summaries).
    calibrations: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BiasReport:
    root: str
    labels: str
    attribute: str
    model: str
    threshold: float
    threshold_source: str
    limit: int | None
    people: int
    images: int
    unlabelled_images: int
    mixed_people: list[str]
    impostors_per_group: int
    seed: int
    groups: list[dict]
    fmr_ratio: dict
    fnmr_ratio: dict
    target: dict
    bootstrap: dict
    descriptors: dict
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _write_json(path: Path, body: dict) -> None:
    write_atomic(path, (json.dumps(body, indent=1) + "\n").encode())


def run_identify(
    root: Path,
    analyzer: FaceAnalyzer,
    out: Path,
    *,
    limit: int | None = None,
    scorer: Scorer = best_template_cosine,
    compare: bool = False,
    folds: int = 2,
    calibrate: Callable[[Calibration], None] | None = None,
    progress: Progress | None = None,
    on_total: Progress | None = None,
) -> IdentifyReport:
    """`calibrate`: also fit the calibrations of normalised scores (`techniques.
    normalised_calibration`) and hand each to this callback (which saves it)."""
    people = list_identities(root, limit)
    split = open_set_split(people)
    if not split.gallery:
        raise InvalidInputError(f"{root}: nobody has two or more images, so no gallery")
    names = split.gallery + split.probes
    vectors, counts = describe_images(root, names, analyzer, out, progress, on_total)
    gallery, probes = vectors[: len(split.gallery)], vectors[len(split.gallery) :]
    metrics = evaluate_open_set(gallery, split.gallery_labels, probes, split.probe_labels, scorer)
    body = metrics.to_dict()
    report = IdentifyReport(
        root=str(root),
        model=analyzer.model_id,
        scorer=getattr(scorer, "__name__", type(scorer).__name__),
        limit=limit,
        people=len(people),
        images=len(names),
        gallery=len(split.gallery),
        mated_probes=metrics.mated_probes,
        non_mated_probes=metrics.non_mated_probes,
        fnir_at_fpir=body["operating_points"],
        rank_hits=metrics.rank_hits,
        cmc=body["cmc"],
        det=body["det"],
        descriptors=counts,
    )
    files = {
        "json": out / "identify.json",
        "cmc": out / "identify_cmc.png",
        "det": out / "identify_det.png",
    }
    report.files = {k: str(v) for k, v in files.items()}
    by_name = dict(zip(names, vectors, strict=True))
    if calibrate is not None:
        from facetrail.evaluation.techniques import normalised_calibration

        for method in ("as-norm", "as-norm+cosine"):
            calibration = normalised_calibration(
                people,
                by_name,
                model=analyzer.model_id,
                source=f"{root.name}: pairs of people with 2+ images, cohort: people with one",
                method=method,  # type: ignore[arg-type]
            )
            calibrate(calibration)
            report.calibrations.append(calibration.summary())
    if compare:
        from facetrail.evaluation.techniques import compare_techniques, table

        results = compare_techniques(people, by_name, folds=folds)
        report.techniques = [r.to_dict() for r in results]
        report.cohort_folds = folds
        files["techniques"] = out / "identify_techniques.md"
        report.files["techniques"] = str(files["techniques"])
        write_atomic(files["techniques"], (table(results) + "\n").encode())
    marks = [
        (p["fpir"], p["fnir"], f"FPIR {p['target_fpir']:g}")
        for p in report.fnir_at_fpir
        if p["fnir"] is not None
    ]
    write_atomic(files["cmc"], charts.cmc_chart(report.cmc))
    write_atomic(
        files["det"],
        charts.det_chart(
            {"rank 1": report.det},
            xlabel="FPIR (non-mated probes with a candidate)",
            ylabel="FNIR (mate not the rank-1 candidate)",
            title=f"Open-set identification, {report.gallery} enrolled",
            points=marks,
        ),
    )
    _write_json(files["json"], report.to_dict())
    return report


def pair_scores(
    vectors: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """Cosine similarity of unit descriptors for each pair (chunked: no huge gathers)."""
    out = np.empty(len(a), np.float64)
    for start in range(0, len(a), chunk):
        sl = slice(start, start + chunk)
        out[sl] = np.einsum("ij,ij->i", vectors[a[sl]], vectors[b[sl]])
    return out


def run_bias(
    root: Path,
    labels_csv: Path,
    analyzer: FaceAnalyzer,
    out: Path,
    *,
    threshold: float,
    threshold_source: str,
    target_fmr: float,
    limit: int | None = None,
    impostors_per_group: int = 200_000,
    replicates: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
    on_total: Progress | None = None,
) -> BiasReport:
    people = list_identities(root, limit)
    labels = read_group_labels(labels_csv)
    pairs = bias_pairs(people, labels, impostors_per_group=impostors_per_group, seed=seed)
    if not pairs.images:
        raise InvalidInputError(f"{labels_csv.name} labels none of the images in {root}")
    vectors, counts = describe_images(root, pairs.images, analyzer, out, progress, on_total)
    scores = pair_scores(vectors, pairs.a, pairs.b)
    id_a, id_b = pairs.identity[pairs.a], pairs.identity[pairs.b]
    person_group = np.full(len(pairs.people), -1)
    image_group = np.full(len(pairs.images), -1)
    for i, name in enumerate(pairs.images):
        image_group[i] = pairs.groups.index(labels.group_of(name))  # type: ignore[arg-type]
    person_group[pairs.identity] = image_group
    n_groups = len(pairs.groups)
    metrics = bias_metrics(
        scores,
        pairs.genuine,
        pairs.group,
        id_a,
        id_b,
        pairs.groups,
        threshold=threshold,
        target_fmr=target_fmr,
        people=np.bincount(person_group[person_group >= 0], minlength=n_groups).tolist(),
        images=np.bincount(image_group[image_group >= 0], minlength=n_groups).tolist(),
        replicates=replicates,
        seed=seed,
    )
    body = metrics.to_dict()
    report = BiasReport(
        root=str(root),
        labels=str(labels_csv),
        attribute=labels.attribute,
        model=analyzer.model_id,
        threshold=metrics.threshold,
        threshold_source=threshold_source,
        limit=limit,
        people=len(pairs.people),
        images=len(pairs.images),
        unlabelled_images=pairs.unlabelled_images,
        mixed_people=pairs.mixed_people,
        impostors_per_group=impostors_per_group,
        seed=seed,
        groups=body["groups"],
        fmr_ratio=body["fmr_ratio"],
        fnmr_ratio=body["fnmr_ratio"],
        target=body["target"],
        bootstrap=body["bootstrap"],
        descriptors=counts,
    )
    files = {"json": out / "bias.json", "det": out / "bias_det.png"}
    report.files = {k: str(v) for k, v in files.items()}
    write_atomic(files["det"], bias_det_chart(report.to_dict()))
    _write_json(files["json"], report.to_dict())
    return report


def bias_det_chart(report: dict) -> bytes:
    """Every group's DET curve on one chart, each with its rates at the operating threshold."""
    curves = {g["group"]: g["det"] for g in report["groups"] if g["det"]["x"]}
    marks = [
        (g["fmr"], g["fnmr"], g["group"])
        for g in report["groups"]
        if g["fmr"] is not None and g["fnmr"] is not None
    ]
    return charts.det_chart(
        curves,
        xlabel="FMR (impostor pairs at or above the threshold)",
        ylabel="FNMR (genuine pairs below the threshold)",
        title=f"DET by {report['attribute']} (dots: threshold {report['threshold']:.4f})",
        points=marks,
    )
