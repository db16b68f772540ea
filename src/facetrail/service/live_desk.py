"""The live use cases of the `Facetrail` facade: deployments, alerts and their review.

A mixin of `Facetrail` (service/app.py), kept apart so that each file holds one area; it uses
the facade's plumbing (`_need`, `_read`, `_write`, `_audit`, `_policy`, `_shared`) and, like
every use case, checks the caller's role and the policy, and audits in the action's own
transaction. The runner itself (threads, frames, tracks, alerts) is `service.live`.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from facetrail.service.access import SYSTEM, Caller, Op, Role, allowed
from facetrail.service.live_events import LiveEvent, Subscription
from facetrail.service.tables import (
    Alert,
    Deployment,
    User,
)
from facetrail.service.webhook import Delivery, WebhookSender
from facetrail.store.models import Subject, utcnow

# A deployment left "running" without a heartbeat for this long is taken for orphaned.
LIVE_STALE_S = 30.0


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
        resumable: bool = False,
        location: str | None = None,
    ) -> live.DeploymentInfo:
        """Watch `source` against an authorised, unexpired watchlist until `until` (no later
        than the watchlist's expiry). The run is a background thread of this process, or,
        with `wait`, runs to its end in the calling thread. Only alerts are stored (with the
        track's best shot); faces that match nothing are counted, never kept. `pace`: how
        fast a file source is played (1.0: real time; rehearsals and tests). `resumable`
        (the service's deployments): when this process stops, the deployment is suspended
        and the service resumes it when it starts again, if its source is a stream or
        camera without credentials (which are never stored). `location`: where the camera
        watches, as the transparency report publishes it."""
        caller = self._need(Op.LIVE_DEPLOY)
        if not isinstance(until, datetime) or until.tzinfo is None:
            raise InvalidInputError("the end time must be a time with a time zone")
        if until <= utcnow():
            raise InvalidInputError("the end time must be in the future")
        if not 0 < pace <= 100:
            raise InvalidInputError("the pace is above 0 and at most 100")
        kind = live.source_kind(source)
        scoring = self.scoring(threshold)
        if location is not None:
            location = cases.check_text(location, "the location")
            if len(location) > 200:
                raise InvalidInputError("the location is at most 200 characters")
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
                runner=RUNNER,
                location=location,
                watchlist_size=len(subjects),
                resumable=bool(
                    resumable and kind != "file" and live.strip_credentials(source) == source
                ),
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
                location=location,
                resumable=row.resumable,
            )
        run = _Run(deployment_id, caller, source, until, subjects, scoring, live.Counters())
        options = dict(pace=pace, reconnect_attempts=reconnect_attempts, backoff=backoff)
        return self._launch(run, wait=wait, on_alert=on_alert, on_started=on_started, **options)

    def _launch(
        self,
        run: _Run,
        *,
        wait: bool,
        on_alert: Callable[[live.AlertInfo], None] | None = None,
        on_started: Callable[[live.DeploymentInfo], None] | None = None,
        pace: float = 1.0,
        reconnect_attempts: int = 5,
        backoff: float = 0.5,
    ) -> live.DeploymentInfo:
        """Run a deployment whose row says "running" in this process."""
        deployment_id = run.deployment_id
        self._start_webhook()
        index = searching._subset_index(self.store, self.analyzer.model_id, run.subjects)
        video = self._video_options(run.scoring, None)

        def rank(descriptors: np.ndarray) -> list[list[Any]]:
            return searching.rank_candidates(self.store, index, descriptors, run.scoring, 3, False)

        runner = live.LiveRunner(
            run.source,
            rank,
            live.LiveOptions(
                analyzer=self._shared.live_analyzer,
                tracker=video.tracker,
                until=run.until,
                pace=pace,
                reconnect_attempts=reconnect_attempts,
                backoff=backoff,
                max_pixels=self.settings.max_image_pixels,
            ),
            on_alert=lambda raised: self._store_alert(deployment_id, raised, on_alert),
            on_counters=lambda counters: self._live_beat(run, counters),
        )

        def finish() -> None:
            try:
                outcome = runner.run()
            except KeyboardInterrupt:  # Ctrl-C in the foreground: the operator stopped it
                self._end_deployment(run, "stopped", runner)
                raise
            except BaseException as exc:  # recorded, never lost with the thread
                runner.error = f"the deployment failed: {exc}"
                self._end_deployment(run, "interrupted", runner)
                if wait:
                    raise
                return
            self._end_deployment(run, outcome, runner)

        self._publish("deployment", deployment_id, status="running")
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

    def resume_deployments(self) -> list[live.DeploymentInfo]:
        """Resume the suspended deployments (the service calls this when it starts): those
        before their end time whose watchlist is still authorised and whose starter may still
        deploy; the others are marked interrupted, with the reason."""
        self._orphans()
        with self._read() as s:
            ids = list(s.scalars(select(Deployment.id).where(Deployment.status == "suspended")))
        resumed = []
        for deployment_id in ids:
            run = self._claim_suspended(deployment_id)
            if run is not None:
                resumed.append(self._launch(run, wait=False))
        return resumed

    def _claim_suspended(self, deployment_id: int) -> _Run | None:
        """Take a suspended deployment for this process ("running" again), or mark it
        interrupted when it can no longer run; None unless it is to be launched."""
        with self._write() as s:
            row = self._get_deployment(s, deployment_id)
            if row.status != "suspended":
                return None  # another service process took it
            starter = s.get(User, row.started_by)
            why = None
            if row.until <= utcnow():
                why = "its end time passed while it was suspended"
            elif (
                starter is None
                or not starter.active
                or not allowed(Role(starter.role), Op.LIVE_DEPLOY)
            ):
                why = "the user who started it can no longer deploy"
            if why is None:
                try:
                    _, subjects = watchlists.searchable_subjects(s, row.watchlist_name)
                except (PolicyError, NotFoundError) as exc:
                    why = str(exc)
            if why is not None:
                row.status, row.stopped_at, row.error = "interrupted", utcnow(), why
                self._audit(
                    s, SYSTEM, "live.interrupted", "deployment", [deployment_id], reason=why
                )
                self._publish("deployment", deployment_id, status="interrupted")
                return None
            assert starter is not None
            row.status, row.runner, row.seen_at = "running", RUNNER, utcnow()
            row.resumed += 1
            row.error = None
            self._audit(s, SYSTEM, "live.resume", "deployment", [deployment_id])
            caller = Caller(starter.id, starter.name, Role(starter.role))
            base = live.Counters(
                row.frames_received,
                row.frames_dropped,
                row.frames_analysed,
                row.faces_seen,
                row.alerts,
            )
            source, until, threshold = row.source, row.until, row.threshold
        scoring = self.scoring(threshold)
        return _Run(deployment_id, caller, source, until, subjects, scoring, base)

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
        self._publish(
            "alert", deployment_id, alert=info.id, frame=raised.frame, arrived=raised.frame_arrived
        )
        if notify is not None:
            notify(info)

    def _live_beat(self, run: _Run, counters: live.Counters) -> bool:
        """Write the counters and the heartbeat; False if the run must stop (stopped from
        elsewhere, or its watchlist is no longer authorised)."""
        with self._write() as s:
            row = self._get_deployment(s, run.deployment_id)
            _write_counters(row, run.base, counters)
            row.seen_at = utcnow()
            go = row.status == "running"
            if go:
                try:
                    watchlists.searchable_subjects(s, row.watchlist_name)
                except (PolicyError, NotFoundError) as exc:
                    row.error = str(exc)
                    go = False
            info = live.deployment_info(s, row)
        self._publish("deployment", run.deployment_id, **_counters(info))
        return go

    def _end_deployment(self, run: _Run, outcome: str, runner: live.LiveRunner) -> None:
        """Record how a run ended. A run ended by this process stopping is suspended (if
        resumable and before its end time: the service resumes it when it starts again),
        otherwise interrupted."""
        with self._write() as s:
            row = self._get_deployment(s, run.deployment_id)
            _write_counters(row, run.base, runner.counters)
            row.runner = None
            if row.status != "running":
                return  # stopped by someone, who was audited
            if outcome == "shutdown":
                if row.resumable and row.until > utcnow():
                    outcome = "suspended"
                else:
                    outcome = "interrupted"
                    runner.error = runner.error or "the service running it stopped"
            row.status = outcome
            row.seen_at = utcnow()
            if outcome != "suspended":
                row.stopped_at = row.seen_at
            row.error = row.error or runner.error
            self._audit(
                s,
                run.caller,
                "live.suspend" if outcome == "suspended" else "live.end",
                "deployment",
                [run.deployment_id],
                status=outcome,
                error=row.error,
                frames_received=row.frames_received,
                frames_dropped=row.frames_dropped,
                frames_analysed=row.frames_analysed,
                faces_seen=row.faces_seen,
                alerts=row.alerts,
            )
        self._publish("deployment", run.deployment_id, status=outcome)

    def _orphans(self) -> None:
        """Deployments left "running" by a process that is gone (dead on this host, or no
        heartbeat for `LIVE_STALE_S`): suspended if the service may resume them, otherwise
        marked interrupted."""
        stale = utcnow() - timedelta(seconds=LIVE_STALE_S)
        with self._read() as s:
            rows = s.execute(
                select(Deployment.id, Deployment.runner, Deployment.seen_at).where(
                    Deployment.status == "running"
                )
            ).all()
        ids = [
            i
            for i, runner, seen in rows
            if i not in self._shared.live and (_gone(runner) or seen is None or seen < stale)
        ]
        for deployment_id in ids:
            with self._write() as s:
                row = self._get_deployment(s, deployment_id)
                if row.status != "running":
                    continue
                if row.resumable and row.until > utcnow():
                    row.status, row.runner = "suspended", None
                    action = "live.suspend"
                else:
                    row.status, row.stopped_at = "interrupted", utcnow()
                    row.error = "the process running it stopped"
                    action = "live.interrupted"
                self._audit(s, SYSTEM, action, "deployment", [deployment_id], status=row.status)
                status = row.status
            self._publish("deployment", deployment_id, status=status)

    def stop_deployment(
        self, deployment_id: int, *, reason: str | None = None
    ) -> live.DeploymentInfo:
        """Stop a running or suspended deployment (run by this process or another one,
        which notices at its next heartbeat)."""
        caller = self._need(Op.LIVE_DEPLOY)
        with self._write() as s:
            row = self._get_deployment(s, deployment_id)
            if row.status not in ("running", "suspended"):
                raise InvalidInputError(f"deployment {deployment_id} is not running: {row.status}")
            row.status, row.stopped_at = "stopped", utcnow()
            self._audit(s, caller, "live.stop", "deployment", [deployment_id], reason=reason)
        self._publish("deployment", deployment_id, status="stopped")
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
        """A deployment's alerts still kept (retention deletes them); viewing is audited,
        even when there is none to see."""
        infos = self.alerts_since(0, deployment_id, audit=False)
        self._audit_views(self._need(Op.LIVE_READ), [a.id for a in infos])
        return infos

    def alerts_since(
        self, after: int, deployment_id: int | None = None, *, audit: bool = True
    ) -> list[live.AlertInfo]:
        """The alerts kept with an id above `after`, of one deployment or of all: what an
        operator's live page has not shown yet. Viewing is audited (when there is any);
        `audit=False` is for a caller that shows them first and then calls
        `alerts_shown` (the live stream, where every millisecond counts)."""
        caller = self._need(Op.LIVE_READ)
        query = select(Alert).where(Alert.id > after).order_by(Alert.id)
        if deployment_id is not None:
            query = query.where(Alert.deployment_id == deployment_id)
        with self._read() as s:
            if deployment_id is not None:
                self._get_deployment(s, deployment_id)
            infos = [live.alert_info(s, a) for a in s.scalars(query)]
        if infos and audit:
            self._audit_views(caller, [a.id for a in infos])
        return infos

    def alerts_shown(self, alert_ids: list[int]) -> None:
        """Audit that these alerts (read with `alerts_since(audit=False)`) were shown."""
        self._audit_views(self._need(Op.LIVE_READ), alert_ids)

    def _audit_views(self, caller: Caller, alert_ids: list[int]) -> None:
        with self._write() as s:
            self._audit(s, caller, "alert.view", "alert", alert_ids)

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
            info = live.alert_info(s, alert)
        self._publish("review", info.deployment, alert=info.id, outcome=outcome)
        return info

    def live_report(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> live.LiveReport:
        """Per deployment started in [since, until): where, the watchlist's size, faces seen,
        alerts, confirmed and false alerts, the false alert rate and the duration (the shape
        of the Met's published figures); counts outlive the alerts themselves."""
        self._need(Op.LIVE_READ)
        now = utcnow()
        query = select(Deployment).order_by(Deployment.id)
        if since is not None:
            query = query.where(Deployment.started_at >= since)
        if until is not None:
            query = query.where(Deployment.started_at < until)
        with self._read() as s:
            rows = list(s.scalars(query))
        out = [
            live.DeploymentSummary(
                id=r.id,
                watchlist=r.watchlist_name,
                watchlist_size=r.watchlist_size,
                location=r.location,
                started_at=r.started_at,
                duration_s=round(((r.stopped_at or now) - r.started_at).total_seconds(), 1),
                status=r.status,
                faces_seen=r.faces_seen,
                alerts=r.alerts,
                confirmed=r.confirmed,
                false_alerts=r.false_alerts,
                false_alert_rate=live.false_alert_rate(r.false_alerts, r.faces_seen),
            )
            for r in rows
        ]
        faces = sum(d.faces_seen for d in out)
        alerts = sum(d.alerts for d in out)
        confirmed = sum(d.confirmed for d in out)
        false = sum(d.false_alerts for d in out)
        return live.LiveReport(
            since=since,
            until=until,
            deployments=out,
            faces_seen=faces,
            alerts=alerts,
            confirmed=confirmed,
            false_alerts=false,
            unreviewed=alerts - confirmed - false,
            false_alert_rate=live.false_alert_rate(false, faces),
        )

    # -- events and the webhook ------------------------------------------------------------
    def live_events(self, deployment_id: int | None = None) -> Subscription:
        """A subscription to this process's live events (of one deployment, or all). Events
        carry ids and counters only; read alerts through `alerts_since`."""
        self._need(Op.LIVE_READ)
        return self._shared.hub.subscribe(deployment_id)

    def _publish(self, kind: str, deployment_id: int, **data: Any) -> None:
        self._shared.hub.publish(LiveEvent(kind, deployment_id, data))

    def _start_webhook(self) -> None:
        """Start the configured webhook's sender, once per process, before the first run."""
        url = self.settings.live_webhook_url
        if not url:
            return
        with self._shared.live_lock:
            if self._shared.webhook is not None:
                return
            secret = self.settings.live_webhook_secret
            self._shared.webhook = WebhookSender(
                url,
                secret.get_secret_value().encode() if secret else None,
                self._shared.hub,
                self._webhook_payload,
                self._webhook_delivered,
            )

    def _webhook_payload(self, event: LiveEvent) -> dict[str, Any] | None:
        """What the webhook receives for an event: alerts (with the best shot only when
        configured) and changes of a deployment's status; not the heartbeats."""
        if event.kind == "deployment" and "status" in event.data:
            return {"event": "deployment", "deployment": event.deployment, **event.data}
        if event.kind != "alert":
            return None
        with self._read() as s:
            alert = s.get(Alert, event.data["alert"])
            if alert is None:
                return None  # deleted since (retention)
            info = live.alert_info(s, alert)
        body: dict[str, Any] = {"event": "alert", **asdict(info), "frame": event.data["frame"]}
        if self.settings.live_webhook_best_shot and info.best_shot_sha256:
            shot = self.store.blobs.get(info.best_shot_sha256)
            body["best_shot_png"] = base64.b64encode(shot).decode()
        return body

    def _webhook_delivered(self, delivery: Delivery) -> None:
        """Every alert that left the system, or failed to, is in the audit trail."""
        if delivery.event.kind != "alert":
            return
        with self._write() as s:
            self._audit(
                s,
                SYSTEM,
                "live.webhook",
                "alert",
                [delivery.event.data["alert"]],
                deployment=delivery.event.deployment,
                status=delivery.status,
                attempts=delivery.attempts,
                error=delivery.error,
                best_shot=self.settings.live_webhook_best_shot,
            )

    @staticmethod
    def _get_deployment(s: Session, deployment_id: int) -> Deployment:
        row = s.get(Deployment, deployment_id)
        if row is None:
            raise NotFoundError(f"no deployment {deployment_id}")
        return row


# Which process runs a deployment: "host:pid".
RUNNER = f"{socket.gethostname()}:{os.getpid()}"


def _gone(runner: str | None) -> bool:
    """Whether the process named by `runner` is known to be gone: none, or a process of this
    host that no longer exists (of another host, only the heartbeat can tell)."""
    if runner is None:
        return True
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class _Run:
    """What a deployment's run needs, whether started now or resumed."""

    deployment_id: int
    caller: Caller
    source: str  # as given (a resumed one has no credentials)
    until: datetime
    subjects: set[int]
    scoring: searching.Scoring
    base: live.Counters  # the counts of the runs before this one (a resumed deployment)


def _write_counters(row: Deployment, base: live.Counters, c: live.Counters) -> None:
    row.frames_received = base.frames_received + c.frames_received
    row.frames_dropped = base.frames_dropped + c.frames_dropped
    row.frames_analysed = base.frames_analysed + c.frames_analysed
    row.faces_seen = base.faces_seen + c.faces_seen


def _counters(info: live.DeploymentInfo) -> dict[str, Any]:
    return {
        "frames_received": info.frames_received,
        "frames_dropped": info.frames_dropped,
        "frames_analysed": info.frames_analysed,
        "faces_seen": info.faces_seen,
        "alerts": info.alerts,
    }
