"""Still-image loading: real files, every hostile input we can think of, and the pixel modes."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facetrail.errors import MediaError
from facetrail.media import IMAGE_SUFFIXES, LoadedImage, load_image
from facetrail.media.chips import PNG_MAGIC, as_png, chip_bytes, png_bytes

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def shared(relative: str) -> Path:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"shared test data not present: {relative} (expected under {DATA})")
    return path


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def crafted_png(width: int, height: int, idat: bytes, *, bit_depth: int = 1) -> bytes:
    """A grayscale PNG whose header says whatever we like, with the IDAT we give it."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def quadrants(width: int = 40, height: int = 20) -> Image.Image:
    """Four flat colours, one per quarter: easy to recognise after rotation, even as JPEG."""
    a = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    a[:h, :w] = (255, 0, 0)
    a[:h, w:] = (0, 255, 0)
    a[h:, :w] = (0, 0, 255)
    a[h:, w:] = (255, 255, 0)
    return Image.fromarray(a)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_rgb(img: LoadedImage) -> None:
    p = img.pixels
    assert p.dtype == np.uint8
    assert p.ndim == 3 and p.shape[2] == 3
    assert p.flags.c_contiguous
    assert (img.height, img.width) == p.shape[:2]


# --- the ordinary case --------------------------------------------------------------------


def test_jpeg_from_path_keeps_bytes_and_hash(tmp_path: Path) -> None:
    data = encode(quadrants(), "JPEG", quality=95)
    img = load_image(write(tmp_path, "photo.jpg", data))
    assert_rgb(img)
    assert (img.width, img.height) == (40, 20)
    assert img.data == data
    assert img.sha256 == hashlib.sha256(data).hexdigest()
    assert (img.format, img.name, img.orientation, img.frames) == ("JPEG", "photo.jpg", 1, 1)
    assert np.abs(img.pixels[2, 2].astype(int) - (255, 0, 0)).max() < 8


def test_pixels_are_read_only() -> None:
    img = load_image(encode(quadrants(), "PNG"))
    with pytest.raises(ValueError):
        img.pixels[0, 0, 0] = 1


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_source(kind: type) -> None:
    data = encode(quadrants(), "PNG")
    img = load_image(kind(data))
    assert img.name == "<bytes>"
    assert img.data == data and isinstance(img.data, bytes)
    np.testing.assert_array_equal(img.pixels, np.asarray(quadrants()))


def test_str_path_and_pathlike_agree(tmp_path: Path) -> None:
    path = write(tmp_path, "a.png", encode(quadrants(), "PNG"))
    assert load_image(str(path)).sha256 == load_image(path).sha256


def test_format_comes_from_content_not_suffix(tmp_path: Path) -> None:
    img = load_image(write(tmp_path, "really_a_png.jpg", encode(quadrants(), "PNG")))
    assert img.format == "PNG"
    np.testing.assert_array_equal(img.pixels, np.asarray(quadrants()))


def test_wrong_source_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


def test_image_suffixes() -> None:
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_SUFFIXES
    assert {".ppm", ".pgm"} <= IMAGE_SUFFIXES
    assert ".mp4" not in IMAGE_SUFFIXES and ".txt" not in IMAGE_SUFFIXES


# --- files that are not there or not files --------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as e:
        load_image(tmp_path / "x.jpg")
    assert str(e.value) == "x.jpg: file does not exist"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(MediaError, match=r"^album\.jpg: is a directory"):
        load_image(tmp_path / "album.jpg")


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^e\.png: file is empty$"):
        load_image(write(tmp_path, "e.png", b""))
    with pytest.raises(MediaError, match=r"^<bytes>: no data"):
        load_image(b"")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(MediaError, match=r"^pipe\.jpg: not a regular file$"):
        load_image(tmp_path / "pipe.jpg")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads files whatever their permissions",
)
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.png", encode(quadrants(), "PNG"))
    path.chmod(0)
    try:
        with pytest.raises(MediaError, match=r"^locked\.png: file cannot be read"):
            load_image(path)
    finally:
        path.chmod(0o600)


