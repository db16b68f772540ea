"""The descriptor: facetrail's ONNX port of dlib's ResNet against dlib itself, on real faces.

dlib's own `compute_face_descriptor` is the reference (DESIGN.md); the chips come from dlib's
detector, 5-point predictor and `get_face_chip`, so the reference side uses no facetrail code.
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import dlib
import face_recognition_models
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from facetrail.config import Settings
from facetrail.errors import FacetrailError, ModelError
from facetrail.media import load_image
from facetrail.vision import models
from facetrail.vision.descriptor import (
    WINOGRAD_BATCH,
    DlibResnet,
    FlipAveraged,
    OnnxDescriptor,
)
from facetrail.vision.dlib_format import read_layers
from facetrail.vision.pipeline import build_descriptor
from facetrail.vision.resnet_onnx import build_resnet_graph

# One face each, from six different real images (three sources).
CHIP_IMAGES = (
    "examples/face_recognition/obama.jpg",
    "examples/face_recognition/obama2.jpg",
    "examples/face_recognition/biden.jpg",
    "lfw/Eric_Daze/Eric_Daze_0001.jpg",
    "lfw/Judy_Genshaft/Judy_Genshaft_0001.jpg",
    "deepface/img1.jpg",
)
# The acceptance criterion for the port.
MAX_DIFF_VS_DLIB = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def resnet(cache_dir: Path) -> DlibResnet:
    return DlibResnet(cache_dir)


@pytest.fixture(scope="module")
def dlib_reference():
    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


@pytest.fixture(scope="module")
def chips(shared_data: Path) -> np.ndarray:
    """(6, 150, 150, 3) chips made by dlib alone: detector, 5-point predictor, get_face_chip."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(
        face_recognition_models.pose_predictor_five_point_model_location()
    )
    out = []
    for relative in CHIP_IMAGES:
        path = shared_data / relative
        if not path.is_file():
            pytest.skip(f"shared test image missing: {relative}")
        image = np.ascontiguousarray(load_image(path).pixels)
        # Big faces need no upsampling; the 150 px LFW thumbnails need dlib's default one.
        rects = detector(image, 0 if min(image.shape[:2]) > 400 else 1)
        assert len(rects) >= 1, relative
        largest = max(rects, key=lambda r: r.area())
        shape = predictor(image, largest)
        out.append(dlib.get_face_chip(image, shape, size=150, padding=0.25))
    return np.stack(out)


@pytest.fixture(scope="module")
def reference_descriptors(chips: np.ndarray, dlib_reference) -> np.ndarray:
    return np.array([dlib_reference.compute_face_descriptor(chip) for chip in chips], np.float32)


# --- the port against dlib ---------------------------------------------------------------


def test_matches_dlib_on_real_chips(resnet, chips, reference_descriptors):
    ours = resnet.describe(chips)
    assert ours.shape == (len(CHIP_IMAGES), 128)
    assert ours.dtype == np.float32
    diff = np.abs(ours - reference_descriptors).max()
    assert diff <= MAX_DIFF_VS_DLIB, f"max abs difference vs dlib {diff:.3g}"


def test_large_batches_run_the_winograd_graph_within_dlibs_tolerance(
    resnet, chips, reference_descriptors, cache_dir
):
    tiled = np.concatenate([chips, chips[::-1]])
    assert len(tiled) >= WINOGRAD_BATCH > len(chips)
    ours = resnet.describe(tiled)
    assert any(p.name.endswith("_winograd.onnx") for p in cache_dir.iterdir())
    diff = np.abs(ours - np.concatenate([reference_descriptors, reference_descriptors[::-1]]))
    assert diff.max() <= MAX_DIFF_VS_DLIB, f"max abs difference vs dlib {diff.max():.3g}"
    # The same descriptors as the plain graph's for small batches: one gallery, either graph.
    np.testing.assert_allclose(ours[: len(chips)], resnet.describe(chips), atol=2e-6)


