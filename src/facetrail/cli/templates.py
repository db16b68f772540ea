"""Bulk transfer of templates: templates export FILE, templates import FILE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facetrail.cli.common import DataOpt, JsonOpt, emit_json, out, session

templates_app = typer.Typer(
    help="Move templates between systems (a migration): export and import.",
    no_args_is_help=True,
)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="ID",
        help="The model the templates are of (default: the configured model).",
        show_default=False,
    ),
]
ReasonOpt = Annotated[str | None, typer.Option(help="Why (audited).")]


@templates_app.command("export")
def templates_export(
    path: Annotated[Path, typer.Argument(help="The .npz file to write (mode 0600).")],
    model: ModelOpt = None,
    reason: ReasonOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write every template of a model, with its subject, reference number and source
    image's hash, to a file (administrators; audited with counts and the file's hash)."""
    with session(data, as_json) as ft:
        report = ft.export_templates(path, model=model, reason=reason)
    if as_json:
        emit_json(report.to_dict())
    else:
        out.print(
            f"exported {report.templates} template(s) of {report.subjects} subject(s), model "
            f"{report.model}, to {report.file} (sha256 {report.sha256})"
        )


@templates_app.command("import")
def templates_import(
    path: Annotated[Path, typer.Argument(help="A template file (.npz; see the README).")],
    model: ModelOpt = None,
    reason: ReasonOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add the templates of a file made by another system or by `templates export`, all or
    none; rows the gallery already holds are skipped (administrators; audited)."""
    with session(data, as_json) as ft:
        report = ft.import_templates(path, model=model, reason=reason)
    if as_json:
        emit_json(report.to_dict())
    else:
        out.print(
            f"imported {report.added} template(s) of model {report.model} for "
            f"{report.subjects} subject(s) ({report.created_subjects} new); "
            f"{report.duplicates} already held"
        )
