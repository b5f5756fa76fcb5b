"""``--allocator datafree``: data-free continuous rank search on a composite compression loss.

Our own formulation after the unified-framework seed (Aghababaei-Harandi & Amini, arXiv 2409.03555),
whose loss and relaxation are not public (methods.md §3): only "composite loss, continuous rank space,
no data, CP and Tucker" is theirs; everything below is ours.

**Error model (per layer, per format; no data).** A decomposition's relative squared weight error is
modelled by *cuts*: a cut ``c`` is an unfolding of the weight whose rank the format bounds by the
product of some bonds ``B_c``, and ``d_{c,i}`` is the share of ``||W||^2`` its ``i``-th direction
carries (``sigma_i^2 / ||W||^2``). Truncating the cut at rank ``q`` keeps ``kept_c(q) = sum_{i<=q}
d_{c,i}``; the layer error is ``E(r) = 1 - prod_c kept_c(prod_{k in B_c} r_k)``: to first order the
sum of the cuts' tails (the TT-SVD bound of Oseledets; for Tucker-2 the HOSVD bound), and the energy
left by independent projections when the tails are large. On LeNet-5 and ResNet-20 TT layers at
random ranks it is 0.01-0.1 above the true TT-SVD error, where the additive bound exceeds 1.

* ``tt``: cut k = unfolding ``(n_1..n_k) x (n_{k+1}..n_d)`` of the TT tensor, bonds ``{k}``;
* ``tr``: cut after core k, bonds ``{k, ring}`` (TR-SVD splits the ring rank off the first cut; a proxy);
* ``tucker`` conv: the mode-O and mode-C unfoldings, bonds ``{R_out}``, ``{R_in}``; the two-factor
  form (svd, and tucker/cp on Gemm/MatMul): the SVD of ``W (out, in K)``;
* ``cp`` conv: CP has no spectrum, so its error curve is *measured*: CP-ALS (``Format.decompose``)
  at ``CP_GRID`` fractions of the rank where CP stops saving params, ``d_i`` = the error drop between
  consecutive ranks (linear between grid points), one cut with bond ``{R}``; no drops past the last
  grid rank (half the break-even rank), so the search does not grow R beyond it.

**Damage.** A layer's damage is ``D(r) = -log(1 - E(r)) = -sum_c log kept_c``: the signal energy a
layer keeps multiplies along the network, so ``sum_l D_l`` is minus the log of the energy the whole
network keeps (a data-free output proxy under white inputs). Unlike ``E`` it does not saturate near
1, so no layer is written off at its minimum while others stay nearly exact (with ``E`` itself,
LeNet-5 at 1/20 left its large FC at rank 1: 0.886 after one epoch of distillation, uniform 0.970).

**Continuous relaxation.** Free bonds (cap > 1) get log-ranks ``z_k``, ``r_k = exp z_k`` in
``[floor_k, cap_k]``, ``floor_k = min(2, cap_k)`` (a bond is never cut to rank 1 above the layer's
minimum). A cut's rank is a smooth cut-off over its directions: sigmoid masks ``m_{c,i} =
sigmoid((sum_{k in B_c} z_k - log(i - 1/2)) / tau)``, ``D~(z) = -sum_c log sum_i d_{c,i} m_{c,i}``,
annealed from ``TAU[0]`` to ``TAU[1]`` (at tau -> 0, ``D~ = D`` at integer ranks). The relaxed cost
``C~_m(r)`` (m = params, MACs) is the multilinear interpolation of the format's own cost model
(plain chain, ``Format.cost``) over the rank box ``[1, cap]^K``; TT, TR, Tucker-2, CP and the
two-factor form are multilinear in their ranks, so ``C~`` is exact at every integer rank.

**Composite loss and the knob.** The loss is ``L = sum_l D~_l + mu sum_m (C~_m / T_m - 1)_+`` for
the budgeted metrics. The hinge is an exact penalty: for mu above the constraint's multiplier its
minimisers are those of the Lagrangian ``sum_l [t D~_l + sum_m C~_{l,m} / base_m]`` at the multiplier
(t = 1/lambda), which separates over layers. We bisect that one global knob t over a grid
(quantiles of the per-direction break-even values ``dC/dr / d_{c,i}``) through ``budget.solve``, so
the realized (integer, realization-aware, MAC-capped) plan meets the budget like the other allocators;
a hinge weight as the knob would stop moving once the relaxed cost meets the target, which the
rounded plan need not. With params and MACs both budgeted, both costs enter the Lagrangian (as in
lwiq), also when one of them is slack. Per layer and t: ``ADAM_STEPS`` projected Adam steps on z
from the geometric mid-rank, rounding, coordinate descent on the exact integer objective (+-1 per
bond), then the best of that, the layer's minimum (rank 1 everywhere) and dense (no damage, dense cost).
With ``--format auto`` see ``ttcompile.planning.datafree_mix`` (CP/Tucker-2 chosen per layer on the same loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from math import prod

import numpy as np

from ttcompile.errors import UserError
from ttcompile.layers import Layer, dense_weight
from ttcompile.passes.base import Format
from ttcompile.planning.auto_format import relative_error
from ttcompile.planning.budget import Budget, Family
from ttcompile.planning.planner import Planner

TAU = (0.5, 0.03)  # sigmoid temperature in log-rank units, annealed geometrically
ADAM_STEPS, ADAM_LR = 80, (0.15, 0.01)  # steps, learning rate on log-ranks (decayed geometrically)
CP_GRID = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # of the rank where CP stops saving params; the last is the cap
N_VALUES = 96  # knob values (quantiles of the break-even values)
MAX_FREE_BONDS = 10  # 2^K cost-model corners per layer
KEPT_FLOOR = 1e-9  # kept energy share below which a cut counts as empty (D stays finite)


@dataclass
class LayerModel:
    """One layer in one format: free bonds, cuts, and the cost model at the rank box's corners."""

    layer: Layer
    fmt: Format
    modes: dict
    caps: list[int]
    free: list[int]  # indices into ranks of the bonds with cap > 1
    members: np.ndarray  # (cuts, K) bool: bond k bounds cut c
    drops: np.ndarray  # (cuts, L) d_{c,i}, zero padded
    corner_cost: np.ndarray  # (2^K, 2) params, MACs of the plain chain at ranks 1 / cap
    dense_cost: np.ndarray  # (2,) params, MACs of the dense layer
    lo: np.ndarray = field(init=False)  # (K,) rank floors of the free bonds
    hi: np.ndarray = field(init=False)  # (K,) their caps

    def __post_init__(self):
        self.hi = np.array([self.caps[k] for k in self.free], dtype=float)
        self.lo = np.minimum(2.0, self.hi)

    def ranks(self, free: np.ndarray) -> list[int]:
        out = list(self.caps)
        for k, r in zip(self.free, free):
            out[k] = int(r)
        return out


