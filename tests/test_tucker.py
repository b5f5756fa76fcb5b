"""Tucker pass: Tucker-2 conv exact at full rank on every Conv form and realization, FC equal to the svd
form, error falls with rank, HOOI improves on HOSVD, cost model equals the emitted graph."""

from __future__ import annotations

import numpy as np
import pytest
from test_svd import UNCOSTED_GEMM_FORMS
from test_tt import CONV_FORMS, FULL, GEMM_FORMS, MATMUL_FORMS, TOL

from ttcompile.layers import Layer
from ttcompile.passes import get_format
from ttcompile.passes.tucker import CONV_OPTIONS, tucker2

from graphs import conv_model, gemm_model, matmul_model
from rewrite_check import assert_cost_matches_graph, assert_decreasing, compress_one, errors_by_rank

CONV = Layer("c", "conv", "Conv", "w", (32, 16, 3, 3), 32, 16, kernel=(3, 3), in_spatial=(10, 10),
             out_spatial=(10, 10), attrs={"strides": [1, 1], "pads": [1] * 4, "dilations": [1, 1],
                                          "auto_pad": "NOTSET", "group": 1})


@pytest.mark.parametrize("form", GEMM_FORMS)
def test_gemm_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, gemm_model(**GEMM_FORMS[form]), "tucker", FULL)
    assert err < TOL and lp.error < 1e-10
    if form not in UNCOSTED_GEMM_FORMS:
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, matmul_model(**MATMUL_FORMS[form]), "tucker", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", CONV_FORMS)
def test_conv_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, conv_model(**CONV_FORMS[form]), "tucker", FULL)
    assert err < TOL and lp.error < 1e-10
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("option", CONV_OPTIONS, ids=lambda o: f"{o['input']}-{o['output']}")
@pytest.mark.parametrize("rank", [FULL, 5])
def test_every_realization_exact_and_costed(tmp_path, option, rank):
    """Each realization (plain chain, input or output 1x1 absorbed) computes the same chain, costed right."""
    proto = conv_model(strides=[2, 2], pads=[1, 1, 1, 1])
    out, lp, err = compress_one(tmp_path, proto, "tucker", rank, options=option)
    assert_cost_matches_graph(out, lp)
    if rank == FULL:
        assert err < TOL
    else:
        _, plain, plain_err = compress_one(tmp_path, proto, "tucker", rank, options=CONV_OPTIONS[0])
        assert err == pytest.approx(plain_err, rel=1e-4)


def test_realize_absorbs_a_full_rank_side():
    """A 3-channel input layer keeps R_in = C: the input 1x1 would only add work, so it is absorbed."""
    fmt = get_format("tucker")
    layer = Layer("c", "conv", "Conv", "w", (64, 3, 3, 3), 64, 3, kernel=(3, 3), in_spatial=(32, 32),
                  out_spatial=(32, 32), attrs=CONV.attrs)
    ranks = fmt.uniform_ranks(layer, {}, 16)
    assert ranks == [16, 3]
    assert fmt.realize(layer, {}, ranks) == {"input": "absorbed", "output": "chain"}
    assert fmt.realize(CONV, {}, [8, 8]) == CONV_OPTIONS[0]


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_cost_matches_graph_at_low_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32, strides=[2, 1])
    for rank in (1, 3, 8):
        out, lp, _ = compress_one(tmp_path, proto, "tucker", rank)
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_error_falls_with_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    assert_decreasing(errors_by_rank(tmp_path, proto, "tucker", [1, 2, 4, 8, 16, 32]))


def test_fc_is_the_svd_form():
    layer = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, attrs={"transB": 1, "alpha": 1.0, "beta": 1.0})
    w = np.random.default_rng(0).standard_normal((40, 48))
    tucker, svd = get_format("tucker"), get_format("svd")
    assert tucker.max_ranks(layer, {}) == svd.max_ranks(layer, {}) == [40]
    assert tucker.cost(layer, {}, [6]) == svd.cost(layer, {}, [6])
    for a, b in zip(tucker.decompose(w, layer, {}, [6]), svd.decompose(w, layer, {}, [6])):
        np.testing.assert_array_equal(a, b)


def test_hooi_improves_on_hosvd_and_factors_are_orthonormal():
    w = np.random.default_rng(1).standard_normal((32, 24, 9))
    u_out, core, u_in = tucker2(w, 6, 5)
    np.testing.assert_allclose(u_out.T @ u_out, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(u_in.T @ u_in, np.eye(5), atol=1e-12)
    hooi = np.linalg.norm(w - np.einsum("abk,oa,cb->ock", core, u_out, u_in))
    # plain HOSVD: leading singular vectors of both unfoldings, core by projection
    p_out = np.linalg.svd(w.reshape(32, -1), full_matrices=False)[0][:, :6]
    p_in = np.linalg.svd(w.transpose(1, 0, 2).reshape(24, -1), full_matrices=False)[0][:, :5]
    g = np.einsum("ock,oa,cb->abk", w, p_out, p_in)
    hosvd = np.linalg.norm(w - np.einsum("abk,oa,cb->ock", g, p_out, p_in))
    assert hooi < hosvd


def test_rank_caps_and_validation():
    fmt = get_format("tucker")
    assert fmt.max_ranks(CONV, {}) == [32, 16]
    assert fmt.uniform_ranks(CONV, {}, 20) == [20, 16]
    pointwise = Layer("p", "conv", "Conv", "w", (32, 16, 1, 1), 32, 16, kernel=(1, 1), attrs=CONV.attrs)
    assert fmt.max_ranks(pointwise, {}) == [16, 16]
    with pytest.raises(ValueError, match="rank 1"):
        fmt.validate_ranks(CONV, {}, [8, 17])
