"""The one configuration object: read once (defaults, then a TOML file, then FACETRAIL_*
environment variables, then command-line flags) and passed down to every layer."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_actor() -> str:
    """Who the audit trail names until users and log-in exist: the local account."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (containers)
        return f"local:uid-{os.getuid()}"


def default_data_dir() -> Path:
    return Path(user_data_dir("facetrail", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACETRAIL_", extra="ignore")

    data: Path = Field(default_factory=default_data_dir, description="data directory")
    actor: str = Field(default_factory=default_actor, min_length=1, max_length=200)

    # Media limits: decoded pixels above this are refused (decompression bombs, 100 MP images).
    max_image_pixels: int = 50_000_000
    max_file_bytes: int = 200 * 1024 * 1024

    # Detection. The HOG detector finds faces of about 80 px and up at scale 1; images are
    # rescaled so that faces down to `min_face` pixels are found (see vision.detector).
    detector: Literal["hog"] = "hog"
    min_face: int = Field(40, ge=10, le=1000)
    max_detect_pixels: int = 8_000_000

    # Descriptor: the built-in dlib ResNet run by ONNX Runtime, or a licensed ONNX model.
    descriptor: Literal["dlib-resnet", "onnx"] = "dlib-resnet"
    onnx_model: Path | None = None
    onnx_input_size: int = 112
    onnx_mean: float = 127.5
    onnx_std: float = 128.0
    flip_average: bool = True
    batch_size: int = Field(32, ge=1, le=1024)
    workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1)
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])

    # Decisions. The threshold is derived from a target false match rate on the model's
    # calibration unless set explicitly.
    target_fmr: float = Field(1e-3, gt=0, lt=1)
    threshold: float | None = None
    top_k: int = Field(5, ge=1, le=1000)
    min_quality: float = Field(0.0, ge=0, le=1)

    @property
    def cache_dir(self) -> Path:
        return self.data / "cache"
