"""Knowledge-distillation fine-tuning of an ONNX student towards an ONNX teacher (torch backend).

The student runs in :class:`~ttcompile.train.executor.OnnxModule`; the teacher's logits are computed
once with ONNX Runtime for the whole train (and val) set, since the data is fixed and the teacher frozen.
Loss per batch: ``kd_weight * T^2 * KL(p_t || p_s) + (1 - kd_weight) * CE(s, y)`` with
``p = softmax(logits / T)``; without labels the loss is the distillation term alone. AdamW (plain Adam
when weight_decay is 0) with a per-batch cosine schedule from ``lr`` down to 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ttcompile.errors import UserError, opt
from ttcompile.train import checkpoints
from ttcompile.train.common import (
    Data,
    EpochStats,
    History,
    Settings,
    cosine_factor,
    epoch_order,
    epoch_seed,
    fingerprint,
    prepare,
    score,
)
from ttcompile.train.executor import OnnxModule, write_back
from ttcompile.train.hooks import TrainHook

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset

__all__ = ["EpochStats", "History", "distillation_loss", "finetune"]
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, kd_weight: float) -> torch.Tensor:
    """student, teacher: logits (N, C); labels (N,) int64 or None (pure distillation)."""
    kd = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                  reduction="batchmean", log_target=True) * temperature**2
    if labels is None:
        return kd
    return kd_weight * kd + (1 - kd_weight) * F.cross_entropy(student, labels)


def _logits(module: OnnxModule, x: np.ndarray) -> torch.Tensor:
    out = module(torch.from_numpy(x))
    return out[0] if isinstance(out, tuple) else out


def _predict(module: OnnxModule) -> Callable[[np.ndarray], np.ndarray]:
    """The module in eval mode as a numpy logits function (for ``common.prepare`` / ``common.score``)."""

    @torch.no_grad()
    def logits(x: np.ndarray) -> np.ndarray:
        module.eval()
        return _logits(module, x).numpy()

    return logits


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None = None,
             *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128, temperature: float = 4.0,
             kd_weight: float = 0.9, weight_decay: float = 0.0, seed: int = 0, checkpoint: Path | None = None,
             resume: bool = False, progress: bool = False, hooks: Sequence[TrainHook] | None = None,
             threads: int | None = None) -> tuple[onnx.ModelProto, History]:
    """Fine-tune ``student``'s float initializers to mimic ``teacher`` on ``train``.

    Validation after each epoch: accuracy on ``val``'s labels, else top-1 agreement with the teacher;
    the best epoch's weights are returned (the last epoch's without ``val``), or the input's own when no
    epoch beats them on ``val`` (``History.best_epoch`` 0; not with ``hooks`` other than observers, e.g. the
    rank-selecting trainers, whose input is not a result). With ``checkpoint`` the
    full state is saved atomically after every epoch; ``resume`` continues from it (a missing file
    starts afresh), so an interrupted run loses at most one epoch and, with the same ``epochs``, ends
    where an uninterrupted one would; a larger ``epochs`` extends a finished run (the cosine schedule
    is stretched to the new length). Each epoch's shuffling and torch RNG are seeded from
    (seed, epoch). ``threads`` caps torch's and ONNX Runtime's threads for the call (one thread is far
    faster than two when the cores are shared). Returns a copy of ``student`` with trained
    initializers (same nodes and names) and the history.
    """
    settings = Settings(lr, batch_size, temperature, kd_weight, weight_decay, seed)
    settings.check(epochs)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _finetune(student, teacher, train, val, epochs, settings, checkpoint, resume, progress,
                         list(hooks or ()), threads)
    finally:
        torch.set_num_threads(previous_threads)


def _optimizer(module: OnnxModule, hooks: Sequence[TrainHook], settings: Settings, total_steps: int):
    """AdamW over the trainable initializers (with weight decay) and hook parameters (without), and a
    per-step cosine schedule from lr to 0 over ``total_steps``."""
    weights = [p for p in module.parameters() if p.requires_grad]
    extra = [p for hook in hooks for p in hook.parameters()]
    optimizer = torch.optim.AdamW([{"params": weights}, {"params": extra, "weight_decay": 0.0}],
                                  lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))
    return optimizer, scheduler


def _train_epoch(module: OnnxModule, hooks: Sequence[TrainHook], optimizer, scheduler, data: Data,
                 settings: Settings, epoch: int, bar: tqdm) -> tuple[float, float]:
    """One pass over the shuffled train set; returns (mean loss, lr of the last batch)."""
    module.train()
    order = epoch_order(settings.seed, epoch, len(data.x_train))
    torch.manual_seed(epoch_seed(settings.seed, epoch))
    loss_sum, lr = 0.0, settings.lr
    for first in range(0, len(order), settings.batch_size):
        idx = order[first:first + settings.batch_size]
        labels = None if data.y_train is None else torch.from_numpy(data.y_train[idx])
        loss = distillation_loss(_logits(module, data.x_train[idx]), torch.from_numpy(data.t_train[idx]),
                                 labels, settings.temperature, settings.kd_weight)
        for hook in hooks:
            penalty = hook.penalty(module)
            loss = loss if penalty is None else loss + penalty
        if not torch.isfinite(loss):
            raise UserError(f"training loss is {loss.item()} in epoch {epoch} (batch at sample {first}): the "
                            f"student, teacher or data has non-finite values, or {opt('lr')} is too large; nothing "
                            "written")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(idx)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return loss_sum / len(order), lr


def _finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None,
              epochs: int, settings: Settings, checkpoint: Path | None, resume: bool, progress: bool,
              hooks: list[TrainHook], threads: int | None) -> tuple[onnx.ModelProto, History]:
    module = OnnxModule(student)
    data, history = prepare(student, teacher, _predict(module), train, val, threads)
    torch.manual_seed(settings.seed)
    for hook in hooks:
        hook.attach(module)
    steps = math.ceil(len(data.x_train) / settings.batch_size)
    optimizer, scheduler = _optimizer(module, hooks, settings, epochs * steps)
    digest = fingerprint(student, teacher, train, val, repr(settings), hooks)
    best: dict[str, Any] | None = None
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = checkpoints.load(Path(checkpoint), digest)
        checkpoints.restore(module, hooks, state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start = History.from_dict(state["history"]), state["best"], state["epoch"]
    else:
        history.initial_val = score(_predict(module), data)
        if history.initial_val is not None and all(h.observes_only for h in hooks):  # never worse than its input
            best = {"epoch": 0, "val": history.initial_val, **checkpoints.snapshot(module, hooks)}
    for epoch in range(start + 1, epochs + 1):
        began = time.perf_counter()
        for hook in hooks:
            hook.on_epoch_start(module, epoch)
        with tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                  disable=not progress) as bar:
            loss, lr = _train_epoch(module, hooks, optimizer, scheduler, data, settings, epoch, bar)
        stats = EpochStats(epoch, loss, score(_predict(module), data), lr, time.perf_counter() - began)
        history.epochs.append(stats)
        for hook in hooks:
            hook.on_epoch_end(module, stats)
        if best is None or stats.val is None or stats.val > best["val"]:
            best = {"epoch": epoch, "val": stats.val, **checkpoints.snapshot(module, hooks)}
            history.best_epoch = epoch
        if checkpoint is not None:
            checkpoints.save(Path(checkpoint), digest, {
                "epoch": epoch, "module": module.state_dict(), "hooks": [hook.state_dict() for hook in hooks],
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": dataclasses.asdict(history), "best": best})
    if best is not None:
        checkpoints.restore(module, hooks, best)
    return write_back(module, student), history
