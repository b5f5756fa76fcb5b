"""Models over ``modelfile.LARGE_BYTES`` (monkeypatched to a few KB here): checked by path, weights kept in
their files, written with one external-data file beside the output, ORT sessions opened from a folder."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttcompile import modelfile
from ttcompile.cli import main
from ttcompile.errors import UserError
from ttcompile.graph import load_model, to_proto
from ttcompile.rewrite.verify import random_inputs
from ttcompile.runtime import make_session

LIMIT = 4096


def wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """x (N, 128) -> Gemm 128->256 -> Relu -> MatMul 256->64 -> y: 160 KiB of float32 weights."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((256, 128)) / 11).astype(np.float32), "W1"),
             numpy_helper.from_array(np.zeros(256, np.float32), "B1"),
             numpy_helper.from_array((rng.standard_normal((256, 64)) / 16).astype(np.float32), "W2")]
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def large(tmp_path, monkeypatch):
    """``in/wide.onnx`` with its weights in ``in/wide.onnx.data``, with LARGE_BYTES at 4 KiB."""
    monkeypatch.setattr(modelfile, "LARGE_BYTES", LIMIT)
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "wide.onnx"
    onnx.save(wide_mlp(), path, save_as_external_data=True, location="wide.onnx.data", size_threshold=0)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(path, x: np.ndarray) -> np.ndarray:
    return make_session(str(path)).run(None, {"x": x})[0]


def test_large_model_is_checked_by_path_and_loaded_lazily(large, monkeypatch):
    seen = []
    check = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: (seen.append(m), check(m, *a, **k)))
    model = load_model(large)
    assert seen == [str(large)]
    w1 = model.graph.initializers["W1"].const_value
    assert isinstance(w1, ir.ExternalTensor)
    assert w1.path == os.path.join(os.path.realpath(large.parent), "wide.onnx.data")
    proto = to_proto(model)
    assert modelfile.needs_file(proto) and not any(t.raw_data for t in proto.graph.initializer)
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_allclose(make_session(proto).run(None, {"x": x})[0], _outputs(large, x), rtol=1e-6)


def test_small_model_is_loaded_as_before(large, monkeypatch):
    monkeypatch.setattr(modelfile, "LARGE_BYTES", 10 ** 9)
    w1 = load_model(large).graph.initializers["W1"].const_value
    assert not isinstance(w1, ir.ExternalTensor)
    assert not modelfile.needs_file(to_proto(load_model(large)))


