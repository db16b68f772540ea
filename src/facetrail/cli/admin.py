"""Oversight and storage: audit ..., retention ..., key ..."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from facetrail.cli.common import (
    DataOpt,
    JsonOpt,
    emit_json,
    err,
    out,
    session,
    settings_for,
    show,
    when,
)
from facetrail.service.retention import DueAlerts, DueSearch

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
retention_app = typer.Typer(help="Deleting what may no longer be kept.", no_args_is_help=True)
key_app = typer.Typer(help="Encryption at rest.", no_args_is_help=True)
serve_app = typer.Typer()


@audit_app.command("verify")
def audit_verify(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Check the audit trail's hash chain; name the first broken link."""
    with session(data, as_json) as ft:
        report = ft.verify_audit()
    if as_json:
        emit_json(report)
    elif report.ok:
        out.print(f"audit trail intact: {report.events} event(s)")
    if not report.ok:
        err.print(f"error: audit trail broken at event {report.first_broken}: {report.problem}")
        raise typer.Exit(8)


@audit_app.command("export")
def audit_export(
    since: Annotated[
        datetime | None, typer.Option(help="Only events at or after this time (ISO 8601).")
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write JSON lines here.")] = None,
    data: DataOpt = None,
) -> None:
    """Write the audit events as JSON lines (stdout, or --out FILE) for an outside archive."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # times without a zone are taken as UTC
    with session(data, False) as ft:
        events = ft.export_audit(since)
    lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
    if out_file is None:
        sys.stdout.write(lines)
    else:
        out_file.write_text(lines)
        err.print(f"wrote {len(events)} event(s) to {out_file}")


@retention_app.command("run")
def retention_run(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Delete what policy no longer allows to be kept (also done when the service starts)."""
    with session(data, as_json) as ft:
        run = ft.run_retention()
    show(
        run,
        as_json,
        lambda r: out.print(
            f"purged the results of {len(r.searches_purged)} search(es) "
            f"({r.probe_files} probe file(s)); erased {len(r.subjects_erased)} subject(s) at "
            f"their review date; {r.blobs_deleted} file(s) removed from disk"
        ),
    )


@retention_app.command("report")
def retention_report(
    days: Annotated[int, typer.Option(help="Show what falls due within this many days.")] = 30,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What retention deleted, and what falls due next."""
    with session(data, as_json) as ft:
        report = ft.retention_report(days)

    def render(r: object) -> None:
        table = Table("deleted", "what", "ids", "by", "reason")
        for e in r.deleted:  # type: ignore[attr-defined]
            ids = ",".join(str(i) for i in e["object_ids"])
            table.add_row(e["at"][:16], e["action"], ids, e["actor"], e["reason"] or "")
        out.print(table)
        due = Table("due", "what")
        for d in r.due:  # type: ignore[attr-defined]
            if isinstance(d, DueSearch):
                due.add_row(when(d.due_at), f"search {d.search_id} of case {d.case}")
            elif isinstance(d, DueAlerts):
                what = f"{d.alerts} alert(s) of live deployment {d.deployment}"
                due.add_row(f"{when(d.first_due_at)} to {when(d.last_due_at)}", what)
            else:
                due.add_row(when(d.due_at), f"subject {d.subject}")
        out.print(due)

    show(report, as_json, render)


@key_app.command("generate")
def key_generate(
    path: Annotated[Path, typer.Argument(help="Where to write the new key (mode 0600).")],
) -> None:
    """Write a new random AES-256 key; point encryption_key_file (or FACETRAIL_ENCRYPTION_KEY
    with its contents) at it."""
    from facetrail.errors import FacetrailError
    from facetrail.store.crypto import generate_key_file

    try:
        generate_key_file(path)
    except FacetrailError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    out.print(f"wrote a new key to {path}; set FACETRAIL_ENCRYPTION_KEY_FILE={path}")


@key_app.command("encrypt-existing")
def key_encrypt_existing(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Encrypt the images, crops, templates and cohort faces stored before a key was
    configured."""
    with session(data, as_json) as ft:
        counts = ft.encrypt_existing()
    show(
        counts,
        as_json,
        lambda c: out.print(
            f"encrypted {c['blobs']} stored file(s), {c['templates']} template(s) and "
            f"{c['cohort_faces']} cohort face(s)"
        ),
    )


@serve_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    jobs: Annotated[int, typer.Option(min=1, max=16, help="Searches run at once.")] = 1,
    data: DataOpt = None,
) -> None:
    """Serve the HTTP API (/api/v1, OpenAPI at /docs) and the web workspace."""
    import uvicorn

    from facetrail.errors import FacetrailError
    from facetrail.web.app import create_app

    try:
        app = create_app(settings_for(data), jobs=jobs)
    except FacetrailError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    err.print(f"facetrail serving on http://{host}:{port} (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
