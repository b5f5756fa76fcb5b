"""Planning as the Python API and the CLI ask for it: ``PlanOptions`` -> ``Plan``.

Without a budget every layer gets a uniform rank (``ranks``: an int, or per layer a rank list) or keeps
about ``ratio`` of its parameters (``--format auto``: per layer the lowest-error format within the ratio).
With a budget, an allocator spends it across layers (``ttcompile.planning.allocators``): ``lwiq`` from an
``analysis`` or by analysing ``calib``, ``greedy`` on ``calib``, ``uniform``/``energy``/``datafree`` without data.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttcompile.errors import OptionError, UserError, opt
from ttcompile.layers import Layer, find_layers
from ttcompile.planning.allocators import Context, allocate
from ttcompile.planning.auto_format import make_auto_plan
from ttcompile.planning.budget import Budget, parse_budget
from ttcompile.planning.plan import Plan, layer_plan, make_plan
from ttcompile.sources import DataLike, Source, data_spec

DEFAULT_RATIO = 0.1


@dataclass
class LatencyOptions:
    """Where a latency budget is measured: execution provider, batch size, ORT threads."""

    provider: str = "cpu"
    batch: int = 1
    threads: int = 1


@dataclass
class PlanOptions:
    """Everything ``plan`` may be asked (see the module docstring); names are the Python API's."""

    format: str = "tt"
    ratio: float | None = None
    ranks: int | dict[str, list[int]] | None = None
    budget: str | dict | Budget | None = None
    allocator: str | None = None
    analysis: object | None = None  # lwiq.Analysis or the path of its JSON
    calib: DataLike | None = None
    modes: dict[str, dict] | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None
    force: bool = False
    allow_more_macs: bool = False
    lwiq_weights: str = "output"
    lwiq_damage: str = "log"
    calib_batch: int = 256
    pseudo_classes: int = 10
    latency: LatencyOptions | None = None


def as_budget(budget: str | dict | Budget) -> Budget:
    """``"params=0.1,macs=0.5"``, ``{"params": 0.1}`` or a Budget."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, dict):
        budget = ",".join(f"{k}={v}" for k, v in budget.items())
    if not isinstance(budget, str):
        raise OptionError(f"{opt('budget')} is a string such as 'params=0.1', a dict or a Budget, "
                          f"not {type(budget).__name__}")
    return parse_budget(budget)


def plan_model(source: Source, o: PlanOptions, progress: bool = False) -> Plan:
    """The plan ``o`` asks for on ``source``'s layers (nothing is rewritten)."""
    layers = find_layers(source.model, o.input_shapes)
    if not layers:
        raise UserError(f"{source.id.name}: no Gemm, MatMul or Conv node, nothing to compress")
    unknown = sorted(set(o.modes or {}) - {lay.name for lay in layers})
    if unknown:
        raise OptionError(f"{opt('modes')} names layers this model does not have: {', '.join(unknown)}")
    if o.budget is not None:
        return _budgeted(source, layers, o, progress)
    given = [opt(k) for k in ("allocator", "analysis", "calib") if getattr(o, k) is not None]
    if given:
        raise OptionError(f"{', '.join(given)} only apply with {opt('budget')}")
    if o.format == "auto":
        if o.ranks is not None:
            raise OptionError(f"{opt('format')} auto picks each layer's format and ranks from {opt('ratio')}; "
                              f"{opt('ranks')} does not apply")
        if o.modes:
            raise OptionError(f"{opt('modes')} cannot be combined with {opt('format')} auto")
        return make_auto_plan(source.model, layers, ratio=DEFAULT_RATIO if o.ratio is None else o.ratio,
                              force=o.force, allow_more_macs=o.allow_more_macs, model_path=source.id)
    if isinstance(o.ranks, dict):
        return _per_layer(source, layers, o)
    ratio = DEFAULT_RATIO if o.ranks is None and o.ratio is None else o.ratio
    return make_plan(layers, o.format, model_path=source.id, rank=o.ranks, ratio=ratio, force=o.force,
                     allow_more_macs=o.allow_more_macs, modes=o.modes)


