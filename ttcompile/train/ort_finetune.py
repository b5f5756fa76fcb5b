"""Knowledge-distillation fine-tuning with onnxruntime-training (no torch): the ``ort`` backend.

The same loss, data handling, validation, best-epoch choice, per-epoch shuffling and per-batch cosine
schedule as the torch backend (``ttcompile.train.finetune``), on artifacts built by
``ttcompile.train.ort_artifacts``: the student graph + KD loss + gradients, run by
``onnxruntime.training.api.Module``; AdamW (torch's) or plain SGD, the learning rate set before every
step. The teacher's logits come from ONNX Runtime inference once for the whole data set. Trained values
are written back into a copy of the student: same nodes, initializer names, shapes and dtypes.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ttcompile.errors import UserError, opt
from ttcompile.runtime import make_session
from ttcompile.train import ort_checkpoints
from ttcompile.train.common import (
    Data,
    EpochStats,
    History,
    Settings,
    cosine_factor,
    epoch_order,
    fingerprint,
    prepare,
    score,
    trainable_initializers,
)
from ttcompile.train.ort_artifacts import ORT, DistillationLoss, generate

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset

Weights = dict[str, np.ndarray]  # trainable initializer name -> value


def write_back(model: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """Copy of ``model`` whose initializers named in ``weights`` hold those values (same shapes/dtypes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in weights:
            value = np.asarray(weights[init.name])
            if value.shape != tuple(init.dims):
                raise UserError(f"initializer {init.name!r}: trained shape {value.shape} differs from the "
                                f"model's {tuple(init.dims)}")
            init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), init.name))
    return out


def predictor(model: onnx.ModelProto, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """``model``'s first output as a function of its only input, in ONNX Runtime inference."""
    session = make_session(model, threads=threads, name="the student")
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _session_options(threads: int | None):
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def _trainable(student: onnx.ModelProto) -> list[str]:
    names = trainable_initializers(student)
    kinds = {init.name: init.data_type for init in student.graph.initializer}
    other = [n for n in names if kinds[n] != onnx.TensorProto.FLOAT]
    if other:
        raise UserError(f"the ort backend trains float32 initializers only; {other[0]!r} is "
                        f"{onnx.helper.tensor_dtype_to_np_dtype(kinds[other[0]])}")
    return names


class _Run:
    """One fine-tuning run: the ORT module/optimizer over ``state`` and the data."""

    def __init__(self, student: onnx.ModelProto, names: list[str], state, training: Path, optimizer: Path,
                 data: Data, settings: Settings, total_steps: int, threads: int | None):
        self.student, self.names, self.state, self.data, self.settings = student, names, state, data, settings
        self.total_steps, self.threads = total_steps, threads
        self.module = ORT.api.Module(str(training), state, None, "cpu", _session_options(threads))
        self.optimizer = ORT.api.Optimizer(str(optimizer), self.module)
        self.inputs = self.module.input_names()

    def save_state(self, path: Path) -> None:
        """ORT's CheckpointState (parameters, optimizer moments and step) to ``path``."""
        ORT.api.CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state=True)

    def weights(self) -> Weights:
        return {name: self.state.parameters[name].data.copy() for name in self.names}

    def score(self) -> float | None:
        if self.data.x_val is None:
            return None
        return score(predictor(write_back(self.student, self.weights()), self.threads), self.data)

    def epoch(self, epoch: int, bar: tqdm) -> tuple[float, float]:
        """One pass over the shuffled train set; returns (mean loss, lr of the last batch)."""
        data, s = self.data, self.settings
        order = epoch_order(s.seed, epoch, len(data.x_train))
        steps = math.ceil(len(order) / s.batch_size)
        self.module.train()
        loss_sum, lr = 0.0, s.lr
        for i, first in enumerate(range(0, len(order), s.batch_size)):
            idx = order[first:first + s.batch_size]
            feed = {self.inputs[0]: data.x_train[idx], "teacher_logits": data.t_train[idx]}
            if data.y_train is not None:
                feed["labels"] = data.y_train[idx].astype(np.int64)
            lr = s.lr * cosine_factor((epoch - 1) * steps + i, self.total_steps)
            self.optimizer.set_learning_rate(lr)
            loss = float(self.module(*[feed[name] for name in self.inputs]))
            if not math.isfinite(loss):
                raise UserError(f"training loss is {loss} in epoch {epoch} (batch at sample {first}): the student, "
                                f"teacher or data has non-finite values, or {opt('lr')} is too large; nothing written")
            self.optimizer.step()
            self.module.lazy_reset_grad()
            loss_sum += loss * len(idx)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return loss_sum / len(order), lr


