"""The onnxruntime-training backend (``--backend ort``), in the torch-free ``[ort-training]`` venv.

Skipped where onnxruntime-training is not installed (the default venv); ``.ci/run`` builds that venv and
runs these tests there. The parity test also runs the torch backend, in the default venv, as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ttcompile.errors import UserError
from ttcompile.train.ort_api import load

pytestmark = pytest.mark.ort_training
try:
    load()
except UserError:
    pytest.skip("onnxruntime-training is not installed (the [ort-training] extra, in its own venv: see .ci/run)",
                allow_module_level=True)

from ttcompile.cli import main  # noqa: E402
from ttcompile.models.data import Dataset  # noqa: E402
from ttcompile.train import ort_checkpoints  # noqa: E402
from ttcompile.train.ort_finetune import finetune_ort  # noqa: E402

from train_helpers import (  # noqa: E402
    assert_same_run,
    distillation_task,
    finetune_args,
    finetune_files,
    mlp,
    perturbed,
    run_ort,
    weights,
)

FAST = dict(lr=1e-2, batch_size=50, progress=False, threads=1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task():
    return distillation_task()


@pytest.mark.parametrize("labelled", [True, False])
def test_finetune_moves_student_towards_teacher(task, labelled):
    teacher, student, train, val = task
    if not labelled:
        train, val = Dataset(train.x, None, "train"), Dataset(val.x, None, "val")
    out, history = finetune_ort(student, teacher, train, val, epochs=4, **FAST)
    assert history.metric == ("accuracy" if labelled else "agreement")
    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4]
    best = max(history.epochs, key=lambda e: e.val)
    assert history.best_epoch == best.epoch
    assert best.val > history.initial_val + 0.15
    onnx.checker.check_model(out, full_check=True)
    assert [n.SerializeToString() for n in out.graph.node] == [n.SerializeToString() for n in student.graph.node]
    assert [(i.name, i.dims, i.data_type) for i in out.graph.initializer] == \
        [(i.name, i.dims, i.data_type) for i in student.graph.initializer]
    assert [v.SerializeToString() for v in (*out.graph.input, *out.graph.output)] == \
        [v.SerializeToString() for v in (*student.graph.input, *student.graph.output)]
    predicted = run_ort(out, {"x": val.x})[0].argmax(1)
    target = val.y if labelled else run_ort(teacher, {"x": val.x})[0].argmax(1)
    assert (predicted == target).mean() == pytest.approx(best.val)  # the returned weights are the best epoch's


KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
import numpy as np, onnx
from ttcompile.models.data import Dataset
from ttcompile.train.ort_artifacts import ORT
from ttcompile.train.ort_finetune import finetune_ort

kill_at, calls, step = int(sys.argv[1]), [0], ORT.api.Optimizer.step
def counted(self):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    step(self)
ORT.api.Optimizer.step = counted
d = np.load(sys.argv[2])
finetune_ort(onnx.load(sys.argv[3]), onnx.load(sys.argv[4]), Dataset(d["x"], d["y"], "train"),
             Dataset(d["vx"], d["vy"], "val"), epochs=3, checkpoint=Path(sys.argv[5]), lr=1e-2, batch_size=50,
             progress=False, threads=1)
"""


def ort_checkpoints_digest(path: Path) -> str:
    """The fingerprint a checkpoint was written with (to load it without rebuilding the run)."""
    with np.load(path) as npz:
        return json.loads(npz["meta"].tobytes())["fingerprint"]


