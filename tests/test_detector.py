"""The HOG detector and its upsampling policy, on the real images of face_recognition's tests.

Expected boxes come from /work/shared/data/examples/EXPECTATIONS.md, in face_recognition's
(top, right, bottom, left) convention with inclusive right/bottom, clipped to the image.
facetrail's boxes are [x1, y1, x2, y2] with exclusive x2, y2 and are not clipped.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from facetrail.media import load_image
from facetrail.vision.detector import (
    HOG_WINDOW,
    Detections,
    FallbackDetector,
    HogDetector,
    build_detector,
)

# facetrail enlarges with Pillow where dlib uses pyramid_up, so boxes may move a little.
# Measured: at most 1.5 px on any edge of these four images; the tolerance sits just above.
BOX_TOLERANCE = 3.0

FR = "examples/face_recognition"
# dlib's HOG with one upsampling (face_recognition's default) on obama-1080p.jpg, measured.
OBAMA_1080P_DLIB_BOX = np.array([854, 142, 1123, 410], float)


def _image(shared_data: Path, relative: str) -> np.ndarray:
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"shared test image missing: {relative}")
    return load_image(path).pixels


def _expected(css: tuple[int, int, int, int], image: np.ndarray) -> np.ndarray:
    """face_recognition's (top, right, bottom, left) as facetrail's [x1, y1, x2, y2], clipped."""
    top, right, bottom, left = css
    return _clip(np.array([left, top, right + 1, bottom + 1], float), image)


def _clip(box: np.ndarray, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.clip(box, 0, [w, h, w, h])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _dlib_boxes(image: np.ndarray, upsample: int = 1) -> np.ndarray:
    """What face_recognition's default (dlib's HOG, one upsampling) finds, as [x1, y1, x2, y2]."""
    rects = dlib.get_frontal_face_detector()(np.ascontiguousarray(image), upsample)
    return np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], float)


@pytest.fixture(scope="module")
def detector() -> HogDetector:
    return HogDetector()


@pytest.mark.parametrize(
    ("relative", "css"),
    [
        (f"{FR}/obama.jpg", (142, 617, 409, 349)),
        (f"{FR}/test_images/obama_partial_face.jpg", (142, 191, 365, 0)),
        (f"{FR}/test_images/obama_partial_face2.jpg", (142, 551, 409, 349)),
    ],
)
def test_one_face_where_face_recognition_finds_it(shared_data, detector, relative, css):
    image = _image(shared_data, relative)
    found = detector.detect(image, "thorough")
    assert isinstance(found, Detections)
    assert found.boxes.shape == (1, 4) and found.scores.shape == (1,)
    assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
    assert found.scores[0] > 0
    diff = np.abs(_clip(found.boxes[0], image) - _expected(css, image))
    assert diff.max() <= BOX_TOLERANCE, f"edges differ by {diff.tolist()}"


def test_rgba_png(shared_data, detector):
    image = _image(shared_data, f"{FR}/test_images/32bit.png")
    assert image.shape == (1200, 626, 3)
    found = detector.detect(image, "thorough")
    assert len(found.boxes) == 1
    _, top, _, bottom = found.boxes[0]
    assert abs(top - 290) <= BOX_TOLERANCE
    assert abs(bottom - 559) <= BOX_TOLERANCE  # inclusive 558


def test_partial_face_box_runs_off_the_image(shared_data, detector):
    # Unclipped, the box of a face cut by the left edge starts left of the image.
    found = detector.detect(_image(shared_data, f"{FR}/test_images/obama_partial_face.jpg"))
    assert found.boxes[0, 0] < 0


@pytest.mark.parametrize(
    ("relative", "exact"),
    [(f"{FR}/two_people.jpg", 2), ("examples/facenet_pytorch/multiface.jpg", None)],
)
def test_finds_at_least_what_dlib_default_finds(shared_data, detector, relative, exact):
    image = _image(shared_data, relative)
    ours = detector.detect(image, "thorough").boxes
    theirs = _dlib_boxes(image)
    if exact is not None:
        assert len(ours) == exact
    assert len(theirs) >= 2
    assert len(ours) >= len(theirs)
    # Every face dlib finds is one of ours (same face, box within a small shift).
    for box in theirs:
        assert max(_iou(box, mine) for mine in ours) > 0.6


def test_no_face_in_a_gradient_or_noise(detector):
    y, x = np.mgrid[0:480, 0:640]
    gradient = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], -1)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3))
    for image in (gradient.astype(np.uint8), noise.astype(np.uint8)):
        for mode in ("thorough", "primary"):
            found = detector.detect(image, mode)
            assert found.boxes.shape == (0, 4)
            assert found.scores.shape == (0,)


# --- the upsampling policy ---------------------------------------------------------------


def test_primary_mode_on_a_thumbnail(shared_data, detector):
    image = _image(shared_data, "lfw/Eric_Daze/Eric_Daze_0001.jpg")
    assert image.shape[:2] == (150, 150)
    scales = detector.scales(*image.shape[:2], "primary")
    assert scales[0] < 2.0
    assert scales[-1] == pytest.approx(HOG_WINDOW / detector.min_face)
    found = detector.detect(image, "primary")
    assert len(found.boxes) == 1


def test_primary_mode_scales_for_a_150px_image(detector):
    # The module docstring's example: a 150 px thumbnail starts at 1.33x, not 2x.
    scales = detector.scales(150, 150, "primary")
    assert scales[0] == pytest.approx(80 / 60)
    assert scales == sorted(scales)
    assert scales[-1] == pytest.approx(2.0)


def test_primary_mode_on_a_large_image(shared_data, detector):
    image = _image(shared_data, f"{FR}/obama-1080p.jpg")
    scales = detector.scales(*image.shape[:2], "primary")
    assert scales[0] < 1.0
    assert all(b > a for a, b in itertools.pairwise(scales))
    found = detector.detect(image, "primary")
    assert len(found.boxes) == 1
    # The face found at a fraction of the size is the one dlib's default finds at full size.
    assert _iou(found.boxes[0], OBAMA_1080P_DLIB_BOX) > 0.6


def test_thorough_mode_scale_everywhere(shared_data, detector):
    relatives = [
        f"{FR}/obama.jpg",
        f"{FR}/obama-1080p.jpg",
        f"{FR}/obama-240p.jpg",
        f"{FR}/biden.jpg",
        f"{FR}/test_images/32bit.png",
        "deepface/img1.jpg",
        "lfw/Eric_Daze/Eric_Daze_0001.jpg",
    ]
    for relative in relatives:
        path = shared_data / relative
        if not path.is_file():
            continue
        with Image.open(path) as im:
            w, h = im.size
        cap = (detector.max_pixels / (h * w)) ** 0.5
        expected = min(HOG_WINDOW / detector.min_face, cap)
        assert detector.scales(h, w, "thorough") == [pytest.approx(expected)], relative
    # 1920 x 1080 at 2x would be 8.3 MP, above the 8 MP cap.
    assert HogDetector().scales(1080, 1920, "thorough")[0] < 2.0


@pytest.mark.parametrize("mode", ["thorough", "primary"])
def test_max_pixels_cap_on_a_huge_image(mode):
    detector = HogDetector(min_face=40, max_pixels=8_000_000)
    h, w = 6000, 8000
    scales = detector.scales(h, w, mode)
    assert scales, "at least one pass"
    for scale in scales:
        assert round(h * scale) * round(w * scale) <= detector.max_pixels * 1.001
    assert scales[-1] == pytest.approx((8_000_000 / (h * w)) ** 0.5)


def test_max_pixels_cap_is_applied_when_detecting(shared_data):
    image = _image(shared_data, f"{FR}/obama-1080p.jpg")
    small = HogDetector(max_pixels=500_000)
    (scale,) = small.scales(*image.shape[:2], "thorough")
    assert scale < 0.5
    found = small.detect(image, "thorough")
    assert len(found.boxes) == 1
    assert _iou(found.boxes[0], OBAMA_1080P_DLIB_BOX) > 0.6


def test_min_face_sets_the_thorough_scale():
    assert HogDetector(min_face=80).scales(480, 640, "thorough") == [1.0]
    assert HogDetector(min_face=20).scales(480, 640, "thorough") == [4.0]
    assert HogDetector(min_face=20).scales(1000, 1000, "thorough")[0] < 4.0


# --- threads -----------------------------------------------------------------------------


def test_concurrent_detection_matches_serial(shared_data):
    # dlib's detector is not thread-safe (it crashed under the pipeline's thread pool);
    # HogDetector keeps one per thread, so one shared HogDetector gives the serial answers.
    lfw = shared_data / "lfw"
    if not lfw.is_dir():
        pytest.skip("shared LFW images missing")
    paths = sorted(lfw.glob("*/*.jpg"))[:40]
    assert len(paths) == 40
    images = [load_image(p).pixels for p in paths]
    detector = HogDetector()
    serial = [detector.detect(image, "thorough") for image in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: detector.detect(im, "thorough"), images))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert sum(len(d.boxes) for d in serial) >= 35


def test_auto_builds_the_cnn_only_where_hog_finds_nothing(shared_data: Path) -> None:
    auto = build_detector("auto", 40, 8_000_000)
    assert isinstance(auto, FallbackDetector)
    found = auto.detect(_image(shared_data, f"{FR}/obama.jpg"), "primary")
    assert len(found.scores) == 1 and auto._second is None  # HOG found it: no CNN loaded
    assert isinstance(build_detector("hog", 40, 8_000_000), HogDetector)
    with pytest.raises(ValueError):
        build_detector("sift", 40, 8_000_000)  # type: ignore[arg-type]


def test_auto_finds_the_faces_hog_misses_in_footage(shared_data: Path) -> None:
    """Frames of the Hamilton clip: the fallback finds a face in frames where HOG finds none,
    and never fewer faces than HOG."""
    from facetrail.media.video import open_video

    clip = shared_data / FR / "short_hamilton_clip.mp4"
    if not clip.is_file():
        pytest.skip("shared test video missing: short_hamilton_clip.mp4")
    with open_video(clip) as video:
        frames = [f.pixels for f in itertools.islice(video.frames(), 0, 270, 30)]
    hog = HogDetector(40, 1_000_000, grey=True)
    auto = build_detector("auto", 40, 1_000_000, grey=True)
    by_hog = [len(hog.detect(f).scores) for f in frames]
    by_auto = [len(auto.detect(f).scores) for f in frames]
    assert all(a >= h for a, h in zip(by_auto, by_hog, strict=True))
    assert sum(a > 0 for a in by_auto) > sum(h > 0 for h in by_hog)
