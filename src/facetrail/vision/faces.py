"""`Faces`: the one batched data type the vision pipeline passes along.

Every field is an array with the same first dimension (one row per face), so a whole image,
or a whole batch of images, moves through detection, alignment, quality and description as
arrays rather than as lists of little objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


def _empty(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return np.zeros((0, *shape), dtype=dtype)


@dataclass
class Faces:
    boxes: np.ndarray = field(default_factory=lambda: _empty(4))  # (n, 4) x1, y1, x2, y2
    scores: np.ndarray = field(default_factory=lambda: _empty())  # (n,) detector score
    landmarks: np.ndarray = field(default_factory=lambda: _empty(5, 2))  # (n, 5, 2) x, y
    quality: np.ndarray = field(default_factory=lambda: _empty())  # (n,) in [0, 1]
    chips: np.ndarray | None = None  # (n, size, size, 3) uint8 aligned crops
    descriptors: np.ndarray | None = None  # (n, dim) float32

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, index: np.ndarray | list[int] | slice) -> Faces:
        """The faces at `index`, every field sliced alike."""
        return Faces(
            boxes=self.boxes[index],
            scores=self.scores[index],
            landmarks=self.landmarks[index],
            quality=self.quality[index],
            chips=None if self.chips is None else self.chips[index],
            descriptors=None if self.descriptors is None else self.descriptors[index],
        )

    def with_descriptors(self, descriptors: np.ndarray) -> Faces:
        return replace(self, descriptors=descriptors)

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def areas(self) -> np.ndarray:
        return self.widths * (self.boxes[:, 3] - self.boxes[:, 1])
