"""``ttcompile finetune`` end to end on a tiny MLP saved to disk."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

pytest.importorskip("torch")

from ttcompile.cli import main  # noqa: E402

from train_helpers import finetune_args, finetune_files  # noqa: E402


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    return finetune_files(tmp_path)


def test_finetune_writes_a_valid_model_and_reports_epochs(files, tmp_path, capsys):
    out = tmp_path / "tuned.onnx"
    before = files["student.onnx"].read_bytes()
    assert main(finetune_args(files, out, "--epochs", "2")) == 0
    text = capsys.readouterr().out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "val agreement" in text
    assert f"wrote {out}" in text and "before fine-tuning" in text
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert files["student.onnx"].read_bytes() == before
    assert (tmp_path / "tuned.onnx.ckpt").exists()


def test_no_epoch_better_than_the_input_keeps_it_and_says_so(files, tmp_path, capsys):
    out = tmp_path / "tuned.onnx"
    # the teacher as its own student (val agreement 1.0, only to lose) at a learning rate of 1 (the last --lr wins)
    assert main(finetune_args({**files, "student.onnx": files["teacher.onnx"]}, out, "--epochs", "2", "--lr", "1")) == 0
    text = capsys.readouterr().out
    assert "no epoch beat the input on val: kept its weights (val agreement 1.0000" in text, text
    kept, given = onnx.load(out).graph.initializer, onnx.load(files["teacher.onnx"]).graph.initializer
    assert [t.SerializeToString() for t in kept] == [t.SerializeToString() for t in given]


def test_resume_continues_the_epoch_count(files, tmp_path, capsys):
    out = tmp_path / "tuned.onnx"
    assert main(finetune_args(files, out, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(finetune_args(files, out, "--epochs", "2", "--resume")) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "epoch 2/2" in text and "epoch 1/2" not in text


@pytest.mark.parametrize("change, message", [
    (lambda a, f: a.__setitem__(a.index("-o") + 1, str(f["student.onnx"])), "refusing to overwrite"),
    (lambda a, f: a.__setitem__(a.index("--train") + 1, str(f["student.onnx"].with_name("none.npz"))),
     "no such file"),
    (lambda a, f: a.__setitem__(a.index("--teacher") + 1, str(f["train.npz"])), "teacher.*not|train.npz"),
    (lambda a, f: a.extend(["--kd-weight", "2"]), "kd.weight"),
])
def test_bad_input_is_a_one_line_error(files, tmp_path, capsys, change, message):
    args = finetune_args(files, tmp_path / "tuned.onnx", "--epochs", "1")
    change(args, files)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ttcompile finetune: error:") and len(err.splitlines()) == 1
    assert re.search(message, err)


def test_backend_ort_without_onnxruntime_training_is_one_line(files, tmp_path, capsys):
    from ttcompile.errors import UserError
    from ttcompile.train.ort_api import load

    try:
        load()
        pytest.skip("onnxruntime-training is installed here; the missing-package message is not reachable")
    except UserError:
        pass
    out = tmp_path / "tuned.onnx"
    assert main(finetune_args(files, out, "--backend", "ort")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[ort-training]" in err and "--backend ort" in err
    assert not out.exists()
