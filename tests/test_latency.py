"""Latency budgets: the measured table's cache keys, the measured never-slower guard, the solver on a fake
(deterministic) timer, the bench check, and the refusal of a provider this onnxruntime lacks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lwiq_data
import numpy as np
import onnx
import pytest

from ttcompile.benchmark.bench import BenchReport, ModelResult, Timing
from ttcompile.cli import main
from ttcompile.graph import load_model
from ttcompile.layers import find_layers
from ttcompile.passes.base import get_format
from ttcompile.planning.allocators import Context, allocate
from ttcompile.planning.budget import Budget, parse_budget
from ttcompile.planning.latency import (
    Env,
    LatencyBudget,
    LatencyTable,
    bench_timer,
    budget_checks,
    cache_path,
    current_env,
    layer_group,
)
from ttcompile.planning.plan import layer_plan
from ttcompile.planning.planner import Planner
from ttcompile.rewrite.counting import total_macs
from ttcompile.sources import file_sha256

from graphs import gemm_model


def model_and_key(path):
    """What ``LatencyTable.reference`` takes for a model file: the proto and its SHA-256."""
    return onnx.load(path), file_sha256(path)

ENV = Env("1.0.0", "Test CPU", "cpu", 32, 1)


class FakeTimer:
    """Deterministic latency: 1 us per 1000 MACs of the batch plus 2 us per node; counts its calls."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, paths: list[Path], env: Env, min_time: float) -> list[float]:
        self.calls.append(len(paths))
        out = []
        for p in paths:
            proto = onnx.load(p)
            out.append(total_macs(proto, env.batch) * 1e-6 + 0.002 * len(proto.graph.node))
        return out


class PairTimer:
    """Dense ``dense`` ms, chain ``chain`` ms (the second of a pair), whatever the model."""

    def __init__(self, dense: float, chain: float):
        self.dense, self.chain, self.calls = dense, chain, 0

    def __call__(self, paths, env, min_time):
        self.calls += 1
        return [self.dense] + [self.chain] * (len(paths) - 1)


@pytest.fixture(scope="module")
def gemm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lat") / "gemm.onnx"
    onnx.save(gemm_model(n_in=256, n_out=256), path)
    (layer,) = find_layers(load_model(path))
    return path, layer


def tt_plan(layer, rank: int):
    fmt = get_format("tt")
    modes = fmt.default_modes(layer)
    return layer_plan(layer, fmt, fmt.uniform_ranks(layer, modes, rank), modes, allow_more_macs=True)


def test_parse_latency_budget():
    assert parse_budget("latency=0.5") == Budget(latency=0.5)
    assert parse_budget("params=0.1,latency=0.5") == Budget(params=0.1, latency=0.5)
    assert str(Budget(macs=0.5, latency=0.5)) == "macs=0.5,latency=0.5"


def test_cache_is_keyed_by_environment_and_signature(gemm, tmp_path, monkeypatch):
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path))
    _, layer = gemm
    lp = tt_plan(layer, 4)

    def measure(env: Env, plan=lp) -> int:
        """Timer calls a fresh table (loaded from the cache file) needs for ``plan``'s pair at ``env``."""
        timer = FakeTimer()
        table = LatencyTable(env, cache_path(env), timer=timer)
        assert table.pair(plan) is not None
        return len(timer.calls)

    assert measure(ENV) == 1
    assert measure(ENV) == 0  # same key: cached, nothing measured
    assert cache_path(ENV).parent == tmp_path / "latency"
    assert measure(replace(ENV, onnxruntime="9.9.9")) == 1  # another ORT version: re-measured...
    assert measure(ENV) == 1  # ...and the old entries are gone (invalidated), not mixed in
    assert measure(ENV) == 0
    assert measure(replace(ENV, cpu="Other CPU")) == 1
    assert measure(ENV) == 1
    for changed in (replace(ENV, batch=1), replace(ENV, threads=2), replace(ENV, provider="cuda")):
        assert measure(changed) == 1 and measure(changed) == 0
        assert measure(ENV) == 0  # other batch/threads/provider live in their own files
    assert measure(ENV, tt_plan(layer, 8)) == 1  # another signature (ranks): measured
    other = replace(layer, attrs={**layer.attrs, "alpha": 2.0})
    assert measure(ENV, replace(lp, layer=other)) == 1  # another attribute: measured
    assert measure(ENV, replace(lp, layer=replace(layer, name="renamed"))) == 0  # the name is no key part


