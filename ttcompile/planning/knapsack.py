"""Exact multiple-choice knapsack: one option per group, least total damage within per-metric capacities.

Used by the LWIQ allocator after its one-multiplier solve: the multiplier only reaches the vertices of each
layer's lower convex hull, and at tight budgets the best feasible combination often uses points between
them. Dynamic programming over a cost grid: each metric's capacity is split into ``grid`` units, option
costs are rounded to the nearest unit (so the caller checks the true sizes and may retry with less),
``O(groups * options * grid^metrics)``. ``exact_step`` is the budget solver's use of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

GRID = {1: 4000, 2: 200}  # units per metric, by number of budgeted metrics


def solve(options: list[list[tuple[tuple[float, ...], float]]], capacity: tuple[float, ...],
          grid: int | None = None) -> list[int] | None:
    """Index of one option per group minimising the summed damage with ``sum cost[m] <= capacity[m]``.

    ``options[g]``: ``(costs per metric, damage)`` of group g's options; ties go to the earlier option and
    then to the smaller total cost. None when no combination fits (on the grid).
    """
    dims = len(capacity)
    grid = grid or GRID.get(dims, 100)
    if any(c <= 0 for c in capacity):
        return None
    shape = (grid + 1,) * dims
    table = np.full(shape, np.inf)
    table[(0,) * dims] = 0.0
    back, weights = [], []
    for group in options:
        best = np.full(shape, np.inf)
        arg = np.full(shape, -1, dtype=np.int32)
        w = [tuple(int(round(c * grid / cap)) for c, cap in zip(cost, capacity)) for cost, _ in group]
        for i, ((_, damage), wi) in enumerate(zip(group, w)):
            if any(x > grid for x in wi):
                continue
            cand = table[tuple(slice(0, grid + 1 - x) for x in wi)] + damage
            dst = tuple(slice(x, grid + 1) for x in wi)
            view, arg_view = best[dst], arg[dst]
            better = cand < view
            view[better] = cand[better]
            arg_view[better] = i
        table = best
        back.append(arg)
        weights.append(w)
    if not np.isfinite(table).any():
        return None
    low = table.min()
    cells = np.argwhere(table <= low + 1e-12 * max(1.0, abs(low)))
    cell = tuple(cells[np.argmin(cells.sum(axis=1))])
    choice = []
    for arg, w in zip(reversed(back), reversed(weights)):
        i = int(arg[cell])
        choice.append(i)
        cell = tuple(c - x for c, x in zip(cell, w[i]))
    return choice[::-1]


class ExactSolver(Protocol):
    """Where a rank family's candidates carry a damage (LWIQ): the least-damage ranks within absolute
    size ``targets`` (None: nothing fits), and the damage of given ranks (None: not a measured candidate)."""

    def solve(self, targets: dict[str, float]) -> dict[str, list[int] | None] | None: ...

    def damage(self, ranks: dict[str, list[int] | None]) -> float | None: ...


EXACT_SHRINK = (1.0, 0.998, 0.99, 0.97)  # capacity fractions tried (costs are rounded to the grid)


def exact_step(solver: ExactSolver, targets: dict[str, float], fits: Callable, knob_ranks: dict) -> dict:
    """The solver's least-damage ranks in place of the knob's when they fit (``fits(ranks)`` ->
    (ok, plans, size)) and damage less. Returns a report: damages of both, the layers that changed, and
    (when used) the solver's ranks per layer (``ranks``, before the fill grows bonds) and ``best`` =
    (plans, size)."""
    knob_damage = solver.damage(knob_ranks)
    for shrink in EXACT_SHRINK:
        ranks = solver.solve({m: t * shrink for m, t in targets.items()})
        if ranks is None:
            continue
        ok, plans, size = fits(ranks)
        if ok:
            damage = solver.damage(ranks)
            used = knob_damage is None or damage < knob_damage - 1e-12
            out = {"used": used, "damage": damage, "knob_damage": knob_damage, "capacity_fraction": shrink,
                   "changed": sorted(n for n in ranks if ranks[n] != knob_ranks.get(n)) if used else []}
            return {**out, "ranks": ranks, "best": (plans, size)} if used else out
    return {"used": False, "damage": None, "knob_damage": knob_damage, "capacity_fraction": None, "changed": []}
