"""Rank allocators behind one interface: ``lwiq``, ``uniform``, ``energy``, ``greedy``, ``datafree``.

Each allocator turns a model into a one-knob ``budget.Family`` of per-layer ranks (most compressed
first); ``budget.solve`` bisects that knob to meet the budget, then fills the slack left by rank
granularity (layers whose next step does not fit stop, the others go on; see ``budget.solve``).
The budget-independent part (scores, greedy's evaluations) is a ``Search``, reusable for any number of
budgets. ``R_{l,k}`` are the format's rank caps
(``Format.max_ranks`` at the layer's modes) and ``scaled_ranks(R, x) = clip(floor(x R_{l,k} + 1/2), 1,
R_{l,k})``.

* ``lwiq`` (knob t = 1/lambda): the sensitivity curves of ``ttcompile.analysis.sensitivity`` (measured once by
  ``ttcompile analyze`` in the plan's format). Each layer l has candidates r (the measured one-knob ranks,
  valid under the MAC rule) plus "dense", with damage ``phi(w_l d_l(r))`` (dense: 0; ``damage``: ``log``
  ``phi(x) = -log(1 - min(x, 0.99))`` by default, or ``linear`` x) and cost ``c_l(r) = sum_m size_m(l, r) /
  base_m`` over the budgeted metrics m (params and/or MACs, as fractions of the compressible totals). One
  multiplier picks ``r_l(lambda) = argmin_r [phi(w_l d_l(r)) + lambda c_l(r)]`` on each lower convex hull
  (``ttcompile.planning.hull``); the solver bisects t. Weights ``w_l``: ``output`` (default: the layer's
  transfer ``t_l = Curve.transfer``, how much of its read-out drop reaches the output probe), ``flat`` (1)
  or ``gain`` (the LWIQ score ``s^_l``). Candidates: t = 0 and the midpoints between the hulls'
  breakpoints, so each is one distinct, reproducible rank set. The multiplier reaches only hull vertices;
  at tight budgets the best combination often uses points between them (LeNet-5 TR at 1/20 and 1/50), so
  the solve then minimises the same summed damage exactly over all measured candidates within the budget
  (``LwiqExact``, a multiple-choice knapsack, ``ttcompile.planning.knapsack``) and takes that plan when it
  damages less; the plan's budget report records both damages (``exact``).
* ``uniform`` (knob rho): every layer gets the largest uniform rank whose realized params are at most
  ``rho`` times its dense params (rank 1 at least; ``plan.ranks_for_ratio``), one rho for all layers.
* ``energy`` (knob tau): per layer, the singular values ``sigma`` of the canonical weight unfolded as
  ``(out, in * prod(kernel))``; ``m_l(tau)`` = smallest m with ``sum_{i<=m} sigma_i^2 >= tau sum sigma^2``;
  ``r_{l,k} = scaled_ranks(R_l, m_l / rank(W_l))``, the same energy-kept rank fraction on every bond
  (format-agnostic; for a TT format it is a proxy for the bond unfoldings' own spectra).
* ``greedy`` (knob delta, AIMET-style): each layer alone is rewritten at ratios ``GREEDY_RATIOS``
  (uniform-rank ranks as above) and the whole model run on the calibration set, giving the accuracy
  drop ``d_l(rho) = acc_ref - acc(l, rho)`` (labels: given, else the model's own top-1). At threshold
  delta each layer takes its smallest ratio with ``d_l(rho) <= delta``, or stays dense if none.
  Its score is ``d_l`` at its smallest ratio (sensitivity).
* ``datafree`` (knob t = 1/lambda, no data): per layer, a continuous relaxation of the ranks on a modelled
  truncation error plus the budgeted costs (``ttcompile.planning.datafree``); with ``--format auto``, CP or
  Tucker-2 per layer (``ttcompile.planning.datafree_mix``, through ``Allocator.mixed_search``).

Unless ``allow_more_macs``, a layer's ranks stop at the largest that need no more MACs than dense
(``budget.MacCapped``), and a rewrite that does not save params stays dense (``plan.layer_plan``).
With a latency budget (``Context.latency``, ``ttcompile.planning.latency``) every allocator's family is solved
against the measured latency too, and a chain measured not faster than dense stays dense; the LWIQ hull
still weighs params/MACs only (latency enters as the solver's constraint and the guard).
The returned Plan records each layer's score, the knob, the budget report and the search time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from copy import deepcopy
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import onnx
import onnx_ir as ir
from tqdm import tqdm

from ttcompile.analysis.features import Calibration, predict
from ttcompile.analysis.lwiq import Analysis
from ttcompile.errors import OptionError, UserError, opt
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, dense_weight
from ttcompile.passes.base import Format
from ttcompile.planning import datafree, knapsack
from ttcompile.planning.budget import Budget, Family, Solution, scaled_ranks, solve
from ttcompile.planning.hull import lower_hull
from ttcompile.planning.latency import LatencyBudget, plan_key
from ttcompile.planning.latency_loop import closed_loop
from ttcompile.planning.plan import Plan
from ttcompile.planning.planner import Planner
from ttcompile.rewrite.compress import apply_plan, rewrite_layer

GREEDY_RATIOS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75)
RANK_MAPPING = "r_{l,k} = clip(floor(x_l * R_{l,k} + 1/2), 1, R_{l,k}), R = Format.max_ranks"


@dataclass
class Context:
    """What an allocator may use. ``model`` for energy/greedy, ``calibration`` for greedy, ``analysis`` for lwiq."""

    model_path: str
    model_sha256: str
    layers: list[Layer]
    fmt: Format
    modes: dict[str, dict] | None = None
    allow_more_macs: bool = False
    model: ir.Model | None = None
    calibration: Calibration | None = None
    analysis: Analysis | None = None
    batch: int = 256
    progress: bool = False
    lwiq_weights: str = "output"
    lwiq_damage: str = "log"
    latency: LatencyBudget | None = None  # measured per-layer latencies, for a latency budget


class Allocator(ABC):
    name: str = ""
    needs: tuple[str, ...] = ()  # Context fields that must be set

    @abstractmethod
    def family(self, ctx: Context, planner: Planner) -> tuple[Family, dict[str, float], dict]:
        """The knob family, per-layer scores (may be empty) and settings to record."""

    def mixed_search(self, ctx: Context) -> Search:
        """The search with a format per layer (``--format auto``)."""
        raise OptionError(f"{opt('format')} auto with {opt('budget')} needs {opt('allocator')} datafree, "
                          f"not {self.name}")


def _midpoints(steps: set[float]) -> list[float]:
    """0, then one value inside each interval between consecutive distinct ``steps``, then past the last."""
    s = sorted(steps)
    distinct = [v for i, v in enumerate(s) if i == 0 or v > s[i - 1] * (1 + 1e-9)]
    return [0.0] + [(a + b) / 2 for a, b in zip(distinct, distinct[1:])] + ([2 * distinct[-1]] if distinct else [])


LWIQ_WEIGHTS, LWIQ_DAMAGES, LOG_CAP = ("output", "flat", "gain"), ("log", "linear"), 0.99
LWIQ_MAPPING = ("r_l(lambda) = argmin_r [phi(w_l d_l(r)) + lambda c_l(r)] on the lower convex hull of layer l's "
                "measured candidates and dense (d = 0); phi: the damage (log: -log(1 - min(x, 0.99)), or linear: x); "
                "c_l(r) = sum over budgeted metrics of size / base; "
                "knob t = 1 / lambda")


class LwiqAllocator(Allocator):
    name, needs = "lwiq", ("analysis",)

    def family(self, ctx, planner):
        fmt, analysis = planner.fmt.name, ctx.analysis
        curves = analysis.curves.get(fmt)
        if curves is None:
            have = ", ".join(analysis.curves) or "none"
            raise UserError(f"the analysis has no sensitivity curves for format {fmt} (it has: {have}); "
                            f"analyse again with {opt('formats')} {fmt}")
        for lay in planner.active:
            curve = curves.get(lay.name)
            if curve is None:
                raise UserError(f"the analysis has no curve for layer {lay.name}; analyse this model again")
            if curve.modes is not None and curve.modes != planner.modes[lay.name]:
                raise UserError(f"the analysis measured layer {lay.name} with modes {curve.modes}, the plan "
                                f"uses {planner.modes[lay.name]}; analyse again with the same {opt('modes')}")
        if ctx.lwiq_weights not in LWIQ_WEIGHTS:
            raise OptionError(f"unknown {opt('lwiq_weights')} {ctx.lwiq_weights!r}: choose one of "
                              f"{', '.join(LWIQ_WEIGHTS)}")
        scores = analysis.scores
        weight = {lay.name: {"output": curves[lay.name].transfer, "gain": scores[lay.name]}.get(ctx.lwiq_weights, 1.0)
                  for lay in planner.active}
        base = planner.base()

        if ctx.lwiq_damage not in LWIQ_DAMAGES:
            raise OptionError(f"unknown {opt('lwiq_damage')} {ctx.lwiq_damage!r}: choose one of "
                              f"{', '.join(LWIQ_DAMAGES)}")
        points = {lay.name: _points(planner, lay, curves[lay.name], weight[lay.name], ctx.lwiq_damage)
                  for lay in planner.active}

        def for_budget(budget: Budget) -> Family:
            metrics = [m for m in ("params", "macs") if getattr(budget, m) is not None and base[m]]
            hulls = {n: lower_hull([(_cost(size, metrics, base), d, key) for key, size, d in pts])
                     for n, pts in points.items()}
            steps = {t for h in hulls.values() for t in h.breakpoints}
            def rank(n: str, t: float) -> list[int] | None:
                key = hulls[n].choose(t)
                return None if key is None else list(key)

            return Family("t", _midpoints(steps), rank, exact=LwiqExact(points))

        fam = for_budget(Budget(params=1.0))
        fam.for_budget = for_budget
        info = {"analysis": {"model_sha256": analysis.model_sha256, "time_s": analysis.time_s,
                             "calibration": analysis.calibration, "targets": analysis.targets,
                             "formula": analysis.formula, "drop_formula": analysis.drop_formula,
                             "transfer_formula": analysis.transfer_formula,
                             "epsilon": analysis.epsilon},
                "mapping": LWIQ_MAPPING, "weights": ctx.lwiq_weights, "damage": ctx.lwiq_damage,
                "weight": {n: round(w, 4) for n, w in weight.items()}}
        return fam, {n: scores[n] for n in planner.caps if n in scores}, info


def damage(weighted_drop: float, kind: str) -> float:
    """``phi(x)`` of a weighted drop ``x = w_l d_l``: ``linear`` x; ``log`` ``-log(1 - min(x, 0.99))``: each layer
    keeps the fraction ``1 - x`` of the output accuracy, the sum over layers is ``-log`` of their product,
    so one destroyed layer costs what destroys the network."""
    return weighted_drop if kind == "linear" else -float(np.log1p(-min(weighted_drop, LOG_CAP)))


def _points(planner: Planner, lay: Layer, curve, weight: float, kind: str) -> list[tuple[tuple | None, dict, float]]:
    """A layer's valid measured candidates and its dense form: (key: ranks tuple or None, size, phi(w_l d_l))."""
    points: list[tuple[tuple | None, dict, float]] = [(None, {"params": lay.params, "macs": lay.macs or 0}, 0.0)]
    for p in curve.points:
        lp = planner.layer(lay, p.ranks, measure=False)
        if lp.action == "compress":
            points.append((tuple(p.ranks), {"params": lp.params, "macs": lp.macs or 0},
                           damage(weight * p.drop, kind)))
    return points


