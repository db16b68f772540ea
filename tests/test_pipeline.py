"""The vision pipeline over many real inputs: order, errors, batching across images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrail.config import Settings
from facetrail.errors import MediaError
from facetrail.media import LoadedImage, load_image
from facetrail.vision.faces import Faces
from facetrail.vision.pipeline import Analysed, FaceAnalyzer

FR = "examples/face_recognition"
REAL = (
    f"{FR}/obama_small.jpg",
    f"{FR}/obama-240p.jpg",
    f"{FR}/two_people.jpg",
    "examples/facenet_pytorch/multiface.jpg",
    f"{FR}/obama-480p.jpg",
    f"{FR}/knn_examples/test/kit_with_rose.jpg",
)
LFW_COUNT = 12


def prepare(path: Path) -> tuple[np.ndarray, LoadedImage]:
    loaded = load_image(path)  # raises MediaError for a missing or broken file
    return loaded.pixels, loaded


@pytest.fixture(scope="module")
def batching(analyzer) -> FaceAnalyzer:
    """The session analyser's models, run with small batches and two workers."""
    settings = Settings(data=analyzer.settings.data, batch_size=4, workers=2)
    return FaceAnalyzer(settings, detector=analyzer.detector, descriptor=analyzer.descriptor)


@pytest.fixture(scope="module")
def inputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """20 inputs: real images (0 to 6 faces), a missing file and an image without a face."""
    paths = [shared_data / r for r in REAL]
    lfw = sorted((shared_data / "lfw").glob("*/*.jpg"))[:LFW_COUNT]
    if not all(p.is_file() for p in paths) or len(lfw) < LFW_COUNT:
        pytest.skip("shared test images missing")
    folder = tmp_path_factory.mktemp("inputs")
    y, x = np.mgrid[0:240, 0:320]
    gradient = np.stack([x * 255 // 319, y * 255 // 239, np.full_like(x, 90)], -1)
    no_face = folder / "gradient.png"
    Image.fromarray(gradient.astype(np.uint8)).save(no_face)
    missing = folder / "missing.jpg"
    items = [*paths[:3], missing, *lfw[:6], paths[3], no_face, *lfw[6:], *paths[4:]]
    assert len(items) == 20
    return items


@pytest.fixture(scope="module")
def streamed(batching, inputs) -> list[Analysed[Path]]:
    return list(batching.stream(inputs, prepare))


def test_one_result_per_input_in_order(streamed, inputs):
    assert len(streamed) == len(inputs)
    assert [r.item for r in streamed] == inputs


def test_errors_are_carried_not_raised(streamed, inputs):
    by_name = {r.item.name: r for r in streamed}
    missing = by_name["missing.jpg"]
    assert isinstance(missing.error, MediaError)
    assert missing.faces is None
    for r in streamed:
        if r.item.name != "missing.jpg":
            assert r.error is None, r.item
            assert isinstance(r.faces, Faces)
            assert isinstance(r.extra, LoadedImage)
            assert r.extra.name == r.item.name


def test_no_face_image(streamed):
    (result,) = [r for r in streamed if r.item.name == "gradient.png"]
    assert len(result.faces) == 0
    assert result.faces.descriptors is not None
    assert result.faces.descriptors.shape == (0, 128)


def test_faces_carry_descriptors(streamed):
    counts = {}
    for r in streamed:
        if r.faces is None:
            continue
        faces = r.faces
        counts[r.item.name] = len(faces)
        n = len(faces)
        assert faces.boxes.shape == (n, 4)
        assert faces.landmarks.shape == (n, 5, 2)
        assert faces.quality.shape == (n,)
        assert faces.chips.shape == (n, 150, 150, 3)
        assert faces.descriptors.shape == (n, 128)
        assert faces.descriptors.dtype == np.float32
        assert np.all(np.isfinite(faces.descriptors))
        norms = np.linalg.norm(faces.descriptors, axis=1)
        assert np.all((norms > 0.1) & (norms < 10))
    assert counts["two_people.jpg"] == 2
    assert counts["multiface.jpg"] >= 6
    # Enough faces that batches of 4 chips span several images.
    assert sum(counts.values()) >= 20


def test_same_descriptors_as_one_image_at_a_time(streamed, batching):
    for r in streamed:
        if r.faces is None:
            continue
        alone = batching.analyse(r.extra.pixels, "thorough")
        np.testing.assert_array_equal(alone.boxes, r.faces.boxes)
        np.testing.assert_allclose(alone.descriptors, r.faces.descriptors, atol=1e-5)


def test_stream_reads_its_input_lazily(batching, inputs):
    pulled = []

    def source():
        for item in inputs:
            pulled.append(item)
            yield item

    results = batching.stream(source(), prepare)
    first = next(results)
    assert first.item == inputs[0]
    assert len(pulled) < len(inputs)  # a few ahead of the workers, not the whole input
    results.close()  # a caller may stop early; the pool finishes what it started
    assert len(pulled) < len(inputs)


def test_select_keeps_some_faces_before_description(batching, inputs):
    def largest(faces: Faces, pixels: np.ndarray) -> Faces:
        if len(faces) == 0:
            return faces
        return faces.select([int(np.argmax(faces.areas))])

    chosen = [inputs[2], inputs[10]]  # two_people.jpg, multiface.jpg
    results = list(batching.stream(chosen, prepare, select=largest))
    assert [len(r.faces) for r in results] == [1, 1]
    for r in results:
        assert r.faces.descriptors.shape == (1, 128)


def test_empty_stream(batching):
    assert list(batching.stream([], prepare)) == []
