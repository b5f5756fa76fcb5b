"""The data-free continuous rank allocator (``--allocator datafree``) and its CP/Tucker-2 mix (``--format auto``)."""

from __future__ import annotations

import json
from dataclasses import replace

import lwiq_data
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from ttcompile.cli import main
from ttcompile.graph import load_model
from ttcompile.layers import dense_weight, find_layers
from ttcompile.passes.base import get_format
from ttcompile.planning.allocators import Context, search
from ttcompile.planning.auto_format import relative_error
from ttcompile.planning.budget import Budget
from ttcompile.planning.datafree import Objective, layer_model
from ttcompile.planning.datafree_mix import LATENCY_PRICES, ByLayer
from ttcompile.sources import file_sha256

from graphs import _model, conv_model, gemm_model


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = lwiq_data.mlp(tmp_path_factory.mktemp("datafree") / "mlp.onnx", dims=(64, 128, 96, 10))
    model = load_model(path)
    return Context(str(path), file_sha256(path), find_layers(model), get_format("tt"), model=model,
                   allow_more_macs=True)  # TT-matrix chains of this MLP reach the dense MACs at rank ~8


def _layers(proto: onnx.ModelProto):
    model = ir.from_proto(proto)
    return model, find_layers(model)


@pytest.mark.parametrize("fmt, proto", [("tt", conv_model(c_in=16, c_out=32)), ("tr", conv_model(c_in=16, c_out=32)),
                                        ("tucker", conv_model(c_in=16, c_out=32)), ("cp", conv_model(c_in=8, c_out=8)),
                                        ("tt", gemm_model(n_in=48, n_out=40)), ("tr", gemm_model(n_in=48, n_out=40))])