def _cost(size: dict, metrics: list[str], base: dict) -> float:
    """``c_l(r)``: the budgeted metrics' sizes as fractions of the compressible totals (params if none)."""
    return sum(size[m] / base[m] for m in metrics) if metrics else size["params"] / base["params"]


@dataclass
class LwiqExact:
    """``knapsack.ExactSolver`` over every measured candidate (not only hull vertices): least summed
    ``w_l d_l(r)`` within the budget, by ``ttcompile.planning.knapsack``."""

    points: dict[str, list[tuple[tuple | None, dict, float]]]

    def solve(self, targets: dict[str, float]) -> dict[str, list[int] | None] | None:
        metrics = list(targets)
        groups = [[(tuple(float(size[m]) for m in metrics), d) for _, size, d in pts] for pts in self.points.values()]
        choice = knapsack.solve(groups, tuple(float(targets[m]) for m in metrics))
        if choice is None:
            return None
        keys = [pts[i][0] for pts, i in zip(self.points.values(), choice)]
        return {n: None if k is None else list(k) for n, k in zip(self.points, keys)}

    def damage(self, ranks: dict[str, list[int] | None]) -> float | None:
        total = 0.0
        for n, pts in self.points.items():
            key = ranks.get(n)
            key = None if key is None else tuple(key)
            found = [d for k, _, d in pts if k == key]
            if not found:
                return None
            total += found[0]
        return total


