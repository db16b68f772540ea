"""The descriptor network: the plain graph against the Winograd graph, by batch size.

What it measures
    Milliseconds per batch of real LFW chips through facetrail's ONNX graph of dlib's ResNet
    with flip averaging (the default), run by ONNX Runtime on the CPU, for the plain graph
    (ONNX Runtime's convolutions everywhere) and for the graph whose 128- and 256-channel layers
    are Winograd convolutions (`facetrail.vision.winograd`), interleaved in one process; the
    median of `--repeats` runs each, their ratio, and the largest difference between the two
    graphs' descriptors. `DlibResnet` uses the Winograd graph from `WINOGRAD_BATCH` chips up.

Run
    python bench/descriptor_speed.py                       # batches 1, 2, 4, 8, 16, 32, 64
    python bench/descriptor_speed.py --threads 1 --repeats 5

Exit status 2 when the LFW folder is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from facetrail.media import load_image
from facetrail.vision import models
from facetrail.vision.align import FivePointAligner
from facetrail.vision.descriptor import WINOGRAD_BATCH, onnx_session
from facetrail.vision.detector import HogDetector
from facetrail.vision.resnet_onnx import build_resnet_graph

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def real_chips(root: Path, count: int) -> np.ndarray:
    """Aligned chips of the first faces found in LFW images, in name order."""
    detector, aligner = HogDetector(), FivePointAligner(models.five_point_predictor())
    chips: list[np.ndarray] = []
    for path in sorted(root.glob("*/*.jpg")):
        pixels = load_image(path).pixels
        found = detector.detect(pixels, "primary")
        if len(found.boxes):
            chips.append(aligner.align(pixels, found.boxes[:1])[1][0])
        if len(chips) == count:
            break
    return np.stack(chips)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=LFW, help="the LFW folder")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"LFW folder not found: {args.data}", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    chips = real_chips(args.data, max(batches))
    dat = models.descriptor_dat().read_bytes()
    sessions = {
        name: onnx_session(
            build_resnet_graph(dat, mirror=True, fast=fast).SerializeToString(),
            ["CPUExecutionProvider"],
            args.threads,
        )
        for name, fast in (("plain", False), ("winograd", True))
    }

    def run(name: str, batch: np.ndarray) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = sessions[name].run(None, {"chips": batch})[0]
        return time.perf_counter() - start, out

    print(f"chips: {len(chips)} real LFW chips; flip averaging; threads {args.threads or 'all'}")
    print(f"DlibResnet uses the Winograd graph from {WINOGRAD_BATCH} chips a batch\n")
    print(f"{'batch':>5}  {'plain ms':>9}  {'winograd ms':>11}  {'speed-up':>8}  {'max diff':>9}")
    for size in batches:
        batch = np.ascontiguousarray(chips[:size])
        times: dict[str, list[float]] = {"plain": [], "winograd": []}
        outs = {name: run(name, batch)[1] for name in times}  # warm-up
        for _ in range(args.repeats):
            for name in times:
                times[name].append(run(name, batch)[0])
        plain, fast = (statistics.median(times[n]) * 1000 for n in ("plain", "winograd"))
        diff = float(np.abs(outs["plain"] - outs["winograd"]).max())
        print(f"{size:>5}  {plain:>9.1f}  {fast:>11.1f}  {plain / fast:>7.2f}x  {diff:>9.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
