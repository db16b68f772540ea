"""Probe quality and what a score means: LFW probes degraded on purpose (issue 10).

LFW's faces are press photographs (quality 0.44-0.67 for the middle 80%), so on LFW alone the
effect of a poor probe on the false positive rate cannot be seen. This degrades the probes of
`eval identify`'s open-set protocol the way CCTV stills are poor, keeps the gallery as it is
(custody images are good), and measures what happens at the thresholds the service would use.

Protocol: ../shared/data/lfw, gallery the first image of each person with two or more images;
mated probes their other images; non-mated probes the people with one image, in 2 cross-cohort
folds (each fold's cohort: the undegraded images of the other half of the single-image people,
as `eval identify --compare`). Degradations of the probes (each alone):

- `none`: as they are;
- `down2`, `down3`: made 1/2 and 1/3 the size (bicubic), faces about 30 and 20 px wide;
- `blur2`: Gaussian blur, radius 2 px;
- `jpeg10`: JPEG at quality 10.

For plain cosine scores and for AS-norm + cosine (the shipped default), the thresholds for FPIR
1% and 0.1% are taken on the undegraded probes; each degradation then reports the FPIR and
FNIR that those thresholds give, and the probes' median quality; finally, all probes pooled,
the FPIR at the 1% threshold by probe quality band. Descriptors are cached in `--out`
(one file a degradation), so a second run only re-scores.

    python bench/quality_effect.py --out bench/out/quality      # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
LFW = REPO.parent / "shared" / "data" / "lfw"
METHODS = ("none", "as-norm", "as-norm+cosine")
BANDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.01)


def _resize(factor: int) -> Callable[[np.ndarray], np.ndarray]:
    def down(pixels: np.ndarray) -> np.ndarray:
        h, w = pixels.shape[:2]
        small = Image.fromarray(pixels).resize(
            (max(1, w // factor), max(1, h // factor)), Image.Resampling.BICUBIC
        )
        return np.asarray(small)

    return down


def _blur(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)))


def _jpeg(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=10)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


DEGRADATIONS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "none": None,
    "down2": _resize(2),
    "down3": _resize(3),
    "blur2": _blur,
    "jpeg10": _jpeg,
}


def _described(out: Path, kind: str, names: list[str], analyzer) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    from facetrail.evaluation.lfw import describe_lfw_images

    path = out / f"probes_{kind}.npz"
    if path.is_file():
        with np.load(path) as data:
            if data["names"].tolist() == names:
                return data["vectors"], data["quality"]
    got = describe_lfw_images(LFW, names, analyzer, transform=DEGRADATIONS[kind])
    np.savez(path, names=np.array(names), vectors=got.vectors, quality=got.quality)
    print(f"  {kind}: described {len(names)} probes, {got.no_face} from the centre box", flush=True)
    return got.vectors, got.quality


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="write the miss-rate table")
    args = parser.parse_args()
    if not LFW.is_dir():
        print(f"{LFW} is missing")
        return 2
    from facetrail.config import Settings
    from facetrail.evaluation.identification import (
        identification_metrics,
        outcomes_from_scores,
    )
    from facetrail.evaluation.protocols import cohort_folds, list_identities, open_set_split
    from facetrail.evaluation.techniques import _pool
    from facetrail.vision.normalisation import CohortScorer
    from facetrail.vision.pipeline import FaceAnalyzer

    args.out.mkdir(parents=True, exist_ok=True)
    analyzer = FaceAnalyzer(Settings(data=args.out / "data"))
    split = open_set_split(list_identities(LFW))
    DEGRADATIONS["gallery"] = None  # the gallery is described as it is
    gallery, _ = _described(args.out, "gallery", split.gallery, analyzer)
    g_labels = np.asarray(split.gallery_labels)
    p_labels = np.asarray(split.probe_labels)
    folds = cohort_folds(split, 2)
    mated = np.arange(split.mated)
    originals, _ = _described(args.out, "none", split.probes, analyzer)

    def outcomes(probes: np.ndarray, method: str):  # type: ignore[no-untyped-def]
        parts = []
        for cohort_i, non_mated_i in folds:
            scorer = CohortScorer(originals[cohort_i], method, 200, "max")  # type: ignore[arg-type]
            rows = np.concatenate([mated, np.asarray(non_mated_i, np.int64)])
            scores, subjects = scorer(gallery, g_labels, probes[rows])
            parts.append((outcomes_from_scores(scores, subjects, p_labels[rows]), rows))
        return _pool([p for p, _ in parts]), np.concatenate([r for _, r in parts])

    result: dict = {"probes": len(split.probes), "mated": split.mated, "rows": []}
    thresholds = {}
    for method in METHODS:
        o, _ = outcomes(originals, method)
        m = identification_metrics(o, len(np.unique(g_labels)))
        thresholds[method] = {p.target_fpir: p.threshold for p in m.operating_points}
    # Pooled over every degradation, per method: each non-mated probe's quality and top
    # score; each mated probe's quality, whether its mate ranked first, and the mate's score.
    non_pool: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    mated_pool: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    print(
        f"{'probes':8} {'quality':>8} "
        + " ".join(f"{m + ' FPIR/FNIR @' + str(t):>34}" for m in METHODS for t in (1e-2, 1e-3))
    )
    for kind in ("none", "down2", "down3", "blur2", "jpeg10"):
        vectors, quality = _described(args.out, kind, split.probes, analyzer)
        row: dict = {"degradation": kind, "median_quality": float(np.median(quality))}
        cells = []
        for method in METHODS:
            o, rows = outcomes(vectors, method)
            non = ~o.mated
            for target, t in thresholds[method].items():
                fpir = float((o.top_score[non] >= t).mean())
                hit = (o.rank[o.mated] == 1) & (o.mate_score[o.mated] >= t)
                fnir = 1.0 - float(hit.mean())
                row[f"{method}@{target:g}"] = {"threshold": t, "fpir": fpir, "fnir": fnir}
                cells.append(f"{100 * fpir:15.2f}% / {100 * fnir:5.1f}%")
            q = quality[rows]
            non_pool[method].append(np.stack([q[non], o.top_score[non]]))
            first = (o.rank[o.mated] == 1).astype(float)
            mated_pool[method].append(np.stack([q[o.mated], first, o.mate_score[o.mated]]))
        result["rows"].append(row)
        print(f"{kind:8} {row['median_quality']:8.3f} " + " ".join(f"{c:>34}" for c in cells))

    def bands_of(q: np.ndarray, values: np.ndarray) -> list[dict]:
        out = []
        for lo, hi in itertools.pairwise(BANDS):
            inside = (q >= lo) & (q < hi)
            if inside.sum():
                out.append({"from": lo, "to": min(hi, 1.0), "probes": int(inside.sum()),
                            "rate": float(values[inside].mean())})  # fmt: skip
        return out

    def show(bands: list[dict]) -> str:
        return ", ".join(
            f"[{b['from']:.1f},{b['to']:.1f}) {100 * b['rate']:.2f}% of {b['probes']}"
            for b in bands
        )

    print("\nnon-mated probes, all degradations pooled: FPIR at the FPIR-1% threshold by quality")
    result["fpir_by_quality"] = {}
    for method in METHODS:
        q, top = np.concatenate(non_pool[method], axis=1)
        bands = bands_of(q, top >= thresholds[method][1e-2])
        result["fpir_by_quality"][method] = bands
        print(f"  {method}: {show(bands)}")

    # The miss rate a search shows for a face of some quality: at the threshold the service
    # uses for a target FMR (the packaged calibration's, cosine or normalised), the share of
    # mated probes of that quality whose mate is not first and above it.
    from facetrail.vision.calibration import find_calibration, normalised_model

    model = analyzer.model_id
    table: dict = {
        "model": model,
        "source": "LFW folds 1-5, probes degraded on purpose (bench/quality_effect.py)",
        "bands": [*BANDS[:-1], 1.0],  # the last band takes quality 1.0 in
        "rates": {},
    }
    print("\nmated probes, all degradations pooled: FNIR at the service's thresholds by quality")
    for method in METHODS:
        name = "cosine" if method == "none" else method
        calibration = find_calibration(
            model if method == "none" else normalised_model(model, method)
        )
        if calibration is None:
            continue
        q, first, mate = np.concatenate(mated_pool[method], axis=1)
        table["rates"][name] = {}
        for fmr in (1e-2, 1e-3, 1e-4):
            t = calibration.threshold_for(fmr)
            bands = bands_of(q, 1.0 - first * (mate >= t))
            table["rates"][name][f"{fmr:g}"] = {"threshold": t, "bands": bands}
            print(f"  {name} at FMR {fmr:g} (threshold {t:.4f}): {show(bands)}")
    result["miss_rates"] = table
    if args.table:
        args.table.write_text(json.dumps(table, indent=1) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