def _drops(matrix: np.ndarray, norm2: float) -> np.ndarray:
    """Squared singular values of ``matrix`` (descending) as shares of ``norm2``."""
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None) / norm2


def _cp_drops(fmt: Format, weight: np.ndarray, layer: Layer, modes: dict, cap: int) -> np.ndarray:
    """Measured CP error drops per rank up to where CP stops saving params (linear between grid ranks)."""
    useful = max(r for r in range(1, cap + 1) if r == 1 or fmt.cost(layer, modes, [r]).params < layer.params)
    grid = sorted({max(1, round(f * useful)) for f in CP_GRID})
    errors = [1.0] + [relative_error(fmt, weight, layer, modes, [r]) ** 2 for r in grid]
    errors = np.minimum.accumulate(errors)  # more components never fit worse
    curve = np.interp(np.arange(grid[-1] + 1), [0, *grid], errors)
    return -np.diff(curve)


def _cuts(fmt: Format, weight: np.ndarray, layer: Layer, modes: dict, caps: list[int]
          ) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """(bonds as indices into ranks, drops) of every cut of the format's error model."""
    w = np.asarray(weight, dtype=np.float64)
    norm2 = max(float(np.sum(w**2)), 1e-300)
    if fmt.name == "tt":
        t = fmt.tensor(w, layer, modes)
        return [((k,), _drops(t.reshape(prod(t.shape[:k]), -1), norm2)) for k in range(1, len(caps) - 1)]
    if fmt.name == "tr":
        t, d = fmt.tensor(w, layer, modes), len(caps)
        return [((k, d - 1), _drops(t.reshape(prod(t.shape[:k + 1]), -1), norm2)) for k in range(d - 1)]
    if fmt.name == "cp" and layer.kind == "conv":
        return [((0,), _cp_drops(fmt, w, layer, modes, caps[0]))]
    if fmt.name == "tucker" and layer.kind == "conv":
        o, c = layer.out_features, layer.in_features
        return [((0,), _drops(w.reshape(o, -1), norm2)), ((1,), _drops(np.moveaxis(w, 1, 0).reshape(c, -1), norm2))]
    if fmt.name in ("svd", "tucker", "cp"):
        return [((0,), _drops(w.reshape(layer.out_features, -1), norm2))]
    raise UserError(f"the datafree allocator has no error model for format {fmt.name} (it has tt, tr, tucker, "
                    "cp, svd)")


