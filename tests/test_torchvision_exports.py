"""benchmarks/torchvision_exports.py: its run judge, and (slow) one real torchvision export end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import torchvision_exports as tvx  # noqa: E402
from zoo import cache_dir  # noqa: E402

from graphs import mlp_model  # noqa: E402

SMALL = "squeezenet1_1"


def test_run_cli_judges_exit_stderr_and_printed_error(tmp_path):
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), src)
    ok = tvx.run_cli(["compress", str(src), "-o", str(tmp_path / "o.onnx"), *tvx.FULL_RANK, "--allow-more-macs",
                      "--quiet"])
    assert ok["code"] == 0 and ok["clean"] and not ok["traceback"] and ok["output_error"] < 1e-4
    bad = tvx.run_cli(["compress", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "p.onnx")])
    assert bad["code"] == 2 and bad["clean"] and "missing.onnx" in bad["stderr"] and bad["output_error"] is None
    slow = tvx.run_cli(["compress", str(src), "-o", str(tmp_path / "q.onnx")], timeout=0.01)
    assert slow["code"] is None and not slow["clean"] and "no result within" in slow["problem"]


def test_json_has_no_nan():
    assert tvx._finite({"a": [math.nan, 1.0, math.inf], "b": "x"}) == {"a": [None, 1.0, None], "b": "x"}


@pytest.mark.slow
def test_every_format_on_a_torchvision_export_is_clean(tmp_path):
    folder = cache_dir() / "tv"
    if not (folder / "manifest.json").exists():
        pytest.skip(f"no torchvision exports in {folder}: run benchmarks/tv_export.py in its own venv first "
                    "(see its docstring)")
    assert tvx.main(["--dir", str(folder), "--models", SMALL, "--out", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    for exporter in ("torchscript", "dynamo"):
        mine = [r for r in rows if r["export"] == f"{SMALL}_{exporter}"]
        assert {r["format"] for r in mine} >= {"inspect", *tvx.FORMATS}, exporter
        assert all(r["clean"] and not r["traceback"] and r["code"] == 0 for r in mine), exporter
        (full,) = [r for r in mine if r["setting"] == "full rank"]
        assert full["output_error"] < 1e-4 and not full["checks_nothing"], exporter
