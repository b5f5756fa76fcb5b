"""Supervised training loop for the image models: shuffled mini-batches, optional random shifts,
per-step cosine learning rate, and selection of the best epoch on a validation set."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class Recipe:
    """Optimiser settings. ``optimizer`` is ``adam`` (AdamW) or ``sgd`` (Nesterov, momentum 0.9);
    ``shift`` is the largest random translation in pixels applied to training images (0 = none)."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    shift: int = 0


@dataclass
class History:
    """Per-epoch mean training loss, validation accuracy and seconds; the selected epoch (1-based)."""

    loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` (N, C, H, W) by its own integer offset in
    [-max_shift, max_shift] on both axes, filling with zeros; returns a new (N, C, H, W) tensor."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4).permute(0, 2, 3, 1)  # (N, H + 2s, W + 2s, C)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=generator)
    rows = dy + torch.arange(h)  # (N, H)
    cols = dx + torch.arange(w)  # (N, W)
    out = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class predictions (N,) of ``model`` in eval mode on float32 inputs ``x`` (N, ...)."""
    model.eval()
    preds = [model(torch.from_numpy(x[i:i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(preds).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((predict(model, x) == y).mean())


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                               weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}: adam or sgd")


def fit(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        *, epochs: int, recipe: Recipe, seed: int = 0, progress: bool = True) -> History:
    """Train ``model`` in place for ``epochs`` epochs; leave it holding the weights of the epoch with the
    best validation accuracy (earliest on ties). Inputs are float32 (N, C, H, W), labels int64 (N,)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = -(-len(x_all) // recipe.batch_size)
    opt = make_optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    history, best_state = History(), None
    for epoch in range(1, epochs + 1):
        start, total = time.perf_counter(), 0.0
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress)
        for step in bar:
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if recipe.shift:
                xb = random_shift(xb, recipe.shift, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        history.loss.append(total / len(x_all))
        history.val_acc.append(accuracy(model, x_val, y_val))
        history.seconds.append(time.perf_counter() - start)
        if history.val_acc[-1] > max(history.val_acc[:-1], default=-1.0):
            history.best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}: loss {history.loss[-1]:.4f}  "
                       f"val acc {100 * history.val_acc[-1]:.2f}%  ({history.seconds[-1]:.0f} s)")
    model.load_state_dict(best_state)
    model.eval()
    return history
