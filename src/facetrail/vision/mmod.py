"""Face detection with dlib's MMOD CNN, run by ONNX Runtime instead of dlib.

dlib's `cnn_face_detection_model_v1` takes about 3 s for a 640x480 frame on this project's
CPUs; the same network as an ONNX graph (`mmod_onnx`) runs far faster and batches frames.
Everything around the network is reimplemented from dlib's public behaviour so the boxes
stay dlib's:

- the input: dlib scans one image holding the whole pyramid (`pyramid_down<6>`, each level
  5/6 of the one before, built by bilinear resizing of the previous level), tiled in two
  columns with 10 px between levels and 11 px around (`pyramid_layout`); ONNX Runtime builds
  it in the same graph as the network (`mmod_onnx.build_detector_graph`, one per frame size),
  and `tile_pyramid` is the same in numpy, the reference it is tested against;
- the decoding: every output cell scoring above 0 is a detection window (80x80 in the
  tensor) centred over the cell's input pixel, mapped back to the image through the level
  whose tile is nearest to it (`decode`);
- non-maximum suppression with the overlap thresholds stored in the file (`suppress`).

On top of that, `CnnDetector` follows `HogDetector`'s policy: the image is enlarged so that the
smallest face found is `min_face` px (the window is 80 px at scale 1), capped at `max_pixels`.
At 2x, 4x, ... it enlarges as dlib's `upsample_num_times` does (in the graph), so
`CnnDetector(min_face=40)` gives the boxes of `cnn_face_detection_model_v1(img, 1)`, which
face_recognition uses; other scales enlarge with Pillow, as `HogDetector` does.

Measured (bench/RESULTS.md): at scale 1 and 2 the boxes are dlib's exactly and the scores
within 2e-5 (7e-4 at 2x); 15-21x less CPU than dlib's CNN, but 4-5x HOG's CPU at the same
`min_face`, since the network costs about 4.4 GMAC per 640x480 frame at scale 1 (four times
that at scale 2).
Memory: the tiled pyramid is about 3.8x the scaled image, and a run at `max_pixels` = 8 M
peaks at about 1.5 GB (1.4 GB when the pyramid was built in numpy: the graph holds its bands
and the canvas at once). `detect` may be called from several threads at once.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facetrail.errors import InvalidInputError
from facetrail.vision import models
from facetrail.vision.descriptor import onnx_session
from facetrail.vision.detector import PRIMARY_FACE_SHARE, Detections, Mode, scale_image
from facetrail.vision.mmod_format import PYRAMID_DOWN, MmodNet, read_mmod
from facetrail.vision.mmod_onnx import FRAMES, build_detector_graph, enlarged_size

MODEL_FILE = "mmod_human_face_detector.dat"
_MIN_LEVEL_HEIGHT = 5  # dlib stops the pyramid at levels lower than this
_GRAPHS_KEPT = 4  # frame sizes whose sessions are kept: a video has one, stills vary


# --- the tiled pyramid ------------------------------------------------------------------------


def pyramid_layout(
    nr: int, nc: int, padding: int, outer_padding: int
) -> tuple[np.ndarray, int, int]:
    """Where dlib puts each pyramid level in its tiled image.

    Returns the levels' rectangles, (levels, 4) int64 rows of (left, top, right, bottom),
    inclusive as dlib's rectangles are, and the tiled image's rows and columns. The levels go
    down a first column until the rest fits beside them; the rest are stacked bottom up in a
    second column, right-aligned, as long as they do not overlap the full-size image.
    """
    sizes = [(nr, nc)]
    rate = (PYRAMID_DOWN - 1.0) / PYRAMID_DOWN
    while True:
        nr, nc = math.floor(rate * nr), math.floor(rate * nc)
        if nr * nc == 0 or nr < _MIN_LEVEL_HEIGHT:
            break
        sizes.append((nr, nc))
    first_h, width = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    height = prev_width = 0
    for h, w in sizes:
        if w <= width - prev_width - padding and (height - first_h) * 2 >= total_height - first_h:
            break
        height += h + padding
        prev_width = w
    height -= padding
    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    index = 0
    while y < height + outer_padding and index < len(sizes):
        h, w = sizes[index]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        index += 1
    y -= padding
    first = rects[0]
    while index < len(sizes):
        h, w = sizes[index]
        right, bottom = outer_padding + width - 1, y - 1
        rect = (right - (w - 1), bottom - (h - 1), right, bottom)
        apart = rect[0] > first[2] or rect[2] < first[0] or rect[1] > first[3] or rect[3] < first[1]
        if not apart:  # it would overlap the full-size image: dlib drops the remaining levels
            break
        rects.append(rect)
        y -= h + padding
        index += 1
    return np.array(rects, np.int64), height + 2 * outer_padding, width + 2 * outer_padding


def _resize_bilinear(src: np.ndarray, nr: int, nc: int) -> np.ndarray:
    """dlib's bilinear resize of (..., H, W) planes: corners aligned, neighbours clamped.

    Separable (rows, then columns), which is the same interpolation as dlib's 2-D formula.
    Sample positions accumulate as dlib's loop does (x += x_scale).
    """
    h, w = src.shape[-2:]

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = (n_in - 1) / max(n_out - 1, 1)
        pos = np.cumsum(np.concatenate([[0.0], np.full(n_out - 1, step)]))
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (pos - low).astype(np.float32)

    top, bottom, fy = taps(nr, h)
    rows = src[..., top, :] * (1 - fy)[:, None] + src[..., bottom, :] * fy[:, None]
    left, right, fx = taps(nc, w)
    return rows[..., left] * (1 - fx) + rows[..., right] * fx


Resize = Callable[[np.ndarray, int, int], np.ndarray]


def planes_of(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 pixel values, C-contiguous."""
    return images.transpose(0, 3, 1, 2).astype(np.float32, order="C")


