"""Gallery and search commands: enrol, subjects, erase, renew, verify, search, eval, demo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from facetrail.cli.common import (
    DataOpt,
    JsonOpt,
    emit_json,
    err,
    jsonable,
    out,
    parse_time,
    progress_bar,
    rate_text,
    score_text,
    session,
)
from facetrail.service.search import all_failed
from facetrail.service.sheets import clock

app = typer.Typer()
eval_app = typer.Typer(help="Measure accuracy on labelled data.", no_args_is_help=True)

CaseOpt = Annotated[str, typer.Option("--case", help="The case this belongs to (required).")]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        envvar="FACETRAIL_RAY_ADDRESS",
        help="Analyse on the Ray cluster whose head is at HOST:PORT (pip install "
        "'facetrail\\[ray]'); this process still writes every result.",
        show_default=False,
    ),
]


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
    ray: RayOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Enrol reference images into the gallery (one usable face per image)."""
    with session(data, as_json) as ft, progress_bar("enrolling") as (total, advance):
        report = ft.enrol(
            paths or [],
            subject=subject,
            manifest=manifest,
            on_total=total,
            progress=lambda _: advance(1),
            ray=ray,
        )
    summary = report.to_dict()
    if as_json:
        emit_json(summary)
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
    case: CaseOpt,
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold (default: from the target FMR).")
    ] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the main face of two images: score, decision and what the score means."""
    with session(data, as_json) as ft:
        report = ft.verify(image_a, image_b, case=case, threshold=threshold)
    if as_json:
        return emit_json(report)
    verdict = "[green]same person[/]" if report.match else "[yellow]not a match[/]"
    out.print(
        f"score {report.score:.4f} (threshold {report.threshold:.4f}): {verdict}", markup=True
    )
    out.print(report.meaning)


@contextmanager
def _search_progress(probes: int) -> Iterator[tuple[Any, Any]]:
    """A bar over the probes and, per video, one over its footage with the real-time factor."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # no bar in logs and pipes
    )
    overall = progress.add_task("searching", total=probes, done="", speed="")
    videos: dict[str, Any] = {}

    def on_probe(_: Any) -> None:
        progress.advance(overall, 1)
        progress.update(overall, done=f"{progress.tasks[overall].completed:.0f}/{probes} files")

    def on_video(name: str, frames: int, done: float, duration: float | None, wall: float) -> None:
        if name not in videos:
            videos[name] = progress.add_task(Path(name).name, total=duration, done="", speed="")
        speed = f"{done / wall:.1f}x real time" if wall > 0 else ""
        progress.update(videos[name], completed=done, done=f"{frames} frames", speed=speed)

    with progress:
        yield on_probe, on_video


