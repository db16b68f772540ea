"""What a score means: the estimated false match rate (FMR) at that score.

A calibration is a table measured on labelled faces: for a grid of FMR levels, the score
above which that share of impostor comparisons (two different people) falls, and the share of
genuine comparisons (the same person) that falls below it (FNMR). `fmr(score)` interpolates the
table in log space; thresholds come from a target FMR, not from a magic number.

The table for the default model ships with the package (`calibration/*.json`, measured on LFW
folds 1-5 by `facetrail eval lfw --calibrate`), and a data directory may hold a refreshed one.
Beyond the measured range the estimate is bounded, not extrapolated: a score above every
measured impostor is reported as "below 1 / number of impostor comparisons".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facetrail.errors import ModelError
from facetrail.files import write_atomic

PACKAGED = Path(__file__).parent / "calibration"
# FMR grid: coarse where scores mean "different people" anyway, fine from 0.3 down to 1e-8.
_LEVELS = np.concatenate(
    [[0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 10.0 ** -np.arange(0.5, 8.01, 0.125)]
)


@dataclass(frozen=True)
class Calibration:
    model: str
    source: str
    impostor_comparisons: int
    genuine_comparisons: int
    scores: list[float]  # ascending
    fmrs: list[float]  # descending, same length
    fnmrs: list[float]

    @property
    def min_fmr(self) -> float:
        return 1.0 / max(1, self.impostor_comparisons)

    def fmr(self, scores: np.ndarray | float) -> np.ndarray:
        """Estimated FMR at each score, in [min_fmr, 1]."""
        s = np.asarray(scores, np.float64)
        log_fmr = np.interp(
            s, self.scores, np.log10(self.fmrs), left=0.0, right=np.log10(self.min_fmr)
        )
        return np.clip(10.0**log_fmr, self.min_fmr, 1.0)

    def threshold_for(self, target_fmr: float) -> float:
        """The lowest score whose estimated FMR is at most `target_fmr`."""
        if target_fmr < self.min_fmr:
            raise ModelError(
                f"target FMR {target_fmr:g} is below what this calibration measured "
                f"({self.min_fmr:.1g}, from {self.impostor_comparisons} impostor comparisons)"
            )
        # fmrs descend as scores ascend: interpolate score against log FMR.
        return float(np.interp(np.log10(target_fmr), np.log10(self.fmrs[::-1]), self.scores[::-1]))

    def fnmr_at(self, threshold: float) -> float:
        return float(np.interp(threshold, self.scores, self.fnmrs))

    def summary(self) -> dict:
        points = {}
        for target in (1e-2, 1e-3, 1e-4, 1e-5):
            if target >= self.min_fmr:
                t = self.threshold_for(target)
                points[f"{target:g}"] = {
                    "threshold": round(t, 4),
                    "fnmr": round(self.fnmr_at(t), 4),
                }
        return {
            "model": self.model,
            "source": self.source,
            "impostor_comparisons": self.impostor_comparisons,
            "genuine_comparisons": self.genuine_comparisons,
            "operating_points": points,
        }

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"calibration file {path.name} cannot be read") from exc


def calibration_file(model_id: str) -> str:
    return model_id.replace(":", "_").replace("+", "_") + ".json"


def find_calibration(model_id: str, override_dir: Path | None = None) -> Calibration | None:
    """The data directory's calibration for this model if any, else the packaged one."""
    for folder in (override_dir, PACKAGED):
        if folder is not None and (folder / calibration_file(model_id)).is_file():
            return Calibration.load(folder / calibration_file(model_id))
    return None


def fit_calibration(
    unit_vectors: np.ndarray, labels: np.ndarray, *, model: str, source: str, chunk: int = 2048
) -> Calibration:
    """Calibrate on every pair of distinct images: impostor if labels differ, else genuine.

    Scores are binned into a fine histogram chunk by chunk, so millions of comparisons need
    neither sorting nor memory for all of them.
    """
    n = len(unit_vectors)
    edges = np.linspace(-1.0, 1.0, 40_001)
    imp_hist = np.zeros(len(edges) - 1, np.int64)
    gen_hist = np.zeros(len(edges) - 1, np.int64)
    codes = np.unique(labels, return_inverse=True)[1]
    for start in range(0, n, chunk):
        block = unit_vectors[start : start + chunk] @ unit_vectors.T
        rows = np.arange(start, min(n, start + chunk))
        upper = np.arange(n)[None, :] > rows[:, None]  # each unordered pair once
        same = codes[rows][:, None] == codes[None, :]
        imp_hist += np.histogram(block[upper & ~same], edges)[0]
        gen_hist += np.histogram(block[upper & same], edges)[0]
    return _from_histograms(imp_hist, gen_hist, edges, model=model, source=source)


