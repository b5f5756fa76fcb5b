"""Rank allocators compared at params budgets: test accuracy before fine-tuning, and search time.

    python benchmarks/allocators.py            # LeNet-5, MNIST calib (1000) / MNIST test (10k)

For each format (tt, and tr when registered), MAC rule (default: no layer may need more MACs than
dense; ``--allow-more-macs`` off/on), params budget (1/10, 1/20, 1/50 of the compressible params) and
allocator (lwiq, uniform, energy, greedy): plan, rewrite (TT-/TR-SVD of the trained weights, no
fine-tuning), top-1 accuracy on the test set. Search time: lwiq = analysis (one calibration pass,
done once and reused for every budget) + the budget solve; greedy = its per-layer evaluations + solve
(repeated for each budget, as a fresh run would). Writes ``benchmarks/results/allocators.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ttcompile.allocators import ALLOCATORS, Context, Search, search
from ttcompile.budget import Budget, BudgetInfeasible
from ttcompile.compress import apply_plan
from ttcompile.features import load_calibration, predict
from ttcompile.graph import load_model, to_proto
from ttcompile.layers import find_layers
from ttcompile.lwiq import analyze
from ttcompile.models.data import load_dataset
from ttcompile.passes.base import FORMATS, get_format
from ttcompile.plan import file_sha256

ROOT = Path(__file__).resolve().parent.parent
FRACTIONS = (1 / 10, 1 / 20, 1 / 50)
FORMAT_ORDER = ("tt", "tr")


def run_one(found: Search, budget: Budget, test_x: np.ndarray, test_y: np.ndarray, analysis_s: float) -> dict:
    """Solve ``budget`` from a finished search, rewrite a fresh copy of the model, score it on the test set."""
    try:
        plan = found.plan(budget)
    except BudgetInfeasible as exc:
        return {"infeasible": str(exc)}
    model = ir.from_proto(to_proto(found.ctx.model))
    apply_plan(model, plan, progress=False)
    acc = float((predict(to_proto(model), test_x) == test_y).mean())
    rep = plan.settings["budget"]
    return {
        "test_accuracy": acc,
        "params_fraction": rep["fractions"]["params"],
        "params_of_target": rep["of_target"]["params"],
        "knob_only_of_target": rep["knob_only"]["of_target"]["params"],
        "macs_fraction": rep["fractions"].get("macs"),
        "search_s": plan.settings["search_time_s"] + (analysis_s if found.name == "lwiq" else 0.0),
        "solve_s": plan.settings["solve_time_s"],
        "knob": plan.settings["knob"],
        "mac_capped": rep["mac_capped"],
        "layers": {lp.name: {"action": lp.action, "ranks": lp.ranks, "params": lp.params, "macs": lp.macs,
                             "score": lp.score, "error": lp.error} for lp in plan.layers},
    }


def markdown(result: dict) -> str:
    """The table: one row per format, MAC rule, budget and allocator."""
    head = ("| format | MACs may exceed dense | params budget | allocator | params kept | of target "
            "| MACs kept | test acc (no FT) | search (s) | ranks |")
    lines = [f"# Rank allocators on {result['model']} (no fine-tuning)", "",
             f"Original test accuracy: {result['original_accuracy']:.4f} on {result['test']} "
             f"({result['test_samples']} samples). Calibration: {result['calib']}. "
             f"LWIQ analysis: {result['analysis_s']:.2f} s (included in lwiq's search time).",
             "Params/MACs are of the compressible layers (cost model, per sample). "
             "'of target' < 100 % means the plan could not use the whole budget.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        lead = f"| {r['format']} | {'yes' if r['allow_more_macs'] else 'no'} | 1/{round(1 / r['fraction'])} " \
               f"| {r['allocator']} "
        if "infeasible" in r:
            lines.append(lead + "| infeasible | | | | | |")
            continue
        ranks = "; ".join("-".join(map(str, v["ranks"])) if v["action"] == "compress" else v["action"]
                          for v in r["layers"].values())
        lines.append(lead + f"| {r['params_fraction']:.2%} | {r['params_of_target']:.1%} "
                     f"| {r['macs_fraction']:.1%} | {r['test_accuracy']:.4f} | {r['search_s']:.2f} | {ranks} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "lenet5_mnist.onnx"))
    p.add_argument("--calib", default=str(ROOT / "models" / "mnist_calib.npz"))
    p.add_argument("--test", default="mnist:test")
    p.add_argument("--formats", default="tt,tr")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "allocators"))
    args = p.parse_args(argv)

    get_format("tt")  # registers the built-in formats
    formats = [f for f in args.formats.split(",") if f in FORMATS]
    model = load_model(args.model)
    proto = to_proto(model)
    calib = load_calibration(args.calib, proto)
    test = load_dataset(args.test)
    original = float((predict(proto, test.x) == test.y).mean())
    analysis = analyze(args.model, args.calib, progress=False)
    layers = find_layers(model)
    result = {"model": args.model, "model_sha256": file_sha256(args.model), "calib": args.calib,
              "test": args.test, "test_samples": len(test.x), "original_accuracy": original,
              "analysis_s": analysis.time_s, "lwiq_scores": analysis.scores, "formats": formats,
              "machine": platform.platform(), "command": " ".join(["python", *sys.argv]), "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        for allow in (False, True):
            ctx = Context(args.model, file_sha256(args.model), layers, get_format(fmt), allow_more_macs=allow,
                          model=model, calibration=calib, analysis=analysis)
            for name in ALLOCATORS:
                found = search(name, ctx)
                for fraction in FRACTIONS:
                    start = time.perf_counter()
                    row = run_one(found, Budget(params=fraction), test.x, test.y, analysis.time_s)
                    result["rows"].append({"format": fmt, "allow_more_macs": allow, "fraction": fraction,
                                           "allocator": name, **row})
                    print(f"{fmt} allow_more_macs={allow} 1/{round(1 / fraction)} {name}: "
                          f"acc {row.get('test_accuracy', float('nan')):.4f} "
                          f"(search {found.time_s:.1f} s, row {time.perf_counter() - start:.1f} s)", flush=True)
                out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")  # partial results
    result["rows"].sort(key=lambda r: (FORMAT_ORDER.index(r["format"]) if r["format"] in FORMAT_ORDER else 9,
                                       r["allow_more_macs"], -r["fraction"], list(ALLOCATORS).index(r["allocator"])))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
