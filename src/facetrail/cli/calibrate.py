"""`facetrail calibrate`: a calibration from the user's own labelled faces.

So that every score shown carries a false match rate estimated on the population the force
actually searches, not only on LFW's. Saving it is a policy change (administrators; audited);
`--dry-run` only measures and shows what would change (administrators and auditors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from facetrail.cli.common import (
    DataOpt,
    JsonOpt,
    emit_json,
    out,
    progress_bar,
    rate_text,
    score_text,
    session,
)

app = typer.Typer()


@app.command("calibrate")
def calibrate(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Labelled images: <person>/<image> folders, or the images --labels names."
        ),
    ],
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="CSV with a header: 'image,identity' (an image or a person folder, and who it "
            "is), or 'a,b,same' (labelled pairs of images; same: yes/no).",
        ),
    ] = None,
    target_fmr: Annotated[
        float | None,
        typer.Option(
            "--target-fmr",
            min=0,
            max=1,
            help="FMR to show the threshold for (default: configured).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N person folders.")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Folder to keep the descriptors in, for a later run."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Measure and show; save nothing.")
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the model's calibration on your own labelled faces and save it (a policy change)."""
    with session(data, as_json) as ft, progress_bar("describing") as (total, advance):
        run = ft.calibrate(
            folder,
            labels=labels,
            target_fmr=target_fmr,
            limit=limit,
            cache=cache,
            dry_run=dry_run,
            progress=advance,
            on_total=total,
        )
    if as_json:
        emit_json(run)
        return
    who = f"{run.people} people, " if run.people is not None else ""
    out.print(
        f"{run.model} on {who}{run.images} images: {run.genuine_comparisons} genuine and "
        f"{run.impostor_comparisons} impostor comparisons (lowest measurable FMR "
        f"{rate_text(run.min_fmr)})"
    )
    table = Table("target FMR", "threshold", "FNMR", "impostors above it", "impostors needed")
    for p in [
        run.target,
        *[p for p in run.operating_points if p.target_fmr != run.target.target_fmr],
    ]:
        threshold = score_text(p.threshold) if p.measurable else "not measurable"
        above = "-" if p.impostors_above is None else str(p.impostors_above)
        table.add_row(
            rate_text(p.target_fmr), threshold, rate_text(p.fnmr), above, str(p.impostors_needed)
        )
    out.print(table)
    if run.previous is not None:
        before = run.previous.get("operating_points", {}).get(f"{run.target.target_fmr:g}")
        if before:
            out.print(
                f"in use now ({run.previous['source']}): threshold {before['threshold']:.4f} "
                f"at FMR {run.target.target_fmr:g}"
            )
    if run.normalised is not None:
        n = run.normalised
        out.print(
            f"normalised scores ({n['method']}, against the cohort of {n['cohort_faces']} "
            f"faces): threshold {score_text(n['threshold'])} at FMR {run.target.target_fmr:g}"
        )
    for note in run.notes:
        out.print(f"note: {note}")
    if run.saved:
        out.print(f"calibration saved: {run.saved}")
        if run.normalised is not None and run.normalised["saved"]:
            out.print(f"calibration of normalised scores saved: {run.normalised['saved']}")
    else:
        out.print("dry run: nothing saved")
