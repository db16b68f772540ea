"""Face image quality: one score in [0, 1] from measurable components.

Each component follows a quality component of ISO/IEC 29794-5 (face image quality) where one
matches, computed from what the pipeline already has (box, 5 landmarks, aligned chip):

- `inter_eye_distance` (ISO 29794-5 "inter-eye distance"): pixels between the eye centres in the
  original image; below about 15 px a face carries little identity, above 40 px more adds little.
- `sharpness` (ISO "sharpness"): variance of a Laplacian over the chip's central region.
- `exposure` (ISO "under-exposure" and "over-exposure" prevention): share of the chip's central
  pixels that are neither crushed to black nor blown to white, times a penalty for a mean
  brightness far from the middle.
- `pose` (ISO "head pose", yaw): how far the nose point sits from the mid-line between the eyes,
  relative to the eye distance; a frontal face scores 1, a profile near 0.

The overall score is the geometric mean, so one very bad component pulls it down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENTS = ("inter_eye_distance", "sharpness", "exposure", "pose")


@dataclass(frozen=True)
class Quality:
    score: np.ndarray  # (n,)
    components: dict[str, np.ndarray]  # name -> (n,)


def _eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # dlib 5-point order: 0-1 one eye's corners, 2-3 the other's, 4 below the nose.
    return landmarks[:, 0:2].mean(axis=1), landmarks[:, 2:4].mean(axis=1)


def _central(chips: np.ndarray) -> np.ndarray:
    """Grey-level centre of each chip (the face, without the padding around it)."""
    size = chips.shape[1]
    lo, hi = size // 5, size - size // 5
    grey = chips[:, lo:hi, lo:hi].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return grey


def assess(landmarks: np.ndarray, chips: np.ndarray) -> Quality:
    n = len(landmarks)
    if n == 0:
        empty = np.zeros(0, np.float32)
        return Quality(empty, {name: empty for name in COMPONENTS})
    eye_a, eye_b = _eye_centres(landmarks)
    ied = np.linalg.norm(eye_a - eye_b, axis=1)
    size_q = np.clip((ied - 10.0) / 30.0, 0.0, 1.0)

    grey = _central(chips)
    lap = (
        -4 * grey[:, 1:-1, 1:-1]
        + grey[:, :-2, 1:-1]
        + grey[:, 2:, 1:-1]
        + grey[:, 1:-1, :-2]
        + grey[:, 1:-1, 2:]
    )
    sharp_var = lap.reshape(n, -1).var(axis=1)
    sharp_q = 1.0 - np.exp(-sharp_var / 150.0)

    flat = grey.reshape(n, -1)
    well_exposed = ((flat > 20) & (flat < 235)).mean(axis=1)
    centring = 1.0 - np.clip(np.abs(flat.mean(axis=1) - 128.0) / 128.0, 0.0, 1.0) ** 2
    exposure_q = well_exposed * centring

    mid = (eye_a + eye_b) / 2.0
    axis = eye_b - eye_a
    unit = axis / np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-6)
    offset = np.abs(((landmarks[:, 4] - mid) * unit).sum(axis=1)) / np.maximum(ied, 1e-6)
    pose_q = np.clip(1.0 - offset / 0.5, 0.0, 1.0)

    parts = {
        "inter_eye_distance": size_q,
        "sharpness": sharp_q,
        "exposure": exposure_q,
        "pose": pose_q,
    }
    stacked = np.stack([np.maximum(v, 1e-3) for v in parts.values()])
    score = np.exp(np.log(stacked).mean(axis=0))
    return Quality(score.astype(np.float32), {k: v.astype(np.float32) for k, v in parts.items()})