def test_reference_is_cached_by_model_file(gemm, tmp_path):
    path, layer = gemm
    timer = FakeTimer()
    table = LatencyTable(ENV, tmp_path / "t.json", timer=timer)
    t_model, dense = table.reference(*model_and_key(path), [layer])
    assert timer.calls == [2]  # the model and its one layer, in one interleaved call
    assert dense[layer_group(layer)] > 0 and t_model > 0
    again = LatencyTable(ENV, tmp_path / "t.json", timer=timer)
    assert again.reference(*model_and_key(path), [layer]) == (t_model, dense) and timer.calls == [2]
    other = tmp_path / "other.onnx"
    onnx.save(gemm_model(n_in=256, n_out=256, seed=1), other)
    again.reference(*model_and_key(other), [layer])
    assert timer.calls == [2, 2]


def test_cap_on_measured_candidates_per_layer_and_format(gemm, tmp_path):
    _, layer = gemm
    timer = FakeTimer()
    table = LatencyTable(ENV, None, timer=timer, max_candidates=2)
    assert table.pair(tt_plan(layer, 2)) and table.pair(tt_plan(layer, 3))
    assert table.pair(tt_plan(layer, 4)) is None and table.refused == 1 and len(timer.calls) == 2
    assert table.pair(tt_plan(layer, 2))  # measured ones still answer
    svd = get_format("svd")  # another format of the same layer has its own cap (--format auto times two)
    assert table.pair(layer_plan(layer, svd, [8], {}, allow_more_macs=True)) and len(timer.calls) == 3


@pytest.mark.parametrize("chain, slower_ok, action", [(2.0, False, "dense"), (0.99, False, "dense"),
                                                       (0.5, False, "compress"), (2.0, True, "compress")])
def test_guard_keeps_a_measured_slower_chain_dense(gemm, chain, slower_ok, action):
    _, layer = gemm
    table = LatencyTable(ENV, None, timer=PairTimer(1.0, chain))
    planner = Planner([layer], get_format("tt"), allow_more_macs=True,
                      latency=LatencyBudget(table, 1.0, {layer_group(layer): 1.0}, allow_slower=slower_ok))
    lp = planner.layer(layer, tt_plan(layer, 4).ranks)
    assert lp.action == action
    if action == "dense":
        assert lp.reason.startswith("measured:") and "not faster" in lp.reason
    assert planner.layer(layer, tt_plan(layer, 4).ranks, measure=False).action == "compress"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = lwiq_data.mlp(tmp_path_factory.mktemp("latmlp") / "mlp.onnx")
    return path, find_layers(load_model(path))


def solve_latency(mlp, budget: Budget, timer=None):
    path, layers = mlp
    table = LatencyTable(ENV, None, timer=timer or FakeTimer())
    lat = LatencyBudget(table, *table.reference(*model_and_key(path), layers))
    ctx = Context(str(path), file_sha256(path), layers, get_format("tt"), allow_more_macs=True,
                  model=load_model(path), latency=lat)
    return allocate("uniform", ctx, budget), lat


@pytest.mark.parametrize("fraction", [0.5, 0.7])
def test_solver_meets_a_latency_budget_on_a_fake_table(mlp, fraction):
    plan, lat = solve_latency(mlp, Budget(latency=fraction))
    rep = plan.settings["budget"]
    t_model = rep["latency"]["model_ms"]
    assert rep["base"]["latency"] == t_model and rep["targets"]["latency"] == pytest.approx(fraction * t_model)
    # the prediction is the documented model, recomputed here from the table's pairs
    comp = [lp for lp in plan.layers if lp.action == "compress"]
    assert comp
    want = t_model - sum(lat.dense_ms[layer_group(lp.layer)] * (1 - lat.table.pair(lp)[1] / lat.table.pair(lp)[0])
                         for lp in comp)
    assert rep["achieved"]["latency"] == pytest.approx(want) == rep["latency"]["predicted_ms"]
    assert want <= fraction * t_model
    for lp in comp:  # every kept chain is measured faster than its dense form
        dense, chain = lat.table.pair(lp)
        assert chain < dense


def test_looser_latency_budget_keeps_more_and_combines_with_params(mlp):
    tight, _ = solve_latency(mlp, Budget(latency=0.5))
    loose, _ = solve_latency(mlp, Budget(latency=0.8))
    assert loose.totals()["params_after"] > tight.totals()["params_after"]
    half = loose.settings["budget"]["fractions"]["params"] / 2  # a params budget that binds
    both, _ = solve_latency(mlp, Budget(params=half, latency=0.8))
    rep = both.settings["budget"]
    assert rep["achieved"]["params"] <= rep["targets"]["params"]
    assert rep["achieved"]["latency"] <= rep["targets"]["latency"]
    assert both.totals()["params_after"] < loose.totals()["params_after"]