@app.command()
def search(
    probes: Annotated[list[Path], typer.Argument(help="Probe images and videos.")],
    case: CaseOpt,
    watchlist: Annotated[
        str | None,
        typer.Option(
            help="Search this authorised watchlist (else the whole gallery, which "
            "needs an authoriser's approval in the case)."
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why this search (audited).")] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="Candidates per face.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Score threshold (default: from the target FMR).")
    ] = None,
    include_below: Annotated[
        bool, typer.Option("--all", help="Also list candidates below the threshold.")
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Also write best-shot crops and a contact sheet here."),
    ] = None,
    ray: RayOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search every face of each probe image, and every appearance in each video, in a case;
    candidates are kept for review. With --ray, videos are tracked on the cluster (their
    paths must be readable there)."""
    with session(data, as_json) as ft, _search_progress(len(probes)) as (on_probe, on_video):
        report = ft.search(
            probes,
            case=case,
            watchlist=watchlist,
            reason=reason,
            top_k=top_k,
            threshold=threshold,
            include_below=include_below,
            progress=on_probe,
            video_progress=on_video,
            out=out_dir,
            ray=ray,
        )
    failed = all_failed(report)
    if as_json:
        body = report.to_dict()
        if failed:
            body["error"] = {"type": "MediaError", "message": "no probe could be read"}
        emit_json(body)
    else:
        _print_search(report)
        if out_dir is not None:
            out.print(f"best shots and contact_sheet.jpg written to {out_dir}")
    if failed:
        err.print(f"error: no probe could be read ({report.probes[0].error})")
        raise typer.Exit(3)


@app.command()
def cluster(
    media: Annotated[list[Path], typer.Argument(help="Images and videos.")],
    case: CaseOpt,
    threshold: Annotated[
        float | None,
        typer.Option(help="Similarity to join a person (default: estimated FMR 1e-4)."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write persons.jpg, one tile per person.")
    ] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Group the faces of many images and videos into unknown persons, without a gallery."""
    with session(data, as_json) as ft, _search_progress(len(media)) as (on_probe, on_video):
        report = ft.cluster(
            media,
            case=case,
            threshold=threshold,
            out=out_dir,
            progress=on_probe,
            video_progress=on_video,
        )
    if as_json:
        return emit_json(report)
    out.print(
        f"{report.sightings} face(s) and appearance(s) in {len(report.probes)} file(s): "
        f"{len(report.persons)} person(s), {report.recurring} seen in two or more files "
        f"(threshold {report.threshold:.4f})"
    )
    for probe in report.probes:
        if probe.error:
            out.print(f"  {probe.probe}: {probe.error}")
    for person in report.persons:
        where = ", ".join(
            Path(s.media).name
            + (f" {clock(s.start)}-{clock(s.end)}" if s.start is not None else "")
            for s in person.sightings
        )
        out.print(f"person {person.id} ({person.files} file(s)): {where}")
    if out_dir is not None:
        out.print(f"contact sheet written to {out_dir / 'persons.jpg'}")


def _print_search(report: Any) -> None:
    searched = f"watchlist {report.watchlist}" if report.watchlist else "the gallery"
    out.print(
        f"search {report.search_id} in case {report.case}: threshold {report.threshold:.4f}"
        + (f" (target FMR {report.target_fmr:g})" if report.target_fmr else "")
        + f"; {searched}: {report.gallery_subjects} subjects, {report.gallery_templates} "
        "templates"
    )
    for probe in report.probes:
        if probe.error:
            out.print(f"[bold]{escape(probe.probe)}[/]: [red]{escape(probe.error)}[/]", markup=True)
            continue
        if probe.video is not None:
            v = probe.video
            state = "" if v.complete else f"; INCOMPLETE: {'; '.join(v.warnings) or 'damaged'}"
            out.print(
                f"[bold]{escape(probe.probe)}[/]: video, {v.duration:.1f} s, "
                f"{v.frames_analysed} of {v.frames_decoded} frames analysed, {v.tracks} "
                f"appearance(s), {len(probe.faces)} with candidates{escape(state)}",
                markup=True,
            )
        else:
            out.print(f"[bold]{escape(probe.probe)}[/]: {len(probe.faces)} face(s)", markup=True)
        for i, face in enumerate(probe.faces, start=1):
            box = ",".join(f"{v:.0f}" for v in face.box)
            if face.start is not None:
                out.print(
                    f"  appearance {face.track}: {clock(face.start)}-{clock(face.end)}, best "
                    f"shot at {clock(face.best_time)} box [{box}] quality {face.quality:.2f}"
                )
            else:
                out.print(f"  face {i} box [{box}] quality {face.quality:.2f}")
            if not face.candidates:
                out.print("    no candidate above the threshold")
                if face.miss_rate is not None:
                    # An empty list is weaker evidence of absence the poorer the face.
                    out.print(
                        f"    (at this quality, {face.miss_rate:.0%} of searches for someone "
                        "who is in the gallery did not show them: bench/RESULTS.md)"
                    )
                continue
            table = Table(show_edge=False, pad_edge=False, box=None)
            for col in ("candidate", "rank", "subject", "score", "est. FMR", ""):
                table.add_column(col)
            for c in face.candidates:
                fmr = "n/a" if c.fmr is None else f"{c.fmr:.2g}"
                table.add_row(
                    str(c.id),
                    str(c.rank),
                    c.subject,
                    f"{c.score:.4f}",
                    fmr,
                    "" if c.above_threshold else "below threshold",
                )
            out.print(table)
    if report.unmatched_faces_deleted:
        out.print(f"{report.unmatched_faces_deleted} face(s) matched nothing and were deleted")
    out.print(f"review the candidates: facetrail review show {report.search_id}")


@app.command()
def subjects(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """List the gallery's subjects."""
    with session(data, as_json) as ft:
        rows = ft.subjects()
    if as_json:
        return emit_json({"subjects": jsonable(rows)})
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
    with session(data, as_json) as ft:
        detail = ft.subject(name)
    if as_json:
        return emit_json(detail)
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
    reason: Annotated[str | None, typer.Option(help="Why (audited).")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase a subject: images, faces, templates and index entries."""
    with session(data, as_json) as ft:
        report = ft.erase(name, reason=reason)
    if as_json:
        return emit_json(report)
    out.print(
        f"erased {name}: {report.images} image(s), {report.faces} face(s), "
        f"{report.templates} template(s), and the stored files nothing else refers to"
    )


@app.command()
def renew(
    name: Annotated[str, typer.Argument(help="Subject to keep past its review date.")],
    until: Annotated[str, typer.Option(help="New review date (ISO 8601).")],
    reason: Annotated[str, typer.Option(help="Why the record is still needed (audited).")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Renew a subject record at review (authorisers): it is kept until the new date."""
    with session(data, as_json) as ft:
        new = ft.renew_subject(name, parse_time(until), reason=reason)
    if as_json:
        return emit_json({"subject": name, "review_at": new})
    out.print(f"{name} is kept until {new:%Y-%m-%d %H:%M} UTC")


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
    with session(data, as_json) as ft, progress_bar("describing") as (total, advance):
        report = ft.eval_lfw(folder, calibrate=calibrate, progress=advance, on_total=total)
    if as_json:
        return emit_json(report)
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


EvalOutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Folder for the JSON results, the charts and the descriptor cache "
        "(shared by eval identify and eval bias: each describes only images not yet cached).",
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="Only the first N people, in name order.")
]


@eval_app.command("identify")
def eval_identify(
    folder: Annotated[Path, typer.Argument(help="Folder of <person>/<image> (LFW layout).")],
    out_dir: EvalOutOpt = Path("eval-results"),
    limit: LimitOpt = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Also measure every score technique (cohort normalisation: Z, T, S, AS-norm; "
            "fusion of several templates) with a cohort of single-image people kept apart "
            "from the probes; prints a table, adds 'techniques' to the JSON.",
        ),
    ] = False,
    folds: Annotated[
        int, typer.Option("--cohort-folds", min=2, help="Cross-cohort folds for --compare.")
    ] = 2,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Save the calibrations of normalised scores (as-norm, as-norm+cosine) "
            "measured here (administrators): what cohort-normalised searches take their "
            "threshold and FMRs from.",
        ),
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open-set 1:N identification: gallery = one image of each person with two or more,
    mated probes = their other images, non-mated probes = people with one image."""
    with session(data, as_json) as ft, progress_bar("describing") as (total, advance):
        report = ft.eval_identify(
            folder,
            out_dir,
            limit=limit,
            compare=compare,
            folds=folds,
            calibrate=calibrate,
            progress=advance,
            on_total=total,
        )
    if as_json:
        return emit_json(report)
    out.print(
        f"{report.people} people, {report.images} images: {report.gallery} enrolled, "
        f"{report.mated_probes} mated and {report.non_mated_probes} non-mated probes"
    )
    table = Table("target FPIR", "threshold", "FPIR", "FNIR", "")
    for p in report.fnir_at_fpir:
        table.add_row(
            f"{p['target_fpir']:g}",
            score_text(p["threshold"]),
            rate_text(p["fpir"]),
            rate_text(p["fnir"]),
            "" if p["measurable"] else "too few non-mated probes to measure",
        )
    out.print(table)
    out.print(
        "hit rate: " + ", ".join(f"rank {k}: {rate_text(v)}" for k, v in report.rank_hits.items())
    )
    if report.techniques:
        out.print(
            f"score techniques ({report.cohort_folds} cross-cohort folds; "
            f"{out_dir / 'identify_techniques.md'}):"
        )
        techniques = Table("templates", "scoring", "fusion", "FNIR@FPIR 1%", "@0.1%", "rank-1")
        for r in report.techniques:
            k = "" if r["method"] in ("none", "s-norm") else f" top {r['top_k']}"
            techniques.add_row(
                str(r["templates"]),
                r["method"] + k,
                r["fusion"],
                rate_text(r["fnir_fpir_1pct"]),
                rate_text(r["fnir_fpir_01pct"]),
                rate_text(r["rank1"]),
            )
        out.print(techniques)
    for calibration in report.calibrations:
        out.print(f"calibration of normalised scores saved for {calibration['model']}")
    out.print(f"results and charts written to {out_dir}")


@eval_app.command("bias")
def eval_bias(
    folder: Annotated[Path, typer.Argument(help="Folder of <person>/<image> (LFW layout).")],
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            help="CSV with a header and rows 'image-or-person,group' (image relative to "
            "FOLDER, or a person's folder name).",
        ),
    ],
    out_dir: EvalOutOpt = Path("eval-results"),
    target_fmr: Annotated[
        float | None,
        typer.Option(
            "--target-fmr",
            help="Find the threshold at which every group's FMR is at most this "
            "(default: the configured target FMR).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Operating threshold (default: the one searches use)."),
    ] = None,
    limit: LimitOpt = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """False match and non-match rates per group at the operating threshold, with 95%
    bootstrap intervals (over people), and the threshold every group's FMR meets a target at."""
    with session(data, as_json) as ft, progress_bar("describing") as (total, advance):
        report = ft.eval_bias(
            folder,
            labels,
            out_dir,
            target_fmr=target_fmr,
            threshold=threshold,
            limit=limit,
            progress=advance,
            on_total=total,
        )
    if as_json:
        return emit_json(report)
    out.print(f"threshold {report.threshold:.4f} ({report.threshold_source})")

    def ci(bounds: list[float] | None) -> str:
        return "" if bounds is None else f" [{rate_text(bounds[0])}, {rate_text(bounds[1])}]"

    table = Table(
        report.attribute, "people", "genuine", "impostor", "FMR (95% CI)", "FNMR (95% CI)"
    )
    for g in report.groups:
        table.add_row(
            g["group"],
            str(g["people"]),
            str(g["genuine_pairs"]),
            str(g["impostor_pairs"]),
            rate_text(g["fmr"]) + ci(g["fmr_ci"]),
            rate_text(g["fnmr"]) + ci(g["fnmr_ci"]),
        )
    out.print(table)
    for g in report.groups:
        for note in g["notes"]:
            out.print(f"  {g['group']}: {note}")
    for d in (report.fmr_ratio, report.fnmr_ratio):
        name = d["rate"].upper()
        if d["ratio"] is not None:
            out.print(
                f"{name} worst/best: {d['ratio']:.2f} ({d['worst_group']} {rate_text(d['worst'])}, "
                f"{d['best_group']} {rate_text(d['best'])})"
            )
        else:
            out.print(f"{name} worst/best: n/a ({d['note']})")
    t = report.target
    if t["threshold"] is not None:
        rates = ", ".join(
            f"{k} FMR {rate_text(t['fmr'][k])} FNMR {rate_text(t['fnmr'][k])}" for k in t["fmr"]
        )
        out.print(
            f"every group's FMR <= {t['target_fmr']:g} from threshold {t['threshold']:.4f} "
            f"(set by {t['limiting_group']}): {rates}"
        )
    out.print(f"results and chart written to {out_dir}")


@app.command()
def demo(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Run the main job end to end on data shipped with the installed packages."""
    from facetrail.demo import run_demo

    with session(data, as_json, anonymous=True) as ft:
        result = run_demo(ft, say=None if as_json else out.print)
    if as_json:
        emit_json(result)
