"""ONNX graphs of dlib's MMOD face detector, built in memory from its `.dat` file.

`build_mmod_graph` is the network: it takes the tiled image pyramid dlib feeds it, already
normalised, (N, 3, H, W) float32, and returns the score map (N, windows, h, w). Batch norms
are folded into the convolutions when the file is read (`mmod_format`).

`build_pyramid_graph` builds that pyramid from uint8 frames (dlib's 2x enlargements
included), and `build_detector_graph` is the two in one graph, which `mmod.CnnDetector`
runs, so that on a GPU only the frames cross to the device. The pyramid's layout depends on
the frame size, so these graphs are built for one size each.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facetrail.vision.mmod_format import MmodNet

OPSET = 17
INPUT = "pyramid"
OUTPUT = "scores"
RESIZE_INPUT = "planes"
RESIZE_SIZES = "sizes"
FRAMES = "frames"

# (nr, nc, padding, outer_padding) -> (rects (levels, 4) inclusive l, t, r, b; rows; cols):
# `mmod.pyramid_layout`, passed in because that module imports this one.
Layout = Callable[[int, int, int, int], tuple[np.ndarray, int, int]]


def build_mmod_graph(net: MmodNet) -> onnx.ModelProto:
    """Translate the parsed network into an ONNX model (convolutions and relus only)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = INPUT
    for index, conv in enumerate(net.convs):
        w, b = f"w{index}", f"b{index}"
        inits += [numpy_helper.from_array(conv.weights, w), numpy_helper.from_array(conv.bias, b)]
        out = OUTPUT if index == len(net.convs) - 1 and not conv.relu else f"conv{index}"
        pad_y, pad_x = conv.padding
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [out],
                kernel_shape=list(conv.kernel),
                strides=list(conv.stride),
                pads=[pad_y, pad_x, pad_y, pad_x],
            )
        )
        x = out
        if conv.relu:
            x = f"relu{index}"
            nodes.append(helper.make_node("Relu", [out], [x]))
    graph = helper.make_graph(
        nodes,
        "dlib_mmod_human_face_detector",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [
            helper.make_tensor_value_info(
                OUTPUT, TensorProto.FLOAT, ["n", len(net.windows), "oh", "ow"]
            )
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_resize_graph() -> onnx.ModelProto:
    """A one-node graph resizing (N, C, H, W) float32 to `sizes` (a (4,) int64 input) with
    dlib's bilinear interpolation (corners aligned).

    The same Resize as the pyramid graph's (`build_pyramid_graph`): `mmod.tile_levels` run
    with it gives that graph's values to the bit, which is how the graph is tested.
    """
    node = helper.make_node(
        "Resize",
        [RESIZE_INPUT, "", "", RESIZE_SIZES],
        ["resized"],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    )
    graph = helper.make_graph(
        [node],
        "dlib_resize_bilinear",
        [
            helper.make_tensor_value_info(RESIZE_INPUT, TensorProto.FLOAT, ["n", "c", "h", "w"]),
            helper.make_tensor_value_info(RESIZE_SIZES, TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, ["n", "c", "oh", "ow"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def enlarged_size(height: int, width: int, levels: int) -> tuple[int, int]:
    """The size dlib's pyramid_up gives, `levels` times: 2 * rows + 1 by 2 * cols + 2."""
    for _ in range(levels):
        height, width = 2 * height + 1, 2 * width + 2
    return height, width


class _Builder:
    """Collects nodes and constants with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"pyr_{stem}{self._count}"

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, out: str = "", **attrs: object) -> str:
        out = out or self.name(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _pyramid_nodes(
    net: MmodNet, height: int, width: int, levels: int, layout: Layout, output: str
) -> _Builder:
    """The nodes from uint8 frames (N, height, width, 3) to dlib's tiled pyramid `output`."""
    g = _Builder()
    x = g.op("Cast", [FRAMES], "float", to=TensorProto.FLOAT)
    x = g.op("Transpose", [x], "planes", perm=[0, 3, 1, 2])
    # Sizes are (N, C, rows, cols) with N only known at run time; rows and cols are fixed.
    batch = g.op("Shape", [x], "nc", start=0, end=2)

    def resize(src: str, rows: int, cols: int) -> str:
        sizes = g.op("Concat", [batch, g.const(np.array([rows, cols], np.int64))], "sz", axis=0)
        # The same node as build_resize_graph's, so the values are the ones it gives.
        return g.op(
            "Resize",
            [src, "", "", sizes],
            "resized",
            mode="linear",
            coordinate_transformation_mode="align_corners",
        )

    rows, cols = height, width
    for _ in range(levels):  # dlib's pyramid_up: bilinear to 2r+1 x 2c+2, truncated
        rows, cols = 2 * rows + 1, 2 * cols + 2
        x = g.op("Floor", [resize(x, rows, cols)], "floor")
    # (x - mean) * (1 / 256) in float32, the same two steps as dlib's input layer (and
    # mmod.tile_levels), so the values are bit-identical.
    x = g.op("Sub", [x, g.const(net.mean.astype(np.float32).reshape(1, 3, 1, 1), "mean")], "sub")
    x = g.op("Mul", [x, g.const(np.array(1 / 256, np.float32), "scale")], "norm")
    rects, canvas_rows, canvas_cols = layout(rows, cols, net.padding, net.outer_padding)
    tiles = [x]
    for left, top, right, bottom in rects[1:]:  # each level from the one before, as dlib
        tiles.append(resize(tiles[-1], int(bottom - top + 1), int(right - left + 1)))

    # The canvas, cut into horizontal bands in which the same tiles are present; each band is
    # its tiles' rows padded with zeros and joined left to right, and the bands are stacked.
    # Only Slice, Pad, Concat and ConstantOfShape: each tile is copied into place once or
    # twice and the gaps are exact zeros, as in the numpy canvas.
    edges = sorted({0, canvas_rows, *rects[:, 1].tolist(), *(rects[:, 3] + 1).tolist()})
    bands: list[str] = []
    for y0, y1 in itertools.pairwise(edges):
        inside = sorted(
            (i for i, r in enumerate(rects) if r[1] <= y0 and y1 <= r[3] + 1),
            key=lambda i: rects[i][0],
        )
        if not inside:
            shape = g.op(
                "Concat",
                [batch, g.const(np.array([y1 - y0, canvas_cols], np.int64))],
                "gapshape",
                axis=0,
            )
            zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
            bands.append(g.op("ConstantOfShape", [shape], "gap", value=zero))
            continue
        pieces: list[str] = []
        end = 0  # the column after the previous piece
        for k, i in enumerate(inside):
            left, top, right, bottom = (int(v) for v in rects[i])
            piece = tiles[i]
            if y0 != top or y1 != bottom + 1:
                piece = g.op(
                    "Slice",
                    [
                        piece,
                        g.const(np.array([y0 - top], np.int64)),
                        g.const(np.array([y1 - top], np.int64)),
                        g.const(np.array([2], np.int64)),
                    ],
                    "rows",
                )
            after = canvas_cols - right - 1 if k == len(inside) - 1 else 0
            pads = np.array([0, 0, 0, left - end, 0, 0, 0, after], np.int64)
            if pads.any():
                piece = g.op("Pad", [piece, g.const(pads, "pads")], "padded")
            pieces.append(piece)
            end = right + 1
        bands.append(pieces[0] if len(pieces) == 1 else g.op("Concat", pieces, "band", axis=3))
    g.op("Concat", bands, "canvas", out=output, axis=2)
    return g


def _model(g: _Builder, height: int, width: int, output: onnx.ValueInfoProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        "dlib_mmod_pyramid",
        [helper.make_tensor_value_info(FRAMES, TensorProto.UINT8, ["n", height, width, 3])],
        [output],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_pyramid_graph(
    net: MmodNet, height: int, width: int, levels: int, layout: Layout
) -> onnx.ModelProto:
    """uint8 RGB frames (N, height, width, 3) -> dlib's normalised tiled pyramid, the
    network's input (N, 3, rows, cols) float32, as `mmod.tile_levels` builds it after
    `levels` doublings as dlib's pyramid_up does them.

    One graph per frame size, since the layout depends on it; run by ONNX Runtime, it keeps
    the pyramid on the session's device (on a GPU the host built it and copied ~160 MB per
    1280x720 frame at scale 2, most of the frame's time).
    """
    g = _pyramid_nodes(net, height, width, levels, layout, INPUT)
    rows, cols = enlarged_size(height, width, levels)
    _, canvas_rows, canvas_cols = layout(rows, cols, net.padding, net.outer_padding)
    out = helper.make_tensor_value_info(
        INPUT, TensorProto.FLOAT, ["n", 3, canvas_rows, canvas_cols]
    )
    return _model(g, height, width, out)


def build_detector_graph(
    net: MmodNet, height: int, width: int, levels: int, layout: Layout
) -> onnx.ModelProto:
    """uint8 RGB frames (N, height, width, 3) -> the network's score maps: the pyramid graph
    (`build_pyramid_graph`) and the network (`build_mmod_graph`) in one graph, so the
    pyramid never leaves ONNX Runtime."""
    g = _pyramid_nodes(net, height, width, levels, layout, INPUT)
    network = build_mmod_graph(net).graph
    g.nodes += network.node
    g.inits += network.initializer
    return _model(g, height, width, network.output[0])
