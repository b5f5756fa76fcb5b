"""--format auto: per layer the lowest-error registered format within the parameter budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ttcompile.errors import UserError
from ttcompile.graph import load_model, to_proto
from ttcompile.layers import Layer, find_layers
from ttcompile.passes import get_format
from ttcompile.planning.auto_format import ALIGN, choose_format, largest_fitting_ranks, make_auto_plan
from ttcompile.rewrite.compress import apply_plan
from ttcompile.rewrite.verify import random_inputs, relative_errors

from graphs import conv_model, mlp_model

ATTRS = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "auto_pad": "NOTSET", "group": 1}
CONV = Layer("c", "conv", "Conv", "w", (32, 16, 3, 3), 32, 16, kernel=(3, 3), in_spatial=(8, 8),
             out_spatial=(8, 8), params=32 * 16 * 9, macs=64 * 32 * 16 * 9, attrs=ATTRS)
FC = Layer("fc", "gemm", "Gemm", "w", (40, 48), 40, 48, params=40 * 48, macs=40 * 48,
           attrs={"transB": 1, "alpha": 1.0, "beta": 1.0})
CORE_FORMATS = ["svd", "tucker", "cp", "tt"]


def test_exactly_low_rank_matrix_goes_to_svd():
    """svd/tucker/cp are the same two-factor form on FC: tied on error and speed, svd comes first."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 48))
    choice = choose_format(FC, w, 0.2 * FC.params, CORE_FORMATS)  # 88 r <= 384: r = 4
    assert (choice.format, choice.ranks) == ("svd", [4]) and choice.error < 1e-10


def test_tucker_structured_kernel_goes_to_tucker():
    """A Tucker-2 (4, 4) kernel: exact for tucker within 400 params, not for svd (r = 2) or cp (R = 7)."""
    rng = np.random.default_rng(1)
    w = np.einsum("abhw,oa,cb->ochw", rng.standard_normal((4, 4, 3, 3)), rng.standard_normal((32, 4)),
                  rng.standard_normal((16, 4)))
    choice = choose_format(CONV, w, 400, CORE_FORMATS)
    assert (choice.format, choice.ranks) == ("tucker", [4, 4]) and choice.error < 1e-10


@pytest.mark.parametrize("name", CORE_FORMATS)
@pytest.mark.parametrize("layer", [FC, CONV], ids=["fc", "conv"])
def test_largest_fitting_ranks(name, layer):
    """Within the budget, aligned, and the next aligned rank would not fit (unless capped)."""
    fmt = get_format(name)
    modes = fmt.default_modes(layer)
    budget = 0.5 * layer.params
    ranks = largest_fitting_ranks(fmt, layer, modes, budget)
    assert fmt.cost(layer, modes, ranks).params <= budget
    r = max(ranks)
    assert r < ALIGN or r % ALIGN == 0 or r in fmt.max_ranks(layer, modes)
    bigger = fmt.uniform_ranks(layer, modes, r + 1 if r + 1 < ALIGN else (r // ALIGN + 1) * ALIGN)
    assert bigger == ranks or fmt.cost(layer, modes, bigger).params > budget


def test_mac_limit_and_nothing_fits():
    w = np.random.default_rng(2).standard_normal(CONV.dense_shape)
    assert choose_format(CONV, w, 10, CORE_FORMATS) is None
    choice = choose_format(CONV, w, CONV.params, ["svd", "tt"], max_macs=CONV.macs // 4)
    assert get_format(choice.format).cost(CONV, choice.modes, choice.ranks).macs <= CONV.macs // 4


def _load(tmp_path, proto):
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = load_model(path)
    return path, model, find_layers(model)


@pytest.mark.parametrize("make", [mlp_model, lambda: conv_model(c_in=16, c_out=32)], ids=["mlp", "conv"])
def test_make_auto_plan_compresses_and_runs(tmp_path, make):
    proto = make()
    path, model, layers = _load(tmp_path, proto)
    plan = make_auto_plan(model, layers, ratio=0.3, formats=CORE_FORMATS, model_path=path)
    assert plan.settings["format"] == "auto" and plan.settings["formats"] == CORE_FORMATS
    for lp in plan.layers:
        assert lp.action == "compress", lp.reason
        assert lp.format in CORE_FORMATS and lp.params <= 0.3 * lp.layer.params and lp.macs <= lp.layer.macs
    estimated = [lp.error for lp in plan.layers]
    apply_plan(model, plan, progress=False)
    assert [lp.error for lp in plan.layers] == pytest.approx(estimated)
    (err,) = relative_errors(proto, to_proto(model), random_inputs(proto, batch=2)).values()
    assert err < 1


def test_make_auto_plan_uses_every_registered_format_and_checks_names(tmp_path):
    path, model, layers = _load(tmp_path, mlp_model())
    plan = make_auto_plan(model, layers, ratio=0.2, model_path=path)
    assert set(CORE_FORMATS) <= set(plan.settings["formats"])
    with pytest.raises(UserError, match="unknown format"):
        make_auto_plan(model, layers, ratio=0.2, formats=["svd", "nope"], model_path=path)
    with pytest.raises(UserError, match="ratio"):
        make_auto_plan(model, layers, ratio=1.5, model_path=path)


def test_nothing_fits_falls_back_to_the_smallest_rank1_form(tmp_path):
    """Like ranks_for_ratio: below every rank-1 size, the smallest rank-1 chain (layer_plan then decides)."""
    path, model, layers = _load(tmp_path, mlp_model())
    plan = make_auto_plan(model, layers, ratio=0.001, formats=CORE_FORMATS, model_path=path)
    for lp in plan.layers:
        fmt = get_format(lp.format)
        smallest = min(get_format(f).cost(lp.layer, m, get_format(f).uniform_ranks(lp.layer, m, 1)).params
                       for f, m in ((f, get_format(f).default_modes(lp.layer)) for f in CORE_FORMATS))
        assert max(lp.ranks) == 1 and fmt.cost(lp.layer, lp.modes, lp.ranks).params == smallest
