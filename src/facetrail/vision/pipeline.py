"""The vision pipeline: images in, `Faces` with descriptors out, batched and in parallel.

Decoding, detection and alignment run per image in a thread pool (Pillow, dlib's detector and
shape predictor all release the GIL, so threads use every core without pickling images across
processes). Their chips are gathered across images and described in batches by ONNX Runtime in
the calling thread. Results come back in input order, one per input, as soon as they are ready,
so a caller can show progress over a folder of any size while memory stays bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from facetrail.config import Settings
from facetrail.errors import FacetrailError
from facetrail.vision import models
from facetrail.vision.align import FivePointAligner
from facetrail.vision.descriptor import DescriptorModel, DlibResnet, FlipAveraged, OnnxDescriptor
from facetrail.vision.detector import FaceDetector, Mode, build_detector
from facetrail.vision.faces import Faces
from facetrail.vision.quality import assess

T = TypeVar("T")
_END = object()


@dataclass
class Analysed(Generic[T]):
    """One input's outcome: its faces, or the error that stopped it (never both)."""

    item: T
    faces: Faces | None
    error: FacetrailError | None
    extra: object = None  # whatever `prepare` returned beside the pixels (e.g. the loaded file)


def build_descriptor(settings: Settings) -> DescriptorModel:
    if settings.descriptor == "onnx":
        if settings.onnx_model is None:
            raise FacetrailError("descriptor = 'onnx' needs onnx_model to name a model file")
        model = OnnxDescriptor(
            settings.onnx_model,
            chip_size=settings.onnx_input_size,
            mean=settings.onnx_mean,
            std=settings.onnx_std,
            providers=settings.providers,
            batch_size=settings.batch_size,
        )
        return FlipAveraged(model) if settings.flip_average else model
    # facetrail's own graph mirrors and averages inside itself (no copy of the chips).
    return DlibResnet(
        settings.cache_dir, settings.providers, settings.batch_size, mirror=settings.flip_average
    )


class FaceAnalyzer:
    def __init__(
        self,
        settings: Settings,
        *,
        detector: FaceDetector | None = None,
        descriptor: DescriptorModel | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector or build_detector(
            settings.detector,
            settings.min_face,
            settings.max_detect_pixels,
            providers=settings.providers,
        )
        self.descriptor = descriptor or build_descriptor(settings)
        self.aligner = FivePointAligner(
            models.five_point_predictor(), self.descriptor.chip_size, self.descriptor.chip_padding
        )

    @property
    def model_id(self) -> str:
        return self.descriptor.id

    def locate(self, image: np.ndarray, mode: Mode, boxes: np.ndarray | None = None) -> Faces:
        """Detect (unless `boxes` are given), align and assess the faces of one image."""
        if boxes is None:
            found = self.detector.detect(image, mode)
            boxes, scores = found.boxes, found.scores
        else:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            scores = np.zeros(len(boxes), np.float32)
        landmarks, chips = self.aligner.align(image, boxes)
        quality = assess(landmarks, chips)
        return Faces(boxes, scores, landmarks, quality.score, chips)

    def describe(self, faces: list[Faces]) -> list[Faces]:
        """Describe the faces of several images in one batched run."""
        chips = [f.chips for f in faces if f.chips is not None and len(f)]
        if not chips:
            return [
                f.with_descriptors(np.zeros((0, self.descriptor.dim), np.float32)) for f in faces
            ]
        vectors = self.descriptor.describe(np.concatenate(chips))
        out, start = [], 0
        for f in faces:
            out.append(f.with_descriptors(vectors[start : start + len(f)]))
            start += len(f)
        return out

    def analyse(self, image: np.ndarray, mode: Mode = "thorough") -> Faces:
        return self.describe([self.locate(image, mode)])[0]

    def stream(
        self,
        items: Iterable[T],
        prepare: Callable[[T], tuple[np.ndarray, object]],
        mode: Mode = "thorough",
        select: Callable[[Faces, np.ndarray], Faces] | None = None,
    ) -> Iterator[Analysed[T]]:
        """Analyse many inputs: `prepare(item)` turns one into (pixels, extra) in a worker
        thread (decode there, so decoding is parallel too); `select` may keep only some faces
        before the costly description (e.g. the reference face of an enrolment image)."""

        def work(item: T) -> Analysed[T]:
            try:
                pixels, extra = prepare(item)
                faces = self.locate(pixels, mode)
                if select is not None:
                    faces = select(faces, pixels)
                return Analysed(item, faces, None, extra)
            except FacetrailError as exc:
                return Analysed(item, None, exc)

        batch = self.settings.batch_size
        ahead = self.settings.workers * 4
        with ThreadPoolExecutor(self.settings.workers, thread_name_prefix="facetrail") as pool:
            pending: deque[Future[Analysed[T]]] = deque()
            ready: list[Analysed[T]] = []
            source = iter(items)
            exhausted = False
            while True:
                # Keep the workers a few images ahead while this thread runs the network.
                while not exhausted and len(pending) < ahead:
                    item = next(source, _END)
                    if item is _END:
                        exhausted = True
                    else:
                        pending.append(pool.submit(work, item))
                if not pending:
                    break
                ready.append(pending.popleft().result())
                if sum(_count(r) for r in ready) >= batch or (exhausted and not pending):
                    yield from self._describe_ready(ready)
                    ready = []
            yield from self._describe_ready(ready)

    def _describe_ready(self, ready: list[Analysed[T]]) -> Iterator[Analysed[T]]:
        ok = [r for r in ready if r.faces is not None]
        described = iter(self.describe([r.faces for r in ok]))  # type: ignore[misc]
        for r in ready:
            if r.faces is not None:
                r.faces = next(described)
            yield r


def _count(result: Analysed) -> int:
    return len(result.faces) if result.faces is not None else 0
