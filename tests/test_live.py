"""Live recognition: a deployment plays a video with enrolled faces against an authorised
watchlist and raises one alert per track and subject; nothing else is stored, alerts go at
the end of their retention period, and the hand-off drops frames rather than queue them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

import facetrail
import streams
from conftest import Team, make_team
from facetrail.errors import InvalidInputError, MediaError, PermissionDeniedError, PolicyError
from facetrail.service import live
from facetrail.service.live import FrameSlot, strip_credentials
from facetrail.service.retention import DueAlerts
from facetrail.service.tables import Alert, Deployment, ProbeFace, ProbeMedia
from facetrail.store.models import utcnow

FR = "examples/face_recognition"
CLIP = f"{FR}/short_hamilton_clip.mp4"
MIRANDA = "lin-manuel-miranda"
WATCHLIST = "wl-live"  # authorised: Miranda only (Obama is enrolled, not on it)
PACE = 4.0  # the 9 s clip in about 2 s
OUT = {"capture_output": True, "text": True, "check": True}


def _in(**kw: float) -> datetime:
    return datetime.now(UTC) + timedelta(**kw)


def _blob_files(data: Path) -> set[Path]:
    root = data / "blobs"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@dataclass
class World:
    team: Team
    clip: Path
    ft: facetrail.Facetrail  # the administrator's owning handle
    operator: facetrail.Facetrail
    deployment: live.DeploymentInfo
    pushed: list[live.AlertInfo]
    blobs_before: set[Path]
    blobs_after: set[Path]
    frames_decoded: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[World]:
    from facetrail.media.video import open_video

    team = make_team(tmp_path_factory.mktemp("live") / "data")
    clip = shared_data / CLIP
    with team.open("admin") as ft:
        handles = {}
        for role in ("investigator", "authoriser", "operator"):
            handles[role] = ft.as_caller(None)
            handles[role].use_token(team.tokens[role])
        ft.enrol([shared_data / FR / "lin-manuel-miranda.png"], subject=MIRANDA)
        ft.enrol([shared_data / FR / "obama.jpg"], subject="obama")
        inv = handles["investigator"]
        inv.create_watchlist(WATCHLIST, purpose="tests", expires_at=_in(days=2))
        inv.add_to_watchlist(WATCHLIST, [MIRANDA], reason="tests")
        handles["authoriser"].authorise_watchlist(WATCHLIST, reason="tests")
        before = _blob_files(team.data)
        pushed: list[live.AlertInfo] = []
        info = handles["operator"].start_deployment(
            WATCHLIST,
            str(clip),
            _in(minutes=5),
            wait=True,
            on_alert=pushed.append,
            pace=PACE,
            location="Test Street, camera 1",
        )
        with open_video(clip) as video:
            decoded = sum(1 for _ in video.frames())
        yield World(
            team,
            clip,
            ft,
            handles["operator"],
            info,
            pushed,
            before,
            _blob_files(team.data),
            decoded,
        )


def test_alerts_arrive_for_the_watchlist_subject_once_per_track(world: World) -> None:
    d = world.deployment
    assert d.status == "ended", d.error
    alerts = world.operator.alerts(d.id)
    assert alerts and {a.subject for a in alerts} == {MIRANDA}
    assert [a.id for a in world.pushed] == [a.id for a in alerts]  # pushed as they came
    tracks = [(a.track, a.subject) for a in alerts]
    assert len(tracks) == len(set(tracks))  # one alert per (track, subject)
    assert len(alerts) < d.frames_analysed
    for a in alerts:
        assert a.score >= d.threshold and a.fmr is not None and a.best_shot_sha256
        assert world.operator.alert_best_shot(a.id).startswith(b"\x89PNG")


def test_counters_are_plausible(world: World) -> None:
    d = world.operator.deployment(world.deployment.id)
    assert d.frames_received == world.frames_decoded
    assert d.frames_dropped >= 0
    assert 0 < d.frames_analysed <= d.frames_received - d.frames_dropped
    assert d.faces_seen > d.alerts == len(world.pushed)


def test_nothing_but_alerts_is_stored(world: World) -> None:
    with world.ft.store.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(ProbeFace)) == 0
        assert s.scalar(select(func.count()).select_from(ProbeMedia)) == 0
        shots = set(s.scalars(select(Alert.best_shot_sha256)))
    new = world.blobs_after - world.blobs_before
    assert {p.name for p in new} == shots  # one file per best shot, nothing else


def test_the_source_is_stored_without_credentials() -> None:
    assert strip_credentials("rtsp://user:secret@cam.local:554/s1") == "rtsp://cam.local:554/s1"
    assert strip_credentials("/videos/a@b.mp4") == "/videos/a@b.mp4"


def test_review_and_report(world: World) -> None:
    alerts = world.operator.alerts(world.deployment.id)
    reviewed = world.operator.review_alert(alerts[0].id, "confirmed", note="stopped and spoken to")
    assert reviewed.outcome == "confirmed" and reviewed.reviewed_by == "operator"
    if len(alerts) > 1:
        world.operator.review_alert(alerts[1].id, "false", note="not him")
    with pytest.raises(InvalidInputError):
        world.operator.review_alert(alerts[0].id, "maybe", note="?")
    report = world.operator.live_report()
    row = next(r for r in report.deployments if r.id == world.deployment.id)
    assert row.alerts == len(alerts) and row.confirmed == 1
    assert row.false_alerts == (1 if len(alerts) > 1 else 0)
    assert row.faces_seen == world.deployment.faces_seen and row.duration_s > 0
    assert row.location == "Test Street, camera 1" and row.watchlist_size == 1
    assert row.false_alert_rate == pytest.approx(row.false_alerts / row.faces_seen)
    assert report.unreviewed == report.alerts - report.confirmed - report.false_alerts
    later = world.operator.live_report(since=_in(minutes=1))
    assert later.deployments == [] and later.faces_seen == 0 and later.false_alert_rate is None
    with pytest.raises(PermissionDeniedError):
        world.ft.as_caller(world.ft.caller).review_alert(alerts[0].id, "false", note="admin")
    actions = {e["action"] for e in world.ft.store.export_audit()}
    assert {"live.start", "live.alert", "live.end", "alert.view", "alert.review"} <= actions


def test_unauthorised_or_expired_watchlists_cannot_be_deployed(world: World) -> None:
    handles = {r: world.ft.as_caller(None) for r in ("investigator", "operator")}
    for role, h in handles.items():
        h.use_token(world.team.tokens[role])
    inv, op = handles["investigator"], handles["operator"]
    inv.create_watchlist("wl-unauthorised", purpose="tests", expires_at=_in(days=1))
    inv.add_to_watchlist("wl-unauthorised", [MIRANDA], reason="tests")
    with pytest.raises(PolicyError, match="awaiting authorisation"):
        op.start_deployment("wl-unauthorised", str(world.clip), _in(minutes=1), wait=True)
    with pytest.raises(PolicyError, match="expires"):  # past the watchlist's expiry
        op.start_deployment(WATCHLIST, str(world.clip), _in(days=3), wait=True)
    with world.ft.store.session() as s:
        s.execute(text("UPDATE watchlists SET expires_at = '2020-01-01 00:00:00.000000'"))
    try:
        with pytest.raises(PolicyError, match="expired"):
            op.start_deployment(WATCHLIST, str(world.clip), _in(minutes=1), wait=True)
    finally:
        with world.ft.store.session() as s:
            s.execute(text(f"UPDATE watchlists SET expires_at = '{_in(days=2):%Y-%m-%d %H:%M:%S}'"))
    with pytest.raises(PermissionDeniedError):
        inv.start_deployment(WATCHLIST, str(world.clip), _in(minutes=1), wait=True)
    with pytest.raises(MediaError):
        op.start_deployment(WATCHLIST, str(world.clip.with_name("nope.mp4")), _in(minutes=1))
    with world.ft.store.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Deployment)) == 1


def test_a_deployment_past_its_end_time_stops_by_itself(world: World) -> None:
    started = time.monotonic()
    info = world.operator.start_deployment(
        WATCHLIST, str(world.clip), _in(seconds=1.5), wait=True, pace=1.0
    )
    assert info.status == "ended" and time.monotonic() - started < 6
    assert 0 < info.frames_received < world.frames_decoded  # it did not play to the end


def test_stop_a_background_deployment(world: World) -> None:
    info = world.operator.start_deployment(WATCHLIST, str(world.clip), _in(minutes=1), pace=1.0)
    assert info.status == "running"
    assert [d.id for d in world.operator.deployments() if d.status == "running"] == [info.id]
    time.sleep(0.5)
    stopped = world.operator.stop_deployment(info.id, reason="tests")
    assert stopped.status == "stopped" and stopped.stopped_at is not None
    with pytest.raises(InvalidInputError, match="not running"):
        world.operator.stop_deployment(info.id)


def test_alert_retention_deletes_alerts_and_their_files(world: World) -> None:
    with world.ft.store.session(write=False) as s:
        shots = set(s.scalars(select(Alert.best_shot_sha256)))
    assert shots and all((world.ft.store.blobs.path(sha)).exists() for sha in shots)
    run = world.ft.run_retention()
    assert run.alerts_purged == 0  # not due yet
    assert not [d for d in world.ft.retention_report(0).due if isinstance(d, DueAlerts)]
    groups = [d for d in world.ft.retention_report(1).due if isinstance(d, DueAlerts)]
    (due,) = [d for d in groups if d.deployment == world.deployment.id]
    assert due.alerts == world.deployment.alerts
    assert utcnow() + timedelta(hours=23) < due.first_due_at <= due.last_due_at
    world.ft.set_policy("alert_retention_hours", 0, reason="tests")
    run = world.ft.run_retention()
    assert run.alerts_purged >= len(shots)
    with world.ft.store.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 0
    assert not any(world.ft.store.blobs.path(sha).exists() for sha in shots)
    report = world.operator.live_report()  # the counts outlive the alerts
    assert report.alerts == world.deployment.alerts + sum(
        d.alerts for d in report.deployments if d.id != world.deployment.id
    )
    assert any(e["action"] == "retention.alerts" for e in world.ft.store.export_audit())
    world.ft.set_policy("alert_retention_hours", 24, reason="tests")


def test_a_restart_suspends_or_interrupts_orphaned_deployments(tmp_path: Path) -> None:
    """Left "running" by a process that is gone: a silent one (no heartbeat), or one of this
    host whose pid no longer exists (at once). Resumable ones are suspended for the service
    to resume; the others are interrupted."""
    team = make_team(tmp_path / "data", approvals=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **OUT)
    here = f"{socket.gethostname()}:{int(dead.stdout)}"
    rows = [
        ("rtsp://cam/1", None, _in(minutes=-5), False),  # silent
        ("rtsp://cam/2", here, _in(seconds=-1), False),  # its process died just now
        ("rtsp://cam/3", here, _in(seconds=-1), True),  # the same, resumable
        ("rtsp://cam/4", f"{socket.gethostname()}:{os.getpid()}", _in(seconds=-1), True),
    ]
    with team.open("admin") as ft, ft.store.session() as s:
        for source, runner, seen, resumable in rows:
            s.add(
                Deployment(
                    watchlist_name="gone",
                    source=source,
                    threshold=0.5,
                    started_by=1,
                    until=_in(hours=1),
                    status="running",
                    seen_at=seen,
                    runner=runner,
                    resumable=resumable,
                )
            )
    with team.open("auditor") as ft:
        status = {d.source: d.status for d in ft.deployments()}
        assert status == {
            "rtsp://cam/1": "interrupted",
            "rtsp://cam/2": "interrupted",
            "rtsp://cam/3": "suspended",
            "rtsp://cam/4": "running",  # this very process, alive and beating
        }
    with facetrail.open(team.data) as service:
        # The service resumes what it can: this one was started by the admin, who may not.
        assert service.resume_deployments() == []
    with team.open("auditor") as ft:
        (d,) = [d for d in ft.deployments() if d.source == "rtsp://cam/3"]
        assert d.status == "interrupted" and "can no longer deploy" in (d.error or "")


def test_a_service_restart_resumes_its_deployment(
    world: World, tmp_path: Path, shared_data: Path
) -> None:
    """A stream deployment started by the service is suspended when the service stops and
    resumed (same deployment, counters carried on) when it starts again; one from a file is
    interrupted instead. Its own data directory: the restarts open and close several
    handles on it, which the module's shared directory is kept out of."""
    team = make_team(tmp_path / "data")
    with team.open("admin") as ft:
        ft.enrol([shared_data / FR / "lin-manuel-miranda.png"], subject=MIRANDA)
    with team.open("investigator") as ft:
        ft.create_watchlist(WATCHLIST, purpose="tests", expires_at=_in(days=2))
        ft.add_to_watchlist(WATCHLIST, [MIRANDA], reason="tests")
    with team.open("authoriser") as ft:
        ft.authorise_watchlist(WATCHLIST, reason="tests")
    url, server = streams.serve(world.clip, pace=1, loops=30)
    port = int(url.rsplit(":", 1)[1])
    try:
        with team.open("operator") as ft:
            d = ft.start_deployment(WATCHLIST, url, _in(minutes=5), resumable=True)
            assert d.resumable
            _wait_for(lambda: ft.deployment(d.id).frames_analysed > 3)
        with team.open("auditor") as ft:
            before = ft.deployment(d.id)
        assert before.status == "suspended" and before.stopped_at is None
        server.wait(timeout=30)  # its client went away
        url, server = streams.serve(world.clip, pace=1, loops=30, port=port)
        with facetrail.open(team.data) as service:  # as `facetrail serve` does
            (resumed,) = service.resume_deployments()
            assert resumed.id == d.id and resumed.status == "running" and resumed.resumed == 1
            op = service.as_caller(None)
            op.use_token(team.tokens["operator"])
            _wait_for(lambda: op.deployment(d.id).frames_analysed > before.frames_analysed)
            op.stop_deployment(d.id, reason="tests")
            after = op.deployment(d.id)
            assert after.status == "stopped" and after.frames_received > before.frames_received
            actions = [
                e["action"]
                for e in service.store.export_audit()
                if e["object_type"] == "deployment" and e["object_ids"] == [d.id]
            ]
            assert actions == ["live.start", "live.suspend", "live.resume", "live.stop"]
    finally:
        server.kill()
        server.wait()
    with team.open("operator") as ft:
        f = ft.start_deployment(WATCHLIST, str(world.clip), _in(minutes=5), resumable=True)
        assert not f.resumable  # a file is a rehearsal: it is not played again
    with team.open("auditor") as ft:
        ended = ft.deployment(f.id)
        assert ended.status == "interrupted" and "stopped" in (ended.error or "")


