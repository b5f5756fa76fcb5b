"""What the fine-tuning backends share, free of torch and of onnxruntime-training.

Settings and their checks, the history they return, the teacher's logits (ONNX Runtime inference), the
data checked against both models, validation scoring, the per-epoch seeds, the cosine schedule, the
trainable-initializer rule and the run fingerprint that a checkpoint may be resumed with.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ttcompile.errors import UserError
from ttcompile.protos import graph_inputs, run_batched
from ttcompile.runtime import make_session

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset

EVAL_BATCH = 256  # inference batch; 1024 ran 2x slower per sample than 128-256 on CPU (LeNet-5)
# Float initializers in these input slots are statistics, hyper-parameters or input normalisation
# constants (x - mean) / std, never trained.
FROZEN_SLOTS: dict[str, tuple[int, ...]] = {"BatchNormalization": (3, 4), "Pow": (1,), "Clip": (1, 2),
                                            "Pad": (2,), "Sub": (1,), "Div": (1,)}
Logits = Callable[[np.ndarray], np.ndarray]  # student inputs (n, ...) -> logits (n, C)


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
    best_epoch: int = 0  # epoch whose weights were returned: best val metric, else the last one; 0: the input's

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{**d, "epochs": [EpochStats(**e) for e in d["epochs"]]})


@dataclass(frozen=True)
class Settings:
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


def cosine_factor(step: int, total_steps: int) -> float:
    """Learning-rate factor of 0-based ``step``: cosine from 1 down to 0 over ``total_steps``."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled sample order of ``epoch``: a permutation of range(n) seeded from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def trainable_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the float initializers with more than one element outside FROZEN_SLOTS, in graph order."""
    graph = model.graph
    frozen = {node.input[i] for node in graph.node for i in FROZEN_SLOTS.get(node.op_type, ())
              if i < len(node.input)}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    return [init.name for init in graph.initializer
            if init.data_type in floats and math.prod(init.dims) > 1 and init.name not in frozen]


def teacher_logits(teacher: onnx.ModelProto, x: np.ndarray, batch: int = EVAL_BATCH,
                   threads: int | None = None) -> np.ndarray:
    """The teacher's first output for every sample of ``x``, with ONNX Runtime, in batches."""
    session = make_session(teacher, threads=threads)
    name = session.get_inputs()[0].name
    return np.concatenate(list(run_batched(lambda feeds: session.run(None, feeds)[0], {name: x}, batch)))


def fit_input(data: Dataset, model: onnx.ModelProto, role: str) -> np.ndarray:
    """``data.x`` shaped for the model's only input: samples are reshaped to its static shape when the
    sizes agree (flat MNIST for a conv net and back); a fixed batch dimension is refused."""
    inputs = graph_inputs(model)
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


@dataclass
class Data:
    """Arrays shaped for the student; teacher logits (N, C) float32; val targets: labels or teacher top-1."""

    x_train: np.ndarray
    t_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray | None
    val_target: np.ndarray | None


def prepare(student: onnx.ModelProto, teacher: onnx.ModelProto, student_logits: Logits, train: Dataset,
            val: Dataset | None, threads: int | None) -> tuple[Data, History]:
    """Check the data against both models (``student_logits`` probes the student's output shape), run
    the teacher, and start the history."""
    if not len(train.x):
        raise UserError(f"training data {train.name!r} is empty")
    x_train = fit_input(train, student, "student")
    t_train = teacher_logits(teacher, fit_input(train, teacher, "teacher"), threads=threads)
    if t_train.ndim != 2:
        raise UserError(f"the teacher's output must be logits (N, classes), got shape {t_train.shape}")
    probe = student_logits(x_train[:2])
    if tuple(probe.shape[1:]) != t_train.shape[1:]:
        raise UserError(f"student output shape {tuple(probe.shape)} does not match the teacher's "
                        f"(N, {t_train.shape[1]})")
    _check_labels(train, t_train.shape[1])
    data = Data(x_train, t_train, train.y, None, None)
    history = History(metric=None, teacher_val=None, initial_val=None)
    if val is not None:
        _check_labels(val, t_train.shape[1])
        data.x_val = fit_input(val, student, "student")
        t_val = teacher_logits(teacher, fit_input(val, teacher, "teacher"), threads=threads).argmax(1)
        data.val_target = t_val if val.y is None else val.y
        history.metric = "agreement" if val.y is None else "accuracy"
        history.teacher_val = None if val.y is None else float((t_val == val.y).mean())
    return data, history


def score(student_logits: Logits, data: Data) -> float | None:
    """Share of val samples whose student top-1 equals the target (None without val data)."""
    if data.x_val is None:
        return None
    x = data.x_val
    logits = run_batched(lambda feeds: student_logits(feeds["x"]), {"x": x}, EVAL_BATCH)
    predicted = np.concatenate([y.argmax(1) for y in logits])
    return float((predicted == data.val_target).mean())


def fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None,
                settings: str, hooks: Sequence[object] = ()) -> str:
    """Digest of what a run depends on: both models, the data, ``settings`` and the hook types."""
    h = hashlib.sha256()
    for model in (student, teacher):
        h.update(model.SerializeToString(deterministic=True))
    for data in (train, val):
        for array in (None, None) if data is None else (data.x, data.y):
            h.update(b"-" if array is None else np.ascontiguousarray(array).data)
    h.update(repr((settings, [type(hook).__qualname__ for hook in hooks])).encode())
    return h.hexdigest()
