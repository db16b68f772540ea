"""Live recognition, end to end: from a frame's arrival to its alert reaching a subscriber.

What runs, all on this machine over loopback, as in a deployment:
- a 720p H.264 test stream (built once from LFW: people walk into view for 2 s, one at a time,
  with 2.5 s of empty scene between them; two thirds of them are on the watchlist, with a
  different photo enrolled), served as MPEG-TS over TCP at its real-time pace by a child
  process;
- `facetrail serve` (default settings) in its own process, where an operator starts the
  deployment through the API;
- this process, subscribed to the server-sent alert stream like an operator's page.

The latency of an alert is the time it reached this subscriber minus the time the frame that
raised it arrived at the service (decoded from the stream), both on this machine's clock. The
run reports its median and 95th percentile, then plays the stream at several frame rates and
reports the highest one the service sustained without falling behind (at most 1% of frames
dropped, counted from 4 s after the stream opened: opening a stream delivers the frames
buffered while FFmpeg probed it all at once), with the memory of the service process at the
start and end of each run.

    python bench/live_latency.py [--lfw ../shared/data/lfw] [--people 24] [--rates 5,10,15,20,25,30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

import av
import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import facetrail
import streams

FPS = 25
SIZE = (1280, 720)
SHOW_S, GAP_S = 2.0, 2.5
SETTLE_S = 4.0  # seconds after the first frame before dropped frames count against a rate
PASSWORD = "a-long-benchmark-password"


def pick_people(lfw: Path, count: int, seed: int = 7) -> list[tuple[str, list[Path]]]:
    """People with at least two images: the first is enrolled, another is shown."""
    people = []
    for folder in sorted(p for p in lfw.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"))
        if len(images) >= 2:
            people.append((folder.name, images))
    random.Random(seed).shuffle(people)
    return people[:count]


def build_video(path: Path, shown: list[Path], seed: int = 7) -> float:
    """The test stream: each image enlarged to a ~300 px face region on a textured scene,
    drifting slowly for SHOW_S seconds, then GAP_S seconds of the empty scene."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    scene = rng.integers(90, 150, size=(h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(
            "libx264", rate=FPS, options={"preset": "veryfast", "tune": "zerolatency"}
        )
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for image in shown:
            face = Image.open(image).convert("RGB").resize((300, 300), Image.Resampling.BICUBIC)
            pixels = np.asarray(face)
            x0, y0 = int(rng.integers(50, w - 450)), int(rng.integers(50, h - 350))
            for i in range(int(SHOW_S * FPS)):
                frame = scene.copy()
                x, y = x0 + 2 * i, y0 + i // 2
                frame[y : y + 300, x : x + 300] = pixels
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for _ in range(int(GAP_S * FPS)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(scene, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return len(shown) * (SHOW_S + GAP_S)


def prepare(data: Path, people: list[tuple[str, list[Path]]], listed: int) -> None:
    """A team, the enrolled people, and an authorised watchlist of the first `listed`."""
    with facetrail.open(data) as ft:
        ft.init("admin", PASSWORD)
        for role in ("investigator", "authoriser", "operator"):
            ft.add_user(role, role, PASSWORD)
        tokens = {
            r: ft.as_caller(None).login(r, PASSWORD).token for r in ("investigator", "authoriser")
        }
        admin = ft.as_caller(None)
        admin.use_token(ft.as_caller(None).login("admin", PASSWORD).token)
        for name, images in people:
            admin.enrol([images[0]], subject=name)
        inv = ft.as_caller(None)
        inv.use_token(tokens["investigator"])
        inv.create_watchlist(
            "bench", purpose="benchmark", expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        inv.add_to_watchlist("bench", [name for name, _ in people[:listed]], reason="benchmark")
        auth = ft.as_caller(None)
        auth.use_token(tokens["authoriser"])
        auth.authorise_watchlist("bench", reason="benchmark")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Service:
    def __init__(self, data: Path) -> None:
        self.port = streams.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FACETRAIL_DATA": str(data)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "facetrail", "serve", "--port", str(self.port)], env=env
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("facetrail serve did not start") from None
                time.sleep(0.2)
        r = httpx.post(f"{self.url}/api/v1/login", json={"name": "operator", "password": PASSWORD})
        self.headers = {"Authorization": f"Bearer {r.json()['token']}"}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def run(service: Service, video: Path, pace: float, seconds: float) -> dict:
    """Play the stream at `pace` times real time for at most `seconds`; the alerts' latencies
    as the subscriber saw them, and the deployment's counters."""
    api = f"{service.url}/api/v1/live"
    url, server = streams.serve(video, pace=pace)
    latencies: list[float] = []
    ready = threading.Event()
    stop = threading.Event()
    rss_start = rss_mib(service.process.pid)

    def subscribe(deployment: int) -> None:
        with (
            httpx.Client(timeout=None) as client,
            client.stream(
                "GET", f"{api}/events", params={"deployment": deployment}, headers=service.headers
            ) as response,
        ):
            ready.set()
            kind = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "alert":
                    got = time.time()
                    alert = json.loads(line[6:])
                    if "frame_arrived" in alert:
                        latencies.append(got - alert["frame_arrived"])
                elif line.startswith("data: ") and kind == "deployment":
                    status = json.loads(line[6:]).get("status")
                    if status in ("ended", "stopped", "interrupted"):
                        return
                if stop.is_set():
                    return

    until = datetime.now(UTC) + timedelta(seconds=seconds)
    body = {"watchlist": "bench", "source": url, "until": until.isoformat()}
    r = httpx.post(f"{api}/deployments", json=body, headers=service.headers, timeout=30)
    r.raise_for_status()
    deployment = r.json()["id"]
    listener = threading.Thread(target=subscribe, args=(deployment,), daemon=True)
    listener.start()
    ready.wait(10)
    started = time.monotonic()
    settled = None  # the counters once the stream's opening burst is behind it
    opened = None
    while True:
        d = httpx.get(f"{api}/deployments/{deployment}", headers=service.headers).json()
        if d["status"] != "running":
            break
        if opened is None and d["frames_received"]:
            opened = time.monotonic()
        if settled is None and opened is not None and time.monotonic() - opened > SETTLE_S:
            settled = d
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    stop.set()
    listener.join(5)
    server.kill()
    server.wait()
    # Opening a stream buffers a few seconds of frames while FFmpeg probes it; they arrive
    # at once and all but the newest are dropped. Falling behind is judged after that.
    base = settled or {"frames_received": 0, "frames_dropped": 0}
    received = max(1, d["frames_received"] - base["frames_received"])
    return {
        "pace": pace,
        "fps": round(FPS * pace, 1),
        "status": d["status"],
        "frames_received": d["frames_received"],
        "frames_analysed": d["frames_analysed"],
        "frames_dropped": d["frames_dropped"],
        "dropped_share": round((d["frames_dropped"] - base["frames_dropped"]) / received, 4),
        "alerts": d["alerts"],
        "analysed_per_s": round(d["frames_analysed"] / elapsed, 1),
        "latencies_ms": [round(x * 1000, 1) for x in latencies],
        "rss_mib": (round(rss_start, 1), round(rss_mib(service.process.pid), 1)),
    }


def summary(latencies_ms: list[float]) -> str:
    if not latencies_ms:
        return "no alerts"
    p95 = float(np.percentile(latencies_ms, 95))
    return (
        f"{len(latencies_ms)} alerts, median {median(latencies_ms):.0f} ms, "
        f"p95 {p95:.0f} ms, max {max(latencies_ms):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--rates", default="4,5,6,8,10,15,25", help="frame rates of the sweep")
    parser.add_argument("--sweep-seconds", type=float, default=25.0)
    args = parser.parse_args()
    images = args.lfw / "lfw" if (args.lfw / "lfw").is_dir() else args.lfw
    if not images.is_dir():
        raise SystemExit(f"LFW images not found under {args.lfw}")
    work = Path(tempfile.mkdtemp(prefix="facetrail-live-bench-"))
    people = pick_people(images, args.people)
    listed = len(people) * 2 // 3
    video = work / "stream.mp4"
    t = time.perf_counter()
    duration = build_video(video, [imgs[1] for _, imgs in people])
    print(
        f"test stream: {len(people)} people ({listed} on the watchlist), {duration:.0f} s of "
        f"1280x720 at {FPS} fps, built in {time.perf_counter() - t:.0f} s"
    )
    prepare(work / "data", people, listed)
    service = Service(work / "data")
    try:
        main_run = run(service, video, 1.0, duration + 10)
        print(f"\n720p at {FPS} fps, real time: {summary(main_run['latencies_ms'])}")
        m = main_run
        print(
            f"  frames: {m['frames_received']} received, {m['frames_analysed']} analysed, "
            f"{m['frames_dropped']} dropped; alerts {m['alerts']} (about {listed} expected); "
            f"service memory {m['rss_mib'][0]} -> {m['rss_mib'][1]} MiB"
        )
        print(
            f"  analysis keeps up with {m['analysed_per_s']} frames/s (the newest frame each time)"
        )
        print(f"\nsweep ({args.sweep_seconds:.0f} s each): fps, dropped share, latency")
        sustained = 0.0
        for rate in [float(r) for r in args.rates.split(",")]:
            result = run(service, video, rate / FPS, args.sweep_seconds)
            ok = result["dropped_share"] <= 0.01
            sustained = max(sustained, rate) if ok else sustained
            memory = result["rss_mib"]
            print(
                f"  {rate:5.1f} fps: dropped {result['dropped_share'] * 100:5.1f}%  "
                f"{summary(result['latencies_ms'])}; memory {memory[0]} -> {memory[1]} MiB"
            )
        print(f"\nhighest frame rate sustained (<= 1% dropped): {sustained:.0f} fps at 720p")
    finally:
        service.close()


if __name__ == "__main__":
    main()
