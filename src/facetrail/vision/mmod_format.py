"""dlib's MMOD CNN face detector (`mmod_human_face_detector.dat`), read into plain arrays.

The file holds the network dlib's `dnn_mmod_face_detection_ex.cpp` defines:

    input_rgb_image_pyramid<pyramid_down<6>>
      -> 3 x (con 5x5 stride 2, bn_con, relu)        16, 32, 32 filters ("downsampler")
      -> 3 x (con 5x5 stride 1 pad 2, bn_con, relu)  45 filters
      -> con 9x9 stride 1 pad 4, 1 filter            one score map per detector window
    wrapped by loss_mmod, whose options (the detector windows, the NMS overlap thresholds)
    open the file.

This module parses that into `MmodNet`: convolutions with the batch norm folded into their
weights (dlib folds it the same way when it loads the file), the input layer's means and
pyramid paddings, and the loss layer's options. Nothing here depends on ONNX.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from facetrail.errors import ModelError
from facetrail.vision.dlib_format import Layer, _Reader, read_layers

LOSS_HEAD = "loss_mmod_"
PYRAMID_DOWN = 6  # pyramid_down<6>: each level is 5/6 of the one before


@dataclass(frozen=True)
class Conv:
    """One convolution with its following affine/batch norm folded in."""

    weights: np.ndarray  # (filters, channels, nr, nc) float32
    bias: np.ndarray  # (filters,) float32
    stride: tuple[int, int]  # (y, x)
    padding: tuple[int, int]  # (y, x)
    relu: bool  # a relu follows

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weights.shape[2]), int(self.weights.shape[3])


@dataclass(frozen=True)
class MmodNet:
    """Everything needed to run the detector outside dlib."""

    mean: np.ndarray  # (3,) float32, RGB; input is (pixel - mean) / 256
    padding: int  # rows between two pyramid levels in dlib's tiled image
    outer_padding: int  # rows/columns around the tiled image
    convs: tuple[Conv, ...]
    windows: tuple[tuple[int, int], ...]  # detector windows (width, height) in tensor pixels
    nms_iou: float  # two boxes overlap when IoU (against their bounding box) exceeds this
    nms_covered: float  # ... or when either is covered by more than this share

    def output_size(self, rows: int, cols: int) -> tuple[int, int]:
        """The score map's size for an input tensor of this size (0 or less: none)."""
        for conv in self.convs:
            (kr, kc), (sr, sc), (pr, pc) = conv.kernel, conv.stride, conv.padding
            rows = (rows + 2 * pr - kr) // sr + 1 if rows + 2 * pr >= kr else 0
            cols = (cols + 2 * pc - kc) // sc + 1 if cols + 2 * pc >= kc else 0
        return rows, cols

    def output_to_input(self) -> tuple[int, int]:
        """(a, b) such that output cell p sits over input tensor pixel a * p + b.

        dlib maps a point back through each convolution, outermost first, as
        p * stride - padding + kernel // 2; the same stride is used in x and y here.
        """
        a, b = 1, 0
        for conv in self.convs:
            stride, pad, kernel = conv.stride[0], conv.padding[0], conv.kernel[0]
            a, b = a * stride, b * stride - pad + kernel // 2
        return a, b


def _read_options(data: bytes) -> tuple[tuple[tuple[int, int], ...], float, float]:
    """The loss layer's options: detector windows and the NMS thresholds.

    Only the first version of `mmod_options` (the one face_recognition_models ships) is
    understood; a later one fails loudly rather than being misread.
    """
    r = _Reader(data)
    r.integer()  # add_loss_layer version
    if r.string() != LOSS_HEAD:
        raise ModelError("not a dlib MMOD detector file")
    version = r.integer()
    if version != 1:
        raise ModelError(f"unsupported mmod_options version {version}")
    windows = ((r.integer(), r.integer()),)
    r.double()  # loss_per_false_alarm
    r.double()  # loss_per_missed_target
    r.double()  # truth_match_iou_threshold
    nms_iou, nms_covered = r.double(), r.double()
    if not (windows[0][0] > 0 and windows[0][1] > 0 and 0 < nms_iou <= 1 and 0 < nms_covered <= 1):
        raise ModelError("MMOD options out of range")
    return windows, nms_iou, nms_covered


def _conv(layer: Layer, norm: Layer | None, relu: bool) -> Conv:
    i = layer.ints
    f, k, nr, nc = i["num_filters"], i["k"], i["nr"], i["nc"]
    count = f * k * nr * nc
    if layer.params is None or layer.params.size < count:
        raise ModelError("convolution record too short")
    weights = layer.params[:count].reshape(f, k, nr, nc).astype(np.float64)
    bias = layer.params[count : count + f].astype(np.float64)
    if bias.size != f:
        bias = np.zeros(f)
    if norm is not None:
        if norm.params is None or norm.params.size != 2 * f:
            raise ModelError("affine record does not match the convolution before it")
        gamma, beta = norm.params[:f].astype(np.float64), norm.params[f:].astype(np.float64)
        weights = weights * gamma[:, None, None, None]
        bias = bias * gamma + beta
    return Conv(
        weights=weights.astype(np.float32),
        bias=bias.astype(np.float32),
        stride=(i["stride_y"], i["stride_x"]),
        padding=(i["padding_y"], i["padding_x"]),
        relu=relu,
    )


def read_mmod(data: bytes) -> MmodNet:
    """Parse `mmod_human_face_detector.dat` (or a file of the same network family)."""
    layers = read_layers(data, expect_head=LOSS_HEAD)
    windows, nms_iou, nms_covered = _read_options(data)
    head = layers[0]
    if not head.kind.startswith("input_rgb_image_pyramid"):
        raise ModelError("MMOD model does not start with an RGB image pyramid input")
    convs: list[Conv] = []
    rest = layers[1:]
    index = 0
    while index < len(rest):
        layer = rest[index]
        if layer.kind not in ("con_4", "con_5"):
            raise ModelError(f"unexpected {layer.kind} layer in MMOD model")
        index += 1
        norm = None
        if index < len(rest) and rest[index].kind in ("affine_", "bn_con2"):
            norm = rest[index]
            index += 1
        relu = index < len(rest) and rest[index].kind == "relu_"
        index += int(relu)
        convs.append(_conv(layer, norm, relu))
    if not convs or convs[-1].relu or convs[-1].weights.shape[0] != len(windows):
        raise ModelError("MMOD model does not end with one score map per detector window")
    for before, after in itertools.pairwise(convs):
        if before.weights.shape[0] != after.weights.shape[1]:
            raise ModelError("MMOD layers do not fit together")
    if convs[0].weights.shape[1] != 3:
        raise ModelError("MMOD model does not take RGB input")
    f = head.floats
    return MmodNet(
        mean=np.array([f["mean_r"], f["mean_g"], f["mean_b"]], np.float32),
        padding=head.ints["padding"],
        outer_padding=head.ints["outer_padding"],
        convs=tuple(convs),
        windows=windows,
        nms_iou=nms_iou,
        nms_covered=nms_covered,
    )
