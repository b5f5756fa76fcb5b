"""TR pass: exact at full rank on every Gemm/MatMul/Conv form and realization, error falls with rank,
cost model equals the emitted graph, emitted graph equals ``reconstruct``; TR-SVD and the ring convention."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import tensorly as tl
from onnx import numpy_helper
from tensorly.tr_tensor import tr_to_tensor
from test_tt import CONV_FORMS, FULL, GEMM_FORMS, MATMUL_FORMS, TOL

from ttcompile.graph import load_model
from ttcompile.layers import Layer, dense_weight, find_layers
from ttcompile.passes import get_format
from ttcompile.passes.tr_svd import tr_caps, tr_full, tr_start, tr_svd
from ttcompile.rewrite.verify import random_inputs, relative_errors

from graphs import conv_model, gemm_model, matmul_model
from rewrite_check import assert_cost_matches_graph, assert_decreasing, compress_one, errors_by_rank

CONV_ATTRS = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "auto_pad": "NOTSET", "group": 1}


@pytest.mark.parametrize("form", GEMM_FORMS)
def test_gemm_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, gemm_model(**GEMM_FORMS[form]), "tr", FULL)
    assert err < TOL and lp.error < 1e-10
    if form != "bias_matrix":  # a fixed batch of 3: the graph counts 3 rows, the cost model one
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", MATMUL_FORMS)
def test_matmul_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, matmul_model(**MATMUL_FORMS[form]), "tr", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("form", CONV_FORMS)
def test_conv_full_rank_exact(tmp_path, form):
    out, lp, err = compress_one(tmp_path, conv_model(**CONV_FORMS[form]), "tr", FULL)
    assert err < TOL
    assert_cost_matches_graph(out, lp)


def probe_layer(proto: onnx.ModelProto, tmp_path) -> tuple[Layer, np.ndarray]:
    """The single compressible layer of ``proto`` and its canonical weight."""
    path = tmp_path / "probe.onnx"
    onnx.save(proto, path)
    model = load_model(path)
    (layer,) = [lay for lay in find_layers(model) if lay.compressible]
    return layer, dense_weight(model, layer)[0]


REALIZATION_MODELS = {
    "gemm": lambda: gemm_model(),
    "gemm_3in": lambda: gemm_model(n_in=120, n_out=64),  # 3 in-modes: split super-cores
    "conv": lambda: conv_model(c_in=16, c_out=32, strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_3modes": lambda: conv_model(c_in=64, c_out=48, spatial=(6, 5), pads=[1, 1, 1, 1]),
    "conv1d": lambda: conv_model(kernel=(3,), spatial=(11,), strides=[2], pads=[1, 1]),
    "one_in_channel": lambda: conv_model(**CONV_FORMS["one_in_channel"]),
}


@pytest.mark.parametrize("model", REALIZATION_MODELS)
def test_every_realization_exact_and_costed(tmp_path, model):
    """Each realization (per-side direction, super-cores, merged/absorbed conv sides) is exact at full rank
    and costed right at full and low rank (where SVDs are zero-padded or truncated)."""
    proto = REALIZATION_MODELS[model]()
    layer, _ = probe_layer(proto, tmp_path)
    fmt = get_format("tr")
    options = fmt.options(layer, fmt.default_modes(layer))
    assert len(options) >= 2
    for opt in options:
        for rank in (FULL, 3):
            out, lp, err = compress_one(tmp_path, proto, "tr", rank, options=opt)
            assert rank != FULL or err < TOL, opt
            assert_cost_matches_graph(out, lp)


def assert_graph_matches_reconstruct(tmp_path, proto: onnx.ModelProto, fmt_name: str, rank: int) -> None:
    """The emitted chain computes the layer with weight ``reconstruct(decompose(W))`` (checked in ORT)."""
    out, lp, _ = compress_one(tmp_path, proto, fmt_name, rank)
    layer, weight = probe_layer(proto, tmp_path)
    fmt = get_format(fmt_name)
    w_hat = np.asarray(fmt.reconstruct(fmt.decompose(weight, layer, lp.modes, lp.ranks), layer, lp.modes))
    if layer.kind == "gemm":
        w_hat = (w_hat if layer.attrs["transB"] else w_hat.T) / layer.attrs["alpha"]
    elif layer.kind == "matmul":
        w_hat = w_hat.T
    ref = onnx.ModelProto.FromString(proto.SerializeToString())
    (init,) = [t for t in ref.graph.initializer if t.name == layer.weight]
    init.CopyFrom(numpy_helper.from_array(w_hat.astype(np.float32), layer.weight))
    (err,) = relative_errors(ref, out, random_inputs(ref, batch=3)).values()
    assert err < TOL, err


@pytest.mark.parametrize("model", ["gemm", "matmul_3d", "conv", "conv_stride_pad", "conv1d"])
def test_graph_equals_reconstruct_at_low_rank(tmp_path, model):
    proto = {"gemm": gemm_model(n_in=120, n_out=64, alpha=0.5, trans_b=0), "matmul_3d": matmul_model(lead=("N", 5)),
             "conv": conv_model(c_in=32, c_out=32), "conv_stride_pad": conv_model(**CONV_FORMS["stride_pad"]),
             "conv1d": conv_model(**CONV_FORMS["conv1d"])}[model]
    assert_graph_matches_reconstruct(tmp_path, proto, "tr", 3)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_cost_matches_graph_at_low_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    for rank in (1, 3, 8):
        out, lp, _ = compress_one(tmp_path, proto, "tr", rank)
        assert_cost_matches_graph(out, lp)


@pytest.mark.parametrize("model", ["gemm", "conv"])
def test_error_falls_with_rank(tmp_path, model):
    proto = gemm_model(n_in=120, n_out=64) if model == "gemm" else conv_model(c_in=32, c_out=32)
    assert_decreasing(errors_by_rank(tmp_path, proto, "tr", [1, 2, 4, 8, 16, 64]))


@pytest.mark.parametrize("dims", [(4, 5), (7, 3, 5), (5, 6, 2), (2, 2, 2, 2), (1, 9, 4, 5), (4, 8, 9, 8, 4)])
def test_tr_svd_exact_at_caps(dims):
    """Caps are what TR-SVD realises: exact there, even when the start mode is prime (zero-padded split)."""
    t = np.random.default_rng(0).standard_normal(dims)
    caps = tr_caps(list(dims))
    cores = tr_svd(t, caps)
    assert [c.shape for c in cores] == [(caps[k - 1], n, caps[k]) for k, n in enumerate(dims)]
    np.testing.assert_allclose(tr_full(cores), t, atol=1e-10)


def test_tr_caps_first_split():
    """The start core (0 or d-1, next to the closing bond) splits near sqrt with the smallest product >= m."""
    assert tr_start([4, 8, 9, 8, 6]) == 4 and tr_start([6, 8, 9, 8, 4]) == 0
    assert tr_caps([7, 3, 5]) == [3, 9, 3]  # m = 7: (3, 3), 9 >= 7; remainder (3*3, 5*3) caps bond 1 at 9
    assert tr_caps([4, 5])[::-1] == [2, 2]
    assert tr_caps([6, 35]) == [2, 3]


def test_ring_convention_matches_tensorly():
    """``ranks[k]`` joins core k and k+1, ``ranks[-1]`` closes the ring: tensorly's rank is [ranks[-1], *ranks]."""
    rng = np.random.default_rng(1)
    dims, ranks = [3, 4, 5], [2, 3, 4]
    cores = [rng.standard_normal((ranks[k - 1], n, ranks[k])) for k, n in enumerate(dims)]
    np.testing.assert_allclose(tr_full(cores), tr_to_tensor(cores), atol=1e-12)
    assert tl.tr_tensor.validate_tr_rank(tuple(dims), [ranks[-1], *ranks]) == [ranks[-1], *ranks]