def test_file_over_max_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "big.png", encode(quadrants(), "PNG"))
    with pytest.raises(MediaError) as e:
        load_image(path, max_bytes=100)
    assert str(e.value).startswith("big.png: file is ")
    assert "above the limit of 100 bytes" in str(e.value)
    with pytest.raises(MediaError, match="above the limit of 100 bytes"):
        load_image(path.read_bytes(), max_bytes=100)


def test_messages_name_the_file_not_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "secret-case-folder"
    folder.mkdir()
    with pytest.raises(MediaError) as e:
        load_image(write(folder, "notes.jpg", b"meeting at noon\n" * 10))
    assert str(e.value) == "notes.jpg: not an image file (unrecognised format)"
    assert "secret-case-folder" not in str(e.value)


def test_control_characters_in_names_do_not_reach_messages(tmp_path: Path) -> None:
    path = write(tmp_path, "a\nFORGED LINE\x1b[31m.jpg", b"text")
    with pytest.raises(MediaError) as e:
        load_image(path)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert load_image(write(tmp_path, "b\n.png", encode(quadrants(), "PNG"))).name == "b\n.png"


# --- not images, damaged images --------------------------------------------------------------


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        b"just some text, not a picture\n",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        _zip_bytes(),
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"\x00",
    ],
    ids=["text", "pdf", "zip", "random", "one-byte"],
)
def test_non_image_bytes(data: bytes) -> None:
    with pytest.raises(MediaError, match=r"^<bytes>: not an image file \(unrecognised format\)$"):
        load_image(data)


