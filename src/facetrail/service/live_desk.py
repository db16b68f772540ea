"""The live use cases of the `Facetrail` facade: deployments, alerts and their review.

A mixin of `Facetrail` (service/app.py), kept apart so that each file holds one area; it uses
the facade's plumbing (`_need`, `_read`, `_write`, `_audit`, `_policy`, `_shared`) and, like
every use case, checks the caller's role and the policy, and audits in the action's own
transaction. The runner itself (threads, frames, tracks, alerts) is `service.live`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from facetrail.errors import (
    InvalidInputError,
    NotFoundError,
    PolicyError,
)
from facetrail.service import (
    cases,
    live,
    watchlists,
)
from facetrail.service import search as searching
from facetrail.service.access import SYSTEM, Caller, Op, Role
from facetrail.service.tables import (
    Alert,
    Deployment,
    User,
)
from facetrail.store.models import Subject, utcnow

# A deployment left "running" without a heartbeat for this long is taken for interrupted.
LIVE_STALE_S = 30.0
RETENTION_ACTIONS = ("retention.purge", "retention.erase", "retention.alerts", "retention.run")


class LiveDesk:
    def start_deployment(
        self,
        watchlist: str,
        source: str,
        until: datetime,
        threshold: float | None = None,
        *,
        wait: bool = False,
        on_alert: Callable[[live.AlertInfo], None] | None = None,
        on_started: Callable[[live.DeploymentInfo], None] | None = None,
        pace: float = 1.0,
        reconnect_attempts: int = 5,
        backoff: float = 0.5,
    ) -> live.DeploymentInfo:
        """Watch `source` against an authorised, unexpired watchlist until `until` (no later
        than the watchlist's expiry). The run is a background thread of this process, or,
        with `wait`, runs to its end in the calling thread. Only alerts are stored (with the
        track's best shot); faces that match nothing are counted, never kept. `pace`: how
        fast a file source is played (1.0: real time; rehearsals and tests)."""
        caller = self._need(Op.LIVE_DEPLOY)
        if not isinstance(until, datetime) or until.tzinfo is None:
            raise InvalidInputError("the end time must be a time with a time zone")
        if until <= utcnow():
            raise InvalidInputError("the end time must be in the future")
        if not 0 < pace <= 100:
            raise InvalidInputError("the pace is above 0 and at most 100")
        kind = live.source_kind(source)
        scoring = self.scoring(threshold)
        with self._write() as s:
            w, subjects = watchlists.searchable_subjects(s, watchlist)
            if until > w.expires_at:
                raise PolicyError(
                    f"watchlist {watchlist} expires {w.expires_at:%Y-%m-%d %H:%M} UTC: a "
                    "deployment cannot run past it"
                )
            floor = self._floor(self._policy(s), scoring)
            if scoring.threshold < floor - 1e-9:
                raise PolicyError(
                    f"a threshold of {scoring.threshold:.4f} is below the policy's floor "
                    f"({floor:.4f}); live deployments cannot go below it"
                )
            row = Deployment(
                watchlist_id=w.id,
                watchlist_name=w.name,
                source=live.strip_credentials(source),
                threshold=round(scoring.threshold, 4),
                started_by=caller.user_id,
                until=until,
                status="running",
                seen_at=utcnow(),
            )
            s.add(row)
            s.flush()
            deployment_id = row.id
            self._audit(
                s,
                caller,
                "live.start",
                "deployment",
                [deployment_id],
                reason=w.purpose,
                watchlist=w.id,
                source=row.source,
                kind=kind,
                threshold=row.threshold,
                until=until.isoformat(),
                subjects=len(subjects),
            )
        model = self.analyzer.model_id
        index = searching._subset_index(self.store, model, subjects)
        video = self._video_options(scoring, None)

        def rank(descriptors: np.ndarray) -> list[list[Any]]:
            return searching.rank_candidates(self.store, index, descriptors, scoring, 3, False)

        runner = live.LiveRunner(
            source,
            rank,
            live.LiveOptions(
                analyzer=video.analyzer,
                tracker=video.tracker,
                until=until,
                pace=pace,
                reconnect_attempts=reconnect_attempts,
                backoff=backoff,
                max_pixels=self.settings.max_image_pixels,
            ),
            on_alert=lambda raised: self._store_alert(deployment_id, raised, on_alert),
            on_counters=lambda counters: self._live_beat(deployment_id, counters),
        )

        def finish() -> None:
            try:
                outcome = runner.run()
            except KeyboardInterrupt:  # Ctrl-C in the foreground: the operator stopped it
                self._end_deployment(deployment_id, caller, "stopped", runner)
                raise
            except BaseException as exc:  # recorded, never lost with the thread
                runner.error = f"the deployment failed: {exc}"
                self._end_deployment(deployment_id, caller, "interrupted", runner)
                if wait:
                    raise
                return
            self._end_deployment(deployment_id, caller, outcome, runner)

        if on_started is not None:
            with self._read() as s:
                on_started(live.deployment_info(s, self._get_deployment(s, deployment_id)))

        if wait:
            with self._shared.live_lock:
                self._shared.live[deployment_id] = (runner, None)
            try:
                finish()
            finally:
                with self._shared.live_lock:
                    self._shared.live.pop(deployment_id, None)
        else:

            def background() -> None:
                try:
                    finish()
                finally:
                    with self._shared.live_lock:
                        self._shared.live.pop(deployment_id, None)

            thread = threading.Thread(target=background, name=f"facetrail-live-{deployment_id}")
            with self._shared.live_lock:
                self._shared.live[deployment_id] = (runner, thread)
            thread.start()
        with self._read() as s:
            return live.deployment_info(s, self._get_deployment(s, deployment_id))

    def _store_alert(
        self,
        deployment_id: int,
        raised: live.RaisedAlert,
        notify: Callable[[live.AlertInfo], None] | None,
    ) -> None:
        with self._write() as s:
            row = self._get_deployment(s, deployment_id)
            subject_id = s.scalar(select(Subject.id).where(Subject.name == raised.subject))
            sha = self.store.blobs.put(raised.best_shot) if raised.best_shot else None
            alert = Alert(
                deployment_id=deployment_id,
                subject_id=subject_id,
                subject_name=raised.subject,
                score=raised.score,
                fmr=raised.fmr,
                at=raised.at,
                time=raised.time,
                track=raised.track,
                best_shot_sha256=sha,
            )
            s.add(alert)
            row.alerts += 1
            s.flush()
            starter = s.get(User, row.started_by)
            assert starter is not None
            who = Caller(starter.id, starter.name, Role(starter.role))
            self._audit(
                s,
                who,
                "live.alert",
                "alert",
                [alert.id],
                deployment=deployment_id,
                subject=subject_id,
                score=raised.score,
                fmr=raised.fmr,
                best_shot=sha,
            )
            info = live.alert_info(s, alert)
        if notify is not None:
            notify(info)

    def _live_beat(self, deployment_id: int, counters: live.Counters) -> bool:
        """Write the counters and the heartbeat; False if the run must stop (stopped from
        elsewhere, or its watchlist is no longer authorised)."""
        with self._write() as s:
            row = self._get_deployment(s, deployment_id)
            row.frames_received = counters.frames_received
            row.frames_dropped = counters.frames_dropped
            row.frames_analysed = counters.frames_analysed
            row.faces_seen = counters.faces_seen
            row.seen_at = utcnow()
            if row.status != "running":
                return False
            try:
                watchlists.searchable_subjects(s, row.watchlist_name)
            except (PolicyError, NotFoundError) as exc:
                row.error = str(exc)
                return False
            return True

    def _end_deployment(
        self, deployment_id: int, caller: Caller, outcome: str, runner: live.LiveRunner
    ) -> None:
        c = runner.counters
        with self._write() as s:
            row = self._get_deployment(s, deployment_id)
            row.frames_received, row.frames_dropped = c.frames_received, c.frames_dropped
            row.frames_analysed, row.faces_seen = c.frames_analysed, c.faces_seen
            if row.status != "running":
                return  # stopped by someone, who was audited
            row.status = outcome
            row.stopped_at = row.seen_at = utcnow()
            row.error = row.error or runner.error
            self._audit(
                s,
                caller,
                "live.end",
                "deployment",
                [deployment_id],
                status=outcome,
                error=row.error,
                frames_received=row.frames_received,
                frames_dropped=row.frames_dropped,
                frames_analysed=row.frames_analysed,
                faces_seen=row.faces_seen,
                alerts=row.alerts,
            )

    def _mark_interrupted(self) -> None:
        """On start: deployments left "running" by a process that is gone (no heartbeat for
        `LIVE_STALE_S`) are marked interrupted; they are not resumed."""
        stale = utcnow() - timedelta(seconds=LIVE_STALE_S)
        with self._read() as s:
            ids = list(
                s.scalars(
                    select(Deployment.id).where(
                        Deployment.status == "running", Deployment.seen_at < stale
                    )
                )
            )
        if not ids:
            return
        with self._write() as s:
            for deployment_id in ids:
                row = self._get_deployment(s, deployment_id)
                if row.status != "running" or deployment_id in self._shared.live:
                    continue
                row.status, row.stopped_at = "interrupted", utcnow()
                row.error = "the process running it stopped"
                self._audit(
                    s,
                    SYSTEM,
                    "live.interrupted",
                    "deployment",
                    [deployment_id],
                    status="interrupted",
                )

    def stop_deployment(
        self, deployment_id: int, *, reason: str | None = None
    ) -> live.DeploymentInfo:
        """Stop a running deployment (run by this process or another one, which notices at
        its next heartbeat)."""
        caller = self._need(Op.LIVE_DEPLOY)
        with self._write() as s:
            row = self._get_deployment(s, deployment_id)
            if row.status != "running":
                raise InvalidInputError(f"deployment {deployment_id} is not running: {row.status}")
            row.status, row.stopped_at = "stopped", utcnow()
            self._audit(s, caller, "live.stop", "deployment", [deployment_id], reason=reason)
        with self._shared.live_lock:
            running = self._shared.live.get(deployment_id)
        if running is not None:
            running[0].stop()
            if running[1] is not None and running[1] is not threading.current_thread():
                running[1].join(timeout=30)
        with self._read() as s:
            return live.deployment_info(s, self._get_deployment(s, deployment_id))

    def deployments(self) -> list[live.DeploymentInfo]:
        self._need(Op.LIVE_READ)
        with self._read() as s:
            rows = s.scalars(select(Deployment).order_by(Deployment.id))
            return [live.deployment_info(s, r) for r in rows]

    def deployment(self, deployment_id: int) -> live.DeploymentInfo:
        self._need(Op.LIVE_READ)
        with self._read() as s:
            return live.deployment_info(s, self._get_deployment(s, deployment_id))

    def alerts(self, deployment_id: int) -> list[live.AlertInfo]:
        """A deployment's alerts still kept (retention deletes them); viewing is audited."""
        caller = self._need(Op.LIVE_READ)
        with self._write() as s:
            self._get_deployment(s, deployment_id)
            rows = list(
                s.scalars(
                    select(Alert).where(Alert.deployment_id == deployment_id).order_by(Alert.id)
                )
            )
            infos = [live.alert_info(s, a) for a in rows]
            self._audit(s, caller, "alert.view", "alert", [a.id for a in infos])
        return infos

    def alert_best_shot(self, alert_id: int) -> bytes:
        """An alert's best shot (PNG), for the operator to look at."""
        self._need(Op.LIVE_READ)
        with self._read() as s:
            alert = s.get(Alert, alert_id)
            if alert is None or alert.best_shot_sha256 is None:
                raise NotFoundError(f"no alert {alert_id} with a best shot")
            sha = alert.best_shot_sha256
        return self.store.blobs.get(sha)

    def review_alert(self, alert_id: int, outcome: str, *, note: str) -> live.AlertInfo:
        """Mark an alert confirmed or false, with the action taken; a later review replaces
        an earlier one (both are in the audit trail)."""
        caller = self._need(Op.ALERT_REVIEW)
        if outcome not in ("confirmed", "false"):
            raise InvalidInputError("an alert's outcome is 'confirmed' or 'false'")
        with self._write() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                raise NotFoundError(f"no alert {alert_id}")
            why = cases.check_text(note, "the note (the action taken)")
            row = self._get_deployment(s, alert.deployment_id)
            previous = alert.outcome
            if previous == "confirmed":
                row.confirmed -= 1
            elif previous == "false":
                row.false_alerts -= 1
            if outcome == "confirmed":
                row.confirmed += 1
            else:
                row.false_alerts += 1
            alert.outcome, alert.note = outcome, why
            alert.reviewed_by, alert.reviewed_at = caller.user_id, utcnow()
            s.flush()
            self._audit(
                s,
                caller,
                "alert.review",
                "alert",
                [alert.id],
                reason=why,
                deployment=row.id,
                outcome=outcome,
                previous=previous,
            )
            return live.alert_info(s, alert)

    def live_report(self) -> live.LiveReport:
        """Per deployment: faces seen, alerts, confirmed and false alerts, duration (the
        shape of the Met's published figures); counts outlive the alerts themselves."""
        self._need(Op.LIVE_READ)
        now = utcnow()
        with self._read() as s:
            rows = list(s.scalars(select(Deployment).order_by(Deployment.id)))
        out = [
            live.DeploymentSummary(
                id=r.id,
                watchlist=r.watchlist_name,
                started_at=r.started_at,
                duration_s=round(((r.stopped_at or now) - r.started_at).total_seconds(), 1),
                status=r.status,
                faces_seen=r.faces_seen,
                alerts=r.alerts,
                confirmed=r.confirmed,
                false_alerts=r.false_alerts,
            )
            for r in rows
        ]
        return live.LiveReport(
            deployments=out,
            faces_seen=sum(d.faces_seen for d in out),
            alerts=sum(d.alerts for d in out),
            confirmed=sum(d.confirmed for d in out),
            false_alerts=sum(d.false_alerts for d in out),
        )

    @staticmethod
    def _get_deployment(s: Session, deployment_id: int) -> Deployment:
        row = s.get(Deployment, deployment_id)
        if row is None:
            raise NotFoundError(f"no deployment {deployment_id}")
        return row
