"""Reader for dlib's serialised DNN files (`*.dat` written by `dlib::serialize(net)`).

dlib writes a network as a stream of self-describing layer records (`con_4`, `affine_`, ...),
each preceded by its name, with the wrappers' bookkeeping (versions, booleans, empty gradient
tensors) between them and no ids for tag/skip layers. We therefore walk the stream from one
layer name to the next, parse each record's fields exactly, and insist that what lies between
two records is small bookkeeping: anything else means the file is not what we think it is.

Records come out in the order dlib writes them, input layer first, which for the networks we
read (the face descriptor ResNet, the MMOD detector) is the order of computation. Batch-norm
records (`bn_con2`, in the MMOD detector's file) come out with affine params, as dlib converts
them when it loads the file for inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facetrail.errors import ModelError

# Layer names this reader understands, and nothing else: an unknown layer must fail loudly.
_LAYER_NAMES = (
    "input_rgb_image_sized",
    "input_rgb_image_pyramid",
    "input_rgb_image_pyramid2",
    "con_4",
    "con_5",
    "affine_",
    "bn_con2",
    "relu_",
    "add_prev_",
    "avg_pool_2",
    "max_pool_2",
    "fc_2",
)
# The wrappers between two records carry a few ints, booleans and empty tensors; a few
# hundred bytes at most. A larger gap would mean we skipped real data.
_MAX_GAP = 4096


@dataclass
class Layer:
    """One layer record: its dlib name and the fields this project uses."""

    kind: str
    offset: int
    ints: dict[str, int] = field(default_factory=dict)
    floats: dict[str, float] = field(default_factory=dict)
    params: np.ndarray | None = None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            raise ModelError("model file ends in the middle of a record")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def integer(self) -> int:
        header = self._byte()
        size = header & 0x0F
        if size > 8:
            raise ModelError(f"bad integer header at byte {self.pos - 1}")
        raw = self.data[self.pos : self.pos + size]
        if len(raw) != size:
            raise ModelError("model file ends in the middle of an integer")
        self.pos += size
        value = int.from_bytes(raw, "little") if size else 0
        return -value if header & 0x80 else value

    def string(self) -> str:
        length = self.integer()
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("ascii", errors="replace")

    def double(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0**exponent

    def boolean(self) -> bool:
        value = self._byte()
        if value not in (ord("0"), ord("1")):
            raise ModelError(f"bad boolean at byte {self.pos - 1}")
        return value == ord("1")

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise ModelError(f"unsupported tensor version {version}")
        n, k, nr, nc = (self.integer() for _ in range(4))
        count = n * k * nr * nc
        end = self.pos + 4 * count
        if min(n, k, nr, nc) < 0 or end > len(self.data):
            raise ModelError("tensor runs past the end of the model file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos = end
        return values.astype(np.float32).reshape(n, k, nr, nc)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.integer()
        if version != 1:
            raise ModelError(f"unsupported alias_tensor version {version}")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]


class _Markers:
    """Finds the next layer record; remembers each name's next hit so the file is scanned once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.next_at: dict[str, int | None] = {name: -1 for name in _LAYER_NAMES}

    def after(self, start: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for name, at in self.next_at.items():
            if at is None:
                continue  # no more records of this kind
            if at < start:
                found = self.data.find(bytes([0x01, len(name)]) + name.encode(), start)
                at = self.next_at[name] = found if found >= 0 else None
                if at is None:
                    continue
            if best is None or at < best[0]:
                best = (at, name)
        return best


def _bn_as_affine(r: _Reader) -> tuple[np.ndarray, float]:
    """Read a batch-norm record (`bn_con2`) and return it as an affine layer's params.

    dlib saves its training network with batch normalisation and, when it loads such a file
    into an inference network, turns each `bn_con` into an `affine_` from the running
    statistics: gamma' = gamma / sqrt(var + eps), beta' = beta - gamma' * mean. We do the same
    here, so callers see one kind of params (gamma' then beta') for both record kinds.
    """
    params = r.tensor().reshape(-1)
    r.alias()  # gamma
    r.alias()  # beta
    r.tensor()  # means of the last training batch
    r.tensor()  # their inverse standard deviations
    running_means = r.tensor().reshape(-1).astype(np.float64)
    running_vars = r.tensor().reshape(-1).astype(np.float64)
    r.integer()  # num_updates
    r.integer()  # running_stats_window_size
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.double()
    eps = r.double()
    k = running_means.size
    if params.size != 2 * k or running_vars.size != k or not eps > 0:
        raise ModelError("batch-norm record with inconsistent sizes")
    gamma = params[:k].astype(np.float64) / np.sqrt(running_vars + eps)
    beta = params[k:].astype(np.float64) - gamma * running_means
    return np.concatenate([gamma, beta]).astype(np.float32), eps


def _parse_record(reader: _Reader, name: str) -> Layer:
    layer = Layer(kind=name, offset=reader.pos)
    r = reader
    if name == "input_rgb_image_sized":
        layer.floats = {"mean_r": r.double(), "mean_g": r.double(), "mean_b": r.double()}
        layer.ints = {"nr": r.integer(), "nc": r.integer()}
    elif name in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        layer.floats = {"mean_r": r.double(), "mean_g": r.double(), "mean_b": r.double()}
        # The first version stored no paddings; dlib then uses 10 between pyramid levels and
        # 11 around the tiled image.
        if name.endswith("2"):
            layer.ints = {"padding": r.integer(), "outer_padding": r.integer()}
        else:
            layer.ints = {"padding": 10, "outer_padding": 11}
    elif name in ("con_4", "con_5"):
        layer.params = r.tensor().reshape(-1)
        keys = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        layer.ints = {key: r.integer() for key in keys}
        filters = r.alias()
        r.alias()  # biases
        layer.ints["k"] = filters[1]
        for key in ("lr", "wd", "bias_lr", "bias_wd"):
            layer.floats[key] = r.double()
        if name == "con_5":
            layer.ints["use_bias"] = int(r.boolean())
    elif name == "affine_":
        layer.params = r.tensor().reshape(-1)
        r.alias()
        r.alias()
        layer.ints = {"mode": r.integer()}
    elif name == "bn_con2":
        layer.params, eps = _bn_as_affine(r)
        layer.floats = {"eps": eps}
    elif name in ("avg_pool_2", "max_pool_2"):
        keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        layer.ints = {key: r.integer() for key in keys}
    elif name == "fc_2":
        layer.ints = {"num_outputs": r.integer(), "num_inputs": r.integer()}
        layer.params = r.tensor().reshape(-1)
        r.alias()
        r.alias()
        layer.ints["bias_mode"] = r.integer()
        for key in ("lr", "wd", "bias_lr", "bias_wd"):
            layer.floats[key] = r.double()
    elif name in ("relu_", "add_prev_"):
        pass
    else:  # pragma: no cover - _LAYER_NAMES and this switch move together
        raise ModelError(f"unsupported layer {name}")
    return layer


def read_layers(data: bytes, expect_head: str) -> list[Layer]:
    """Parse every layer record of a dlib DNN file, input first.

    `expect_head` is the loss layer's name that must open the file (`loss_metric_2`,
    `loss_mmod_`), so that a file of the wrong kind is refused before anything else.
    """
    reader = _Reader(data)
    reader.integer()  # loss layer version
    head = reader.string()
    if head != expect_head:
        # A file of another kind yields a "name" of any length: show only its start.
        raise ModelError(f"expected a {expect_head} network, found {head[:40]!r}")
    layers: list[Layer] = []
    markers = _Markers(data)
    while True:
        found = markers.after(reader.pos)
        if found is None:
            break
        at, name = found
        # Before the first record lie the loss layer's fields and the nested wrappers'
        # version numbers, one short integer per layer; a bound on that prefix keeps the
        # "nothing real skipped" promise without parsing the loss layer itself.
        limit = _MAX_GAP if layers else 64 * 1024
        if at - reader.pos > limit:
            raise ModelError(f"unexpected {at - reader.pos} bytes before {name} record")
        reader.pos = at + 2 + len(name)
        layers.append(_parse_record(reader, name))
    if not layers:
        raise ModelError("no layer records found in model file")
    return layers