def test_inspect_large_model(large, capsys):
    assert main(["inspect", str(large), "--ratio", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "fc2" in out and "total" in out


def test_compress_large_model_writes_external_data(large, tmp_path, capsys):
    before = {p.name: _sha(p) for p in large.parent.iterdir()}
    out = tmp_path / "out.onnx"
    assert main(["compress", str(large), "-o", str(out), "--ratio", "0.2", "--force", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert {p.name: _sha(p) for p in large.parent.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data", "out.plan.json"]
    assert f"with its weights in {out}.data" in text
    stored = onnx.load(out, load_external_data=False)
    external = [t for t in stored.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
        "out.onnx.data"}
    assert out.stat().st_size < LIMIT < (tmp_path / "out.onnx.data").stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    x = random_inputs(onnx.load(large, load_external_data=False), batch=8)["x"]  # the CLI's comparison inputs
    ref, got = _outputs(large, x), _outputs(out, x)
    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert err > 1e-3  # really compressed (random weights: a coarse approximation)
    assert float(text.split("relative error ")[1].split()[0]) == pytest.approx(err, rel=1e-3)
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in load_model(out).graph.initializers.values())


def test_output_data_file_never_replaces_the_inputs(large, capsys):
    folder = large.parent
    os.rename(folder / "wide.onnx.data", folder / "victim.onnx.data")
    proto = onnx.load(large, load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "victim.onnx.data"
    large.write_bytes(proto.SerializeToString())
    before = _sha(folder / "victim.onnx.data")
    assert main(["compress", str(large), "-o", str(folder / "victim.onnx"), "--ratio", "0.2", "--quiet"]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert _sha(folder / "victim.onnx.data") == before and not (folder / "victim.onnx").exists()


def test_hard_linked_data_file_is_refused_by_save(large, tmp_path):
    target = tmp_path / "copy.onnx"
    proto = to_proto(load_model(large))
    os.link(large.parent / "wide.onnx.data", modelfile.data_path(target))
    with pytest.raises(UserError, match="holds external data of the model being written"):
        modelfile.save(proto, target)
    assert not target.exists()


def test_failed_write_leaves_no_partial_pair(large, tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old model")
    modelfile.data_path(out).write_bytes(b"old data")
    write = modelfile._write_pair

    def fail_after_writing(proto, model_file, data_file, location):
        write(proto, model_file, data_file, location)
        if model_file.parent == tmp_path:  # the output pair, not check_model's temporary copy
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelfile, "_write_pair", fail_after_writing)
    with pytest.raises(OSError, match="No space left"):
        main(["compress", str(large), "-o", str(out), "--ratio", "0.2", "--force", "--quiet"])
    assert out.read_bytes() == b"old model" and modelfile.data_path(out).read_bytes() == b"old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.onnx", "out.onnx.data"]


TABLE_ROWS, WIDTH = 540_000, 1024  # a 540000 x 1024 float32 constant: 2.21 GB, over protobuf's 2 GiB


def _write_over_2_gib(path) -> int:
    """x (N, 1024) -> Gemm 1024->1024 (the layer to compress) -> Transpose -> MatMul(T, .) -> y (540000, N):
    the table T (the MatMul's left operand, not a layer weight) stays dense, so the output is over 2 GiB too.
    T is streamed into ``path``.data in slices (never one proto or array holding it). Returns its bytes."""
    rng = np.random.default_rng(0)
    with open(modelfile.data_path(path), "wb") as data:
        for _ in range(0, TABLE_ROWS, 60_000):
            data.write((rng.standard_normal((60_000, WIDTH), dtype=np.float32) * np.float32(0.03)).tobytes())
    table = onnx.TensorProto(name="T", data_type=TensorProto.FLOAT, dims=[TABLE_ROWS, WIDTH])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", modelfile.data_path(path).name), ("offset", 0),
                       ("length", TABLE_ROWS * WIDTH * 4)):
        table.external_data.add(key=key, value=str(value))
    w = numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / 32).astype(np.float32), "W")
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
             helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["T", "ht"], ["y"], name="lookup")]
    graph = helper.make_graph(nodes, "over2g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [TABLE_ROWS, "N"])], [table, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return TABLE_ROWS * WIDTH * 4 + w.ByteSize()


def _run_measured(args: list[str], cwd) -> tuple[int, float, float, str]:
    """``ttcompile ARGS`` in a child process: (exit code, peak RSS in GiB, wall seconds, stdout + stderr). The
    RSS is an upper bound: Linux carries the forking process's high-water mark across exec."""
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "ttcompile.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 2 ** 20, time.perf_counter() - start, out


@pytest.mark.slow
def test_inspect_and_compress_a_model_over_2_gib(tmp_path):
    """A real 2.21 GB model: inspect and compress exit 0, the output (also over 2 GiB) goes with its data file,
    and no process holds much more than the weights once."""
    path, result = tmp_path / "big.onnx", tmp_path / "small.onnx"
    try:
        weights = _write_over_2_gib(path)
        assert weights > 2 ** 31 > modelfile.LARGE_BYTES
        code, rss, seconds, out = _run_measured(["inspect", str(path), "--ratio", "0.01"], tmp_path)
        print(f"inspect: exit {code}, peak RSS {rss:.2f} GiB, {seconds:.0f} s")
        assert code == 0, out
        assert "fc " in out and "lookup" in out
        code, rss, seconds, out = _run_measured(["compress", str(path), "--format", "tt", "--ratio", "0.01",
                                                 "--allow-more-macs", "-o", str(result), "--quiet"], tmp_path)
        print(f"compress: exit {code}, peak RSS {rss:.2f} GiB, {seconds:.0f} s\n{out}")
        assert code == 0, out
        assert "verification passed" in out and f"with its weights in {result}.data" in out
        assert rss < 2.5 * weights / 2 ** 30
        onnx.checker.check_model(str(result), full_check=True)
        assert modelfile.data_path(result).stat().st_size > 2 ** 31
    finally:
        for p in tmp_path.iterdir():
            p.unlink()
