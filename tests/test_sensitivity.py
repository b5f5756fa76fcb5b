"""LWIQ sensitivity curves, the hull mapping, and what the proxies classify (labels, top-1, sequence, pseudo)."""

from __future__ import annotations

import lwiq_data
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttcompile.analysis import sensitivity
from ttcompile.analysis.lwiq import analyze
from ttcompile.analysis.targets import embed_positions, kmeans
from ttcompile.graph import load_model
from ttcompile.layers import find_layers
from ttcompile.passes.base import get_format
from ttcompile.planning.allocators import Context, allocate, search
from ttcompile.planning.budget import Budget
from ttcompile.planning.hull import lower_hull
from ttcompile.planning.planner import Planner
from ttcompile.sources import file_sha256


def test_hull_keeps_only_points_optimal_for_some_multiplier():
    pts = [(1.0, 1.0, "a"), (2.0, 0.5, "b"), (3.0, 0.45, "c"), (4.0, 0.0, "d"), (2.5, 0.9, "dominated")]
    hull = lower_hull(pts)
    assert hull.keys == ["a", "b", "d"]  # c lies above the segment b-d
    assert hull.breakpoints == sorted(hull.breakpoints) and hull.choose(0.0) == "a"
    assert hull.choose(1e9) == "d"
    for t in np.linspace(0, 10, 101):  # the chosen vertex minimises t d + c over all points
        best = min(t * d + c for c, d, _ in pts)
        c, d = next((c, d) for c, d, k in pts if k == hull.choose(t))
        assert t * d + c == pytest.approx(best)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("sens")
    model = lwiq_data.model(d / "toy.onnx")
    calib = lwiq_data.calib_file(d / "calib.npz")
    return model, calib, analyze(model, str(calib), formats=("tt", "tr"), progress=False)


def test_curves_fall_with_rank(toy):
    _, _, a = toy
    for fmt in ("tt", "tr"):
        for name, curve in a.curves[fmt].items():
            drops = [p.drop for p in curve.points]
            assert curve.points and drops[-1] <= drops[0] + 1e-6, (fmt, name)
            errors = [p.feature_error for p in curve.points]  # candidates come in increasing params
            assert errors[-1] <= errors[0] + 1e-6 and min(errors) < 0.5, (fmt, name)
    for curve in a.curves["tr"].values():  # d_l(r) = max(acc_l - acc_l(r), 0) + BETA e_l(r)
        for p in curve.points:
            want = max(curve.accuracy - p.accuracy, 0.0) + sensitivity.BETA * p.feature_error
            assert p.drop == pytest.approx(want)
    fc1 = a.curves["tt"]["fc1"]  # the informative layer: rank 1 destroys its separability
    assert fc1.points[0].accuracy < fc1.accuracy - 0.2
    # the identity layer fc2 (ReLU features) and the read-out are cheap to compress; fc1 is not
    assert a.curves["tt"]["fc1"].points[0].drop > a.curves["tt"]["fc3"].points[0].drop


def test_curves_do_not_depend_on_how_many_threads_measure_them(toy):
    model, calib, a = toy
    one = analyze(model, str(calib), formats=("tr",), workers=1, progress=False)
    three = analyze(model, str(calib), formats=("tr",), workers=3, progress=False)
    assert len(one.curves["tr"]) >= 3
    for name, curve in one.curves["tr"].items():
        assert three.curves["tr"][name].to_json() == curve.to_json() == a.curves["tr"][name].to_json(), name
    assert list(three.curves["tr"]) == list(one.curves["tr"])  # in graph order


def _cut_bonds(plan, fmt) -> int:
    """Bonds at rank 1 whose cap is > 2 in layers whose knob is above its minimum (uniform rank 1)."""
    f = get_format(fmt)
    n = 0
    for lp in plan.layers:
        if lp.action != "compress" or lp.ranks == f.uniform_ranks(lp.layer, lp.modes, 1):
            continue
        n += sum(r == 1 and cap > 2 for r, cap in zip(lp.ranks, f.max_ranks(lp.layer, lp.modes)))
    return n


