"""Budgets (``params=0.1``, ``macs=0.5``, ``latency=0.5``, any mix, or absolute counts) and the one-knob solver.

Every allocator reduces rank selection to a one-parameter family of per-layer rank choices, ordered
from the most to the least compressed (LWIQ's alpha, the uniform ratio, the energy threshold, the
greedy accuracy-drop threshold). ``solve`` bisects over the family's candidate knob values for the
least compressed plan that still fits every budget. Budgets count the *compressible* layers only
(those the format can rewrite): a layer left dense counts its dense params/MACs, a compressed one its
cost-model params/MACs (``Format.cost`` of the realized chain, per sample at batch 1).

The bisection keeps the invariant "candidate ``lo`` fits, ``hi`` does not", so the returned plan
always fits even where a realization change makes the size slightly non-monotone in the knob.
Unless ``allow_more_macs``, a layer never gets more MACs than dense: its ranks stop growing at its
MAC limit (``MacCapped``) and a rewrite that would still need more MACs is left dense (``layer_plan``).

Latency (``ttcompile.planning.latency``): ``latency=F`` is a fraction of the whole model's measured latency (F > 1: ms),
predicted from measured one-layer pairs; with a table the guard is measured too (``LatencyBudget.guard``,
``MacCapped``), and phase 3 is skipped: the plan stays on the family's rank grid, timed lazily where solved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ttcompile.errors import OptionError, UserError, opt
from ttcompile.layers import Layer
from ttcompile.planning.knapsack import ExactSolver, exact_step
from ttcompile.planning.plan import LayerPlan
from ttcompile.planning.planner import Planner

METRICS = ("params", "macs", "latency")


class BudgetInfeasible(UserError):
    """Even the most compressed plan of the family exceeds the budget."""


@dataclass(frozen=True)
class Budget:
    """Budget per metric: a fraction of the compressible total (latency: of the whole model's measured
    latency) when <= 1, else an absolute count (latency: milliseconds)."""

    params: float | None = None
    macs: float | None = None
    latency: float | None = None

    def __str__(self) -> str:
        return ",".join(f"{m}={getattr(self, m):g}" for m in METRICS if getattr(self, m) is not None)

    def targets(self, base: dict[str, int | None]) -> dict[str, float]:
        """Absolute target per budgeted metric, given the compressible totals ``base``."""
        out = {}
        for m in METRICS:
            v = getattr(self, m)
            if v is None:
                continue
            if base[m] is None and m == "latency":
                raise UserError(f"a latency budget needs measured latencies (give {opt('budget')} latency=F "
                                "to compress)")
            if base[m] is None:
                raise UserError(f"a {m} budget needs every layer's {m}, and some are unknown "
                                f"(shape inference did not resolve them; try {opt('input_shapes')})")
            out[m] = v * base[m] if v <= 1 else v
        return out


def parse_budget(spec: str) -> Budget:
    """``"params=0.1"``, ``"macs=0.5"``, ``"latency=0.5"``, ``"params=0.1,macs=0.5"``, ``"params=20000"`` -> Budget."""
    values: dict[str, float] = {}
    for part in spec.replace(" ", "").split(","):
        key, sep, text = part.partition("=")
        try:
            if not sep or key not in METRICS or key in values:
                raise ValueError
            values[key] = float(text)
        except ValueError:
            raise OptionError(f"{opt('budget')} {spec!r}: expected params=F, macs=F and/or latency=F (comma "
                              "separated), F a fraction in (0, 1] or an absolute count (latency: ms), e.g. "
                              "params=0.1,latency=0.5") from None
        if not values[key] > 0:
            raise OptionError(f"{opt('budget')} {spec!r}: {key} must be positive")
    return Budget(**values)


def scaled_ranks(caps: list[int], x: float) -> list[int]:
    """``r_k = clip(floor(x * R_k + 1/2), 1, R_k)`` for caps ``R_k`` (round half up; boundary caps of 1 stay 1)."""
    return [min(max(int(x * cap + 0.5), 1), cap) for cap in caps]


@dataclass
class Family:
    """Knob values (most compressed plan first) and ``rank(layer, value)``: its ranks there (None: dense).

    ``for_budget``: where the family depends on which metrics are budgeted (LWIQ's cost), the family
    to solve a given budget with.
    """

    knob: str
    values: list[float]
    rank: Callable[[str, float], list[int] | None]
    for_budget: Callable[[Budget], Family] | None = None
    exact: ExactSolver | None = None  # where candidates carry a damage (LWIQ): ttcompile.planning.knapsack


@dataclass
class Solution:
    plans: list[LayerPlan]
    knob: str
    value: float
    report: dict  # base, targets, achieved sizes and fractions, MAC-capped layers, evaluations


MAC_CAP_NOTE = "ranks stop growing here: larger ones need more MACs than dense (or are not measured faster)"


class MacCapped:
    """``family``'s ranks by candidate index, each layer's index capped at its MAC limit.

    The MAC limit of a layer is the last candidate whose ranks for it need no more MACs than dense
    (bisection, MACs taken as non-decreasing along the family) and, with a latency table, are measured
    faster than dense (``Planner.faster``). Beyond it the layer keeps those ranks while the others grow,
    instead of falling back to dense and blocking the budget. Without a limit (``allow_more_macs`` or
    unknown MACs, and no latency table) the layer follows the family.
    """

    def __init__(self, planner: Planner, family: Family):
        self.planner, self.family = planner, family
        self._ranks: dict[tuple[str, int], list[int] | None] = {}
        last = len(family.values) - 1
        measured = planner.latency is not None and not planner.latency.allow_slower
        self.limits = {lay.name: self._limit(lay) if measured or not (planner.allow_more_macs or lay.macs is None)
                       else last for lay in planner.active}

    def _at(self, name: str, i: int) -> list[int] | None:
        if (name, i) not in self._ranks:
            self._ranks[name, i] = self.family.rank(name, self.family.values[i])
        return self._ranks[name, i]

    def _mac_ok(self, lay: Layer, i: int) -> bool:
        ranks = self._at(lay.name, i)
        p = self.planner
        return ranks is None or ((p.allow_more_macs or lay.macs is None or p.layer(lay, ranks).macs <= lay.macs)
                                 and p.faster(lay, ranks))

    def _limit(self, lay: Layer) -> int:
        lo, hi = 0, len(self.family.values) - 1
        if self._mac_ok(lay, hi):
            return hi
        while hi - lo > 1:  # hi fails; lo passes (or is 0)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._mac_ok(lay, mid) else (lo, mid)
        return lo

    def rank(self, name: str, i: int) -> list[int] | None:
        return self._at(name, min(i, self.limits[name]))

    def ranks(self, i: int) -> dict[str, list[int] | None]:
        return {name: self.rank(name, i) for name in self.limits}


def grow_bonds(planner: Planner, targets: dict[str, float], plans: list[LayerPlan]) -> tuple[list[LayerPlan], int]:
    """Spend the slack the knob's whole-layer steps left: grow one bond of one compressed layer by one rank
    step (``snap_ranks``, never above its cap) at a time, while everything fits ``targets``.

    Within a layer the least filled bond (rank / cap, as the family scales ranks from the caps) whose
    step fits goes first, in the realized form if that fits, else in the plain one (``Planner.plain``).
    Across layers the cheapest step goes first (sum over the budgeted metrics of its increase over the
    target). A step that costs nothing (a bond inside a merged core) goes straight to the bond's cap when
    that is free too. A layer that would turn dense (no params saved, or more MACs than dense unless
    allowed) does not grow. Returns the plans and the number of steps taken.
    """
    chosen = {lp.name: lp for lp in plans if lp.name in planner.caps}
    size = planner.size(plans)

    def bonds(lp: LayerPlan) -> list[tuple[list[int], list[int]]]:
        """Ranks one step up and at the cap, at each growable bond of ``lp``, least filled bond first."""
        if lp.action != "compress":
            return []
        layer, modes, caps = lp.layer, planner.modes[lp.name], planner.caps[lp.name]
        out = []
        for k in sorted(range(len(caps)), key=lambda k: (lp.ranks[k] / caps[k], k)):
            for up in range(lp.ranks[k] + 1, caps[k] + 1):
                ranks = planner.fmt.snap_ranks(layer, modes, [*lp.ranks[:k], up, *lp.ranks[k + 1:]])
                if ranks != lp.ranks:
                    if all(old <= new <= c for old, new, c in zip(lp.ranks, ranks, caps)):
                        top = planner.fmt.snap_ranks(layer, modes, [*lp.ranks[:k], caps[k], *lp.ranks[k + 1:]])
                        out.append((ranks, top))
                    break
        return out

    def proposal(name: str) -> tuple[float, dict[str, int], LayerPlan] | None:
        """The layer's first bond step that fits: (cost, size increase, plan)."""
        lp = chosen[name]
        here = planner.size([lp])
        for ranks, top in steps_of[name]:
            for cand in (planner.layer(lp.layer, ranks), planner.plain(lp.layer, ranks)):
                if cand is None or cand.action != "compress":
                    continue
                delta = {m: v - here[m] for m, v in planner.size([cand]).items()}
                if all(size[m] + delta[m] <= t for m, t in targets.items()):
                    if not any(delta.values()) and top != ranks:  # free (e.g. inside a merged core): to the cap
                        jump = planner.layer(lp.layer, top)
                        if jump.action == "compress" and planner.size([jump]) == here:
                            cand = jump
                    return sum(delta[m] / t for m, t in targets.items()), delta, cand
        return None

    steps_of = {name: bonds(lp) for name, lp in chosen.items()}
    steps = 0
    while True:
        picks = [(p[0], name, p) for name in chosen if (p := proposal(name))]
        if not picks:
            break
        _, name, (_, delta, cand) = min(picks, key=lambda x: (x[0], x[1]))
        chosen[name], steps = cand, steps + 1
        size = {m: size[m] + delta[m] for m in size}
        steps_of[name] = bonds(cand)
    return [chosen.get(lp.name, lp) for lp in plans], steps


def solve(planner: Planner, family: Family, budget: Budget) -> Solution:
    """Least compressed plan of ``family`` within ``budget``.

    Phase 1 bisects ``family.values`` (MAC-capped) for the last candidate ``lo`` that fits. Phase 2
    (fill) keeps walking the candidates after ``lo``: at each, the layers whose ranks change take the
    new ranks if the plan still fits, else they are frozen where they are while the others go on. So
    the plan is the knob's plan except that layers whose next step did not fit stop early; a step that
    overshoots only because it switched a layer to merged cores (more params) is retried with those
    layers in their plain realization (``Planner.plain``). Phase 3 (``grow_bonds``) then grows single
    bonds one rank step at a time into what is left. Phases 2 and 3 only spend the slack that rank
    granularity left after phase 1. Where the family has an ``exact`` solver (LWIQ), its least-damage
    ranks within the budget replace phase 1's plan when they fit and damage less, and phase 2 is skipped.
    """
    base = planner.base()
    targets = budget.targets(base)
    if not targets:
        raise UserError("empty budget: give params=... and/or macs=...")
    evaluations = planner.evaluations
    capped = MacCapped(planner, family)

    by_name = {lay.name: lay for lay in planner.active}

    def fits(ranks: dict[str, list[int] | None], override: dict[str, LayerPlan] | None = None
             ) -> tuple[bool, list[LayerPlan], dict[str, int]]:
        plans = [(override or {}).get(lp.name, lp) for lp in planner.plan(ranks)]
        size = planner.size(plans)
        return all(size[m] <= t for m, t in targets.items()), plans, size

    ok, plans, size = fits(capped.ranks(0))
    if not ok:
        need = ", ".join(f"{m} {size[m]:.6g} > {targets[m]:.6g} ({size[m] / base[m]:.2%} of {base[m]:.6g} needed)"
                         for m in targets if size[m] > targets[m])
        raise BudgetInfeasible(f"budget {budget} is infeasible for format {planner.fmt.name}: even the most "
                               f"compressed {family.knob} plan keeps {need}")
    lo, hi = 0, len(family.values)
    best = (plans, size)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, plans, size = fits(capped.ranks(mid))
        if ok:
            lo, best = mid, (plans, size)
        else:
            hi = mid
    knob_only = best[1]
    current, frozen = capped.ranks(lo), set()
    # latency is predicted for the whole plan, not a sum of per-layer sizes: no knapsack there
    exact = exact_step(family.exact, targets, fits, current) if family.exact and "latency" not in targets else None
    if exact and exact["used"]:
        best = exact.pop("best")
    override: dict[str, LayerPlan] = {}  # layers taken in the plain realization instead of the realized one
    moving = [] if exact and exact["used"] else [n for n, limit in capped.limits.items() if limit > lo]
    for i in range(lo + 1, len(family.values)):
        moving = [n for n in moving if n not in frozen and capped.limits[n] >= i]
        if not moving:
            break
        step = {n: r for n in moving if (r := capped.rank(n, i)) != current[n]}
        if not step:
            continue
        kept = {n: lp for n, lp in override.items() if n not in step}
        ok, plans, size = fits({**current, **step}, kept)
        if not ok:  # the step may have switched to merged cores (more params): retry those layers plain
            plain = {n: lp for n, r in step.items() if r is not None and (lp := planner.plain(by_name[n], r))}
            if plain:
                ok, plans, size = fits({**current, **step}, {**kept, **plain})
                kept |= plain
        if ok:
            current, override, best = {**current, **step}, kept, (plans, size)
        else:
            frozen |= step.keys()
    plans, bond_steps = grow_bonds(planner, targets, best[0]) if "latency" not in targets else (best[0], 0)
    size = planner.size(plans)
    capped_names = [n for n, limit in capped.limits.items() if limit < len(family.values) - 1 and n not in frozen]
    plans = [replace(lp, reason=MAC_CAP_NOTE) if lp.name in capped_names and lp.action == "compress" else lp
             for lp in plans]
    report = {
        "budget": str(budget),
        "base": base,
        "targets": {m: t if m == "latency" else round(t, 1) for m, t in targets.items()},
        "achieved": size,
        "fractions": {m: size[m] / base[m] for m in METRICS if base[m]},
        "of_target": {m: size[m] / t for m, t in targets.items()},
        "knob_only": {"of_target": {m: knob_only[m] / t for m, t in targets.items()}, "achieved": knob_only},
        "fill_frozen": sorted(frozen),
        "fill_bond_steps": bond_steps,
        "mac_capped": capped_names,
        "evaluations": planner.evaluations - evaluations,
        "candidates": len(family.values),
    }
    if exact:
        report["exact"] = exact
    if planner.latency is not None:
        report["latency"] = planner.latency.report(plans, targets.get("latency"))
    return Solution(plans, family.knob, family.values[lo], report)
