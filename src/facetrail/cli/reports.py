"""Report commands: self-contained HTML pages that print well to PDF.

`report bias` is made from a results file the caller already holds and reads nothing from the
data directory, so it needs no session. `report case` and `report transparency` read the data
directory as the logged-in user (the service checks the role and audits the report). Each
writes one HTML file; with `--json` it prints the report's figures (the very object the page
was rendered from) and the file's path. Errors are one line and an exit code.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from facetrail.cli.common import DataOpt, JsonOpt, emit_json, fail, out, session
from facetrail.errors import FacetrailError
from facetrail.files import write_atomic

report_app = typer.Typer(
    help="Write self-contained HTML reports (case, transparency, bias).", no_args_is_help=True
)
OutOpt = Annotated[Path | None, typer.Option("--out", help="HTML file to write.")]


@report_app.command("bias")
def bias(
    results: Annotated[Path, typer.Argument(help="bias.json written by `facetrail eval bias`.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write (default: RESULTS.html).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A self-contained HTML bias report (chart embedded; prints to PDF)."""
    from facetrail.reports.bias import write_bias_report

    try:
        path = write_bias_report(results, out_file)
    except FacetrailError as exc:
        fail(str(exc), type(exc).__name__, exc.exit_code, as_json)
        return
    if as_json:
        emit_json({"report": str(path)})
    else:
        out.print(f"bias report written to {path}")


def _write(target: Path, html: str, as_json: bool) -> None:
    try:
        write_atomic(target, html.encode("utf-8"))
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror}", "InvalidInputError", 2, as_json)


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@report_app.command("case")
def case(
    reference: Annotated[str, typer.Argument(help="The case reference.")],
    out_file: OutOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A case's report: inputs with their SHA-256, parameters, model, candidates with face
    crops and scores, decisions and reviewers, the case's audit events (default file:
    case-REF.html)."""
    from facetrail.reports.case import render_case_report
    from facetrail.service.sheets import safe_name

    with session(data, as_json) as ft:
        report = ft.case_report(reference)
        target = out_file or Path(f"case-{safe_name(reference, 100)}.html")
        _write(target, render_case_report(report), as_json)
    if as_json:
        emit_json({"report": str(target), **report.to_dict()})
        return
    t = report.totals
    out.print(
        f"case report written to {target}: {t.searches} searches, {t.candidates} candidates, "
        f"{t.decided} decided, {t.audit_events} audit events"
    )


@report_app.command("transparency")
def transparency(
    start: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD, UTC).")],
    end: Annotated[str, typer.Option("--to", help="Last day, included (YYYY-MM-DD, UTC).")],
    out_file: OutOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A period's figures for publication: searches, faces processed, candidates reviewed and
    confirmed; live deployments with faces seen, alerts, confirmed and false alerts and the
    false alert rate (default file: transparency-FROM-TO.html)."""
    from facetrail.reports.transparency import render_transparency_report

    first, last = _day(start), _day(end)
    with session(data, as_json) as ft:
        report = ft.transparency_report(first, last)
        target = out_file or Path(f"transparency-{first}-{last}.html")
        _write(target, render_transparency_report(report), as_json)
    if as_json:
        emit_json({"report": str(target), **report.to_dict()})
        return
    r, live = report.retrospective, report.live
    out.print(
        f"transparency report written to {target}: {r.searches} searches, {r.faces} faces; "
        f"{len(report.deployments)} deployments, {live.faces_seen} faces seen, "
        f"{live.alerts} alerts, {live.false_alerts} false"
    )
