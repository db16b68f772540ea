"""The `facetrail` command: a thin front door over `facetrail.service`.

Every command takes `--data DIR` (or FACETRAIL_DATA) and `--json`; with `--json` it prints
exactly one JSON document on stdout and nothing else there (progress goes to stderr). Errors
are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from facetrail.config import Settings
from facetrail.errors import FacetrailError
from facetrail.service.app import Facetrail
from facetrail.service.search import all_failed

app = typer.Typer(
    help="facetrail: accountable facial recognition (enrol, verify, search, evaluate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Measure accuracy on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

out = Console(highlight=False, soft_wrap=True, markup=False)  # names are data, not markup
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        envvar="FACETRAIL_DATA",
        help="Data directory (default: per-user).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # ISO 8601 with its UTC offset
    return str(value)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(value), indent=2, default=_json_default) + "\n")


@contextmanager
def _session(data: Path | None, as_json: bool, **overrides: Any) -> Iterator[Facetrail]:
    """Open the data directory; turn every facetrail error into one line and an exit code."""
    try:
        settings = Settings(**({"data": data} if data else {}), **overrides)
        with Facetrail(settings) as ft:
            yield ft
    except FacetrailError as exc:
        _fail(str(exc), type(exc).__name__, exc.exit_code, as_json)
    except KeyboardInterrupt:
        _fail("interrupted", "Interrupted", 130, as_json)


def _fail(message: str, kind: str, code: int, as_json: bool) -> None:
    if as_json:
        _emit_json({"error": {"type": kind, "message": message}})
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    raise typer.Exit(code)


@contextmanager
def _progress(label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(set_total, advance) callbacks backed by a rich progress bar on stderr."""
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # no bar in logs and pipes
    )
    task = progress.add_task(label, total=None)
    with progress:
        yield (
            lambda total: progress.update(task, total=total),
            lambda n: progress.advance(task, n),
        )


# ----------------------------------------------------------------------------------------
@app.command()
def enrol(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Images, or folders of subject sub-folders.")
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="Enrol loose images as this subject.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="CSV with columns subject,image[,reference].")
    ] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Enrol reference images into the gallery (one usable face per image)."""
    with _session(data, as_json) as ft, _progress("enrolling") as (total, advance):
        report = ft.enrol(
            paths or [],
            subject=subject,
            manifest=manifest,
            on_total=total,
            progress=lambda _: advance(1),
        )
    summary = report.to_dict()
    if as_json:
        _emit_json(summary)
    else:
        out.print(
            f"enrolled {summary['enrolled']} image(s) into {len(summary['subjects'])} "
            f"subject(s); {summary['duplicates']} already enrolled; {summary['skipped']} skipped"
        )
        for item in report.skipped:
            out.print(f"  skipped {item.image}: {item.reason}")
    if not report.enrolled and not summary["duplicates"]:
        err.print("error: no image could be enrolled")
        raise typer.Exit(4)


@app.command()
def verify(
    image_a: Annotated[Path, typer.Argument(help="First image.")],
    image_b: Annotated[Path, typer.Argument(help="Second image.")],
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold (default: from the target FMR).")
    ] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the main face of two images: score, decision and what the score means."""
    with _session(data, as_json) as ft:
        report = ft.verify(image_a, image_b, threshold=threshold)
    if as_json:
        return _emit_json(report)
    verdict = "[green]same person[/]" if report.match else "[yellow]not a match[/]"
    out.print(
        f"score {report.score:.4f} (threshold {report.threshold:.4f}): {verdict}", markup=True
    )
    out.print(report.meaning)