def test_formats_outside_the_allow_list_are_not_parsed() -> None:
    # Pillow reads ICO (and EPS, PSD, ...) but facetrail does not hand probes to those parsers.
    with pytest.raises(MediaError, match="not an image file"):
        load_image(encode(quadrants(32, 32), "ICO"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_image(fmt: str) -> None:
    rng = np.random.default_rng(2)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    if fmt == "GIF":
        noise = noise.convert("P")
    data = encode(noise, fmt)
    with pytest.raises(MediaError) as e:
        load_image(data[: len(data) // 2])
    assert str(e.value) == "<bytes>: truncated or corrupt image data"


def test_truncated_jpeg_from_file_names_the_file(tmp_path: Path) -> None:
    data = encode(Image.fromarray(np.full((64, 64, 3), 90, np.uint8)), "JPEG")
    with pytest.raises(MediaError) as e:
        load_image(write(tmp_path, "t.jpg", data[: len(data) - 200]))
    assert str(e.value) == "t.jpg: truncated or corrupt image data"


def test_corrupt_png_data() -> None:
    data = bytearray(encode(quadrants(), "PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 8] = b"\xff" * 8
    with pytest.raises(MediaError, match=r"^<bytes>: truncated or corrupt image data$"):
        load_image(bytes(data))


def test_corrupt_header_after_a_valid_signature() -> None:
    with pytest.raises(MediaError, match=r"^<bytes>: truncated or corrupt image data$"):
        load_image(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 30)


# --- size limits ----------------------------------------------------------------------------


def test_header_claiming_900_megapixels_is_refused_before_decoding() -> None:
    data = crafted_png(30000, 30000, zlib.compress(b"\x00" * 10))
    assert len(data) < 100
    with pytest.raises(MediaError) as e:
        load_image(data)
    assert str(e.value) == "<bytes>: image is 900 megapixels, above the limit of 50 megapixels"


def test_our_limit_reports_dimensions() -> None:
    data = crafted_png(9000, 9000, zlib.compress(b"\x00" * 10))
    with pytest.raises(MediaError) as e:
        load_image(data)
    assert str(e.value) == (
        "<bytes>: image is 9000x9000 (81 megapixels), above the limit of 50 megapixels"
    )


def test_max_pixels_is_per_call() -> None:
    data = encode(quadrants(40, 20), "PNG")
    with pytest.raises(MediaError, match=r"image is 40x20 \(800 pixels\), above the limit of 799"):
        load_image(data, max_pixels=799)
    assert load_image(data, max_pixels=800).width == 40


def test_real_decompression_bomb_emits_no_warning_and_leaves_filters_alone() -> None:
    # A genuine, fully valid 10000x10000 PNG of 12 kB: 100 megapixels, above Pillow's own
    # warning threshold, so this exercises the warning-turned-error path.
    row = b"\x00" + b"\x00" * (10000 // 8)
    data = crafted_png(10000, 10000, zlib.compress(row * 10000, 9))
    assert len(data) < 50_000
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MediaError, match="100 megapixels, above the limit of 50 megapixels"):
            load_image(data)
    assert caught == []
    assert warnings.filters == before


def test_concurrent_loads_leave_warning_filters_as_they_were() -> None:
    before = list(warnings.filters)
    bomb = crafted_png(10000, 10000, zlib.compress(b"\x00" * 10))
    good = encode(quadrants(), "PNG")
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(20):
            try:
                load_image(good)
                with pytest.raises(MediaError):
                    load_image(bomb)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert warnings.filters == before


# --- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_first_frame_and_counts_frames(fmt: str) -> None:
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    params: dict[str, object] = {"save_all": True, "append_images": [blue], "duration": 100}
    if fmt == "WEBP":
        params["lossless"] = True
    img = load_image(encode(red, fmt, **params))
    assert img.frames == 2
    assert_rgb(img)
    assert np.all(img.pixels == (255, 0, 0))


def test_multi_picture_jpeg_from_a_phone_uses_the_main_picture() -> None:
    main = Image.new("RGB", (16, 16), (0, 200, 0))
    data = encode(main, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))])
    img = load_image(data)
    assert (img.format, img.frames) == ("MPO", 2)
    assert np.abs(img.pixels.astype(int) - (0, 200, 0)).max() < 8


def test_multipage_tiff_uses_first_page() -> None:
    pages = [Image.new("L", (8, 8), v) for v in (10, 200, 90)]
    img = load_image(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert (img.frames, img.format) == (3, "TIFF")
    assert np.all(img.pixels == 10)


# --- pixel modes ----------------------------------------------------------------------------


def test_grayscale_becomes_equal_channels() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = load_image(encode(Image.fromarray(gray), "PNG"))
    for c in range(3):
        np.testing.assert_array_equal(img.pixels[:, :, c], gray)


def test_bilevel_image() -> None:
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((3, 3), 1)
    img = load_image(encode(bits, "PNG"))
    assert img.pixels[3, 3].tolist() == [255, 255, 255]
    assert img.pixels[0, 0].tolist() == [0, 0, 0]


def test_opaque_rgba_drops_alpha_exactly() -> None:
    rgb = np.asarray(quadrants())
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    img = load_image(encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(img.pixels, rgb)


def test_transparency_is_composited_over_white() -> None:
    a = np.zeros((4, 3, 4), np.uint8)
    a[0] = (255, 0, 0, 255)  # opaque red stays red
    a[1] = (255, 0, 0, 0)  # fully transparent red becomes white
    a[2] = (0, 0, 0, 128)  # half-transparent black becomes mid grey
    a[3] = (0, 0, 255, 0)  # transparent blue also white: the hidden colour does not leak
    img = load_image(encode(Image.fromarray(a), "PNG"))
    assert img.pixels[0, 0].tolist() == [255, 0, 0]
    assert img.pixels[1, 0].tolist() == [255, 255, 255]
    assert np.abs(img.pixels[2, 0].astype(int) - 127).max() <= 1
    assert img.pixels[3, 0].tolist() == [255, 255, 255]


def test_gray_with_alpha() -> None:
    la = Image.new("LA", (2, 1), (40, 255))
    la.putpixel((1, 0), (40, 0))
    img = load_image(encode(la, "PNG"))
    assert img.pixels[0].tolist() == [[40, 40, 40], [255, 255, 255]]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_and_without_transparency(fmt: str) -> None:
    pal = Image.new("P", (4, 1), 0)
    pal.putpalette([10, 20, 30, 0, 0, 255] + [0] * (254 * 3))
    pal.putpixel((2, 0), 1)
    plain = load_image(encode(pal, fmt))
    assert plain.pixels[0].tolist() == [[10, 20, 30], [10, 20, 30], [0, 0, 255], [10, 20, 30]]
    see_through = load_image(encode(pal, fmt, transparency=0))
    assert see_through.pixels[0, 0].tolist() == [255, 255, 255]
    assert see_through.pixels[0, 2].tolist() == [0, 0, 255]


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # full magenta + yellow: red
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = load_image(data)
    assert_rgb(img)
    assert np.abs(img.pixels[8, 8].astype(int) - (255, 0, 0)).max() < 10


def test_cmyk_tiff() -> None:
    img = load_image(encode(Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "TIFF"))
    assert img.pixels[0, 0].tolist() == [0, 255, 255]


def gradient16(width: int = 1024) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (4, 1))


def assert_full_monotone_gray(img: LoadedImage) -> None:
    assert_rgb(img)
    row = img.pixels[0, :, 0]
    assert np.all(np.diff(row.astype(int)) >= 0)
    assert (row.min(), row.max()) == (0, 255)
    assert len(np.unique(row)) == 256  # no clipping, no crushed range
    assert np.all(img.pixels[:, :, 0] == img.pixels[:, :, 2])


def test_16bit_png_gradient_scales_to_full_8bit_range() -> None:
    im = Image.fromarray(gradient16())
    assert im.mode == "I;16"
    assert_full_monotone_gray(load_image(encode(im, "PNG")))


def test_16bit_big_endian_tiff() -> None:
    g = gradient16()
    # Built from raw bytes: Pillow's convert("I;16B") would clip the values to 255 on the way.
    im = Image.frombytes("I;16B", (g.shape[1], g.shape[0]), g.astype(">u2").tobytes())
    data = encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert_full_monotone_gray(load_image(data))


def test_16bit_pgm_opens_as_32bit_and_still_scales() -> None:
    g = gradient16()
    data = b"P5 1024 4 65535\n" + g.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert_full_monotone_gray(load_image(data))


def test_16bit_value_mapping_is_exact_at_the_ends() -> None:
    g = np.array([[0, 257, 32896, 65535]], np.uint16)
    img = load_image(encode(Image.fromarray(g), "PNG"))
    assert img.pixels[0, :, 0].tolist() == [0, 1, 128, 255]


def test_32bit_integer_tiff_is_stretched() -> None:
    values = np.tile(np.linspace(-(2**30), 2**30, 256).astype(np.int32), (2, 1))
    img = load_image(encode(Image.fromarray(values), "TIFF"))
    row = img.pixels[0, :, 0]
    assert (row[0], row[-1]) == (0, 255)
    assert np.all(np.diff(row.astype(int)) >= 0)


def test_float_tiff_in_unit_range_is_scaled() -> None:
    values = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (2, 1))
    img = load_image(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_array_equal(img.pixels[0, :, 0], np.arange(256))


def test_float_tiff_outside_unit_range_is_clipped() -> None:
    values = np.array([[-50.0, 0.0, 100.4, 300.0, np.nan]], np.float32)
    img = load_image(encode(Image.fromarray(values), "TIFF"))
    assert img.pixels[0, :, 0].tolist() == [0, 0, 100, 255, 0]


def test_lab_tiff_becomes_the_colour_it_describes() -> None:
    white = Image.new("LAB", (2, 2), (255, 128, 128))  # L=100, a=b=0
    img = load_image(encode(white, "TIFF"))
    assert np.all(img.pixels >= 250)


def test_ycbcr_jpeg_without_subsampling_is_accurate() -> None:
    rgb = quadrants(32, 32)
    img = load_image(encode(rgb, "JPEG", quality=100, subsampling=0))
    assert np.abs(img.pixels.astype(int) - np.asarray(rgb)).max() <= 3


# --- EXIF orientation -----------------------------------------------------------------------

UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def with_orientation(im: Image.Image, value: int, fmt: str, **params: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(im, fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    img = load_image(with_orientation(Image.fromarray(stored), orientation, "PNG"))
    assert img.orientation == orientation
    np.testing.assert_array_equal(img.pixels, UPRIGHT[orientation](stored))
    assert img.pixels.flags.c_contiguous


def test_jpeg_saved_with_orientation_6_comes_back_upright(tmp_path: Path) -> None:
    # Stored 40 wide and 20 high, red top-left; a camera held on its side writes orientation 6
    # ("rotate 90 degrees clockwise to view"), so upright it is 20 wide and 40 high with the
    # stored top-left (red) now at the top-right.
    data = with_orientation(quadrants(40, 20), 6, "JPEG", quality=95)
    img = load_image(write(tmp_path, "sideways.jpg", data))
    assert (img.width, img.height, img.orientation) == (20, 40, 6)

    def near(y: int, x: int, colour: tuple[int, int, int]) -> bool:
        return bool(np.abs(img.pixels[y, x].astype(int) - colour).max() < 12)

    assert near(2, 17, (255, 0, 0))  # top-right: stored top-left
    assert near(37, 17, (0, 255, 0))  # bottom-right: stored top-right
    assert near(2, 2, (0, 0, 255))  # top-left: stored bottom-left
    assert near(37, 2, (255, 255, 0))  # bottom-left: stored bottom-right


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_out_of_range_orientation_is_ignored(value: int) -> None:
    img = load_image(with_orientation(quadrants(), value, "PNG"))
    assert img.orientation == 1
    np.testing.assert_array_equal(img.pixels, np.asarray(quadrants()))


def test_orientation_in_webp() -> None:
    data = with_orientation(quadrants(), 8, "WEBP", lossless=True)
    img = load_image(data)
    assert (img.width, img.height, img.orientation) == (20, 40, 8)
    np.testing.assert_array_equal(img.pixels, np.rot90(np.asarray(quadrants()), 1))


# --- real files -----------------------------------------------------------------------------


def test_real_rgba_png_with_opaque_alpha() -> None:
    path = shared("examples/face_recognition/test_images/32bit.png")
    img = load_image(path)
    assert (img.format, img.name) == ("PNG", "32bit.png")
    assert img.pixels.shape == (1200, 626, 3)
    np.testing.assert_array_equal(img.pixels, np.asarray(Image.open(path).convert("RGB")))


def test_real_webp_named_jpg() -> None:
    img = load_image(shared("deepface/img47.jpg"))
    assert img.format == "WEBP"
    assert img.pixels.shape == (1800, 1350, 3)
    assert_rgb(img)


@pytest.mark.parametrize(
    "relative",
    [
        "deepface/img1.jpg",
        "deepface/couple.jpg",
        "examples/face_recognition/test_images/obama.jpg",
    ],
)
def test_real_jpegs_decode_at_full_resolution_exactly_as_pillow(relative: str) -> None:
    path = shared(relative)
    img = load_image(path)
    assert img.format == "JPEG"
    with Image.open(path) as ref:
        expected = np.asarray(ref.convert("RGB"))
    np.testing.assert_array_equal(img.pixels, expected)
    assert img.data == path.read_bytes()


# --- property: untrusted bytes only ever give an image or a MediaError ----------------------


def _seeds() -> list[bytes]:
    small = quadrants(12, 10)
    return [
        encode(small, "PNG"),
        encode(small, "JPEG"),
        encode(small.convert("P"), "GIF"),
        encode(small, "WEBP"),
        encode(small, "BMP"),
        encode(small, "TIFF"),
        encode(small, "PPM"),
        encode(small.convert("RGBA"), "PNG"),
    ]


def _check_result(data: bytes) -> None:
    try:
        img = load_image(data, max_pixels=1_000_000)
    except MediaError as e:
        assert str(e).startswith("<bytes>: ")
        assert "\n" not in str(e)
        return
    assert_rgb(img)
    assert img.width * img.height <= 1_000_000


# Pillow warns about metadata it skips in damaged files; the outcome is what is tested here.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_an_image_or_a_media_error(data: bytes) -> None:
    _check_result(data)


# Pillow warns about metadata it skips in damaged files; the outcome is what is tested here.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_seeds()),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_real_encodings_give_an_image_or_a_media_error(
    seed: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(seed)
    for where, value in edits:
        data[where % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _check_result(bytes(data))


# --- stored face chips (media.chips) ---------------------------------------------------------


def test_chips_are_stored_lossless_and_served_as_png():
    rng = np.random.default_rng(7)
    chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)  # noise: nothing to smooth away
    stored = chip_bytes(chip)
    assert stored[:4] == b"RIFF" and stored[8:12] == b"WEBP"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), chip)
    png = as_png(stored)
    assert png.startswith(PNG_MAGIC)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), chip)
    # A chip stored as PNG by an earlier version is served as it is.
    old = png_bytes(chip)
    assert as_png(old) is old
