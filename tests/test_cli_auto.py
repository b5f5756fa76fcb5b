"""``--format auto`` on the command line: per-layer formats in the saved plan, clear errors."""

from __future__ import annotations

import json

import onnx
import pytest

from ttcompile.cli import main
from ttcompile.passes import FORMATS

from graphs import mlp_model


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(mlp_model(), path)
    return path


def test_compress_auto_records_per_layer_formats(tiny, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["compress", str(tiny), "-o", str(out), "--format", "auto", "--ratio", "0.5", "--quiet"]) == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    plan = json.loads((tmp_path / "out.plan.json").read_text())
    assert plan["settings"]["format"] == "auto" and plan["settings"]["ratio"] == 0.5
    compressed = [lp for lp in plan["layers"] if lp["action"] == "compress"]
    assert compressed
    for lp in compressed:
        assert lp["format"] in FORMATS and lp["ranks"]
        assert lp["params"] <= 0.5 * lp["layer"]["params"]
        assert 0 <= lp["error"] < 1
    assert "relative error" in capsys.readouterr().out


def test_auto_refuses_rank(tiny, tmp_path, capsys):
    assert main(["compress", str(tiny), "-o", str(tmp_path / "o.onnx"), "--format", "auto", "--rank", "4"]) == 2
    assert "--rank does not apply" in capsys.readouterr().err