def test_every_chain_slower_makes_the_latency_budget_infeasible(mlp):
    with pytest.raises(Exception, match="infeasible"):
        solve_latency(mlp, Budget(latency=0.9), timer=PairTimer(1.0, 3.0))


def test_bench_check_reports_predicted_and_measured():
    models = [ModelResult("a.onnx", "a.onnx", 10, 10, 10), ModelResult("b.onnx", "b.onnx", 5, 5, 5)]
    timings = [Timing(0, 32, 10.0, 10.0, 10.0, [10.0], 1), Timing(1, 32, 4.0, 4.0, 4.0, [4.0], 1)]
    report = BenchReport(models, timings, "cpu", 1, [32], 1, 0.1, None, 32)
    lat = {"batch": 32, "threads": 1, "provider": "cpu", "model_ms": 8.0, "target_ms": 4.0, "predicted_ms": 3.6}
    (line,) = budget_checks(report, {1: {"budget": {"latency": lat}}})
    assert "predicted 3.6 ms" in line and "measured 4 ms (0.400" in line and "met" in line and "NOT" not in line
    slow = [timings[0], replace(timings[1], latency_ms=6.0)]
    (line,) = budget_checks(replace(report, timings=slow), {1: {"budget": {"latency": lat}}})
    assert "NOT met" in line
    assert budget_checks(replace(report, threads=2), {1: {"budget": {"latency": lat}}}) == []


def test_cuda_where_unavailable_is_one_clear_line(mlp, tmp_path, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    path, _ = mlp
    code = main(["compress", str(path), "-o", str(tmp_path / "o.onnx"), "--budget", "latency=0.5",
                 "--allocator", "uniform", "--provider", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "CUDAExecutionProvider" in err
    assert not (tmp_path / "o.onnx").exists()


def test_force_only_goes_with_a_latency_budget(mlp, tmp_path, capsys):
    path, _ = mlp
    assert main(["compress", str(path), "-o", str(tmp_path / "o.onnx"), "--budget", "params=0.5", "--force",
                 "--allocator", "uniform"]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.slow
def test_tt_gemm_rank_16_is_measured_slower_at_batch_32(tmp_path):
    """The known case (README: 47x smaller, 2.4x the MACs, 2.3x slower at batch 32 on ORT CPU), really timed."""
    path = tmp_path / "gemm1024.onnx"
    onnx.save(gemm_model(n_in=1024, n_out=1024), path)
    (layer,) = find_layers(load_model(path))
    env = current_env("cpu", 32, 1)
    table = LatencyTable(env, None, timer=bench_timer)
    planner = Planner([layer], get_format("tt"), allow_more_macs=True,
                      latency=LatencyBudget(table, *table.reference(*model_and_key(path), [layer])))
    lp = planner.layer(layer, tt_plan(layer, 16).ranks)
    assert lp.action == "dense" and lp.reason.startswith("measured:")
    dense, chain = table.pair(lp)
    assert chain > dense


@pytest.mark.slow
def test_cli_compress_then_bench_checks_the_latency_target(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path / "cache"))
    path = lwiq_data.mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    args = ["compress", str(path), "-o", str(out), "--budget", "latency=0.9", "--allocator", "uniform",
            "--batch", "32", "--allow-more-macs", "--quiet"]
    assert main(args) == 0
    lat = json.loads(out.with_suffix(".plan.json").read_text())["settings"]["budget"]["latency"]
    assert lat["batch"] == 32 and lat["measured_pairs"] >= 1
    # the closed loop's verdict is its median whole-model timing against the target (timing noise may miss it)
    assert lat["closed_loop"]["met"] == (lat["predicted_ms"] <= lat["target_ms"]) and lat["closed_loop"]["rounds"]
    assert ("latency target NOT met" in capsys.readouterr().out) != lat["closed_loop"]["met"]
    assert (tmp_path / "cache" / "latency" / "cpu-b32-t1.json").exists()
    assert main(args) == 0  # second run: everything cached
    again = json.loads(out.with_suffix(".plan.json").read_text())["settings"]["budget"]["latency"]
    assert again["measured_pairs"] == 0 and again["predicted_ms"] == lat["predicted_ms"]
    capsys.readouterr()
    assert main(["bench", str(path), str(out), "--batch", "32", "--repeats", "3", "--min-time", "0.05"]) == 0
    assert "latency budget at batch 32: predicted" in capsys.readouterr().out
    assert np.isfinite(lat["model_ms"])
