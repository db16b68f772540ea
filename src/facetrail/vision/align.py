"""Landmarks and alignment: dlib's 5-point shape predictor and its face chips.

The 5-point model (CC0) places two points at each eye's corners and one under the nose. dlib's
`get_face_chips` rotates and scales each face so those points land where the descriptor
network expects them; the descriptor is only as good as this step, so we use dlib's own code
rather than an approximation of it.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np


class FivePointAligner:
    name = "dlib-5pt"

    def __init__(self, predictor_path: Path, chip_size: int = 150, padding: float = 0.25) -> None:
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self.chip_size = chip_size
        self.padding = padding

    def align(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (n, 5, 2) and chips (n, size, size, 3) for the faces in `boxes`."""
        n = len(boxes)
        size = self.chip_size
        if n == 0:
            return np.zeros((0, 5, 2), np.float32), np.zeros((0, size, size, 3), np.uint8)
        shapes = dlib.full_object_detections()
        for x1, y1, x2, y2 in np.rint(boxes).astype(int).tolist():
            shapes.append(self._predictor(image, dlib.rectangle(x1, y1, x2 - 1, y2 - 1)))
        landmarks = np.array(
            [[(p.x, p.y) for p in shape.parts()] for shape in shapes], dtype=np.float32
        )
        chips = np.stack(dlib.get_face_chips(image, shapes, size=size, padding=self.padding))
        return landmarks, chips
