"""A real network stream on loopback for the live tests and benchmark: a video file served
as MPEG-TS over TCP by a child process (PyAV holds the GIL while it waits for a client, so
the server must not share the test's interpreter)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

# Serves the clip `loops` times, back to back with continuous timestamps, to the first client
# of tcp://127.0.0.1:PORT, at PACE times real time; then closes the connection.
SERVER = """
import sys, time
import av
clip, port, pace, loops = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
url = f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=30000"

def serve(dst):
    out, offset, started = None, 0, None
    for _ in range(loops):
        with av.open(clip) as src:
            stream = src.streams.video[0]
            if out is None:
                out = dst.add_stream_from_template(stream)
                started = time.monotonic()
            last = 0
            for packet in src.demux(stream):
                if packet.dts is None:
                    continue
                pts = (packet.pts or 0) + offset
                due = float(pts * stream.time_base) / pace
                time.sleep(max(0.0, started + due - time.monotonic()))
                last = max(last, pts + (packet.duration or 0))
                packet.pts, packet.dts = pts, packet.dts + offset
                packet.stream = out
                dst.mux(packet)
            offset = last

print("listening", flush=True)
try:
    with av.open(url, "w", format="mpegts") as dst:
        serve(dst)
except (OSError, av.FFmpegError):
    pass  # the client went away
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    clip: Path, pace: float = 1.0, loops: int = 1, port: int | None = None
) -> tuple[str, subprocess.Popen]:
    """Start serving `clip`; returns its tcp:// URL and the server process, once the server
    is about to listen (a client that came too early would be refused)."""
    port = port or free_port()
    args = [sys.executable, "-c", SERVER, str(clip), str(port), str(pace), str(loops)]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    time.sleep(0.2)
    return f"tcp://127.0.0.1:{port}", server
