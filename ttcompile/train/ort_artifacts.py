"""onnxruntime-training artifacts for distillation: the student graph + a KD loss block + its gradient
graph, an AdamW or SGD optimizer graph, and the initial CheckpointState.

Loss (the torch backend's ``distillation_loss``): with logits s, teacher logits t (both (N, C)),
temperature T and ``p = softmax(./T)``, ``kd = T^2 * sum_ij p_t (log p_t - log p_s) / N`` (KL, batch
mean); with labels y, ``loss = kd_weight * kd + (1 - kd_weight) * CE(s, y)``. Training-model inputs:
the student's input, ``teacher_logits`` (N, C) float32 and, with labels, ``labels`` (N,) int64.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ttcompile.errors import UserError
from ttcompile.train.ort_api import load

ORT = load()
TEACHER, LABELS = "teacher_logits", "labels"
OPTIMIZERS = ("adamw", "sgd")


class DistillationLoss(ORT.onnxblock.Block):
    """The KD (+ CE) loss on top of the student's logits output; ``classes`` = C."""

    def __init__(self, temperature: float, kd_weight: float, classes: int, labelled: bool):
        super().__init__()
        self.temperature, self.kd_weight, self.classes, self.labelled = temperature, kd_weight, classes, labelled

    def _node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> str:
        """Append an ``op`` node; returns its first output's name."""
        out = f"kd.{op.lower()}.{len(self.base.graph.node)}"
        names = [out] + [f"{out}.{i}" for i in range(1, outputs)]
        self.base.graph.node.append(helper.make_node(op, inputs, names, name=out, **attrs))
        return out

    def _const(self, value: float) -> str:
        return self._node("Constant", [], value=numpy_helper.from_array(np.array(value, np.float32)))

    def build(self, logits: str) -> str:
        graph = self.base.graph
        graph.input.append(helper.make_tensor_value_info(TEACHER, onnx.TensorProto.FLOAT, ["N", self.classes]))
        temperature = self._const(self.temperature)
        log_s = self._node("LogSoftmax", [self._node("Div", [logits, temperature])], axis=1)
        log_t = self._node("LogSoftmax", [self._node("Div", [TEACHER, temperature])], axis=1)
        pointwise = self._node("Mul", [self._node("Exp", [log_t]), self._node("Sub", [log_t, log_s])])
        # mean over all N*C entries, times C: the batch mean of the per-sample KL; times T^2
        kd = self._node("Mul", [self._node("ReduceMean", [pointwise], keepdims=0),
                                self._const(self.classes * self.temperature**2)])
        if not self.labelled:
            return self._node("Identity", [kd])
        graph.input.append(helper.make_tensor_value_info(LABELS, onnx.TensorProto.INT64, ["N"]))
        # the gradient builder needs the log-probability output too
        ce = self._node("SoftmaxCrossEntropyLoss", [logits, LABELS], outputs=2, reduction="mean")
        return self._node("Add", [self._node("Mul", [kd, self._const(self.kd_weight)]),
                                  self._node("Mul", [ce, self._const(1 - self.kd_weight)])])


@dataclass(frozen=True)
class Artifacts:
    directory: Path
    training: Path
    optimizer: Path
    checkpoint: Path  # initial CheckpointState (the student's initializers)


def generate(student: onnx.ModelProto, trainable: list[str], loss: DistillationLoss, optimizer: str,
             weight_decay: float, directory: Path) -> Artifacts:
    """Write the training artifacts for ``student`` (its first output = logits) into ``directory``.

    ``adamw`` is torch's AdamW (decoupled weight decay, bias correction, eps 1e-8: ORT's ``adam_mode`` 0);
    ``sgd`` is plain SGD (no weight decay)."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not trainable:
        raise UserError("the student has no trainable float initializers")
    model = onnx.ModelProto()
    model.CopyFrom(student)
    del model.graph.output[1:]
    block = (ORT.onnxblock.optim.SGD() if optimizer == "sgd"
             else ORT.onnxblock.optim.AdamW(eps=1e-8, weight_decay=weight_decay))
    try:
        with _stderr_silenced():
            ORT.artifacts.generate_artifacts(model, requires_grad=trainable, loss=loss, optimizer=block,
                                             artifact_directory=directory)
    except Exception as exc:  # the gradient builder refuses ops it has no gradient for
        raise UserError(f"onnxruntime-training cannot build the training graph: {exc}") from None
    out = Artifacts(directory, directory / "training_model.onnx", directory / "optimizer_model.onnx",
                    directory / "checkpoint")
    if optimizer == "adamw":
        _torch_adamw(out.optimizer)
    return out


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Discard what is written to file descriptor 2 (the gradient builder's C++ logger prints every graph
    transformer at info level, whatever the Python-side severity)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _torch_adamw(path: Path) -> None:
    """Switch the AdamWOptimizer node to PyTorch's AdamW (ORT's onnxblock emits the HF variant)."""
    model = onnx.load(path)
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for attr in node.attribute:
                if attr.name == "adam_mode":
                    attr.i = 0
    onnx.save(model, path)
