"""The Python API (`facetrail.open`) over a real data directory: enrol, search, verify, erase."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facetrail
from conftest import CASE, Team
from facetrail.errors import InvalidInputError, MediaError, NoFaceError, NotFoundError
from facetrail.media import load_image
from facetrail.vision.compare import normalise

FR = "examples/face_recognition"


@pytest.fixture()
def ft(team: Team):
    """The administrator's handle (enrol, erase)."""
    with team.open("admin") as handle:
        yield handle


@pytest.fixture()
def inv(ft: facetrail.Facetrail, team: Team) -> facetrail.Facetrail:
    """The investigator's handle on the same store (search, verify in case CASE)."""
    handle = ft.as_caller(None)
    handle.use_token(team.tokens["investigator"])
    return handle


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_open_enrol_search_verify(
    ft: facetrail.Facetrail, inv: facetrail.Facetrail, shared_data: Path
) -> None:
    report = ft.enrol([shared_data / FR / "knn_examples/train"])
    assert report.enrolled == 9 and not report.skipped
    found = inv.search(
        [shared_data / FR / "knn_examples/test/kit_with_rose.jpg"], case=CASE, top_k=2
    )
    tops = sorted(f.candidates[0].subject for f in found.probes[0].faces)
    assert tops == ["kit_harington", "rose_leslie"]
    same = inv.verify(shared_data / FR / "obama.jpg", shared_data / FR / "obama2.jpg", case=CASE)
    assert same.match and same.fmr is not None and same.fmr < 1e-3


def test_templates_are_stored_and_reloaded_exactly(team: Team, shared_data: Path) -> None:
    with team.open("admin") as ft:
        ft.enrol([shared_data / FR / "obama.jpg"], subject="obama")
        model = ft.analyzer.model_id
        image = load_image(shared_data / FR / "obama.jpg").pixels
        expected = normalise(ft.analyzer.analyse(image, mode="primary").descriptors)[0]
    with facetrail.open(team.data) as again:
        stored = again.store.templates(model)
    assert stored.vectors.shape == (1, 128)
    assert stored.vectors[0].tobytes() == expected.astype(np.float32).tobytes()


def test_erase_leaves_no_trace(
    ft: facetrail.Facetrail, inv: facetrail.Facetrail, shared_data: Path
) -> None:
    ft.enrol([shared_data / FR / "knn_examples/train"])
    model = ft.analyzer.model_id
    matrix = ft.store.templates(model)
    obama_id = next(s.id for s in ft.subjects() if s.name == "obama")
    obama_vectors = matrix.vectors[matrix.subject_ids == obama_id]
    obama_images = [
        p.read_bytes() for p in (shared_data / FR / "knn_examples/train/obama").iterdir()
    ]
    ft.erase("obama")
    on_disk = _all_bytes(ft.settings.data)
    for vector in obama_vectors:
        assert vector.tobytes() not in on_disk
    for data in obama_images:
        assert data[:4096] not in on_disk  # the original files' bytes are gone from the store
    assert "obama" not in {s.name for s in ft.subjects()}
    with pytest.raises(NotFoundError):
        ft.subject("obama")
    probe = inv.search(
        [shared_data / FR / "knn_examples/test/obama1.jpg"], case=CASE, include_below=True
    )
    assert all(c.subject != "obama" for f in probe.probes[0].faces for c in f.candidates)
    biden = ft.store.templates(model)
    assert len(biden) == len(matrix) - len(obama_vectors)


def test_exif_rotated_photo_is_turned_upright(
    ft: facetrail.Facetrail, inv: facetrail.Facetrail, shared_data: Path, tmp_path: Path
) -> None:
    upright = Image.open(shared_data / FR / "obama.jpg")
    # Store the pixels lying on their side, with the EXIF tag that says how to turn them back.
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.jpg"
    sideways.save(path, exif=exif.tobytes(), quality=95)
    report = ft.enrol([path], subject="obama")
    assert report.enrolled == 1
    detail = ft.subject("obama")
    assert (detail.images[0].width, detail.images[0].height) == upright.size
    result = inv.verify(path, shared_data / FR / "obama2.jpg", case=CASE)
    assert result.match


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda src: src[: len(src) // 3], "truncated"),
        (lambda src: b"GIF89a" + b"\x00" * 50, "corrupt"),
        (lambda src: b"just some text\n" * 20, "not an image"),
    ],
)
def test_bad_reference_is_skipped_and_store_unchanged(
    ft: facetrail.Facetrail, shared_data: Path, tmp_path: Path, make, reason: str
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(make((shared_data / FR / "obama.jpg").read_bytes()))
    generation = ft.store.generation()
    report = ft.enrol([bad], subject="x")
    assert report.enrolled == 0 and reason in report.skipped[0].reason
    assert ft.store.generation() == generation
    assert ft.subjects() == []
    assert not [p for p in (ft.settings.data / "blobs").rglob("*") if p.is_file()]


def test_image_formats_enrol_or_search(
    ft: facetrail.Facetrail, shared_data: Path, tmp_path: Path
) -> None:
    """Grayscale, palette, CMYK, 16-bit and RGBA versions of a face photo are all read."""
    photo = Image.open(shared_data / FR / "obama.jpg").convert("RGB")
    variants = {
        "grey.png": photo.convert("L"),
        "palette.png": photo.convert("P", palette=Image.Palette.ADAPTIVE),
        "cmyk.jpg": photo.convert("CMYK"),
        "rgba.png": photo.convert("RGBA"),
        "sixteen.png": Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257),
    }
    for name, image in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if name.endswith("jpg") else "PNG")
        (tmp_path / name).write_bytes(buffer.getvalue())
    report = ft.enrol([tmp_path / n for n in variants], subject="obama")
    assert report.enrolled == len(variants), report.to_dict()


def test_whole_failures_raise_clear_errors(
    ft: facetrail.Facetrail, inv: facetrail.Facetrail, shared_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(MediaError, match="does not exist"):
        inv.verify(tmp_path / "missing.jpg", shared_data / FR / "obama.jpg", case=CASE)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    with pytest.raises(NoFaceError):
        inv.verify(blank, shared_data / FR / "obama.jpg", case=CASE)
    with pytest.raises(InvalidInputError):
        ft.enrol([shared_data / FR / "obama.jpg"])  # a loose image needs a subject
    with pytest.raises(NotFoundError):
        ft.erase("nobody")
    with pytest.raises(InvalidInputError):
        inv.search([blank], case=CASE, threshold=2.0)
