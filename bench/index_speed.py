"""Template index at scale: the embedded ANN index (faiss IVF-SQ8 + exact re-ranking) against
exact search, in the same run, on synthetic clustered descriptors.

The data imitate normalised dlib descriptors as facetrail's LFW calibration describes them
(src/facetrail/vision/calibration): every vector leans on one common direction (normalised
dlib descriptors lie in a narrow cone: impostor pairs score about 0.86), identities have a
mild group structure (100 groups, like demographic clusters), and each identity has
`--per-id` noisy samples whose pairs score about 0.955 (the genuine median on LFW). Queries
are fresh samples of enrolled identities, so their nearest templates are the same person's.

Each engine runs in a child process of its own, so that its memory (RSS) is its own:
- `exact`: facetrail's ExactIndex (one BLAS matmul per query block): the baseline and the
  ground truth (its top-1 for every query);
- `ann build`: AnnIndex.build (quantiser training + adding every vector) and writing its files,
  then single-query latency, an incremental add of 1,000 and the erasure of 100 templates;
- `ann open`: AnnIndex.open of those files (what a service does when it starts).

Reported per size: build time, RSS, index size on disk, p50/p99 single-query latency,
recall@1 against exact search (the same top template) and identity@1 (the top template is
the query's identity), and the ratios.

    python bench/index_speed.py                  # 100k and 1M
    python bench/index_speed.py --sizes 100000   # one size
    python bench/index_speed.py --slow           # also 10M (about 5 GB of vectors per copy)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 128


# --------------------------------------------------------------------------- data


def _units(rng: np.random.Generator, n: int, mu: np.ndarray) -> np.ndarray:
    """Random unit vectors orthogonal to `mu`."""
    v = rng.standard_normal((n, mu.shape[0]), dtype=np.float32)
    v -= np.outer(v @ mu, mu)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def make_data(
    n: int, per_id: int, n_queries: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery, gallery identity, queries, query identity); see the module docstring."""
    rng = np.random.default_rng(seed)
    n_ids = n // per_id
    mu = rng.standard_normal(DIM).astype(np.float32)
    mu /= np.linalg.norm(mu)
    groups = _units(rng, 100, mu)
    centres = np.empty((n_ids, DIM), np.float32)
    step = 1 << 20
    for s in range(0, n_ids, step):
        m = min(step, n_ids - s)
        c = 0.5 * groups[rng.integers(0, 100, m)] + 0.866 * _units(rng, m, mu)
        centres[s : s + m] = c / np.linalg.norm(c, axis=1, keepdims=True)
    lean, spread = np.float32(np.sqrt(0.86)), np.float32(np.sqrt(0.14))

    def samples(ids: np.ndarray) -> np.ndarray:
        out = np.empty((ids.shape[0], DIM), np.float32)
        for s in range(0, ids.shape[0], step):
            i = ids[s : s + step]
            r = 0.825 * centres[i] + 0.565 * _units(rng, i.shape[0], mu)
            r /= np.linalg.norm(r, axis=1, keepdims=True)
            out[s : s + i.shape[0]] = lean * mu + spread * r
        return out

    ident = np.repeat(np.arange(n_ids, dtype=np.int64), per_id)[:n]
    qid = rng.integers(0, n_ids, n_queries)
    return samples(ident), ident, samples(qid), qid


# --------------------------------------------------------------------------- workers


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _latency(search, queries: np.ndarray, limit: int) -> tuple[list[float], np.ndarray]:  # type: ignore[no-untyped-def]
    """Single-query latency (ms) over the first `limit` queries, and every query's top-1."""
    lat = []
    top = np.empty(queries.shape[0], np.int64)
    for i in range(queries.shape[0]):
        q = queries[i : i + 1]
        t = time.perf_counter()
        _, ids = search(q, 10)
        if i < limit:
            lat.append((time.perf_counter() - t) * 1e3)
        top[i] = ids[0, 0]
    return lat, top


