"""Rank allocators compared at params budgets: accuracy before and after one epoch of distillation, search time.

    python benchmarks/allocators.py                                   # LeNet-5, ResNet-20, ResNet-56
    python benchmarks/allocators.py --models lenet5 --finetune-epochs 0  # before fine-tuning only

For each model, format (tt, tr), params budget (1/5, 1/10, 1/20, 1/50 of the compressible params; no layer
may need more MACs than dense) and allocator (lwiq, uniform, energy, greedy, datafree): plan, rewrite (SVD-type
decomposition of the trained weights), top-1 accuracy on the MNIST test set (10k); then exactly
``--finetune-epochs`` epoch(s) of the existing distillation (``ttcompile.train.finetune``, T = 4, from the
original) on the first ``--train-samples`` (20,000) MNIST training images, and the accuracy again.
Calibration: 1,000 MNIST validation images (``models/mnist_calib.npz``). Search time: lwiq = its analysis
in that format (one calibration pass + the sensitivity curves) + the solve; greedy = its per-layer
whole-model evaluations + the solve; uniform/energy = their tables + the solve; datafree = its
per-layer models + the solve (no data). ``cut bonds``: bonds at
rank 1 with a cap > 2 in layers whose knob setting is above its minimum (should be 0; the fill phase may
grow single bonds of a layer left at uniform rank 1, which is not counted).

Rows are appended to ``benchmarks/results/allocators.json`` as they finish (keyed by model SHA-256,
format, budget, allocator), so an interrupted run continues where it stopped; the table is rewritten
from the JSON after every row.
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

from ttcompile.analysis.features import load_calibration, predict
from ttcompile.analysis.lwiq import analyze
from ttcompile.atomic import write_bytes_atomic
from ttcompile.benchmark.plot import Pareto, Point, write_pareto
from ttcompile.graph import load_model, to_proto
from ttcompile.layers import find_layers
from ttcompile.models.data import Dataset, load_dataset
from ttcompile.passes.base import get_format
from ttcompile.planning.allocators import Context, Search, search
from ttcompile.planning.budget import Budget, BudgetInfeasible
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.compress import apply_plan
from ttcompile.sources import file_sha256

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"lenet5": "lenet5_mnist.onnx", "resnet20": "resnet20_mnist.onnx", "resnet56": "resnet56_mnist.onnx"}
FRACTIONS = (1 / 5, 1 / 10, 1 / 20, 1 / 50)
# lwiq-top1: calibration labels removed (the model's top-1 is classified); lwiq-linear: damage w_l d_l instead
# of -log(1 - w_l d_l); lwiq-flat / lwiq-gain: linear damage with weights w_l = 1 / the LWIQ score instead of
# the transfer to the output probe; lwiq-own: curves read out at the layer's own probe (``analyze --readout own``)
ORDER = ("lwiq", "lwiq-log", "lwiq-linear", "lwiq-own", "lwiq-top1", "lwiq-flat", "lwiq-gain", "uniform", "energy",
         "greedy", "datafree")


def cut_bonds(plan: Plan, found: Search, budget: Budget) -> int:
    """Bonds at rank 1 whose cap is > 2, in compressed layers whose knob setting (the family's ranks at the
    solved knob value, or LWIQ's exact solve's where it was taken; before the fill grows single bonds) is
    above its minimum (uniform rank 1)."""
    family = found.family.for_budget(budget) if found.family.for_budget else found.family
    knob = plan.settings["knob"]["value"]
    exact = plan.settings["budget"].get("exact") or {}
    n = 0
    for lp in plan.layers:
        if lp.action != "compress":
            continue
        fmt = get_format(lp.format)
        chosen = exact["ranks"][lp.name] if exact.get("used") else family.rank(lp.name, knob)
        if chosen is None or fmt.snap_ranks(lp.layer, lp.modes, chosen) == fmt.uniform_ranks(lp.layer, lp.modes, 1):
            continue
        n += sum(r == 1 and cap > 2 for r, cap in zip(lp.ranks, fmt.max_ranks(lp.layer, lp.modes)))
    return n


def unlabeled(spec: str) -> str:
    """``spec``'s inputs alone, as an .npz beside the results (LWIQ then classifies the model's top-1)."""
    path = ROOT / "benchmarks" / "out" / "calib_unlabeled.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=load_dataset(spec).x)
    return str(path)


def evaluate(proto, test: Dataset) -> float:
    return float((predict(proto, test.x) == test.y).mean())


def run_row(found: Search, fraction: float, test: Dataset, train: Dataset | None, epochs: int,
            extra_search_s: float) -> dict:
    """Solve, rewrite a fresh copy, score; fine-tune ``epochs`` on ``train`` and score again."""
    budget = Budget(params=fraction)
    try:
        plan = found.plan(budget)
    except BudgetInfeasible as exc:
        return {"infeasible": str(exc)}
    model = ir.from_proto(to_proto(found.ctx.model))
    apply_plan(model, plan, progress=False)
    student = to_proto(model)
    row = {"before": evaluate(student, test), "search_s": round(plan.settings["search_time_s"] + extra_search_s, 3),
           "params_fraction": plan.settings["budget"]["fractions"]["params"],
           "of_target": plan.settings["budget"]["of_target"]["params"],
           "macs_fraction": plan.settings["budget"]["fractions"].get("macs"),
           "cut_bonds": cut_bonds(plan, found, budget),
           "layers": {lp.name: lp.ranks if lp.action == "compress" else lp.action for lp in plan.layers},
           "options": {lp.name: lp.options for lp in plan.layers if lp.action == "compress"}}
    if epochs and train is not None:
        from ttcompile.train.finetune import finetune

        start = time.perf_counter()
        tuned, _ = finetune(student, to_proto(found.ctx.model), train, epochs=epochs, threads=1, progress=False)
        row |= {"after": evaluate(tuned, test), "finetune_s": round(time.perf_counter() - start, 1)}
    return row


def pareto(result: dict) -> Pareto:
    """Test accuracy (after fine-tuning when every row has it, else before) vs params kept, per allocator;
    one front per model and format."""
    stage = "after" if all("after" in r for r in result["rows"]) else "before"
    points = [Point(100 * r["params_fraction"], 100 * r[stage], r["allocator"], f"{r['model']} {r['format']}")
              for r in result["rows"]]
    points += [Point(100.0, 100 * m["accuracy"], "original", f"{name} {fmt}", name)
               for name, m in result["models"].items() for fmt in sorted({r["format"] for r in result["rows"]})]
    ft = f"after {result['epochs']} epoch(s) of distillation" if stage == "after" else "before fine-tuning"
    return Pareto(points, "compressible-layer params kept (% of the original)", f"MNIST test accuracy (%, {ft})",
                  "Rank allocators: accuracy vs params", [", ".join(sorted(result["models"])) + "; one front per "
                                                          "model and format"])


def markdown(result: dict) -> str:
    lines = ["# Rank allocators on MNIST models: before / after one epoch of distillation", "",
             f"Command: `{result['command']}`. Calibration: {result['calib']} (1,000 MNIST val images). "
             f"Test: MNIST test ({result['test_samples']} images). Fine-tuning: {result['epochs']} epoch(s) of "
             f"distillation on {result['train']}. Params budgets are of the compressible layers; no layer may "
             "need more MACs than dense. Search (s): lwiq = its analysis in that format + solve; greedy = its "
             "per-layer model evaluations + solve. 'cut' = bonds at rank 1 with a cap > 2 above the knob's "
             "minimum.", ""]
    for name, m in result["models"].items():
        lines += [f"## {name}: {m['params']:,} params, test accuracy {m['accuracy']:.4f}", "",
                  "| format | budget | allocator | params kept | before FT | after FT | search (s) | cut | ranks |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = sorted((r for r in result["rows"] if r["model"] == name),
                      key=lambda r: (r["format"], -r["fraction"], ORDER.index(r["allocator"])
                                     if r["allocator"] in ORDER else len(ORDER), r["allocator"]))
        for r in rows:
            lead = f"| {r['format']} | 1/{round(1 / r['fraction'])} | {r['allocator']} "
            if "infeasible" in r:
                lines.append(lead + "| infeasible | | | | | |")
                continue
            after = f"{r['after']:.4f}" if "after" in r else "-"
            ranks = "; ".join("-".join(map(str, v)) if isinstance(v, list) else v for v in r["layers"].values())
            if len(ranks) > 120:
                ranks = ranks[:117] + "..."
            lines.append(lead + f"| {r['params_fraction']:.2%} | {r['before']:.4f} | {after} | {r['search_s']:.1f} "
                         f"| {r['cut_bonds']} | {ranks} |")
        cpu = {f: c for f, c in m.get("search_cpu_s", {}).items() if "lwiq" in c and "greedy" in c}
        if cpu:
            lines += ["", "Search CPU time (this process) lwiq / greedy: " + ", ".join(
                f"{f} {c['lwiq'] / c['greedy']:.3f} ({c['lwiq']:.0f} s / {c['greedy']:.0f} s)" for f, c in cpu.items())]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet5,resnet20,resnet56")
    p.add_argument("--formats", default="tt,tr")
    p.add_argument("--fractions", default=",".join(str(round(1 / f)) for f in FRACTIONS),
                   help="budget denominators, e.g. 5,10,20,50")
    p.add_argument("--allocators", default="lwiq,uniform,energy,greedy", help=f"of {', '.join(ORDER)}")
    p.add_argument("--calib", default=str(ROOT / "models" / "mnist_calib.npz"))
    p.add_argument("--test", default="mnist:test")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "allocators"))
    args = p.parse_args(argv)

    out = Path(args.out)
    path_json = out.with_suffix(".json")
    result = json.loads(path_json.read_text()) if path_json.exists() else {}
    if result.get("version") != 2:
        result = {"version": 2, "models": {}, "rows": []}
    calib_shown = Path(args.calib).resolve()
    if calib_shown.is_relative_to(ROOT):
        calib_shown = calib_shown.relative_to(ROOT)
    result |= {"calib": str(calib_shown), "test": args.test, "epochs": args.finetune_epochs,
               "train": f"mnist:train[:{args.train_samples}]", "machine": platform.platform(),
               "command": " ".join(["python", *sys.argv])}
    test = load_dataset(args.test)
    result["test_samples"] = len(test.x)
    train = None
    if args.finetune_epochs:
        full = load_dataset("mnist:train")
        train = Dataset(full.x[:args.train_samples], full.y[:args.train_samples], result["train"])
    done = {(r["sha"], r["format"], r["fraction"], r["allocator"]) for r in result["rows"]}
    fractions = [1 / float(d) for d in args.fractions.split(",")]

    def save() -> None:
        """Write the JSON and table; rows another run wrote to the same file meanwhile are kept."""
        key = ("sha", "format", "fraction", "allocator")
        ours = {tuple(r[k] for k in key) for r in result["rows"]}
        disk = json.loads(path_json.read_text()) if path_json.exists() else {}
        result["rows"] += [r for r in disk.get("rows", []) if tuple(r[k] for k in key) not in ours]
        write_bytes_atomic(path_json, (json.dumps(result, indent=1) + "\n").encode())
        write_bytes_atomic(out.with_suffix(".md"), markdown(result).encode())
        write_pareto(out.with_suffix(".png"), pareto(result))

    for name in args.models.split(","):
        path = ROOT / "models" / MODELS[name]
        if not path.exists():
            print(f"{name}: {path} not found, skipped (train it with python -m ttcompile.models.train)")
            continue
        sha, model = file_sha256(path), load_model(path)
        proto = to_proto(model)
        layers = find_layers(model)
        calib = load_calibration(args.calib, proto)
        m = result["models"].setdefault(name, {"params": sum(lay.params for lay in layers)})
        m["accuracy"] = m.get("accuracy") or evaluate(proto, test)
        for fmt in args.formats.split(","):
            searches: dict[str, tuple[Search, float]] = {}
            for alloc in args.allocators.split(","):
                todo = [f for f in fractions if (sha, fmt, f, alloc) not in done]
                if not todo:
                    continue
                ctx = Context(str(path), sha, layers, get_format(fmt), model=model, calibration=calib)
                extra, cpu = 0.0, time.process_time()
                if alloc.startswith("lwiq"):
                    spec = unlabeled(args.calib) if alloc == "lwiq-top1" else args.calib
                    ctx.lwiq_weights = alloc[5:] if alloc in ("lwiq-flat", "lwiq-gain") else "output"
                    ctx.lwiq_damage = "linear" if alloc in ("lwiq-linear", "lwiq-flat", "lwiq-gain") else "log"
                    ctx.analysis = analyze(path, spec, formats=(fmt,), readout="own" if alloc == "lwiq-own" else "next",
                                           progress=False)
                    extra = ctx.analysis.time_s
                searches[alloc] = (search(alloc.split("-")[0], ctx), extra)
                m.setdefault("search_s", {}).setdefault(fmt, {})[alloc] = searches[alloc][0].time_s + extra
                m.setdefault("search_cpu_s", {}).setdefault(fmt, {})[alloc] = time.process_time() - cpu
                for fraction in todo:
                    start = time.perf_counter()
                    row = run_row(searches[alloc][0], fraction, test, train, args.finetune_epochs, extra)
                    result["rows"].append({"model": name, "sha": sha, "format": fmt, "fraction": fraction,
                                           "allocator": alloc, **row})
                    print(f"{name} {fmt} 1/{round(1 / fraction)} {alloc}: before {row.get('before', float('nan')):.4f}"
                          f" after {row.get('after', float('nan')):.4f} cut {row.get('cut_bonds')} "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)
                    save()
            save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
