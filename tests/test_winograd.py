"""Winograd convolution (vision.winograd) against a direct convolution in float64."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from facetrail.vision import winograd
from facetrail.vision.resnet_onnx import OPSET, _Graph


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_transforms_compute_a_correlation(m):
    bt, g, at = winograd.toom_cook(m)
    rng = np.random.default_rng(m)
    d, taps = rng.normal(size=m + 2), rng.normal(size=3)
    expected = np.array([d[i : i + 3] @ taps for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), expected, atol=1e-12)


def direct(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3, stride 1, pad 1 convolution of NCHW `x`, in float64."""
    n, _, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            patch = padded[:, :, dy : dy + h, dx : dx + wd]
            out += np.einsum("nchw,kc->nkhw", patch, w[:, :, dy, dx])
    return out


@pytest.mark.parametrize("size", [(3, 3), (4, 4), (5, 7), (8, 8), (9, 4)])
def test_conv3x3_equals_a_direct_convolution(size):
    h, w = size
    rng = np.random.default_rng(h * 10 + w)
    weights = rng.normal(0, (2 / 27) ** 0.5, (5, 3, 3, 3))
    bias = rng.normal(0, 0.1, 5)
    x = np.maximum(rng.normal(size=(2, 3, h, w)), 0)

    g = _Graph()
    g.shapes["x"] = (3, h, w)
    hwnc = g.node("Transpose", ["x"], None, perm=[2, 3, 0, 1])
    conv = winograd.conv3x3(g, hwnc, weights, bias, h, w)
    out = g.node("Transpose", [conv], None, perm=[2, 3, 0, 1])
    g.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        g.nodes,
        "winograd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.astype(np.float32)})[0]
    expected = direct(x, weights, bias)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
