"""Enrolment speed: facetrail against face_recognition on the same real images, in one run.

What it measures
    Images per second to enrol the LFW development (View-1) images, that is every image named by
    `pairsDevTrain.txt` and `pairsDevTest.txt` that is present in the LFW folder, with

    - face_recognition 1.3.0 through its public API, the way the library is used: in this one
      process, one image after another, `load_image_file`, `face_locations` (its defaults: HOG,
      upsample 1) and `face_encodings(img, known_face_locations=...)`;
    - facetrail through its public Python API: `facetrail.open(fresh_tmp_dir)` with default
      settings, then one `ft.enrol(manifest=csv)` call (subject = LFW person, image = path),
      timed whole: decoding, detection, alignment, the batched ONNX descriptor and the SQLite
      writes. Twice: with the default `flip_average=True`, and with `flip_average=False`
      (flip averaging runs the network on each chip and its mirror image, twice the cost).

    Models are loaded before the clock starts on both sides: face_recognition loads its models
    on import and describes one image first; facetrail builds its analyzer (which converts
    dlib's ResNet to an ONNX graph in the fresh data directory) and describes one image first.
    So one-time model loading is not counted on either side.

    Each side runs `--repeats` times, interleaved (face_recognition, facetrail, facetrail
    without flip, then again), and the median images/s is reported.

    Secondary, a cheap equal-accuracy check: on the View-1 pairs whose two images were described
    by every variant, the verification accuracy of each at its own best threshold on those
    pairs (face_recognition: Euclidean distance of its encodings of the largest face;
    facetrail: cosine similarity of the templates it stored).

Run
    pip install --no-deps face_recognition==1.3.0   # the baseline, for this benchmark only
    python bench/enrol_speed.py                     # all dev images (several minutes)
    python bench/enrol_speed.py --limit 100         # quick run (3 repeats by default)
    python bench/enrol_speed.py --json out.json     # also write the numbers as JSON

Exit status 2 when face_recognition or the LFW folder is missing.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import numpy as np
from sqlalchemy import select

import facetrail
from facetrail.media import load_image
from facetrail.store.models import Face, Image, Subject, Template
from facetrail.vision.descriptor import WINOGRAD_BATCH

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lfw"
PAIR_FILES = ("pairsDevTrain.txt", "pairsDevTest.txt")
INSTALL_HINT = "pip install --no-deps face_recognition==1.3.0"


# -- the images and pairs ------------------------------------------------------------------


def _image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_dev_pairs(root: Path) -> list[tuple[str, str, bool]]:
    """The View-1 pairs as (image a, image b, same person), paths relative to the LFW root.

    Each file is a count N, then N same-person lines "name i j" and N different-person lines
    "name1 i name2 j".
    """
    pairs = []
    for filename in PAIR_FILES:
        lines = [line.split() for line in (root / filename).read_text().splitlines()]
        for row in lines[1:]:
            if len(row) == 3:
                pairs.append((_image(row[0], row[1]), _image(row[0], row[2]), True))
            elif len(row) == 4:
                pairs.append((_image(row[0], row[1]), _image(row[2], row[3]), False))
    return pairs


def dev_images(root: Path, pairs: list[tuple[str, str, bool]]) -> tuple[list[str], int]:
    """The distinct images of the pairs that exist, and how many listed ones don't.

    Ordered so that any prefix (`--limit`) holds whole pairs of both kinds: first the images of
    the pairs whose two images both exist, taking a same-person and a different-person pair in
    turn, then every other present image in order of first use.
    """
    listed = dict.fromkeys(name for a, b, _ in pairs for name in (a, b))
    present = {name for name in listed if (root / name).is_file()}
    whole = [p for p in pairs if p[0] in present and p[1] in present]
    genuine = [p for p in whole if p[2]]
    impostor = [p for p in whole if not p[2]]
    alternating = [p for duo in zip_longest(genuine, impostor) for p in duo if p is not None]
    order = dict.fromkeys(name for a, b, _ in alternating for name in (a, b))
    order.update(dict.fromkeys(name for name in listed if name in present))
    return list(order), len(listed) - len(present)


# -- the runs ------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    cpu_seconds: float  # process CPU time, all threads: the cost, less sensitive to other load
    faces: int  # images with at least one face (face_recognition) / enrolled (facetrail)
    detail: dict = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def run_face_recognition(fr, root: Path, images: list[str]) -> Run:
    """The library's public API, one image after another in this process."""
    vectors: dict[str, np.ndarray] = {}
    faces = 0
    start, cpu = time.perf_counter(), time.process_time()
    for name in images:
        img = fr.load_image_file(str(root / name))
        locations = fr.face_locations(img)
        encodings = fr.face_encodings(img, known_face_locations=locations)
        if locations:
            faces += 1
            # For the accuracy check: the largest face, as facetrail's enrolment keeps.
            sizes = [(bottom - top) * (right - left) for top, right, bottom, left in locations]
            vectors[name] = np.asarray(encodings[int(np.argmax(sizes))], np.float64)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(seconds, cpu, faces, {"no_face": len(images) - faces}, vectors)


