"""Face image quality on real faces: each component moves the way its degradation says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from facetrail.media import load_image
from facetrail.vision.quality import COMPONENTS, Quality, assess

IMAGES = (
    "examples/face_recognition/obama.jpg",
    "examples/face_recognition/biden.jpg",
    "deepface/img1.jpg",
    "lfw/Eric_Daze/Eric_Daze_0001.jpg",
)


def _image(shared_data: Path, relative: str) -> np.ndarray:
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"shared test image missing: {relative}")
    return load_image(path).pixels


def _assess(analyzer, image: np.ndarray, boxes: np.ndarray | None = None) -> Quality:
    faces = analyzer.locate(image, "primary", boxes=boxes)
    assert len(faces) == 1
    quality = assess(faces.landmarks, faces.chips)
    # The analyser's own quality is this same overall score.
    np.testing.assert_allclose(faces.quality, quality.score)
    return quality


def _in_unit_interval(quality: Quality) -> None:
    for values in (quality.score, *quality.components.values()):
        assert np.all(np.isfinite(values))
        assert np.all((values >= 0) & (values <= 1))


@pytest.fixture(scope="module")
def originals(shared_data, analyzer):
    """Each test image, the box found on it, and its quality."""
    out = {}
    for relative in IMAGES:
        image = _image(shared_data, relative)
        faces = analyzer.locate(image, "primary")  # one main face; quick on big images
        assert len(faces) == 1, relative
        out[relative] = (image, faces.boxes, _assess(analyzer, image))
    return out


def test_scores_and_components_in_unit_interval(originals):
    for _, _, quality in originals.values():
        assert set(quality.components) == set(COMPONENTS)
        assert quality.score.shape == (1,) and quality.score.dtype == np.float32
        _in_unit_interval(quality)


@pytest.mark.parametrize("relative", IMAGES)
def test_blur_lowers_sharpness_and_score(analyzer, originals, relative):
    image, boxes, before = originals[relative]
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))
    after = _assess(analyzer, blurred, boxes)  # same box: only the pixels changed
    _in_unit_interval(after)
    assert after.components["sharpness"][0] < before.components["sharpness"][0]
    assert after.score[0] < before.score[0]


@pytest.mark.parametrize("relative", IMAGES)
def test_darkening_lowers_exposure(analyzer, originals, relative):
    image, boxes, before = originals[relative]
    dark = (image.astype(np.float32) * 0.15).astype(np.uint8)
    after = _assess(analyzer, dark, boxes)
    _in_unit_interval(after)
    assert after.components["exposure"][0] < before.components["exposure"][0]
    assert after.score[0] < before.score[0]


@pytest.mark.parametrize("relative", IMAGES[:2])  # big faces: still found at a quarter
def test_smaller_face_lowers_inter_eye_distance(analyzer, originals, relative):
    image, _, before = originals[relative]
    h, w = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((w // 4, h // 4), Image.Resampling.LANCZOS))
    after = _assess(analyzer, small)
    _in_unit_interval(after)
    assert after.components["inter_eye_distance"][0] < before.components["inter_eye_distance"][0]


def test_several_faces_at_once(analyzer, shared_data):
    faces = analyzer.locate(
        _image(shared_data, "examples/face_recognition/two_people.jpg"), "thorough"
    )
    assert len(faces) == 2
    quality = assess(faces.landmarks, faces.chips)
    assert quality.score.shape == (2,)
    for values in quality.components.values():
        assert values.shape == (2,)
    _in_unit_interval(quality)
    # Row by row, the same as one face at a time.
    for i in range(2):
        one = assess(faces.landmarks[i : i + 1], faces.chips[i : i + 1])
        np.testing.assert_allclose(one.score, quality.score[i : i + 1], rtol=1e-6)


def test_synthetic_extremes():
    # A frontal layout (eyes 60 px apart, nose on the mid-line) on a flat grey chip: no
    # sharpness at all; on a black chip no exposure; a nose far off the mid-line: no pose.
    landmarks = np.array([[[100, 100], [120, 100], [160, 100], [180, 100], [140, 140]]], np.float32)
    grey = np.full((1, 150, 150, 3), 128, np.uint8)
    q = assess(landmarks, grey)
    assert q.components["sharpness"][0] == 0
    assert q.components["exposure"][0] == pytest.approx(1.0)
    assert q.components["pose"][0] == pytest.approx(1.0)
    assert q.components["inter_eye_distance"][0] == pytest.approx(1.0)
    black = assess(landmarks, np.zeros_like(grey))
    assert black.components["exposure"][0] == 0
    profile = landmarks.copy()
    profile[0, 4] = [200, 140]
    assert assess(profile, grey).components["pose"][0] == 0
    _in_unit_interval(q)
    _in_unit_interval(black)


def test_empty_input():
    q = assess(np.zeros((0, 5, 2), np.float32), np.zeros((0, 150, 150, 3), np.uint8))
    assert q.score.shape == (0,)
    assert set(q.components) == set(COMPONENTS)
    for values in q.components.values():
        assert values.shape == (0,)


# --------------------------------------------------------------------------- miss rates


DEFAULT_MODEL = "dlib-resnet-v1:55533b28a958+flip"


def test_packaged_miss_rates_by_quality_band_and_threshold():
    from facetrail.vision.calibration import find_calibration, normalised_model
    from facetrail.vision.miss_rates import packaged

    table = packaged()
    assert table is not None and table.model == DEFAULT_MODEL
    assert table.edges[0] == 0.0 and table.edges[-1] == 1.0
    for method in ("cosine", "as-norm", "as-norm+cosine"):
        name = DEFAULT_MODEL if method == "cosine" else normalised_model(DEFAULT_MODEL, method)
        calibration = find_calibration(name)
        assert calibration is not None
        # The thresholds are the packaged calibration's at FMR 1e-3, as a search uses them
        # (stored searches keep them rounded to 4 decimals).
        threshold = round(calibration.threshold_for(1e-3), 4)
        low = table.rate(DEFAULT_MODEL, method, threshold, 0.1)
        high = table.rate(DEFAULT_MODEL, method, threshold, 0.7)
        assert low is not None and high is not None and 0 < high < low < 1
        # Band edges: 0 and 1 are inside the table; a band's lower edge belongs to it.
        assert table.rate(DEFAULT_MODEL, method, threshold, 0.0) == low
        assert table.rate(DEFAULT_MODEL, method, threshold, 1.0) == high
        edge = table.rate(DEFAULT_MODEL, method, threshold, table.edges[1])
        assert edge == table.rate(DEFAULT_MODEL, method, threshold, table.edges[1] + 0.01)
        # Nothing was measured at another threshold, for another model or method.
        assert table.rate(DEFAULT_MODEL, method, threshold + 0.01, 0.5) is None
        assert table.rate("onnx:licensed:0123", method, threshold, 0.5) is None
    assert table.rate(DEFAULT_MODEL, "z-norm", 0.9, 0.5) is None


def test_search_reports_the_miss_rate_at_the_face_quality(team, shared_data):
    import facetrail
    from conftest import CASE

    probe = shared_data / "examples/face_recognition/knn_examples/test/obama1.jpg"
    with facetrail.open(team.data, token=team.tokens["admin"]) as ft:
        ft.enrol([shared_data / "examples/face_recognition/knn_examples/train"])
    with team.open("investigator") as inv:
        report = inv.search([probe], case=CASE, top_k=3)
        face = report.probes[0].faces[0]
        assert report.scoring == "cosine" and report.target_fmr == 1e-3
        from facetrail.vision.miss_rates import miss_rate

        expected = miss_rate(report.model, "cosine", report.threshold, face.quality)
        assert face.miss_rate is not None and face.miss_rate == expected
        # The review view computes the same from the stored search.
        view = inv.search_results(report.search_id)
        assert view.candidates[0].miss_rate == face.miss_rate
        # An explicit threshold was never measured: no miss rate.
        explicit = inv.search([probe], case=CASE, top_k=3, threshold=0.95)
        assert explicit.probes[0].faces[0].miss_rate is None
