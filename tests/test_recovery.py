"""Layer-wise recovery: fits never raise a layer's calibration output error; the CLI path on unlabeled data."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import mlp_model
from tests.test_data_aware import relative_output_error
from ttcompile.analysis.features import model_input
from ttcompile.analysis.moments import accumulate
from ttcompile.analysis.recovery import compressed_model, groups, initial_states, recover
from ttcompile.cli import main
from ttcompile.layers import find_layers
from ttcompile.planning.plan import make_plan


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """x (N, 3, 8, 8) -> Conv 3->8 3x3 pad 1 -> Relu -> Conv 8->8 3x3 -> Relu -> Flatten -> Gemm 288->10."""
    rng = np.random.default_rng(seed)
    inits = {"W1": rng.standard_normal((8, 3, 3, 3)) / 5, "B1": rng.standard_normal(8) / 10,
             "W2": rng.standard_normal((8, 8, 3, 3)) / 8, "B2": rng.standard_normal(8) / 10,
             "W3": rng.standard_normal((10, 288)) / 17, "B3": np.zeros(10)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def calib(n: int = 64, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def prepared(tmp_path, fmt: str = "tt", ratio: float = 0.2):
    proto = conv_net()
    onnx.save(proto, tmp_path / "net.onnx")
    model = ir.from_proto(proto)
    plan = make_plan(find_layers(model), fmt, model_path=tmp_path / "net.onnx", ratio=ratio, force=True,
                     allow_more_macs=True)
    x = calib()
    layers = [lp.layer for lp in plan.layers if lp.action == "compress"]
    mom = accumulate(model, layers, x, model_input(proto), progress=False)
    return proto, model, plan, x, mom


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
@pytest.mark.parametrize("fmt", ["tt", "svd", "tucker"])
def test_recovery_never_raises_a_layer_error_and_lowers_the_model_error(tmp_path, mode, fmt):
    proto, model, plan, x, mom = prepared(tmp_path, fmt)
    states = initial_states(model, plan, mom, data_init=True, progress=False)
    init_error = relative_output_error(proto, ir.to_proto(compressed_model(model, plan, states)), x)
    recover(model, plan, states, x, model_input(proto), mode=mode, moments=mom, steps=30, progress=False)
    for st in states.values():
        r = st.record
        assert r.error_after_recovery <= r.error_before_recovery
    final_error = relative_output_error(proto, ir.to_proto(compressed_model(model, plan, states)), x)
    assert final_error <= init_error * (1 + 1e-5)
    if mode == "sequential":  # the fits correct the upstream drift (parallel: only the bias is new for svd)
        assert any(st.record.error_after_recovery < 0.95 * st.record.error_before_recovery for st in states.values())
        assert final_error < 0.95 * init_error


def test_sequential_recovery_sees_the_compressed_upstream(tmp_path):
    """Before its fit, a downstream layer's error on x_c is its error on x_o plus the upstream drift."""
    proto, model, plan, x, mom = prepared(tmp_path, "tt", 0.1)
    states = initial_states(model, plan, mom, data_init=True, progress=False)
    passes = recover(model, plan, states, x, model_input(proto), moments=mom, steps=10, max_passes=10,
                     progress=False)
    assert passes == 2 * len(states)  # one layer per group: exactly sequential
    first, *rest = states.values()
    assert first.record.error_before_recovery == pytest.approx(first.record.error_data_init
                                                               if first.record.init == "data"
                                                               else first.record.error_weight_init)
    assert all(st.record.error_before_recovery > min(st.record.error_data_init, st.record.error_weight_init)
               for st in rest)


def test_groups_bound_the_passes():
    names = [f"l{i}" for i in range(55)]
    chunks = groups(names, 12)
    assert len(chunks) <= 12 and sum(chunks, []) == names


