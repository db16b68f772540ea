"""Descriptors and CNN detection on a GPU through ONNX Runtime's CUDA provider (issue 9).

Two steps, because the GPU machine this was measured on reaches no data and no network:

    python bench/gpu_speed.py prepare bench/out/gpu_inputs.npz   # here, with ../shared/data
    python bench/gpu_speed.py run bench/out/gpu_inputs.npz       # there, with onnxruntime-gpu

`prepare` takes real inputs with facetrail's own CPU pipeline: `--chips` aligned 150x150 chips
of LFW images (HOG + 5-point alignment, as enrolment does) and `--frames` frames of the
Hamilton clip at 640x480 and 1280x720 (made as bench/detector_speed.py makes them).

`run` measures, in one process, the product classes with `providers=["CUDAExecutionProvider"]`
against the same classes on the CPU of the same machine:
- `DlibResnet` descriptors per second, over `--descriptors` chips (the real chips repeated), at
  several batch sizes, plain and flip-averaged (the shipped default describes each chip twice);
  the largest difference from the CPU's descriptors on the real chips;
- `CnnDetector.detect_batch` frames per second at both sizes and several frames per run (min
  face 40 px, as bench/detector_speed.py), whether its boxes equal the CPU's, and HOG's time per
  frame on the same frames for the ratio.
Medians of `--repeats` timed runs after a warm-up. Exit status 2 when CUDA is not available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
LFW = REPO.parent / "shared" / "data" / "lfw"
CUDA = "CUDAExecutionProvider"


def prepare(out: Path, chips: int, frames: int) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from detector_speed import SIZES, _frames, _to_size
    from facetrail.config import Settings
    from facetrail.media.image import load_image
    from facetrail.vision.pipeline import FaceAnalyzer

    with tempfile.TemporaryDirectory() as cache:
        analyzer = FaceAnalyzer(Settings(data=Path(cache), flip_average=False))
        found: list[np.ndarray] = []
        for path in sorted(LFW.glob("*/*.jpg")):
            faces = analyzer.locate(load_image(path).pixels, "thorough")
            if len(faces):
                found.append(faces.chips[:1])
            if len(found) == chips:
                break
    clip = _frames(frames)
    arrays = {"chips": np.concatenate(found)}
    for width, height in SIZES:
        arrays[f"frames_{width}x{height}"] = np.stack([_to_size(f, width, height) for f in clip])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print({k: v.shape for k, v in arrays.items()}, out.stat().st_size, "bytes")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: session start, cuDNN's algorithm search for these shapes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip()
    except OSError:
        return "unknown"


def run(inputs: Path, count: int, repeats: int, report: Path | None, provider: str) -> int:
    import onnxruntime as ort

    from facetrail.vision.descriptor import DlibResnet, FlipAveraged
    from facetrail.vision.detector import HogDetector
    from facetrail.vision.mmod import CnnDetector

    if provider not in ort.get_available_providers():
        print(f"no {provider} in onnxruntime {ort.__version__}: install onnxruntime-gpu")
        return 2
    data = np.load(inputs)
    chips = data["chips"]
    result: dict = {
        "gpu": _gpu_name(),
        "onnxruntime": ort.__version__,
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "real_chips": len(chips),
    }
    cache = Path(tempfile.mkdtemp())

    # Descriptors: the same real chips on the CPU and the GPU, then throughput on the GPU, for
    # the plain graph and the mirrored one (flip averaging in the graph: the shipped default).
    rows = []
    many = np.ascontiguousarray(np.resize(chips, (count, *chips.shape[1:])))
    for mirror in (False, True):
        cpu = DlibResnet(cache, ["CPUExecutionProvider"], batch_size=32, mirror=mirror)
        reference = cpu.describe(chips)
        cpu_s = _median_time(lambda c=cpu: c.describe(chips), repeats)
        result[f"descriptor_cpu_faces_per_s{'_mirrored' if mirror else ''}"] = len(chips) / cpu_s
        for batch in (32, 128, 512):
            gpu = DlibResnet(cache, [provider], batch_size=batch, mirror=mirror)
            diff = float(np.abs(gpu.describe(chips) - reference).max())
            took = _median_time(lambda g=gpu: g.describe(many), repeats)
            rows.append(
                {
                    "graph": "mirrored (flip-averaged)" if mirror else "plain",
                    "batch": batch,
                    "provider": gpu._session.get_providers()[0],
                    "faces_per_s": count / took,
                    "network_passes_per_s": count * (2 if mirror else 1) / took,
                    "max_abs_diff_vs_cpu": diff,
                }
            )
            print(f"descriptor {rows[-1]}", flush=True)
    outside = FlipAveraged(DlibResnet(cache, [provider], batch_size=512))
    took = _median_time(lambda: outside.describe(many), repeats)
    result["flip_averaged_on_the_host_faces_per_s"] = count / took
    result["descriptor_gpu"] = rows

    # CNN detection: frames per second on the GPU by frames per run; HOG (CPU) beside it.
    hog = HogDetector(min_face=40)
    det_rows = []
    for key in ("frames_640x480", "frames_1280x720"):
        frames = list(data[key])
        cpu_cnn = CnnDetector(min_face=40, providers=["CPUExecutionProvider"], batch_size=1)
        cpu_boxes = [cpu_cnn.detect_batch([f])[0] for f in frames[:4]]
        hog_s = _median_time(lambda fr=frames: [hog.detect(f) for f in fr], 1) / len(frames)
        for batch in (1, 8, 16):
            det = CnnDetector(min_face=40, providers=[provider], batch_size=batch)
            found = det.detect_batch(frames[:4])
            same = all(
                len(a.boxes) == len(b.boxes)
                and (not len(a.boxes) or float(np.abs(a.boxes - b.boxes).max()) <= 1.0)
                for a, b in zip(found, cpu_boxes, strict=True)
            )
            per_frame = _median_time(lambda d=det, fr=frames: d.detect_batch(fr), repeats)
            per_frame /= len(frames)
            det_rows.append(
                {
                    "size": key.removeprefix("frames_"),
                    "frames_per_run": batch,
                    "gpu_cnn_frames_per_s": 1 / per_frame,
                    "cpu_hog_ms_per_frame": hog_s * 1000,
                    "gpu_cnn_ms_per_frame": per_frame * 1000,
                    "boxes_equal_cpu_cnn": same,
                    "faces_in_first_4": sum(len(d.boxes) for d in found),
                }
            )
            print(f"detector {det_rows[-1]}", flush=True)
    result["detector_gpu"] = det_rows
    text = json.dumps(result, indent=2)
    print(text)
    if report:
        report.write_text(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p.add_argument("--chips", type=int, default=128)
    p.add_argument("--frames", type=int, default=16)
    r = sub.add_parser("run")
    r.add_argument("inputs", type=Path)
    r.add_argument("--descriptors", type=int, default=8192)
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--json", type=Path)
    r.add_argument("--provider", default=CUDA, help="another provider to try the script")
    args = parser.parse_args()
    if args.step == "prepare":
        if not LFW.is_dir():
            print(f"{LFW} is missing: prepare needs the shared LFW images")
            return 2
        prepare(args.out, args.chips, args.frames)
        return 0
    return run(args.inputs, args.descriptors, args.repeats, args.json, args.provider)


if __name__ == "__main__":
    sys.exit(main())
