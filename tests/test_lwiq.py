"""LWIQ analysis: capture points, pooling, proxy scores, batching, and bad calibration input."""

from __future__ import annotations

import json
import tracemalloc

import lwiq_data
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ttcompile.analysis.features import embed, find_probes, pool_cells
from ttcompile.analysis.lwiq import INPUT, Analysis, ProxyClassifier, analyze, split_indices
from ttcompile.analysis.sensitivity import CURVE_SAMPLES
from ttcompile.errors import UserError
from ttcompile.graph import load_model
from ttcompile.layers import find_layers


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("lwiq")
    return lwiq_data.model(d / "toy.onnx"), lwiq_data.calib_file(d / "calib.npz"), d


def test_informative_layer_gets_the_top_score(toy):
    model, calib, _ = toy
    a = analyze(model, str(calib), batch=64, progress=False)
    by = {ls.layer.name: ls for ls in a.layers}
    assert by["fc1"].score == 1.0 and by["fc1"].proxy_accuracy > 0.95
    assert a.input_accuracy < 0.6  # class means of the raw input are ~0
    assert by["fc1"].previous == INPUT and by["fc1"].previous_accuracy == a.input_accuracy
    for name in ("fc2", "fc3"):  # no gain: clamped to eps, normalised by fc1's gain
        assert by[name].gain <= 0.01 and by[name].score == pytest.approx(a.epsilon / by["fc1"].gain)
    assert a.calibration["labels"] == "given" and a.calibration["imprint"] + a.calibration["held_out"] == 400


def test_without_labels_uses_model_predictions(toy):
    model, _, d = toy
    calib = lwiq_data.calib_file(d / "nolabels.npz", labels=False)
    a = analyze(model, str(calib), progress=False)
    assert "top-1" in a.calibration["labels"]
    assert max(a.layers, key=lambda ls: ls.score).layer.name == "fc1"


def test_analysis_json_round_trip(toy, tmp_path):
    model, calib, _ = toy
    a = analyze(model, str(calib), progress=False)
    path = a.save(tmp_path / "a.json")
    data = json.loads(path.read_text())
    assert data["formula"].startswith("gain_l = acc_l - acc_prev(l)") and len(data["model_sha256"]) == 64
    assert data["layers"][0]["layer"]["params"] == 128 * 64 + 128 and data["time_s"] >= 0
    assert Analysis.load(path).to_json() == a.to_json()


def test_batches_bound_memory(toy, tmp_path):
    """20k samples in batches of 50: never more than one batch of activations alive."""
    model, _, _ = toy
    n, batch = 20000, 50
    calib = lwiq_data.calib_file(tmp_path / "big.npz", n=n)
    per_sample = 8 * (128 + 128 + 4 + lwiq_data.N_IN)  # float64 embeddings of every probe and the input
    tracemalloc.start()
    a = analyze(model, str(calib), batch=batch, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert a.calibration["batches"] == 2 * (n // 2 // batch)
    inputs = n * lwiq_data.N_IN * 4 * 2  # the loaded calibration array (and its float32 copy)
    curves = 3 * CURVE_SAMPLES * per_sample  # the dense reference embeddings of the curve items, one batch more
    assert peak < inputs + n * per_sample / 10 + curves < inputs + n * per_sample


def test_static_batch_model_is_fed_its_own_batch_size(toy, tmp_path):
    _, calib, _ = toy
    model = lwiq_data.model(tmp_path / "static.onnx", batch=3)
    a = analyze(model, str(calib), batch=64, progress=False)  # 200 + 200 samples, last batch padded
    assert a.calibration["batch"] == 3 and a.calibration["batches"] == 2 * 67
    assert max(a.layers, key=lambda ls: ls.score).layer.name == "fc1"


def _residual_model():
    """x -> conv1 -> Relu -> conv2 -> Add(x) -> Relu -> conv3 -> GlobalAveragePool -> Flatten -> fc."""
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(s).astype(np.float32) for n, s in
         {"W1": (8, 8, 3, 3), "W2": (8, 8, 3, 3), "W3": (16, 8, 3, 3), "WF": (4, 16)}.items()}
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", **conv),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", **conv),
             helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3"], ["c3"], name="conv3", **conv),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "WF"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v, n) for n, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_probes_follow_elementwise_chains(tmp_path):
    path = tmp_path / "res.onnx"
    onnx.save(_residual_model(), path)
    model = load_model(path)
    probes = {p.layer: p for p in find_probes(model, find_layers(model))}
    assert (probes["conv1"].value, probes["conv1"].through, probes["conv1"].previous) == ("r1", ("Relu",), None)
    assert (probes["conv2"].value, probes["conv2"].through, probes["conv2"].previous) == ("r2", ("Add", "Relu"), "r1")
    # r2 has two consumers' worth of reach: conv3 stops at its own output (GAP is not elementwise)
    assert (probes["conv3"].value, probes["conv3"].through, probes["conv3"].previous) == ("c3", (), "r2")
    assert (probes["fc"].value, probes["fc"].previous, probes["fc"].channels_first) == ("y", "c3", False)