def test_memory_stays_flat_when_frames_come_faster_than_they_are_analysed(
    world: World,
) -> None:
    """A minute of stream at 8x real time (about 240 frames/s): most frames are dropped and
    counted, and the process's memory does not grow with the frames received."""
    url, server = streams.serve(world.clip, pace=8, loops=6)
    rss: list[int] = []
    running = threading.Event()
    running.set()

    def sample() -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while running.is_set():
            with open("/proc/self/statm") as f:
                rss.append(int(f.read().split()[1]) * page)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        info = world.operator.start_deployment(
            WATCHLIST, url, _in(minutes=2), wait=True, backoff=0.1, reconnect_attempts=0
        )
    finally:
        running.clear()
        sampler.join()
        server.kill()
        server.wait()
    assert info.frames_received > 1500, info
    assert info.frames_dropped > info.frames_received / 2
    assert info.frames_analysed + info.frames_dropped == info.frames_received
    third = len(rss) // 3
    growth = max(rss[2 * third :]) - max(rss[third : 2 * third])
    assert growth < 30 * 2**20, f"memory grew by {growth / 2**20:.0f} MiB"


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_hand_off_keeps_only_the_newest_frames() -> None:
    slot = FrameSlot(capacity=2)
    for i in range(10):
        slot.put(i)
    assert len(slot) == 2 and slot.received == 10 and slot.dropped == 8
    assert slot.take(0) == 8 and slot.take(0) == 9 and slot.take(0.01) is None
    slot.close()
    assert slot.closed and slot.take(1) is None

    # A slow consumer of a fast producer: drops, never a queue.
    slot, taken = FrameSlot(), []

    def produce() -> None:
        for i in range(200):
            slot.put(i)
            time.sleep(0.0005)
        slot.close()

    producer = threading.Thread(target=produce)
    producer.start()
    while not slot.closed:
        item = slot.take(0.1)
        if item is not None:
            taken.append(item)
            time.sleep(0.01)
    producer.join()
    assert slot.dropped > 0 and len(taken) + slot.dropped == 200
    assert taken == sorted(taken)