def test_relaxed_cost_is_the_cost_model_at_integer_ranks(fmt, proto):
    model, (layer,) = _layers(proto)
    f = get_format(fmt)
    modes = f.default_modes(layer)
    m = layer_model(f, dense_weight(model, layer)[0], layer, modes)
    obj = Objective(m, np.array([1.0, 0.0]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        free = np.array([rng.integers(1, m.caps[k] + 1) for k in m.free], dtype=float)
        cost = f.cost(layer, modes, m.ranks(free), f.options(layer, modes)[0])
        np.testing.assert_allclose(obj.size(free), [cost.params, cost.macs], rtol=1e-9)
    # the modelled error falls from 1 (nothing kept) towards 0 (every rank at its cap)
    assert obj.error(np.ones(len(m.free))) > obj.error(m.hi) and obj.error(m.hi) < 1e-6 or fmt == "cp"


def _cut_bonds(found, plan, budget) -> int:
    """Bonds at rank 1 with a cap > 2 in compressed layers whose knob setting is above the layer's minimum."""
    family = found.family.for_budget(budget)
    n = 0
    for lp in plan.layers:
        if lp.action != "compress":
            continue
        chosen = family.rank(lp.name, plan.settings["knob"]["value"])
        fmt = get_format(lp.format)
        if chosen is None or chosen == fmt.uniform_ranks(lp.layer, lp.modes, 1):
            continue
        n += sum(r == 1 and cap > 2 for r, cap in zip(lp.ranks, fmt.max_ranks(lp.layer, lp.modes)))
    return n


def _weight_error(ctx, plan) -> float:
    """Sum over layers of the squared relative reconstruction error (dense layers: 0)."""
    return sum(relative_error(get_format(lp.format), dense_weight(ctx.model, lp.layer)[0], lp.layer, lp.modes,
                              lp.ranks) ** 2 for lp in plan.layers if lp.action == "compress")


def test_meets_the_budget_never_cuts_a_bond_and_more_budget_means_less_error(mlp):
    found = search("datafree", mlp)
    errors = []
    for fraction in (0.05, 0.1, 0.2, 0.4):
        budget = Budget(params=fraction)
        plan = found.plan(budget)
        rep = plan.settings["budget"]
        assert plan.settings["allocator"] == "datafree" and plan.settings["knob"]["name"] == "t"
        assert 0.95 <= rep["of_target"]["params"] <= 1.0, rep
        assert _cut_bonds(found, plan, budget) == 0
        errors.append(_weight_error(mlp, plan))
    assert all(b <= a for a, b in zip(errors, errors[1:])) and errors[-1] < 0.8 * errors[0], errors


@pytest.mark.parametrize("budget", [Budget(macs=0.3), Budget(params=0.3, macs=0.2)])
def test_meets_macs_and_joint_budgets(mlp, budget):
    plan = search("datafree", replace(mlp, allow_more_macs=False)).plan(budget)
    assert all(lp.macs <= lp.layer.macs for lp in plan.layers if lp.action == "compress")
    rep = plan.settings["budget"]
    assert all(frac <= 1.0 for frac in rep["of_target"].values()), rep
    assert max(rep["of_target"].values()) >= 0.9, rep  # the binding metric is nearly spent


def test_deterministic(mlp):
    a, b = (search("datafree", mlp).plan(Budget(params=0.1)) for _ in range(2))
    assert [(lp.action, lp.ranks) for lp in a.layers] == [(lp.action, lp.ranks) for lp in b.layers]
    assert a.settings["knob"] == b.settings["knob"]


C_MIX = 8


def mix_model(path) -> str:
    """Two 8 -> 8 3x3 convs on 8x8: ``cp2`` is exactly CP rank 2 (44 params as CP, 52 as Tucker-2 (2, 2)),
    ``tuck`` exactly Tucker-2 (2, 2) with a generic core (68 params; its CP rank is 4: 88 params), so
    within 115 params (1/10) CP suits the first and Tucker-2 the second."""
    rng = np.random.default_rng(0)
    cp2 = np.einsum("or,cr,hr,wr->ochw", *(rng.standard_normal((n, 2)) for n in (C_MIX, C_MIX, 3, 3)))
    u_out, u_in = (np.linalg.qr(rng.standard_normal((C_MIX, 2)))[0] for _ in range(2))
    tuck = np.einsum("oa,abhw,cb->ochw", u_out, rng.standard_normal((2, 2, 3, 3)), u_in)
    inits = {"Wa": cp2.astype(np.float32), "Wb": tuck.astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["h"], name="cp2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "Wb"], ["y"], name="tuck", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_MIX, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C_MIX, 8, 8])
    onnx.save(_model(nodes, [x], [y], inits), path)
    return str(path)


@pytest.mark.slow  # CP-ALS error curves of both layers
def test_format_auto_mixes_cp_and_tucker_and_the_rewrite_is_exact(tmp_path):
    path = mix_model(tmp_path / "mix.onnx")
    out = tmp_path / "out.onnx"
    assert main(["compress", path, "--format", "auto", "--budget", "params=0.1", "--allocator", "datafree",
                 "-o", str(out), "--quiet"]) == 0
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    formats = {lp["layer"]["name"]: lp["format"] for lp in plan["layers"] if lp["action"] == "compress"}
    assert formats == {"cp2": "cp", "tuck": "tucker"}, formats
    assert plan["settings"]["budget"]["of_target"]["params"] <= 1.0
    x = np.random.default_rng(1).standard_normal((4, C_MIX, 8, 8)).astype(np.float32)
    dense, comp = predict_raw(onnx.load(path), x), predict_raw(onnx.load(out), x)
    assert np.linalg.norm(comp - dense) < 1e-3 * np.linalg.norm(dense)


def predict_raw(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_auto_budget_needs_datafree(tmp_path, capsys):
    path = mix_model(tmp_path / "mix.onnx")
    assert main(["compress", path, "--format", "auto", "--budget", "params=0.1", "--allocator", "uniform",
                 "-o", str(tmp_path / "out.onnx")]) == 2
    assert "datafree" in capsys.readouterr().err
    assert main(["compress", path, "--format", "auto", "--budget", "params=0.1", "--allocator", "datafree",
                 "--modes", "cp2=2x4:2x4", "-o", str(tmp_path / "out.onnx")]) == 2
    assert "--modes" in capsys.readouterr().err



class DepthwiseSlowTimer:
    """Deterministic latency by node: a Conv costs 0.1 + its weight's size / 576 (an 8 -> 8 3x3 kernel: 1.1),
    a grouped (depthwise) one 2.0 more, any other node 0.05: CP's depthwise chains are slower than dense,
    Tucker-2's faster."""

    def __call__(self, paths, env, min_time):
        out = []
        for p in paths:
            g = onnx.load(p).graph
            sizes = {t.name: int(np.prod(t.dims)) for t in g.initializer}
            out.append(sum(0.1 + sizes[n.input[1]] / 576 + 2.0 * any(a.name == "group" and a.i > 1 for a in n.attribute)
                           if n.op_type == "Conv" else 0.05 for n in g.node))
        return out


@pytest.mark.slow  # CP-ALS error curves of both layers
def test_format_auto_with_a_latency_budget_takes_the_format_measured_faster(tmp_path):
    from ttcompile.planning.latency import Env, LatencyBudget, LatencyTable

    path = mix_model(tmp_path / "mix.onnx")
    model = load_model(path)
    layers = find_layers(model)
    table = LatencyTable(Env("1.0.0", "Test CPU", "cpu", 32, 1), None, timer=DepthwiseSlowTimer())
    lat = LatencyBudget(table, *table.reference(onnx.load(path), file_sha256(path), layers))
    ctx = Context(path, file_sha256(path), layers, ByLayer({}), model=model, latency=lat)
    plan = search("datafree", ctx).plan(Budget(params=0.1, latency=0.9))
    formats = {lp.name: lp.format for lp in plan.layers if lp.action == "compress"}
    assert formats == {"cp2": "tucker", "tuck": "tucker"}, formats  # without latency cp2 takes cp (test above)
    cp = plan.settings["format_choice"]["cp2"]["cp"]
    assert cp["action"] == "dense" and cp["reason"].startswith("measured:") and cp["chain_ms"] > cp["dense_ms"]
    rep = plan.settings["budget"]
    assert rep["of_target"]["params"] <= 1.0 and rep["latency"]["closed_loop"]["met"], rep
    prices = plan.settings["latency_prices"]  # every price solved, one plan kept, and it meets the budget
    assert [p["price"] for p in prices] == list(LATENCY_PRICES) and [p["kept"] for p in prices].count(True) == 1
    assert all(p["met"] for p in prices if p["kept"])


def test_cli_format_auto_with_a_latency_only_budget(tmp_path, monkeypatch):
    """Real timings on the MLP: the latency-only budget sizes the format choice by ``macs=F``, every price is
    solved, and the kept plan's layers name their own formats."""
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path / "cache"))
    path = lwiq_data.mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    assert main(["compress", str(path), "-o", str(out), "--format", "auto", "--allocator", "datafree", "--budget",
                 "latency=0.9", "--batch", "32", "--allow-more-macs", "--quiet"]) == 0
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    settings = plan["settings"]
    assert [p["price"] for p in settings["latency_prices"]] == list(LATENCY_PRICES)
    assert set(settings["format_choice"]) == {lp["layer"]["name"] for lp in plan["layers"] if lp["action"] != "skip"}
    assert settings["budget"]["latency"]["measured_pairs"] >= 1
    assert {lp["format"] for lp in plan["layers"] if lp["action"] == "compress"} <= {"tucker", "cp"}
