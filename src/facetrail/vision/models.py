"""Where the default models' files are: the CC0 dlib models of the PyPI package
face_recognition_models. Nothing is downloaded; a missing package is a clear error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from facetrail.errors import ModelError


def _models_dir() -> Path:
    # Found without importing it: its __init__ needs pkg_resources, which recent setuptools
    # no longer ship, and facetrail only wants the files.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the face_recognition_models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _file(name: str) -> Path:
    path = _models_dir() / name
    if not path.is_file():
        raise ModelError(f"model file {name} is missing from face_recognition_models")
    return path


def descriptor_dat() -> Path:
    return _file("dlib_face_recognition_resnet_model_v1.dat")


def five_point_predictor() -> Path:
    return _file("shape_predictor_5_face_landmarks.dat")
