"""Live recognition: live start, stop, status, list, alerts, review, report."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from facetrail.cli.common import DataOpt, JsonOpt, err, out, parse_time, session, show, when

live_app = typer.Typer(
    help="Live deployments: a stream watched against an authorised watchlist.",
    no_args_is_help=True,
)

IdArg = Annotated[int, typer.Argument(help="Deployment id.")]


def _deployment(d: Any) -> None:
    out.print(
        f"deployment {d.id}: {d.status}, watchlist {d.watchlist}, source {d.source}, "
        f"threshold {d.threshold}"
    )
    ended = f", stopped {when(d.stopped_at)}" if d.stopped_at else ""
    out.print(
        f"  started by {d.started_by} {when(d.started_at)} UTC, until {when(d.until)} UTC{ended}"
    )
    out.print(
        f"  frames received {d.frames_received}, dropped {d.frames_dropped}, analysed "
        f"{d.frames_analysed}; faces seen {d.faces_seen}; alerts {d.alerts} (confirmed "
        f"{d.confirmed}, false {d.false_alerts})"
    )
    if d.error:
        out.print(f"  {d.error}")


def _alert_line(a: Any) -> str:
    fmr = "unknown" if a.fmr is None else f"{a.fmr:.2g}"
    state = f" {a.outcome} by {a.reviewed_by}: {a.note}" if a.outcome else ""
    return (
        f"alert {a.id}: {a.subject} score {a.score:.3f} (estimated FMR {fmr}), track "
        f"{a.track}, {when(a.at)} UTC{state}"
    )


@live_app.command("start")
def live_start(
    watchlist: Annotated[str, typer.Option(help="An authorised watchlist.")],
    source: Annotated[
        str,
        typer.Option(
            help="rtsp://, http(s)://, udp://, tcp:// stream, a /dev/video* camera, or a video "
            "file (played at its real-time pace)."
        ),
    ],
    until: Annotated[str, typer.Option(help="End time (ISO 8601; no zone means UTC).")],
    threshold: Annotated[
        float | None, typer.Option(help="Alert threshold (default: policy; never below the floor).")
    ] = None,
    location: Annotated[
        str | None, typer.Option(help="Where the camera watches (published in the report).")
    ] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a deployment in the foreground until its end time (or Ctrl-C), printing alerts."""
    end = parse_time(until)
    started: list[int] = []

    def on_started(d: Any) -> None:
        started.append(d.id)
        err.print(f"deployment {d.id} running until {when(d.until)} UTC; Ctrl-C stops it")

    def on_alert(a: Any) -> None:
        if not as_json:
            out.print(_alert_line(a))

    with session(data, as_json) as ft:
        try:
            info = ft.start_deployment(
                watchlist,
                source,
                end,
                threshold,
                wait=True,
                on_alert=on_alert,
                on_started=on_started,
                location=location,
            )
        except KeyboardInterrupt:
            if not started:
                raise
            info = ft.deployment(started[0])
        alerts = ft.alerts(info.id) if as_json else []
    show({"deployment": info, "alerts": alerts} if as_json else info, as_json, _deployment)


@live_app.command("stop")
def live_stop(
    deployment: IdArg,
    reason: Annotated[str | None, typer.Option(help="Why (audited).")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a running deployment."""
    with session(data, as_json) as ft:
        info = ft.stop_deployment(deployment, reason=reason)
    show(info, as_json, _deployment)


@live_app.command("status")
def live_status(deployment: IdArg, data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """A deployment's state and counters."""
    with session(data, as_json) as ft:
        info = ft.deployment(deployment)
    show(info, as_json, _deployment)


@live_app.command("list")
def live_list(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Every deployment."""
    with session(data, as_json) as ft:
        infos = ft.deployments()

    def render(v: dict) -> None:
        table = Table("id", "status", "watchlist", "started", "until", "faces", "alerts")
        for d in v["deployments"]:
            table.add_row(
                str(d.id),
                d.status,
                d.watchlist,
                when(d.started_at),
                when(d.until),
                str(d.faces_seen),
                str(d.alerts),
            )
        out.print(table)

    show({"deployments": infos}, as_json, render)


@live_app.command("alerts")
def live_alerts(deployment: IdArg, data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """A deployment's alerts still kept (viewing is audited)."""
    with session(data, as_json) as ft:
        alerts = ft.alerts(deployment)

    def render(v: dict) -> None:
        for a in v["alerts"]:
            out.print(_alert_line(a))
        if not v["alerts"]:
            out.print("no alerts kept")

    show({"alerts": alerts}, as_json, render)


@live_app.command("review")
def live_review(
    alert: Annotated[int, typer.Argument(help="Alert id.")],
    outcome: Annotated[str, typer.Argument(help="confirmed or false.")],
    note: Annotated[str, typer.Option(help="The action taken (audited).")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark an alert confirmed or false, with the action taken."""
    with session(data, as_json) as ft:
        info = ft.review_alert(alert, outcome, note=note)
    show(info, as_json, lambda a: out.print(_alert_line(a)))


@live_app.command("report")
def live_report(
    since: Annotated[
        str | None, typer.Option("--from", help="Deployments started from (ISO 8601, UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="... and before (ISO 8601, UTC).")
    ] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Transparency: per deployment, where, watchlist size, faces seen, alerts, confirmed and
    false alerts, the false alert rate (false alerts per face seen) and duration."""
    start = parse_time(since) if since else None
    end = parse_time(until) if until else None
    with session(data, as_json) as ft:
        report = ft.live_report(start, end)

    def render(r: Any) -> None:
        table = Table(
            "id",
            "location",
            "watchlist",
            "size",
            "started",
            "minutes",
            "faces",
            "alerts",
            "true",
            "false",
        )
        for d in r.deployments:
            table.add_row(
                str(d.id),
                d.location or "",
                d.watchlist,
                "" if d.watchlist_size is None else str(d.watchlist_size),
                when(d.started_at),
                f"{d.duration_s / 60:.1f}",
                str(d.faces_seen),
                str(d.alerts),
                str(d.confirmed),
                str(d.false_alerts),
            )
        out.print(table)
        rate = "n/a" if r.false_alert_rate is None else f"{r.false_alert_rate:.4%}"
        out.print(
            f"total: {r.faces_seen} faces seen, {r.alerts} alerts, {r.confirmed} confirmed, "
            f"{r.false_alerts} false, {r.unreviewed} not reviewed; false alert rate {rate} "
            "of faces seen"
        )

    show(report, as_json, render)
