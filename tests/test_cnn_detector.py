"""dlib's MMOD CNN face detector run by ONNX Runtime (`facetrail.vision.mmod`), against dlib.

The reference is dlib itself: `dlib.cnn_face_detection_model_v1` on the same model file and
the same real images (crops of ../shared/data's photos, small because dlib takes about 3 s for
a 640x480 image here). At scale 1 facetrail reproduces dlib's pyramid, decoding and NMS, so
the boxes are expected to be identical and the scores equal to float precision; a tolerance
of a pixel and 1e-3 is kept for ONNX Runtime's different summation order. At 2x (min_face 40)
facetrail enlarges as dlib's upsampling does, so the boxes are again dlib's.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dlib
import face_recognition_models
import numpy as np
import pytest
from PIL import Image

from facetrail.errors import InvalidInputError, ModelError
from facetrail.media import load_image
from facetrail.vision.descriptor import onnx_session
from facetrail.vision.detector import Detections
from facetrail.vision.mmod import (
    CnnDetector,
    _pyramid_down_rect,
    _resize_bilinear,
    decode,
    planes_of,
    pyramid_layout,
    suppress,
    tile_levels,
    tile_pyramid,
)
from facetrail.vision.mmod_format import MmodNet, read_mmod
from facetrail.vision.mmod_onnx import (
    FRAMES,
    INPUT,
    RESIZE_INPUT,
    RESIZE_SIZES,
    build_mmod_graph,
    build_pyramid_graph,
    build_resize_graph,
)

FR = "examples/face_recognition"
# (image, crop x1, y1, x2, y2, faces dlib finds there at scale 1)
SCALE1_CASES = [
    ("examples/facenet_pytorch/multiface.jpg", (180, 40, 720, 360), 4),
    (f"{FR}/knn_examples/test/kit_with_rose.jpg", (0, 60, 400, 300), 2),
    (f"{FR}/obama_small.jpg", None, 1),
]
BOX_TOLERANCE = 1.0  # px, scale 1 (measured: 0)
SCORE_TOLERANCE = 1e-3  # (measured: below 1e-5)
# dlib's upsampling rounds inside its interpolation slightly differently (0.06% of the
# enlarged pixels differ by 1), which moves scores a little (measured: up to 1.8e-3 on clip
# frames, 2e-5 on these images).
UPSAMPLED_SCORE_TOLERANCE = 5e-3


def _image(shared_data: Path, relative: str, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"shared test image missing: {relative}")
    pixels = load_image(path).pixels
    if crop is not None:
        x1, y1, x2, y2 = crop
        pixels = pixels[y1:y2, x1:x2]
    return np.ascontiguousarray(pixels)


@pytest.fixture(scope="module")
def dlib_cnn():
    return dlib.cnn_face_detection_model_v1(
        face_recognition_models.cnn_face_detector_model_location()
    )


def _dlib(net, image: np.ndarray, upsample: int) -> Detections:
    """dlib's own detector, boxes in facetrail's convention (x2, y2 one past the face)."""
    found = net(image, upsample)
    boxes = [[d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1] for d in found]
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array([d.confidence for d in found], np.float32),
    )


def _match(ours: Detections, theirs: Detections) -> list[tuple[int, int]]:
    """Pairs (ours, theirs) matched one to one by best IoU above 0.5."""
    pairs = []
    used: set[int] = set()
    for i, a in enumerate(ours.boxes):
        best, best_iou = -1, 0.5
        for j, b in enumerate(theirs.boxes):
            w = min(a[2], b[2]) - max(a[0], b[0])
            h = min(a[3], b[3]) - max(a[1], b[1])
            inter = max(w, 0) * max(h, 0)
            union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
            if j not in used and inter / union > best_iou:
                best, best_iou = j, inter / union
        if best >= 0:
            used.add(best)
            pairs.append((i, best))
    return pairs


@pytest.fixture(scope="module")
def at_scale1() -> CnnDetector:
    return CnnDetector(min_face=80)  # 80 px is the detector window: no resizing


@pytest.mark.parametrize(("relative", "crop", "faces"), SCALE1_CASES)
def test_agrees_with_dlib_at_scale_1(shared_data, dlib_cnn, at_scale1, relative, crop, faces):
    image = _image(shared_data, relative, crop)
    ours, theirs = at_scale1.detect(image, "thorough"), _dlib(dlib_cnn, image, 0)
    assert len(theirs.scores) == faces
    assert len(ours.scores) == faces
    pairs = _match(ours, theirs)
    assert len(pairs) == faces
    for i, j in pairs:
        assert np.abs(ours.boxes[i] - theirs.boxes[j]).max() <= BOX_TOLERANCE
        assert abs(ours.scores[i] - theirs.scores[j]) <= SCORE_TOLERANCE


def test_matches_face_recognitions_upstream_expectation(shared_data, at_scale1):
    # EXPECTATIONS.md: obama.jpg, CNN with 0 upsampling, box (top 154, right 611, bottom 390,
    # left 375) in face_recognition's inclusive convention.
    image = _image(shared_data, f"{FR}/test_images/obama.jpg", None)
    found = at_scale1.detect(image, "thorough")
    np.testing.assert_array_equal(found.boxes, [[375, 154, 612, 391]])


def _small_faces(shared_data: Path) -> np.ndarray:
    """kit_with_rose.jpg at half size, cropped: two faces of 40-48 px."""
    image = _image(shared_data, f"{FR}/knn_examples/test/kit_with_rose.jpg", None)
    h, w = image.shape[:2]
    half = Image.fromarray(image).resize((w // 2, h // 2), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(half)[30:150, 0:200])


def test_agrees_with_dlib_upsampled(shared_data, dlib_cnn):
    # min_face 40 is scale 2: facetrail enlarges as dlib's upsample_num_times=1 does.
    small = _small_faces(shared_data)
    ours, theirs = CnnDetector(min_face=40).detect(small, "thorough"), _dlib(dlib_cnn, small, 1)
    assert len(theirs.scores) == len(ours.scores) == 2
    pairs = _match(ours, theirs)
    assert len(pairs) == 2
    for i, j in pairs:
        assert np.abs(ours.boxes[i] - theirs.boxes[j]).max() <= BOX_TOLERANCE
        assert abs(ours.scores[i] - theirs.scores[j]) <= UPSAMPLED_SCORE_TOLERANCE


def test_other_scales_agree_with_dlib_on_the_same_enlargement(shared_data, dlib_cnn):
    # min_face 60 is scale 4/3, which dlib cannot do; facetrail enlarges with Pillow, and dlib
    # given that enlarged image finds the same boxes (scaled back) and scores.
    small = _small_faces(shared_data)
    detector = CnnDetector(min_face=60)
    (scale,) = detector.scales(*small.shape[:2], "thorough")
    h, w = small.shape[:2]
    size = (round(w * scale), round(h * scale))
    enlarged = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))
    ours, theirs = detector.detect(small, "thorough"), _dlib(dlib_cnn, enlarged, 0)
    assert len(ours.scores) == len(theirs.scores) >= 1
    np.testing.assert_allclose(ours.boxes, theirs.boxes / scale, atol=BOX_TOLERANCE)
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=SCORE_TOLERANCE)


def test_min_face_controls_the_smallest_face(shared_data, at_scale1):
    small = _small_faces(shared_data)
    assert len(at_scale1.detect(small).scores) == 0
    found = CnnDetector(min_face=40).detect(small)
    assert len(found.scores) == 2
    sizes = found.boxes[:, 2:] - found.boxes[:, :2]
    assert sizes.min() >= 35 and sizes.max() <= 60


def test_scales_follow_min_face_and_max_pixels(at_scale1):
    assert at_scale1.window == 80
    assert at_scale1.scales(480, 640, "thorough") == [1.0]
    assert CnnDetector(min_face=40).scales(480, 640, "thorough") == [2.0]
    capped = CnnDetector(min_face=20, max_pixels=640 * 480)
    assert capped.scales(480, 640, "thorough") == [pytest.approx(1.0)]
    primary = CnnDetector(min_face=20, max_pixels=10**9).scales(1000, 1000, "primary")
    assert primary[0] < 1 and primary[-1] == pytest.approx(4.0)
    assert primary == sorted(primary)


def test_batch_equals_one_by_one(shared_data, at_scale1):
    image = _image(shared_data, "examples/facenet_pytorch/multiface.jpg", None)
    frames = [image[0:320, 180:660], image[200:520, 600:1080], image[100:420, 0:480]]
    frames = [np.ascontiguousarray(f) for f in frames]
    batched = at_scale1.detect_batch(frames)
    assert len(batched) == 3
    assert sum(len(d.scores) for d in batched) >= 3
    for frame, got in zip(frames, batched, strict=True):
        alone = at_scale1.detect(frame, "thorough")
        np.testing.assert_allclose(got.boxes, alone.boxes, atol=0.5)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)


def test_primary_mode_stops_at_the_first_scale_with_a_face(shared_data):
    image = _image(shared_data, f"{FR}/obama_small.jpg", None)
    detector = CnnDetector(min_face=20)
    assert detector.name == "dlib-mmod-onnx"
    scales = detector.scales(*image.shape[:2], "primary")
    assert len(scales) > 1  # coarse to fine: the face is found at the first
    primary, thorough = detector.detect(image, "primary"), detector.detect(image, "thorough")
    assert len(primary.scores) == len(thorough.scores) == 1
    pairs = _match(primary, thorough)
    assert len(pairs) == 1


def test_grey_image_is_accepted(shared_data, at_scale1):
    image = _image(shared_data, f"{FR}/obama_small.jpg", None)
    grey = np.ascontiguousarray(image.mean(axis=2).astype(np.uint8))
    assert len(at_scale1.detect(grey).scores) == 1


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10, 0, 3), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3, 1), np.uint8),
        np.zeros(10, np.uint8),
        [[0, 0, 0]],
    ],
)
def test_bad_input_is_refused(at_scale1, bad):
    with pytest.raises(InvalidInputError):
        at_scale1.detect(bad)
    with pytest.raises(InvalidInputError):
        at_scale1.detect_batch([bad])


def test_batch_of_mixed_sizes_is_refused(at_scale1):
    frames = [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 41, 3), np.uint8)]
    with pytest.raises(InvalidInputError):
        at_scale1.detect_batch(frames)
    assert at_scale1.detect_batch([]) == []


def test_tiny_image_finds_nothing(at_scale1):
    for shape in [(1, 1, 3), (3, 200, 3), (200, 3, 3)]:
        found = at_scale1.detect(np.full(shape, 128, np.uint8))
        assert found.boxes.shape == (0, 4) and found.scores.shape == (0,)


# --- the pieces ----------------------------------------------------------------------------------


def test_model_file_is_parsed():
    net = read_mmod(Path(face_recognition_models.cnn_face_detector_model_location()).read_bytes())
    assert net.windows == ((80, 80),)
    assert (net.padding, net.outer_padding) == (10, 11)
    assert [c.weights.shape[0] for c in net.convs] == [16, 32, 32, 45, 45, 45, 1]
    assert [c.relu for c in net.convs] == [True] * 6 + [False]
    assert net.output_to_input() == (8, 14)
    assert 0.3 < net.nms_iou < 0.4 and net.nms_covered == 1.0


def test_other_dlib_files_are_refused():
    with pytest.raises(ModelError):
        read_mmod(Path(face_recognition_models.face_recognition_model_location()).read_bytes())
    data = Path(face_recognition_models.cnn_face_detector_model_location()).read_bytes()
    with pytest.raises(ModelError):
        read_mmod(data[: len(data) // 2])


def test_pyramid_layout_tiles_without_overlap():
    for nr, nc in [(480, 640), (360, 640), (720, 1280), (640, 480), (7, 7), (1, 1)]:
        rects, rows, cols = pyramid_layout(nr, nc, 10, 11)
        assert tuple(rects[0]) == (11, 11, 11 + nc - 1, 11 + nr - 1)
        assert (
            (rects[:, :2] >= 0).all() and (rects[:, 2] < cols).all() and (rects[:, 3] < rows).all()
        )
        for i in range(len(rects)):
            for j in range(i):
                a, b = rects[i], rects[j]
                apart = a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3]
                assert apart


def _ort_resize() -> Callable[[np.ndarray, int, int], np.ndarray]:
    """The graphs' Resize on its own (`build_resize_graph`), as a `tile_levels` resize."""
    session = onnx_session(build_resize_graph().SerializeToString(), ["CPUExecutionProvider"], 0)

    def resize(planes: np.ndarray, nr: int, nc: int) -> np.ndarray:
        sizes = np.array([*planes.shape[:2], nr, nc], np.int64)
        return session.run(None, {RESIZE_INPUT: planes, RESIZE_SIZES: sizes})[0]

    return resize


