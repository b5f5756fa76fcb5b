"""The verification gate: compress verifies before it writes, and the verdict decides the exit status."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ttcompile.rewrite.pipeline as pipeline
from ttcompile.cli import main
from ttcompile.errors import EXIT_VERIFY
from ttcompile.models.data import embedded
from ttcompile.rewrite.gate import CEILING, FLOOR, FP16_FLOOR, floor_for, judge, predicted_limit
from ttcompile.rewrite.verify import constant_outputs

from graphs import gemm_model, mlp_model


def test_limit_from_layer_errors():
    assert predicted_limit([1e-7, 2e-7]) == FLOOR  # full rank: float32 round-off only
    assert predicted_limit([0.01, 0.02]) == pytest.approx(0.3)
    assert predicted_limit([0.9] * 30) == CEILING
    assert not judge({"y": 1.5e-4}, [1e-7]).passed
    assert judge({"y": 0.2}, [0.01, 0.02]).passed
    assert not judge({"y": 99.0}, [0.9] * 30).passed
    assert not judge({"y": math.nan}, [0.1]).passed
    assert not judge({"y": 0.2}, [0.01], max_error=0.1).passed
    assert judge({"y": 0.2}, [1e-7], max_error=0.5).passed
    assert judge({"y": 3.0}, [], trained=True).passed and not judge({"y": math.inf}, [], trained=True).passed


def test_float16_models_get_a_float16_floor(tmp_path, capsys):
    """A full-rank rewrite of a float16 model is off by float16 round-off (4e-4), not by 1e-4."""
    model = mlp_model()
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    src, out = tmp_path / "f16.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    assert floor_for(model) == FP16_FLOOR and floor_for(mlp_model()) == FLOOR
    assert main(["compress", str(src), "-o", str(out), "--rank", "1000", "--force", "--allow-more-macs",
                 "--quiet"]) == 0, capsys.readouterr().err
    assert "within [0.01, 10]" in capsys.readouterr().out


@pytest.fixture
def gemm(tmp_path):
    path = tmp_path / "gemm.onnx"
    onnx.save(gemm_model(alpha=0.5), path)
    return path


def _plan_with_alpha(src, tmp_path, alpha):
    assert main(["compress", str(src), "-o", str(tmp_path / "a.onnx"), "--rank", "1000", "--force",
                 "--allow-more-macs", "--quiet"]) == 0
    plan = tmp_path / "a.plan.json"
    data = json.loads(plan.read_text())
    data["layers"][0]["layer"]["attrs"]["alpha"] = alpha  # 0.5 -> 50: outputs 100x off
    plan.write_text(json.dumps(data))
    return plan


def test_hand_edited_plan_giving_100x_output_fails_and_writes_nothing(gemm, tmp_path, capsys):
    plan = _plan_with_alpha(gemm, tmp_path, 50.0)
    out = tmp_path / "b.onnx"
    capsys.readouterr()
    assert main(["compress", str(gemm), "-o", str(out), "--plan", str(plan), "--quiet"]) != 0
    assert "alpha" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".plan.json").exists()


def test_gate_catches_what_the_plan_checks_let_through(gemm, tmp_path, capsys, monkeypatch):
    """Should a wrong plan get past the attribute checks, the measured output error still stops it."""
    plan = _plan_with_alpha(gemm, tmp_path, 50.0)
    monkeypatch.setattr(pipeline, "check_plan_layers", lambda plan, layers: None)
    out = tmp_path / "b.onnx"
    capsys.readouterr()
    assert main(["compress", str(gemm), "-o", str(out), "--plan", str(plan), "--quiet"]) == EXIT_VERIFY
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "verification failed" in err[0] and "nothing written" in err[0]
    assert not out.exists() and not out.with_suffix(".plan.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.plan.json", "gemm.onnx"]


def test_max_error_sets_the_limit(tmp_path, capsys):
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), src)
    out = tmp_path / "o.onnx"
    args = ["compress", str(src), "-o", str(out), "--rank", "2", "--force", "--allow-more-macs", "--quiet"]
    assert main([*args, "--max-error", "1e-9"]) == EXIT_VERIFY
    assert not out.exists()
    assert main([*args, "--max-error", "10"]) == 0 and out.exists()
    assert "allowed <= 1.00e+01 (--max-error)" in capsys.readouterr().out
    assert main([*args, "--max-error", "-1"]) == 2


@pytest.mark.parametrize("model, fmt, ratio", [
    ("lenet5_mnist.onnx", "tt", "0.1"), ("lenet5_mnist.onnx", "tr", "0.05"), ("lenet5_mnist.onnx", "tucker", "0.3"),
    ("lenet5_mnist.onnx", "cp", "0.1"), ("lenet5_mnist.onnx", "svd", "0.02"), ("lenet5_mnist.onnx", "sttu", "0.1"),
])
def test_normal_compressions_of_the_shipped_model_pass(model, fmt, ratio, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["compress", str(embedded(model)), "-o", str(out), "--format", fmt, "--ratio", ratio, "--quiet",
                 "--data", str(embedded("mnist_test_sample.npz"))]) == 0, capsys.readouterr().err
    assert "verification passed" in capsys.readouterr().out and out.exists()


def _zero_last_layer(bias: float, extra_output: bool = False) -> onnx.ModelProto:
    """mlp_model with fc2's weight zero and B2 = ``bias`` everywhere: y is that constant for every input."""
    model = mlp_model()
    for init in model.graph.initializer:
        if init.name in ("W2", "B2"):
            value = np.full_like(numpy_helper.to_array(init), bias if init.name == "B2" else 0.0)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    if extra_output:  # the Relu after fc1 as a second output: it does see fc1's rewrite
        model.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N", 96]))
    return model


