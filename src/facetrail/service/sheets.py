"""Contact sheets and best-shot crops: faces for people to look at instead of read.

A contact sheet is one JPEG of tiles, each a face with a few lines under it (where and when it
was seen, and its top candidate or its unknown person). Files are written atomically.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facetrail.errors import InvalidInputError
from facetrail.files import write_atomic

TILE = 180  # pixels, square
LINE = 13
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Tile:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    lines: list[str]


def clock(seconds: float | None) -> str:
    """12.345 -> '00:12.3'; hours when needed."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(max(0.0, seconds), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{minutes:02d}:{secs:04.1f}"
    return f"{hours}:{text}" if hours else text


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name-safe form of a probe name or subject."""
    return _UNSAFE.sub("_", text).strip("._")[:limit] or "face"


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def prepare_dir(out: Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise InvalidInputError(f"cannot create {out}: {e.strerror}") from None
    if not out.is_dir():
        raise InvalidInputError(f"{out} is not a folder")
    return out


def contact_sheet(tiles: list[Tile], columns: int = 6) -> np.ndarray:
    """The tiles on a grid, each face fitted into a square with its lines below it."""
    if not tiles:
        tiles = [Tile(np.zeros((TILE, TILE, 3), np.uint8), ["nothing found"])]
    lines = max(len(t.lines) for t in tiles)
    cell_w, cell_h = TILE, TILE + lines * LINE + 6
    cols = min(columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, tile in enumerate(tiles):
        x, y = (n % cols) * cell_w, (n // cols) * cell_h
        face = Image.fromarray(tile.image)
        face.thumbnail((TILE, TILE))
        sheet.paste(face, (x + (TILE - face.width) // 2, y + (TILE - face.height) // 2))
        for i, text in enumerate(tile.lines):
            draw.text((x + 4, y + TILE + 3 + i * LINE), text[:30], fill=(235, 235, 235), font=font)
    return np.asarray(sheet)


def write_sheet(out: Path, name: str, tiles: list[Tile]) -> Path:
    path = out / name
    write_atomic(path, jpeg(contact_sheet(tiles), quality=88))
    return path
