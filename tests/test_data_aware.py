"""Data-aware init: moments of layer inputs, whitened closed forms, refinement on the calibration outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from tests.graphs import conv_model, gemm_model, matmul_model
from ttcompile.analysis import moments as moments_mod
from ttcompile.analysis.features import model_input
from ttcompile.analysis.moments import accumulate, layer_rows, patches
from ttcompile.analysis.recovery import compressed_model, initial_states
from ttcompile.layers import find_layers
from ttcompile.passes.base import get_format
from ttcompile.planning.plan import make_plan
from ttcompile.rewrite.verify import run

FORMATS = ["svd", "tucker", "cp", "tt", "tr", "stt", "str", "sttu"]


def correlated(shape: tuple[int, ...], n: int = 96, seed: int = 1) -> np.ndarray:
    """``n`` samples whose features (axis 1) are strongly correlated and of very different scales, plus a mean."""
    rng = np.random.default_rng(seed)
    c = shape[0]
    mix = rng.standard_normal((c, c)) * np.logspace(0, -2, c)[None, :]
    z = rng.standard_normal((n, *shape))
    return (np.moveaxis(np.tensordot(z, mix, axes=([1], [1])), -1, 1) + 0.5).astype(np.float32)


def setup(proto: onnx.ModelProto, fmt: str, ratio: float, x: np.ndarray, tmp):
    path = tmp / "m.onnx"
    onnx.save(proto, path)
    model = ir.from_proto(proto)
    plan = make_plan(find_layers(model), fmt, model_path=path, ratio=ratio, force=True, allow_more_macs=True)
    layers = [lp.layer for lp in plan.layers if lp.action == "compress"]
    return model, plan, accumulate(model, layers, x, model_input(proto), batch=32, progress=False)


def relative_output_error(proto: onnx.ModelProto, other: onnx.ModelProto, x: np.ndarray) -> float:
    name = proto.graph.input[0].name
    y, z = run(proto, {name: x})[proto.graph.output[0].name], run(other, {name: x})[other.graph.output[0].name]
    return float(np.sqrt(np.mean((y - z) ** 2) / np.mean(y**2)))


CASES = {"conv": lambda: (conv_model(c_in=8, c_out=12, kernel=(3, 3), spatial=(8, 8), pads=[1, 1, 1, 1]), (8, 8, 8)),
         "gemm": lambda: (gemm_model(n_in=48, n_out=40), (48,))}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_data_aware_init_lowers_calibration_output_error(fmt, case, tmp_path):
    proto, shape = CASES[case]()
    x = correlated(shape)
    model, plan, mom = setup(proto, fmt, 0.3, x, tmp_path)
    weight = initial_states(model, plan, mom, data_init=False, progress=False)
    data = initial_states(model, plan, mom, data_init=True, progress=False)
    (name,) = data
    rec = data[name].record
    assert rec.init == "data"
    assert rec.error_data_init < 0.97 * rec.error_weight_init  # equal if the data were ignored
    # the error the records report is the one the ONNX model has on the calibration inputs
    for states, expected in ((weight, rec.error_weight_init), (data, rec.error_data_init)):
        got = relative_output_error(proto, ir.to_proto(compressed_model(model, plan, states)), x)
        assert got == pytest.approx(expected, rel=1e-3)


def test_svd_closed_form_is_the_whitened_optimum(tmp_path):
    """Truncated SVD of W L undone by L^{-1} beats every other rank-r W~ on E||(W~ - W) x||^2."""
    proto, x = gemm_model(n_in=48, n_out=40), correlated((48,), n=200)
    model, plan, mom = setup(proto, "svd", 0.3, x, tmp_path)
    (st,) = initial_states(model, plan, mom, data_init=True, progress=False).values()
    assert st.record.closed_form and st.record.init == "data"
    w, r = st.target.weight, st.lp.ranks[0]
    s = (x.astype(np.float64).T @ x) / len(x)
    u, v = st.cores
    w_hat = u @ v.reshape(r, -1)
    y = x.astype(np.float64) @ w.T + st.target.bias
    err = np.trace((w_hat - w) @ s @ (w_hat - w).T) / np.mean(np.sum(y**2, axis=1))
    assert np.sqrt(err) == pytest.approx(st.record.error_data_init, rel=1e-4)
    # a perturbation of the factors (any other rank-r matrix nearby) is not better
    rng = np.random.default_rng(0)
    for _ in range(5):
        other = (u + 1e-3 * rng.standard_normal(u.shape)) @ (v.reshape(r, -1) + 1e-3 * rng.standard_normal((r, 48)))
        assert np.trace((other - w) @ s @ (other - w).T) >= np.trace((w_hat - w) @ s @ (w_hat - w).T) * (1 - 1e-9)


@pytest.mark.parametrize("fmt", ["svd", "tucker", "tt"])
def test_full_rank_data_aware_is_exact(fmt, tmp_path):
    proto, shape = conv_model(c_in=4, c_out=6, kernel=(3, 3), spatial=(6, 6)), (4, 6, 6)
    x = correlated(shape, n=40)
    model, plan, mom = setup(proto, fmt, 1.0, x, tmp_path)
    for lp in plan.layers:
        lp.ranks = get_format(lp.format).max_ranks(lp.layer, lp.modes)
    states = initial_states(model, plan, mom, data_init=True, progress=False)
    out = ir.to_proto(compressed_model(model, plan, states))
    assert relative_output_error(proto, out, x) < 1e-5


@pytest.mark.parametrize("attrs", [dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 2]), dict(auto_pad="SAME_LOWER"),
                                   dict(auto_pad="VALID")])
def test_patches_reproduce_the_conv(attrs):
    proto = conv_model(c_in=3, c_out=5, kernel=(3, 2), spatial=(9, 8), **attrs)
    x = correlated((3, 9, 8), n=4)
    model = ir.from_proto(proto)
    (layer,) = find_layers(model)
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0]).reshape(5, -1)
    b = onnx.numpy_helper.to_array(proto.graph.initializer[1])
    y = run(proto, {"x": x})["y"]
    p = patches(x, layer)
    got = (p @ w.T + b).transpose(0, 2, 1).reshape(y.shape)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_patches_1d_conv():
    proto = conv_model(c_in=3, c_out=4, kernel=(3,), spatial=(11,), strides=[2], pads=[1, 1])
    x = correlated((3, 11), n=3)
    (layer,) = find_layers(ir.from_proto(proto))
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0]).reshape(4, -1)
    b = onnx.numpy_helper.to_array(proto.graph.initializer[1])
    y = run(proto, {"x": x})["y"]
    np.testing.assert_allclose((patches(x, layer) @ w.T + b).transpose(0, 2, 1).reshape(y.shape), y, atol=1e-4)


def test_moments_batch_by_batch_equal_one_shot_with_position_cap(monkeypatch):
    proto = conv_model(c_in=4, c_out=6, kernel=(3, 3), spatial=(10, 10), pads=[1, 1, 1, 1])
    x = correlated((4, 10, 10), n=50)
    model = ir.from_proto(proto)
    layers = find_layers(model)
    monkeypatch.setattr(moments_mod, "MIN_ROWS", 1000)  # 20 of 100 positions per sample
    monkeypatch.setattr(moments_mod, "ROW_FLOPS", 0)
    inp = model_input(proto)
    small = accumulate(model, layers, x, inp, batch=7, progress=False)["conv"]
    whole = accumulate(model, layers, x, inp, batch=50, progress=False)["conv"]
    rows = layer_rows(x, layers[0], len(x))
    assert small.rows == whole.rows == len(rows) == 50 * 20
    np.testing.assert_allclose(small.cc, whole.cc, rtol=1e-5, atol=1e-6)  # float32 products, float64 sums
    rows = rows.astype(np.float64)
    np.testing.assert_allclose(whole.cc, rows.T @ rows / len(rows), rtol=1e-5, atol=1e-6)


def test_diagonal_moments_above_the_cap(monkeypatch, tmp_path):
    proto, x = matmul_model(n_in=48, n_out=40), correlated((48,), n=30)
    model = ir.from_proto(proto)
    inp = model_input(proto)
    dense = accumulate(model, find_layers(model), x, inp, progress=False)["mm"]
    monkeypatch.setattr(moments_mod, "DIAGONAL_ABOVE", 10)
    diag = accumulate(model, find_layers(model), x, inp, progress=False)["mm"]
    assert diag.diagonal and not dense.diagonal
    np.testing.assert_allclose(diag.cc, np.diag(dense.cc), rtol=1e-5)
    # the data-aware init still runs (diagonal whitening) and does not lose to the weight SVD
    onnx.save(proto, tmp_path / "m.onnx")
    plan = make_plan(find_layers(model), "svd", model_path=tmp_path / "m.onnx", ratio=0.3, force=True)
    (st,) = initial_states(model, plan, {"mm": diag}, data_init=True, progress=False).values()
    assert st.record.error_data_init <= st.record.error_weight_init or st.record.init == "weight"