def test_descriptors_tell_people_apart(resnet, chips):
    # EXPECTATIONS.md (face_recognition): obama2 matches obama, biden does not (distance 0.6).
    d = resnet.describe(chips[:3])
    assert np.linalg.norm(d[0] - d[1]) <= 0.6
    assert np.linalg.norm(d[0] - d[2]) > 0.6


def test_batch_result_equals_per_chip(resnet, chips, cache_dir):
    batch = resnet.describe(chips)
    single = np.concatenate([resnet.describe(chips[i : i + 1]) for i in range(len(chips))])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    # Split into ONNX Runtime batches of 4 (6 chips: 4 + 2) by the model itself.
    small_batches = DlibResnet(cache_dir, batch_size=4).describe(chips)
    np.testing.assert_allclose(small_batches, batch, atol=1e-5)
    # The order of chips in a batch does not matter either.
    order = np.array([5, 3, 1, 0, 2, 4])
    np.testing.assert_allclose(resnet.describe(chips[order]), batch[order], atol=1e-5)


def test_empty_input(resnet):
    out = resnet.describe(np.zeros((0, 150, 150, 3), np.uint8))
    assert out.shape == (0, 128)


# --- the cached graph --------------------------------------------------------------------


def test_graph_is_cached_under_the_dat_hash(resnet, cache_dir):
    digest = hashlib.sha256(models.descriptor_dat().read_bytes()).hexdigest()
    path = resnet.onnx_path
    assert path.parent == cache_dir
    assert digest[:16] in path.name
    assert resnet.id == f"dlib-resnet-v1:{digest[:12]}"
    before = path.stat().st_mtime_ns
    again = DlibResnet(cache_dir)
    assert again.onnx_path == path
    assert path.stat().st_mtime_ns == before, "the cached graph was rebuilt"
    # The atomic writes leave nothing else behind: the graph, and the one for large batches.
    assert {p.name for p in cache_dir.iterdir()} <= {path.name, f"{path.stem}_winograd.onnx"}


def test_damaged_cached_graph_is_rebuilt(tmp_path, chips, reference_descriptors):
    first = DlibResnet(tmp_path / "not" / "yet" / "there")  # the folder is made on demand
    first.onnx_path.write_bytes(first.onnx_path.read_bytes()[:1000])  # a torn copy
    second = DlibResnet(first.onnx_path.parent)
    assert second.onnx_path == first.onnx_path
    assert np.abs(second.describe(chips[:2]) - reference_descriptors[:2]).max() <= MAX_DIFF_VS_DLIB


# --- a licensed ONNX model plugged in by configuration ------------------------------------


def test_onnx_descriptor_on_the_cached_graph(resnet, chips):
    plugged = OnnxDescriptor(resnet.onnx_path, chip_size=150)
    assert plugged.id.startswith(f"onnx:{resnet.onnx_path.stem}:")
    assert plugged.dim == 128
    np.testing.assert_allclose(plugged.describe(chips), resnet.describe(chips), atol=1e-6)
    assert plugged.describe(chips[:0]).shape == (0, 128)


