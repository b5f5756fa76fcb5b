"""The exact multiple-choice knapsack and its use by the LWIQ allocator."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_budget import fake_analysis, mlp  # noqa: F401  (fixture)

from ttcompile.analysis.sensitivity import Curve
from ttcompile.passes.base import get_format
from ttcompile.planning import knapsack
from ttcompile.planning.allocators import Context, search
from ttcompile.planning.budget import Budget
from ttcompile.sources import file_sha256


def brute_force(groups, capacity):
    best = None
    for combo in itertools.product(*[range(len(g)) for g in groups]):
        costs = [sum(groups[g][i][0][m] for g, i in enumerate(combo)) for m in range(len(capacity))]
        if all(c <= cap for c, cap in zip(costs, capacity)):
            damage = sum(groups[g][i][1] for g, i in enumerate(combo))
            if best is None or damage < best - 1e-12:
                best = damage
    return best


@pytest.mark.parametrize("metrics", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_brute_force(metrics, seed):
    rng = np.random.default_rng(seed)
    # integer costs on the grid, so rounding cannot matter: the optimum must be found exactly
    groups = [[(tuple(float(c) for c in rng.integers(0, 30, metrics)), float(rng.random())) for _ in range(5)]
              for _ in range(4)]
    capacity = tuple(float(c) for c in rng.integers(20, 80, metrics))
    choice = knapsack.solve(groups, capacity, grid=int(capacity[0]) if metrics == 1 else None)
    want = brute_force(groups, capacity)
    if want is None:
        assert choice is None
        return
    assert choice is not None
    if metrics == 2:  # a coarse 2-D grid rounds costs: check feasibility on the true costs only loosely
        return
    got = sum(groups[g][i][1] for g, i in enumerate(choice))
    assert got == pytest.approx(want)
    assert sum(groups[g][i][0][0] for g, i in enumerate(choice)) <= capacity[0]


def test_knapsack_none_when_nothing_fits():
    assert knapsack.solve([[((5.0,), 0.0)], [((6.0,), 0.0)]], (10.0,)) is None


def test_lwiq_exact_step_beats_the_hull_on_a_non_convex_curve(mlp):  # noqa: F811
    """Two layers whose curves have a cheap, good point above their hull's chord: the multiplier cannot
    choose it, the exact step must, and the plan's damage must be the least over all feasible choices."""
    path, layers = mlp
    analysis = fake_analysis(path, layers, (1.0, 1.0, 1.0))
    ctx = Context(str(path), file_sha256(path), layers, get_format("tt"), allow_more_macs=True, analysis=analysis,
                  lwiq_damage="linear")  # damage = drop, so the brute force below sums the drops
    planner = search("lwiq", ctx).planner
    curves = analysis.curves["tt"]
    for lay in planner.active:  # make every curve non-convex: a bump in the middle
        pts = curves[lay.name].points
        for k, p in enumerate(pts):
            p.drop = 1.0 - k / len(pts) + (0.3 if k % 2 else 0.0)
        curves[lay.name] = Curve(lay.name, "tt", curves[lay.name].modes, 1.0, pts)
    s = search("lwiq", ctx)
    budget = Budget(params=0.2)
    plan = s.plan(budget)
    report = plan.settings["budget"]["exact"]
    assert report["damage"] is not None and report["knob_damage"] is not None
    assert report["damage"] <= report["knob_damage"] + 1e-12
    assert report["used"]  # and its choice is recorded: each compressed layer's ranks are it, or grown from it
    for lp in plan.layers:
        if lp.action == "compress":
            chosen = report["ranks"][lp.name]
            assert chosen is not None and all(a <= b for a, b in zip(chosen, lp.ranks)), (chosen, lp.ranks)
    # the exact damage is the least over all feasible measured choices (brute force on the true sizes)
    options = []
    for lay in planner.active:
        opts = [((float(lay.params),), 0.0)]
        for p in curves[lay.name].points:
            lp = planner.layer(lay, p.ranks)
            if lp.action == "compress":
                opts.append(((float(lp.params),), p.drop))
        options.append(opts)
    target = plan.settings["budget"]["targets"]["params"]
    assert report["damage"] == pytest.approx(brute_force(options, (target,)), abs=1e-9)
    assert plan.settings["budget"]["achieved"]["params"] <= target
