"""Shared checks for rewrite passes: compress a one-layer model and compare with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ttcompile.graph import load_model, to_proto
from ttcompile.layers import find_layers
from ttcompile.passes import get_format
from ttcompile.planning.plan import Plan, layer_plan
from ttcompile.rewrite.compress import apply_plan
from ttcompile.rewrite.counting import count_params, total_macs
from ttcompile.rewrite.verify import check_model, random_inputs, relative_errors


def compress_one(tmp: Path, proto: onnx.ModelProto, fmt_name: str, rank: int, options: dict | None = None,
                 modes: dict | None = None):
    """Rewrite the single compressible layer of ``proto`` at uniform ``rank``.

    Returns (compressed proto, LayerPlan, output relative error on random inputs).
    """
    path = tmp / f"in_{fmt_name}.onnx"
    onnx.save(proto, path)
    model = load_model(path)
    (layer,) = [lay for lay in find_layers(model) if lay.compressible]
    fmt = get_format(fmt_name)
    modes = modes or fmt.default_modes(layer)
    lp = layer_plan(layer, fmt, fmt.uniform_ranks(layer, modes, rank), modes, force=True)
    if options is not None:
        lp.options = options
        cost = fmt.cost(layer, modes, lp.ranks, options)
        lp.params, lp.macs = cost.params, cost.macs
    results = apply_plan(model, Plan(str(path), "", {}, [lp]), progress=False)
    assert results[0].rewritten, results[0].reason
    out = to_proto(model)
    check_model(out)
    (err,) = relative_errors(proto, out, random_inputs(proto, batch=3)).values()
    return out, lp, err


def assert_cost_matches_graph(out: onnx.ModelProto, lp) -> None:
    """The cost model's params and per-sample MACs equal what the emitted graph holds."""
    assert count_params(out) == lp.params
    assert total_macs(out, batch=1) == lp.macs


def errors_by_rank(tmp: Path, proto: onnx.ModelProto, fmt_name: str, ranks: list[int]) -> list[float]:
    """Relative reconstruction error of the layer at each uniform rank."""
    return [compress_one(tmp, proto, fmt_name, r)[1].error for r in ranks]


def assert_decreasing(values: list[float]) -> None:
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:])), values
    assert values[-1] < values[0], values
    assert np.isfinite(values).all()
