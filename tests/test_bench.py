"""End-to-end benchmark runs on tiny models (few short rounds), report rendering and input errors."""

from __future__ import annotations

import argparse
import json
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttcompile.benchmark import bench
from ttcompile.benchmark.bench import benchmark
from ttcompile.benchmark.report import format_table, write_json
from ttcompile.cli import COMMANDS, cmd_bench
from ttcompile.errors import UserError
from ttcompile.models.data import Dataset

FAST = {"rounds": 2, "min_time": 0.0, "min_runs": 2, "progress": False}


def classifier(path, seed, in_dims=("batch", 16), classes=10):
    """Flatten -> Gemm(16 -> classes), seeded weights; input shape ``in_dims`` (16 elements per sample)."""
    w = np.random.default_rng(seed).standard_normal((16, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], name="fc")],
        "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [in_dims[0], classes])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path, w


@pytest.fixture
def models(tmp_path):
    a, wa = classifier(tmp_path / "a.onnx", seed=0)
    b, _ = classifier(tmp_path / "b.onnx", seed=1)
    return a, b, wa


@pytest.fixture
def labelled(models):
    """20 samples labelled by model a's own predictions: a scores 100 %."""
    x = np.random.default_rng(5).standard_normal((20, 16)).astype(np.float32)
    return Dataset(x=x, y=(x @ models[2]).argmax(1).astype(np.int64), name="toy")


def test_end_to_end_with_labels(models, labelled):
    a, b, _ = models
    report = benchmark([a, b], labelled, batches=(1, 8), **FAST)
    ma, mb = report.models
    assert (ma.name, mb.name) == ("a.onnx", "b.onnx")
    assert ma.params == mb.params == 16 * 10
    assert ma.macs_per_sample == 16 * 10
    assert ma.file_bytes == a.stat().st_size
    assert ma.accuracy == 1.0 and ma.agreement == 1.0
    assert 0.0 <= mb.accuracy < 1.0 and mb.agreement == mb.accuracy  # labels are a's predictions
    assert [(t.model, t.batch) for t in report.timings] == [(0, 1), (0, 8), (1, 1), (1, 8)]
    for t in report.timings:
        assert len(t.round_latencies_ms) == 2 and t.runs >= 4
        assert 0 < min(t.round_latencies_ms) <= t.latency_ms <= max(t.round_latencies_ms)
        assert t.median_ms <= t.p90_ms
        assert t.throughput == pytest.approx(t.batch * 1000 / t.latency_ms)
    assert report.speedup(0, 8) == 1.0 and report.params_reduction(1) == 1.0
    assert report.samples == 20 and report.data == "toy"


def test_identical_models_agree_fully(models):
    a, _, _ = models
    report = benchmark([a, a], None, batches=(4,), **FAST)
    assert [m.agreement for m in report.models] == [1.0, 1.0]
    assert [m.accuracy for m in report.models] == [None, None]
    assert [m.name for m in report.models] == ["1:a.onnx", "2:a.onnx"]


def test_one_session_at_a_time_in_alternating_order(models, monkeypatch):
    a, b, _ = models
    opened, alive = [], []

    def spy(path, *args, **kwargs):
        assert all(ref() is None for ref in alive), "previous session still alive"
        sess = real(path, *args, **kwargs)
        opened.append(path.rsplit("/", 1)[-1])
        alive.append(weakref.ref(sess))
        return sess

    real = bench.make_session
    monkeypatch.setattr(bench, "make_session", spy)
    benchmark([a, b], None, batches=(1,), **{**FAST, "rounds": 3})
    assert opened == ["a.onnx", "b.onnx", "b.onnx", "a.onnx", "a.onnx", "b.onnx"]


def test_data_reshaped_per_model_and_batch_wraps(tmp_path, models, labelled):
    a, _, _ = models
    image, _ = classifier(tmp_path / "img.onnx", seed=0, in_dims=("N", 1, 4, 4))
    small = Dataset(x=labelled.x[:3], y=labelled.y[:3], name="three")
    report = benchmark([a, image], small, batches=(8,), **FAST)  # 8 > 3 samples: wraps around
    assert [m.accuracy for m in report.models] == [1.0, 1.0]  # same weights, samples reshaped to 1x4x4
    assert report.models[1].agreement == 1.0
    assert report.samples == 3


def test_json_report_fields(models, tmp_path):
    a, b, _ = models
    out = tmp_path / "sub" / "r.json"
    out.parent.mkdir()  # outputs go into existing folders only
    write_json(benchmark([a, b], None, batches=(1, 2), **FAST), out)
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ttcompile.benchmark.bench/1"
    meta = {"provider", "threads", "batches", "rounds", "min_time_s", "data", "samples", "onnxruntime"}
    assert meta <= set(doc)
    assert set(doc["models"][1]) == {
        "path", "name", "params", "macs_per_sample", "file_bytes", "accuracy", "agreement",
        "params_reduction", "macs_reduction",
    }  # fmt: skip
    timing = doc["timings"][3]
    assert (timing["model"], timing["model_index"], timing["batch"]) == ("b.onnx", 1, 2)
    fields = {"latency_ms", "median_ms", "p90_ms", "throughput", "speedup", "round_latencies_ms", "runs"}
    assert fields <= set(timing)
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


