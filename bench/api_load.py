"""Load on the HTTP API: many concurrent clients searching against a served instance.

Prepares a data directory (init, a few subjects enrolled, an investigator, a case in which an
authoriser approved gallery-wide searches), starts `python -m facetrail serve` on it in a
subprocess, and runs `--clients` threads for `--seconds`, each with its own HTTP connection
and its own log-in, each repeatedly uploading a probe (POST /api/v1/searches, 202 + a job)
and polling the job until it ends. The latency of one search is from the start of its upload
to the poll that sees the job done. Any non-2xx answer, failed job or transport error counts
as an error. Prints p50, p95 and max latency, searches and requests done, throughput, the
error count (target: zero) and whether the server logged anything alarming ("database is
locked", tracebacks).

    python bench/api_load.py                              # 50 clients, 60 s
    python bench/api_load.py --clients 10 --seconds 10    # quick check
    python bench/api_load.py --json out.json              # also write the numbers as JSON
    python bench/api_load.py --json > out.json            # JSON on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
FR = ROOT.parent / "shared" / "data" / "examples" / "face_recognition"
PASSWORD = "a-long-bench-password"
CASE = "LOAD-1"
ALARMS = ("database is locked", "Traceback", "Exception in ASGI application", "Error")


@dataclass
class ClientStats:
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: Counter = field(default_factory=Counter)


def prepare(data: Path, train: Path) -> None:
    """A data directory ready for searching: users, subjects, a case with an approval."""
    import facetrail

    with facetrail.open(data) as ft:
        ft.init("admin", PASSWORD)
        ft.add_user("ivy", "investigator", PASSWORD)
        ft.add_user("alf", "authoriser", PASSWORD)
        folders = sorted(p for p in train.iterdir() if p.is_dir())
        for folder in folders:
            report = ft.enrol([folder], subject=folder.name)
            if not report.enrolled:
                raise SystemExit(f"could not enrol {folder}")
        ivy = ft.as_caller(None)
        ivy.login("ivy", PASSWORD)
        ivy.open_case(CASE, purpose="load benchmark", legal_basis="test data only")
        alf = ft.as_caller(None)
        alf.login("alf", PASSWORD)
        alf.approve(CASE, scope="gallery", reason="the benchmark searches the gallery")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, jobs: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "facetrail", "serve", "--data", str(data)]
    command += ["--port", str(port), "--jobs", str(jobs)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACETRAIL_")}
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer in time")


def login(base: str) -> str:
    r = httpx.post(f"{base}/api/v1/login", json={"name": "ivy", "password": PASSWORD}, timeout=60)
    r.raise_for_status()
    return r.json()["token"]


def search_once(
    client: httpx.Client, probe: tuple[str, bytes], stats: ClientStats, timeout: float
) -> float | None:
    """One search, upload to job done: its latency, or None (the error is counted)."""
    start = time.perf_counter()
    name, data = probe
    try:
        r = client.post(
            "/api/v1/searches",
            files=[("files", (name, data, "application/octet-stream"))],
            data={"case": CASE},
        )
        stats.requests += 1
        if r.status_code != 202:
            stats.errors[f"POST /searches {r.status_code}"] += 1
            return None
        job = r.json()
        pause = 0.05
        while job["status"] in ("queued", "running"):
            if time.perf_counter() - start > timeout:
                stats.errors["job timed out"] += 1
                return None
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)  # quick jobs are seen quickly, queued ones polled less
            r = client.get(f"/api/v1/jobs/{job['id']}")
            stats.requests += 1
            if r.status_code != 200:
                stats.errors[f"GET /jobs {r.status_code}"] += 1
                return None
            job = r.json()
        if job["status"] != "done":
            stats.errors[f"job {job['status']}: {(job.get('error') or {}).get('type')}"] += 1
            return None
    except httpx.HTTPError as exc:
        stats.errors[type(exc).__name__] += 1
        return None
    return time.perf_counter() - start


def run_client(
    base: str,
    token: str,
    probes: list[tuple[str, bytes]],
    offset: int,
    stop_at: float,
    start: threading.Event,
    stats: ClientStats,
    timeout: float,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
        start.wait()
        n = offset
        while time.perf_counter() < stop_at:  # a search started before the end is finished
            latency = search_once(client, probes[n % len(probes)], stats, timeout)
            if latency is not None:
                stats.latencies.append(latency)
            n += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--jobs", type=int, default=1, help="searches the server runs at once")
    ap.add_argument("--probes", type=Path, default=FR / "knn_examples" / "test")
    ap.add_argument("--gallery", type=Path, default=FR / "knn_examples" / "train")
    ap.add_argument("--data", type=Path, help="data directory to create (default: temporary)")
    ap.add_argument("--port", type=int, default=0, help="default: a free port")
    ap.add_argument("--timeout", type=float, default=600.0, help="per search, seconds")
    ap.add_argument("--json", nargs="?", const="-", help="write JSON to FILE (or stdout: -)")
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json == "-" else print

    if not args.probes.is_dir() or not args.gallery.is_dir():
        print(f"images not found under {FR}", file=sys.stderr)
        return 2
    probes = [
        (p.name, p.read_bytes())
        for p in sorted(args.probes.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    workdir = Path(tempfile.mkdtemp(prefix="facetrail-load-"))
    data = args.data or workdir / "data"
    log = workdir / "server.log"
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"

    t0 = time.perf_counter()
    prepare(data, args.gallery)
    say(f"prepared {data} in {time.perf_counter() - t0:.1f} s; serving on {base}")
    server = start_server(data, port, args.jobs, log)
    try:
        wait_ready(base, server)
        tokens = [login(base) for _ in range(args.clients)]
        warm = ClientStats()  # loads the models before the clock starts
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=args.timeout
        ) as client:
            if search_once(client, probes[0], warm, args.timeout) is None:
                raise SystemExit(f"the warm-up search failed: {dict(warm.errors)}")

        start = threading.Event()
        stats = [ClientStats() for _ in range(args.clients)]
        began = time.perf_counter()
        stop_at = began + args.seconds
        threads = [
            threading.Thread(
                target=run_client,
                args=(base, tokens[i], probes, i, stop_at, start, stats[i], args.timeout),
                daemon=True,
            )
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        start.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    server_log = log.read_text(errors="replace")
    alarms = {a: server_log.count(a) for a in ALARMS if a in server_log}

    latencies = [x for s in stats for x in s.latencies]
    errors: Counter = Counter()
    for s in stats:
        errors.update(s.errors)
    result: dict[str, Any] = {
        "clients": args.clients,
        "seconds": args.seconds,
        "jobs": args.jobs,
        "probes": [name for name, _ in probes],
        "gallery_subjects": len([p for p in args.gallery.iterdir() if p.is_dir()]),
        "wall_seconds": round(wall, 2),
        "searches": len(latencies),
        "requests": sum(s.requests for s in stats),
        "throughput_searches_per_s": round(len(latencies) / wall, 3),
        "latency_s": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p95": round(percentile(latencies, 0.95), 3),
            "max": round(max(latencies, default=float("nan")), 3),
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
            "min": round(min(latencies, default=float("nan")), 3),
        },
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "server_alive_at_end": alive,
        "server_log_alarms": alarms,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }

    lat = result["latency_s"]
    rows = [
        ("clients x seconds", f"{args.clients} x {args.seconds:g} (server jobs: {args.jobs})"),
        ("searches done", f"{result['searches']} in {wall:.1f} s"),
        ("requests done", f"{result['requests']} (uploads and job polls)"),
        ("throughput", f"{result['throughput_searches_per_s']:.2f} searches/s"),
        ("latency p50", f"{lat['p50']:.2f} s"),
        ("latency p95", f"{lat['p95']:.2f} s"),
        ("latency max", f"{lat['max']:.2f} s"),
        ("errors", f"{result['errors']} {dict(errors) or ''}".strip()),
        ("server log", "clean" if not alarms else json.dumps(alarms)),
        ("machine", f"{os.cpu_count()} CPUs, load {result['machine']['load_average']}"),
    ]
    width = max(len(k) for k, _ in rows)
    say("")
    for key, value in rows:
        say(f"{key:<{width}}  {value}")
    say(f"target: zero errors ... {'met' if not result['errors'] and not alarms else 'NOT met'}")
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if alarms:
        say(f"server log kept at {log}")
    elif args.data is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not result["errors"] and not alarms else 1


if __name__ == "__main__":
    sys.exit(main())
