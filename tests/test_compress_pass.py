"""CompressPass is an onnx-ir pass: composed with onnx-ir's cleanup in a PassManager it gives what
``ttcompile.compress`` gives, node for node and output for output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

import ttcompile
from ttcompile.graph import load_model
from ttcompile.rewrite.verify import random_inputs, run

LENET = Path(__file__).resolve().parent.parent / "models" / "lenet5_mnist.onnx"


def test_pass_manager_result_equals_compress():
    plan = ttcompile.plan(LENET, format="tt", ratio=0.2)
    expected = ttcompile.compress(LENET, plan=plan).model  # works on a copy of the plan

    model = load_model(LENET)  # the normalised model the plan was made on
    rewrite = ttcompile.CompressPass(plan)
    result = ir.passes.PassManager([rewrite, RemoveUnusedNodesPass()])(model)
    assert isinstance(result, ir.passes.PassResult) and result.modified
    assert [r.name for r in rewrite.results if r.rewritten] == [lp.name for lp in plan.layers
                                                               if lp.action == "compress"]
    got = ir.to_proto(result.model)

    assert [n.op_type for n in got.graph.node] == [n.op_type for n in expected.graph.node]
    assert sorted(t.name for t in got.graph.initializer) == sorted(t.name for t in expected.graph.initializer)
    feeds = random_inputs(expected, batch=4)
    ours, theirs = run(got, feeds), run(expected, feeds)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_without_cleanup_the_old_weights_stay_until_removed():
    plan = ttcompile.plan(LENET, format="tt", ratio=0.2)
    model = load_model(LENET)
    ttcompile.CompressPass(plan)(model)
    dense = {lp.layer.weight for lp in plan.layers if lp.action == "compress"}
    assert dense <= set(model.graph.initializers)
    RemoveUnusedNodesPass()(model)
    assert not dense & set(model.graph.initializers)
