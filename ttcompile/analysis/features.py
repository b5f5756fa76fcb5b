"""Calibration data and per-layer feature capture in ONNX Runtime, batch by batch.

Capture point of a layer (where its activation is read):
    start at the layer's output and, while the current tensor has exactly one consumer, is not a
    graph output, and that consumer is an elementwise op (``FOLLOW_OPS``: activations,
    BatchNormalization, Identity/Dropout, and binary Add/Sub/Mul/Div, a residual Add included), move
    to the consumer's output. So ``Conv -> BN -> Relu`` is read after the Relu, a ResNet block's
    ``Conv -> Add(shortcut) -> Relu`` after the Relu (the block output the next layer reads), and
    ``Gemm -> Softmax`` on the Gemm (Softmax is not elementwise). Two layers may share a point.

Previous point of a layer (the ``acc_{l-1}`` of ``ttcompile.analysis.lwiq``): the nearest capture point,
in breadth-first order, upstream of the layer's data input; the model input when there is none.

Embedding (one fixed-length vector per sample), for an activation ``a``:
    * channels-first maps ``(N, C, *S)`` (Conv outputs, image inputs): adaptive average pooling to
      ``s`` cells per spatial axis, ``s = max(1, round((512 / C) ** (1 / len(S))))`` (``round(sqrt(512 /
      C))`` for 2-D maps), capped at each axis' size; cells as in torch's ``AdaptiveAvgPool``
      (cell ``i`` of ``n`` covers ``[floor(i n / s), ceil((i + 1) n / s))``); flattened to ``C s^2``;
    * fully connected outputs ``(N, F)``: as they are; ``(N, ..., F)`` (MatMul rows): mean over the
      middle axes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir
from tqdm import tqdm

from ttcompile.errors import UserError
from ttcompile.feeds import MAX_BATCH
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, find_node
from ttcompile.protos import declared_shape, graph_inputs
from ttcompile.runtime import make_session

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset

EMBEDDING_TARGET = 512

FOLLOW_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Clip", "Mish", "ThresholdedRelu", "BatchNormalization", "Identity",
    "Dropout", "Add", "Sub", "Mul", "Div",
})

_FLOAT_INPUTS = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


# ---- calibration data ---------------------------------------------------------------------------


@dataclass
class ModelInput:
    """The model's single data input: name, dims (int, or None when dynamic) and numpy dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: type

    @property
    def fixed_batch(self) -> int | None:
        return self.dims[0] if self.dims else None


@dataclass
class Calibration:
    """Inputs ``x`` ``(N, *sample)`` in the model's dtype, labels ``y`` ``(N,)`` int64 or None.

    ``n_classes``: K of an ``(N, K)`` first output, else from the labels; None without either."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    n_classes: int | None
    note: str = ""  # e.g. that samples were reshaped to the model's input


def model_input(proto: onnx.ModelProto) -> ModelInput:
    """The single non-initializer graph input (UserError for zero or several, or a non-float one)."""
    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise UserError(f"calibration feeds one input, the model has {len(inputs)}: "
                        f"{', '.join(i.name for i in inputs)}")
    inp = inputs[0]
    dims = declared_shape(inp) or ()
    elem = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    if np.dtype(elem).kind != "f":
        raise UserError(f"model input {inp.name!r} has dtype {np.dtype(elem)}; calibration data "
                        "(float images/features) can only feed a floating-point input")
    return ModelInput(inp.name, dims, np.dtype(elem).type)


def output_classes(proto: onnx.ModelProto) -> int | None:
    """K when the first graph output is ``(N, K)`` with a static K, else None."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
        return int(dims[1].dim_value)
    return None


def load_calibration(spec: str | Dataset, proto: onnx.ModelProto) -> Calibration:
    """Load ``spec`` (.npz with x and optional y, or any ``load_dataset`` spec) and check it fits the model.

    Samples whose shape differs from the model's input but has the same size are reshaped (noted);
    a different size, labels outside ``[0, K)``, or a class with no sample is a UserError naming ``spec``.
    Without labels, what the proxies classify is decided later (``ttcompile.analysis.targets``).
    """
    from ttcompile.models.data import dataset

    inp, k = model_input(proto), output_classes(proto)
    data = dataset(spec)
    spec, x = spec if isinstance(spec, str) else data.name, data.x
    sample, want = x.shape[1:], inp.dims[1:]
    note = ""
    if len(sample) != len(want) or any(w is not None and w != s for w, s in zip(want, sample)):
        if None in want or math.prod(sample) != math.prod(want):
            raise UserError(f"{spec}: samples have shape {sample}, the model input {inp.name!r} expects "
                            f"{tuple('?' if w is None else w for w in want)}")
        x = x.reshape(len(x), *want)
        note = f"samples reshaped from {sample} to {tuple(want)}"
    y = data.y
    if y is not None:
        if k is None:
            k = int(y.max()) + 1
        bad = (y < 0) | (y >= k)
        if bad.any():
            raise UserError(f"{spec}: {int(bad.sum())} labels outside [0, {k}) (the model has {k} classes), "
                            f"e.g. {int(y[bad][0])}")
        missing = sorted(set(range(k)) - set(np.unique(y).tolist()))
        if missing:
            raise UserError(f"{spec}: no sample of class{'es' if len(missing) > 1 else ''} "
                            f"{', '.join(map(str, missing))}; every one of the {k} classes must be present")
    return Calibration(x.astype(inp.dtype, copy=False), y, spec, k, note)


# ---- capture points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Where one layer's activation is read (see the module docstring)."""

    layer: str
    value: str  # tensor name read (an extra graph output unless it is one already)
    through: tuple[str, ...]  # op types followed after the layer's own node
    nodes: tuple[str, ...]  # names of the layer's node and the nodes followed, in order
    channels_first: bool  # pooled as a conv map (N, C, *S); else as FC features (N, ..., F)
    previous: str | None  # value of the nearest upstream probe; None: the model input