def test_sigkill_mid_epoch_resumes_to_the_same_result(task, tmp_path: Path):
    teacher, student, train, val = task
    reference, ref_history = finetune_ort(student, teacher, train, val, epochs=3, **FAST)
    paths = {name: tmp_path / name for name in ("data.npz", "student.onnx", "teacher.onnx")}
    np.savez(paths["data.npz"], x=train.x, y=train.y, vx=val.x, vy=val.y)
    onnx.save(student, paths["student.onnx"])
    onnx.save(teacher, paths["teacher.onnx"])
    ckpt = tmp_path / "run.ckpt"
    steps = len(train.x) // FAST["batch_size"]
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(2 * steps + 3), *map(str, paths.values()),
                            str(ckpt)], capture_output=True, text=True, cwd=tmp_path)
    assert child.returncode == -signal.SIGKILL, child.stderr  # killed in epoch 3, 3 batches in
    saved = ort_checkpoints.load(ckpt, ort_checkpoints_digest(ckpt))
    assert saved.meta["epoch"] == 2 and saved.ort_state.is_file()
    assert sorted(p.name for p in tmp_path.glob("run.ckpt.ort*")) == ["run.ckpt.ort2"]
    out, history = finetune_ort(student, teacher, train, val, epochs=3, checkpoint=ckpt, resume=True, **FAST)
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    assert [e.loss for e in history.epochs] == pytest.approx([e.loss for e in ref_history.epochs], rel=1e-6)
    assert history.best_epoch == ref_history.best_epoch
    assert_same_run(out, history, reference, ref_history)


def test_no_epoch_better_than_the_input_returns_the_input(task):
    teacher, _, train, val = task
    out, history = finetune_ort(teacher, teacher, train, val, epochs=2, **{**FAST, "lr": 1.0})
    assert history.initial_val == 1.0 and all(e.val < 1.0 for e in history.epochs), history
    assert history.best_epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights(out).values(), weights(teacher).values()))


def test_resume_refuses_other_runs_and_extends_finished_ones(task, tmp_path: Path):
    teacher, student, train, _ = task
    ckpt = tmp_path / "run.ckpt"
    finetune_ort(student, teacher, train, None, epochs=2, checkpoint=ckpt, **FAST)
    with pytest.raises(UserError, match="different run"):
        finetune_ort(student, teacher, train, None, epochs=2, checkpoint=ckpt, resume=True,
                     **{**FAST, "lr": 0.5})
    out, history = finetune_ort(student, teacher, train, None, epochs=3, checkpoint=ckpt, resume=True, **FAST)
    assert [e.epoch for e in history.epochs] == [1, 2, 3] and history.best_epoch == 3
    onnx.checker.check_model(out, full_check=True)


TORCH_SGD_STEP = """
import sys
import numpy as np, onnx, torch
from ttcompile.train.common import teacher_logits
from ttcompile.train.executor import OnnxModule
from ttcompile.train.finetune import distillation_loss

student, teacher, data, lr, out = onnx.load(sys.argv[1]), onnx.load(sys.argv[2]), np.load(sys.argv[3]), \\
    float(sys.argv[4]), sys.argv[5]
module = OnnxModule(student)
trained = [p for p in module.parameters() if p.requires_grad]
optimizer = (torch.optim.SGD(trained, lr=lr) if sys.argv[6] == "sgd"
             else torch.optim.AdamW(trained, lr=lr, weight_decay=0.1))
x = data["x"]
loss = distillation_loss(module(torch.from_numpy(x)), torch.from_numpy(teacher_logits(teacher, x)),
                         torch.from_numpy(data["y"]), 4.0, 0.7)
loss.backward()
optimizer.step()
np.savez(out, loss=loss.item(), **{name: p.detach().numpy() for name, p in module.onnx_parameters().items()})
"""


