"""ADMM towards low TT/TR rank: ||W - Z|| falls, Z is a projection, and the pipeline emits a plain model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from ttcompile.layers import find_layers
from ttcompile.models.data import Dataset
from ttcompile.planning.plan import make_plan
from ttcompile.train.admm import ADMM, project
from ttcompile.train.executor import OnnxModule
from ttcompile.train.finetune import finetune
from ttcompile.train.rank_select import compress_and_train
from ttcompile.train.settings import TrainSettings as Settings

from graphs import mlp_model
from train_helpers import run_ort


def _setup(fmt: str, tmp_path):
    model = mlp_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    plan = make_plan(find_layers(ir.from_proto(model)), fmt, model_path=path, rank=2, force=True,
                     allow_more_macs=True)
    x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    return model, plan, Dataset(x, run_ort(model, {"x": x})[0].argmax(1), "random")


def test_tt_projection_is_idempotent(tmp_path):
    """TT-SVD at ranks r recovers a tensor of TT-rank r (TR-SVD is only quasi-optimal: not idempotent)."""
    model, plan, _ = _setup("tt", tmp_path)
    module = OnnxModule(model)
    for lp in plan.layers:
        z = project(lp, module.parameter(lp.layer.weight).detach().double().numpy())
        np.testing.assert_allclose(project(lp, z), z, atol=1e-9)


@pytest.mark.parametrize("fmt", ["tt", "tr"])
def test_distance_to_low_rank_set_falls(fmt, tmp_path):
    model, plan, data = _setup(fmt, tmp_path)
    admm = ADMM(plan, rho=10.0)
    finetune(model, model, data, epochs=4, lr=1e-2, batch_size=16, hooks=[admm], progress=False, threads=1)
    d = admm.distances
    assert len(d) == 4 and d[-1] < 0.8 * d[0] and d[1] < d[0]


def test_admm_pipeline_emits_plain_model(tmp_path):
    model, plan, data = _setup("tr", tmp_path)
    settings = Settings(method="admm", rho=1.0, epochs=1, select_epochs=2, batch_size=64, lr=1e-2)
    out = compress_and_train(model, model, plan, data, data, settings, log=lambda _: None)
    onnx.checker.check_model(out.model, full_check=True)
    assert [lp.ranks for lp in out.plan.layers] == [lp.ranks for lp in plan.layers]
    assert set(out.histories) == {"select", "finetune"}
    assert run_ort(out.model, {"x": data.x[:3]})[0].shape == (3, 32)


@pytest.mark.parametrize("select", [[], ["--rank-select", "admm", "--rho", "1", "--select-epochs", "1"]])
def test_cli_compress_with_training(select, tmp_path, capsys):
    from ttcompile.cli import main

    model, _, data = _setup("tr", tmp_path)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y)
    code = main(["compress", str(src), "-o", str(out), "--format", "tr", "--rank", "2", "--force", "--train",
                 str(tmp_path / "d.npz"), "--finetune-epochs", "1", "--quiet", *select])
    assert code == 0, capsys.readouterr().err
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert run_ort(proto, {"x": data.x[:2]})[0].shape == (2, 32)
    assert ("admm: " in capsys.readouterr().out) == bool(select)


def test_cli_rank_select_needs_training_data(tmp_path, capsys):
    from ttcompile.cli import main

    _setup("tr", tmp_path)
    code = main(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--format", "tr",
                 "--rank", "2", "--rank-select", "l0"])
    assert code == 2 and "--train" in capsys.readouterr().err