def warm_face_recognition(fr, path: Path) -> None:
    img = fr.load_image_file(str(path))
    fr.face_encodings(img, known_face_locations=fr.face_locations(img))


def run_facetrail(root: Path, images: list[str], overrides: dict) -> Run:
    """Enrol every image into a fresh data directory with one `ft.enrol(manifest=...)` call."""
    with tempfile.TemporaryDirectory(prefix="facetrail-bench-") as tmp:
        manifest = Path(tmp) / "manifest.csv"
        with manifest.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["subject", "image"])
            for name in images:
                writer.writerow([name.split("/")[0], str(root / name)])
        with facetrail.open(Path(tmp) / "data", **overrides) as ft:
            ft.init("bench-admin", secrets.token_urlsafe(18))  # enrolling is an admin's job
            # Warm-up, not timed: build the analyzer (the ONNX graphs: one for small batches,
            # one for large ones) and describe one image and a batch.
            faces = ft.analyzer.locate(load_image(root / images[0]).pixels, "primary")
            ft.analyzer.describe([faces] * WINOGRAD_BATCH)
            start, cpu = time.perf_counter(), time.process_time()
            report = ft.enrol(manifest=manifest)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            summary = report.to_dict()
            detail = {
                "enrolled": summary["enrolled"],
                "duplicates": summary["duplicates"],
                "skipped": summary["skipped"],
                "skipped_reasons": summary["skipped_reasons"],
                "model": summary["model"],
                "workers": ft.settings.workers,
                "batch_size": ft.settings.batch_size,
                "min_face": ft.settings.min_face,
                "flip_average": ft.settings.flip_average,
            }
            vectors = stored_templates(ft)
    return Run(seconds, cpu, report.enrolled, detail, vectors)


def stored_templates(ft) -> dict[str, np.ndarray]:
    """The stored template of each enrolled image, keyed "Person/Person_NNNN.jpg"."""
    model = ft.analyzer.model_id
    matrix = ft.store.templates(model)
    row_of = {int(t): i for i, t in enumerate(matrix.template_ids)}
    with ft.store.session(write=False) as s:
        rows = s.execute(
            select(Template.id, Subject.name, Image.name)
            .join(Face, Template.face_id == Face.id)
            .join(Image, Face.image_id == Image.id)
            .join(Subject, Image.subject_id == Subject.id)
            .where(Template.model == model)
        ).all()
    return {
        f"{subject}/{image}": matrix.vectors[row_of[int(tid)]].astype(np.float64)
        for tid, subject, image in rows
    }


# -- the accuracy check --------------------------------------------------------------------


