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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ttcompile.errors import UserError
from ttcompile.runtime import make_session
from ttcompile.train import checkpoints
from ttcompile.train.executor import OnnxModule, write_back
from ttcompile.train.hooks import TrainHook

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset

EVAL_BATCH = 256  # inference batch; 1024 ran 2x slower per sample than 128-256 on CPU (LeNet-5)


@dataclass
class EpochStats:
    epoch: int  # counted from 1
    loss: float  # mean training loss over the epoch's samples, penalties included
    val: float | None  # validation metric after the epoch (History.metric), None without val data
    lr: float  # learning rate of the epoch's last batch
    seconds: float


@dataclass
class History:
    metric: str | None  # "accuracy" (val labels), "agreement" (top-1 with the teacher), None (no val data)
    teacher_val: float | None  # the teacher's val accuracy (labelled val data only)
    initial_val: float | None  # the student's val metric before fine-tuning
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # epoch whose weights were returned: best val metric, else the last one

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{**d, "epochs": [EpochStats(**e) for e in d["epochs"]]})


@dataclass(frozen=True)
class _Settings:
    lr: float
    batch_size: int
    temperature: float
    kd_weight: float
    weight_decay: float
    seed: int

    def check(self, epochs: int) -> None:
        if epochs < 1:
            raise UserError(f"epochs must be >= 1, got {epochs}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.temperature > 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.kd_weight <= 1:
            raise UserError(f"kd weight must be in [0, 1], got {self.kd_weight}")
        if not self.weight_decay >= 0:
            raise UserError(f"weight decay must be >= 0, got {self.weight_decay}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, kd_weight: float) -> torch.Tensor:
    """student, teacher: logits (N, C); labels (N,) int64 or None (pure distillation)."""
    kd = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                  reduction="batchmean", log_target=True) * temperature**2
    if labels is None:
        return kd
    return kd_weight * kd + (1 - kd_weight) * F.cross_entropy(student, labels)


def teacher_logits(teacher: onnx.ModelProto, x: np.ndarray, batch: int = EVAL_BATCH,
                   threads: int | None = None) -> np.ndarray:
    """The teacher's first output for every sample of ``x``, with ONNX Runtime, in batches."""
    session = make_session(teacher.SerializeToString(), threads=threads)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _fit_input(data: Dataset, model: onnx.ModelProto, role: str) -> np.ndarray:
    """``data.x`` shaped for the model's only input: samples are reshaped to its static shape when the
    sizes agree (flat MNIST for a conv net and back); a fixed batch dimension is refused."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"the {role} model must have exactly one input, it has {len(inputs)}")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise UserError(f"the {role} model's input {inputs[0].name!r} must be float32")
    if not tensor.HasField("shape"):
        return data.x
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if dims and dims[0] is not None:
        raise UserError(f"the {role} model's input {inputs[0].name!r} has a fixed batch size {dims[0]}; "
                        "export it with a dynamic batch dimension")
    sample = list(data.x.shape[1:])
    if len(dims) - 1 == len(sample) and all(d in (None, s) for d, s in zip(dims[1:], sample, strict=True)):
        return data.x
    if None not in dims[1:] and math.prod(dims[1:]) == math.prod(sample):
        return data.x.reshape(len(data.x), *dims[1:])
    raise UserError(f"data {data.name!r} has samples of shape {tuple(sample)} but the {role} model's input "
                    f"{inputs[0].name!r} takes {tuple('?' if d is None else d for d in dims[1:])}")


def _check_labels(data: Dataset, classes: int) -> None:
    if data.y is not None and len(data.y) and (data.y.min() < 0 or data.y.max() >= classes):
        raise UserError(f"data {data.name!r} has labels outside 0..{classes - 1} (the teacher's classes)")


def _logits(module: OnnxModule, x: np.ndarray) -> torch.Tensor:
    out = module(torch.from_numpy(x))
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Data:
    """Arrays shaped for the student; teacher logits (N, C) float32; val targets: labels or teacher top-1."""

    x_train: np.ndarray
    t_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray | None
    val_target: np.ndarray | None


def _prepare(student: onnx.ModelProto, teacher: onnx.ModelProto, module: OnnxModule, train: Dataset,
             val: Dataset | None, threads: int | None) -> tuple[_Data, History]:
    """Check the data against both models, run the teacher, and start the history."""
    if not len(train.x):
        raise UserError(f"training data {train.name!r} is empty")
    x_train = _fit_input(train, student, "student")
    t_train = teacher_logits(teacher, _fit_input(train, teacher, "teacher"), threads=threads)
    if t_train.ndim != 2:
        raise UserError(f"the teacher's output must be logits (N, classes), got shape {t_train.shape}")
    with torch.no_grad():
        probe = _logits(module.eval(), x_train[:2])
    if tuple(probe.shape[1:]) != t_train.shape[1:]:
        raise UserError(f"student output shape {tuple(probe.shape)} does not match the teacher's "
                        f"(N, {t_train.shape[1]})")
    _check_labels(train, t_train.shape[1])
    data = _Data(x_train, t_train, train.y, None, None)
    history = History(metric=None, teacher_val=None, initial_val=None)
    if val is not None:
        _check_labels(val, t_train.shape[1])
        data.x_val = _fit_input(val, student, "student")
        t_val = teacher_logits(teacher, _fit_input(val, teacher, "teacher"), threads=threads).argmax(1)
        data.val_target = t_val if val.y is None else val.y
        history.metric = "agreement" if val.y is None else "accuracy"
        history.teacher_val = None if val.y is None else float((t_val == val.y).mean())
    return data, history


@torch.no_grad()
def _score(module: OnnxModule, data: _Data) -> float | None:
    """Share of val samples whose student top-1 equals the target (None without val data)."""
    if data.x_val is None:
        return None
    module.eval()
    x = data.x_val
    predicted = np.concatenate([_logits(module, x[i:i + EVAL_BATCH]).argmax(1).numpy()
                                for i in range(0, len(x), EVAL_BATCH)])
    return float((predicted == data.val_target).mean())


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None = None,
             *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128, temperature: float = 4.0,
             kd_weight: float = 0.9, weight_decay: float = 0.0, seed: int = 0, checkpoint: Path | None = None,
             resume: bool = False, progress: bool = True, hooks: Sequence[TrainHook] | None = None,
             threads: int | None = None) -> tuple[onnx.ModelProto, History]:
    """Fine-tune ``student``'s float initializers to mimic ``teacher`` on ``train``.

    Validation after each epoch: accuracy on ``val``'s labels, else top-1 agreement with the teacher;
    the best epoch's weights are returned (the last epoch's without ``val``). With ``checkpoint`` the
    full state is saved atomically after every epoch; ``resume`` continues from it (a missing file
    starts afresh), so an interrupted run loses at most one epoch and, with the same ``epochs``, ends
    where an uninterrupted one would; a larger ``epochs`` extends a finished run (the cosine schedule
    is stretched to the new length). Each epoch's shuffling and torch RNG are seeded from
    (seed, epoch). ``threads`` caps torch's and ONNX Runtime's threads for the call (one thread is far
    faster than two when the cores are shared). Returns a copy of ``student`` with trained
    initializers (same nodes and names) and the history.
    """
    settings = _Settings(lr, batch_size, temperature, kd_weight, weight_decay, seed)
    settings.check(epochs)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _finetune(student, teacher, train, val, epochs, settings, checkpoint, resume, progress,
                         list(hooks or ()), threads)
    finally:
        torch.set_num_threads(previous_threads)


def _optimizer(module: OnnxModule, hooks: Sequence[TrainHook], settings: _Settings, total_steps: int):
    """AdamW over the trainable initializers (with weight decay) and hook parameters (without), and a
    per-step cosine schedule from lr to 0 over ``total_steps``."""
    weights = [p for p in module.parameters() if p.requires_grad]
    extra = [p for hook in hooks for p in hook.parameters()]
    optimizer = torch.optim.AdamW([{"params": weights}, {"params": extra, "weight_decay": 0.0}],
                                  lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    return optimizer, scheduler


def _train_epoch(module: OnnxModule, hooks: Sequence[TrainHook], optimizer, scheduler, data: _Data,
                 settings: _Settings, epoch: int, bar: tqdm) -> tuple[float, float]:
    """One pass over the shuffled train set; returns (mean loss, lr of the last batch)."""
    module.train()
    order = np.random.default_rng([settings.seed, epoch]).permutation(len(data.x_train))
    torch.manual_seed(_epoch_seed(settings.seed, epoch))
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
                            "student, teacher or data has non-finite values, or --lr is too large; nothing written")
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
              epochs: int, settings: _Settings, checkpoint: Path | None, resume: bool, progress: bool,
              hooks: list[TrainHook], threads: int | None) -> tuple[onnx.ModelProto, History]:
    module = OnnxModule(student)
    data, history = _prepare(student, teacher, module, train, val, threads)
    torch.manual_seed(settings.seed)
    for hook in hooks:
        hook.attach(module)
    steps = math.ceil(len(data.x_train) / settings.batch_size)
    optimizer, scheduler = _optimizer(module, hooks, settings, epochs * steps)
    fingerprint = checkpoints.fingerprint(student, teacher, train, val, repr(settings), hooks)
    best: dict[str, Any] | None = None
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = checkpoints.load(Path(checkpoint), fingerprint)
        checkpoints.restore(module, hooks, state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start = History.from_dict(state["history"]), state["best"], state["epoch"]
    else:
        history.initial_val = _score(module, data)
    for epoch in range(start + 1, epochs + 1):
        began = time.perf_counter()
        for hook in hooks:
            hook.on_epoch_start(module, epoch)
        with tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                  disable=not progress) as bar:
            loss, lr = _train_epoch(module, hooks, optimizer, scheduler, data, settings, epoch, bar)
        stats = EpochStats(epoch, loss, _score(module, data), lr, time.perf_counter() - began)
        history.epochs.append(stats)
        for hook in hooks:
            hook.on_epoch_end(module, stats)
        if best is None or stats.val is None or stats.val > best["val"]:
            best = {"epoch": epoch, "val": stats.val, **checkpoints.snapshot(module, hooks)}
            history.best_epoch = epoch
        if checkpoint is not None:
            checkpoints.save(Path(checkpoint), fingerprint, {
                "epoch": epoch, "module": module.state_dict(), "hooks": [hook.state_dict() for hook in hooks],
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": dataclasses.asdict(history), "best": best})
    if best is not None:
        checkpoints.restore(module, hooks, best)
    return write_back(module, student), history
