"""What every decomposition format provides, and the graph-building helpers they share.

A format turns one canonical dense weight (see ``ttcompile.layers``) into cores and
emits a chain of standard ONNX ops computing the same layer. Formats register by name
(``@register``) so the planner and CLI look them up without if-ladders.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_ir as ir

from ttcompile.layers import Layer

# A node costs about as much as this many MACs (0.3-0.5 us per node against ~45 GMAC/s
# per core, amortised over a batch of 8); used only to choose between realizations.
NODE_COST_MACS = 2500
# A merged realization may store at most this many times the parameters of the plain chain.
MERGE_PARAM_SLACK = 1.5


@dataclass(frozen=True)
class Cost:
    """Parameters (stored weights incl. bias) and per-sample MACs of one realization."""

    params: int
    macs: int
    nodes: int = 0

    @property
    def speed_score(self) -> int:
        """Lower is faster: MACs plus a per-node overhead (see NODE_COST_MACS)."""
        return self.macs + NODE_COST_MACS * self.nodes


class Format(ABC):
    """One decomposition format. ``modes`` and ``options`` are JSON-able dicts; ``ranks`` a list."""

    name: str = ""
    kinds: tuple[str, ...] = ("gemm", "matmul", "conv")

    def supports(self, layer: Layer) -> str | None:
        """None when this format can rewrite ``layer``, else the reason it cannot."""
        if layer.kind not in self.kinds:
            return f"{self.name} does not handle {layer.kind} layers"
        return None

    @abstractmethod
    def default_modes(self, layer: Layer) -> dict:
        """Automatic factorisation of the layer's dimensions."""

    @abstractmethod
    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        """Largest useful value of every rank (what the decomposition can realise)."""

    def uniform_ranks(self, layer: Layer, modes: dict, rank: int) -> list[int]:
        """Every rank set to ``rank``, clipped to its cap (boundary ranks stay fixed)."""
        return [min(rank, cap) if cap > 1 else cap for cap in self.max_ranks(layer, modes)]

    def snap_ranks(self, layer: Layer, modes: dict, ranks: list[int]) -> list[int]:
        """Nearest valid ranks to ``ranks`` (e.g. scaled from the caps); every rank is valid by default."""
        return list(ranks)

    def validate_ranks(self, layer: Layer, modes: dict, ranks: list[int]) -> None:
        caps = self.max_ranks(layer, modes)
        if len(ranks) != len(caps):
            raise ValueError(f"{self.name} ranks for {layer.name} need {len(caps)} entries, got {len(ranks)}")
        for i, (r, cap) in enumerate(zip(ranks, caps)):
            if not 1 <= r <= cap:
                raise ValueError(f"{self.name} rank {i} of {layer.name} is {r}, must be in [1, {cap}]")

    def options(self, layer: Layer, modes: dict) -> list[dict]:
        """Candidate realizations ``realize`` chooses from, the plain (unmerged) chain first."""
        return [{}]

    def realize(self, layer: Layer, modes: dict, ranks: list[int]) -> dict:
        """Choose how to lay the chain out (direction, merged cores) from the cost model."""
        return {}

    @abstractmethod
    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        """Params and per-sample MACs of the emitted chain (``options=None``: the realized one)."""

    @abstractmethod
    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        """Cores initialised from the canonical dense weight."""

    @abstractmethod
    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        """Canonical dense weight represented by ``cores``."""

    @abstractmethod
    def emit(
        self,
        b: ChainBuilder,
        x: ir.Value,
        cores: list[np.ndarray],
        layer: Layer,
        modes: dict,
        options: dict,
    ) -> ir.Value:
        """Append the chain computing ``x -> layer(x)`` without bias; return its output."""


FORMATS: dict[str, Format] = {}


def cheapest_option(fmt: Format, layer: Layer, modes: dict, ranks: list[int], candidates: list[dict]) -> dict:
    """Fastest candidate realization (``Cost.speed_score``) storing at most MERGE_PARAM_SLACK times the
    parameters of ``candidates[0]``, the plain chain."""
    costs = [fmt.cost(layer, modes, ranks, o) for o in candidates]
    plain = costs[0].params
    allowed = [(c.speed_score, c.params, i) for i, c in enumerate(costs) if c.params <= MERGE_PARAM_SLACK * plain]
    return candidates[min(allowed)[2]]


def register(cls: type[Format]) -> type[Format]:
    FORMATS[cls.name] = cls()
    return cls


def get_format(name: str) -> Format:
    import ttcompile.passes  # noqa: F401  (registers the built-in formats)

    if name not in FORMATS:
        raise KeyError(name)
    return FORMATS[name]


