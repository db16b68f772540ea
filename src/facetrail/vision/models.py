"""Where the default models' files are: the CC0 dlib models of the PyPI package
face_recognition_models. Nothing is downloaded; a missing package is a clear error."""

from __future__ import annotations

from pathlib import Path

from facetrail.errors import ModelError


def _models_dir() -> Path:
    try:
        import face_recognition_models
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError("the face_recognition_models package is not installed") from exc
    return Path(face_recognition_models.__file__).parent / "models"


def _file(name: str) -> Path:
    path = _models_dir() / name
    if not path.is_file():
        raise ModelError(f"model file {name} is missing from face_recognition_models")
    return path


def descriptor_dat() -> Path:
    return _file("dlib_face_recognition_resnet_model_v1.dat")


def five_point_predictor() -> Path:
    return _file("shape_predictor_5_face_landmarks.dat")
