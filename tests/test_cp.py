"""CP pass: every Conv form reproduces an exactly rank-R kernel at rank R, Gemm/MatMul exact at full
rank (svd form), error falls with rank, factors stay finite and balanced, cost equals the graph."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import numpy_helper
from test_svd import UNCOSTED_GEMM_FORMS
from test_tt import CONV_FORMS, FULL, GEMM_FORMS, MATMUL_FORMS, TOL

from ttcompile.layers import Layer
from ttcompile.passes import get_format
from ttcompile.passes.cp import cp_als, cp_full

from graphs import conv_model, gemm_model, matmul_model
from rewrite_check import assert_cost_matches_graph, assert_decreasing, compress_one, errors_by_rank

RANK = 5
ALS_TOL = 1e-4  # relative error CP-ALS must reach on an exactly rank-R kernel


def cp_kernel(shape: tuple[int, ...], rank: int, seed: int = 0) -> np.ndarray:
    """A kernel of CP rank ``rank``: the sum of ``rank`` random rank-one terms."""
    rng = np.random.default_rng(seed)
    return cp_full([rng.standard_normal((n, rank)) for n in shape]) / np.sqrt(rank * np.prod(shape[1:]))


def low_rank_conv(rank: int = RANK, **form):
    """``conv_model(**form)`` with its kernel replaced by an exactly rank-``rank`` one."""
    proto = conv_model(**form)
    (init,) = [t for t in proto.graph.initializer if t.name == "W"]
    kernel = cp_kernel(tuple(init.dims), rank).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array(kernel, "W"))
    return proto


@pytest.mark.parametrize("form", GEMM_FORMS)
def test_gemm_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, gemm_model(**GEMM_FORMS[form]), "cp", FULL)
    assert err < TOL and lp.error < 1e-10
    if form not in UNCOSTED_GEMM_FORMS:
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, matmul_model(**MATMUL_FORMS[form]), "cp", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", CONV_FORMS)
def test_conv_exact_on_rank_r_kernel(tmp_path, form):
    """Stride/pads/dilation/auto_pad split over the depthwise convs reproduce the original conv."""
    out, lp, err = compress_one(tmp_path, low_rank_conv(**CONV_FORMS[form]), "cp", RANK)
    assert lp.error < ALS_TOL and err < ALS_TOL
    assert_cost_matches_graph(out, lp)


def test_chain_shape(tmp_path):
    """2-D: 1x1, depthwise k_h x 1, depthwise 1 x k_w, 1x1; axes with kernel 1 and nothing to apply vanish."""
    out, _, _ = compress_one(tmp_path, low_rank_conv(kernel=(3, 5), pads=[1, 2, 1, 2]), "cp", RANK)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    kernels = [next(a.ints for a in n.attribute if a.name == "kernel_shape") for n in convs]
    assert kernels == [[1, 1], [3, 1], [1, 5], [1, 1]]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert groups == [1, RANK, RANK, 1]
    out, _, _ = compress_one(tmp_path, low_rank_conv(kernel=(3, 1), pads=[1, 0, 1, 0]), "cp", RANK)
    assert [n.op_type for n in out.graph.node].count("Conv") == 3


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_cost_matches_graph_at_low_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(strides=[2, 1], pads=[1, 0, 0, 1])
    for rank in (1, 3, 8):
        out, lp, _ = compress_one(tmp_path, proto, "cp", rank)
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_error_falls_with_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=16, c_out=16)
    assert_decreasing(errors_by_rank(tmp_path, proto, "cp", [1, 2, 4, 8, 16, 32]))


def test_surplus_rank_stays_finite_and_balanced():
    """Rank far above the kernel's CP rank (singular normal equations without the ridge) stays bounded."""
    w = cp_kernel((16, 8, 3, 3), 2, seed=3)
    factors = cp_als(w, 24)
    assert all(np.isfinite(f).all() for f in factors)
    assert np.linalg.norm(cp_full(factors) - w) < ALS_TOL * np.linalg.norm(w)
    norms = np.stack([np.linalg.norm(f, axis=0) for f in factors])
    np.testing.assert_allclose(norms, norms[:1].repeat(4, axis=0), rtol=1e-9)
    assert norms.max() < 10 * np.linalg.norm(w) ** 0.25


def test_zero_kernel():
    assert all((f == 0).all() for f in cp_als(np.zeros((4, 3, 3, 3)), 5))


def test_rank_caps():
    fmt = get_format("cp")
    attrs = {"strides": [1, 1], "pads": [0] * 4, "dilations": [1, 1], "auto_pad": "NOTSET", "group": 1}
    conv = Layer("c", "conv", "Conv", "w", (32, 16, 3, 3), 32, 16, kernel=(3, 3), attrs=attrs)
    assert fmt.max_ranks(conv, {}) == [16 * 3 * 3]
    pointwise = Layer("p", "conv", "Conv", "w", (32, 16, 1, 1), 32, 16, kernel=(1, 1), attrs=attrs)
    assert fmt.max_ranks(pointwise, {}) == [16]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [64, 256])
def test_large_kernel_decomposes_in_seconds(rank):
    """256x256x3x3 at rank 64 and 256: ALS is capped at ALS_MAX_ITER sweeps of one GEMM-sized MTTKRP per mode."""
    w = np.random.default_rng(0).standard_normal((256, 256, 3, 3)) / 48
    start = time.perf_counter()
    factors = cp_als(w, rank)
    assert time.perf_counter() - start < 60
    assert np.linalg.norm(cp_full(factors) - w) < np.linalg.norm(w)
