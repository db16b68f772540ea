"""Descriptors: aligned chips in, vectors out, by ONNX Runtime.

Two models sit behind one small interface (`DescriptorModel`):
- `DlibResnet`, the default: dlib's CC0 ResNet, translated by `resnet_onnx` into an ONNX graph
  that is built once and cached under the data directory, keyed by the .dat file's SHA-256.
  On a CPU, large batches run through a second graph whose deep layers are Winograd
  convolutions (`winograd`): the same descriptors, about 1.2x faster.
- `OnnxDescriptor`: any ONNX model a force has licensed, named by configuration. It takes either
  uint8 NHWC chips (as facetrail's own graph does) or float NCHW input normalised by
  (pixel - mean) / std, which is what most published face models expect.

`FlipAveraged` wraps either: it describes each chip and its mirror image and averages them,
which on LFW removes a share of the errors (bench/RESULTS.md) at twice the network cost.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from facetrail.errors import ModelError
from facetrail.files import write_atomic
from facetrail.vision import models
from facetrail.vision.resnet_onnx import BUILDER_VERSION, build_resnet_graph


class DescriptorModel(Protocol):
    id: str  # names the model and its weights; templates are only compared within one id
    chip_size: int
    chip_padding: float
    dim: int

    def describe(self, chips: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) uint8 RGB chips -> (n, dim) float32 descriptors."""
        ...


# TF32 matrix units would round every convolution's inputs to a 10-bit mantissa: descriptors
# made on a GPU must stay interchangeable with the CPU's in one gallery (and within 1e-4 of dlib).
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}
# On a CPU, batches of at least this many chips run through the graph whose deep layers are
# Winograd convolutions (`winograd`): about 1.2x faster from 16 chips up, but slower for one or
# two, where its extra passes over memory outweigh the products it saves (bench/RESULTS.md).
WINOGRAD_BATCH = 8


def _provider_list(providers: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    return [p for p in providers if p in available] or ["CPUExecutionProvider"]


def onnx_session(
    path_or_bytes: Path | bytes, providers: list[str], threads: int, what: str = "descriptor model"
) -> ort.InferenceSession:
    """An ONNX Runtime session on the first of `providers` that is installed (else the CPU),
    its threads not spinning; `what` names the model in the error if it cannot load."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # ONNX Runtime's threads spin while waiting for work by default; beside the pipeline's
    # detection threads that spinning takes the cores the detectors need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = _provider_list(providers)
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    with_options = [(p, PROVIDER_OPTIONS[p]) if p in PROVIDER_OPTIONS else p for p in chosen]
    try:
        return ort.InferenceSession(source, sess_options=options, providers=with_options)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"ONNX Runtime cannot load the {what}: {exc}") from exc


def _run_batches(
    session_for: Callable[[int], ort.InferenceSession], inputs: np.ndarray, batch: int
) -> np.ndarray:
    """Run `inputs` in batches of at most `batch`, each on the session for its size."""
    outs = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        session = session_for(len(chunk))
        outs.append(session.run(None, {session.get_inputs()[0].name: chunk})[0])
    return np.concatenate(outs).astype(np.float32, copy=False)


class DlibResnet:
    chip_size = 150
    chip_padding = 0.25
    dim = 128

    def __init__(
        self,
        cache_dir: Path,
        providers: list[str] | None = None,
        batch_size: int = 32,
        threads: int = 0,
        mirror: bool = False,
    ) -> None:
        """`mirror`: flip averaging inside the graph (the same descriptors, and the same id, as
        `FlipAveraged(DlibResnet(...))`), `batch_size` chips (twice as many images) a run."""
        dat = models.descriptor_dat()
        digest = hashlib.sha256(dat.read_bytes()).hexdigest()
        self.id = f"dlib-resnet-v1:{digest[:12]}" + ("+flip" if mirror else "")
        self.batch_size = batch_size
        self._mirror = mirror
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = threads
        self._stem = cache_dir / f"dlib_resnet_{digest[:16]}_b{BUILDER_VERSION}"
        self._sessions: dict[bool, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        # The Winograd graph gives the same descriptors (within 1e-6), so it shares the id; a
        # GPU's own convolutions are faster than it.
        self._winograd = _provider_list(self._providers)[0] == "CPUExecutionProvider"
        self.onnx_path = self._path(winograd=False)
        self._session(winograd=False)  # a model that cannot load fails here, not mid-batch

    def _path(self, winograd: bool) -> Path:
        variant = ("_mirror" if self._mirror else "") + ("_winograd" if winograd else "")
        return self._stem.with_name(f"{self._stem.name}{variant}.onnx")

    def _session(self, winograd: bool) -> ort.InferenceSession:
        """The session of the plain or the Winograd graph, built and cached on first use."""
        with self._lock:
            if winograd not in self._sessions:
                path = self._path(winograd)

                def build() -> None:
                    dat = models.descriptor_dat().read_bytes()
                    graph = build_resnet_graph(dat, self._mirror, winograd)
                    write_atomic(path, graph.SerializeToString())

                if not path.exists():
                    build()
                try:
                    session = onnx_session(path, self._providers, self._threads)
                except ModelError:  # a damaged cache file (torn copy, bad disk): build afresh
                    build()
                    session = onnx_session(path, self._providers, self._threads)
                self._sessions[winograd] = session
            return self._sessions[winograd]

    def _session_for(self, count: int) -> ort.InferenceSession:
        return self._session(winograd=self._winograd and count >= WINOGRAD_BATCH)

    def describe(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32)
        return _run_batches(self._session_for, np.ascontiguousarray(chips), self.batch_size)


class OnnxDescriptor:
    """A licensed ONNX face model, configured by path, input size and normalisation."""

    def __init__(
        self,
        path: Path,
        *,
        chip_size: int,
        mean: float = 127.5,
        std: float = 128.0,
        chip_padding: float = 0.25,
        providers: list[str] | None = None,
        batch_size: int = 32,
        threads: int = 0,
    ) -> None:
        if not path.is_file():
            raise ModelError(f"descriptor model {path.name} does not exist")
        data = path.read_bytes()
        self.id = f"onnx:{path.stem}:{hashlib.sha256(data).hexdigest()[:12]}"
        self._session = onnx_session(data, providers or ["CPUExecutionProvider"], threads)
        spec = self._session.get_inputs()[0]
        self._uint8_nhwc = spec.type == "tensor(uint8)"
        self.chip_size, self.chip_padding = chip_size, chip_padding
        self.mean, self.std, self.batch_size = mean, std, batch_size
        shape = self._session.get_outputs()[0].shape
        self.dim = int(shape[-1]) if isinstance(shape[-1], int) else 0

    def describe(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._uint8_nhwc:
            inputs = np.ascontiguousarray(chips)
        else:
            inputs = (chips.astype(np.float32).transpose(0, 3, 1, 2) - self.mean) / self.std
        out = _run_batches(lambda _: self._session, inputs, self.batch_size)
        self.dim = out.shape[1] if out.ndim == 2 else self.dim
        return out


class FlipAveraged:
    """Describe each chip and its mirror image; the mean of the two is the descriptor."""

    def __init__(self, inner: DescriptorModel) -> None:
        self.inner = inner
        self.id = f"{inner.id}+flip"
        self.chip_size, self.chip_padding, self.dim = inner.chip_size, inner.chip_padding, inner.dim

    def describe(self, chips: np.ndarray) -> np.ndarray:
        n = len(chips)
        both = self.inner.describe(np.concatenate([chips, chips[:, :, ::-1]]))
        return (both[:n] + both[n:]) / 2.0
