"""Report commands: self-contained HTML pages made from evaluation results.

A report is made from a results file the caller already holds, and reads nothing from the
data directory, so it needs no session; errors are still one line and an exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facetrail.cli.common import JsonOpt, emit_json, fail, out
from facetrail.errors import FacetrailError

report_app = typer.Typer(help="Write reports from evaluation results.", no_args_is_help=True)


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
