"""Uploaded probes: streamed to disk within size limits, and typed by their content.

A file's name says nothing trustworthy, so the kind (image or video, and which container) is
read from its first bytes, and the file is saved under a name of facetrail's own choosing (the
upload's name made safe, in a numbered folder of its own) with the extension that matches the
content: what is searched as a video is one by content. Anything that is not a known image or
video container is refused before the search starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from facetrail.config import Settings
from facetrail.web.problems import HttpProblem

_CHUNK = 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

# (offset, magic, kind, extension)
_SIGNATURES: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\xff\xd8\xff", "image", ".jpg"),
    (0, b"\x89PNG\r\n\x1a\n", "image", ".png"),
    (0, b"GIF87a", "image", ".gif"),
    (0, b"GIF89a", "image", ".gif"),
    (0, b"BM", "image", ".bmp"),
    (0, b"II*\x00", "image", ".tif"),
    (0, b"MM\x00*", "image", ".tif"),
    (4, b"ftypavif", "image", ".avif"),
    (4, b"ftyp", "video", ".mp4"),  # MP4, MOV, 3GP: ISO base media
    (0, b"\x1a\x45\xdf\xa3", "video", ".mkv"),  # Matroska, WebM
    (0, b"\x00\x00\x01\xba", "video", ".mpg"),  # MPEG program stream
    (0, b"FLV", "video", ".flv"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "video", ".wmv"),  # ASF
)

IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".webp": "image/webp",
    ".avif": "image/avif",
}


def sniff(head: bytes) -> tuple[str, str] | None:
    """(kind, extension) of a file from its first bytes, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", ".avi"
    if len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "video", ".ts"  # MPEG transport stream: a sync byte every 188 bytes
    for offset, magic, kind, ext in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind, ext
    return None


def image_type(data: bytes) -> str:
    """The media type of a stored image, from its content, for serving it."""
    found = sniff(data[:512])
    return IMAGE_TYPES.get(found[1] if found else "", "application/octet-stream")


async def save(
    upload: UploadFile, folder: Path, number: int, *, max_image_bytes: int, max_video_bytes: int
) -> Path:
    """Write one upload into `folder`; refuse it (413, 415) without leaving a partial file."""
    stem = _SAFE.sub("_", Path(upload.filename or "upload").stem).strip("._")[:60] or "upload"
    partial = folder / f".{number:04d}.part"
    written, kind, ext = 0, None, ""
    try:
        with partial.open("wb") as out:
            while chunk := await upload.read(_CHUNK):
                if written == 0:
                    found = sniff(chunk[:512])
                    if found is None:
                        raise HttpProblem(
                            415, f"{stem}: not an image or video this service reads (by content)"
                        )
                    kind, ext = found
                written += len(chunk)
                limit = max_video_bytes if kind == "video" else max_image_bytes
                if written > limit:
                    raise HttpProblem(413, f"{stem}: larger than the {kind} limit of {limit} bytes")
                out.write(chunk)
        if written == 0:
            raise HttpProblem(400, f"{stem}: empty upload")
        target = folder / f"{number:04d}" / f"{stem}{ext}"
        target.parent.mkdir(mode=0o700)
        os.replace(partial, target)
        return target
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def relabel(value: Any, saved: list[Path]) -> Any:
    """`value` (JSON-ready) with every mention of a saved upload's path replaced by the
    upload's own (safe) name: reports speak of the files as they were uploaded, not of where
    the server kept them for a moment."""
    names = {str(p): p.name for p in saved}

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return names.get(v, v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(value)


async def save_all(settings: Settings, files: list[UploadFile]) -> tuple[Path, list[Path]]:
    """The uploads (those with a file name), typed by content and within the size limits, in
    a folder of their own under <data>/uploads; the caller deletes the folder when done."""
    files = [f for f in files if f.filename]
    if not files:
        raise HttpProblem(400, "choose at least one image or video to upload")
    parent = settings.data / "uploads"
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=parent))
    try:
        saved = [
            await save(
                f,
                folder,
                n,
                max_image_bytes=settings.max_file_bytes,
                max_video_bytes=settings.max_upload_bytes,
            )
            for n, f in enumerate(files)
        ]
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, saved
