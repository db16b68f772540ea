"""Cohort commands (issue 10): build, list, show and erase the faces search scores are
normalised against."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from facetrail.cli.common import DataOpt, JsonOpt, emit_json, out, progress_bar, session

cohort_app = typer.Typer(
    help="The cohort: faces of people who are not subjects, to normalise search scores.",
    no_args_is_help=True,
)


@cohort_app.command("build")
def build(
    folder: Annotated[
        Path | None,
        typer.Argument(help="Folder of face images (any depth) of people who are not subjects."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Name for these faces (default: the folder's name)."),
    ] = None,
    closed_cases: Annotated[
        bool,
        typer.Option(
            "--closed-cases",
            help="Instead of a folder: the probe faces of closed cases that review found to "
            "be nobody in the gallery, where policy allows (cohort_from_closed_cases).",
        ),
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe the one clear face of each image and add it to the cohort (administrators).
    Only descriptors are kept, with the image's hash and the source; the images are not."""
    if (folder is None) == (not closed_cases):
        raise typer.BadParameter("give a FOLDER or --closed-cases, not both")
    with session(data, as_json) as ft, progress_bar("describing") as (total, advance):
        if closed_cases:
            reports = ft.build_cohort_from_cases(progress=advance, on_total=total)
        else:
            assert folder is not None
            reports = [ft.build_cohort(folder, source=source, progress=advance, on_total=total)]
    if as_json:
        return emit_json(reports if closed_cases else reports[0])
    if not reports:
        out.print("no probe face of a closed case can join the cohort")
    for report in reports:
        out.print(
            f"cohort source {report.source!r} ({report.model}): {report.added} face(s) added "
            f"from {report.images} image(s), {report.duplicates} already in the cohort, "
            f"{len(report.skipped)} skipped"
        )
        for item in report.skipped:
            out.print(f"  skipped {item['image']}: {item['reason']}")


def _table(rows: list) -> Table:  # type: ignore[type-arg]
    table = Table("source", "model", "faces", "added by", "first added", "last added")
    for r in rows:
        table.add_row(
            r.source,
            r.model,
            str(r.faces),
            r.created_by,
            f"{r.first_added:%Y-%m-%d %H:%M}",
            f"{r.last_added:%Y-%m-%d %H:%M}",
        )
    return table


@cohort_app.command("list")
def list_(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """The cohort's sources with their face counts per model."""
    with session(data, as_json) as ft:
        rows = ft.cohort_sources()
    if as_json:
        return emit_json(rows)
    if not rows:
        out.print("the cohort is empty: search scores are not normalised")
        return
    out.print(_table(rows))


@cohort_app.command("show")
def show(
    source: Annotated[str, typer.Argument(help="A source, as `cohort list` names it.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One source of the cohort."""
    with session(data, as_json) as ft:
        rows = ft.cohort_source(source)
    if as_json:
        return emit_json(rows)
    out.print(_table(rows))


@cohort_app.command("erase")
def erase(
    source: Annotated[
        str | None, typer.Argument(help="The source to erase (omit with --all).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Erase the whole cohort.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (audited).")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase cohort faces: one source, or all of them (administrators); audited."""
    if (source is None) == (not all_):
        raise typer.BadParameter("give a SOURCE or --all, not both")
    with session(data, as_json) as ft:
        report = ft.erase_cohort(None if all_ else source, reason=reason)
    if as_json:
        return emit_json(report)
    out.print(f"erased {report.faces} cohort face(s) of {', '.join(report.sources) or 'no source'}")
