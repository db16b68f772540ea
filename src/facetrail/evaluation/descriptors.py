"""Descriptors of a folder of labelled images, computed once and cached beside the results.

The metrics of `eval identify` and `eval bias` are pure maths on descriptors; describing the
images is the slow part (minutes for LFW on two cores). So the descriptors are kept in
`<out>/descriptors.npz`, keyed by image name, with the model and the detection settings that
made them: a second run (another scorer, another evaluation, the bias run after the
identification run on the same folder) describes only the images it has not seen. A cache made
by another model, other settings or another folder is ignored and replaced, never mixed in.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facetrail.evaluation.lfw import describe_lfw_images
from facetrail.files import write_atomic
from facetrail.vision.pipeline import FaceAnalyzer

CACHE_NAME = "descriptors.npz"


def _key(root: Path, analyzer: FaceAnalyzer) -> dict[str, object]:
    settings = analyzer.settings
    return {
        "root": str(root.resolve()),
        "model": analyzer.model_id,
        # Detection decides which face is described: a change here changes the descriptors.
        "min_face": settings.min_face,
        "max_detect_pixels": settings.max_detect_pixels,
    }


def _load(path: Path, key: dict[str, object]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != key:
                return {}
            return dict(zip(data["names"].tolist(), data["vectors"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}  # a damaged or foreign cache is only a lost speed-up


def describe_images(
    root: Path,
    names: list[str],
    analyzer: FaceAnalyzer,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Unit descriptors of `names` (relative to `root`, in order), and counts of the images
    described now: `described`, `no_face` (centre box used), `multi_face`, `cached`."""
    key = _key(root, analyzer)
    path = cache_dir / CACHE_NAME if cache_dir is not None else None
    known = _load(path, key) if path is not None and path.is_file() else {}
    missing = [n for n in names if n not in known]
    if on_total:
        on_total(len(missing))
    counts = {"described": len(missing), "no_face": 0, "multi_face": 0}
    counts["cached"] = len(names) - len(missing)
    if missing:
        # LFW framing: the subject is the face nearest the centre, else the centre box.
        vectors, _, no_face, multi = describe_lfw_images(root, missing, analyzer, progress)
        counts["no_face"], counts["multi_face"] = no_face, multi
        known.update(zip(missing, vectors, strict=True))
        if path is not None:
            buffer = io.BytesIO()
            np.savez(
                buffer,
                key=np.array(json.dumps(key)),
                names=np.array(list(known)),
                vectors=np.stack(list(known.values())).astype(np.float32),
            )
            write_atomic(path, buffer.getvalue())
    dim = analyzer.descriptor.dim
    if not names:
        return np.zeros((0, dim), np.float32), counts
    return np.stack([known[n] for n in names]).astype(np.float32), counts