@pytest.mark.parametrize("bias, why", [(0.0, "all zero"), (1.0, "all 1")])
def test_constant_original_outputs_check_nothing_and_nothing_is_written(bias, why, tmp_path, capsys):
    """A zero last layer makes y constant: any rewrite of fc1 compares equal, so no exactness is claimed."""
    src, out = tmp_path / "zero.onnx", tmp_path / "o.onnx"
    onnx.save(_zero_last_layer(bias), src)
    rc = main(["compress", str(src), "-o", str(out), "--rank", "1000", "--force", "--allow-more-macs", "--quiet"])
    captured = capsys.readouterr()
    assert rc == EXIT_VERIFY
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"original outputs are {why} on these inputs" in err[0] and "checks nothing" in err[0]
    assert "relative error" not in captured.out and "verification passed" not in captured.out
    assert not out.exists() and not out.with_suffix(".plan.json").exists()


def test_a_constant_output_beside_a_varying_one_is_named_and_the_other_decides(tmp_path, capsys):
    src, out = tmp_path / "zero2.onnx", tmp_path / "o.onnx"
    onnx.save(_zero_last_layer(0.0, extra_output=True), src)
    args = ["compress", str(src), "-o", str(out), "--force", "--allow-more-macs", "--quiet"]
    assert main([*args, "--rank", "1000"]) == 0
    captured = capsys.readouterr().out
    assert "output y: original outputs are all zero" in captured and "output r: relative error" in captured
    assert "verification passed" in captured and out.exists()
    assert main([*args, "--rank", "1", "--max-error", "1e-6"]) == EXIT_VERIFY  # r still sees a bad fc1


def test_constant_outputs_are_floating_outputs_with_one_value():
    ref = [{"z": np.zeros((1, 3), np.float32), "c": np.full((1, 2), 0.5, np.float32), "s": np.ones(1, np.float32),
            "v": np.arange(3, dtype=np.float32), "label": np.zeros(4, np.int64)}]
    assert constant_outputs(ref) == {"z": "original outputs are all zero on these inputs",
                                     "c": "original outputs are all 0.5 on these inputs"}
    assert not judge({"z": 0.0}, [1e-7], unchecked={"z": "zero"}).passed
    assert not judge({"z": 0.0}, [1e-7], max_error=1.0, unchecked={"z": "zero"}).passed
    assert judge({"z": 0.0, "v": 1e-6}, [1e-7], unchecked={"z": "zero"}).passed
