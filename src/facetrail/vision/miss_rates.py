"""How often a search misses someone who is in the gallery, by the probe face's quality.

What a low-quality probe does to a search was measured on LFW probes degraded on purpose
(`bench/quality_effect.py`: made smaller, blurred, JPEG-compressed; bench/RESULTS.md):

- the false positive rate at a given threshold did not rise for poor probes (0.5-1.4% at the
  threshold for 1%, by quality band, with no trend), so the estimated false match rate shown
  beside a candidate needs no adjustment for quality;
- misses did rise: at the shipped default threshold, faces of quality under 0.3 missed their
  mate (not first, or under the threshold) about twice as often as faces over 0.6.

So a poor probe's uncertainty is in what a search does not show: `miss_rate` says, for a face
of this quality, what share of searches for someone who *is* in the gallery measured there
failed to put them first above this threshold. An empty candidate list for such a face is
weak evidence that the person is not in the gallery. The table is the packaged model's, at
the packaged calibrations' thresholds for FMR 1e-2, 1e-3 and 1e-4; for any other model,
threshold or calibration there is no measured rate and `rate` returns None.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGED = Path(__file__).with_suffix(".json")  # miss_rates.json, beside this module


@dataclass(frozen=True)
class MissRates:
    model: str
    source: str
    edges: tuple[float, ...]  # quality band edges, from 0 to 1
    # method ("cosine", "as-norm", "as-norm+cosine") -> (threshold, miss rate per band)
    by_method: dict[str, tuple[tuple[float, tuple[float | None, ...]], ...]]

    def rate(self, model: str, method: str, threshold: float, quality: float) -> float | None:
        """The measured miss rate for a face of `quality` searched with `method` scores at
        `threshold`, or None where nothing was measured for them."""
        if model != self.model:
            return None
        band = min(max(bisect.bisect_right(self.edges, quality) - 1, 0), len(self.edges) - 2)
        for measured, rates in self.by_method.get(method, ()):
            # Thresholds come back rounded from stored searches: equal to 4 decimals.
            if abs(measured - threshold) <= 1e-4 * max(1.0, abs(measured)):
                rate = rates[band]
                return None if rate is None else round(rate, 3)
        return None


@lru_cache(maxsize=1)
def packaged() -> MissRates | None:
    """The table shipped with facetrail (None if it is missing or unreadable)."""
    try:
        data = json.loads(PACKAGED.read_text())
        edges = tuple(float(e) for e in data["bands"])
        by_method = {}
        for method, points in data["rates"].items():
            rows = []
            for point in points.values():
                per_band: list[float | None] = [None] * (len(edges) - 1)
                for band in point["bands"]:
                    per_band[bisect.bisect_right(edges, band["from"]) - 1] = float(band["rate"])
                rows.append((float(point["threshold"]), tuple(per_band)))
            by_method[method] = tuple(rows)
        return MissRates(str(data["model"]), str(data["source"]), edges, by_method)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def miss_rate(model: str, method: str, threshold: float, quality: float) -> float | None:
    table = packaged()
    return None if table is None else table.rate(model, method, threshold, quality)