def uniform_table(planner: Planner) -> dict[str, tuple[list[float], list[list[int]]]]:
    """Per layer: realized params ratios and the ranks of uniform rank 1, 2, .. (distinct rank lists)."""
    table = {}
    for lay in planner.active:
        ratios, ranks = [], []
        for r in range(1, max(planner.caps[lay.name]) + 1):
            rk = planner.fmt.uniform_ranks(lay, planner.modes[lay.name], r)
            if ranks and rk == ranks[-1]:
                break
            ratios.append(planner.layer(lay, rk, measure=False).params / lay.params)
            ranks.append(rk)
        table[lay.name] = (ratios, ranks)
    return table


def ranks_at_ratio(entry: tuple[list[float], list[list[int]]], rho: float) -> list[int]:
    """Largest uniform rank whose params ratio is <= rho (the first, rank 1, at least)."""
    ratios, ranks = entry
    fits = [i for i, q in enumerate(ratios) if q <= rho]
    return ranks[fits[-1] if fits else 0]


class UniformAllocator(Allocator):
    name = "uniform"

    def family(self, ctx, planner):
        table = uniform_table(planner)
        values = sorted({q for ratios, _ in table.values() for q in ratios})
        return Family("ratio", values, lambda n, rho: ranks_at_ratio(table[n], rho)), {}, {}