class ChainBuilder:
    """Collects new nodes and initializers for one rewritten layer, named ``<prefix>/<tag>``."""

    def __init__(self, graph: ir.Graph, prefix: str, dtype: np.dtype = np.float32):
        self.graph, self.prefix, self.dtype = graph, prefix, np.dtype(dtype)
        self.nodes: list[ir.Node] = []
        self._count = 0

    def _name(self, tag: str) -> str:
        self._count += 1
        return f"{self.prefix}/{tag}_{self._count}"

    def _const(self, array: np.ndarray, tag: str) -> ir.Value:
        value = ir.Value(name=self._name(tag), const_value=ir.tensor(array))
        value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
        self.graph.register_initializer(value)
        return value

    def weight(self, array: np.ndarray, tag: str = "core") -> ir.Value:
        return self._const(np.ascontiguousarray(array, dtype=self.dtype), tag)

    def ints(self, values, tag: str = "shape") -> ir.Value:
        return self._const(np.asarray(values, dtype=np.int64), tag)

    def op(self, op_type: str, inputs: list[ir.Value | None], tag: str | None = None, **attrs) -> ir.Value:
        name = self._name(tag or op_type.lower())
        node = ir.node(op_type, inputs, attributes=attrs or None, name=name)
        node.outputs[0].name = f"{name}_out"
        self.nodes.append(node)
        return node.outputs[0]

    def reshape(self, x: ir.Value, shape: list[int]) -> ir.Value:
        return self.op("Reshape", [x, self.ints(shape)])

    def matmul(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.op("MatMul", [a, b])

    def conv1x1(self, x: ir.Value, matrix: np.ndarray, nd: int) -> ir.Value:
        """Pointwise conv with ``matrix`` of shape (out_channels, in_channels)."""
        w = self.weight(matrix.reshape(*matrix.shape, *([1] * nd)), "pw")
        return self.op("Conv", [x, w], kernel_shape=[1] * nd)


# ---- shared FC plumbing: x (..., in) -> chain -> (..., out) -------------------------------------


def fc_input(b: ChainBuilder, x: ir.Value, layer: Layer) -> ir.Value:
    """The activation as rows of ``in`` features (Gemm's transA handled here)."""
    if layer.kind == "gemm" and layer.attrs.get("transA"):
        return b.op("Transpose", [x], perm=[1, 0])
    return x


def fc_output(b: ChainBuilder, y: ir.Value, x: ir.Value, layer: Layer) -> ir.Value:
    """Reshape the chain's output (any (rows, ...) layout) back to ``x``'s leading dims + (out,)."""
    rank = 2 if layer.kind == "gemm" else layer.attrs.get("input_rank")
    if rank == 2:
        return b.reshape(y, [-1, layer.out_features])
    if rank == 1:
        return b.reshape(y, [layer.out_features])
    lead = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([-1])])
    return b.op("Reshape", [y, b.op("Concat", [lead, b.ints([layer.out_features])], axis=0)])


def fc_nodes_outside_chain(layer: Layer) -> int:
    """Nodes added around every FC chain by fc_input/fc_output (before bias)."""
    transpose = 1 if layer.kind == "gemm" and layer.attrs.get("transA") else 0
    rank = 2 if layer.kind == "gemm" else layer.attrs.get("input_rank")
    return transpose + (1 if rank in (1, 2) else 5)


def spatial(layer: Layer) -> tuple[int, int]:
    """(input positions, output positions) of a conv per sample; (rows, rows) for FC."""
    if layer.kind != "conv":
        return layer.rows, layer.rows
    if layer.in_spatial is None or layer.out_spatial is None:
        return 0, 0
    return prod(layer.in_spatial), prod(layer.out_spatial)


def spatial_conv_attrs(layer: Layer) -> dict:
    """Stride/pad/dilation attributes of the original conv, for the one spatial node of a chain."""
    a = layer.attrs
    attrs = {"kernel_shape": list(layer.kernel), "strides": a["strides"], "dilations": a["dilations"]}
    if a["auto_pad"] not in ("NOTSET", ""):
        attrs["auto_pad"] = a["auto_pad"]
    else:
        attrs["pads"] = a["pads"]
    return attrs


def bias_cost(layer: Layer) -> int:
    return layer.out_features if layer.has_bias and layer.attrs.get("bias_vector", True) else 0


def finish_cost(layer: Layer, params: int, macs: int, nodes: int) -> Cost:
    """Add what every chain carries besides its cores: FC reshapes/transpose and the bias Add."""
    extra_nodes = fc_nodes_outside_chain(layer) if layer.kind != "conv" else 0
    has_add = layer.has_bias
    return Cost(params + bias_cost(layer) + _gemm_c_params(layer), macs, nodes + extra_nodes + has_add)


def _gemm_c_params(layer: Layer) -> int:
    """Gemm's C when it is not a bias vector: re-added as ``beta * C`` (a constant), or as ``C * beta``
    with a scalar ``beta`` initializer when C is a graph value."""
    a = layer.attrs
    if layer.kind != "gemm" or not layer.has_bias or a.get("bias_vector", True):
        return 0
    return a["c_size"] if "c_size" in a else int(a["beta"] != 1.0)