def test_onnx_resize_matches_dlibs_interpolation(at_scale1):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    exact, rects = tile_pyramid(images, at_scale1.net, _resize_bilinear)
    fast, rects2 = tile_pyramid(images, at_scale1.net, _ort_resize())
    np.testing.assert_array_equal(rects, rects2)
    assert np.abs(exact - fast).max() < 1e-4


def _numpy_pyramid(frames: np.ndarray, net: MmodNet, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The tiled pyramid built step by step on the host, as the detector did before the graph:
    dlib's pyramid_up `levels` times (bilinear to 2r+1 x 2c+2, truncated), then tile_levels."""
    resize = _ort_resize()
    planes = planes_of(frames)
    for _ in range(levels):
        rows, cols = planes.shape[2:]
        planes = np.floor(resize(planes, 2 * rows + 1, 2 * cols + 2))
    return tile_levels(planes, net, resize)


def _frames(shared_data: Path) -> np.ndarray:
    """Two real 90x130 frames: faces of multiface.jpg (odd sizes, to catch off-by-ones)."""
    image = _image(shared_data, "examples/facenet_pytorch/multiface.jpg", None)
    return np.stack([image[60:150, 200:330], image[150:240, 560:690]])


@pytest.mark.parametrize("levels", [0, 1])
def test_pyramid_graph_equals_the_numpy_pyramid(shared_data, at_scale1, levels):
    frames = _frames(shared_data)
    net = at_scale1.net
    graph = build_pyramid_graph(net, *frames.shape[1:3], levels, pyramid_layout)
    session = onnx_session(graph.SerializeToString(), ["CPUExecutionProvider"], 0)
    got = session.run(None, {FRAMES: frames})[0]
    expected, _ = _numpy_pyramid(frames, net, levels)
    np.testing.assert_array_equal(got, expected)  # values and exact zeros between the tiles


@pytest.mark.parametrize("min_face", [80, 40])  # scale 1 and 2 (one pyramid_up)
def test_detections_equal_the_numpy_pyramids(shared_data, min_face):
    # The detector's one graph (frames -> scores) against the network run on the numpy
    # pyramid, then the same decoding: the same score maps, so the same boxes and scores.
    frames = np.stack([_small_faces(shared_data), _small_faces(shared_data)[:, ::-1]])
    detector = CnnDetector(min_face=min_face)
    levels = {80: 0, 40: 1}[min_face]
    pyramid, rects = _numpy_pyramid(frames, detector.net, levels)
    network = onnx_session(
        build_mmod_graph(detector.net).SerializeToString(), ["CPUExecutionProvider"], 0
    )
    expected = network.run(None, {INPUT: pyramid})[0]
    got = detector._graph_for(*frames.shape[1:3], levels).run(None, {FRAMES: frames})[0]
    np.testing.assert_array_equal(got, expected)
    found = detector.detect_batch(list(frames))
    assert sum(len(d.scores) for d in found) == (4 if levels else 0)
    for maps, det in zip(expected, found, strict=True):
        boxes, scores = decode(maps, rects, detector.net)
        kept = suppress(boxes, scores, detector.net.nms_iou, detector.net.nms_covered)
        boxes = _pyramid_down_rect(boxes[kept], levels) + np.array([0, 0, 1, 1])  # x2, y2 past
        np.testing.assert_array_equal(det.boxes, boxes.astype(np.float32))
        np.testing.assert_array_equal(det.scores, scores[kept].astype(np.float32))


def test_sessions_are_kept_per_size_and_shared_by_threads(shared_data):
    # Six frame sizes from several threads: a few sessions kept, results as one by one.
    image = _image(shared_data, "examples/facenet_pytorch/multiface.jpg", None)
    crops = [np.ascontiguousarray(image[40 : 140 + 7 * k, 180 : 300 + 5 * k]) for k in range(6)]
    alone = [CnnDetector(min_face=80).detect(c) for c in crops]
    detector = CnnDetector(min_face=80)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(detector.detect, crops * 3))
    assert 1 <= len(detector._graphs) <= 4
    for got, expected in zip(together, alone * 3, strict=True):
        np.testing.assert_array_equal(got.boxes, expected.boxes)
        np.testing.assert_array_equal(got.scores, expected.scores)
