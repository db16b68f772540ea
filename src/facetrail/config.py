"""The one configuration object: read once (defaults, then a TOML file, then FACETRAIL_*
environment variables, then command-line flags) and passed down to every layer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from platformdirs import user_data_dir
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from facetrail.store.backends import IndexConfig


def default_data_dir() -> Path:
    return Path(user_data_dir("facetrail", appauthor=False))


# ONNX Runtime execution providers that run on a GPU (where the CNN detector pays for video).
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACETRAIL_", extra="ignore")

    data: Path = Field(default_factory=default_data_dir, description="data directory")
    # Where metadata, policy and the audit trail live: unset, a SQLite file in the data
    # directory; or a PostgreSQL URL (postgresql://user:password@host:5432/db) that many
    # service processes share. Blobs stay files in `data` either way. Secret: it may hold a
    # password.
    database_url: SecretStr | None = None

    # Media limits: decoded pixels above this are refused (decompression bombs, 100 MP images).
    max_image_pixels: int = 50_000_000
    max_file_bytes: int = 200 * 1024 * 1024

    # Detection. The HOG detector finds faces of about 80 px and up at scale 1; images are
    # rescaled so that faces down to `min_face` pixels are found (see vision.detector). The
    # CNN detector (dlib's MMOD network on ONNX Runtime) also finds faces turned away or
    # looking down, at 2.5-5 times HOG's cost: stills use HOG and fall back to the CNN where
    # HOG finds nothing ("auto"). Retrospective video (unset) uses the CNN when a GPU provider
    # is configured and HOG on a CPU, where the CNN would take a search below 4x real time at
    # 720p; live video uses HOG, which keeps an alert within 300 ms of its frame.
    detector: Literal["hog", "cnn", "auto"] = "auto"
    video_detector: Literal["hog", "cnn", "auto"] | None = None
    live_detector: Literal["hog", "cnn", "auto"] = "hog"

    min_face: int = Field(40, ge=10, le=1000)
    max_detect_pixels: int = 8_000_000

    # Video: frames analysed per second (0: every frame; between samples faces are linked by
    # tracking); the smallest face searched for; and the most pixels the detector looks at
    # per frame, which keeps the cost of a frame the same whatever the resolution: faces from
    # 40 px in 360p footage, from about 80 px in 720p, 115 px in 1080p. Raise it to find
    # smaller faces in large frames, at the price of speed (detection time grows with it).
    video_fps: float = Field(4.0, ge=0, le=240)
    video_min_face: int = Field(40, ge=10, le=1000)
    video_detect_pixels: int = Field(1_000_000, ge=10_000, le=100_000_000)
    max_video_bytes: int = 64 * 1024 * 1024 * 1024
    max_upload_bytes: int = 4 * 1024 * 1024 * 1024  # one video uploaded over HTTP

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
    # Search scores normalised against the cohort (`facetrail cohort build`; issue 10): used
    # unless "none", when no explicit threshold is set, the model's cohort has at least
    # `cohort_top_k` faces and a calibration of such scores exists; plain cosine otherwise.
    score_normalisation: Literal["none", "as-norm", "as-norm+cosine"] = "as-norm+cosine"
    cohort_top_k: int = Field(200, ge=1, le=100_000)

    # Live alerts may also be POSTed to a control-room system (signed with the secret when one
    # is set); the best shot goes with them only when asked for.
    live_webhook_url: str | None = None
    live_webhook_secret: SecretStr | None = None
    live_webhook_best_shot: bool = False

    # Template index (see README, "Scale"): `exact` keeps every template in memory and
    # scans them all (fine to a few hundred thousand); `ann` an approximate faiss IVF-SQ8
    # index kept in the data directory, re-ranked exactly, caught up incrementally (exact
    # scan below `ann_min_train` templates); `milvus` a Milvus collection per model, at
    # `milvus_uri`: http(s)://host:19530 for a cluster, or a local file for Milvus Lite.
    index: Literal["exact", "ann", "milvus"] = "exact"
    ann_nprobe: int = Field(128, ge=1, le=65536)
    ann_shortlist: int = Field(64, ge=1, le=100_000)
    ann_min_train: int = Field(20_000, ge=1)
    milvus_uri: str | None = None
    milvus_token: SecretStr | None = None  # "user:password" or an API key
    milvus_db: str | None = None
    milvus_collection_prefix: str = Field("facetrail", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT"] = "HNSW"

    def index_config(self) -> IndexConfig:
        """The store's `IndexConfig` for these settings."""
        from facetrail.store.ann import AnnParams
        from facetrail.store.backends import IndexConfig

        token = self.milvus_token.get_secret_value() if self.milvus_token else None
        return IndexConfig(
            kind=self.index,
            ann=AnnParams(
                nprobe=self.ann_nprobe,
                shortlist=self.ann_shortlist,
                min_train=self.ann_min_train,
            ),
            milvus_uri=self.milvus_uri,
            milvus_token=token or None,
            milvus_db=self.milvus_db,
            milvus_prefix=self.milvus_collection_prefix,
            milvus_index_type=self.milvus_index_type,
        )

    def video_detector_kind(self) -> Literal["hog", "cnn", "auto"]:
        """The retrospective video detector: as configured, else the CNN on a GPU."""
        if self.video_detector is not None:
            return self.video_detector
        return "cnn" if any(p in GPU_PROVIDERS for p in self.providers) else "hog"

    def database(self) -> str | None:
        """The configured database URL as text, or None for SQLite in the data directory."""
        if self.database_url is None or not self.database_url.get_secret_value().strip():
            return None
        return self.database_url.get_secret_value().strip()

    @property
    def cache_dir(self) -> Path:
        return self.data / "cache"

    # Encryption at rest of face images and templates (AES-256-GCM). The 32-byte key comes
    # from a file private to its owner, or as base64 text from FACETRAIL_ENCRYPTION_KEY;
    # with neither, nothing is encrypted.
    encryption_key_file: Path | None = None
    encryption_key: SecretStr | None = None

    def encryption_key_bytes(self) -> bytes | None:
        """The configured encryption key, or None; InvalidInputError if it is unusable.

        A key file holds 32 raw bytes or their base64 (standard or urlsafe) text, and must not
        be accessible by group or others, as ssh insists for its keys: a readable key makes
        the encryption moot. Messages name the file or variable, never the key.
        """
        import base64
        import binascii
        import stat

        from facetrail.errors import InvalidInputError

        def decode(text: bytes, where: str) -> bytes:
            text = text.strip().replace(b"-", b"+").replace(b"_", b"/")
            try:
                key = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise InvalidInputError(
                    f"{where} does not hold a 32-byte key (raw bytes or base64 text)"
                )
            return key

        if self.encryption_key is not None and self.encryption_key_file is not None:
            raise InvalidInputError(
                "both FACETRAIL_ENCRYPTION_KEY and encryption_key_file are set; set one"
            )
        if self.encryption_key is not None:
            value = self.encryption_key.get_secret_value().encode("utf-8", "replace")
            return decode(value, "FACETRAIL_ENCRYPTION_KEY")
        if self.encryption_key_file is None:
            return None
        path = self.encryption_key_file.expanduser()
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInputError(f"encryption key file {path} is not a regular file")
            if os.name == "posix" and st.st_mode & 0o077:
                raise InvalidInputError(
                    f"encryption key file {path} is accessible by other users (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); make it private: chmod 600 {path}"
                )
            data = path.read_bytes()
        except OSError as e:
            raise InvalidInputError(
                f"cannot read encryption key file {path}: {e.strerror}"
            ) from None
        return data if len(data) == 32 else decode(data, f"encryption key file {path}")
