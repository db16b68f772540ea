"""Build an ONNX graph of dlib's face-descriptor ResNet from its own `.dat` file.

dlib runs this network at about 150 ms a face on one core without BLAS; ONNX Runtime runs
the same weights batched an order of magnitude faster, on a CPU or a GPU. The graph is built
from the records that `dlib_format` reads, following the topology of dlib's
`dnn_face_recognition_ex.cpp`:

    input -> con 7x7/2 -> affine -> relu -> max_pool 3x3/2
          -> residual blocks (con, affine, relu, con, affine, [avg_pool shortcut], add_prev, relu)
          -> global avg_pool -> fc 256->128 (no bias)

The graph takes uint8 RGB chips (N, 150, 150, 3) and does dlib's input normalisation itself,
so callers hand it what the aligner produces. Affine layers (dlib's folded batch norm) are
folded into the convolution before them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facetrail.errors import ModelError
from facetrail.vision import winograd
from facetrail.vision.dlib_format import Layer, read_layers

# Bump when the graph this module builds changes, so cached graphs are rebuilt.
BUILDER_VERSION = 1
# Between Winograd layers activations are [H, W, N, C]; everywhere else [N, C, H, W]. The same
# permutation converts either way.
HWNC, NCHW = "HWNC", "NCHW"
_SWAP_LAYOUT = [2, 3, 0, 1]
OPSET = 17
# Slice's starts, ends, axes and steps that reverse the width axis of NHWC chips.
_MIRROR_SLICE = (("start", -1), ("end", np.iinfo(np.int64).min), ("axis", 2), ("step", -1))


class _Graph:
    """Accumulates nodes and initialisers while tracking each tensor's static (C, H, W)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.hwnc: set[str] = set()  # tensors in [H, W, N, C] layout
        self._converted: dict[str, str] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, int, int] | None, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        if shape is not None:
            self.shapes[out] = shape
        return out

    def same_layout(self, op: str, inputs: list[str], shape: tuple[int, int, int], **attrs) -> str:
        """An element-wise node, its output in the layout of its first input."""
        out = self.node(op, inputs, shape, **attrs)
        if inputs[0] in self.hwnc:
            self.hwnc.add(out)
        return out

    def layout(self, x: str, layout: str) -> str:
        """`x` in `layout`, transposed once however often it is asked for."""
        if (x in self.hwnc) == (layout == HWNC):
            return x
        if x not in self._converted:
            out = self.node("Transpose", [x], self.shapes[x], perm=_SWAP_LAYOUT)
            if layout == HWNC:
                self.hwnc.add(out)
            self._converted[x] = out
        return self._converted[x]


