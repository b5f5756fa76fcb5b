"""benchmarks/finetune_seeds.py rebuilds a row's layers in the realization the row records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from finetune_seeds import layer_plan  # noqa: E402

from ttcompile.analysis.sensitivity import candidate_ranks  # noqa: E402
from ttcompile.graph import load_model  # noqa: E402
from ttcompile.layers import find_layers  # noqa: E402
from ttcompile.passes.base import get_format  # noqa: E402
from ttcompile.planning.planner import Planner  # noqa: E402


@pytest.fixture(scope="module")
def planner_and_case():
    layers = [lay for lay in find_layers(load_model(ROOT / "models" / "resnet20_mnist.onnx")) if lay.compressible]
    planner = Planner(layers, get_format("tr"), None, allow_more_macs=True)
    for lay in layers:
        if lay.name not in planner.caps:
            continue
        for ranks in candidate_ranks(planner, lay):
            plain = planner.plain(lay, ranks)
            if plain is not None:
                return planner, lay, ranks, plain
    pytest.fail("no ResNet-20 TR candidate has a plain realization apart from the realized one")


def test_a_recorded_plain_realization_is_rebuilt_not_the_merged_one(planner_and_case):
    planner, lay, ranks, plain = planner_and_case
    realized = planner.layer(lay, ranks)
    assert realized.options != plain.options and realized.params > plain.params
    rebuilt = layer_plan(planner, lay, ranks, plain.options)
    assert (rebuilt.options, rebuilt.params, rebuilt.ranks) == (plain.options, plain.params, plain.ranks)
    assert layer_plan(planner, lay, ranks, None).options == realized.options  # rows without options
    assert layer_plan(planner, lay, ranks, realized.options).options == realized.options


def test_an_unknown_realization_names_the_layer(planner_and_case):
    planner, lay, ranks, _ = planner_and_case
    with pytest.raises(SystemExit, match=lay.name):
        layer_plan(planner, lay, ranks, {"input": "nowhere", "output": "nowhere"})
