"""No lost or clobbered files: outputs never replace inputs or non-files, writes are atomic pairs,
stale temporaries of dead processes are cleaned, nothing is written into the current folder."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import pytest

from ttcompile import atomic, shapes
from ttcompile.cli import main
from ttcompile.paths import check_outputs

from graphs import mlp_model


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(mlp_model(), model)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32),
             y=np.arange(16) % 4)
    assert main(["compress", str(model), "-o", str(tmp_path / "c.onnx"), "--rank", "2", "--force", "--quiet"]) == 0
    return {"model": model, "data": data, "compressed": tmp_path / "c.onnx", "plan": tmp_path / "c.plan.json"}


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


CASES = {
    "compress -o = --data": lambda f, t: ["compress", f["model"], "-o", f["data"], "--data", f["data"], "--rank", "2"],
    "compress -o = --plan": lambda f, t: ["compress", f["model"], "-o", f["plan"], "--plan", f["plan"]],
    "compress plan beside -o = --plan": lambda f, t: ["compress", f["model"], "-o", f["compressed"],
                                                      "--plan", f["plan"]],
    "compress -o hardlink of model": lambda f, t: (os.link(f["model"], t / "ln.onnx"),
                                                   ["compress", f["model"], "-o", t / "ln.onnx", "--rank", "2"])[1],
    "analyze -o = model": lambda f, t: ["analyze", f["model"], "--calib", f["data"], "-o", f["model"]],
    "bench --json = model": lambda f, t: ["bench", f["model"], "--json", f["model"], "--batch", "1"],
    "finetune --checkpoint = teacher": lambda f, t: ["finetune", f["compressed"], "--teacher", f["model"],
                                                     "--train", f["data"], "-o", t / "ft.onnx",
                                                     "--checkpoint", f["model"]],
    "finetune -o = --train": lambda f, t: ["finetune", f["compressed"], "--teacher", f["model"],
                                           "--train", f["data"], "-o", f["data"]],
    "compress -o a folder": lambda f, t: ["compress", f["model"], "-o", t, "--rank", "2"],
    "compress -o .": lambda f, t: ["compress", f["model"], "-o", ".", "--rank", "2"],
    "compress -o empty": lambda f, t: ["compress", f["model"], "-o", "", "--rank", "2"],
    # a FIFO stands in for a device node: replacing /dev/null as root would break the machine
    "compress -o a FIFO": lambda f, t: (os.mkfifo(t / "fifo"), ["compress", f["model"], "-o", t / "fifo"])[1],
    "compress -o in a missing folder": lambda f, t: ["compress", f["model"], "-o", t / "new" / "o.onnx"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_colliding_with_an_input_or_a_non_file_is_refused(case, files, tmp_path, capsys):
    before = _digest(tmp_path)
    argv = [str(a) for a in CASES[case](files, tmp_path)]
    assert main([*argv, "--quiet"] if argv[0] != "bench" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert _digest(tmp_path) == {**before, **({"ln.onnx": before["m.onnx"]} if "hardlink" in case else {})}
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "fifo").exists() or not (tmp_path / "fifo").is_file()


def test_check_outputs_allows_distinct_files(tmp_path):
    (tmp_path / "in.onnx").write_bytes(b"x")
    check_outputs([("MODEL", tmp_path / "in.onnx"), ("--data", "mnist:val")], [("-o", tmp_path / "out.onnx")])


def test_stale_temporaries_of_dead_processes_are_removed(files, tmp_path):
    out = tmp_path / "o.onnx"
    dead = tmp_path / ".o.onnx.999999999-deadbeef.tmp"  # no such pid
    alive = tmp_path / ".o.onnx.1-cafebabe.tmp"  # pid 1 runs: another process's write in progress
    other = tmp_path / ".unrelated.999999999-deadbeef.tmp"
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    assert main(["compress", str(files["model"]), "-o", str(out), "--rank", "2", "--force", "--quiet"]) == 0
    assert not dead.exists() and alive.exists() and other.exists()
    assert out.exists() and out.with_suffix(".plan.json").exists()


def test_atomic_pair_writes_nothing_when_interrupted(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.onnx"
    b.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_paths(a, b) as (ta, tb):
        ta.write_bytes(b"new plan")
        tb.write_bytes(b"new model")
        raise RuntimeError("killed")
    assert not a.exists() and b.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["b.onnx"]
    atomic.write_files_atomic({a: b"plan", b: b"model"})
    assert a.read_bytes() == b"plan" and b.read_bytes() == b"model" and len(os.listdir(tmp_path)) == 2


def test_symbolic_shape_inference_runs_in_a_temporary_folder(tmp_path, monkeypatch):
    """ORT's symbolic inference saves sym_shape_infer_temp.onnx (+ a .data file) into the current folder."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def writes_into_cwd(model):
        with open("sym_shape_infer_temp.onnx", "wb") as fh:
            fh.write(b"junk")
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(writes_into_cwd))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sym_shape_infer_temp.onnx").write_bytes(b"the user's file")
    assert shapes.runtime_symbolic_shapes(mlp_model()) == {}
    assert os.getcwd() == str(tmp_path)
    assert os.listdir(tmp_path) == ["sym_shape_infer_temp.onnx"]
    assert (tmp_path / "sym_shape_infer_temp.onnx").read_bytes() == b"the user's file"