def torch_python() -> str:
    """The default venv's python (``$TTCOMPILE_TORCH_PYTHON``, else the repository's .venv), if it has torch."""
    python = os.environ.get("TTCOMPILE_TORCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    if not Path(python).exists() or subprocess.run([python, "-c", "import torch"], capture_output=True).returncode:
        pytest.skip(f"no python with torch at {python} (set TTCOMPILE_TORCH_PYTHON) for the torch side of parity")
    return python


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_one_step_matches_the_torch_backend(tmp_path: Path, optimizer: str):
    """From the same compressed student, one plain-SGD (or AdamW, weight decay 0.1) step on the same batch:
    the same updated initializers (and loss) in torch (subprocess, default venv) and ORT (here)."""
    rng = np.random.default_rng(5)
    dense = mlp(rng, (64, 64, 10))
    paths = {name: tmp_path / name for name in ("teacher.onnx", "student.onnx", "batch.npz", "torch.npz")}
    onnx.save(dense, paths["teacher.onnx"])
    onnx.save(perturbed(dense, rng, 0.05), tmp_path / "noisy.onnx")
    assert main(["compress", str(tmp_path / "noisy.onnx"), "--format", "tt", "--rank", "4", "--force",
                 "--allow-more-macs", "-o", str(paths["student.onnx"]), "--quiet"]) == 0
    student, teacher = onnx.load(paths["student.onnx"]), onnx.load(paths["teacher.onnx"])
    assert {"Reshape", "MatMul"} <= {n.op_type for n in student.graph.node}  # TT chains, not just Gemm
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    np.savez(paths["batch.npz"], x=x, y=y)
    lr = 0.05 if optimizer == "sgd" else 1e-3
    torch_side = subprocess.run([torch_python(), "-c", TORCH_SGD_STEP, str(paths["student.onnx"]),
                                 str(paths["teacher.onnx"]), str(paths["batch.npz"]), str(lr), str(paths["torch.npz"]),
                                 optimizer],
                                capture_output=True, text=True, cwd=ROOT)
    assert torch_side.returncode == 0, torch_side.stderr
    out, history = finetune_ort(student, teacher, Dataset(x, y, "batch"), epochs=1, lr=lr, batch_size=len(x),
                                temperature=4.0, kd_weight=0.7, optimizer=optimizer, progress=False, threads=1,
                                weight_decay=0.1 if optimizer == "adamw" else 0.0)
    expected = np.load(paths["torch.npz"])
    assert history.epochs[0].loss == pytest.approx(float(expected["loss"]), rel=1e-5)
    before, after = weights(student), weights(out)
    trained = [name for name in after if name in expected.files and after[name].size > 1]
    assert trained
    for name in trained:
        assert np.abs(after[name] - before[name]).max() > 1e-4, name  # the step moved it
        np.testing.assert_allclose(after[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_cli_finetune_and_resume_with_the_ort_backend(tmp_path: Path, capsys):
    files = finetune_files(tmp_path)
    out = tmp_path / "tuned.onnx"
    assert main(finetune_args(files, out, "--epochs", "1", "--backend", "ort")) == 0
    capsys.readouterr()
    assert main(finetune_args(files, out, "--epochs", "2", "--backend", "ort", "--resume")) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "epoch 2/2" in text and "epoch 1/2" not in text and "val agreement" in text
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert sorted(p.name for p in tmp_path.glob("tuned.onnx.ckpt*")) == ["tuned.onnx.ckpt", "tuned.onnx.ckpt.ort2"]


def test_compress_train_with_the_ort_backend(tmp_path: Path, capsys):
    rng = np.random.default_rng(7)
    dense = mlp(rng, (64, 64, 10))
    x = rng.standard_normal((300, 64)).astype(np.float32)
    onnx.save(dense, tmp_path / "dense.onnx")
    np.savez(tmp_path / "train.npz", x=x, y=run_ort(dense, {"x": x})[0].argmax(1))
    args = ["compress", str(tmp_path / "dense.onnx"), "--format", "tt", "--rank", "4", "--force", "--allow-more-macs",
            "--train", str(tmp_path / "train.npz"), "--finetune-epochs", "2", "--backend", "ort", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "out.onnx")]) == 0
    text = capsys.readouterr().out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "verification passed" in text
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    assert main([*args, "--rank-select", "l0", "-o", str(tmp_path / "l0.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search("l0 is torch-only", err)
    assert not (tmp_path / "l0.onnx").exists()


def test_backend_torch_without_torch_is_one_line(tmp_path: Path, capsys):
    if subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("torch is installed here; the missing-torch message is not reachable")
    files = finetune_files(tmp_path)
    assert main(finetune_args(files, tmp_path / "tuned.onnx", "--backend", "torch")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[train]" in err and "torch" in err


def test_non_finite_loss_and_sgd_weight_decay_are_refused(task):
    teacher, student, train, _ = task
    broken = onnx.ModelProto()
    broken.CopyFrom(student)
    w = numpy_helper.to_array(broken.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    broken.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, broken.graph.initializer[0].name))
    with pytest.raises(UserError, match="non-finite"):
        finetune_ort(broken, teacher, train, None, epochs=1, **FAST)
    with pytest.raises(UserError, match="weight decay needs the adamw"):
        finetune_ort(student, teacher, train, None, epochs=1, optimizer="sgd", weight_decay=0.1, **FAST)