def finetune_ort(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None = None,
                 *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128, temperature: float = 4.0,
                 kd_weight: float = 0.9, weight_decay: float = 0.0, seed: int = 0, optimizer: str = "adamw",
                 checkpoint: Path | None = None, resume: bool = False, progress: bool = False,
                 threads: int | None = None, on_epoch: Callable[[EpochStats], None] | None = None,
                 ) -> tuple[onnx.ModelProto, History]:
    """Fine-tune ``student``'s trainable float32 initializers to mimic ``teacher`` on ``train`` with
    onnxruntime-training; arguments and result as ``ttcompile.train.finetune.finetune`` (``optimizer``:
    ``adamw``, or ``sgd`` without weight decay). With ``checkpoint`` our state and ORT's CheckpointState
    are saved atomically after every epoch (``ort_checkpoints``); ``resume`` continues from them, and a
    run interrupted at any point ends, resumed with the same ``epochs``, where an uninterrupted one would.
    ``on_epoch(stats)`` is called after each epoch's validation."""
    settings = Settings(lr, batch_size, temperature, kd_weight, weight_decay, seed)
    settings.check(epochs)
    if optimizer == "sgd" and weight_decay:
        raise UserError("weight decay needs the adamw optimizer")
    names = _trainable(student)
    data, history = prepare(student, teacher, predictor(student, threads), train, val, threads)
    loss = DistillationLoss(temperature, kd_weight, data.t_train.shape[1], data.y_train is not None)
    steps = math.ceil(len(data.x_train) / batch_size)
    digest = fingerprint(student, teacher, train, val, repr((settings, "ort", optimizer)))
    saved = None
    if resume and checkpoint is not None and Path(checkpoint).exists():
        saved = ort_checkpoints.load(Path(checkpoint), digest)
    with tempfile.TemporaryDirectory(prefix="ttcompile-ort-") as tmp:
        artifacts = generate(student, names, loss, optimizer, weight_decay, Path(tmp))
        state = ORT.api.CheckpointState.load_checkpoint(str(artifacts.checkpoint if saved is None
                                                            else saved.ort_state))
        run = _Run(student, names, state, artifacts.training, artifacts.optimizer, data, settings, epochs * steps,
                   threads)
        best, best_val, start = {}, None, 0
        if saved is None:
            history.initial_val = run.score()
            if history.initial_val is not None:  # never returns a worse model than it got (best_epoch 0)
                best, best_val = run.weights(), history.initial_val
        else:
            history, best, start = History.from_dict(saved.meta["history"]), saved.best, saved.meta["epoch"]
            best_val = saved.meta["best_val"]
        for epoch in range(start + 1, epochs + 1):
            began = time.perf_counter()
            with tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                      disable=not progress) as bar:
                mean_loss, last_lr = run.epoch(epoch, bar)
            stats = EpochStats(epoch, mean_loss, run.score(), last_lr, time.perf_counter() - began)
            history.epochs.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if not best or stats.val is None or stats.val > best_val:
                best, best_val, history.best_epoch = run.weights(), stats.val, epoch
            if checkpoint is not None:
                meta = {"epoch": epoch, "history": dataclasses.asdict(history), "best_val": best_val}
                ort_checkpoints.save(Path(checkpoint), digest, meta, best, run.save_state)
    return write_back(student, best or run.weights()), history
