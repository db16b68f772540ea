"""Search latency with cohort normalisation against plain cosine search (issue 10).

Times `service.search.rank_candidates`, the step of a search that normalisation changes (the
index search, then re-ranking a pool of the best templates by normalised score: AS-norm +
cosine, the default; AS-norm alone costs the same), on a synthetic
gallery of unit descriptors (`--templates`, default 100,000) and a cohort of `--cohort` faces
(default 2,000), for batches of 1 and 32 probe faces. The gallery's cohort statistics are
precomputed (as `GalleryStats` keeps them), so what a search adds is the probe against the
cohort (one small matrix product), a lookup of its pool's template statistics, and a re-sort.

The store is a stand-in mapping template ids to subjects in memory: the database lookups that
both plain and normalised search do are left out, so the ratio is an upper bound of what a
real search sees. Target: normalised / plain <= 2.

    python bench/normalisation_speed.py
    python bench/normalisation_speed.py --templates 10000 --json out.json
    python bench/normalisation_speed.py --threads 2       # threaded BLAS
    python bench/normalisation_speed.py --end-to-end      # whole searches through the service

`--end-to-end` times `Facetrail.search` of one photo (face_recognition's obama1.jpg) against
the knn_examples gallery in a fresh data directory, with a cohort of the LFW single-image
people's descriptors (from `--descriptors`, the cache `eval identify` writes) and without
(`score_normalisation="none"`), alternately: what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# BLAS threads are set before numpy loads: one by default, since on a shared machine a
# threaded matrix-vector product mostly measures waiting for the other threads' cores.
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import numpy as np  # noqa: E402

from facetrail.service.cohort import Cohort, Normaliser  # noqa: E402
from facetrail.service.search import Scoring, rank_candidates  # noqa: E402
from facetrail.store import ExactIndex  # noqa: E402
from facetrail.vision.normalisation import cohort_stats  # noqa: E402


class _Store:
    """What `rank_candidates` asks of a store, from arrays (see the module docstring)."""

    def __init__(self, ids: np.ndarray, subjects: np.ndarray) -> None:
        self._subject_of = dict(zip(ids.tolist(), subjects.tolist(), strict=True))
        self._lookup = np.full(int(ids.max()) + 1, -1, np.int64)
        self._lookup[ids] = subjects

    def template_subjects(self, ids: np.ndarray) -> np.ndarray:
        return np.where(ids >= 0, self._lookup[np.maximum(ids, 0)], -1)

    def subject_names(self, subject_ids: np.ndarray) -> dict[int, str]:
        return {int(s): f"s{int(s)}" for s in np.unique(subject_ids)}


def _unit(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _time_pair(a, b, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median seconds of `a` and of `b`, run alternately so that load from other work on
    the machine falls on both alike."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(ta)), float(np.median(tb))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--cohort", type=int, default=2_000)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", default="1", help="BLAS threads (default 1)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument(
        "--descriptors",
        type=Path,
        default=Path("eval-results/descriptors.npz"),
        help="eval identify's descriptor cache of ../shared/data/lfw (--end-to-end)",
    )
    args = parser.parse_args()
    if args.end_to_end:
        return end_to_end(args.descriptors, args.repeats, args.json)

    rng = np.random.default_rng(0)
    gallery = _unit(rng, args.templates)
    ids = np.arange(1, args.templates + 1, dtype=np.int64)
    subjects = (ids + 1) // 2  # two templates a subject
    cohort = _unit(rng, args.cohort)
    store = _Store(ids, subjects)
    index = ExactIndex(128, ids, gallery)

    start = time.perf_counter()
    stats = cohort_stats(gallery, cohort, args.top_k)
    precompute = time.perf_counter() - start
    start = time.perf_counter()
    cohort_stats(gallery[:1], cohort, args.top_k)
    one_template = time.perf_counter() - start

    normaliser = Normaliser(
        Cohort("bench", cohort, (len(cohort), len(cohort))), args.top_k, ids, stats
    )
    plain = Scoring(0.5, None, None)
    normed = Scoring(3.0, None, None, normaliser)
    rows = []
    for batch in (1, 32):
        probes = _unit(rng, batch)

        def run(scoring: Scoring, probes: np.ndarray = probes) -> None:
            rank_candidates(store, index, probes, scoring, 5, True)  # type: ignore[arg-type]

        t_plain, t_norm = _time_pair(lambda: run(plain), lambda: run(normed), args.repeats)
        rows.append(
            {
                "probes": batch,
                "plain_ms": round(1000 * t_plain, 3),
                "normalised_ms": round(1000 * t_norm, 3),
                "ratio": round(t_norm / t_plain, 3),
            }
        )
    result = {
        "templates": args.templates,
        "cohort": args.cohort,
        "top_k": args.top_k,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "blas_threads": _THREADS,
        "gallery_stats_precompute_s": round(precompute, 3),
        "one_new_template_stats_ms": round(1000 * one_template, 3),
        "searches": rows,
    }
    print(
        f"{args.templates:,} templates, cohort {args.cohort:,}, top {args.top_k}: gallery "
        f"statistics {precompute:.2f} s once, {1000 * one_template:.2f} ms per new template"
    )
    for r in rows:
        print(
            f"  {r['probes']:>2} probe face(s): plain {r['plain_ms']:.2f} ms, "
            f"normalised {r['normalised_ms']:.2f} ms, ratio {r['ratio']:.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def end_to_end(descriptors: Path, repeats: int, out: Path | None) -> None:
    import tempfile

    import facetrail
    from facetrail.service.tables import CohortFace

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    fr = shared / "examples" / "face_recognition"
    password = "a-long-bench-password"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with facetrail.open(data) as ft:
            ft.init("admin", password)
            ft.add_user("ivy", "investigator", password)
            ft.add_user("ada", "authoriser", password)
            ft.enrol([fr / "knn_examples" / "train"])
            model = ft.analyzer.model_id
            with np.load(descriptors) as cache:
                names = cache["names"].tolist()
                vectors = cache["vectors"]
            people: dict[str, list[int]] = {}
            for i, name in enumerate(names):
                people.setdefault(name.split("/", 1)[0], []).append(i)
            singles = [rows[0] for rows in people.values() if len(rows) == 1]
            with ft.store.session() as s:
                s.add_all(
                    CohortFace(
                        model=model,
                        dim=vectors.shape[1],
                        vector=np.asarray(vectors[i], "<f4").tobytes(),
                        source="lfw-singles",
                        image_sha256=f"{i:064x}",
                        created_by="bench",
                    )
                    for i in singles
                )
        handles = {}
        for mode in ("none", "as-norm+cosine"):
            ft = facetrail.open(data, score_normalisation=mode)
            ft.login("ivy", password)
            handles[mode] = ft
        ivy = handles["none"]
        ivy.open_case("BENCH", purpose="benchmark", legal_basis="test data")
        ada = ivy.as_caller(None)
        ada.login("ada", password)
        ada.approve("BENCH", scope="gallery", reason="benchmark")
        probe = fr / "knn_examples" / "test" / "obama1.jpg"
        times: dict[str, list[float]] = {m: [] for m in handles}
        scorings = {}
        for _ in range(max(3, repeats // 10) + 1):
            for mode, ft in handles.items():
                start = time.perf_counter()
                report = ft.search([probe], case="BENCH", top_k=5)
                times[mode].append(time.perf_counter() - start)
                scorings[mode] = report.scoring
        for ft in handles.values():
            ft.close()
    med = {m: float(np.median(v[1:])) for m, v in times.items()}  # first: warm-up
    ratio = med["as-norm+cosine"] / med["none"]
    print(
        f"end to end, one photo, {len(singles)} cohort faces: plain {1000 * med['none']:.0f} ms "
        f"({scorings['none']}), normalised {1000 * med['as-norm+cosine']:.0f} ms "
        f"({scorings['as-norm+cosine']}), ratio {ratio:.2f}"
    )
    if out is not None:
        result = {"cohort": len(singles), "ms": {m: 1000 * v for m, v in med.items()}}
        out.write_text(json.dumps({**result, "ratio": ratio, "scoring": scorings}, indent=1))


if __name__ == "__main__":
    main()