class EnergyAllocator(Allocator):
    name, needs = "energy", ("model",)

    def family(self, ctx, planner):
        energy = {}
        for lay in planner.active:
            m = dense_weight(ctx.model, lay)[0].reshape(lay.out_features, -1)
            gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m  # eigenvalues = sigma^2
            s2 = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
            energy[lay.name] = np.cumsum(s2) / s2.sum()

        def rank(n: str, tau: float) -> list[int]:
            e = energy[n]
            return scaled_ranks(planner.caps[n], min(int(np.searchsorted(e, tau, side="left")) + 1, len(e)) / len(e))

        values = sorted({float(v) for e in energy.values() for v in e})
        return Family("energy", values, rank), {}, {"mapping": RANK_MAPPING + ", x_l = m_l(tau) / rank(W_l)"}


class GreedyAllocator(Allocator):
    name, needs = "greedy", ("model", "calibration")
    ratios = GREEDY_RATIOS

    def family(self, ctx, planner):
        calib, table = ctx.calibration, uniform_table(planner)
        original = to_proto(ctx.model)
        pred = predict(original, calib.x, ctx.batch)
        labels = calib.y if calib.y is not None else pred
        ref_acc = float((pred == labels).mean())
        options: dict[str, list[tuple[float, list[int], float]]] = {}
        todo = [(lay, rho) for lay in planner.active for rho in self.ratios]
        for lay, rho in tqdm(todo, desc="greedy", unit="eval", disable=not ctx.progress):
            lp = planner.layer(lay, ranks_at_ratio(table[lay.name], rho))
            opts = options.setdefault(lay.name, [])
            if lp.action != "compress" or (opts and opts[-1][1] == lp.ranks):
                continue
            model = ir.from_proto(original)
            rewrite_layer(model, lp)
            acc = float((predict(to_proto(model), calib.x, ctx.batch) == labels).mean())
            opts.append((rho, lp.ranks, ref_acc - acc))

        def rank(n: str, delta: float) -> list[int] | None:
            return next((rk for _, rk, d in options[n] if d <= delta), None)

        drops = sorted({d for opts in options.values() for _, _, d in opts}, reverse=True)
        values = drops + [drops[-1] - 1.0] if drops else [0.0]
        info = {"greedy": {"ratios": list(self.ratios), "reference_accuracy": ref_acc,
                           "labels": "given" if calib.y is not None else "model top-1 predictions",
                           "drops": {n: [[rho, d] for rho, _, d in opts] for n, opts in options.items()}}}
        return Family("accuracy_drop", values, rank), {n: o[0][2] for n, o in options.items() if o}, info


