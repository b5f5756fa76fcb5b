"""``--format auto --allocator datafree``: CP or Tucker-2 per layer, chosen on the datafree composite loss.

As in the unified-framework seed, each layer may take either decomposition (on Gemm/MatMul both are
the two-factor SVD form). Per budget (our formulation, see ``ttcompile.planning.datafree``): every layer gets
one error/cost model per candidate format (``MIX_FORMATS``); at knob t each layer's format is the one
whose optimum (``datafree.optimise``) has the lower objective ``t E + sum_m C_m / base_m``, ties to the
first of ``MIX_FORMATS``. t is bisected on the *relaxed* sizes (multilinear plain-chain cost of those
optima) to the budget's params/MACs targets; that fixes the format of every layer, and ``budget.solve``
then meets the budget exactly with the datafree family in those formats (``MixedPlanner``: a ``Planner``
whose format is chosen per layer).

With a latency budget (``Context.latency``) the choice is measured: the bisection above runs on the
params/MACs part of the budget (a latency-only budget ``latency=F`` bisects on ``macs=F`` instead) to a
knob t; at that t each format's optimum is rounded to its chain and timed next to the dense layer
(``LatencyBudget``: the measured guard, cached pairs). A format whose chain is not faster than dense is
out; among the others the layer takes the lowest ``t D + sum_m C_m / base_m + mu T_chain / T_model`` (the
same Lagrangian with the predicted chain time as one more cost at price ``mu``). A layer where no
format's chain is faster keeps the params/MACs choice (the guard keeps it dense in the solve). Each
assignment is solved for the whole budget with the closed loop (``ttcompile.planning.latency_loop``), as
for one format, at every price of ``LATENCY_PRICES`` (the price the latency constraint really has is
not known before the solve: at mu = 1 on ResNet-20, params=0.2,latency=0.8, CP's slower chains forced
the ranks down to 14 % params and 97.8 % after fine-tuning); the plan kept is the one meeting the budget
with the least modelled damage ``sum_l D_l`` (``datafree.damage``), else the one closest to its
targets. ``format_choice`` in the plan records every layer's measured candidates, ``latency_prices`` each
price's outcome. On ORT CPU this is what makes a mix: CP's depthwise chains are slower than
dense on most ResNet convs, Tucker-2's 1x1-kxk-1x1 chains faster (``benchmarks/results/datafree_headline.md``).
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
from ttcompile.planning.latency import LatencyBudget
from ttcompile.planning.latency_loop import target_fraction
from ttcompile.planning.planner import Planner

MIX_FORMATS = ("tucker", "cp")
LATENCY_PRICES = (1.0, 8.0, 64.0)  # mu: weight of the predicted chain time in the format choice


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
    """``Planner`` over per-layer formats; its plans name each layer's own format (so the latency table
    times and keys each chain in its real format)."""

    def __init__(self, layers: list[Layer], choice: dict[str, Format], allow_more_macs: bool = False,
                 latency: LatencyBudget | None = None):
        super().__init__(layers, ByLayer(choice), None, allow_more_macs, latency)

    def format_of(self, layer: Layer) -> Format:
        return self.fmt.of(layer)


@dataclass
class MixedSearch:
    """Budget-independent part: every layer's model in every candidate format it supports."""

    ctx: Context
    models: dict[str, dict[str, datafree.LayerModel]]  # layer -> format -> model
    time_s: float
    name: str = "datafree"

    def choose(self, budget: Budget) -> tuple[dict[str, str], float]:
        """Format per layer from the relaxed bisection over the knob on the params/MACs part of ``budget``,
        and that knob value."""
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

    def measured_choice(self, budget: Budget, choice: dict[str, str], t: float, price: float
                        ) -> tuple[dict[str, str], dict]:
        """With a latency table: each layer's format among those whose chain at knob ``t`` is measured
        faster than dense, by the objective plus ``price`` times the predicted chain time (module
        docstring); the record of every candidate."""
        lat = self.ctx.latency
        planners = {f: Planner(self.ctx.layers, get_format(f), None, self.ctx.allow_more_macs, lat)
                    for f in MIX_FORMATS}
        weights = datafree.metric_weights(budget, MixedPlanner(self.ctx.layers, {
            n: get_format(f) for n, f in choice.items()}).base())
        layers = {lay.name: lay for lay in self.ctx.layers}
        chosen, record = dict(choice), {}
        for n, fm in self.models.items():
            best, record[n] = [], {}
            for i, (f, m) in enumerate(fm.items()):
                obj = datafree.Objective(m, weights)
                r = datafree.optimise(obj, t)
                if r is None:
                    record[n][f] = {"ranks": None, "reason": "dense at this knob"}
                    continue
                lp = planners[f].layer(layers[n], m.ranks(r))  # guarded: timed next to dense
                plain = planners[f].layer(layers[n], m.ranks(r), measure=False)
                pair = lat.table.pair(plain) if plain.action == "compress" else None
                record[n][f] = {"ranks": m.ranks(r), "action": lp.action, "reason": lp.reason,
                                "dense_ms": pair and pair[0], "chain_ms": pair and pair[1]}
                if lp.action == "compress":
                    value = obj.exact(r, t) + price * lat.chain_ms(lp) / lat.model_ms
                    record[n][f]["objective"] = value
                    best.append((value, i, f))
            if best:
                chosen[n] = min(best)[2]
        return chosen, record

    def plan(self, budget: Budget):
        start = time.perf_counter()
        lat = self.ctx.latency if budget.latency is not None else None
        sized = replace(budget, latency=None)
        if lat is not None and sized.params is None and sized.macs is None:
            sized = Budget(macs=target_fraction(budget, lat.model_ms))
        choice, t = self.choose(sized)
        if lat is None:
            return self._solve(budget, choice, {"relaxed_knob": t}, start)
        outcomes, seen = [], {}
        for price in LATENCY_PRICES:
            priced, record = self.measured_choice(sized, choice, t, price)
            key = tuple(sorted(priced.items()))
            if key not in seen:
                seen[key] = self._solve(budget, priced, {"relaxed_knob": t, "format_choice": record}, start)
            plan = seen[key]
            rep = plan.settings["budget"]
            met = all(v <= 1 + 1e-9 for v in rep["of_target"].values()) and rep["latency"]["closed_loop"]["met"]
            hurt = sum(datafree.damage(self.models[lp.name][lp.format], lp.ranks)
                       for lp in plan.layers if lp.action == "compress")
            outcomes.append({"price": price, "met": met, "damage": hurt, "of_target": rep["of_target"],
                             "formats": {f: sum(1 for lp in plan.layers if lp.action == "compress"
                                                and lp.format == f) for f in MIX_FORMATS}, "plan": plan})
        best = min(outcomes, key=lambda o: (not o["met"], o["damage"] if o["met"] else max(o["of_target"].values())))
        best["plan"].settings["latency_prices"] = [{k: v for k, v in o.items() if k != "plan"} | {
            "kept": o is best} for o in outcomes]
        return best["plan"]

    def _solve(self, budget: Budget, choice: dict[str, str], info: dict, start: float):
        """The plan of ``budget`` with the datafree family in the formats of ``choice``."""
        planner = MixedPlanner(self.ctx.layers, {n: get_format(f) for n, f in choice.items()},
                               self.ctx.allow_more_macs, self.ctx.latency if budget.latency is not None else None)
        models = {n: self.models[n][f] for n, f in choice.items()}
        family = datafree.family(models, planner, budget)
        info = {**datafree.settings_info(), "formats": list(MIX_FORMATS), "layer_formats": choice, **info}
        found = Search(self.name, replace(self.ctx, fmt=planner.fmt), planner, family, {}, info,
                       self.time_s + time.perf_counter() - start)
        return found.plan(budget)


def mix_supported(layer: Layer) -> bool:
    """Whether ``--format auto`` can rewrite ``layer`` (some format of ``MIX_FORMATS`` handles it)."""
    return not layer.skip and any(get_format(f).supports(layer) is None for f in MIX_FORMATS)


def mixed_search(ctx: Context) -> MixedSearch:
    """Models of every layer in each of ``MIX_FORMATS`` it supports (layers none supports are skipped)."""
    if ctx.modes:
        raise OptionError(f"{opt('modes')} does not apply to {opt('format')} auto (CP and Tucker-2 have no modes)")
    start = time.perf_counter()
    models: dict[str, dict[str, datafree.LayerModel]] = {}
    for lay in filter(mix_supported, ctx.layers):
        fmts = [f for f in map(get_format, MIX_FORMATS) if f.supports(lay) is None]
        weight = dense_weight(ctx.model, lay)[0]
        models[lay.name] = {f.name: datafree.layer_model(f, weight, lay, f.default_modes(lay)) for f in fmts}
    return MixedSearch(ctx, models, time.perf_counter() - start)
