"""ℓ0 rank gates and core-space training: pruning vs λ, exact gate folding on export, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from ttcompile.layers import find_layers
from ttcompile.models.data import Dataset
from ttcompile.planning.plan import make_plan
from ttcompile.rewrite.counting import count_params
from ttcompile.train.executor import OnnxModule, write_back
from ttcompile.train.l0 import L0Gates
from ttcompile.train.lowrank import CoreSpace, export_cores
from ttcompile.train.rank_select import compress_and_train
from ttcompile.train.settings import TrainSettings as Settings

from graphs import conv_model, mlp_model
from train_helpers import run_ort


def _plan(model: onnx.ModelProto, fmt: str, rank: int, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return make_plan(find_layers(ir.from_proto(model)), fmt, model_path=path, rank=rank, force=True,
                     allow_more_macs=True)


def _data(model: onnx.ModelProto, n: int = 256, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)
    return Dataset(x, run_ort(model, {"x": x})[0].argmax(1), "random")


@pytest.mark.parametrize("fmt", ["tt", "tr"])
def test_gates_prune_with_large_lambda_and_keep_ranks_without(fmt, tmp_path):
    model = mlp_model()
    plan = _plan(model, fmt, 6, tmp_path)
    full = {lp.name: lp.ranks for lp in plan.layers}
    data = _data(model)
    ranks = {}
    for lam in (0.0, 5.0):
        settings = Settings(method="l0", lam=lam, mu_scale=10, epochs=0, select_epochs=3, batch_size=32, lr=1e-2)
        out = compress_and_train(model, model, plan, data, None, settings, log=lambda _: None)
        ranks[lam] = {lp.name: lp.ranks for lp in out.plan.layers}
    assert ranks[0.0] == full
    for name, r in ranks[5.0].items():
        assert sum(r) < sum(full[name]) and min(r) >= 1


@pytest.mark.parametrize("fmt", ["tt", "tr"])
@pytest.mark.parametrize("builder", [mlp_model, lambda: conv_model(c_in=8, c_out=12, kernel=(3, 3), spatial=(6, 5),
                                                                   pads=[1, 1, 1, 1])])
def test_export_equals_gated_core_space_model(fmt, builder, tmp_path):
    model = builder()
    plan = _plan(model, fmt, 4, tmp_path)
    torch.manual_seed(0)
    gates = L0Gates(CoreSpace(model, plan), lam=1.0, target_cr=2.0, base_params=count_params(model))
    with torch.no_grad():  # close some gates, leave others partly open (continuous kept values)
        for nu in gates.nu.values():
            nu.normal_(-1.0, 1.0)
    module = OnnxModule(model)
    gates.attach(module)
    module.eval()
    x = np.random.default_rng(1).standard_normal((5, *_input_shape(model))).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    pruned = gates.pruned_cores()
    out, out_plan, _ = export_cores(write_back(module, model), plan, pruned, smallest=True)
    onnx.checker.check_model(out, full_check=True)
    assert {lp.name: lp.ranks for lp in out_plan.layers} == gates.ranks()
    assert any(sum(r) < sum(lp.ranks) for lp, r in zip(plan.layers, gates.ranks().values()))
    assert count_params(out) == gates.compressed_params()
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)


def _input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(d.dim_value for d in dims)


def test_target_compression_freezes_gates(tmp_path):
    model = mlp_model()
    plan = _plan(model, "tr", 6, tmp_path)
    space = CoreSpace(model, plan)
    gates = L0Gates(space, lam=1.0, target_cr=1.01, base_params=count_params(model), check_every=1)
    gates.attach(OnnxModule(model))
    assert gates.penalty(None) is None  # the starting ranks already compress: frozen at the first check
    assert bool(gates.frozen) and not any(nu.requires_grad for nu in gates.nu.values())


def test_cli_compress_with_l0_end_to_end(tmp_path, capsys):
    from ttcompile.cli import main

    model = mlp_model()
    src, out = tmp_path / "mlp.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    data = _data(model)
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y)
    code = main(["compress", str(src), "-o", str(out), "--format", "tr", "--rank", "6", "--force",
                 "--train", str(tmp_path / "d.npz"), "--val", str(tmp_path / "d.npz"), "--finetune-epochs", "1",
                 "--select-epochs", "2", "--rank-select", "l0", "--lambda", "5", "--mu-scale", "5", "--lr", "1e-2",
                 "--quiet"])
    assert code == 0
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert run_ort(proto, {"x": data.x[:4]})[0].shape == (4, 32)
    saved = json.loads(out.with_suffix(".plan.json").read_text())
    assert saved["settings"]["rank_select"]["method"] == "l0"
    assert all(sum(lp["ranks"]) < 27 for lp in saved["layers"])  # pruned below the starting ranks
    assert "l0: learned ranks" in capsys.readouterr().out


@pytest.mark.parametrize("normalize", ["bond", "layer"])
def test_penalty_normalisation(normalize, tmp_path):
    model = mlp_model()
    plan = _plan(model, "tr", 6, tmp_path)  # bonds of sizes 3 and 6 (2 and 5 gated entries)
    gates = L0Gates(CoreSpace(model, plan), lam=2.0, sigma=0.5, normalize=normalize)
    phi = {key: torch.special.ndtr((mu + 1.2) / 0.5) for key, mu in gates.mu.items()}
    if normalize == "bond":
        expected = sum(p.mean() for p in phi.values())
    else:
        expected = sum(p.sum() / 5 for p in phi.values())
    torch.testing.assert_close(gates.penalty(None), 2.0 * expected)