@pytest.mark.parametrize("damage", ["linear", "log"])
@pytest.mark.parametrize("fmt", ["tt", "tr"])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.4])
def test_allocation_meets_the_budget_and_never_cuts_a_bond(toy, fmt, fraction, damage):
    model, _, a = toy
    m = load_model(model)
    ctx = Context(str(model), file_sha256(model), find_layers(m), get_format(fmt), allow_more_macs=True,
                  model=m, analysis=a, lwiq_damage=damage)
    found = search("lwiq", ctx)
    budget = Budget(params=fraction)
    plan = found.plan(budget)
    rep = plan.settings["budget"]
    assert rep["achieved"]["params"] <= rep["targets"]["params"]
    assert _cut_bonds(plan, fmt) == 0
    # at the solved multiplier the informative fc1 keeps more of its rank than the identity fc2, which TT
    # holds exactly at rank 1 (the fill phase may later spend leftover parameters on either)
    family, t = found.family.for_budget(budget), plan.settings["knob"]["value"]
    fill = {}
    for lp in plan.layers:
        ranks = family.rank(lp.name, t)
        fill[lp.name] = 1.0 if ranks is None else max(ranks) / max(found.planner.caps[lp.name])
    assert fill["fc1"] > fill["fc2"] or fmt != "tt"  # (a TR ring cannot hold the identity at rank 1)


def test_bigger_budget_gives_a_lower_total_drop(toy):
    model, _, a = toy
    m = load_model(model)
    ctx = Context(str(model), file_sha256(model), find_layers(m), get_format("tt"), allow_more_macs=True,
                  model=m, analysis=a)
    curves = a.curves["tt"]

    def total_drop(plan):
        out = 0.0
        for lp in plan.layers:
            if lp.action == "compress":
                out += next(p.drop for p in curves[lp.name].points if p.ranks == lp.ranks) if any(
                    p.ranks == lp.ranks for p in curves[lp.name].points) else 0.0
        return out

    plans = [allocate("lwiq", ctx, Budget(params=f)) for f in (0.05, 0.2, 0.5)]
    sizes = [p.settings["budget"]["achieved"]["params"] for p in plans]
    assert sizes == sorted(sizes)
    drops = [total_drop(p) for p in plans]
    assert drops[0] >= drops[-1]


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.concatenate([c + rng.standard_normal((50, 2)) for c in centers])
    labels = kmeans(x, 3)
    for i in range(3):  # each true cluster maps to one label
        assert len(set(labels[i * 50:(i + 1) * 50])) == 1
    assert len(set(labels)) == 3


def test_embed_positions_pools_width_to_time_steps():
    a = np.arange(2 * 3 * 2 * 8, dtype=np.float32).reshape(2, 3, 2, 8)  # (B, C, H, W)
    e = embed_positions(a, channels_first=True, positions=4)
    assert e.shape == (2, 4, 3)
    want = a.mean(axis=2).reshape(2, 3, 4, 2).mean(axis=3).transpose(0, 2, 1)
    np.testing.assert_allclose(e, want)
    rows = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    assert embed_positions(rows, channels_first=False, positions=3).shape == (2, 3, 5)
    odd = np.random.default_rng(0).random((2, 7, 4))  # T' = 7 to 3 cells: [0, 3), [2, 5), [4, 7) as torch's
    want = np.stack([odd[:, lo:hi].mean(axis=1) for lo, hi in ((0, 3), (2, 5), (4, 7))], axis=1)
    np.testing.assert_allclose(embed_positions(odd, channels_first=False, positions=3), want)