def test_the_cli(world: World) -> None:
    """`facetrail live ...` as separate processes on the same data directory."""
    from test_cli import run, run_json

    until = _in(seconds=40).isoformat()  # the clip (9 s) ends first, however slow the start
    args = ["live", "start", "--watchlist", WATCHLIST, "--source", str(world.clip)]
    started = run_json(world.team, *args, "--until", until, role="operator")
    d = started["deployment"]
    assert d["status"] == "ended" and d["frames_received"] > 0
    assert {a["subject"] for a in started["alerts"]} == {MIRANDA}
    listed = run_json(world.team, "live", "list", role="auditor")["deployments"]
    assert d["id"] in [x["id"] for x in listed]
    status = run(world.team, "live", "status", str(d["id"]), role="auditor").stdout
    assert f"deployment {d['id']}: ended" in status
    alert = started["alerts"][0]["id"]
    reviewed = run_json(
        world.team, "live", "review", str(alert), "false", "--note", "no", role="operator"
    )
    assert reviewed["outcome"] == "false"
    report = run(world.team, "live", "report", role="auditor").stdout
    assert "faces seen" in report
    refused = run(world.team, "live", "stop", str(d["id"]), check=False, role="investigator")
    assert refused.returncode != 0 and "may not live.deploy" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_network_stream_on_loopback(world: World) -> None:
    """The clip served as MPEG-TS over TCP: alerts arrive; when the server goes away the
    source is reopened with backoff a bounded number of times, then given up."""
    url, server = streams.serve(world.clip, pace=3)
    blobs = _blob_files(world.team.data)
    info = world.operator.start_deployment(
        WATCHLIST,
        url,
        _in(minutes=1),
        wait=True,
        reconnect_attempts=3,
        backoff=0.2,
    )
    server.wait(timeout=30)
    assert info.status == "interrupted" and "source lost" in (info.error or "")
    assert info.frames_received > 100 and info.alerts >= 1
    alerts = world.operator.alerts(info.id)
    assert {a.subject for a in alerts} == {MIRANDA}
    new = {p.name for p in _blob_files(world.team.data) - blobs}
    shots = {a.best_shot_sha256 for a in alerts}
    # Nothing but best shots was written (one may be the same file as an earlier run's).
    assert new <= shots and all(world.ft.store.blobs.exists(sha) for sha in shots if sha)


def test_withdrawing_the_authorisation_stops_a_running_deployment(world: World) -> None:
    handles = {r: world.ft.as_caller(None) for r in ("investigator", "authoriser")}
    for role, h in handles.items():
        h.use_token(world.team.tokens[role])
    inv = handles["investigator"]
    inv.create_watchlist("wl-withdrawn", purpose="tests", expires_at=_in(days=1))
    inv.add_to_watchlist("wl-withdrawn", [MIRANDA], reason="tests")
    handles["authoriser"].authorise_watchlist("wl-withdrawn", reason="tests")
    info = world.operator.start_deployment("wl-withdrawn", str(world.clip), _in(minutes=1))
    time.sleep(0.3)
    inv.add_to_watchlist("wl-withdrawn", ["obama"], reason="tests")  # withdraws it
    for _ in range(50):
        if world.operator.deployment(info.id).status != "running":
            break
        time.sleep(0.1)
    d = world.operator.deployment(info.id)
    assert d.status == "stopped" and "awaiting authorisation" in (d.error or "")
