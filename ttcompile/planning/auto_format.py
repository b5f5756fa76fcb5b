"""``--format auto``: per layer, the registered format that best approximates the weight within a budget.

For every candidate format the layer supports, the largest uniform rank whose realized chain fits the
parameter budget (and, unless allowed, the layer's dense MACs) is decomposed; the format with the
lowest relative reconstruction error ``||W - W_hat|| / ||W||`` wins. Ties (e.g. svd, tucker and cp
are the same two-factor form on Gemm/MatMul) go to the faster chain (``Cost.speed_score``), then to
the earlier format in ``PREFERENCE`` order.

Uniform ranks of ``ALIGN`` or more are taken in multiples of ``ALIGN`` (a cap reached by clipping
counts as aligned): ONNX Runtime inserts layout reorders around channel counts that are not
multiples of 16 (performance.md, finding 7), and svd/tucker/cp/TT-conv ranks are channel counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from ttcompile.errors import OptionError, opt
from ttcompile.layers import Layer, dense_weight
from ttcompile.passes import FORMATS, Format, get_format
from ttcompile.planning.plan import LayerPlan, Plan, layer_plan
from ttcompile.sources import ModelId, model_id

ALIGN = 16
PREFERENCE = ("svd", "tucker", "cp", "tt")  # tie-break order; other registered formats follow by name


class Choice(NamedTuple):
    format: str
    modes: dict
    ranks: list[int]
    error: float


def default_formats() -> list[str]:
    """Every registered format, in ``PREFERENCE`` order then by name."""
    return [f for f in PREFERENCE if f in FORMATS] + sorted(set(FORMATS) - set(PREFERENCE))


def largest_fitting_ranks(
    fmt: Format, layer: Layer, modes: dict, param_budget: float, max_macs: int | None = None, align: int = ALIGN
) -> list[int] | None:
    """Uniform ranks with the largest rank (aligned, see module doc) whose realized params fit
    ``param_budget`` and MACs fit ``max_macs``; None when rank 1 does not fit."""
    top = max(fmt.max_ranks(layer, modes))
    best = None
    for r in range(1, -(-top // align) * align + 1):
        if r >= align and r % align:
            continue
        ranks = fmt.uniform_ranks(layer, modes, r)
        cost = fmt.cost(layer, modes, ranks)
        if cost.params <= param_budget and (max_macs is None or cost.macs <= max_macs):
            best = ranks
    return best


def relative_error(fmt: Format, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> float:
    """``||W - W_hat|| / ||W||`` of the format's decomposition at ``ranks``."""
    w_hat = fmt.reconstruct(fmt.decompose(weight, layer, modes, ranks), layer, modes)
    return float(np.linalg.norm(w_hat - weight) / max(np.linalg.norm(weight), 1e-30))


def choose_format(
    layer: Layer,
    weight: np.ndarray,
    param_budget: float,
    formats: list[str],
    *,
    max_macs: int | None = None,
    align: int = ALIGN,
) -> Choice | None:
    """Lowest-error format among ``formats`` whose chain fits the budget at its largest uniform rank.

    ``weight`` is the canonical dense weight (``(out, in)`` or ``(O, C, *k)``); ``param_budget``
    counts what ``Format.cost`` counts (cores and bias). None when no format fits at rank 1.
    """
    scored = []
    for index, name in enumerate(formats):
        fmt = get_format(name)
        if fmt.supports(layer):
            continue
        modes = fmt.default_modes(layer)
        ranks = largest_fitting_ranks(fmt, layer, modes, param_budget, max_macs, align)
        if ranks is None:
            continue
        error = relative_error(fmt, weight, layer, modes, ranks)
        speed = fmt.cost(layer, modes, ranks).speed_score
        scored.append(((error, speed, index), Choice(name, modes, ranks, error)))
    return min(scored, key=lambda s: s[0])[1] if scored else None


def _smallest_rank1_params(layer: Layer, formats: list[str]) -> float:
    """Fewest params any candidate format needs at rank 1 (the fallback budget when nothing fits)."""
    fmts = [get_format(f) for f in formats]
    return min(
        fmt.cost(layer, modes, fmt.uniform_ranks(layer, modes, 1)).params
        for fmt, modes in ((f, f.default_modes(layer)) for f in fmts)
    )


def _auto_layer_plan(model: ir.Model, layer: Layer, ratio: float, formats: list[str], force: bool,
                     allow_more_macs: bool, align: int) -> LayerPlan:
    candidates = [f for f in formats if get_format(f).supports(layer) is None]
    if layer.skip or not candidates:
        return LayerPlan(layer, "skip", reason=layer.skip or f"no format of {formats} handles {layer.kind} layers")
    weight, _ = dense_weight(model, layer)
    max_macs = None if allow_more_macs else layer.macs
    choice = choose_format(layer, weight, ratio * layer.params, candidates, max_macs=max_macs, align=align)
    if choice is None:  # like ranks_for_ratio: the most compressed form, which layer_plan may keep dense
        choice = choose_format(layer, weight, _smallest_rank1_params(layer, candidates), candidates, align=align)
    lp = layer_plan(layer, get_format(choice.format), choice.ranks, choice.modes, force=force,
                    allow_more_macs=allow_more_macs)
    lp.error = choice.error
    return lp


def make_auto_plan(
    model: ir.Model,
    layers: list[Layer],
    *,
    ratio: float,
    formats: list[str] | None = None,
    force: bool = False,
    allow_more_macs: bool = False,
    model_path: str | Path | ModelId,
    align: int = ALIGN,
) -> Plan:
    """Plan every layer with its best format (``choose_format``) at ``ratio`` of its dense params.

    ``formats`` defaults to every registered format. A layer where no format fits even at rank 1 gets
    the candidate with the fewest rank-1 params; ``layer_plan`` then decides compress vs dense as for
    a single-format plan. The chosen format's reconstruction error is recorded in ``LayerPlan.error``.
    """
    if not 0 < ratio <= 1:
        raise OptionError(f"{opt('ratio')} {ratio} is outside (0, 1]")
    formats = list(formats) if formats else default_formats()
    unknown = [f for f in formats if f not in default_formats()]
    if unknown:
        raise OptionError(f"unknown {opt('formats')} {', '.join(unknown)}; registered: {', '.join(default_formats())}")
    settings = {"format": "auto", "formats": formats, "rank": None, "ratio": ratio, "force": force,
                "allow_more_macs": allow_more_macs, "align": align}
    mid = model_id(model_path)
    plan = Plan(mid.name, mid.sha256, settings)
    for layer in layers:
        plan.layers.append(_auto_layer_plan(model, layer, ratio, formats, force, allow_more_macs, align))
    return plan