@app.command()
def search(
    probes: Annotated[list[Path], typer.Argument(help="Probe images.")],
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="Candidates per face.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Score threshold (default: from the target FMR).")
    ] = None,
    include_below: Annotated[
        bool, typer.Option("--all", help="Also list candidates below the threshold.")
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search every face of each probe image against the gallery."""
    with _session(data, as_json) as ft, _progress("searching") as (total, advance):
        total(len(probes))
        report = ft.search(
            probes,
            top_k=top_k,
            threshold=threshold,
            include_below=include_below,
            progress=lambda _: advance(1),
        )
    failed = all_failed(report)
    if as_json:
        body = report.to_dict()
        if failed:
            body["error"] = {"type": "MediaError", "message": "no probe could be read"}
        _emit_json(body)
    else:
        _print_search(report)
    if failed:
        err.print(f"error: no probe could be read ({report.probes[0].error})")
        raise typer.Exit(3)


def _print_search(report: Any) -> None:
    out.print(
        f"threshold {report.threshold:.4f}"
        + (f" (target FMR {report.target_fmr:g})" if report.target_fmr else "")
        + f"; gallery: {report.gallery_subjects} subjects, {report.gallery_templates} templates"
    )
    for probe in report.probes:
        if probe.error:
            out.print(f"[bold]{escape(probe.probe)}[/]: [red]{escape(probe.error)}[/]", markup=True)
            continue
        out.print(f"[bold]{escape(probe.probe)}[/]: {len(probe.faces)} face(s)", markup=True)
        for i, face in enumerate(probe.faces, start=1):
            box = ",".join(f"{v:.0f}" for v in face.box)
            out.print(f"  face {i} box [{box}] quality {face.quality:.2f}")
            if not face.candidates:
                out.print("    no candidate above the threshold")
                continue
            table = Table(show_edge=False, pad_edge=False, box=None)
            for col in ("rank", "subject", "score", "est. FMR", ""):
                table.add_column(col)
            for c in face.candidates:
                fmr = "n/a" if c.fmr is None else f"{c.fmr:.2g}"
                table.add_row(
                    str(c.rank),
                    c.subject,
                    f"{c.score:.4f}",
                    fmr,
                    "" if c.above_threshold else "below threshold",
                )
            out.print(table)


@app.command()
def subjects(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """List the gallery's subjects."""
    with _session(data, as_json) as ft:
        rows = ft.subjects()
    if as_json:
        return _emit_json({"subjects": _jsonable(rows)})
    table = Table("subject", "reference", "images", "templates", "enrolled")
    for r in rows:
        table.add_row(
            r.name,
            r.reference or "",
            str(r.images),
            str(r.templates),
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)
    out.print(f"{len(rows)} subject(s)")


@app.command()
def subject(
    name: Annotated[str, typer.Argument(help="Subject name.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one subject: its reference images and faces."""
    with _session(data, as_json) as ft:
        detail = ft.subject(name)
    if as_json:
        return _emit_json(detail)
    out.print(
        f"[bold]{escape(detail.name)}[/] reference {escape(detail.reference or '-')}", markup=True
    )
    table = Table("image", "format", "size", "sha256", "face quality")
    for img in detail.images:
        qualities = ", ".join(f"{f.quality:.2f}" for f in img.faces)
        table.add_row(img.name, img.format, f"{img.width}x{img.height}", img.sha256[:16], qualities)
    out.print(table)


@app.command()
def erase(
    name: Annotated[str, typer.Argument(help="Subject to erase completely.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase a subject: images, faces, templates and index entries."""
    with _session(data, as_json) as ft:
        report = ft.erase(name)
    if as_json:
        return _emit_json(report)
    out.print(
        f"erased {name}: {report.images} image(s), {report.faces} face(s), "
        f"{report.templates} template(s), and the stored files nothing else refers to"
    )


@eval_app.command("lfw")
def eval_lfw(
    folder: Annotated[
        Path, typer.Argument(help="LFW folder holding pairs.txt and <Name>/<Name>_NNNN.jpg.")
    ],
    calibrate: Annotated[
        bool, typer.Option(help="Save the measured calibration into the data directory.")
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The LFW View-2 protocol on the folds whose images are present."""
    with _session(data, as_json) as ft, _progress("describing") as (total, advance):
        report = ft.eval_lfw(folder, calibrate=calibrate, progress=advance, on_total=total)
    if as_json:
        return _emit_json(report)
    table = Table("fold", "pairs", "threshold", "accuracy")
    for f in report.folds:
        table.add_row(
            str(f["fold"]), str(f["pairs"]), f"{f['threshold']:.4f}", f"{f['accuracy']:.4f}"
        )
    out.print(table)
    out.print(
        f"mean accuracy {report.mean_accuracy:.4f} ± {report.std_accuracy:.4f} "
        f"over {len(report.folds)} folds ({report.pairs} pairs)"
    )
    out.print("TAR at FAR: " + ", ".join(f"{k}: {v:.4f}" for k, v in report.tar_at_far.items()))
    out.print(
        f"{report.images} images, {report.no_face_images} with no detected face near the centre "
        f"(centre box used), {report.multi_face_images} with several faces"
    )
    if calibrate:
        out.print(f"calibration saved for {report.model}")


@audit_app.command("verify")
def audit_verify(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Check the audit trail's hash chain; name the first broken link."""
    with _session(data, as_json) as ft:
        report = ft.verify_audit()
    if as_json:
        _emit_json(report)
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
    with _session(data, False) as ft:
        events = ft.export_audit(since)
    lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
    if out_file is None:
        sys.stdout.write(lines)
    else:
        out_file.write_text(lines)
        err.print(f"wrote {len(events)} event(s) to {out_file}")


@app.command()
def demo(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Run the main job end to end on data shipped with the installed packages."""
    from facetrail.demo import run_demo

    with _session(data, as_json) as ft:
        result = run_demo(ft, say=None if as_json else out.print)
    if as_json:
        _emit_json(result)


def main() -> None:
    app()