def test_table_columns_aligned(models):
    a, b, _ = models
    text = format_table(benchmark([a, b], None, batches=(1,), **FAST))
    blocks = [block.splitlines() for block in text.split("\n\n")[1:]]
    assert [len(block) for block in blocks] == [3, 3]  # header + one row per model
    for block in blocks:
        assert len({len(line) for line in block}) == 1
    assert "speedup" in blocks[1][0] and "b.onnx" in blocks[1][2]


def test_cli_runs_and_writes_json(models, labelled, tmp_path, capsys):
    a, b, _ = models
    np.savez(tmp_path / "d.npz", x=labelled.x, y=labelled.y)
    parser = argparse.ArgumentParser()
    cmd_bench.add_arguments(parser)
    args = parser.parse_args(
        [str(a), str(b), "--data", str(tmp_path / "d.npz"), "--batch", "1,4", "--repeats", "1"]
        + ["--min-time", "0", "--json", str(tmp_path / "r.json")]
    )
    assert cmd_bench.run(args) == 0
    assert "a.onnx" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["models"][0]["accuracy"] == 1.0
    assert COMMANDS["bench"][0] == "ttcompile.cli.cmd_bench"


def test_cli_rejects_bad_batch_list():
    parser = argparse.ArgumentParser()
    cmd_bench.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["m.onnx", "--batch", "1,x"])


def test_cuda_refused_when_not_installed(models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match="'cuda'.*not available"):
        benchmark([models[0]], None, provider="cuda", **FAST)


def test_missing_and_non_onnx_files_named(models, tmp_path):
    with pytest.raises(UserError, match="nope.onnx"):
        benchmark([models[0], tmp_path / "nope.onnx"], None, **FAST)
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(UserError, match="junk.onnx"):
        benchmark([junk], None, **FAST)


def test_fixed_batch_model_needs_its_batch(tmp_path):
    fixed, _ = classifier(tmp_path / "fixed.onnx", seed=0, in_dims=(1, 16))
    with pytest.raises(UserError, match="fixed batch size of 1"):
        benchmark([fixed], None, batches=(1, 32), **FAST)
    assert benchmark([fixed], None, batches=(1,), **FAST).timings[0].batch == 1


def test_dynamic_feature_dim_needs_data(tmp_path, labelled):
    dyn, _ = classifier(tmp_path / "dyn.onnx", seed=0, in_dims=("batch", "features"))
    with pytest.raises(UserError, match="'x' has dynamic dims"):
        benchmark([dyn], None, **FAST)
    assert benchmark([dyn], labelled, batches=(2,), **FAST).models[0].macs_per_sample == 160


def test_data_of_wrong_size_refused(models):
    bad = Dataset(x=np.zeros((4, 15), np.float32), y=None, name="bad")
    with pytest.raises(UserError, match=r"samples of shape \(16,\).*\(15,\)"):
        benchmark([models[0]], bad, **FAST)


def _bench_args(*argv):
    parser = argparse.ArgumentParser()
    cmd_bench.add_arguments(parser)
    return parser.parse_args([*map(str, argv), "--batch", "1,4", "--repeats", "1", "--min-time", "0"])


def test_cli_plot_writes_png(models, labelled, tmp_path):
    a, b, _ = models
    np.savez(tmp_path / "d.npz", x=labelled.x, y=labelled.y)
    out = tmp_path / "plot.png"
    assert cmd_bench.run(_bench_args(a, b, "--data", tmp_path / "d.npz", "--plot", out)) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "d.npz", "plot.png"]  # no temp left


def test_plot_has_one_point_per_model_original_first(models, labelled):
    from ttcompile.benchmark.plot import bench_figure, bench_points

    a, b, _ = models
    report = benchmark([a, b, b], labelled, batches=(1, 4), **FAST)
    points, latencies, quality = bench_points(report, batch=4)
    assert quality == "accuracy" and [p.series for p in points] == ["original", "compressed", "compressed"]
    assert points[0].y == 100.0 and points[0].x == pytest.approx(a.stat().st_size / 1024)
    assert latencies == [report.timing(i, 4).latency_ms for i in range(3)]
    fig = bench_figure(report)
    offsets = [len(c.get_offsets()) for c in fig.axes[0].collections]
    assert offsets == [2, 1]  # compressed points, then the original's star
    assert "latency at batch 1" in fig.axes[1].get_ylabel()  # the colorbar
    with pytest.raises(UserError, match="batch 8 was not benchmarked"):
        bench_points(report, batch=8)


def test_plot_without_labels_uses_agreement(models):
    from ttcompile.benchmark.plot import bench_points

    a, b, _ = models
    points, _, quality = bench_points(benchmark([a, b], None, batches=(2,), **FAST))
    assert quality.startswith("top-1 agreement") and points[0].y == 100.0


@pytest.mark.parametrize("target", ["a", "d", "json"])
def test_cli_refuses_plot_path_of_an_input_or_other_output(models, labelled, tmp_path, target):
    a, b, _ = models
    np.savez(tmp_path / "d.npz", x=labelled.x, y=labelled.y)
    plot = {"a": a, "d": tmp_path / "d.npz", "json": tmp_path / "r.json"}[target]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = _bench_args(a, b, "--data", tmp_path / "d.npz", "--json", tmp_path / "r.json", "--plot", plot)
    with pytest.raises(UserError, match="--plot"):
        cmd_bench.run(args)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