def _conv_model(path, head: str):
    """x (N,1,8,16) -> conv1 -> Relu -> conv2 -> head. ``sequence``: (N, T=16, K=5) logits; ``map``: a map."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    w2 = (rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32)
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", **conv),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", **conv)]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    if head == "sequence":
        wf = rng.standard_normal((32, 5)).astype(np.float32)
        inits += [numpy_helper.from_array(wf, "WF"), numpy_helper.from_array(np.array([2], np.int64), "ax")]
        nodes += [helper.make_node("ReduceMean", ["c2", "ax"], ["m"], keepdims=0, name="pool"),  # (N, 32, 16)
                  helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1], name="tr"),  # (N, 16, 32)
                  helper.make_node("MatMul", ["t", "WF"], ["y"], name="fc")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 5])
    else:
        nodes += [helper.make_node("Sigmoid", ["c2"], ["y"], name="sig")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 8, 16])
    graph = helper.make_graph(nodes, head, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 16])],
                              [out], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _images(path, n=120):
    x = np.random.default_rng(1).random((n, 1, 8, 16)).astype(np.float32)
    np.savez(path, x=x)
    return str(path)


def test_sequence_output_uses_per_position_classes(tmp_path):
    model = _conv_model(tmp_path / "seq.onnx", "sequence")
    a = analyze(model, _images(tmp_path / "x.npz"), formats=("tucker",), progress=False)
    assert "per-position" in a.calibration["labels"] and a.targets["kind"] == "sequence"
    assert a.targets["classes"] == 5
    assert set(a.curves["tucker"]) == {"conv1", "conv2", "fc"}
    assert all(0 <= ls.proxy_accuracy <= 1 for ls in a.layers)


def test_other_outputs_get_kmeans_pseudo_classes(tmp_path):
    model = _conv_model(tmp_path / "map.onnx", "map")
    a = analyze(model, _images(tmp_path / "x.npz"), formats=("tt",), pseudo_classes=4, progress=False)
    assert a.targets["kind"] == "pseudo" and a.targets["classes"] == 4 and "k-means" in a.calibration["labels"]
    curve = a.curves["tt"]["conv2"]
    assert curve.points and curve.points[0].drop > curve.points[-1].drop


def test_span_inputs_that_are_not_per_sample_are_fed_as_they_are(tmp_path):
    """conv -> Relu -> Reshape(shape = Concat(Shape(x)[:1], [-1])) -> Gemm: the conv's span (read out at the
    Gemm's probe) reads the computed shape, which has no batch axis; it is kept once and fed to every run."""
    rng = np.random.default_rng(0)
    w = {"W1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
         "WF": rng.standard_normal((4, 8 * 6 * 6)).astype(np.float32) / 10,
         "start": np.array([0], np.int64), "one": np.array([1], np.int64), "minus": np.array([-1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "start", "one"], ["n"], name="batch"),
             helper.make_node("Concat", ["n", "minus"], ["flat_shape"], name="cat", axis=0),
             helper.make_node("Reshape", ["r1", "flat_shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "WF"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v, n) for n, v in w.items()])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.random.default_rng(1).random((90, 1, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(90) % 4)
    a = analyze(path, str(tmp_path / "x.npz"), formats=("tucker",), batch=16, progress=False)
    assert a.curves["tucker"]["conv1"].readout == "fc" and a.curves["tucker"]["conv1"].points


def _plain_layers_model(path) -> str:
    """x (N, 2, 6, 6) -> Conv(pads) -> Relu -> Flatten -> Gemm(transB=0, alpha=0.5, C) -> Relu -> MatMul."""
    rng = np.random.default_rng(3)
    w = {"WC": rng.standard_normal((8, 2, 3, 3)), "BC": rng.standard_normal(8),
         "WG": rng.standard_normal((8 * 36, 24)) / 10, "CG": rng.standard_normal(24),
         "WM": rng.standard_normal((24, 12))}
    nodes = [helper.make_node("Conv", ["x", "WC", "BC"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
             helper.make_node("Flatten", ["rc"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "WG", "CG"], ["g"], name="gemm", alpha=0.5),
             helper.make_node("Relu", ["g"], ["rg"], name="relu_g"),
             helper.make_node("MatMul", ["rg", "WM"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
                              [numpy_helper.from_array(v.astype(np.float32), n) for n, v in w.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.parametrize("fmt", ["tt", "tr", "tucker", "cp", "sttu"])
def test_a_candidate_run_with_its_weight_computes_what_its_chain_computes(tmp_path, fmt):
    """The fast path (the node fed the weight the cores compute with) equals the rewritten chain, for Conv,
    a transposed scaled Gemm and MatMul, at every candidate rank."""
    from ttcompile.runtime import make_session

    model = load_model(_plain_layers_model(tmp_path / "plain.onnx"))
    layers = [lay for lay in find_layers(model) if lay.compressible]
    planner = Planner(layers, get_format(fmt))
    proto = onnx.load(tmp_path / "plain.onnx")
    x = np.random.default_rng(4).standard_normal((5, 2, 6, 6)).astype(np.float32)
    tried = 0
    for lay in layers:
        if lay.name not in planner.caps:
            continue
        assert sensitivity.plain_weight(proto, lay), lay.name
        canonical = sensitivity.dense_weight(model, lay)[0]
        for ranks in sensitivity.candidate_ranks(planner, lay):
            lp = planner.layer(lay, ranks)
            fast, chain = (make_session(sensitivity.candidate_model(proto, lp, w)).run(None, {"x": x})[0]
                           for w in (canonical, None))
            np.testing.assert_allclose(fast, chain, rtol=1e-4, atol=1e-4 * np.abs(chain).max())
            tried += 1
    assert tried >= 6


@pytest.mark.parametrize("fmt", ["tt", "tr", "tucker"])
def test_candidates_keep_at_most_two_thirds_of_a_layer_and_rise_in_params(tmp_path, fmt):
    model = load_model(_plain_layers_model(tmp_path / "plain.onnx"))
    layers = [lay for lay in find_layers(model) if lay.compressible]
    planner = Planner(layers, get_format(fmt))
    counted = 0
    for lay in (lay for lay in layers if lay.name in planner.caps):
        params = [planner.layer(lay, r).params for r in sensitivity.candidate_ranks(planner, lay)]
        assert params == sorted(params) and all(p <= sensitivity.MAX_SHARE * lay.params for p in params), lay.name
        counted += len(params)
    assert counted >= 3


@pytest.mark.parametrize("shape", [(3, 16, 28, 28), (3, 64, 7, 9), (3, 8, 50)])
def test_the_embedding_made_in_the_graph_is_the_numpy_one(shape):
    """``embedded`` appends features.embed's pooling to a span: same numbers for 2-D and 1-D maps (cells that
    divide the axis and cells that do not)."""
    from ttcompile.analysis.features import Probe, embed
    from ttcompile.analysis.targets import Targets
    from ttcompile.runtime import make_session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu")], "span",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    sub = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe = Probe("conv", "r", ("Relu",), ("conv", "relu"), True, None)
    pooled = sensitivity.embedded(sub, probe, Targets("labels", np.zeros(3, np.int64), 10, ""))
    assert pooled is not None
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    got = make_session(pooled).run([sensitivity.EMBEDDING], {"x": x})[0]
    np.testing.assert_allclose(got, embed(np.maximum(x, 0), True), rtol=1e-5, atol=1e-6)


def test_output_drop_is_the_drop_the_model_output_probe_sees(toy):
    """fc1's reference candidates are read out at fc3's probe (the logits): each ``output_drop`` equals the
    drop recomputed here from the whole model with fc1 rewritten, classified by prototypes imprinted on
    the dense logits of the imprint split; fc2 and fc3 (read out at the logits already) have t = 1."""
    import onnx_ir as ir

    from ttcompile.analysis.lwiq import ProxyClassifier, split_indices
    from ttcompile.graph import to_proto
    from ttcompile.planning.planner import Planner
    from ttcompile.rewrite.compress import rewrite_layer
    from ttcompile.runtime import make_session

    model, calib, a = toy
    data = np.load(calib)
    x, y = data["x"], data["y"]
    imprint, held = split_indices(len(x), y, 0.5, 0)
    items = held[:a.calibration["curve_samples"]]

    def logits(proto):
        return make_session(proto).run(None, {"x": x})[0].astype(np.float64)

    m = load_model(model)
    dense = logits(to_proto(m))
    proxy = ProxyClassifier(lwiq_data.K)
    proxy.add(dense[imprint], y[imprint])
    proxy.imprint()
    acc = float((proxy.predict(dense[items]) == y[items]).mean())
    layers = {lay.name: lay for lay in find_layers(m)}
    for fmt in ("tt", "tr"):
        curves = a.curves[fmt]
        assert curves["fc1"].output == "fc3" and curves["fc2"].output == curves["fc3"].output == ""
        assert curves["fc2"].transfer == curves["fc3"].transfer == 1.0
        planner = Planner(list(layers.values()), get_format(fmt), None, allow_more_macs=True)
        refs = [p for p in curves["fc1"].points if p.output_drop is not None]
        assert 1 <= len(refs) <= len(sensitivity.TRANSFER_FRACTIONS)
        for p in refs:
            mr = ir.from_proto(to_proto(m))
            rewrite_layer(mr, planner.layer(layers["fc1"], p.ranks))
            out = logits(to_proto(mr))[items]
            err = np.mean(np.linalg.norm(out - dense[items], axis=1) / np.linalg.norm(dense[items], axis=1))
            want = max(acc - float((proxy.predict(out) == y[items]).mean()), 0.0) + sensitivity.BETA * err
            assert p.output_drop == pytest.approx(want, abs=1e-4), (fmt, p.ranks)
        t = (sum(p.output_drop for p in refs) + sensitivity.STOP_DROP) / (sum(p.drop for p in refs)
                                                                          + sensitivity.STOP_DROP)
        assert curves["fc1"].transfer == pytest.approx(t)


@pytest.mark.parametrize("damage", ["log", "linear"])
@pytest.mark.parametrize("fraction", [0.05, 0.1])
def test_output_weights_move_parameters_to_the_layer_whose_damage_reaches_the_output(toy, fraction, damage):
    """With fc1's reference drops made 10x larger at the output probe, the default ``output`` weights give
    fc1 more parameters than ``flat`` weights do at the same budget (TR), and the plan still meets it."""
    import copy

    model, _, a = toy
    boosted = copy.deepcopy(a)
    fc1 = boosted.curves["tr"]["fc1"]
    for p in fc1.points:
        p.output_drop = 10 * p.drop
    assert fc1.transfer > 5
    m = load_model(model)
    kept = {}
    for weights in ("output", "flat"):
        ctx = Context(str(model), file_sha256(model), find_layers(m), get_format("tr"), allow_more_macs=True,
                      model=m, analysis=boosted, lwiq_weights=weights, lwiq_damage=damage)
        plan = allocate("lwiq", ctx, Budget(params=fraction))
        assert plan.settings["budget"]["achieved"]["params"] <= plan.settings["budget"]["targets"]["params"]
        lp = next(lp for lp in plan.layers if lp.name == "fc1")
        kept[weights] = lp.params if lp.action == "compress" else lp.layer.params
        assert plan.settings["weight"]["fc1"] == pytest.approx(fc1.transfer if weights == "output" else 1.0,
                                                                abs=1e-4)
    assert kept["output"] > kept["flat"]


def test_log_damage_prices_a_destroyed_layer_as_a_destroyed_network():
    from ttcompile.planning.allocators import LOG_CAP, damage

    assert damage(0.3, "linear") == 0.3
    assert damage(0.3, "log") == pytest.approx(-np.log(0.7))
    # two layers that each keep 70 % of the output cost what one keeping 49 % costs
    assert 2 * damage(0.3, "log") == pytest.approx(damage(0.51, "log"))
    assert damage(5.0, "log") == damage(LOG_CAP, "log") > 10 * damage(0.3, "log")
