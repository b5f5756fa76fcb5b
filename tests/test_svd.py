"""svd pass: exact at full rank on every Gemm/MatMul/Conv form, error falls with rank (Eckart-Young),
cost model equals the emitted graph."""

from __future__ import annotations

import numpy as np
import pytest
from test_tt import CONV_FORMS, FULL, GEMM_FORMS, MATMUL_FORMS, TOL

from ttcompile.layers import Layer
from ttcompile.passes import get_format

from graphs import conv_model, gemm_model, matmul_model
from rewrite_check import assert_cost_matches_graph, assert_decreasing, compress_one, errors_by_rank

# bias_matrix has a static batch, which the graph's MACs count (the cost model is per sample).
UNCOSTED_GEMM_FORMS = ("bias_matrix",)


@pytest.mark.parametrize("form", GEMM_FORMS)
def test_gemm_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, gemm_model(**GEMM_FORMS[form]), "svd", FULL)
    assert err < TOL and lp.error < 1e-10
    if form not in UNCOSTED_GEMM_FORMS:
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, matmul_model(**MATMUL_FORMS[form]), "svd", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", CONV_FORMS)
def test_conv_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, conv_model(**CONV_FORMS[form]), "svd", FULL)
    assert err < TOL and lp.error < 1e-10
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_cost_matches_graph_at_low_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(strides=[2, 2], pads=[1, 1, 1, 1])
    for rank in (1, 5, 16):
        out, lp, _ = compress_one(tmp_path, proto, "svd", rank)
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_error_falls_with_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    assert_decreasing(errors_by_rank(tmp_path, proto, "svd", [1, 2, 4, 8, 16, 32]))


def test_truncation_is_optimal_and_balanced():
    """Rank-r error equals the tail of the singular values; both factors carry sqrt(S)."""
    fmt = get_format("svd")
    layer = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, attrs={"transB": 1, "alpha": 1.0, "beta": 1.0})
    w = np.random.default_rng(0).standard_normal((40, 48))
    s = np.linalg.svd(w, compute_uv=False)
    u, v = fmt.decompose(w, layer, {}, [7])
    assert u.shape == (40, 7) and v.shape == (7, 48)
    assert np.linalg.norm(fmt.reconstruct([u, v], layer, {}) - w) == pytest.approx(np.linalg.norm(s[7:]))
    np.testing.assert_allclose(np.linalg.norm(u, axis=0), np.linalg.norm(v, axis=1))


def test_rank_caps_and_validation():
    fmt = get_format("svd")
    conv = Layer("c", "conv", "Conv", "w", (64, 3, 3, 3), 64, 3, kernel=(3, 3))
    assert fmt.max_ranks(conv, {}) == [27]
    assert fmt.uniform_ranks(conv, {}, 100) == [27]
    with pytest.raises(ValueError, match="rank 0"):
        fmt.validate_ranks(conv, {}, [28])
