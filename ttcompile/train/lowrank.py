"""Core-space training: the cores of a Plan's layers are the trained parameters of the dense graph.

For every ``compress`` layer of the plan, ``CoreSpace`` holds the cores as torch Parameters, initialised
by ``fmt.decompose`` of the trained canonical weight (``W (out, in)`` or ``(O, C, *k)``) and rebalanced
to equal Frobenius norms. Through ``OnnxModule.set_transform`` the layer's weight initializer in the
ORIGINAL dense graph becomes ``onnx_layout(reconstruct(cores))``; the dense initializer itself is frozen.
Biases and all other weights train as usual. ``core_map`` lets a regulariser (the ℓ0 gates) rewrite the
cores before they are contracted.

After training, ``export_cores`` emits the (trained) cores with ``apply_plan(..., cores=...)`` into a plain
compressed ONNX model whose biases come from the trained dense graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import tensorly as tl
import torch
from torch import nn

from ttcompile.errors import UserError
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, dense_weight
from ttcompile.passes.base import Format, get_format
from ttcompile.passes.tt import balance_norms
from ttcompile.planning.plan import LayerPlan, Plan
from ttcompile.rewrite.compress import RewriteResult, apply_plan
from ttcompile.train.executor import OnnxModule
from ttcompile.train.hooks import TrainHook

RANK_AXES = ("tt", "tr")  # formats whose cores are (left bond, ..., right bond) chains or rings
Array = np.ndarray | torch.Tensor
CoreMap = Callable[[str, list[torch.Tensor]], list[torch.Tensor]]


def onnx_layout(layer: Layer, w: Array) -> Array:
    """Canonical weight -> the initializer ONNX stores: Gemm ``W / alpha`` (transposed when transB=0),
    MatMul ``W^T`` (in, out), Conv as is. Works on numpy arrays and torch tensors."""
    if layer.kind == "gemm":
        w = (w if layer.attrs["transB"] else w.T) / layer.attrs["alpha"]
    elif layer.kind == "matmul":
        w = w.T
    return w


def canonical_layout(layer: Layer, w: Array) -> Array:
    """Inverse of ``onnx_layout``."""
    if layer.kind == "gemm":
        w = (w if layer.attrs["transB"] else w.T) * layer.attrs["alpha"]
    elif layer.kind == "matmul":
        w = w.T
    return w


def core_ranks(format_name: str, right: list[int]) -> list[int]:
    """The plan's rank list from the right-bond sizes of the cores: TR ``right`` itself (d entries, bond k
    joins core k to core k+1), TT ``[1, *right]`` (``[1, r_1, .., r_{d-1}, 1]``)."""
    return [1, *right] if format_name == "tt" else right


def compressed_layers(plan: Plan) -> list[LayerPlan]:
    return [lp for lp in plan.layers if lp.action == "compress"]


def reconstruct_torch(fmt: Format, cores: list[torch.Tensor], layer: Layer, modes: dict) -> torch.Tensor:
    """``fmt.reconstruct`` on torch tensors (tensorly's pytorch backend), keeping gradients."""
    with tl.backend_context("pytorch"):
        return fmt.reconstruct(list(cores), layer, modes)


def smallest_options(fmt: Format, layer: Layer, modes: dict, ranks: list[int]) -> dict:
    """The realization storing the fewest parameters (fastest among equals), for parameter budgets;
    ``fmt.realize`` may trade up to 1.5x the parameters for speed."""
    candidates = fmt.options(layer, modes)  # the realizations realize() chooses from
    costs = [fmt.cost(layer, modes, ranks, o) for o in candidates]
    return candidates[min(range(len(costs)), key=lambda i: (costs[i].params, costs[i].speed_score))]


def replan(lp: LayerPlan, ranks: list[int], smallest: bool = False) -> LayerPlan:
    """Copy of ``lp`` at new ``ranks``, realized and costed again (always ``compress``)."""
    fmt = get_format(lp.format)
    options = smallest_options(fmt, lp.layer, lp.modes, ranks) if smallest else fmt.realize(lp.layer, lp.modes, ranks)
    cost = fmt.cost(lp.layer, lp.modes, ranks, options)
    return LayerPlan(lp.layer, "compress", lp.format, lp.modes, list(ranks), options, cost.params, cost.macs,
                     score=lp.score)


class CoreSpace(nn.Module, TrainHook):
    """Cores of every compressed layer of ``plan`` as Parameters, decomposed from ``model``'s weights or
    taken from ``cores`` (layer name -> cores, e.g. pruned ones at the plan's ranks)."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, cores: dict[str, list[np.ndarray]] | None = None,
                 balance: bool = True):
        super().__init__()
        for lp in compressed_layers(plan):
            if lp.format not in RANK_AXES:
                raise UserError(f"core-space training supports {', '.join(RANK_AXES)} layers, "
                                f"{lp.name} is {lp.format}")
        ir_model = ir.from_proto(model)
        self.plans = {lp.name: lp for lp in compressed_layers(plan)}
        self.cores = nn.ModuleDict()
        self._keys = {name: f"l{i}" for i, name in enumerate(self.plans)}
        for name, lp in self.plans.items():
            if cores is not None and name in cores:
                init = cores[name]
            else:
                init = get_format(lp.format).decompose(dense_weight(ir_model, lp.layer)[0], lp.layer, lp.modes,
                                                       lp.ranks)
            init = balance_norms(init) if balance else init
            self.cores[self.key(name)] = nn.ParameterList(
                nn.Parameter(torch.tensor(np.asarray(c), dtype=torch.float32)) for c in init)
        self.core_map: CoreMap | None = None

    def key(self, name: str) -> str:
        """Short key of layer ``name`` (torch names cannot hold dots)."""
        return self._keys[name]

    def layer_cores(self, name: str) -> list[torch.Tensor]:
        """The cores of layer ``name`` as trained (before ``core_map``)."""
        return list(self.cores[self.key(name)])

    def effective_cores(self, name: str) -> list[torch.Tensor]:
        """The cores the graph uses: ``core_map`` applied (e.g. gated)."""
        cores = self.layer_cores(name)
        return cores if self.core_map is None else self.core_map(name, cores)

    def dense(self, name: str) -> torch.Tensor:
        """Layer ``name``'s weight in ONNX layout, rebuilt from the effective cores."""
        lp = self.plans[name]
        w = reconstruct_torch(get_format(lp.format), self.effective_cores(name), lp.layer, lp.modes)
        return onnx_layout(lp.layer, w)

    def attach(self, module: OnnxModule) -> None:
        for name, lp in self.plans.items():
            module.parameter(lp.layer.weight).requires_grad_(False)
            module.set_transform(lp.layer.weight, lambda _, name=name: self.dense(name))

    def numpy_cores(self) -> dict[str, list[np.ndarray]]:
        """Every layer's trained cores (before ``core_map``) as float64 arrays."""
        return {name: [c.detach().double().numpy() for c in self.layer_cores(name)] for name in self.plans}


def plan_for_cores(plan: Plan, cores: dict[str, list[np.ndarray]], smallest: bool = False) -> Plan:
    """``plan`` with every layer in ``cores`` re-planned at the ranks read off its cores."""
    layers = [lp if lp.name not in cores else
              replan(lp, core_ranks(lp.format, [int(c.shape[-1]) for c in cores[lp.name]]), smallest)
              for lp in plan.layers]
    return Plan(plan.model, plan.model_sha256, dict(plan.settings), layers)


def export_cores(trained: onnx.ModelProto, plan: Plan, cores: dict[str, list[np.ndarray]],
                 smallest: bool = False) -> tuple[onnx.ModelProto, Plan, list[RewriteResult]]:
    """Plain compressed model of ``trained`` (the dense graph after core-space training: its weights are
    ``reconstruct(cores)``, its biases trained) with ``cores`` emitted as given; ranks are read off the
    cores, so pruned cores give a smaller model. Returns (model, plan with the emitted ranks, results)."""
    out_plan = plan_for_cores(plan, cores, smallest)
    model = ir.from_proto(trained)
    results = apply_plan(model, out_plan, progress=False, cores=cores)
    return to_proto(model), out_plan, results