def _float_model(path: Path, size: int, flatten_only: bool) -> Path:
    """A float NCHW model: global average pool per channel, or the normalised input itself."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, size, size])
    if flatten_only:
        nodes = [helper.make_node("Flatten", ["input"], ["embedding"], axis=1)]
        out_dim = 3 * size * size
    else:
        nodes = [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
        ]
        out_dim = 3
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", out_dim])
    graph = helper.make_graph(nodes, "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_float_model_gets_normalised_nchw_input(tmp_path):
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)
    model = OnnxDescriptor(
        _float_model(tmp_path / "pool.onnx", 112, False), chip_size=112, mean=100.0, std=50.0
    )
    assert model.dim == 3
    expected = (chips.astype(np.float64).mean(axis=(1, 2)) - 100.0) / 50.0
    np.testing.assert_allclose(model.describe(chips), expected, atol=1e-5)


def test_float_model_sees_every_pixel_in_place(tmp_path):
    # Flatten of the input itself: checks the layout (N, C, H, W) element by element, with a
    # batch size that splits the input, not just the per-channel means.
    rng = np.random.default_rng(1)
    chips = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    model = OnnxDescriptor(
        _float_model(tmp_path / "flat.onnx", 8, True),
        chip_size=8,
        mean=127.5,
        std=128.0,
        batch_size=2,
    )
    expected = ((chips.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 128.0).reshape(5, -1)
    out = model.describe(chips)
    assert out.shape == (5, 3 * 8 * 8)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_settings_select_an_onnx_model(tmp_path):
    path = _float_model(tmp_path / "licensed.onnx", 112, False)
    common = {"data": tmp_path / "data", "descriptor": "onnx", "onnx_model": path}
    plain = build_descriptor(
        Settings(**common, onnx_input_size=112, onnx_mean=0.0, onnx_std=1.0, flip_average=False)
    )
    assert isinstance(plain, OnnxDescriptor)
    assert plain.chip_size == 112
    chips = np.full((2, 112, 112, 3), 7, np.uint8)
    np.testing.assert_allclose(plain.describe(chips), np.full((2, 3), 7.0), atol=1e-6)
    flipped = build_descriptor(Settings(**common, onnx_input_size=112))
    assert isinstance(flipped, FlipAveraged)
    assert flipped.id == plain.id + "+flip"
    # Nothing was built for the default model: no graph in the cache.
    assert not (tmp_path / "data" / "cache").exists()


def test_settings_with_a_missing_or_broken_model(tmp_path):
    with pytest.raises(ModelError):
        build_descriptor(
            Settings(data=tmp_path, descriptor="onnx", onnx_model=tmp_path / "nowhere.onnx")
        )
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    with pytest.raises(ModelError):
        build_descriptor(Settings(data=tmp_path, descriptor="onnx", onnx_model=broken))
    with pytest.raises(FacetrailError):
        build_descriptor(Settings(data=tmp_path, descriptor="onnx"))


# --- reading dlib's .dat files -----------------------------------------------------------


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return models.descriptor_dat().read_bytes()


def test_resnet_layer_counts(dat_bytes):
    layers = read_layers(dat_bytes, expect_head="loss_metric_2")
    counts = collections.Counter(layer.kind for layer in layers)
    assert counts == {
        "input_rgb_image_sized": 1,
        "con_4": 29,
        "affine_": 29,
        "relu_": 29,
        "add_prev_": 14,
        "avg_pool_2": 5,
        "max_pool_2": 1,
        "fc_2": 1,
    }
    assert layers[0].kind == "input_rgb_image_sized"
    assert layers[0].ints == {"nr": 150, "nc": 150}
    assert layers[-1].kind == "fc_2"
    assert layers[-1].ints["num_inputs"] == 256
    assert layers[-1].ints["num_outputs"] == 128


@pytest.mark.parametrize("fraction", [0.0, 1e-7, 1e-6, 1e-4, 0.25, 0.5, 0.9, 0.9999])
def test_truncated_resnet_file_is_refused(dat_bytes, fraction):
    cut = dat_bytes[: int(len(dat_bytes) * fraction)]
    with pytest.raises(ModelError):
        read_layers(cut, expect_head="loss_metric_2")


def test_file_cut_between_two_records_is_refused_by_the_builder(dat_bytes):
    # A cut exactly at a record boundary leaves a well-formed prefix; the graph builder then
    # finds no final fully connected layer.
    layers = read_layers(dat_bytes, expect_head="loss_metric_2")
    middle = layers[len(layers) // 2]
    cut = middle.offset - 2 - len(middle.kind)
    assert len(read_layers(dat_bytes[:cut], expect_head="loss_metric_2")) < len(layers)
    with pytest.raises(ModelError):
        build_resnet_graph(dat_bytes[:cut])


@pytest.mark.parametrize(
    ("location", "head"),
    [
        ("pose_predictor_five_point_model_location", "loss_metric_2"),  # not a DNN at all
        ("cnn_face_detector_model_location", "loss_metric_2"),  # a DNN of another kind
        ("face_recognition_model_location", "loss_mmod_"),
    ],
)
def test_wrong_kind_of_file_is_refused(location, head):
    data = Path(getattr(face_recognition_models, location)()).read_bytes()
    with pytest.raises(ModelError) as caught:
        read_layers(data, expect_head=head)
    # One clear line, not a dump of the file's bytes.
    assert len(str(caught.value)) < 200


def _dlib_int(value: int) -> bytes:
    """dlib's serialised integer: a header byte (size, 0x80 for negative) then little-endian."""
    magnitude = abs(value)
    body = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def test_tensor_with_negative_dimensions_is_refused():
    head = _dlib_int(1) + _dlib_int(len("loss_metric_2")) + b"loss_metric_2"
    fc = b"\x01\x04fc_2" + _dlib_int(128) + _dlib_int(256)
    tensor = _dlib_int(2) + b"".join(_dlib_int(v) for v in (-1, -1, 1, 1)) + bytes(4)
    with pytest.raises(ModelError):
        read_layers(head + fc + tensor + bytes(64), expect_head="loss_metric_2")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_bytes_raise_model_error_only(dat_bytes, data):
    # The first records (input, first convolution, ...) with a few bytes overwritten, then cut.
    prefix = bytearray(dat_bytes[:40_000])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(prefix) - 1))
        prefix[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(prefix)))
    try:
        layers = read_layers(bytes(prefix[:cut]), expect_head="loss_metric_2")
    except ModelError:
        return
    assert layers


