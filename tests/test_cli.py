"""CLI behaviour: inspect/compress round trip, plan re-use, and one-line errors with exit code 2."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from ttcompile.cli import main

from graphs import conv_model, mlp_model


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inspect_lists_layers_and_totals(mlp, capsys):
    assert main(["inspect", str(mlp), "--ratio", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "fc2" in out and "total" in out
    assert "needs more MACs than dense" in out  # TT at 30 % of a 96x64 layer is not worth it


def test_inspect_json(mlp, capsys):
    assert main(["inspect", str(mlp), "--json", "--rank", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [lp["layer"]["name"] for lp in data["layers"]] == ["fc1", "fc2"]
    assert data["layers"][0]["layer"]["params"] == 96 * 64 + 96
    assert data["totals"]["params_before"] == 96 * 64 + 96 + 96 * 32


def test_compress_writes_model_and_plan_and_keeps_input(mlp, tmp_path, capsys):
    before = _sha(mlp)
    out = tmp_path / "out.onnx"
    assert main(["compress", str(mlp), "-o", str(out), "--rank", "1000", "--force", "--quiet"]) == 0
    assert _sha(mlp) == before
    onnx.checker.check_model(onnx.load(out), full_check=True)
    plan = json.loads((tmp_path / "out.plan.json").read_text())
    assert all(lp["action"] == "compress" for lp in plan["layers"])
    text = capsys.readouterr().out
    err = float(text.split("relative error ")[1].split()[0])
    assert err < 1e-4


def test_saved_plan_is_applied_exactly(mlp, tmp_path, capsys):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert main(["compress", str(mlp), "-o", str(a), "--ratio", "0.3", "--force", "--quiet"]) == 0
    plan = tmp_path / "a.plan.json"
    assert main(["compress", str(mlp), "-o", str(b), "--plan", str(plan), "--quiet"]) == 0
    pa, pb = json.loads(plan.read_text()), json.loads((tmp_path / "b.plan.json").read_text())
    assert [lp["ranks"] for lp in pa["layers"]] == [lp["ranks"] for lp in pb["layers"]]
    assert onnx.load(a).graph == onnx.load(b).graph


def test_plan_for_another_model_is_refused(mlp, tmp_path, capsys):
    a = tmp_path / "a.onnx"
    assert main(["compress", str(mlp), "-o", str(a), "--rank", "2", "--force", "--quiet"]) == 0
    conv = tmp_path / "conv.onnx"
    onnx.save(conv_model(), conv)
    assert main(["compress", str(conv), "-o", str(tmp_path / "c.onnx"), "--plan", str(tmp_path / "a.plan.json")]) == 2
    assert "not a node of this model" in capsys.readouterr().err


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("case", ["missing", "directory", "not_onnx", "truncated", "no_layers", "ratio_high",
                                  "ratio_zero", "overwrite", "bad_modes", "bad_format", "bad_plan"])
def test_bad_input_one_line_exit_2(case, mlp, tmp_path, capsys):
    out = str(tmp_path / "out.onnx")
    model = str(mlp)
    extra: list[str] = []
    if case == "missing":
        model = str(tmp_path / "nope.onnx")
    elif case == "directory":
        model = str(tmp_path)
    elif case == "not_onnx":
        model = str(tmp_path / "text.onnx")
        (tmp_path / "text.onnx").write_text("hello")
    elif case == "truncated":
        model = str(tmp_path / "trunc.onnx")
        (tmp_path / "trunc.onnx").write_bytes(mlp.read_bytes()[:500])
    elif case == "no_layers":
        proto = onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", 1, [2])], [onnx.helper.make_tensor_value_info("y", 1, [2])]))
        model = str(tmp_path / "relu.onnx")
        onnx.save(proto, model)
    elif case == "ratio_high":
        extra = ["--ratio", "1.5"]
    elif case == "ratio_zero":
        extra = ["--ratio", "0"]
    elif case == "overwrite":
        out = model
    elif case == "bad_modes":
        extra = ["--modes", "fc1=5x5:7x7", "--rank", "2"]
    elif case == "bad_format":
        extra = ["--format", "nope"]
    elif case == "bad_plan":
        (tmp_path / "p.json").write_text("{}")
        extra = ["--plan", str(tmp_path / "p.json")]
    before = open(model, "rb").read() if case not in ("missing", "directory") else None
    assert main(["compress", model, "-o", out, *extra]) == 2
    line = _error_line(capsys)
    assert line.startswith("ttcompile compress: error:")
    if before is not None:
        assert open(model, "rb").read() == before
    if case != "overwrite":
        assert not (tmp_path / "out.onnx").exists()


def test_without_runtime_flavour_clear_message(mlp, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import now raises ImportError
    assert main(["inspect", str(mlp)]) == 2
    assert "pip install 'ttcompile[cpu]'" in _error_line(capsys)