def tile_levels(
    planes: np.ndarray, net: MmodNet, resize: Resize = _resize_bilinear
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) float32 pixel values -> dlib's normalised tiled pyramid and its rects.

    The reference for `mmod_onnx.build_pyramid_graph`, which the detector runs: with
    `resize` an ONNX Runtime session of `mmod_onnx.build_resize_graph`, the two are equal
    to the bit. `planes` is normalised in place, (value - mean) / 256 as dlib's input layer
    does. Each level is resized from the one before it, after normalisation, as dlib does;
    the space between the tiles is 0 (the mean colour).
    """
    n, _, h, w = planes.shape
    rects, rows, cols = pyramid_layout(h, w, net.padding, net.outer_padding)
    canvas = np.zeros((n, 3, rows, cols), np.float32)
    level = planes
    level -= net.mean[None, :, None, None]
    level *= np.float32(1 / 256)
    for index, (left, top, right, bottom) in enumerate(rects):
        if index:
            level = resize(level, int(bottom - top + 1), int(right - left + 1))
        canvas[:, :, top : bottom + 1, left : right + 1] = level
    return canvas, rects


def tile_pyramid(
    images: np.ndarray, net: MmodNet, resize: Resize = _resize_bilinear
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 RGB -> dlib's normalised tiled pyramid (N, 3, NR, NC) and its rects."""
    return tile_levels(planes_of(images), net, resize)


# --- from score maps to boxes -------------------------------------------------------------------


