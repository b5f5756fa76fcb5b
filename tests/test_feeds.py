"""Fixed-batch and multi-input models: the output comparison runs in batches the model accepts."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ttcompile.cli import main
from ttcompile.errors import UserError
from ttcompile.feeds import split_feeds

from graphs import _model, conv_model


def stateful_model(batch: int = 1) -> onnx.ModelProto:
    """x (b, 8) -> Gemm 8->6 -> + state (2, b, 6) -> z (2, b, 6): silero-vad's layout (batch on axis 1 of the state)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1),
             helper.make_node("Add", ["y", "state"], ["z"], name="add")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 6])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, batch, 6])], {"W": w})


def _error(out: str) -> float:
    return max(float(v) for v in re.findall(r"relative error (\S+) vs original", out))


def test_fixed_batch_one_conv_compares_on_many_samples(tmp_path, capsys):
    model = conv_model(c_in=8, c_out=12)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).standard_normal((16, 8, 10, 9)).astype(np.float32))
    rc = main(["compress", str(src), "--format", "svd", "--rank", "100", "--force", "--quiet",
               "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o.onnx")])
    assert rc == 0
    assert _error(capsys.readouterr().out) < 1e-5


def test_named_feeds_for_each_input_with_sample_axis_one(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(stateful_model(1), src)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((10, 8)), state=rng.standard_normal((2, 10, 6)))
    rc = main(["compress", str(src), "--format", "svd", "--rank", "1", "--force", "--quiet",
               "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o.onnx")])
    assert rc == 0
    assert 1e-3 < _error(capsys.readouterr().out) < 1  # rank 1 of a random 6x8: visibly lossy, not broken


def test_split_feeds_pads_the_last_run_and_keeps_shared_inputs():
    proto = stateful_model(3)
    x = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    runs = list(split_feeds(proto, {"x": x, "state": np.zeros((2, 3, 6), np.float32)}))
    assert len(runs) == 2  # state fits the declared (2, 3, 6): shared; x's 5 samples in runs of 3
    assert np.array_equal(runs[1]["x"], x[[3, 4, 4]])
    assert all(r["state"].shape == (2, 3, 6) for r in runs)


def test_split_feeds_refuses_inconsistent_samples():
    proto = stateful_model(1)
    with pytest.raises(UserError, match="disagree"):
        list(split_feeds(proto, {"x": np.zeros((4, 8), np.float32), "state": np.zeros((2, 5, 6), np.float32)}))
    with pytest.raises(UserError, match="several dims"):
        list(split_feeds(proto, {"x": np.zeros((4, 9), np.float32), "state": np.zeros((2, 4, 6), np.float32)}))
    with pytest.raises(UserError, match="does not fit"):  # axis 1 of the state is declared 3: not a sample axis
        list(split_feeds(stateful_model(3), {"x": np.zeros((3, 8), np.float32),
                                             "state": np.zeros((2, 5, 6), np.float32)}))
    with pytest.raises(UserError, match="no data for model input"):
        list(split_feeds(proto, {"x": np.zeros((4, 8), np.float32)}))


def test_bench_defaults_to_the_fixed_batch(tmp_path, capsys):
    model = conv_model(c_in=4, c_out=6, spatial=(6, 6))
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    assert main(["bench", str(src), "--min-time", "0", "--repeats", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("m.onnx")]
    assert [r[1] for r in rows[1:]] == ["1"]  # one timing row, at batch 1 (was: exit 2, "use --batch 1")
