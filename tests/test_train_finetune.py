"""Distillation fine-tuning: the loss, improvement towards the teacher, checkpoints and resume, hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ttcompile.errors import UserError  # noqa: E402
from ttcompile.models.data import Dataset  # noqa: E402
from ttcompile.train.finetune import distillation_loss, finetune  # noqa: E402
from ttcompile.train.hooks import TrainHook  # noqa: E402

from train_helpers import assert_same_run, distillation_task, mlp, run_ort, weights  # noqa: E402

FAST = dict(lr=1e-2, batch_size=50, progress=False, threads=1)


@pytest.fixture(scope="module")
def task():
    return distillation_task()


def test_distillation_loss():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert distillation_loss(t, t, None, 4.0, 0.9).abs() < 1e-6
    assert distillation_loss(s, t, None, 4.0, 0.9) > 0
    ce = torch.nn.functional.cross_entropy(s, labels)
    assert torch.allclose(distillation_loss(s, t, labels, 4.0, 0.0), ce)
    kd = distillation_loss(s, t, None, 2.0, 0.9)
    assert torch.allclose(distillation_loss(s, t, labels, 2.0, 0.25), 0.25 * kd + 0.75 * ce)


@pytest.mark.parametrize("labelled", [True, False])
def test_finetune_moves_student_towards_teacher(task, labelled):
    teacher, student, train, val = task
    if not labelled:
        train, val = Dataset(train.x, None, "train"), Dataset(val.x, None, "val")
    out, history = finetune(student, teacher, train, val, epochs=4, **FAST)
    assert history.metric == ("accuracy" if labelled else "agreement")
    assert history.teacher_val == (1.0 if labelled else None)
    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4]
    best = max(history.epochs, key=lambda e: e.val)
    assert history.best_epoch == best.epoch
    assert best.val > history.initial_val + 0.15
    onnx.checker.check_model(out, full_check=True)
    assert [n.SerializeToString() for n in out.graph.node] == [n.SerializeToString() for n in student.graph.node]
    assert list(weights(out)) == list(weights(student))
    agreement = (run_ort(out, {"x": val.x})[0].argmax(1) == run_ort(teacher, {"x": val.x})[0].argmax(1)).mean()
    assert agreement == pytest.approx(best.val)  # the returned weights are the best epoch's


def test_no_epoch_better_than_the_input_returns_the_input(task):
    teacher, _, train, val = task
    # the teacher as its own student is perfect on val; a learning rate of 1 only makes it worse
    out, history = finetune(teacher, teacher, train, val, epochs=2, **{**FAST, "lr": 1.0})
    assert history.initial_val == 1.0 and all(e.val < 1.0 for e in history.epochs), history
    assert history.best_epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights(out).values(), weights(teacher).values()))


class Interrupt(TrainHook):
    """Stops the run (like Ctrl-C) when ``epoch`` starts."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_start(self, module, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_result(task, tmp_path: Path):
    teacher, student, train, val = task
    ckpt = tmp_path / "run.ckpt"
    reference, ref_history = finetune(student, teacher, train, val, epochs=3, **FAST)
    with pytest.raises(KeyboardInterrupt):
        finetune(student, teacher, train, val, epochs=3, checkpoint=ckpt, hooks=[Interrupt(3)], **FAST)
    out, history = finetune(student, teacher, train, val, epochs=3, checkpoint=ckpt, resume=True,
                            hooks=[Interrupt(0)], **FAST)
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    assert_same_run(out, history, reference, ref_history)


def test_finished_run_extends_with_more_epochs(task, tmp_path: Path):
    teacher, student, train, _ = task
    ckpt = tmp_path / "run.ckpt"
    finetune(student, teacher, train, None, epochs=2, checkpoint=ckpt, **FAST)
    out, history = finetune(student, teacher, train, None, epochs=3, checkpoint=ckpt, resume=True, **FAST)
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    assert history.best_epoch == 3 and history.metric is None
    onnx.checker.check_model(out, full_check=True)


def test_resume_refuses_a_checkpoint_of_another_run(task, tmp_path: Path):
    teacher, student, train, _ = task
    ckpt = tmp_path / "run.ckpt"
    finetune(student, teacher, train, None, epochs=1, checkpoint=ckpt, **FAST)
    with pytest.raises(UserError, match="different run"):
        finetune(student, teacher, train, None, epochs=2, checkpoint=ckpt, resume=True,
                 **{**FAST, "lr": 0.5})
    ckpt.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable"):
        finetune(student, teacher, train, None, epochs=2, checkpoint=ckpt, resume=True, **FAST)


class ScaleGate(TrainHook):
    """A stand-in for ℓ0 gates: scales fc0.weight by a learned scalar that a penalty pushes down."""

    def __init__(self):
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[str, int]] = []

    def attach(self, module):
        module.set_transform("fc0.weight", lambda w: w * self.scale)

    def parameters(self):
        return [self.scale]

    def penalty(self, module):
        return 5.0 * self.scale.abs()

    def on_epoch_start(self, module, epoch):
        self.calls.append(("start", epoch))

    def on_epoch_end(self, module, stats):
        self.calls.append(("end", stats.epoch))

    def state_dict(self):
        return {"scale": self.scale.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.scale.copy_(state["scale"])


def test_hook_penalty_parameters_and_transform(task):
    teacher, student, train, _ = task
    gate = ScaleGate()
    out, _ = finetune(student, teacher, train, None, epochs=2, hooks=[gate], **FAST)
    assert gate.calls == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert gate.scale.item() < 0.95
    # the written weight is the gated one: undoing the gate recovers a weight of the student's scale
    written = weights(out)["fc0.weight"] / gate.scale.item()
    assert np.abs(written).mean() == pytest.approx(np.abs(weights(student)["fc0.weight"]).mean(), rel=0.2)


def test_flat_data_is_reshaped_to_the_model_input(task):
    teacher, student, train, _ = task
    images = Dataset(train.x.reshape(-1, 2, 4), train.y, "images")
    _, history = finetune(student, teacher, images, None, epochs=1, **FAST)
    assert len(history.epochs) == 1


@pytest.mark.parametrize("bad, match", [
    (dict(epochs=0), "epochs"), (dict(kd_weight=1.5), "kd weight"), (dict(temperature=0), "temperature"),
])
def test_bad_settings(task, bad, match):
    teacher, student, train, _ = task
    with pytest.raises(UserError, match=match):
        finetune(student, teacher, train, None, **{**FAST, "epochs": 1, **bad})


def test_bad_data(task):
    teacher, student, train, _ = task
    with pytest.raises(UserError, match="shape"):
        finetune(student, teacher, Dataset(train.x[:, :5], None, "narrow"), None, epochs=1, **FAST)
    with pytest.raises(UserError, match="labels outside"):
        finetune(student, teacher, Dataset(train.x, train.y + 4, "bad"), None, epochs=1, **FAST)
    other = mlp(np.random.default_rng(2), (8, 16, 5))
    with pytest.raises(UserError, match="does not match the teacher"):
        finetune(other, teacher, train, None, epochs=1, **FAST)
