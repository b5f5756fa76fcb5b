"""One multiplier over many cost/damage curves: ``argmin_i [w d_i + lambda c_i]`` on each lower convex hull.

A layer's candidates are points ``(c_i, d_i)`` (cost, weighted damage). For a multiplier ``lambda > 0``
the minimiser of ``d + lambda c`` is a vertex of the lower-left convex hull. We parametrise by
``t = 1 / lambda`` (``t = 0``: the cheapest point, ``t -> inf``: the least damaging), so the family runs
from the most to the least compressed: vertex ``k`` of the hull is chosen for ``t_k <= t < t_{k+1}``
with breakpoints ``t_k = (c_k - c_{k-1}) / (d_{k-1} - d_k)``, increasing along a convex hull.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class Hull:
    """Vertices (cheapest first, damage falling) and the breakpoints ``t_k`` where each takes over."""

    keys: list[Hashable]
    costs: list[float]
    damages: list[float]
    breakpoints: list[float]  # breakpoints[k - 1] = t_k for vertex k >= 1

    def choose(self, t: float) -> Hashable:
        """Key of the vertex minimising ``t * d + c`` (ties: the cheaper one)."""
        return self.keys[bisect_right(self.breakpoints, t)]


def lower_hull(points: list[tuple[float, float, Hashable]]) -> Hull:
    """Hull of ``(cost, damage, key)`` points: only those optimal for some ``t >= 0`` (at least one point)."""
    if not points:
        raise ValueError("a hull needs at least one point")
    pts = sorted(points, key=lambda p: (p[0], p[1]))
    front = []  # strictly falling damage as cost grows
    for p in pts:
        if not front or p[1] < front[-1][1]:
            front.append(p)
    hull: list[tuple[float, float, Hashable]] = []
    for p in front:  # monotone chain: drop vertices above the segment to the new point
        while len(hull) >= 2:
            (c1, d1, _), (c2, d2, _) = hull[-2], hull[-1]
            if (c2 - c1) * (p[1] - d1) - (d2 - d1) * (p[0] - c1) <= 0:  # hull[-1] not strictly below
                hull.pop()
            else:
                break
        hull.append(p)
    bps = [(c - pc) / (pd - d) for (pc, pd, _), (c, d, _) in zip(hull, hull[1:])]
    return Hull([k for _, _, k in hull], [c for c, _, _ in hull], [d for _, d, _ in hull], bps)
