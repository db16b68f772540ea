"""`Facetrail`: the use cases over one data directory, and what `facetrail.open()` returns.

Every front door (CLI, Python, later HTTP) goes through this object; it owns the settings, the
store and the vision pipeline, and it decides thresholds from the calibration. Models load on
first use, so listing subjects or erasing one does not pay for the descriptor network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from functools import cached_property
from pathlib import Path

from facetrail.config import Settings
from facetrail.errors import InvalidInputError
from facetrail.evaluation.lfw import LfwReport, evaluate_lfw
from facetrail.service import enrol as enrolment
from facetrail.service import search as searching
from facetrail.service.results import (
    EnrolItemResult,
    EnrolReport,
    ProbeResult,
    SearchReport,
    VerifyReport,
)
from facetrail.store import (
    AuditRecord,
    ChainReport,
    ErasureReport,
    Store,
    SubjectDetail,
    SubjectSummary,
)
from facetrail.vision.calibration import Calibration, calibration_file, find_calibration
from facetrail.vision.pipeline import FaceAnalyzer


class Facetrail:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store.open(settings.data)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Facetrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def analyzer(self) -> FaceAnalyzer:
        return FaceAnalyzer(self.settings)

    @property
    def calibration_dir(self) -> Path:
        return self.settings.data / "calibration"

    def scoring(self, threshold: float | None = None) -> searching.Scoring:
        """The threshold to apply: explicit, else configured, else from the target FMR."""
        calibration = find_calibration(self.analyzer.model_id, self.calibration_dir)
        chosen = threshold if threshold is not None else self.settings.threshold
        if chosen is not None:
            if not -1.0 <= chosen <= 1.0:
                raise InvalidInputError(f"threshold {chosen} is outside the score range [-1, 1]")
            return searching.Scoring(chosen, None, calibration)
        if calibration is None:
            raise InvalidInputError(
                f"model {self.analyzer.model_id} has no calibration: set a threshold "
                "explicitly or run `facetrail eval lfw DIR --calibrate`"
            )
        target = self.settings.target_fmr
        return searching.Scoring(calibration.threshold_for(target), target, calibration)

    # -- gallery ---------------------------------------------------------------------------
    def enrol(
        self,
        paths: Iterable[str | Path] = (),
        *,
        subject: str | None = None,
        manifest: str | Path | None = None,
        progress: Callable[[EnrolItemResult], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> EnrolReport:
        items = enrolment.expand_paths([Path(p) for p in paths], subject)
        if manifest is not None:
            items += enrolment.read_manifest(Path(manifest))
        if not items:
            raise InvalidInputError("nothing to enrol: no image files in the given paths")
        if on_total:
            on_total(len(items))
        return enrolment.enrol(
            self.store,
            self.analyzer,
            items,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
            min_quality=self.settings.min_quality,
            actor=self.settings.actor,
            progress=progress,
        )

    def subjects(self) -> list[SubjectSummary]:
        return self.store.subjects()

    def subject(self, name: str) -> SubjectDetail:
        return self.store.subject(name)

    def erase(self, name: str) -> ErasureReport:
        """Erase a subject completely; the audit keeps that it happened (ids and counts)."""
        with self.store.session() as session:
            report = self.store.erase_subject(name, session=session)
            counts = {"images": report.images, "faces": report.faces, "templates": report.templates}
            event = AuditRecord(
                self.settings.actor, "erase", "subject", [report.subject_id], None, counts
            )
            self.store.audit(event, session=session)
        return report

    def verify_audit(self) -> ChainReport:
        return self.store.verify_audit()

    def export_audit(self, since: datetime | None = None) -> list[dict]:
        return self.store.export_audit(since)

    def _audit_read(self, action: str, report: SearchReport | VerifyReport) -> None:
        """Searches and comparisons read biometric data: record which inputs, by hash."""
        probes = [report.a, report.b] if isinstance(report, VerifyReport) else report.probes
        details: dict = {"model": report.model, "threshold": report.threshold}
        if isinstance(report, VerifyReport):
            details["match"] = report.match
        else:
            details["faces"] = sum(len(p.faces) for p in probes)
            details["candidates"] = sum(len(f.candidates) for p in probes for f in p.faces)
        hashes = [p.sha256 for p in probes if p.sha256]
        self.store.audit(AuditRecord(self.settings.actor, action, "probe", hashes, None, details))

    # -- comparison ------------------------------------------------------------------------
    def verify(
        self, a: str | Path, b: str | Path, *, threshold: float | None = None
    ) -> VerifyReport:
        report = searching.verify(
            self.analyzer,
            Path(a),
            Path(b),
            self.scoring(threshold),
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
        )
        self._audit_read("verify", report)
        return report

    def search(
        self,
        probes: Iterable[str | Path],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        include_below: bool = False,
        progress: Callable[[ProbeResult], None] | None = None,
    ) -> SearchReport:
        k = top_k or self.settings.top_k
        if k < 1:
            raise InvalidInputError("top-k must be at least 1")
        report = searching.search(
            self.store,
            self.analyzer,
            [Path(p) for p in probes],
            self.scoring(threshold),
            top_k=k,
            include_below=include_below,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_file_bytes,
            progress=progress,
        )
        self._audit_read("search", report)
        return report

    # -- evaluation ------------------------------------------------------------------------
    def eval_lfw(
        self,
        root: str | Path,
        *,
        calibrate: bool = False,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> LfwReport:
        report, calibration = evaluate_lfw(Path(root), self.analyzer, progress, on_total)
        if calibrate:
            self.save_calibration(calibration)
        return report

    def save_calibration(self, calibration: Calibration) -> Path:
        path = self.calibration_dir / calibration_file(calibration.model)
        calibration.save(path)
        return path


def open(data: str | Path | None = None, **overrides: object) -> Facetrail:
    """Open (creating if needed) a facetrail data directory.

    `data` defaults to FACETRAIL_DATA or the per-user data directory; keyword arguments
    override any other setting (e.g. `min_face=30`, `threshold=0.9`).
    """
    if data is not None:
        overrides["data"] = Path(data)
    return Facetrail(Settings(**overrides))  # type: ignore[arg-type]
