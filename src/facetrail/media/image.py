"""Still images: untrusted bytes in, upright 8-bit RGB pixels out.

Probe images come from anywhere (CCTV exports, social media, phones), so every file is treated
as hostile: its size and pixel count are checked before anything is decoded, only a short
list of common formats is parsed at all, the whole first frame is decoded so that truncation
shows up here and not later as a grey band, and every failure becomes one `MediaError` naming
the file and the reason. What comes out is always the same shape of thing, whatever went in
(palette, 16-bit, CMYK, transparency, EXIF rotation), so the layers above never meet a mode.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from facetrail.errors import MediaError

__all__ = ["IMAGE_SUFFIXES", "LoadedImage", "load_image", "read_image_file"]

# Only these decoders ever see untrusted bytes. Pillow knows many more formats, some of which
# hand the data to outside programs (EPS runs Ghostscript) or to little-used parsers; a probe
# in such a format can be converted by the person who submits it. (Multi-picture JPEGs from
# phones come through the JPEG decoder and report "MPO".)
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")

# Magic numbers distinctive enough to call a file a damaged image rather than not an image.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".mpo",
        ".png",
        ".apng",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".avif",
    }
)

_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_MIB = 1024 * 1024

# warnings.catch_warnings swaps a process-wide filter list and puts it back on exit; two
# threads interleaving their enter/exit would leave one thread's filter installed for good.
# Holding this lock while the filter is in place keeps our own calls from doing that. Only
# the header parse runs under it, so decoding itself still runs in parallel.
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class LoadedImage:
    """One decoded still image and the exact bytes it came from.

    `pixels` is read-only, so the image can be shared between threads and callers without
    anyone changing what the others see; copy it before drawing on it.
    """

    pixels: np.ndarray
    data: bytes
    sha256: str
    format: str
    name: str
    orientation: int
    frames: int

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int = 50_000_000,
    max_bytes: int = 200 * _MIB,
) -> LoadedImage:
    """Read and decode one still image (first frame of an animation), upright, as RGB uint8.

    `source` is a path or the file's bytes. Raises `MediaError` for anything that is not a
    readable image within `max_bytes` of data and `max_pixels` of width x height.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        name = "<bytes>"
        data = bytes(source)
        if not data:
            raise MediaError(f"{name}: no data (empty)")
        if len(data) > max_bytes:
            raise MediaError(
                f"{name}: data is {_size(len(data))}, above the limit of {_size(max_bytes)}"
            )
    elif isinstance(source, str | os.PathLike):
        path = os.fsdecode(os.fspath(source))
        name = os.path.basename(path.rstrip("/\\")) or path
        data = _read_file(path, _printable(name), max_bytes)
    else:
        raise TypeError(f"load_image expects a path or bytes, not {type(source).__name__}")

    pixels, fmt, orientation, frames = _decode(data, _printable(name), max_pixels)
    return LoadedImage(
        pixels=pixels,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        name=name,
        orientation=orientation,
        frames=frames,
    )


def read_image_file(path: str | os.PathLike[str], *, max_bytes: int = 200 * _MIB) -> bytes:
    """The bytes of an image file, undecoded, with `load_image`'s checks and messages (for
    a process that ships files to be decoded elsewhere)."""
    text = os.fsdecode(os.fspath(path))
    return _read_file(text, _printable(os.path.basename(text.rstrip("/\\")) or text), max_bytes)


