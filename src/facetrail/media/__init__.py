"""Media: untrusted bytes in, pixels out. Knows nothing about faces."""

from __future__ import annotations

from facetrail.media.image import IMAGE_SUFFIXES, LoadedImage, load_image

__all__ = ["IMAGE_SUFFIXES", "LoadedImage", "load_image"]