def fit_calibration_scores(
    genuine: np.ndarray, impostor: np.ndarray, *, model: str, source: str
) -> Calibration:
    """Calibrate on given comparison scores (a list of labelled pairs rather than every pair
    of a labelled set of images); the same table as `fit_calibration`."""
    edges = np.linspace(-1.0, 1.0, 40_001)
    imp_hist = np.histogram(np.asarray(impostor, np.float64), edges)[0].astype(np.int64)
    gen_hist = np.histogram(np.asarray(genuine, np.float64), edges)[0].astype(np.int64)
    return _from_histograms(imp_hist, gen_hist, edges, model=model, source=source)


def _from_histograms(
    imp_hist: np.ndarray, gen_hist: np.ndarray, edges: np.ndarray, *, model: str, source: str
) -> Calibration:
    impostors, genuines = int(imp_hist.sum()), int(gen_hist.sum())
    if impostors == 0 or genuines == 0:
        raise ModelError("calibration needs both impostor and genuine comparisons")
    # FMR(t): impostors scoring at or above t; FNMR(t): genuines below t.
    imp_above = np.cumsum(imp_hist[::-1])[::-1] / impostors
    gen_below = np.concatenate([[0], np.cumsum(gen_hist)[:-1]]) / genuines
    scores, fmrs, fnmrs = [], [], []
    for level in _LEVELS:
        if level < 1.0 / impostors:
            break
        i = int(np.searchsorted(-imp_above, -level, side="right")) - 1  # last bin with FMR >= level
        i = max(i, 0)
        if imp_above[i] * impostors < 1.5:
            break  # one impostor left above: the last point below covers it
        scores.append(float(edges[i]))
        fmrs.append(float(imp_above[i]))
        fnmrs.append(float(gen_below[i]))
    # The table ends just above the highest impostor: only there does the FMR reach the bound
    # 1 / impostors, so neither fmr() nor threshold_for() claims it for a score an impostor beat.
    top = int(np.flatnonzero(imp_hist)[-1]) + 1
    scores.append(float(edges[top]))
    fmrs.append(1.0 / impostors)
    fnmrs.append(float(gen_hist[:top].sum() / genuines))
    order = np.argsort(scores)
    scores_a = np.array(scores)[order]
    fmrs_a = np.minimum.accumulate(np.array(fmrs)[order])
    fnmrs_a = np.maximum.accumulate(np.array(fnmrs)[order])
    uniq = np.concatenate([[True], np.diff(scores_a) > 0])
    return Calibration(
        model=model,
        source=source,
        impostor_comparisons=impostors,
        genuine_comparisons=genuines,
        scores=scores_a[uniq].tolist(),
        fmrs=fmrs_a[uniq].tolist(),
        fnmrs=fnmrs_a[uniq].tolist(),
    )


def normalised_model(model_id: str, method: str) -> str:
    """The name a calibration of normalised scores is kept under (e.g. `...+flip+as-norm`)."""
    return f"{model_id}+{method}"


def fit_score_calibration(
    impostor: np.ndarray, genuine: np.ndarray, *, model: str, source: str, bins: int = 40_000
) -> Calibration:
    """A calibration from given impostor and genuine scores on any scale (normalised scores
    are not cosines in [-1, 1]): the same FMR grid and table as `fit_calibration`."""
    imp = np.asarray(impostor, np.float64)
    gen = np.asarray(genuine, np.float64)
    if len(imp) == 0 or len(gen) == 0:
        raise ModelError("calibration needs both impostor and genuine comparisons")
    lo = float(min(imp.min(), gen.min()))
    hi = float(max(imp.max(), gen.max()))
    edges = np.linspace(lo, hi + 1e-9 * max(1.0, abs(hi)), bins + 1)
    imp_hist = np.histogram(imp, edges)[0].astype(np.int64)
    gen_hist = np.histogram(gen, edges)[0].astype(np.int64)
    return _from_histograms(imp_hist, gen_hist, edges, model=model, source=source)
