"""``--format auto --allocator datafree``: CP or Tucker-2 per layer, chosen on the datafree composite loss.

As in the unified-framework seed, each layer may take either decomposition (on Gemm/MatMul both are
the two-factor SVD form). Per budget (our formulation, see ``ttcompile.planning.datafree``): every layer gets
one error/cost model per candidate format (``MIX_FORMATS``); at knob t each layer's format is the one
whose optimum (``datafree.optimise``) has the lower objective ``t E + sum_m C_m / base_m``, ties to the
first of ``MIX_FORMATS``. t is bisected on the *relaxed* sizes (multilinear plain-chain cost of those
optima) to the budget's targets; that fixes the format of every layer, and ``budget.solve`` then meets
the budget exactly with the datafree family in those formats (``MixedPlanner``: a ``Planner`` whose
format is chosen per layer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ttcompile.errors import OptionError, opt
from ttcompile.layers import Layer, dense_weight
from ttcompile.passes.base import Format, get_format
from ttcompile.planning import datafree
from ttcompile.planning.allocators import Context, Search
from ttcompile.planning.budget import Budget
from ttcompile.planning.plan import LayerPlan
from ttcompile.planning.planner import Planner

MIX_FORMATS = ("tucker", "cp")


class ByLayer(Format):
    """A format that delegates every call to the format chosen for the layer (name ``auto``)."""

    name = "auto"

    def __init__(self, choice: dict[str, Format]):
        self.choice = choice

    def of(self, layer: Layer) -> Format:
        return self.choice[layer.name]

    def supports(self, layer):
        return None if layer.name in self.choice else f"no format of {', '.join(MIX_FORMATS)} handles it"

    def default_modes(self, layer):
        return self.of(layer).default_modes(layer)

    def max_ranks(self, layer, modes):
        return self.of(layer).max_ranks(layer, modes)

    def snap_ranks(self, layer, modes, ranks):
        return self.of(layer).snap_ranks(layer, modes, ranks)

    def uniform_ranks(self, layer, modes, rank):
        return self.of(layer).uniform_ranks(layer, modes, rank)

    def options(self, layer, modes):
        return self.of(layer).options(layer, modes)

    def realize(self, layer, modes, ranks):
        return self.of(layer).realize(layer, modes, ranks)

    def cost(self, layer, modes, ranks, options=None):
        return self.of(layer).cost(layer, modes, ranks, options)

    def decompose(self, weight, layer, modes, ranks):
        return self.of(layer).decompose(weight, layer, modes, ranks)

    def reconstruct(self, cores, layer, modes):
        return self.of(layer).reconstruct(cores, layer, modes)

    def emit(self, b, x, cores, layer, modes, options):
        return self.of(layer).emit(b, x, cores, layer, modes, options)


class MixedPlanner(Planner):
    """``Planner`` over per-layer formats; its plans name each layer's own format."""

    def __init__(self, layers: list[Layer], choice: dict[str, Format], allow_more_macs: bool = False):
        super().__init__(layers, ByLayer(choice), None, allow_more_macs)

    def _named(self, lp: LayerPlan | None) -> LayerPlan | None:
        return lp if lp is None or lp.format is None else replace(lp, format=self.fmt.of(lp.layer).name)

    def layer(self, layer, ranks, measure=True):
        return self._named(super().layer(layer, ranks, measure))

    def plain(self, layer, ranks):
        return self._named(super().plain(layer, ranks))


@dataclass
class MixedSearch:
    """Budget-independent part: every layer's model in every candidate format it supports."""

    ctx: Context
    models: dict[str, dict[str, datafree.LayerModel]]  # layer -> format -> model
    time_s: float
    name: str = "datafree"

    def choose(self, budget: Budget) -> tuple[dict[str, str], float]:
        """Format per layer from the relaxed bisection over the knob, and that knob value."""
        first = {n: next(iter(fm)) for n, fm in self.models.items()}
        base = MixedPlanner(self.ctx.layers, {n: get_format(f) for n, f in first.items()}).base()
        targets, weights = budget.targets(base), datafree.metric_weights(budget, base)
        objectives = {n: {f: datafree.Objective(m, weights) for f, m in fm.items()} for n, fm in self.models.items()}
        values = datafree.knob_values([o for fo in objectives.values() for o in fo.values()])

        def at(t: float) -> tuple[dict[str, str], np.ndarray]:
            choice, size = {}, np.zeros(2)
            for n, fo in objectives.items():
                best = []
                for i, (f, obj) in enumerate(fo.items()):
                    r = datafree.optimise(obj, t)
                    value, sz = (obj.dense, obj.m.dense_cost) if r is None else (obj.exact(r, t), obj.size(r))
                    best.append((value, i, f, sz))
                _, _, choice[n], sz = min(best, key=lambda b: b[:2])
                size += sz
            return choice, size

        def fits(size: np.ndarray) -> bool:
            return all(size[i] <= targets[m] for i, m in enumerate(("params", "macs")) if m in targets)

        lo, hi = 0, len(values)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(at(values[mid])[1]) else (lo, mid)
        return at(values[lo])[0], values[lo]

    def plan(self, budget: Budget):
        start = time.perf_counter()
        choice, t = self.choose(budget)
        planner = MixedPlanner(self.ctx.layers, {n: get_format(f) for n, f in choice.items()},
                               self.ctx.allow_more_macs)
        models = {n: self.models[n][f] for n, f in choice.items()}
        family = datafree.family(models, planner, budget)
        info = {**datafree.settings_info(), "formats": list(MIX_FORMATS), "layer_formats": choice,
                "relaxed_knob": t}
        found = Search(self.name, replace(self.ctx, fmt=planner.fmt), planner, family, {}, info,
                       self.time_s + time.perf_counter() - start)
        return found.plan(budget)


def mixed_search(ctx: Context) -> MixedSearch:
    """Models of every layer in each of ``MIX_FORMATS`` it supports (layers none supports are skipped)."""
    if ctx.modes:
        raise OptionError(f"{opt('modes')} does not apply to {opt('format')} auto (CP and Tucker-2 have no modes)")
    start = time.perf_counter()
    models: dict[str, dict[str, datafree.LayerModel]] = {}
    for lay in ctx.layers:
        fmts = [get_format(f) for f in MIX_FORMATS]
        fmts = [f for f in fmts if not (lay.skip or f.supports(lay))]
        if fmts:
            weight = dense_weight(ctx.model, lay)[0]
            models[lay.name] = {f.name: datafree.layer_model(f, weight, lay, f.default_modes(lay)) for f in fmts}
    return MixedSearch(ctx, models, time.perf_counter() - start)
