"""The Plan: per layer, the format, modes, ranks, realization and cost; saved as readable JSON.

The Plan is the contract between analysis (rank selection) and rewriting: ``compress --plan``
applies a saved plan exactly, and a person may edit its ``modes``/``ranks`` by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ttcompile.atomic import write_bytes_atomic
from ttcompile.errors import OptionError, UserError, opt
from ttcompile.jsonfile import load_json
from ttcompile.layers import Layer
from ttcompile.passes.base import Format, get_format
from ttcompile.sources import ModelId, model_id

PLAN_VERSION = 1


@dataclass
class LayerPlan:
    """What happens to one layer. ``action``: compress | dense (kept, would not pay) | skip (cannot)."""

    layer: Layer
    action: str
    format: str | None = None
    modes: dict | None = None
    ranks: list[int] | None = None
    options: dict | None = None
    params: int | None = None  # after rewriting (cost model)
    macs: int | None = None  # per sample after rewriting (cost model)
    reason: str | None = None
    score: float | None = None  # layer importance from the allocator, when there is one
    error: float | None = None  # relative reconstruction error, filled in by compress

    @property
    def name(self) -> str:
        return self.layer.name

    def to_json(self) -> dict:
        d = asdict(self)
        d["layer"] = self.layer.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> LayerPlan:
        check_types(d, _LAYER_PLAN_TYPES, "layer entry")
        check_types(d["layer"], _LAYER_TYPES, f"layer {d['layer'].get('name')!r}")
        return cls(**{**d, "layer": Layer.from_json(d["layer"])})


_NUM, _INT, _STR, _NONE = (int, float), (int,), (str,), (type(None),)
_LAYER_PLAN_TYPES = {"layer": (dict,), "action": _STR, "format": _STR + _NONE, "modes": (dict,) + _NONE,
                     "ranks": (list,) + _NONE, "options": (dict,) + _NONE, "params": _INT + _NONE,
                     "macs": _INT + _NONE, "reason": _STR + _NONE, "score": _NUM + _NONE, "error": _NUM + _NONE}
_LAYER_TYPES = {"name": _STR, "kind": _STR, "op_type": _STR, "weight": _STR, "weight_shape": (list,),
                "out_features": _INT, "in_features": _INT, "kernel": (list,), "rows": _INT,
                "in_spatial": (list,) + _NONE, "out_spatial": (list,) + _NONE, "has_bias": (bool,),
                "params": _INT, "macs": _INT + _NONE, "attrs": (dict,), "skip": _STR + _NONE}


def check_types(d, types: dict[str, tuple[type, ...]], what: str) -> None:
    """TypeError unless ``d`` is a dict whose known keys hold values of the listed types (JSON from disk)."""
    if not isinstance(d, dict):
        raise TypeError(f"{what} is {type(d).__name__}, expected an object")
    for key, allowed in types.items():
        if key in d and (not isinstance(d[key], allowed) or (bool not in allowed and isinstance(d[key], bool))):
            raise TypeError(f"{what}: {key} is {d[key]!r}, expected {' or '.join(t.__name__ for t in allowed)}")


@dataclass
class Plan:
    model: str
    model_sha256: str
    settings: dict
    layers: list[LayerPlan] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "settings": self.settings,
            "totals": self.totals(),
            "layers": [lp.to_json() for lp in self.layers],
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    def save(self, path: str | Path) -> Path:
        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        def parse(data) -> Plan:
            check_types(data, {"model": _STR, "model_sha256": _STR, "settings": (dict,), "layers": (list,)}, "plan")
            if data.get("version") != PLAN_VERSION:
                raise ValueError(f"plan version {data.get('version')!r}, expected {PLAN_VERSION}")
            return cls(data["model"], data["model_sha256"], data["settings"],
                       [LayerPlan.from_json(d) for d in data["layers"]])

        return load_json(path, "plan", parse)

    def totals(self) -> dict:
        """Compressible-layer params/MACs before and after (dense and skipped layers count as is)."""
        before_p = sum(lp.layer.params for lp in self.layers)
        after_p = sum(lp.params if lp.action == "compress" else lp.layer.params for lp in self.layers)
        known = all(lp.layer.macs is not None for lp in self.layers)
        before_m = sum(lp.layer.macs or 0 for lp in self.layers) if known else None
        after_m = (
            sum((lp.macs if lp.action == "compress" else lp.layer.macs) or 0 for lp in self.layers) if known else None
        )
        return {"params_before": before_p, "params_after": after_p, "macs_before": before_m, "macs_after": after_m,
                "compressed_layers": sum(lp.action == "compress" for lp in self.layers)}


def ranks_for_ratio(fmt: Format, layer: Layer, modes: dict, ratio: float) -> list[int]:
    """Largest uniform rank whose realized params stay within ``ratio`` of the dense layer (rank 1 at least)."""
    best = fmt.uniform_ranks(layer, modes, 1)
    for r in range(2, max(fmt.max_ranks(layer, modes)) + 1):
        ranks = fmt.uniform_ranks(layer, modes, r)
        if fmt.cost(layer, modes, ranks).params <= ratio * layer.params:
            best = ranks
    return best


def layer_plan(
    layer: Layer, fmt: Format, ranks: list[int], modes: dict, *, force: bool = False, allow_more_macs: bool = False
) -> LayerPlan:
    """Cost a rank choice and decide compress vs dense (a rewrite must save params and not add MACs)."""
    options = fmt.realize(layer, modes, ranks)
    cost = fmt.cost(layer, modes, ranks, options)
    lp = LayerPlan(layer, "compress", fmt.name, modes, list(ranks), options, cost.params, cost.macs)
    if force:
        return lp
    if cost.params >= layer.params:
        lp.action, lp.reason = "dense", f"{fmt.name} form would not save parameters ({cost.params} >= {layer.params})"
    elif layer.macs is not None and cost.macs > layer.macs and not allow_more_macs:
        lp.action, lp.reason = "dense", f"{fmt.name} form needs more MACs than dense ({cost.macs} > {layer.macs})"
    return lp


def make_plan(
    layers: list[Layer],
    format_name: str,
    *,
    model_path: str | Path | ModelId,
    rank: int | None = None,
    ratio: float | None = None,
    force: bool = False,
    allow_more_macs: bool = False,
    modes: dict[str, dict] | None = None,
) -> Plan:
    """Uniform-rank or per-layer-ratio plan for every layer (the LWIQ allocator has its own entry).
    ``model_path``: the model file, or the ``ModelId`` of an in-memory model, that the plan records."""
    if rank is None and ratio is None:
        raise OptionError(f"give a rank ({opt('ranks')}) or a parameter ratio ({opt('ratio')})")
    if ratio is not None and not 0 < ratio <= 1:
        raise OptionError(f"{opt('ratio')} {ratio} is outside (0, 1]")
    if rank is not None and (type(rank) is not int or rank < 1):
        raise OptionError(f"{opt('ranks')} {rank} must be an integer of at least 1")
    try:
        fmt = get_format(format_name)
    except KeyError:
        raise OptionError(f"unknown {opt('format')} {format_name!r}") from None
    settings = {"format": format_name, "rank": rank, "ratio": ratio, "force": force, "allow_more_macs": allow_more_macs}
    mid = model_id(model_path)
    plan = Plan(mid.name, mid.sha256, settings)
    for layer in layers:
        reason = layer.skip or fmt.supports(layer)
        if reason:
            plan.layers.append(LayerPlan(layer, "skip", reason=reason))
            continue
        layer_modes = (modes or {}).get(layer.name) or fmt.default_modes(layer)
        try:
            if rank:
                ranks = fmt.uniform_ranks(layer, layer_modes, rank)
            else:
                ranks = ranks_for_ratio(fmt, layer, layer_modes, ratio)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        plan.layers.append(layer_plan(layer, fmt, ranks, layer_modes, force=force, allow_more_macs=allow_more_macs))
    return plan