def _read_file(path: str, name: str, max_bytes: int) -> bytes:
    # O_NONBLOCK so that a FIFO or device named as an image fails the regular-file check below
    # instead of blocking open() forever; checking the open descriptor leaves no gap between
    # the check and the read for the path to be swapped.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MediaError(f"{name}: file does not exist") from None
    except PermissionError:
        raise MediaError(f"{name}: file cannot be read (permission denied)") from None
    except IsADirectoryError:
        raise MediaError(f"{name}: is a directory, not an image file") from None
    except OSError as e:
        raise MediaError(f"{name}: file cannot be read ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise MediaError(f"{name}: is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"{name}: not a regular file")
        if info.st_size == 0:
            raise MediaError(f"{name}: file is empty")
        if info.st_size > max_bytes:
            raise MediaError(
                f"{name}: file is {_size(info.st_size)}, above the limit of {_size(max_bytes)}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            # One byte more than allowed tells us the file grew since fstat.
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise MediaError(f"{name}: file cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise MediaError(f"{name}: file is larger than the limit of {_size(max_bytes)}")
    if not data:
        raise MediaError(f"{name}: file is empty")
    return data


def _decode(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, str, int, int]:
    im = _open_header(data, name, max_pixels)
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise MediaError(f"{name}: image has no pixels ({width}x{height})")
        _check_pixels(name, width, height, max_pixels)
        fmt = str(im.format)
        try:
            frames = int(getattr(im, "n_frames", 1))
            # Force the full decode now: Pillow decodes lazily, and LOAD_TRUNCATED_IMAGES stays
            # off so a short file raises here rather than coming back partly grey.
            im.load()
            # Some formats learn their true size only while decoding (GIF frames may overhang
            # the declared screen), so the limit is checked again on what was decoded.
            _check_pixels(name, im.size[0], im.size[1], max_pixels)
            orientation = _apply_orientation(im)
            pixels = _to_rgb(im, name)
        except MediaError:
            raise
        except Image.DecompressionBombError:
            raise MediaError(
                f"{name}: image is too large to decode safely (possible decompression bomb)"
            ) from None
        except MemoryError:
            raise MediaError(f"{name}: not enough memory to decode the image") from None
        except Exception:
            raise MediaError(f"{name}: truncated or corrupt image data") from None
    finally:
        im.close()
    return pixels, fmt, orientation, frames


def _open_header(data: bytes, name: str, max_pixels: int) -> Image.ImageFile.ImageFile:
    """Parse the header only (format, size, mode); no pixels are decoded yet."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    # Pillow warns above its own limit and raises above twice that. When our limit is the
    # stricter one the warning means "refuse", so it becomes an error; when a caller has raised
    # our limit above Pillow's, our own check after opening is the one that decides.
    action = "error" if pillow_limit is not None and max_pixels <= pillow_limit else "ignore"
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter(action, Image.DecompressionBombWarning)
            # Header parsers complain about damaged metadata they skip ("Tag data larger
            # than file"); the outcome is what matters, and it is an image or a MediaError.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            return Image.open(io.BytesIO(data), formats=_formats())
    except UnidentifiedImageError:
        # Pillow says "unidentified" when a parser rejects a damaged header too; a file that
        # starts like one of our formats is a damaged image, not some other kind of file.
        if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise MediaError(f"{name}: truncated or corrupt image data") from None
        raise MediaError(f"{name}: not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(found.group(1)) if found else None
        limit = max_pixels
        if pillow_limit is not None and pixels is not None and pixels <= max_pixels:
            limit = 2 * pillow_limit
        if pixels is None:
            raise MediaError(
                f"{name}: image is above the limit of {_pixels(limit)} "
                "(possible decompression bomb)"
            ) from None
        raise MediaError(
            f"{name}: image is {_pixels(pixels)}, above the limit of {_pixels(limit)}"
        ) from None
    except MemoryError:
        raise MediaError(f"{name}: not enough memory to read the image header") from None
    except Exception:
        # Plugins signal a damaged header with whatever they hit first (struct.error,
        # SyntaxError, ValueError, OSError ...); to the caller it is all the same thing.
        raise MediaError(f"{name}: truncated or corrupt image data") from None


@functools.cache
def _formats() -> tuple[str, ...]:
    # AVIF (and in principle any of the others) exists only where Pillow was built with it,
    # and Image.open refuses a format name it does not know.
    Image.init()
    return tuple(f for f in _FORMATS if f in Image.OPEN)


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaError(
            f"{name}: image is {width}x{height} ({_pixels(width * height)}), "
            f"above the limit of {_pixels(max_pixels)}"
        )


def _apply_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        # A damaged EXIF block says nothing reliable about orientation; the pixels are still
        # good, and refusing a usable photograph over its metadata would help nobody.
        return 1
    if not isinstance(value, int) or not 2 <= value <= 8:
        return 1
    # in_place: without it exif_transpose copies the whole image even when nothing changes.
    ImageOps.exif_transpose(im, in_place=True)
    return value


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in _GRAY16_MODES:
        gray = _gray16_to_8(np.asarray(im))
    elif mode == "I":
        gray = _int32_to_8(np.asarray(im))
    elif mode == "F":
        gray = _float_to_8(np.asarray(im))
    else:
        if mode != "RGB":
            im = _convert_8bit(im, name)
        # np.asarray copies once (Pillow keeps RGB padded to 4 bytes a pixel) and the result
        # is already read-only and C-contiguous.
        return np.asarray(im)
    rgb = np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    rgb.flags.writeable = False
    return rgb


def _convert_8bit(im: Image.Image, name: str) -> Image.Image:
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return _flatten_alpha(im)
    if im.mode == "LAB":
        # Pillow's convert() treats LAB as three plain channels; only a colour transform
        # turns it into the colours it describes.
        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(im, transform)
    try:
        return im.convert("RGB")
    except ValueError:
        raise MediaError(f"{name}: colour mode {im.mode} cannot be converted to RGB") from None


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    alpha_min = rgba.getextrema()[3][0]
    if alpha_min == 255:
        # Many files carry an alpha channel that is opaque everywhere; dropping it is exact.
        return rgba.convert("RGB")
    # Transparent areas become white rather than whatever colour the encoder left under
    # them (often black, sometimes noise): a plain light background is what a person
    # looking at the picture sees, and what detectors were trained on.
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _gray16_to_8(values: np.ndarray) -> np.ndarray:
    # Rounded division by 257 maps 0..65535 exactly onto 0..255; clipping would turn almost
    # every 16-bit image white.
    wide = values.astype(np.uint32)
    return ((wide + 128) // 257).astype(np.uint8)


def _int32_to_8(values: np.ndarray) -> np.ndarray:
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 65535:
        # Pillow opens 16-bit PGM and TIFF as 32-bit "I"; the samples are still 16-bit.
        return _gray16_to_8(values)
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    # Genuinely 32-bit data has no conventional white point; stretch what is there.
    scaled = (values.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def _float_to_8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        # Float images in 0..1 are normalised intensities, not near-black 0..255 values.
        values = values * 255.0
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _size(n: int) -> str:
    if n >= _MIB:
        return f"{n / _MIB:.1f}".removesuffix(".0") + " MiB"
    return f"{n:,} bytes"


def _pixels(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}".removesuffix(".0") + " megapixels"
    return f"{n:,} pixels"


def _printable(name: str) -> str:
    # File names reach logs and terminals; a crafted one must not forge lines or escapes.
    return "".join(c if c.isprintable() else "?" for c in name)
