"""STP passes (sttu, stt, str): reconstruct() is the documented left-STP definition (checked against explicit
Kronecker products), exact at full rank on every Gemm/MatMul/Conv form, cost model equals the emitted
graph, the graph equals reconstruct(), weights generated in the format are recovered (sttu, stt), error
falls with rank, t and rank validation.

STR is not tested for recovery at the generating ranks: TR-SVD (its initialisation, as for TR) is exact at
its caps but does not in general find a ring's minimal ranks.
"""

from __future__ import annotations

from functools import reduce
from itertools import product
from math import lcm

import numpy as np
import pytest
import tensorly as tl
from test_tr import assert_graph_matches_reconstruct
from test_tt import CONV_FORMS, FULL, GEMM_FORMS, MATMUL_FORMS, TOL

from ttcompile.layers import Layer
from ttcompile.passes import get_format

from graphs import conv_model, gemm_model, matmul_model
from rewrite_check import assert_cost_matches_graph, assert_decreasing, compress_one, errors_by_rank

STP_FORMATS = ["sttu", "stt", "str"]
GEMM = {"transB": 1, "alpha": 1.0, "beta": 1.0}
CONV = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "auto_pad": "NOTSET", "group": 1}


def stp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cheng's left semi-tensor product ``(A ⊗ I_{l/n}) (B ⊗ I_{l/p})``, ``l = lcm(n, p)``."""
    n, p = a.shape[1], b.shape[0]
    return np.kron(a, np.eye(lcm(n, p) // n)) @ np.kron(b, np.eye(lcm(n, p) // p))


def random_cores(shapes, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def test_sttu_is_the_definition():
    """``W[:, :, k] = (U_out ⊗ I_t) G[:, :, k] (U_in ⊗ I_t)^T``."""
    fmt, t = get_format("sttu"), 2
    layer = Layer("c", "conv", "Conv", "w", (8, 6, 3, 3), 8, 6, kernel=(3, 3), attrs=CONV)
    g, u_out, u_in = random_cores([(4, 6, 3, 3), (4, 2), (3, 3)])
    w = np.stack([np.kron(u_out, np.eye(t)) @ g[:, :, i, j] @ np.kron(u_in, np.eye(t)).T
                  for i, j in product(range(3), range(3))], axis=-1).reshape(8, 6, 3, 3)
    np.testing.assert_allclose(fmt.reconstruct([g, u_out, u_in], layer, {"t": t}), w, atol=1e-12)


def test_stt_is_the_definition():
    """``X(i'_1, s, i_2, i_3) = [G_1(i'_1) ⋉ G_2(i_2) ⋉ G_3(i_3)][0, s]`` on TT-matrix modes ``i_k = (m_k, n_k)``."""
    fmt, t = get_format("stt"), 2
    modes = {"in": [2, 3, 4], "out": [2, 2, 2], "t": t}  # TT modes (m_k n_k) = 4, 6, 8
    layer = Layer("fc", "gemm", "Gemm", "w", (8, 24), 8, 24, attrs=GEMM)
    cores = random_cores([(1, 2, 4), (2, 2, 3, 3), (3, 2, 4, 1)])  # nominal ranks [1, 4, 6, 1]
    g1, g2, g3 = cores
    x = np.zeros((4, 6, 8))
    for i1, m2, n2, m3, n3 in product(range(2), range(2), range(3), range(2), range(4)):
        row = reduce(stp, [g1[0, i1][None], g2[:, m2, n2, :], g3[:, m3, n3, :]])  # 1 x t
        x[i1 * t: i1 * t + t, m2 * 3 + n2, m3 * 4 + n3] = row[0]
    w = x.reshape(2, 2, 2, 3, 2, 4).transpose(0, 2, 4, 1, 3, 5).reshape(8, 24)
    assert fmt.max_ranks(layer, modes)[0] == 1 and fmt.uniform_ranks(layer, modes, 5)[1:3] == [4, 4]
    np.testing.assert_allclose(fmt.reconstruct(cores, layer, modes), w, atol=1e-12)


def test_str_is_the_definition():
    """Ring ``[n_1, n_2, m_2, m_1] = [3, 4, 5, 2]``; t = 2 rides on core 1 (the first even mode):
    ``X(.., i'_1, s, ..) = sum_a [G_1 ⋉ G_2 ⋉ G_3 ⋉ G_0][a, a t + s]``."""
    fmt, t = get_format("str"), 2
    modes = {"in": [3, 4], "out": [2, 5], "t": t}
    layer = Layer("fc", "gemm", "Gemm", "w", (10, 12), 10, 12, attrs=GEMM)
    ranks = [4, 4, 2, 4]
    shapes = [(2, 3, 2), (2, 2, 4), (2, 5, 1), (1, 2, 2)]  # core 1 in STP shape (R_0/t, I_1/t, R_1)
    fmt.validate_ranks(layer, modes, ranks)
    cores = random_cores(shapes)
    x = np.zeros((3, 4, 5, 2))
    for i0, i1, i2, i3 in product(range(3), range(2), range(5), range(2)):
        m = reduce(stp, [cores[1][:, i1], cores[2][:, i2], cores[3][:, i3], cores[0][:, i0]])  # (R_0/t, R_0)
        for s in range(t):
            x[i0, i1 * t + s, i2, i3] = sum(m[a, a * t + s] for a in range(m.shape[0]))
    w = x.transpose(3, 2, 0, 1).reshape(10, 12)  # ring (n_1, n_2, m_2, m_1) -> (m_1 m_2, n_1 n_2)
    np.testing.assert_allclose(fmt.reconstruct(cores, layer, modes), w, atol=1e-12)


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
def test_stp_parameter_count(fmt_name):
    """Cores have the STP shapes (t^2 smaller than at the nominal ranks) and the cost counts exactly them."""
    fmt = get_format(fmt_name)
    layer = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, attrs=GEMM)
    modes = fmt.default_modes(layer)
    ranks = fmt.uniform_ranks(layer, modes, 8)
    assert modes["t"] == 2 and all(r % 2 == 0 for r in ranks if r > 1)
    cores = fmt.decompose(np.random.default_rng(0).standard_normal((40, 48)), layer, modes, ranks)
    assert fmt.cost(layer, modes, ranks).params == sum(c.size for c in cores)
    expected = {
        "sttu": [(8, 8), (20, 4), (24, 4)],  # ranks [8, 8]: R_o R_i + (O R_o + C R_i) / t^2
        "stt": [(1, 15, 8), (4, 8, 8, 1)],  # TT modes (5*6, 8*8), ranks [1, 8, 1]: (1, I_1/t, R_1), (R_1/t, m, n, 1)
        "str": [(3, 3, 4), (2, 8, 4), (4, 8, 4), (4, 5, 3)],  # ring [6, 8, 8, 5], ranks [4, 8, 8, 6]
    }[fmt_name]
    assert [c.shape for c in cores] == expected


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
@pytest.mark.parametrize("form", GEMM_FORMS)
def test_gemm_full_rank_exact(tmp_path, fmt_name, form):
    _, lp, err = compress_one(tmp_path, gemm_model(**GEMM_FORMS[form]), fmt_name, FULL)
    assert err < TOL and lp.error < 1e-10


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_full_rank_exact(tmp_path, fmt_name, form):
    out, lp, err = compress_one(tmp_path, matmul_model(**MATMUL_FORMS[form]), fmt_name, FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
@pytest.mark.parametrize("form", CONV_FORMS)
def test_conv_full_rank_exact(tmp_path, fmt_name, form):
    out, lp, err = compress_one(tmp_path, conv_model(**CONV_FORMS[form]), fmt_name, FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


LOW_RANK_MODELS = {
    "gemm": lambda: gemm_model(n_in=120, n_out=64, alpha=0.5, trans_b=0),
    "matmul_3d": lambda: matmul_model(lead=("N", 5)),
    "conv": lambda: conv_model(c_in=32, c_out=32),
    "conv_stride_pad": lambda: conv_model(**CONV_FORMS["stride_pad"]),
    "conv1d": lambda: conv_model(**CONV_FORMS["conv1d"]),
}


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
@pytest.mark.parametrize("model", LOW_RANK_MODELS)
def test_graph_equals_reconstruct_and_cost_at_low_rank(tmp_path, fmt_name, model):
    proto = LOW_RANK_MODELS[model]()
    assert_graph_matches_reconstruct(tmp_path, proto, fmt_name, 4)
    for rank in (2, 6):
        out, lp, _ = compress_one(tmp_path, proto, fmt_name, rank)
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_error_falls_with_rank(tmp_path, fmt_name, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    assert_decreasing(errors_by_rank(tmp_path, proto, fmt_name, [2, 4, 8, 16, 64]))


@pytest.mark.parametrize("fmt_name", ["sttu", "stt"])
def test_weight_in_the_format_is_recovered(fmt_name):
    """A weight built from random cores at some ranks is decomposed exactly at those ranks."""
    fmt = get_format(fmt_name)
    layer = Layer("c", "conv", "Conv", "w", (16, 12, 3, 3), 16, 12, kernel=(3, 3), attrs=CONV)
    modes = fmt.default_modes(layer)
    ranks = fmt.uniform_ranks(layer, modes, 4)
    shapes = [c.shape for c in fmt.decompose(np.zeros(layer.dense_shape), layer, modes, ranks)]
    w = np.asarray(fmt.reconstruct(random_cores(shapes), layer, modes))
    rec = fmt.reconstruct(fmt.decompose(w, layer, modes, ranks), layer, modes)
    np.testing.assert_allclose(rec, w, atol=1e-9 * np.abs(w).max())


def test_t_defaults_and_validation():
    fc = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, attrs=GEMM)
    rgb = Layer("c", "conv", "Conv", "w", (16, 3, 3, 3), 16, 3, kernel=(3, 3), attrs=CONV)
    sttu, stt, str_ = (get_format(n) for n in STP_FORMATS)
    assert sttu.default_modes(rgb) == {"t": 1} and stt.default_modes(rgb)["t"] == 1
    with pytest.raises(ValueError, match="t=3 must divide out=40"):
        sttu.max_ranks(fc, {"t": 3})
    with pytest.raises(ValueError, match="t=4 must divide the first TT mode"):
        stt.max_ranks(fc, {"in": [6, 8], "out": [5, 8], "t": 4})
    with pytest.raises(ValueError, match="t=7 divides no ring mode"):
        str_.max_ranks(fc, {"in": [6, 8], "out": [5, 8], "t": 7})
    modes = {"in": [6, 8], "out": [5, 8], "t": 2}
    with pytest.raises(ValueError, match="multiples of t=2"):
        stt.cost(fc, modes, [1, 5, 1])
    assert stt.uniform_ranks(fc, modes, 5) == [1, 4, 1]
    assert stt.snap_ranks(fc, modes, [1, 5, 1]) == [1, 6, 1] and stt.snap_ranks(fc, modes, [1, 1, 1]) == [1, 2, 1]
    caps = str_.max_ranks(fc, modes)
    assert caps == [2 * c for c in get_format("tr").max_ranks(fc, modes)]
    assert str_.snap_ranks(fc, modes, [c + 1 for c in caps]) == caps


@pytest.mark.parametrize("fmt_name", STP_FORMATS)
def test_reconstruct_runs_on_torch(fmt_name):
    torch = pytest.importorskip("torch")
    fmt = get_format(fmt_name)
    layer = Layer("c", "conv", "Conv", "w", (8, 6, 3, 3), 8, 6, kernel=(3, 3), attrs=CONV)
    modes = fmt.default_modes(layer)
    cores = fmt.decompose(np.random.default_rng(0).standard_normal(layer.dense_shape), layer, modes,
                          fmt.uniform_ranks(layer, modes, 4))
    with tl.backend_context("pytorch"):
        rec = fmt.reconstruct([torch.tensor(c, requires_grad=True) for c in cores], layer, modes)
        rec.sum().backward()
    np.testing.assert_allclose(rec.detach().numpy(), fmt.reconstruct(cores, layer, modes), atol=1e-12)
