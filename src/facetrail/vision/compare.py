"""Scores between descriptors: cosine similarity of unit vectors.

Cosine similarity in [-1, 1], higher meaning more alike, is the score everywhere in facetrail
(calibration, thresholds, search). On LFW it separates the dlib descriptors at least as well
as dlib's Euclidean distance (bench/RESULTS.md), and it turns 1:N search into a matmul over
unit vectors.
"""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    return (normalise(a) * normalise(b)).sum(axis=-1)