def _out_size(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


def _conv(g: _Graph, x: str, layer: Layer, affine: Layer | None, fast: bool) -> str:
    """The convolution and the affine layer after it; `fast`: by Winograd where that is faster
    on a CPU (many channels, stride 1; see `winograd`)."""
    i = layer.ints
    f, k, nr, nc = i["num_filters"], i["k"], i["nr"], i["nc"]
    count = f * k * nr * nc
    weights = layer.params[:count].reshape(f, k, nr, nc).astype(np.float64)
    bias = layer.params[count : count + f].astype(np.float64)
    if bias.size != f:
        bias = np.zeros(f)
    if affine is not None:
        gamma, beta = (
            affine.params[:f].astype(np.float64),
            affine.params[f : 2 * f].astype(np.float64),
        )
        weights = weights * gamma[:, None, None, None]
        bias = bias * gamma + beta
    _, h, w = g.shapes[x]
    shape = (
        f,
        _out_size(h, nr, i["stride_y"], i["padding_y"]),
        _out_size(w, nc, i["stride_x"], i["padding_x"]),
    )
    strides, pads = (i["stride_y"], i["stride_x"]), (i["padding_y"], i["padding_x"])
    if (
        fast
        and (nr, nc, *strides, *pads) == (3, 3, 1, 1, 1, 1)
        and k >= winograd.WINOGRAD_MIN_CHANNELS
        and min(h, w) >= 3  # on smaller images most of the taps fall on the padding
    ):
        out = winograd.conv3x3(g, g.layout(x, HWNC), weights, bias, h, w)
        g.shapes[out] = shape
        g.hwnc.add(out)
        return out
    return g.node(
        "Conv",
        [
            g.layout(x, NCHW),
            g.const("w", weights.astype(np.float32)),
            g.const("b", bias.astype(np.float32)),
        ],
        shape,
        kernel_shape=[nr, nc],
        strides=list(strides),
        pads=[*pads, *pads],
    )


def _pool(g: _Graph, x: str, layer: Layer) -> str:
    i = layer.ints
    x = g.layout(x, NCHW)
    c, h, w = g.shapes[x]
    if i["nr"] == 0 and i["nc"] == 0:  # dlib's avg_pool_everything
        return g.node("GlobalAveragePool", [x], (c, 1, 1))
    shape = (
        c,
        _out_size(h, i["nr"], i["stride_y"], i["padding_y"]),
        _out_size(w, i["nc"], i["stride_x"], i["padding_x"]),
    )
    op = "MaxPool" if layer.kind == "max_pool_2" else "AveragePool"
    return g.node(
        op,
        [x],
        shape,
        kernel_shape=[i["nr"], i["nc"]],
        strides=[i["stride_y"], i["stride_x"]],
        pads=[i["padding_y"], i["padding_x"], i["padding_y"], i["padding_x"]],
    )


def _pad_to(g: _Graph, x: str, shape: tuple[int, int, int]) -> str:
    """dlib's add_prev zero-pads the smaller operand at the end of C, H and W."""
    have = g.shapes[x]
    if have == shape:
        return x
    dc, dh, dw = (shape[0] - have[0], shape[1] - have[1], shape[2] - have[2])
    extra = [dh, dw, 0, dc] if x in g.hwnc else [0, dc, dh, dw]
    pads = np.array([0, 0, 0, 0, *extra], dtype=np.int64)
    return g.same_layout("Pad", [x, g.const("pads", pads)], shape, mode="constant")


def _add(g: _Graph, a: str, b: str) -> str:
    shape = tuple(max(p, q) for p, q in zip(g.shapes[a], g.shapes[b], strict=True))
    b = g.layout(b, HWNC if a in g.hwnc else NCHW)
    return g.same_layout("Add", [_pad_to(g, a, shape), _pad_to(g, b, shape)], shape)


def build_resnet_graph(
    dat_bytes: bytes, mirror: bool = False, fast: bool = False
) -> onnx.ModelProto:
    """Translate `dlib_face_recognition_resnet_model_v1.dat` into an ONNX model.

    `mirror`: the model describes each chip and its mirror image and outputs the mean of the
    two (flip averaging) inside the graph, so that on a GPU the mirroring costs no host copy.
    `fast`: the deep layers by Winograd (`winograd`): faster on a CPU, slower on a GPU, whose
    own convolutions already are.
    """
    layers = read_layers(dat_bytes, expect_head="loss_metric_2")
    if layers[0].kind != "input_rgb_image_sized":
        raise ModelError("descriptor model does not start with a sized RGB input layer")
    inp = layers[0]
    size = inp.ints["nr"]
    g = _Graph()
    mean = np.array([inp.floats["mean_r"], inp.floats["mean_g"], inp.floats["mean_b"]], np.float32)
    x = "chips"
    if mirror:  # chips, then the same chips mirrored left to right
        steps = [g.const(stem, np.array([v], np.int64)) for stem, v in _MIRROR_SLICE]
        x = g.node("Concat", [x, g.node("Slice", [x, *steps], None)], None, axis=0)
    x = g.node("Cast", [x], None, to=TensorProto.FLOAT)
    x = g.node("Transpose", [x], None, perm=[0, 3, 1, 2])
    x = g.node("Sub", [x, g.const("mean", mean.reshape(1, 3, 1, 1))], None)
    x = g.node("Mul", [x, g.const("scale", np.array(1 / 256, np.float32))], (3, size, size))

    block_input = x  # the tensor a residual block's shortcut starts from
    shortcut: str | None = None
    previous = ""
    rest = layers[1:]
    index = 0
    while index < len(rest):
        layer = rest[index]
        kind = layer.kind
        if kind in ("con_4", "con_5"):
            nxt = rest[index + 1] if index + 1 < len(rest) else None
            affine = nxt if nxt is not None and nxt.kind == "affine_" else None
            x = _conv(g, x, layer, affine, fast)
            index += 2 if affine is not None else 1
            previous = "affine_" if affine is not None else kind
            continue
        if kind == "affine_":
            raise ModelError("affine layer not preceded by a convolution")
        if kind == "relu_":
            x = g.same_layout("Relu", [x], g.shapes[x])
            if previous in ("add_prev_", "max_pool_2"):
                block_input = x
        elif kind == "max_pool_2":
            x = _pool(g, x, layer)
            block_input = x
        elif kind == "avg_pool_2" and layer.ints["nr"] != 0:
            # A downsampling block's shortcut: pool the block's input, not the main path.
            shortcut = _pool(g, block_input, layer)
        elif kind == "avg_pool_2":
            x = _pool(g, x, layer)
        elif kind == "add_prev_":
            x = _add(g, x, shortcut if shortcut is not None else block_input)
            shortcut = None
        elif kind == "fc_2":
            n_in, n_out = layer.ints["num_inputs"], layer.ints["num_outputs"]
            if g.shapes[x][0] != n_in:
                raise ModelError("fc layer does not match the features before it")
            params = layer.params
            weights = params[: n_in * n_out].reshape(n_in, n_out)
            x = g.node("Flatten", [x], None, axis=1)
            x = g.node("MatMul", [x, g.const("fc", weights)], None)
            if params.size == (n_in + 1) * n_out:
                x = g.node("Add", [x, g.const("fc_bias", params[n_in * n_out :])], None)
        else:
            raise ModelError(f"unexpected layer {kind} in descriptor model")
        previous = kind
        index += 1

    n_out = rest[-1].ints.get("num_outputs", 0) if rest and rest[-1].kind == "fc_2" else 0
    if not n_out:
        raise ModelError("descriptor model does not end with a fully connected layer")
    if mirror:  # (2n, d) -> (2, n, d) -> the mean of each chip's two descriptors
        x = g.node("Reshape", [x, g.const("halves", np.array([2, -1, n_out], np.int64))], None)
        x = g.node("ReduceMean", [x], None, axes=[0], keepdims=0)
    # A stable output name, so callers and tests can ask for it.
    g.nodes.append(helper.make_node("Identity", [x], ["descriptors"]))
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["n", size, size, 3])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["n", n_out])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