def best_accuracy(scores: np.ndarray, same: np.ndarray) -> float:
    """Accuracy at the best threshold on these pairs (accept score >= threshold)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(np.int64)
    # Accepting the first k (highest) scores, k = 0..n; only cut between distinct scores.
    accepted_genuine = np.concatenate([[0], np.cumsum(y)])
    accepted_impostor = np.concatenate([[0], np.cumsum(1 - y)])
    correct = accepted_genuine + ((1 - y).sum() - accepted_impostor)
    cuts = np.concatenate([[True], s[:-1] != s[1:], [True]])
    return float(correct[cuts].max() / len(y))


def accuracy_check(
    pairs: list[tuple[str, str, bool]], runs: dict[str, Run], images: set[str]
) -> dict:
    usable = [
        (a, b, same)
        for a, b, same in pairs
        if a in images
        and b in images
        and all(a in r.vectors and b in r.vectors for r in runs.values())
    ]
    considered = [p for p in pairs if p[0] in images and p[1] in images]
    out: dict = {"pairs_with_images": len(considered), "pairs_scored": len(usable)}
    if not usable or len({same for _, _, same in usable}) < 2:
        return out
    same = np.array([p[2] for p in usable])
    out["genuine"], out["impostor"] = int(same.sum()), int((~same).sum())
    for label, run in runs.items():
        a = np.stack([run.vectors[p[0]] for p in usable])
        b = np.stack([run.vectors[p[1]] for p in usable])
        if label == "face_recognition":
            scores = -np.linalg.norm(a - b, axis=1)  # smaller distance = more alike
        else:
            a /= np.linalg.norm(a, axis=1, keepdims=True)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
            scores = (a * b).sum(axis=1)
        out[label] = best_accuracy(scores, same)
    return out


# -- main ----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import dlib
    import onnxruntime

    out = {"python": platform.python_version()}
    for dist in ("facetrail", "face_recognition"):  # face_recognition.__version__ says 1.2.3
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    out["dlib"] = dlib.__version__
    out["onnxruntime"] = onnxruntime.__version__
    out["numpy"] = np.__version__
    return out


def source_commit() -> str:
    """The checkout's commit, "+changes" when files under src/ differ from it; "-" if unknown."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(REPO), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
        return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the LFW folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N dev images")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per variant (default 1; 3 with --limit)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.limit else 1)

    try:
        import face_recognition as fr
    except ImportError:
        print(
            "face_recognition is not installed; it is the benchmark's baseline only.\n"
            f"Install it with:  {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    root = args.data.resolve()
    if not all((root / f).is_file() for f in PAIR_FILES):
        print(
            f"LFW development files not found in {root} (need {' and '.join(PAIR_FILES)} and "
            "the <Name>/<Name>_<NNNN>.jpg images); pass the LFW folder with --data",
            file=sys.stderr,
        )
        return 2

    pairs = read_dev_pairs(root)
    images, missing = dev_images(root, pairs)
    if args.limit is not None:
        images = images[: max(1, args.limit)]
    if not images:
        print(f"none of the View-1 images are in {root}", file=sys.stderr)
        return 2

    cpus = os.cpu_count()
    info = versions()
    print(
        f"images: {len(images)} LFW View-1 dev images from {root}"
        + (f" (--limit {args.limit})" if args.limit is not None else "")
        + f"; {missing} images named by the View-1 pair files are not in this folder"
    )
    print(f"machine: {cpus} CPUs (os.cpu_count), {platform.machine()}, {platform.system()}")
    load_before = os.getloadavg()
    print("load average before: " + " ".join(f"{x:.2f}" for x in load_before))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    commit = source_commit()
    print(f"facetrail source: commit {commit}")
    print(f"repeats: {repeats} per variant, interleaved; median images/s reported")
    print("timing excludes one-time model loading on both sides (each warmed on one image)")
    print(flush=True)

    variants = {
        "face_recognition": None,
        "facetrail": {},
        "facetrail flip_average=False": {"flip_average": False},
    }
    warm_face_recognition(fr, root / images[0])
    runs: dict[str, list[Run]] = {label: [] for label in variants}
    for r in range(repeats):
        for label, overrides in variants.items():
            print(f"  run {r + 1}/{repeats}: {label} ...", end="", flush=True, file=sys.stderr)
            if overrides is None:
                run = run_face_recognition(fr, root, images)
            else:
                run = run_facetrail(root, images, overrides)
            if r < repeats - 1:
                run.vectors = {}  # only the last repeat's vectors are kept for the check
            runs[label].append(run)
            print(f" {run.seconds:.2f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    n = len(images)
    rows = []
    base = statistics.median(n / r.seconds for r in runs["face_recognition"])
    for label, done in runs.items():
        rate = statistics.median(n / r.seconds for r in done)
        seconds = statistics.median(r.seconds for r in done)
        rows.append(
            {
                "variant": label,
                "images": n,
                "faces": done[-1].faces,
                "seconds": seconds,
                "seconds_each": [round(r.seconds, 3) for r in done],
                "cpu_seconds": statistics.median(r.cpu_seconds for r in done),
                "cpu_seconds_each": [round(r.cpu_seconds, 3) for r in done],
                "images_per_s": rate,
                "ratio": rate / base,
                "detail": done[-1].detail,
            }
        )

    print()
    header = (
        f"{'variant':<30} {'images':>7} {'faces':>7} {'seconds':>9} {'images/s':>9} "
        f"{'ratio':>7} {'cpu s':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['variant']:<30} {row['images']:>7} {row['faces']:>7} {row['seconds']:>9.2f} "
            f"{row['images_per_s']:>9.2f} {row['ratio']:>6.2f}x {row['cpu_seconds']:>9.2f}"
        )
    print(
        "faces: face_recognition = images with >= 1 face found; "
        "facetrail = images enrolled (one reference face each)\n"
        "seconds, images/s, ratio: wall clock, median of the repeats; "
        "cpu s: process CPU time (all threads), median\n"
        "load average after (includes this benchmark): "
        + " ".join(f"{x:.2f}" for x in load_after)
        + (
            "  (other work was running before the start: the timings are noisy)"
            if load_before[0] > 0.5
            else ""
        )
    )
    for row in rows[1:]:
        d = row["detail"]
        print(
            f"{row['variant']}: enrolled {d['enrolled']}, duplicates {d['duplicates']}, "
            f"skipped {d['skipped']} {d['skipped_reasons'] or ''}; workers {d['workers']}, "
            f"batch {d['batch_size']}, min_face {d['min_face']}, model {d['model']}"
        )

    accuracy = accuracy_check(pairs, {label: done[-1] for label, done in runs.items()}, set(images))
    print()
    print(
        f"accuracy check: {accuracy['pairs_scored']} of the {accuracy['pairs_with_images']} "
        "View-1 pairs among these images have both images described by every variant"
    )
    if "genuine" in accuracy:
        print(
            f"  ({accuracy['genuine']} same, {accuracy['impostor']} different; "
            "each at its own best threshold on these pairs)"
        )
        for label in variants:
            print(f"  {label:<30} {accuracy[label]:.4f}")
    else:
        print("  not enough scored pairs of both kinds for an accuracy")

    if args.json:
        result = {
            "benchmark": "enrol_speed",
            "data": str(root),
            "images": n,
            "images_absent": missing,
            "limit": args.limit,
            "repeats": repeats,
            "cpus": cpus,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "machine": platform.machine(),
            "versions": info,
            "commit": commit,
            "warm_up": "models loaded and one image described before timing, both sides",
            "results": rows,
            "accuracy": accuracy,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
