"""TT pass: exact at full rank on every Gemm/MatMul/Conv form and realization, error falls with rank,
cost model equals the emitted graph."""

from __future__ import annotations

import onnx
import pytest

from ttcompile.graph import load_model
from ttcompile.layers import Layer, find_layers
from ttcompile.passes import get_format

from graphs import conv_model, gemm_model, matmul_model
from rewrite_check import assert_cost_matches_graph, assert_decreasing, compress_one, errors_by_rank

FULL = 10_000
TOL = 1e-4

GEMM_FORMS = {
    "plain": dict(),
    "no_bias": dict(bias=None),
    "transB0": dict(trans_b=0),
    "transA": dict(trans_a=1),
    "alpha_beta": dict(alpha=0.7, beta=1.9),
    "bias_row": dict(bias="row"),
    "bias_scalar": dict(bias="scalar", beta=0.5),
    "bias_matrix": dict(bias="matrix", batch=3),
    "bias_input": dict(bias="input", beta=0.3),
    "all": dict(trans_a=1, trans_b=0, alpha=2.0, beta=0.25, bias="row"),
}
MATMUL_FORMS = {"2d": dict(lead=("N",)), "3d": dict(lead=("N", 5)), "4d": dict(lead=("N", 2, 3)), "1d": dict(lead=())}
CONV_FORMS = {
    "plain": dict(),
    "no_bias": dict(bias=False),
    "stride_pad": dict(strides=[2, 2], pads=[1, 0, 2, 1]),
    "dilation": dict(dilations=[2, 1], pads=[2, 1, 2, 1]),
    "same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower": dict(auto_pad="SAME_LOWER"),
    "valid": dict(auto_pad="VALID", strides=[1, 2]),
    "rect_kernel": dict(kernel=(3, 1), pads=[1, 0, 1, 0]),
    "conv1d": dict(kernel=(3,), spatial=(11,), strides=[2], pads=[1, 1]),
    "conv1d_same": dict(kernel=(5,), spatial=(12,), auto_pad="SAME_UPPER", strides=[2]),
    "one_in_channel": dict(c_in=1, c_out=20, kernel=(5, 5), pads=[2, 2, 2, 2]),
    "pointwise": dict(kernel=(1, 1)),
}


@pytest.mark.parametrize("form", GEMM_FORMS)
def test_gemm_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, gemm_model(**GEMM_FORMS[form]), "tt", FULL)
    assert err < TOL and lp.error < 1e-10
    if form != "bias_matrix":  # a fixed batch of 3: the graph's MACs are for 3 rows, the cost model's per row
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, matmul_model(**MATMUL_FORMS[form]), "tt", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", CONV_FORMS)
def test_conv_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, conv_model(**CONV_FORMS[form]), "tt", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


def _options(proto, tmp_path):
    path = tmp_path / "probe.onnx"
    onnx.save(proto, path)
    (layer,) = [lay for lay in find_layers(load_model(path)) if lay.compressible]
    fmt = get_format("tt")
    return fmt.options(layer, fmt.default_modes(layer))


@pytest.mark.parametrize("model", ["gemm", "gemm_3modes", "conv"])
def test_every_realization_exact_and_costed(tmp_path, model):
    """Each realization (direction, merged super-cores, merged/absorbed conv sides) is exact and costed right."""
    proto = {"gemm": gemm_model(), "gemm_3modes": gemm_model(n_in=120, n_out=64),
             "conv": conv_model(c_in=16, c_out=32, strides=[2, 2], pads=[1, 1, 1, 1])}[model]
    options = _options(proto, tmp_path)
    assert len(options) >= 2
    for opt in options:
        out, lp, err = compress_one(tmp_path, proto, "tt", FULL, options=opt)
        assert err < TOL, opt
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_cost_matches_graph_at_low_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    for rank in (1, 3, 8):
        out, lp, _ = compress_one(tmp_path, proto, "tt", rank)
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_error_falls_with_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    assert_decreasing(errors_by_rank(tmp_path, proto, "tt", [1, 2, 4, 8, 16, 64]))


def test_rank_caps_and_validation():
    fmt = get_format("tt")
    layer = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, attrs={"transB": 1, "alpha": 1.0, "beta": 1.0})
    modes = {"in": [4, 12], "out": [5, 8]}
    assert fmt.max_ranks(layer, modes) == [1, 20, 1]
    assert fmt.uniform_ranks(layer, modes, 50) == [1, 20, 1]
    with pytest.raises(ValueError, match="rank 1"):
        fmt.validate_ranks(layer, modes, [1, 21, 1])
    with pytest.raises(ValueError, match="multiply"):
        fmt.max_ranks(layer, {"in": [4, 11], "out": [5, 8]})