def decode(
    scores: np.ndarray, rects: np.ndarray, net: MmodNet, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One sample's score maps (windows, h, w) -> candidate boxes, best first.

    Boxes are dlib's rounded, inclusive rectangles (left, top, right, bottom) in the pyramid's
    level-0 image, as float64; scores are the raw network outputs above `threshold`.
    """
    k, ys, xs = np.nonzero(scores > threshold)
    values = scores[k, ys, xs].astype(np.float64)
    a, b = net.output_to_input()
    cx, cy = (a * xs + b).astype(np.float64), (a * ys + b).astype(np.float64)
    windows = np.array(net.windows, np.float64)[k]
    half_w, half_h = (windows[:, 0] - 1) / 2, (windows[:, 1] - 1) / 2  # dlib's centered_drect
    # The level whose tile is nearest to the window's centre: the first that contains it,
    # else the closest (dlib's nearest_rect; the centre is a whole pixel here).
    left, top, right, bottom = (rects[None, :, i] for i in range(4))
    dx = np.clip(cx[:, None], left, right) - cx[:, None]
    dy = np.clip(cy[:, None], top, bottom) - cy[:, None]
    level = np.argmin(np.hypot(dx, dy), axis=1)  # 0 where contained; first of equals wins
    origin = rects[level, :2].astype(np.float64)
    box = np.stack(
        [cx - half_w - origin[:, 0], cy - half_h - origin[:, 1],
         cx + half_w - origin[:, 0], cy + half_h - origin[:, 1]],
        axis=1,
    )  # fmt: skip
    ratio = PYRAMID_DOWN / (PYRAMID_DOWN - 1.0)
    for step in range(int(level.max(initial=0))):  # pyramid_down<6>::point_up, level times
        up = level > step
        box[up] = box[up] * ratio + 0.3
    box = np.floor(box + 0.5)  # dlib's drectangle -> rectangle
    order = np.argsort(-values, kind="stable")
    return box[order], values[order]


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float, covered: float) -> np.ndarray:
    """Greedy non-maximum suppression as dlib's loss_mmod does it; returns kept indices.

    Boxes (best first) are inclusive integer rectangles. Two boxes overlap when their
    intersection is more than `iou` of the box bounding both (dlib's test_box_overlap), or
    more than `covered` of either box.
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    iw = np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]) + 1
    ih = np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]) + 1
    inner = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    hull = (np.maximum(x2[:, None], x2[None]) - np.minimum(x1[:, None], x1[None]) + 1) * (
        np.maximum(y2[:, None], y2[None]) - np.minimum(y1[:, None], y1[None]) + 1
    )
    overlaps = (inner > 0) & (
        (inner / hull > iou) | (inner / area[:, None] > covered) | (inner / area[None] > covered)
    )
    kept: list[int] = []
    for i in range(n):
        if not overlaps[i, kept].any():
            kept.append(i)
    return np.array(kept, np.int64)


# --- the detector ----------------------------------------------------------------------------


