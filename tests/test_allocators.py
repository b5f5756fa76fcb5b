"""Allocators behind one interface, and the analyze / compress --budget command line."""

from __future__ import annotations

import json

import lwiq_data
import pytest

from ttcompile.analysis.features import load_calibration
from ttcompile.analysis.lwiq import analyze
from ttcompile.cli import main
from ttcompile.errors import UserError
from ttcompile.graph import load_model, to_proto
from ttcompile.layers import find_layers
from ttcompile.passes.base import get_format
from ttcompile.planning.allocators import ALLOCATORS, Context, allocate
from ttcompile.planning.budget import Budget
from ttcompile.sources import file_sha256


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("alloc")
    model_path = lwiq_data.model(d / "toy.onnx")
    calib = lwiq_data.calib_file(d / "calib.npz")
    model = load_model(model_path)
    ctx = Context(str(model_path), file_sha256(model_path), find_layers(model), get_format("tt"),
                  allow_more_macs=True, model=model, calibration=load_calibration(str(calib), to_proto(model)),
                  analysis=analyze(model_path, str(calib), progress=False))
    return ctx, d


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_every_allocator_meets_the_budget(toy, name):
    ctx, _ = toy
    plan = allocate(name, ctx, Budget(params=0.3))
    s = plan.settings
    assert s["allocator"] == name and s["format"] == "tt" and s["search_time_s"] >= 0
    rep = s["budget"]
    assert rep["knob_only"]["achieved"]["params"] <= rep["achieved"]["params"] <= rep["targets"]["params"]
    assert {"name", "value"} <= s["knob"].keys()
    assert any(lp.action == "compress" and lp.ranks for lp in plan.layers)
    for lp in plan.layers:
        if lp.action == "compress":
            get_format("tt").validate_ranks(lp.layer, lp.modes, lp.ranks)


def test_scores_where_meaningful(toy):
    ctx, _ = toy
    lwiq = allocate("lwiq", ctx, Budget(params=0.3))
    assert {lp.name: lp.score for lp in lwiq.layers}["fc1"] == 1.0
    greedy = allocate("greedy", ctx, Budget(params=0.3))
    drops = greedy.settings["greedy"]["drops"]
    assert all(d == 0 for _, d in drops["fc2"])  # the identity layer is exact at rank 1
    assert max(d for _, d in drops["fc1"]) > 0.1  # the informative layer is not
    assert all(lp.score is None for lp in allocate("uniform", ctx, Budget(params=0.3)).layers)


def test_missing_inputs_are_user_errors(toy):
    ctx, _ = toy
    bare = Context(ctx.model_path, ctx.model_sha256, ctx.layers, ctx.fmt)
    for name in ("lwiq", "energy", "greedy"):
        with pytest.raises(UserError, match=f"allocator {name} needs"):
            allocate(name, bare, Budget(params=0.3))
    with pytest.raises(UserError, match="unknown allocator"):
        allocate("random", bare, Budget(params=0.3))


def test_cli_analyze_then_compress_from_the_analysis(toy, capsys):
    _, d = toy
    model, calib, analysis, out = d / "toy.onnx", d / "calib.npz", d / "analysis.json", d / "out.onnx"
    assert main(["analyze", str(model), "--calib", str(calib), "-o", str(analysis), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "labels: given" in text and "acc_0" in text
    assert json.loads(analysis.read_text())["kind"] == "lwiq-analysis"
    assert main(["compress", str(model), "-o", str(out), "--budget", "params=0.3", "--analysis", str(analysis),
                 "--allow-more-macs", "--quiet"]) == 0
    assert "allocator lwiq" in capsys.readouterr().out
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    assert plan["settings"]["allocator"] == "lwiq" and plan["settings"]["budget"]["targets"]["params"] > 0
    assert [lp["score"] for lp in plan["layers"]][0] == 1.0 and all(lp["ranks"] for lp in plan["layers"])


def test_cli_greedy_with_calibration(toy, capsys):
    _, d = toy
    out = d / "greedy.onnx"
    assert main(["compress", str(d / "toy.onnx"), "-o", str(out), "--budget", "params=0.3", "--allocator",
                 "greedy", "--calib", str(d / "calib.npz"), "--quiet"]) == 0
    assert "allocator greedy" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--calib", "x.npz"], "only apply with --budget"),
    (["--budget", "params=0.3", "--rank", "2"], "replaces --rank"),
    (["--budget", "params=0.3"], "needs --analysis"),
    (["--budget", "params=0.3", "--allocator", "greedy"], "needs --calib"),
    (["--budget", "params=0.3", "--allocator", "uniform", "--analysis", "a.json"], "lwiq allocator"),
    (["--budget", "params=3", "--allocator", "uniform"], "infeasible"),
])
def test_cli_budget_errors(toy, capsys, extra, match):
    _, d = toy
    assert main(["compress", str(d / "toy.onnx"), "-o", str(d / "err.onnx"), *extra]) == 2
    assert match in capsys.readouterr().err


def test_cli_rejects_an_analysis_of_another_model(toy, tmp_path, capsys):
    _, d = toy
    other = lwiq_data.mlp(tmp_path / "other.onnx")
    analysis = tmp_path / "a.json"
    assert main(["analyze", str(d / "toy.onnx"), "--calib", str(d / "calib.npz"), "-o", str(analysis),
                 "--quiet"]) == 0
    assert main(["compress", str(other), "-o", str(tmp_path / "o.onnx"), "--budget", "params=0.1",
                 "--analysis", str(analysis)]) == 2
    assert "not for" in capsys.readouterr().err