def test_reconstruct_runs_on_torch():
    torch = pytest.importorskip("torch")
    fmt = get_format("tr")
    layer = Layer("c", "conv", "Conv", "w", (8, 6, 3, 3), 8, 6, kernel=(3, 3), attrs=CONV_ATTRS)
    modes = fmt.default_modes(layer)
    w = np.random.default_rng(0).standard_normal(layer.dense_shape)
    cores = fmt.decompose(w, layer, modes, fmt.uniform_ranks(layer, modes, 3))
    with tl.backend_context("pytorch"):
        rec = fmt.reconstruct([torch.tensor(c, requires_grad=True) for c in cores], layer, modes)
        rec.sum().backward()
    np.testing.assert_allclose(rec.detach().numpy(), fmt.reconstruct(cores, layer, modes), atol=1e-12)


def test_default_modes_lenet5():
    """methods.md 4.2: conv1 (1)x(4,5), conv2 (4,5)x(5,10), fc1 (5,5,5,10)x(5,8,8), fc2 (5,8,8)x(10)."""
    fmt = get_format("tr")
    shapes = {(1, 20): ([1], [4, 5]), (20, 50): ([4, 5], [5, 10]), (1250, 320): ([5, 5, 5, 10], [5, 8, 8]),
              (320, 10): ([5, 8, 8], [10])}
    for (n_in, n_out), (m_in, m_out) in shapes.items():
        layer = Layer("l", "gemm", "Gemm", "w", (n_out, n_in), n_out, n_in)
        assert fmt.default_modes(layer) == {"in": m_in, "out": m_out}


def test_rank_caps_and_validation():
    fmt = get_format("tr")
    layer = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, attrs={"transB": 1, "alpha": 1.0, "beta": 1.0})
    modes = {"in": [6, 8], "out": [5, 8]}  # ring [6, 8, 8, 5]: d = 4 ranks
    caps = fmt.max_ranks(layer, modes)
    assert len(caps) == 4 and caps[-1] * caps[0] >= 6
    assert fmt.uniform_ranks(layer, modes, 2) == [2, 2, 2, 2]
    assert fmt.uniform_ranks(layer, modes, 10**4) == caps
    with pytest.raises(ValueError, match="need 4 entries"):
        fmt.validate_ranks(layer, modes, [2, 2, 2])
    with pytest.raises(ValueError, match="rank 1"):
        fmt.validate_ranks(layer, modes, [1, caps[1] + 1, 1, 1])
    with pytest.raises(ValueError, match="multiply"):
        fmt.max_ranks(layer, {"in": [4, 11], "out": [5, 8]})


@pytest.mark.slow
def test_decomposition_time_256_channels():
    """TR-SVD of a 256x256x3x3 kernel takes seconds, at every rank up to the caps (exact there)."""
    fmt = get_format("tr")
    layer = Layer("c", "conv", "Conv", "w", (256, 256, 3, 3), 256, 256, kernel=(3, 3), attrs=CONV_ATTRS)
    modes = fmt.default_modes(layer)
    w = np.random.default_rng(0).standard_normal(layer.dense_shape)
    for rank in (8, 32, FULL):
        start = time.perf_counter()
        cores = fmt.decompose(w, layer, modes, fmt.uniform_ranks(layer, modes, rank))
        assert time.perf_counter() - start < 60  # ~0.6 s at full rank on one idle core (see the pass notes)
    np.testing.assert_allclose(fmt.reconstruct(cores, layer, modes), w, atol=1e-9)