@pytest.mark.parametrize("shape", [(3, 32, 7, 7), (2, 16, 8, 8), (2, 1, 28, 28), (2, 64, 3, 5)])
def test_embedding_matches_torch_adaptive_pooling(shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    cells = pool_cells(shape[1], shape[2:])
    assert cells == tuple(min(round((512 / shape[1]) ** 0.5), n) for n in shape[2:])
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(a), cells).flatten(1).numpy()
    np.testing.assert_allclose(embed(a, channels_first=True), want, rtol=1e-5, atol=1e-6)


def test_embedding_of_fc_outputs():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(embed(a[:, 0], channels_first=False), a[:, 0])
    np.testing.assert_allclose(embed(a, channels_first=False), a.mean(axis=1))


def test_proxy_classifier_accumulates_batches():
    rng = np.random.default_rng(0)
    emb, labels = rng.standard_normal((90, 5)), np.arange(90) % 3
    whole, parts = ProxyClassifier(3), ProxyClassifier(3)
    whole.add(emb, labels)
    for i in range(0, 90, 7):
        parts.add(emb[i:i + 7], labels[i:i + 7])
    whole.imprint()
    parts.imprint()
    np.testing.assert_allclose(parts.weights, whole.weights)
    np.testing.assert_allclose(np.linalg.norm(whole.weights, axis=1), 1.0)


def test_proxy_classifier_predicts_only_imprinted_classes():
    """Classes never seen in the imprint split are never predicted, even where every seen class scores
    below their zero rows; the rest is the plain cosine argmax."""
    rng = np.random.default_rng(1)
    proxy = ProxyClassifier(50)
    seen = np.array([3, 17, 41])
    proxy.add(rng.standard_normal((30, 8)), seen[np.arange(30) % 3])
    proxy.imprint()
    emb = rng.standard_normal((200, 8))
    got = proxy.predict(emb)
    scores = emb @ proxy.weights[seen].T
    assert set(got) <= set(seen.tolist()) and (scores.max(axis=1) < 0).any()
    np.testing.assert_array_equal(got, seen[np.argmax(scores, axis=1)])


def test_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(5), [2, 3, 10, 11, 40])
    imp, held = split_indices(len(y), y, 0.5, seed=0)
    assert not set(imp) & set(held) and len(imp) + len(held) == len(y)
    assert set(y[imp]) == set(y[held]) == set(range(5))


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, match", [
    ("shape", "expects"), ("dtype", "numeric"), ("empty", "empty"), ("missing", "no sample of class 3"),
    ("range", "outside"), ("single", "held-out split has no sample of class 0"),
    ("unpredicted", "predicts as class"), ("nofile", "no such file"),
])
def test_bad_calibration_is_a_user_error_naming_the_file(toy, tmp_path, case, match):
    model, _, _ = toy
    x, y = lwiq_data.samples(40)
    spec = {
        "shape": lambda: _bad(tmp_path, "shape.npz", x=x[:, :10], y=y),
        "dtype": lambda: _bad(tmp_path, "dtype.npz", x=np.array([["a"] * 64] * 4), y=y[:4]),
        "empty": lambda: _bad(tmp_path, "empty.npz", x=np.zeros((0, 64), np.float32)),
        "missing": lambda: _bad(tmp_path, "missing.npz", x=x[y != 3], y=y[y != 3]),
        "range": lambda: _bad(tmp_path, "range.npz", x=x, y=np.where(y == 3, 7, y)),
        "single": lambda: _bad(tmp_path, "single.npz", x=np.concatenate([x[:1], x[y != 0]]),
                               y=np.concatenate([y[:1], y[y != 0]])),
        "unpredicted": lambda: _bad(tmp_path, "unpredicted.npz", x=x[y != 2]),
        "nofile": lambda: str(tmp_path / "nofile.npz"),
    }[case]()
    with pytest.raises(UserError, match=match) as err:
        analyze(model, spec, progress=False)
    assert f"{case}.npz" in str(err.value)
