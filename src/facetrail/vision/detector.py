"""Face detection: dlib's HOG detector with an upsampling policy for small faces.

dlib's HOG detector scans an 80x80 window over a pyramid that only shrinks the image, so at
scale 1 it finds faces of about 80 px and larger. To find a face of `min_face` pixels the image
must first be enlarged by 80 / min_face, which costs the square of that factor in time. The
policy here spends that cost only where it pays:

- "thorough" (probes: every face counts) runs one pass at the scale that reaches `min_face`.
- "primary" (reference images, verification: one main face is expected) starts at the scale
  where the face would fill a good part of the image and doubles it until a face is found or
  `min_face` is reached. A 150 px LFW thumbnail is scanned at 1.33x instead of 2x; a 4000 px
  phone photo at a fraction of its size instead of twice it.

Every pass is capped at `max_pixels` after scaling, so a huge image cannot make it explode.

`build_detector` picks by configuration between this detector, dlib's CNN detector run by ONNX
Runtime (`vision.mmod`: finds the faces HOG misses, turned away, looking down, small, at
about 2.5-5 times HOG's cost), and "auto": HOG first, the CNN only where HOG found nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import dlib
import numpy as np
from PIL import Image

Mode = Literal["primary", "thorough"]
DetectorKind = Literal["hog", "cnn", "auto"]

HOG_WINDOW = 80  # dlib's frontal face detector is trained on 80x80 windows
# In primary mode, assume first that the main face is at least this share of the short side.
PRIMARY_FACE_SHARE = 0.4


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 in the input image's pixels
    scores: np.ndarray  # (n,) float32

    @classmethod
    def none(cls) -> Detections:
        """No face found."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray, mode: Mode) -> Detections: ...


def scale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """The image enlarged or reduced by `scale` (bilinear), or itself at scale 1: how both
    detectors rescale an image to the scale their smallest face needs."""
    if abs(scale - 1.0) < 1e-3:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


class HogDetector:
    name = "dlib-hog"

    def __init__(self, min_face: int = 40, max_pixels: int = 8_000_000, grey: bool = False) -> None:
        # dlib's object_detector keeps scratch buffers inside itself, so two threads running one
        # detector corrupt each other (and crash): each pass borrows one that no other thread
        # is using. They are kept for reuse rather than per thread, because building one takes
        # most of a second and a thread pool's threads last only as long as one stream.
        self._idle: list = []
        self._lock = threading.Lock()
        self.min_face = min_face
        self.max_pixels = max_pixels
        # Grey input: HOG on one channel instead of the strongest of three, about 1.6x faster
        # for the same faces. Used for video, where every frame counts against real time;
        # stills keep colour, whose boxes the LFW accuracy was measured with.
        self.grey = grey

    def scales(self, height: int, width: int, mode: Mode) -> list[float]:
        """The scales to try, coarse to fine, for an image of this size."""
        cap = (self.max_pixels / max(1, height * width)) ** 0.5
        finest = min(HOG_WINDOW / self.min_face, cap)
        if mode == "thorough":
            return [finest]
        scale = min(HOG_WINDOW / max(self.min_face, PRIMARY_FACE_SHARE * min(height, width)), cap)
        out = [scale]
        while out[-1] < finest - 1e-6:
            out.append(min(out[-1] * 2, finest))
        return out

    def _run(self, image: np.ndarray, scale: float) -> Detections:
        if self.grey and image.ndim == 3:
            image = np.asarray(Image.fromarray(image).convert("L"))
        scaled = scale_image(image, scale)
        with self._lock:
            detector = self._idle.pop() if self._idle else None
        if detector is None:
            detector = dlib.get_frontal_face_detector()
        try:
            rects, scores, _ = detector.run(scaled, 0, 0.0)
        finally:
            with self._lock:
                self._idle.append(detector)
        if not rects:
            return Detections.none()
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], float)
        return Detections((boxes / scale).astype(np.float32), np.asarray(scores, np.float32))

    def detect(self, image: np.ndarray, mode: Mode = "thorough") -> Detections:
        found = Detections.none()
        for scale in self.scales(*image.shape[:2], mode):
            found = self._run(image, scale)
            if len(found.scores):
                break
        return found


class FallbackDetector:
    """One detector first and another only where the first found nothing: HOG's speed on
    the frontal faces it finds, and the CNN's recall on the rest. The second is built on
    first use, so a run that never needs it never pays for loading it."""

    def __init__(self, first: FaceDetector, make_second: Callable[[], FaceDetector]) -> None:
        self.first = first
        self._make_second = make_second
        self._second: FaceDetector | None = None
        self._lock = threading.Lock()
        self.name = f"{first.name}, then dlib-mmod-onnx"

    @property
    def second(self) -> FaceDetector:
        with self._lock:
            if self._second is None:
                self._second = self._make_second()
            return self._second

    def detect(self, image: np.ndarray, mode: Mode = "thorough") -> Detections:
        found = self.first.detect(image, mode)
        return found if len(found.scores) else self.second.detect(image, mode)


def build_detector(
    kind: DetectorKind,
    min_face: int,
    max_pixels: int,
    *,
    grey: bool = False,
    providers: list[str] | None = None,
) -> FaceDetector:
    """The configured detector: "hog", "cnn" or "auto" (HOG, then the CNN where HOG found
    nothing). `grey` applies to HOG (see `HogDetector`)."""
    if kind not in get_args(DetectorKind):
        raise ValueError(f"unknown detector {kind!r}")

    def cnn() -> FaceDetector:
        from facetrail.vision.mmod import CnnDetector  # builds a graph: only when asked

        return CnnDetector(min_face, max_pixels, providers=providers)

    if kind == "cnn":
        return cnn()
    hog = HogDetector(min_face, max_pixels, grey=grey)
    return hog if kind == "hog" else FallbackDetector(hog, cnn)