def worker(kind: str, data: Path, out: Path, args: argparse.Namespace) -> None:
    from facetrail.store.ann import AnnIndex, AnnParams
    from facetrail.store.index import ExactIndex

    queries = np.load(data / "q.npy")
    params = AnnParams(nprobe=args.nprobe, shortlist=args.shortlist)
    res: dict[str, object] = {"rss_start_mb": _rss_mb()}
    if kind == "ann-open":
        t = time.perf_counter()
        idx = AnnIndex.open(data / "ann", None, params)
        res["open_s"] = time.perf_counter() - t
        res["rss_mb"] = _rss_mb()
        lat, top = _latency(idx.search, queries, args.latency_queries)
        sweep = {}
        for nprobe in args.sweep:
            idx.params = dataclasses.replace(params, nprobe=nprobe)
            s_lat, s_top = _latency(idx.search, queries, args.latency_queries)
            np.save(data / f"sweep-{nprobe}.npy", s_top - 1)
            sweep[nprobe] = [float(np.percentile(s_lat, 50)), float(np.percentile(s_lat, 99))]
        res["sweep"] = sweep
    else:
        x = np.load(data / "x.npy")  # the index takes this copy over (no second copy)
        ids = np.arange(1, x.shape[0] + 1, dtype=np.int64)
        t = time.perf_counter()
        if kind == "exact":
            idx = ExactIndex(DIM, ids, x, copy=False)
            res["build_s"] = time.perf_counter() - t
        else:
            idx = AnnIndex.build(DIM, ids, x, data / "ann", params)
            res["build_s"] = time.perf_counter() - t
            res["quantiser_build_s"] = idx.build_seconds
            res["disk_mb"] = sum(p.stat().st_size for p in (data / "ann").iterdir()) / 2**20
        del x
        res["rss_mb"] = _rss_mb()
        if kind == "exact":  # time a few single queries; the ground truth in one batch
            lat, _ = _latency(idx.search, queries[: args.exact_queries], args.exact_queries)
            top = idx.search(queries, 1)[1][:, 0]
        else:
            lat, top = _latency(idx.search, queries, args.latency_queries)
        if kind == "ann-build":
            rng = np.random.default_rng(7)
            extra = queries[rng.integers(0, queries.shape[0], 1000)]
            for name, first in (("add_1000_first_s", 10**9), ("add_1000_s", 10**9 + 1000)):
                # The first add after a build grows the buffers; the second is the usual case.
                t = time.perf_counter()
                idx.add(np.arange(first, first + 1000, dtype=np.int64), extra)
                res[name] = time.perf_counter() - t
            t = time.perf_counter()
            idx.remove(np.arange(10**9, 10**9 + 100, dtype=np.int64))
            res["erase_100_s"] = time.perf_counter() - t
            idx.remove(np.arange(10**9 + 100, 10**9 + 2000, dtype=np.int64))
    res["p50_ms"] = float(np.percentile(lat, 50))
    res["p99_ms"] = float(np.percentile(lat, 99))
    res["queries_timed"] = len(lat)
    np.save(out.with_suffix(".npy"), top - 1)  # template ids are rows + 1
    out.write_text(json.dumps(res))


def run_worker(kind: str, data: Path, args: argparse.Namespace) -> tuple[dict, np.ndarray]:  # type: ignore[type-arg]
    out = data / f"{kind}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data)]
    cmd += ["--nprobe", str(args.nprobe), "--shortlist", str(args.shortlist)]
    cmd += ["--latency-queries", str(args.latency_queries)]
    cmd += ["--exact-queries", str(args.exact_queries)]
    cmd += ["--sweep", *map(str, args.sweep)]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text()), np.load(out.with_suffix(".npy"))


# --------------------------------------------------------------------------- main


