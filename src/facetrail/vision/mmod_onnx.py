"""An ONNX graph of dlib's MMOD face detector network, built in memory from its `.dat` file.

The graph takes the tiled image pyramid dlib feeds its network, already normalised,
(N, 3, H, W) float32, and returns the score map (N, windows, h, w). The pyramid itself is
built outside the graph (`mmod.tile_pyramid`), because its layout depends on the image size
and ONNX Runtime then needs only one graph for every size. Batch norms are folded into the
convolutions when the file is read (`mmod_format`).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

from facetrail.vision.mmod_format import MmodNet

OPSET = 17
INPUT = "pyramid"
OUTPUT = "scores"
RESIZE_INPUT = "planes"
RESIZE_SIZES = "sizes"


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

    The pyramid's levels are made by it, one run per level: ONNX Runtime's Resize is about
    ten times faster than the same interpolation in numpy, and one graph serves every size.
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
