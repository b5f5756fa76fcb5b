"""Exact multiple-choice knapsack: one option per group, least total damage within per-metric capacities.

Used by the LWIQ allocator after its one-multiplier solve: the multiplier only reaches the vertices of each
layer's lower convex hull, and at tight budgets the best feasible combination often uses points between
them. Dynamic programming over a cost grid: each metric's capacity is split into ``grid`` units, option
costs are rounded to the nearest unit (so the caller checks the true sizes and may retry with less),
``O(groups * options * grid^metrics)``.
"""

from __future__ import annotations

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