def bench(n: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    tmp = Path(tempfile.mkdtemp(prefix="index-speed-", dir=args.tmp))
    try:
        t = time.perf_counter()
        x, ident, q, qid = make_data(n, args.per_id, args.queries, seed=args.seed)
        np.save(tmp / "x.npy", x)
        np.save(tmp / "q.npy", q)
        del x
        gen_s = time.perf_counter() - t
        exact, gt = run_worker("exact", tmp, args)
        built, top_b = run_worker("ann-build", tmp, args)
        if args.no_reopen:
            opened, top_o = (
                {
                    "open_s": float("nan"),
                    "rss_mb": float("nan"),
                    "p50_ms": float("nan"),
                    "p99_ms": float("nan"),
                    "sweep": {},
                },
                top_b,
            )
        else:
            opened, top_o = run_worker("ann-open", tmp, args)
        row = {
            "n": n,
            "generate_s": gen_s,
            "exact": exact,
            "ann_build": built,
            "ann_open": opened,
            "exact_id@1": float((ident[gt] == qid).mean()),
            "ann_recall@1": float((top_b == gt).mean()),
            "ann_id@1": float((ident[top_b] == qid).mean()),
            "ann_open_recall@1": float((top_o == gt).mean()),
            "sweep": {
                p: {
                    "p50_ms": lat[0],
                    "p99_ms": lat[1],
                    "recall@1": float((np.load(tmp / f"sweep-{p}.npy") == gt).mean()),
                    "id@1": float((ident[np.load(tmp / f"sweep-{p}.npy")] == qid).mean()),
                }
                for p, lat in opened["sweep"].items()
            },
        }
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows: list[dict]) -> None:  # type: ignore[type-arg]
    print("| templates | engine | build s | RSS MB | disk MB | p50 ms | p99 ms | recall@1 | id@1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, b, o = r["exact"], r["ann_build"], r["ann_open"]
        print(
            f"| {r['n']:,} | exact | {e['build_s']:.1f} | {e['rss_mb']:.0f} | - | "
            f"{e['p50_ms']:.2f} | {e['p99_ms']:.2f} | 1 | {r['exact_id@1']:.4f} |"
        )
        print(
            f"| {r['n']:,} | ann (build) | {b['build_s']:.1f} | {b['rss_mb']:.0f} | "
            f"{b['disk_mb']:.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | "
            f"{r['ann_recall@1']:.4f} | {r['ann_id@1']:.4f} |"
        )
        print(
            f"| {r['n']:,} | ann (reopened) | open {o['open_s']:.1f} | {o['rss_mb']:.0f} | - | "
            f"{o['p50_ms']:.2f} | {o['p99_ms']:.2f} | {r['ann_open_recall@1']:.4f} | - |"
        )
    print()
    for r in rows:
        e, b = r["exact"], r["ann_build"]
        print(
            f"{r['n']:,}: ann p50 is {e['p50_ms'] / b['p50_ms']:.0f}x faster than exact, "
            f"RSS {b['rss_mb'] / e['rss_mb']:.2f}x exact's; incremental add of 1,000 "
            f"{b['add_1000_s'] * 1e3:.0f} ms (first after the build, growing buffers: "
            f"{b['add_1000_first_s'] * 1e3:.0f} ms), erasure of 100 (files rewritten) "
            f"{b['erase_100_s'] * 1e3:.0f} ms; build {b['build_s']:.0f} s, reopen "
            f"{r['ann_open']['open_s']:.1f} s"
        )
        for p, v in sorted(r["sweep"].items(), key=lambda kv: int(kv[0])):
            print(
                f"    nprobe {p}: p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms, "
                f"recall@1 {v['recall@1']:.4f}, id@1 {v['id@1']:.4f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--slow", action="store_true", help="also 10,000,000 templates")
    ap.add_argument("--per-id", type=int, default=5, help="samples per identity")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=1000)
    ap.add_argument("--exact-queries", type=int, default=200, help="exact is slow: fewer timed")
    ap.add_argument("--nprobe", type=int, default=128)
    ap.add_argument("--shortlist", type=int, default=64)
    ap.add_argument(
        "--sweep", type=int, nargs="*", default=[32, 64, 256], help="other nprobe values timed"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="where the data and index files go")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-reopen", action="store_true", help="skip timing AnnIndex.open")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.data / f"{args.worker}.json", args)
        return
    import faiss

    sizes = list(args.sizes) + ([10_000_000] if args.slow else [])
    print(
        f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, python "
        f"{platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"nprobe {args.nprobe}, shortlist {args.shortlist}, per-id {args.per_id}"
    )
    rows = []
    for n in sizes:
        rows.append(bench(n, args))
        print(json.dumps(rows[-1]), flush=True)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
