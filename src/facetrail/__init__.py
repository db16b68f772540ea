"""facetrail: accountable facial recognition.

import facetrail
with facetrail.open("gallery-dir") as ft:
    ft.enrol(["people/"])                # one sub-folder per subject
    report = ft.search(["cctv.jpg"])     # candidates per face, with estimated FMR
    ft.verify("a.jpg", "b.jpg")
    ft.eval_lfw("lfw/")
"""

from __future__ import annotations

from facetrail.config import Settings
from facetrail.errors import FacetrailError
from facetrail.service.app import Facetrail, open

__version__ = "0.1.0"
__all__ = ["Facetrail", "FacetrailError", "Settings", "__version__", "open"]