def _per_layer(source: Source, layers: list[Layer], o: PlanOptions) -> Plan:
    """``ranks={layer: [r1, ..]}``: those layers at exactly those ranks, every other one dense."""
    if o.ratio is not None:
        raise OptionError(f"give {opt('ranks')} or {opt('ratio')}, not both")
    plan = make_plan(layers, o.format, model_path=source.id, rank=1, force=o.force,
                     allow_more_macs=o.allow_more_macs, modes=o.modes)
    unknown = sorted(set(o.ranks) - {lp.name for lp in plan.layers})
    if unknown:
        raise OptionError(f"{opt('ranks')} names layers this model does not have: {', '.join(unknown)}")
    fmt = _format(o.format)
    for i, lp in enumerate(plan.layers):
        if lp.action == "skip":
            continue
        ranks = o.ranks.get(lp.name)
        if ranks is None:
            plan.layers[i] = type(lp)(lp.layer, "dense", reason=f"not in {opt('ranks')}")
            continue
        try:
            fmt.validate_ranks(lp.layer, lp.modes, list(ranks))
        except ValueError as exc:
            raise OptionError(f"{opt('ranks')} of layer {lp.name!r}: {exc}") from None
        plan.layers[i] = layer_plan(lp.layer, fmt, list(ranks), lp.modes, force=o.force,
                                    allow_more_macs=o.allow_more_macs)
    plan.settings.update(rank=None, ranks={k: list(v) for k, v in o.ranks.items()})
    return plan


def _format(name: str):
    from ttcompile.passes.base import get_format

    try:
        return get_format(name)
    except KeyError:
        if name != "auto":
            raise OptionError(f"unknown {opt('format')} {name!r}") from None
        from ttcompile.planning.datafree_mix import ByLayer

        return ByLayer({})


def _budgeted(source: Source, layers: list[Layer], o: PlanOptions, progress: bool) -> Plan:
    """The allocator's plan for the budget (see the module docstring)."""
    from ttcompile.analysis.features import load_calibration
    from ttcompile.analysis.lwiq import Analysis, analyze
    from ttcompile.graph import to_proto

    budget = as_budget(o.budget)
    if o.ranks is not None or o.ratio is not None or (o.force and budget.latency is None):
        raise OptionError(f"{opt('budget')} replaces {opt('ranks')}/{opt('ratio')}/{opt('force')} ({opt('force')} "
                          "only lifts a latency budget's measured guard); give one or the other")
    if o.format == "auto" and (o.allocator or "lwiq") != "datafree":
        raise OptionError(f"{opt('format')} auto with {opt('budget')} needs {opt('allocator')} datafree")
    fmt, name = _format(o.format), o.allocator or "lwiq"
    ctx = Context(source.id.name, source.id.sha256, layers, fmt, o.modes, o.allow_more_macs, model=source.model,
                  batch=o.calib_batch, progress=progress, lwiq_weights=o.lwiq_weights, lwiq_damage=o.lwiq_damage)
    calib = None if o.calib is None else data_spec(o.calib, "calibration data")
    if name == "lwiq":
        if o.analysis is not None:
            ctx.analysis = o.analysis if isinstance(o.analysis, Analysis) else Analysis.load(o.analysis)
            ctx.analysis.check_model(source.id)
        elif calib is not None:
            ctx.analysis = analyze(source, calib, formats=[fmt.name], modes=o.modes, batch=o.calib_batch,
                                   input_shapes=o.input_shapes, pseudo_classes=o.pseudo_classes, progress=progress)
        else:
            raise OptionError(f"{opt('allocator')} lwiq needs {opt('analysis')} (from analyze) or "
                              f"{opt('calib')} data")
    elif o.analysis is not None:
        raise OptionError(f"{opt('analysis')} is for the lwiq allocator, not {name}")
    if name == "greedy":
        if calib is None:
            raise OptionError(f"{opt('allocator')} greedy needs {opt('calib')} data")
        ctx.calibration = load_calibration(calib, to_proto(source.model))
    if budget.latency is not None:
        from ttcompile.planning.datafree_mix import mix_supported

        timed = [lay for lay in layers if (mix_supported(lay) if o.format == "auto" else
                                           not (lay.skip or fmt.supports(lay)))]
        ctx.latency = _latency(source, timed, o, progress)
    try:
        return allocate(name, ctx, budget)
    finally:
        if ctx.latency is not None:
            ctx.latency.table.close()


def _latency(source: Source, layers: list[Layer], o: PlanOptions, progress: bool):
    """The latency table (cached) and the reference timings of ``source`` and its budgeted ``layers``."""
    from ttcompile.planning.latency import LatencyBudget, LatencyTable, cache_path, current_env

    lat = o.latency or LatencyOptions()
    env = current_env(lat.provider, lat.batch, lat.threads)
    table = LatencyTable(env, cache_path(env), progress=progress)
    return LatencyBudget(table, *table.reference(source.original, source.id.sha256, layers), allow_slower=o.force)