def _as_rgb(image: object) -> np.ndarray:
    """Check one image and return it as (H, W, 3) uint8; grey images are spread to RGB."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidInputError("an image must be a uint8 numpy array")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"an image must be (H, W, 3) RGB or (H, W) grey, not {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError("the image is empty")
    return image


def _pyramid_down_rect(boxes: np.ndarray, levels: int) -> np.ndarray:
    """Inclusive boxes in an image enlarged `levels` times as dlib's pyramid_up does -> the
    original image, as dlib maps them back (pyramid_down<2>::rect_down: p / 2 - (1.25, 0.75)
    per level, then rounded)."""
    boxes = boxes.astype(np.float64)
    offset = np.array([1.25, 0.75, 1.25, 0.75])
    for _ in range(levels):
        boxes = boxes / 2 - offset
    return np.floor(boxes + 0.5)


class CnnDetector:
    """dlib's MMOD CNN face detector on ONNX Runtime; a `FaceDetector`."""

    name = "dlib-mmod-onnx"

    def __init__(
        self,
        min_face: int = 40,
        max_pixels: int = 8_000_000,
        providers: list[str] | None = None,
        threads: int = 0,
        threshold: float = 0.0,
        batch_size: int = 4,
        model_path: Path | None = None,
    ) -> None:
        path = model_path or models._file(MODEL_FILE)
        self.net = read_mmod(path.read_bytes())
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = threads
        # One session per frame size (`_graph_for`), built on first use.
        self._graphs: OrderedDict[tuple[int, int, int], ort.InferenceSession] = OrderedDict()
        self._graphs_lock = threading.Lock()
        self.window = max(max(w, h) for w, h in self.net.windows)
        self.min_face = min_face
        self.max_pixels = max_pixels
        self.threshold = threshold  # dlib's adjust_threshold: keep windows scoring above it
        self.batch_size = max(1, batch_size)  # frames per network run: bounds the memory used

    def _graph_for(self, height: int, width: int, levels: int) -> ort.InferenceSession:
        """The session of `build_detector_graph` for frames of one size, the last few kept.

        The graph depends on the size (the pyramid's layout is built into it); building one
        takes about 20 ms on a CPU, under 1% of a frame's detection there.
        """
        key = (height, width, levels)
        # Under the lock while building too: threads detecting in frames of one size (video)
        # then wait for the one session instead of each building its own.
        with self._graphs_lock:
            session = self._graphs.get(key)
            if session is None:
                graph = build_detector_graph(self.net, height, width, levels, pyramid_layout)
                session = onnx_session(
                    graph.SerializeToString(), self._providers, self._threads, "MMOD detector"
                )
                self._graphs[key] = session
                if len(self._graphs) > _GRAPHS_KEPT:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            return session

    def scales(self, height: int, width: int, mode: Mode) -> list[float]:
        """The scales to try, coarse to fine: the same policy as `HogDetector.scales`."""
        cap = (self.max_pixels / max(1, height * width)) ** 0.5
        finest = min(self.window / self.min_face, cap)
        if mode == "thorough":
            return [finest]
        scale = min(self.window / max(self.min_face, PRIMARY_FACE_SHARE * min(height, width)), cap)
        out = [scale]
        while out[-1] < finest - 1e-6:
            out.append(min(out[-1] * 2, finest))
        return out

    def _run(self, images: list[np.ndarray], scale: float) -> list[Detections]:
        """Detect in same-size RGB images at one scale, `batch_size` images per network run."""
        # At 2x, 4x, ... enlarge as dlib's upsampling does, so the boxes are the ones dlib
        # gives with upsample_num_times = 1, 2, ...; other scales use Pillow, as HogDetector.
        levels = round(math.log2(scale)) if scale > 1.5 else 0
        if abs(scale - 2.0**levels) > 1e-6:
            levels = 0
        out: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            frames = np.stack(chunk if levels else [scale_image(im, scale) for im in chunk])
            height, width = frames.shape[1:3]
            rects, rows, cols = pyramid_layout(
                *enlarged_size(height, width, levels), self.net.padding, self.net.outer_padding
            )
            if min(self.net.output_size(rows, cols)) <= 0:
                # An image of a few pixels: too small for the network's strides (dlib
                # cannot run it either); no face can be in it.
                out += [Detections.none() for _ in chunk]
                continue
            # Enlargement, pyramid and network in one ONNX Runtime run, so only the uint8
            # frames go to the session's device (on a GPU, building the pyramid on the host and
            # copying it over took two thirds of a frame's time). On a CPU it takes about the
            # time the numpy pyramid took, with identical scores.
            scores = self._graph_for(height, width, levels).run(None, {FRAMES: frames})[0]
            for sample in scores:
                boxes, values = decode(sample, rects, self.net, self.threshold)
                kept = suppress(boxes, values, self.net.nms_iou, self.net.nms_covered)
                if not len(kept):
                    out.append(Detections.none())
                    continue
                if levels:
                    box = _pyramid_down_rect(boxes[kept], levels)
                    box[:, 2:] += 1  # inclusive corners -> x2, y2 one past, as HogDetector
                else:
                    box = boxes[kept].copy()
                    box[:, 2:] += 1
                    box /= scale
                out.append(Detections(box.astype(np.float32), values[kept].astype(np.float32)))
        return out

    def detect(self, image: np.ndarray, mode: Mode = "thorough") -> Detections:
        rgb = _as_rgb(image)
        found = Detections.none()
        for scale in self.scales(*rgb.shape[:2], mode):
            found = self._run([rgb], scale)[0]
            if len(found.scores):
                break
        return found

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Every face in each of several same-size frames ("thorough"), batched through ORT."""
        frames = [_as_rgb(image) for image in images]
        if not frames:
            return []
        if any(f.shape != frames[0].shape for f in frames):
            raise InvalidInputError("detect_batch needs frames of one size")
        return self._run(frames, self.scales(*frames[0].shape[:2], "thorough")[0])
