"""Winograd convolution from standard ONNX operators, for the descriptor's deep layers.

ONNX Runtime's own convolution already runs near this CPU's peak of multiply-adds
(bench/RESULTS.md), so a 3x3 convolution only gets faster by doing fewer of them. Winograd's
F(m x m, 3 x 3) computes each m x m output tile from an (m + 2) x (m + 2) input tile with
(m + 2)^2 products per channel pair instead of 9 m^2: 2.25x fewer at m = 3, 4x fewer at m = 4.

Expressed with ONNX operators, each transform is a matrix product with a constant matrix, so the
layer is five MatMuls, all of them large enough for ONNX Runtime's GEMM:

    x [H, W, N, C]  -> rows: Bh @ x -> columns: Bw @ . -> per tile position: . @ U (weights)
                    -> columns: Aw @ . -> rows: Ah @ .  -> y [H, W, N, K]

The input and output transforms also do the convolution's zero padding, the cutting into
tiles and the cropping of the last tile, so no Pad, Slice or Concat is needed. Activations stay
in this [H, W, N, C] layout between consecutive Winograd layers. The transforms add memory
passes that only pay off where a convolution has many channels on a small image: on this
network's 128- and 256-channel layers it takes half the time of ONNX Runtime's convolution,
on its 32- and 64-channel layers twice the time, which is why `WINOGRAD_MIN_CHANNELS` exists.
Results stay within a few 1e-6 of the direct convolution (relative to the layer's output).
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

import numpy as np

# Layers with fewer input channels run faster as ONNX Runtime's own convolution.
WINOGRAD_MIN_CHANNELS = 128
# Interpolation points (the point at infinity is implied) for each output tile size. For
# F(4x4, 3x3), 1/2 in place of the textbook 2 keeps the rounding error 2.5x smaller.
POINTS: dict[int, tuple[float, ...]] = {3: (0, 1, -1, 0.5), 4: (0, 1, -1, 0.5, -2)}


class GraphBuilder(Protocol):
    def node(self, op: str, inputs: list[str], shape: tuple[int, int, int] | None) -> str: ...

    def const(self, stem: str, value: np.ndarray) -> str: ...


@cache
def toom_cook(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m, 3): y = A^T ((G g) * (B^T d)) is the correlation of the m + 2
    inputs d with the 3 taps g, for the points in POINTS[m] and infinity."""
    p = np.array(POINTS[m], np.float64)
    a = m + 2
    at, g = np.zeros((m, a)), np.zeros((a, 3))
    for k in range(a - 1):
        f = np.prod([p[k] - p[j] for j in range(a - 1) if j != k])
        at[:, k] = p[k] ** np.arange(m)
        g[k] = p[k] ** np.arange(3) / f
    at[m - 1, a - 1] = g[a - 1, 2] = 1.0
    # B^T is what makes the identity exact: sum_k A^T[i,k] G[k,j] B^T[k,l] is 1 where
    # l = i + j and 0 elsewhere.
    q = np.einsum("ik,kj->ijk", at, g).reshape(m * 3, a)
    want = np.zeros((m * 3, a))
    for i in range(m):
        want[i * 3 + np.arange(3), i + np.arange(3)] = 1.0
    bt = np.linalg.lstsq(q, want, rcond=None)[0]
    bt[np.abs(bt) < 1e-12] = 0.0
    if not np.allclose(q @ bt, want, atol=1e-9):
        raise ArithmeticError(f"no Winograd transform for F({m}, 3) at these points")
    return bt, g, at


def tile_size(height: int, width: int) -> int:
    """The output tile (3 or 4) with the fewest products for an image of this size."""

    def products(m: int) -> int:
        return -(-height // m) * -(-width // m) * (m + 2) ** 2

    return min(POINTS, key=products)


def _input_transform(bt: np.ndarray, tiles: int, size: int) -> np.ndarray:
    """[(i, t), l]: the i-th transformed value of tile t from input row l (pad 1 on each side:
    rows outside the image are zeros and have no column here)."""
    a, m = bt.shape[0], bt.shape[0] - 2
    out = np.zeros((a, tiles, size))
    for t in range(tiles):
        for k in range(a):
            row = t * m + k - 1
            if 0 <= row < size:
                out[:, t, row] = bt[:, k]
    return out.reshape(a * tiles, size)


def _output_transform(at: np.ndarray, tiles: int, size: int) -> np.ndarray:
    """[l, (i, t)]: output row l from the transformed products of tile t (the last tile's rows
    beyond the image are dropped)."""
    m, a = at.shape
    out = np.zeros((size, a, tiles))
    for t in range(tiles):
        for s in range(m):
            if t * m + s < size:
                out[t * m + s, :, t] = at[s]
    return out.reshape(size, a * tiles)


def conv3x3(
    g: GraphBuilder, x: str, weights: np.ndarray, bias: np.ndarray, height: int, width: int
) -> str:
    """A 3x3, stride 1, pad 1 convolution of `x` in [H, W, N, C] layout, `weights` (K, C, 3, 3)
    and `bias` (K,) in float64: its output in [H, W, N, K] layout."""
    k_out, c_in = weights.shape[:2]
    m = tile_size(height, width)
    bt, gt, at = toom_cook(m)
    a = m + 2
    th, tw = -(-height // m), -(-width // m)

    def matmul(left: str, right: str) -> str:
        return g.node("MatMul", [left, right], None)

    def const(stem: str, value: np.ndarray) -> str:
        return g.const(stem, value.astype(np.float32))

    def reshape(t: str, shape: list[int]) -> str:
        return g.node("Reshape", [t, g.const("shape", np.array(shape, np.int64))], None)

    # Each position (i, j) of the transformed tile multiplies channels by its own C x K matrix.
    u = np.einsum("ik,jl,ockl->ijco", gt, gt, weights).reshape(a, 1, a, c_in, k_out)
    rows = matmul(const("wino_bh", _input_transform(bt, th, height)), reshape(x, [height, -1]))
    tiles = matmul(
        const("wino_bw", _input_transform(bt, tw, width)), reshape(rows, [a * th, width, -1])
    )
    products = matmul(reshape(tiles, [a, th, a, -1, c_in]), const("wino_u", u))
    cols = matmul(
        const("wino_aw", _output_transform(at, tw, width)),
        reshape(products, [a * th, a * tw, -1]),
    )
    out = matmul(const("wino_ah", _output_transform(at, th, height)), reshape(cols, [a * th, -1]))
    return g.node("Add", [reshape(out, [height, width, -1, k_out]), const("wino_bias", bias)], None)
