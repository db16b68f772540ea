"""The evaluation use cases of the `Facetrail` facade: LFW, open-set identification,
demographic differentials, and calibrations from LFW or the force's own labelled faces.

A mixin of `Facetrail` (service/app.py), kept apart so that each file holds one area, as
`live_desk` is; it uses the facade's plumbing (`_need`, `_write`, `_audit`, `_policy`) and its
`analyzer`, `settings` and `store`. Evaluating needs the `evaluate` permission; saving a
calibration moves every threshold derived from it, so it is a policy change, audited.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facetrail.errors import InvalidInputError, PolicyError
from facetrail.evaluation.lfw import LfwReport, evaluate_lfw
from facetrail.service import cohort
from facetrail.service.access import Op
from facetrail.vision.calibration import (
    Calibration,
    calibration_file,
    find_calibration,
    normalised_model,
)

if TYPE_CHECKING:
    from facetrail.evaluation.calibrate import CalibrationRun


class EvaluationDesk:
    @property
    def calibration_dir(self) -> Path:
        return self.settings.data / "calibration"

    def eval_lfw(
        self,
        root: str | Path,
        *,
        calibrate: bool = False,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> LfwReport:
        # Saving a calibration moves every threshold derived from it: a policy change.
        caller = self._need(Op.POLICY_CHANGE if calibrate else Op.EVALUATE)
        report, calibration = evaluate_lfw(Path(root), self.analyzer, progress, on_total)
        if calibrate:
            path = self.save_calibration(calibration)
            with self._write() as s:
                self._audit(s, caller, "calibrate", "model", [calibration.model], file=path.name)
        return report

    def eval_identify(
        self,
        root: str | Path,
        out: str | Path,
        *,
        limit: int | None = None,
        compare: bool = False,
        folds: int = 2,
        calibrate: bool = False,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> Any:
        """Open-set 1:N evaluation of a folder of identities; results and charts in `out`.
        `compare`: also every score technique of issue 10 (cohort normalisation, template
        fusion), with a cohort drawn from the folder's single-image people in `folds`.
        `calibrate`: save the calibration of AS-norm scores measured there (a policy change,
        as `eval lfw --calibrate` is)."""
        caller = self._need(Op.POLICY_CHANGE if calibrate else Op.EVALUATE)
        from facetrail.evaluation.runs import run_identify  # matplotlib: only when asked

        def save(calibration: Calibration) -> None:
            path = self.save_calibration(calibration)
            with self._write() as s:
                self._audit(s, caller, "calibrate", "model", [calibration.model], file=path.name)

        return run_identify(
            Path(root),
            self.analyzer,
            Path(out),
            limit=limit,
            compare=compare,
            folds=folds,
            calibrate=save if calibrate else None,
            progress=progress,
            on_total=on_total,
        )

    def eval_bias(
        self,
        root: str | Path,
        labels: str | Path,
        out: str | Path,
        *,
        target_fmr: float | None = None,
        threshold: float | None = None,
        limit: int | None = None,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> Any:
        """Error rates per demographic group at the operating threshold (the search's own,
        unless `threshold` is given); `target_fmr` (default: the configured one) sets the
        threshold every group must meet."""
        self._need(Op.EVALUATE)
        from facetrail.evaluation.runs import run_bias

        scoring = self.scoring(threshold)
        source = (
            f"calibrated for target FMR {scoring.target_fmr:g}"
            if scoring.target_fmr is not None
            else ("--threshold" if threshold is not None else "configured threshold")
        )
        target = target_fmr if target_fmr is not None else self.settings.target_fmr
        if not 0 < target < 1:
            raise InvalidInputError(f"target FMR {target} is not between 0 and 1")
        return run_bias(
            Path(root),
            Path(labels),
            self.analyzer,
            Path(out),
            threshold=scoring.threshold,
            threshold_source=source,
            target_fmr=target,
            limit=limit,
            progress=progress,
            on_total=on_total,
        )

    def calibrate(
        self,
        root: str | Path,
        *,
        labels: str | Path | None = None,
        target_fmr: float | None = None,
        limit: int | None = None,
        cache: str | Path | None = None,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> CalibrationRun:
        """Fit this model's calibration on the caller's own labelled faces (see
        evaluation/calibrate.py) and, unless `dry_run`, save it for the data directory: from
        then on every score shown carries a false match rate estimated on that population.
        Saving moves every threshold derived from a target FMR: a policy change, audited;
        refused where the data cannot measure an FMR the service asks for."""
        caller = self._need(Op.EVALUATE if dry_run else Op.POLICY_CHANGE)
        from facetrail.evaluation.calibrate import run_calibration

        policy = self._policy()
        # The FMRs the service asks a calibration for: the search threshold (unless one is
        # configured), the policy's floor (unless set as a score), video tracking's 1e-4.
        asked = [1e-4]
        if self.settings.threshold is None:
            asked.append(self.settings.target_fmr)
        if policy.threshold_floor is None:
            asked.append(policy.floor_fmr)
        previous = find_calibration(self.analyzer.model_id, self.calibration_dir)
        # Searches normalise their scores against the cohort when there is one: the same
        # comparisons, normalised against it, calibrate those scores for this population too.
        method = self.settings.score_normalisation
        cohort_vectors = None
        if method != "none":
            found = cohort.load(self.store, self.analyzer.model_id).vectors
            cohort_vectors = found if len(found) >= self.settings.cohort_top_k else None
        run, calibration, normalised = run_calibration(
            Path(root),
            self.analyzer,
            labels=Path(labels) if labels is not None else None,
            target_fmr=target_fmr if target_fmr is not None else self.settings.target_fmr,
            required_fmr=min(asked),
            limit=limit,
            cache=Path(cache) if cache is not None else None,
            cohort=cohort_vectors,
            method=method,  # type: ignore[arg-type]
            top_k=self.settings.cohort_top_k,
            progress=progress,
            on_total=on_total,
        )
        if normalised is None and method != "none":
            run.notes.append(
                "no cohort of at least cohort_top_k faces: searches use plain cosine scores "
                "with this calibration until a cohort is built (`cohort build`) and "
                "`calibrate` is run again"
            )
        run.previous = previous.summary() if previous is not None else None
        run.dry_run = dry_run
        if dry_run:
            return run
        if calibration is None or not run.usable:
            raise PolicyError("calibration not saved: " + "; ".join(run.notes))
        path = self.calibration_dir / calibration_file(calibration.model)
        normalised_path = None
        if normalised is not None:
            normalised_path = self.calibration_dir / calibration_file(normalised.model)
        with self._write() as s:
            # The event first, the files in the same transaction: a file that cannot be
            # written rolls the event back, so the trail never claims a change not made.
            self._audit(
                s,
                caller,
                "calibrate",
                "model",
                [calibration.model],
                file=path.name,
                source=calibration.source,
                impostor_comparisons=calibration.impostor_comparisons,
                genuine_comparisons=calibration.genuine_comparisons,
                target_fmr=run.target.target_fmr,
                threshold=run.target.threshold,
                previous=previous.source if previous is not None else None,
                normalised_file=normalised_path.name if normalised_path else None,
            )
            calibration.save(path)
            if normalised is not None and normalised_path is not None:
                normalised.save(normalised_path)
            elif method != "none":
                # A normalised table from before does not describe this population: without
                # its own, normalised search stays off (see `search_scoring`).
                stale = self.calibration_dir / calibration_file(
                    normalised_model(calibration.model, method)
                )
                stale.unlink(missing_ok=True)
        run.saved = str(path)
        if run.normalised is not None and normalised_path is not None:
            run.normalised["saved"] = str(normalised_path)
        return run

    def save_calibration(self, calibration: Calibration) -> Path:
        path = self.calibration_dir / calibration_file(calibration.model)
        calibration.save(path)
        return path
