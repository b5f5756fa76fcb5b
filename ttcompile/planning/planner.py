"""The Planner: a format's cost of per-layer rank choices (cached), with the budgeted and skipped layers."""

from __future__ import annotations

from ttcompile.errors import UserError
from ttcompile.layers import Layer
from ttcompile.passes.base import Format
from ttcompile.planning.latency import GUARD_REASONS, LatencyBudget
from ttcompile.planning.plan import LayerPlan, layer_plan


class Planner:
    """Costs rank choices for one format (cached), splitting layers into budgeted and skipped ones."""

    def __init__(self, layers: list[Layer], fmt: Format, modes: dict[str, dict] | None = None,
                 allow_more_macs: bool = False, latency: LatencyBudget | None = None):
        self.fmt, self.allow_more_macs, self.latency = fmt, allow_more_macs, latency
        self.layers = layers
        self.skipped = {layer.name: layer.skip or fmt.supports(layer) for layer in layers}
        self.active = [layer for layer in layers if not self.skipped[layer.name]]
        if not self.active:
            raise UserError(f"no layer can be rewritten with format {fmt.name}")
        try:
            self.modes = {lay.name: (modes or {}).get(lay.name) or fmt.default_modes(lay) for lay in self.active}
            self.caps = {lay.name: fmt.max_ranks(lay, self.modes[lay.name]) for lay in self.active}
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self._cache: dict[tuple[str, tuple[int, ...]], LayerPlan] = {}
        self._guarded: dict[tuple[str, tuple[int, ...]], LayerPlan] = {}
        self._plain: dict[tuple[str, tuple[int, ...]], LayerPlan | None] = {}
        self.evaluations = 0

    def format_of(self, layer: Layer) -> Format:
        """The format ``layer``'s plans name (the planner's format; per layer in ``MixedPlanner``)."""
        return self.fmt

    def layer(self, layer: Layer, ranks: list[int] | None, measure: bool = True) -> LayerPlan:
        """Plan of one budgeted layer at ``ranks`` (None: dense); compress only where it pays (``layer_plan``, then
        with a latency table ``LatencyBudget.guard`` unless ``measure=False``: the cost model alone, untimed)."""
        if ranks is None:
            return LayerPlan(layer, "dense", reason="the allocator keeps it dense")
        ranks = self.fmt.snap_ranks(layer, self.modes[layer.name], ranks)  # e.g. multiples of t for STP
        key = (layer.name, tuple(ranks))
        if key not in self._cache:
            self._cache[key] = layer_plan(layer, self.format_of(layer), ranks, self.modes[layer.name],
                                          allow_more_macs=self.allow_more_macs)
        if not measure or self.latency is None:
            return self._cache[key]
        if key not in self._guarded:
            self._guarded[key] = self.latency.guard(self._cache[key])
        return self._guarded[key]

    def faster(self, layer: Layer, ranks: list[int]) -> bool:
        """False when the measured guard keeps ``layer`` dense at ``ranks`` (always True without a table)."""
        lp = self.layer(layer, ranks)
        return lp.action == "compress" or not (lp.reason or "").startswith(GUARD_REASONS)

    def plain(self, layer: Layer, ranks: list[int]) -> LayerPlan | None:
        """Plan at ``ranks`` in the fastest realization storing no more than the plain chain (the format's
        first candidate): the fallback where the realized one (merged cores, up to 1.5x the plain params)
        overshoots. None when that is the realized one already or it is no valid rewrite (saves no params,
        or needs more MACs than dense unless ``allow_more_macs``)."""
        ranks = self.fmt.snap_ranks(layer, self.modes[layer.name], ranks)
        key = (layer.name, tuple(ranks))
        if key not in self._plain:
            self._plain[key] = self._plain_plan(layer, ranks)
        return self._plain[key]

    def _plain_plan(self, layer: Layer, ranks: list[int]) -> LayerPlan | None:
        modes = self.modes[layer.name]
        options = self.fmt.options(layer, modes)
        if len(options) < 2:
            return None  # a single realization: nothing to fall back to
        realized = self.layer(layer, ranks)
        if realized.params is None or realized.params <= self.fmt.cost(layer, modes, ranks, options[0]).params:
            return None  # the realized form is among those below and the fastest: no fallback
        costs = [self.fmt.cost(layer, modes, ranks, o) for o in options]
        best = min((c.speed_score, c.params, i) for i, c in enumerate(costs) if c.params <= costs[0].params)[2]
        cost = costs[best]
        if options[best] == realized.options or cost.params >= layer.params:
            return None
        if layer.macs is not None and cost.macs > layer.macs and not self.allow_more_macs:
            return None
        lp = LayerPlan(layer, "compress", self.format_of(layer).name, modes, list(ranks), options[best], cost.params,
                       cost.macs)
        lp = self.latency.guard(lp) if self.latency else lp
        return lp if lp.action == "compress" else None

    def plan(self, ranks: dict[str, list[int] | None]) -> list[LayerPlan]:
        """LayerPlans of all layers in order (skipped ones as ``skip``)."""
        self.evaluations += 1
        return [LayerPlan(lay, "skip", reason=self.skipped[lay.name]) if self.skipped[lay.name]
                else self.layer(lay, ranks[lay.name]) for lay in self.layers]

    def base(self) -> dict[str, float | None]:
        """Dense params/MACs of the budgeted layers (MACs None when any is unknown), model latency (or None)."""
        macs = [lay.macs for lay in self.active]
        return {"params": sum(lay.params for lay in self.active), "macs": None if None in macs else sum(macs),
                "latency": self.latency.model_ms if self.latency else None}

    def size(self, plans: list[LayerPlan]) -> dict[str, float]:
        """Params and MACs of the budgeted layers of ``plans`` (compressed: cost model; dense: as is), with a
        latency table the predicted model latency (``LatencyBudget.predict``)."""
        kept = [lp for lp in plans if lp.action != "skip"]
        comp = [lp.action == "compress" for lp in kept]
        size = {"params": sum(lp.params if c else lp.layer.params for lp, c in zip(kept, comp)),
                "macs": sum((lp.macs if c else lp.layer.macs) or 0 for lp, c in zip(kept, comp))}
        if self.latency is not None:
            size["latency"] = self.latency.predict(kept)
        return size
