"""Runs that used to give a wrong model (or a copy) with exit 0: each is now right or an error."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from ttcompile.cli import main
from ttcompile.passes.base import FORMATS, get_format

from graphs import conv_model, gemm_model, mlp_model


def _ort(model_path, feeds):
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_conv_bias_graph_input_is_kept(fmt, tmp_path, capsys):
    """A Conv whose bias B is a graph input: the chain adds B (reshaped to (O,1,1)) like Gemm's C."""
    src, out = tmp_path / "conv.onnx", tmp_path / "out.onnx"
    onnx.save(conv_model(c_in=16, c_out=16, spatial=(8, 8), bias="input"), src)
    assert main(["compress", str(src), "-o", str(out), "--format", fmt, "--rank", "10000", "--force",
                 "--allow-more-macs", "--quiet"]) == 0, capsys.readouterr().err
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32),
             "B": (10 * rng.standard_normal(16)).astype(np.float32)}
    ref, got = _ort(src, feeds), _ort(out, feeds)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    return path


def test_failed_rewrites_are_skipped_with_reason_and_all_failed_is_an_error(mlp, tmp_path, capsys, monkeypatch):
    fmt = get_format("tt")
    real = fmt.decompose

    def fc1_fails(weight, layer, modes, ranks):
        if layer.name == "fc1":
            raise np.linalg.LinAlgError("SVD did not converge")
        return real(weight, layer, modes, ranks)

    monkeypatch.setattr(fmt, "decompose", fc1_fails)
    out = tmp_path / "out.onnx"
    assert main(["compress", str(mlp), "-o", str(out), "--rank", "1000", "--force", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "skipped fc1: rewrite failed: SVD did not converge" in text
    assert json.loads((tmp_path / "out.plan.json").read_text())["layers"][0]["action"] == "skip"

    monkeypatch.setattr(fmt, "decompose", lambda *a: (_ for _ in ()).throw(np.linalg.LinAlgError("no")))
    out2 = tmp_path / "none.onnx"
    assert main(["compress", str(mlp), "-o", str(out2), "--rank", "1000", "--force", "--quiet"]) == 2
    assert "no layer could be rewritten" in _one_error_line(capsys)
    assert not out2.exists() and not out2.with_suffix(".plan.json").exists()


def test_a_bug_in_a_rewrite_is_not_swallowed(mlp, tmp_path, monkeypatch):
    fmt = get_format("tt")
    monkeypatch.setattr(fmt, "decompose", lambda *a: (_ for _ in ()).throw(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        main(["compress", str(mlp), "-o", str(tmp_path / "o.onnx"), "--rank", "2", "--force", "--quiet"])
    assert not (tmp_path / "o.onnx").exists()


def test_input_shape_naming_an_unknown_input_is_an_error(mlp, capsys):
    assert main(["inspect", str(mlp), "--input-shape", "typo=1x64"]) == 2
    assert "typo" in _one_error_line(capsys)


def test_dynamic_spatial_dims_need_an_input_shape(tmp_path, capsys):
    src = tmp_path / "conv.onnx"
    model = conv_model()
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    onnx.save(model, src)
    assert main(["inspect", str(src)]) == 2
    assert "--input-shape" in _one_error_line(capsys)
    assert main(["inspect", str(src), "--input-shape", "x=1x16x10x9"]) == 0


def _edit_plan(path, layer, key, value):
    plan = json.loads(path.read_text())
    target = plan["layers"][layer]["layer"]
    if key in target:
        target[key] = value
    else:
        target["attrs"][key] = value
    path.write_text(json.dumps(plan))


@pytest.mark.parametrize("model, key, value", [
    ("gemm", "alpha", 1000.0), ("gemm", "beta", 3.0), ("gemm", "transA", 1), ("gemm", "has_bias", False),
    ("conv", "strides", [2, 2]), ("conv", "pads", [1, 1, 1, 1]), ("conv", "dilations", [2, 2]),
    ("conv", "group", 2), ("conv", "has_bias", False), ("conv", "kernel", [1, 9]), ("conv", "out_spatial", [4, 4]),
    ("gemm", "in_features", 12), ("gemm", "weight", "other"),
])
def test_edited_plan_attribute_is_refused(model, key, value, tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(gemm_model(alpha=0.5) if model == "gemm" else conv_model(), src)
    shape = [] if model == "gemm" else ["--input-shape", "x=1x16x10x9"]
    assert main(["compress", str(src), "-o", str(tmp_path / "a.onnx"), "--rank", "2", "--force",
                 "--allow-more-macs", "--quiet", *shape]) == 0
    plan = tmp_path / "a.plan.json"
    _edit_plan(plan, 0, key, value)
    out = tmp_path / "b.onnx"
    assert main(["compress", str(src), "-o", str(out), "--plan", str(plan), "--quiet", *shape]) == 2
    line = _one_error_line(capsys)
    assert ("'gemm'" in line or "'conv'" in line) and key in line
    assert not out.exists() and not out.with_suffix(".plan.json").exists()


def _nan_model(path, value=np.nan, weights=("W1",)):
    model = mlp_model()
    for init in model.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init).copy()
            w[3, 5] = value
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, path)


@pytest.mark.parametrize("fmt, value", [("tt", np.nan), ("stt", np.inf), ("svd", -np.inf), ("cp", np.nan)])
def test_non_finite_weights_are_refused_with_the_layer_name(fmt, value, tmp_path, capsys):
    """tt/stt used to hang in np.linalg.svd, the others wrote a NaN model with exit 0."""
    src = tmp_path / "nan.onnx"
    _nan_model(src, value)
    assert main(["inspect", str(src), "--format", fmt]) == 0
    assert "W1 has NaN or infinite values" in capsys.readouterr().out
    for weights in (("W1",), ("W1", "W2")):
        _nan_model(src, value, weights)
        out = tmp_path / "o.onnx"
        assert main(["compress", str(src), "-o", str(out), "--format", fmt, "--rank", "2", "--force",
                     "--allow-more-macs", "--quiet"]) == 2
        line = _one_error_line(capsys)
        assert "'fc1': weight W1 has NaN or infinite values" in line
        assert not out.exists() and not out.with_suffix(".plan.json").exists()


def test_plan_onto_a_model_with_nan_weights_is_refused(mlp, tmp_path, capsys):
    assert main(["compress", str(mlp), "-o", str(tmp_path / "a.onnx"), "--rank", "2", "--force", "--quiet"]) == 0
    bad = tmp_path / "nan.onnx"
    _nan_model(bad)
    out = tmp_path / "b.onnx"
    assert main(["compress", str(bad), "-o", str(out), "--plan", str(tmp_path / "a.plan.json"), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "'fc1'" in line and "NaN or infinite" in line
    assert not out.exists()


def test_finetune_with_a_non_finite_loss_stops_with_an_error(mlp, tmp_path, capsys):
    teacher = tmp_path / "teacher.onnx"
    model = mlp_model()
    b2 = [t for t in model.graph.initializer if t.name == "B2"][0]
    b2.CopyFrom(numpy_helper.from_array(np.full(32, np.nan, np.float32), "B2"))
    onnx.save(model, teacher)
    train = tmp_path / "train.npz"
    np.savez(train, x=np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32))
    out = tmp_path / "tuned.onnx"
    assert main(["finetune", str(mlp), "--teacher", str(teacher), "--train", str(train), "-o", str(out),
                 "--epochs", "1", "--quiet", "--threads", "1"]) == 2
    assert "non-finite" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_conv_chains_run_on_an_empty_batch(fmt, tmp_path, capsys):
    """sttu's Reshape [0, C/t, -1, 0] could not infer -1 from 0 elements; every chain now takes batch 0."""
    src, out = tmp_path / "conv.onnx", tmp_path / "out.onnx"
    onnx.save(conv_model(c_in=8, c_out=16, spatial=(8, 8)), src)
    assert main(["compress", str(src), "-o", str(out), "--format", fmt, "--rank", "1000", "--force",
                 "--allow-more-macs", "--quiet", "--input-shape", "x=1x8x8x8"]) == 0, capsys.readouterr().err
    x = np.zeros((0, 8, 8, 8), np.float32)
    assert _ort(out, {"x": x}).shape == _ort(src, {"x": x}).shape == (0, 16, 6, 6)