def test_compress_cli_unlabeled_calibration(tmp_path, capsys):
    onnx.save(mlp_model(), tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((80, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)  # no labels, and the output is not class logits
    out = tmp_path / "out.onnx"
    argv = ["compress", str(tmp_path / "mlp.onnx"), "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
            "--budget", "params=0.3", "--allocator", "uniform", "--format", "tt", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "recovery layer (sequential" in text and "vs original on " + str(tmp_path / "calib.npz") in text
    settings = json.loads(out.with_suffix(".plan.json").read_text())["settings"]["calibration"]
    assert settings["init"] == "data" and settings["recover"] == "layer" and settings["labels"] == "not used"
    for r in settings["layers"].values():
        assert r["error_after_recovery"] <= r["error_before_recovery"]
    weight_out = tmp_path / "weight.onnx"
    assert main([*argv[:3], str(weight_out), *argv[4:], "--init", "weight", "--recover", "none"]) == 0
    err = {p: relative_output_error(mlp_model(), onnx.load(p), x) for p in (out, weight_out)}
    assert err[out] < err[weight_out]


def test_init_without_calib_is_a_user_error(tmp_path, capsys):
    onnx.save(mlp_model(), tmp_path / "mlp.onnx")
    code = main(["compress", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "o.onnx"), "--recover", "layer"])
    assert code == 2 and "--recover need calibration data" in capsys.readouterr().err


def test_known_original_moments_are_the_cross_pass_oo(tmp_path):
    """The sequential pass takes E[a_o a_o^T] from the first pass: the same rows, so the same matrix."""
    proto, model, plan, x, mom = prepared(tmp_path, "tt", 0.2)
    states = initial_states(model, plan, mom, data_init=True, progress=False)
    layers = [st.lp.layer for st in states.values()]
    current = compressed_model(model, plan, states)
    summed = accumulate(model, layers, x, model_input(proto), compressed=current, progress=False)
    reused = accumulate(model, layers, x, model_input(proto), compressed=current, progress=False, known=mom)
    for name, m in summed.items():
        np.testing.assert_allclose(reused[name].oo, m.oo, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reused[name].co, m.co, rtol=1e-12)
    assert not np.allclose(summed["fc"].cc, summed["fc"].oo, rtol=1e-3)  # the compressed upstream differs


def test_calibration_samples_fill_dynamic_input_dims(tmp_path):
    """A model input (N, 3, H, W) takes samples of any H, W (the OCR models in wheels have such inputs); a wrong
    channel count is refused with the file's name."""
    from tests.graphs import conv_model
    from ttcompile.analysis.calibrated import calibration_inputs
    from ttcompile.errors import UserError

    proto = conv_model(c_in=3, c_out=4, spatial=("H", "W"))
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x=np.zeros((5, 3, 12, 10), np.float32))
    np.savez(bad, x=np.zeros((5, 4, 12, 10), np.float32))
    assert calibration_inputs(str(good), proto).shape == (5, 3, 12, 10)
    with pytest.raises(UserError, match="bad.npz"):
        calibration_inputs(str(bad), proto)


def test_distillation_is_kept_only_when_it_fits_the_original_better(tmp_path):
    """``--recover model`` never writes a worse fit: a student already equal to the teacher (KL 0) comes back
    unchanged; a weight-initialised low-rank student comes back tuned, with a lower KL on the samples."""
    from ttcompile.analysis.calibrated import Settings, distil

    proto, model, plan, x, mom = prepared(tmp_path, "tt", 0.2)
    settings = Settings(epochs=3, lr=3e-2, progress=False)
    same, record = distil(proto, proto, x, settings)
    assert same is proto and not record["kept"] and record["fit_before"] == {"agreement": 1.0, "kl": 0.0}
    student = ir.to_proto(compressed_model(model, plan, initial_states(model, plan, mom, data_init=False,
                                                                       progress=False)))
    tuned, record = distil(student, proto, x, settings)
    assert record["kept"] and tuned is not student
    assert record["fit_after"]["kl"] < record["fit_before"]["kl"]
    assert record["fit_after"]["agreement"] >= record["fit_before"]["agreement"]


def test_compress_cli_recover_model_records_the_distillation(tmp_path, capsys):
    onnx.save(conv_net(), tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", x=calib())
    out = tmp_path / "out.onnx"
    argv = ["compress", str(tmp_path / "net.onnx"), "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
            "--budget", "params=0.3", "--allocator", "uniform", "--format", "tt", "--recover", "model",
            "--recover-epochs", "2", "--quiet"]
    assert main(argv) == 0
    assert re.search(r"distillation on the calibration samples \(2 epochs, lr 0.0001\).*: (kept|not kept)",
                     capsys.readouterr().out)
    record = json.loads(out.with_suffix(".plan.json").read_text())["settings"]["calibration"]["distillation"]
    assert record["lr"] == 1e-4 and record["epochs"] == 2 and set(record["fit_after"]) == {"agreement", "kl"}
    assert main([*argv[:3], str(tmp_path / "bad.onnx"), *argv[4:], "--recover-lr", "0"]) == 2
    assert "--recover-lr must be a positive number" in capsys.readouterr().err