# --- flip averaging ----------------------------------------------------------------------


def test_flip_averaged_is_mirror_symmetric(resnet, chips):
    flip = FlipAveraged(resnet)
    assert flip.id == resnet.id + "+flip"
    assert flip.id.endswith("+flip")
    assert (flip.chip_size, flip.chip_padding, flip.dim) == (150, 0.25, 128)
    mirrored = np.ascontiguousarray(chips[:, :, ::-1])
    a, b = flip.describe(chips), flip.describe(mirrored)
    assert a.shape == (len(chips), 128)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # It is the mean of the two plain descriptors, and not the plain descriptor itself.
    plain, plain_mirrored = resnet.describe(chips), resnet.describe(mirrored)
    np.testing.assert_allclose(a, (plain + plain_mirrored) / 2, atol=1e-5)
    assert np.abs(a - plain).max() > 1e-3
    assert flip.describe(chips[:0]).shape == (0, 128)


def test_mirrored_graph_equals_flip_averaging(resnet, chips, cache_dir):
    """The shipped default mirrors inside the graph: the same descriptors under the same id
    as `FlipAveraged`, in batches of any size, without a host-side copy of the chips."""
    mirrored = DlibResnet(cache_dir, batch_size=3, mirror=True)
    outside = FlipAveraged(resnet)
    assert mirrored.id == outside.id
    assert mirrored.onnx_path != resnet.onnx_path
    np.testing.assert_allclose(mirrored.describe(chips), outside.describe(chips), atol=1e-6)
    assert mirrored.describe(chips[:0]).shape == (0, 128)
    # A large batch, through the mirrored Winograd graph: the same again.
    twice = np.concatenate([chips, chips])
    large = DlibResnet(cache_dir, mirror=True).describe(twice)
    np.testing.assert_allclose(large, outside.describe(twice), atol=1e-6)
    settings = Settings(data=cache_dir.parent / "data")
    built = build_descriptor(settings)
    assert isinstance(built, DlibResnet) and built.id == outside.id


def test_flip_averaged_onnx_descriptor_on_empty_input(resnet):
    flip = FlipAveraged(OnnxDescriptor(resnet.onnx_path, chip_size=150))
    assert flip.describe(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