def _is_data(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is None


def _capture_value(node: ir.Node) -> tuple[ir.Value, list[ir.Node]]:
    """The capture point of ``node`` and the nodes from ``node`` to it (``node`` first)."""
    value, chain = node.outputs[0], [node]
    while not value.is_graph_output():
        users = {id(use.node): use.node for use in value.uses()}
        if len(users) != 1:
            break
        (user,) = users.values()
        if user.domain not in ("", "ai.onnx") or user.op_type not in FOLLOW_OPS:
            break
        value = user.outputs[0]
        chain.append(user)
    return value, chain


def _previous(node: ir.Node, points: set[str]) -> str | None:
    """Nearest probe value upstream of ``node``'s data inputs (breadth first), or None."""
    queue = deque(v for v in node.inputs if _is_data(v))
    seen: set[str] = set()
    while queue:
        value = queue.popleft()
        if value.name in seen:
            continue
        seen.add(value.name)
        if value.name in points:
            return value.name
        producer = value.producer()
        if producer is not None:
            queue.extend(v for v in producer.inputs if _is_data(v))
    return None


def find_probes(model: ir.Model, layers: list[Layer]) -> list[Probe]:
    """One probe per layer, in the order of ``layers`` (graph order)."""
    nodes = {layer.name: find_node(model, layer.name) for layer in layers}
    captured = {name: _capture_value(node) for name, node in nodes.items()}
    points = {value.name for value, _ in captured.values()}
    return [
        Probe(layer.name, value.name, tuple(n.op_type for n in chain[1:]), tuple(n.name for n in chain),
              layer.kind == "conv", _previous(nodes[layer.name], points))
        for layer in layers
        for value, chain in [captured[layer.name]]
    ]


def probe_model(model: ir.Model, values: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are its own followed by ``values`` (each once)."""
    proto = to_proto(model)
    have = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(values):
        if name not in have:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    return proto


# ---- pooling ------------------------------------------------------------------------------------


def pool_cells(channels: int, spatial: tuple[int, ...], target: int = EMBEDDING_TARGET) -> tuple[int, ...]:
    """Cells per spatial axis: ``max(1, round((target / C) ** (1 / len(S))))`` capped at each axis."""
    s = max(1, round((target / channels) ** (1 / len(spatial)))) if spatial else 1
    return tuple(min(s, n) for n in spatial)


def pool_matrix(n: int, s: int) -> np.ndarray:
    """``(s, n)`` averaging matrix of torch's adaptive pooling along one axis."""
    m = np.zeros((s, n))
    for i in range(s):
        lo, hi = (i * n) // s, -((-(i + 1) * n) // s)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def embed(a: np.ndarray, channels_first: bool, target: int = EMBEDDING_TARGET) -> np.ndarray:
    """Fixed-length embedding ``(N, D)`` (float64) of an activation batch (see the module docstring).

    Pooling is one matrix product per spatial axis in the activation's own float precision (float32 for
    float16 maps), then float64.
    """
    a = np.asarray(a)
    if a.ndim == 2:
        return a.astype(np.float64)
    if not channels_first:
        return a.reshape(a.shape[0], -1, a.shape[-1]).mean(axis=1, dtype=np.float64)
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    out = a.astype(dtype, copy=False)
    for axis, s in enumerate(pool_cells(a.shape[1], a.shape[2:], target)):
        moved = np.moveaxis(out, 2 + axis, -1)
        out = np.moveaxis(moved @ pool_matrix(a.shape[2 + axis], s).T.astype(dtype), -1, 2 + axis)
    return out.reshape(a.shape[0], -1).astype(np.float64)


# ---- batched runs -------------------------------------------------------------------------------


class BatchRunner:
    """One ORT session over calibration inputs, fed ``batch`` samples at a time (bounded memory)."""

    def __init__(self, model: onnx.ModelProto, inp: ModelInput, outputs: list[str], batch: int = 256):
        if batch < 1:
            raise UserError(f"batch size {batch} must be at least 1")
        if inp.fixed_batch is not None and inp.fixed_batch > MAX_BATCH:
            raise UserError(f"input {inp.name!r} has a fixed batch of {inp.fixed_batch} samples, more than the "
                            f"{MAX_BATCH} a run may take")
        self.session = make_session(model)
        self.input, self.outputs = inp.name, outputs
        self.static = inp.fixed_batch is not None  # a static batch dim takes exactly that many samples
        self.batch = inp.fixed_batch or batch
        self.runs = 0

    def batches(self, x: np.ndarray, indices: np.ndarray, progress: tqdm | None = None
                ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(indices of the batch, {output: array})`` for ``x[indices]`` in order."""
        for start in range(0, len(indices), self.batch):
            idx = indices[start:start + self.batch]
            xb = x[idx]
            pad = self.batch - len(idx) if self.static else 0
            if pad:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            got = self.session.run(self.outputs, {self.input: xb})
            self.runs += 1
            if progress is not None:
                progress.update(1)
            yield idx, {name: arr[:len(idx)] if pad else arr for name, arr in zip(self.outputs, got)}

    def n_batches(self, n: int) -> int:
        return -(-n // self.batch)


def predict(proto: onnx.ModelProto, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Top-1 class ``(N,)`` of the model's first output on ``x``, ``batch`` samples per run."""
    name = proto.graph.output[0].name
    runner = BatchRunner(proto, model_input(proto), [name], batch)
    pred = np.empty(len(x), dtype=np.int64)
    for idx, out in runner.batches(x, np.arange(len(x))):
        pred[idx] = np.argmax(out[name], axis=1)
    return pred