def layer_model(fmt: Format, weight: np.ndarray, layer: Layer, modes: dict) -> LayerModel:
    caps = fmt.max_ranks(layer, modes)
    free = [k for k, cap in enumerate(caps) if cap > 1]
    if len(free) > MAX_FREE_BONDS:
        raise UserError(f"{layer.name}: {len(free)} free bonds, the datafree cost model handles {MAX_FREE_BONDS}")
    cuts = [([free.index(k) for k in bonds if k in free], d) for bonds, d in _cuts(fmt, weight, layer, modes, caps)]
    cuts = [(b, d) for b, d in cuts if b and len(d)]
    members = np.zeros((len(cuts), len(free)), dtype=bool)
    drops = np.zeros((len(cuts), max((len(d) for _, d in cuts), default=1)))
    for c, (bonds, d) in enumerate(cuts):
        members[c, bonds], drops[c, :len(d)] = True, d
    plain = fmt.options(layer, modes)[0]
    corners = []
    for bits in product((0, 1), repeat=len(free)):
        cost = fmt.cost(layer, modes, [caps[k] if k in free and bits[free.index(k)] else 1 if k in free else caps[k]
                                       for k in range(len(caps))], plain)
        corners.append((cost.params, cost.macs))
    return LayerModel(layer, fmt, modes, caps, free, members, drops, np.array(corners, dtype=float),
                      np.array([layer.params, layer.macs or 0], dtype=float))


def _products_without(f: np.ndarray) -> np.ndarray:
    """``out[i, k] = prod_{j != k} f[i, j]`` (prefix times suffix products, no division)."""
    ones = np.ones((len(f), 1))
    before = np.hstack([ones, np.cumprod(f, 1)[:, :-1]])
    after = np.hstack([np.cumprod(f[:, ::-1], 1)[:, ::-1][:, 1:], ones])
    return before * after


