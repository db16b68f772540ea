"""facetrail: accountable facial recognition.

import facetrail
with facetrail.open("gallery-dir") as ft:
    ft.enrol(["people/"])                # one sub-folder per subject
    report = ft.search(["cctv.jpg"])     # candidates per face, with estimated FMR
    ft.verify("a.jpg", "b.jpg")
    ft.eval_lfw("lfw/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facetrail.errors import FacetrailError

if TYPE_CHECKING:
    from facetrail.config import Settings
    from facetrail.service.app import Facetrail, open

__version__ = "0.1.0"
__all__ = ["Facetrail", "FacetrailError", "Settings", "__version__", "open"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import facetrail.vision...` (a GPU worker, a benchmark)
    # does not pull in the store, the web framework and the settings machinery.
    if name in ("Facetrail", "open"):
        from facetrail.service import app

        return getattr(app, name)
    if name == "Settings":
        from facetrail.config import Settings

        return Settings
    raise AttributeError(f"module 'facetrail' has no attribute {name!r}")
