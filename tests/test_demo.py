"""``ttcompile demo``, the README's first command, end to end (its default format, no fine-tune)."""

from __future__ import annotations

import json

from ttcompile.cli import main


def test_demo_runs_analysis_compress_and_bench_in_the_chosen_format(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--finetune-epochs", "0", "--repeats", "1"]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert set(analysis["curves"]) == {"tr"}  # the analysis measured the format that compress uses
    plan = json.loads((out / "lenet5_tr.plan.json").read_text())
    assert plan["settings"]["allocator"] == "lwiq" and plan["totals"]["params_after"] <= 0.05 * plan["totals"][
        "params_before"] + 1
    bench = json.loads((out / "bench.json").read_text())
    assert len(bench["models"]) == 2
    assert "demo finished" in capsys.readouterr().out