class Objective:
    """``t D(r) + sum_m C_m(r) w_m`` of one layer (``w_m`` = 1 / base of metric m), relaxed and exact."""

    def __init__(self, model: LayerModel, weights: np.ndarray):
        self.m = model
        self.cc = model.corner_cost @ weights  # (2^K,) weighted cost at the corners
        self.dense = float(model.dense_cost @ weights)
        self.bits = np.array(list(product((0, 1), repeat=len(model.free))), dtype=bool).reshape(-1, len(model.free))
        self.sign = np.where(self.bits, 1.0, -1.0)
        idx = np.arange(1, model.drops.shape[1] + 1)
        self.log_half = np.log(idx - 0.5)  # direction i is kept when log q > log(i - 1/2)
        self.kept = np.cumsum(model.drops, 1)  # kept[c, q - 1]: energy share of cut c kept at rank q

    def factors(self, r: np.ndarray) -> np.ndarray:
        """(2^K, K) per-corner interpolation factors at free ranks r (their row products are the weights)."""
        u = (r - 1) / (self.m.hi - 1)
        return np.where(self.bits, u, 1 - u)

    def size(self, r: np.ndarray) -> np.ndarray:
        """Relaxed (params, MACs) at free ranks r."""
        return np.prod(self.factors(r), 1) @ self.m.corner_cost

    def cost(self, r: np.ndarray) -> tuple[float, np.ndarray]:
        """Multilinear weighted cost and its gradient in r."""
        f = self.factors(r)
        grad = ((_products_without(f) * self.sign).T @ self.cc) / (self.m.hi - 1)
        return float(np.prod(f, 1) @ self.cc), grad

    def relaxed(self, z: np.ndarray, t: float, tau: float) -> tuple[float, np.ndarray]:
        """Relaxed objective and gradient in the log-ranks z."""
        zeta = self.m.members @ z  # (cuts,) log rank of each cut
        x = (zeta[:, None] - self.log_half[None, :]) / tau
        mask = 0.5 * (1 + np.tanh(x / 2))
        kept = np.maximum(np.sum(self.m.drops * mask, 1), KEPT_FLOOR)  # (cuts,)
        dkept = np.sum(self.m.drops * mask * (1 - mask), 1) / tau
        r = np.exp(z)
        c, dc = self.cost(r)
        return -t * np.sum(np.log(kept)) + c, -t * (self.m.members.T @ (dkept / kept)) + dc * r

    def kept_energy(self, r: np.ndarray) -> np.ndarray:
        """Modelled kept energy share of every cut at integer free ranks r."""
        q = np.exp(self.m.members @ np.log(r)).round().astype(int)
        width = self.kept.shape[1]
        return np.maximum([self.kept[c, min(qc, width) - 1] for c, qc in enumerate(q)], KEPT_FLOOR)

    def error(self, r: np.ndarray) -> float:
        """Modelled relative squared error ``E = 1 - prod_c kept_c`` at integer free ranks r."""
        return 1.0 - float(np.prod(self.kept_energy(r)))

    def exact(self, r: np.ndarray, t: float) -> float:
        """``t D + C`` at integer free ranks, ``D = -log(1 - E)``."""
        return -t * float(np.sum(np.log(self.kept_energy(r)))) + self.cost(r)[0]


def damage(model: LayerModel, ranks: list[int]) -> float:
    """Modelled damage ``D = -log(1 - E)`` of ``model``'s layer at full ``ranks`` (as ``LayerModel.ranks`` gives)."""
    obj = Objective(model, np.zeros(2))
    return -float(np.sum(np.log(obj.kept_energy(np.array([ranks[k] for k in model.free], dtype=float)))))


def optimise(obj: Objective, t: float) -> np.ndarray | None:
    """Best free ranks at knob ``t`` (None: dense); see the module docstring."""
    m = obj.m
    lo, hi = m.lo, m.hi
    ones = np.ones_like(lo)
    options: list[tuple[float, int, np.ndarray | None]] = [(obj.exact(ones, t), 0, ones), (obj.dense, 2, None)]
    if np.any(hi > 1) and t > 0:
        z, zlo, zhi = (np.log(lo) + np.log(hi)) / 2, np.log(lo), np.log(hi)
        mom, var = np.zeros_like(z), np.zeros_like(z)
        for step in range(ADAM_STEPS):
            frac = step / max(ADAM_STEPS - 1, 1)
            tau = TAU[0] * (TAU[1] / TAU[0]) ** frac
            lr = ADAM_LR[0] * (ADAM_LR[1] / ADAM_LR[0]) ** frac
            _, g = obj.relaxed(z, t, tau)
            mom, var = 0.9 * mom + 0.1 * g, 0.999 * var + 0.001 * g * g
            z = np.clip(z - lr * (mom / (1 - 0.9 ** (step + 1))) / (np.sqrt(var / (1 - 0.999 ** (step + 1))) + 1e-12),
                        zlo, zhi)
        r = np.clip(np.floor(np.exp(z) + 0.5), lo, hi)
        best = obj.exact(r, t)
        for _ in range(3):  # coordinate descent on the exact integer objective
            moved = False
            for k in range(len(r)):
                for step in (-1, 1):
                    cand = r.copy()
                    cand[k] = min(max(cand[k] + step, lo[k]), hi[k])
                    if (v := obj.exact(cand, t)) < best - 1e-15:
                        r, best, moved = cand, v, True
            if not moved:
                break
        options.append((best, 1, r))
    return min(options, key=lambda o: (o[0], o[1]))[2]


