"""Training loop: random shifts, best-epoch selection, and the train CLI end to end (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ttcompile.models import train
from ttcompile.models.data import load_digits
from ttcompile.models.training import Recipe, accuracy, fit, random_shift


def test_random_shift_translates_each_image_with_zero_fill():
    x = torch.zeros(64, 2, 9, 9)
    x[:, :, 4, 4] = torch.tensor([1.0, 2.0])  # one bright pixel in the centre of both channels
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pos = [divmod(int(torch.nonzero(img[0].flatten())), 9) for img in out]
    offsets = {(r - 4, c - 4) for r, c in pos}
    assert offsets <= {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} and len(offsets) > 10
    torch.testing.assert_close(out.sum((2, 3)), x.sum((2, 3)))  # nothing lost, channels move together
    assert torch.equal(out[:, 1], 2 * out[:, 0])


def test_fit_learns_digits_and_keeps_the_best_epoch():
    train_ds, test_ds = load_digits("train"), load_digits("test")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    recipe = Recipe(optimizer="adam", lr=1e-2, batch_size=64)
    history = fit(model, train_ds.x, train_ds.y, test_ds.x, test_ds.y, epochs=4, recipe=recipe,
                  progress=False)
    assert len(history.loss) == len(history.val_acc) == 4 and history.loss[-1] < history.loss[0]
    best = max(history.val_acc)
    assert history.val_acc[history.best_epoch - 1] == best > 0.85
    assert accuracy(model, test_ds.x, test_ds.y) == best  # the best epoch's weights are restored
    assert not model.training


def test_sgd_recipe_with_shifts_and_unknown_optimizer():
    x, y = load_digits("test").x[:64], load_digits("test").y[:64]
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = [p.clone() for p in model.parameters()]
    history = fit(model, x, y, x, y, epochs=2, recipe=Recipe(optimizer="sgd", lr=0.05, batch_size=16, shift=1),
                  progress=False)
    assert np.isfinite(history.loss).all() and history.best_epoch in (1, 2)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        fit(model, x, y, x, y, epochs=1, recipe=Recipe(optimizer="rmsprop"), progress=False)


def test_cli_rejects_bad_numbers(capsys):
    assert train.main(["lenet300", "--epochs", "0", "--out", "x.onnx"]) == 2
    assert "--epochs and --limit must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_exports_and_writes_metrics(tmp_path):
    out = tmp_path / "m.onnx"
    argv = ["lenet300", "--data", "mnist", "--epochs", "2", "--limit", "3000", "--out", str(out), "--quiet"]
    assert train.main(argv) == 0
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["arch"] == "lenet300" and metrics["n_train"] == 3000 and metrics["best_epoch"] in (1, 2)
    assert 0.5 < metrics["test_acc"] <= 1.0 and metrics["params"] == 266_610
    assert metrics["command"].endswith("--quiet")
    assert [n.op_type for n in onnx.load(out).graph.node].count("Gemm") == 3
    assert np.isfinite(metrics["history"]["loss"]).all()