class DatafreeAllocator(Allocator):
    name, needs = "datafree", ("model",)

    def family(self, ctx, planner):
        for_budget = datafree.cached_families(datafree.layer_models(ctx.model, planner), planner)
        fam = replace(for_budget(Budget(params=1.0)), for_budget=for_budget)
        return fam, {}, datafree.settings_info()

    def mixed_search(self, ctx):
        from ttcompile.planning.datafree_mix import mixed_search

        return mixed_search(ctx)


ALLOCATORS: dict[str, Allocator] = {a.name: a for a in (LwiqAllocator(), UniformAllocator(), EnergyAllocator(),
                                                         GreedyAllocator(), DatafreeAllocator())}


@dataclass
class Search:
    """An allocator's budget-independent work (scores, evaluations, knob family); ``plan`` solves a budget."""

    name: str
    ctx: Context
    planner: Planner
    family: Family
    scores: dict[str, float]
    info: dict
    time_s: float

    def plan(self, budget: Budget) -> Plan:
        """Plan meeting ``budget``; settings record the knob, the budget report and the search time
        (``search_time_s`` = this search + the solve; for lwiq the analysis time is in ``analysis``)."""
        start = time.perf_counter()
        family = self.family.for_budget(budget) if self.family.for_budget else self.family
        if budget.latency is not None and self.planner.latency is not None:
            sol = closed_loop(lambda b: solve(self.planner, family, b), self._measure, budget,
                              self.planner.latency.model_ms)
            sol.report["budget"] = str(budget)
        else:
            sol = solve(self.planner, family, budget)
        solve_s = time.perf_counter() - start
        plans = [replace(lp, score=self.scores.get(lp.name)) for lp in sol.plans]
        settings = {"format": self.ctx.fmt.name, "allocator": self.name, "allow_more_macs": self.ctx.allow_more_macs,
                    "knob": {"name": sol.knob, "value": sol.value}, "budget": sol.report,
                    "search_time_s": round(self.time_s + solve_s, 4), "solve_time_s": round(solve_s, 4), **self.info}
        return Plan(self.ctx.model_path, self.ctx.model_sha256, settings, plans)

    @cached_property
    def _original(self) -> onnx.ModelProto:
        """The model as one proto, serialised once for all of the closed loop's rewrites."""
        return to_proto(self.ctx.model)

    def _measure(self, sol: Solution, samples: int) -> tuple[float, str]:
        """Whole-model latency of ``sol`` (weight cores) over the original's, timed interleaved (median of
        ``samples`` timings), and the plan's key."""
        def build() -> tuple[onnx.ModelProto, onnx.ModelProto]:
            compressed = ir.from_proto(self._original)
            apply_plan(compressed, Plan(self.ctx.model_path, self.ctx.model_sha256, {}, deepcopy(sol.plans)),
                       progress=False)
            return self._original, to_proto(compressed)

        table = self.planner.latency.table
        return table.ratio(self.ctx.model_sha256, sol.plans, build, samples), plan_key(sol.plans)


def search(name: str, ctx: Context) -> Search:
    """Run allocator ``name``'s budget-independent part (greedy: its per-layer evaluations)."""
    if name not in ALLOCATORS:
        raise OptionError(f"unknown {opt('allocator')} {name!r}: choose one of {', '.join(ALLOCATORS)}")
    alloc = ALLOCATORS[name]
    for need in alloc.needs:
        if getattr(ctx, need) is None:
            raise OptionError(f"allocator {name} needs {need} (see {opt('calib')} / {opt('analysis')})")
    if ctx.fmt.name == "auto":  # a format per layer: the allocator plans each budget itself
        return alloc.mixed_search(ctx)
    start = time.perf_counter()
    planner = Planner(ctx.layers, ctx.fmt, ctx.modes, ctx.allow_more_macs, ctx.latency)
    family, scores, info = alloc.family(ctx, planner)
    return Search(name, ctx, planner, family, scores, info, time.perf_counter() - start)


def allocate(name: str, ctx: Context, budget: Budget) -> Plan:
    """Plan meeting ``budget`` with allocator ``name`` (``search`` then ``Search.plan``)."""
    return search(name, ctx).plan(budget)