def metric_weights(budget: Budget, base: dict) -> np.ndarray:
    """1 / base per budgeted metric (params only when nothing else is), as the cost term's weights."""
    w = [1.0 / base[m] if getattr(budget, m) is not None and base[m] else 0.0 for m in ("params", "macs")]
    return np.array(w) if any(w) else np.array([1.0 / base["params"], 0.0])


def knob_values(objectives: list[Objective]) -> list[float]:
    """0, then ``N_VALUES`` quantiles of the break-even values ``dC/dr / d_{c,i}``, then past the last."""
    ratios = []
    for obj in objectives:
        m = obj.m
        mid = np.sqrt(m.lo * m.hi)
        _, grad = obj.cost(mid)
        for c in range(len(m.members)):
            bonds = np.flatnonzero(m.members[c])
            g = min(grad[k] / np.prod(np.delete(mid, k)[np.delete(m.members[c], k)]) for k in bonds)
            d = m.drops[c][m.drops[c] > 1e-12]
            ratios.extend(max(g, 1e-30) / d)
    if not ratios:
        return [0.0]
    q = np.quantile(np.log(ratios), np.linspace(0, 1, N_VALUES))
    return [0.0, *sorted({float(v) for v in np.exp(q)}), float(np.exp(q[-1])) * 16]


def family(models: dict[str, LayerModel], planner: Planner, budget: Budget) -> Family:
    """The knob family of ``models`` (one per budgeted layer) for ``budget`` (it depends only on which
    metrics are budgeted, see ``cached_families``)."""
    weights = metric_weights(budget, planner.base())
    objectives = {n: Objective(m, weights) for n, m in models.items()}
    cache: dict[tuple[str, float], list[int] | None] = {}

    def rank(name: str, t: float) -> list[int] | None:
        if (name, t) not in cache:
            r = optimise(objectives[name], t)
            cache[name, t] = None if r is None else models[name].ranks(r)
        return cache[name, t]

    return Family("t", knob_values(list(objectives.values())), rank)


def cached_families(models: dict[str, LayerModel], planner: Planner) -> Callable[[Budget], Family]:
    """``family`` for a budget, one per set of budgeted metrics (its per-layer optima are reused)."""
    families: dict[tuple[bool, bool], Family] = {}

    def for_budget(budget: Budget) -> Family:
        key = (budget.params is not None, budget.macs is not None)
        if key not in families:
            families[key] = family(models, planner, budget)
        return families[key]

    return for_budget


def layer_models(model, planner: Planner) -> dict[str, LayerModel]:
    """Error/cost models of the planner's budgeted layers in its format."""
    return {lay.name: layer_model(planner.fmt, dense_weight(model, lay)[0], lay, planner.modes[lay.name])
            for lay in planner.active}


DATAFREE_MAPPING = ("r_l(t) = argmin over {minimum, relaxed optimum rounded + integer descent, dense} of "
                    "t D_l(r) + sum_m C_{l,m}(r) / base_m; D = -log(1 - E), E = modelled truncation error "
                    "(cuts), C = multilinear plain-chain cost; knob t = 1 / lambda")


def settings_info() -> dict:
    """What the plan records about the search's constants."""
    return {"mapping": DATAFREE_MAPPING, "datafree": {"tau": list(TAU), "adam_steps": ADAM_STEPS,
                                                      "adam_lr": list(ADAM_LR), "cp_grid": list(CP_GRID),
                                                      "knob_values": N_VALUES}}
