"""Calibration-only compression: accuracy without training data, at whole-model params budgets.

    python benchmarks/post_training.py [--models lenet5,resnet20,resnet56] [--format tt] [--allocator uniform]

Per model and budget (params=1/2, 1/5, 1/10, 1/20 of the compressible layers): the plan of
``ttcompile compress --budget params=F --allocator A --format FMT --calib C`` (C: the first 1,000 ``mnist:val``
images, labels dropped, saved as an x-only .npz), then four models, each evaluated on the MNIST 10k test set
(``mnist:test``) in ONNX Runtime:

* ``weight``: cores from the weights (truncated SVD / TT-SVD / ...), no data (today's default);
* ``data``: data-aware init on C (``ttcompile.analysis.calibrated``: whitened closed form + L-BFGS);
* ``data+layer``: plus sequential layer-wise recovery on C;
* ``data+layer+model``: plus knowledge distillation on C (teacher logits as the only targets).

Wall times: ``moments`` (one pass of the original), each stage's own time, single-threaded torch/ORT.
A model file that is missing is skipped with the reason. Writes ``benchmarks/results/post_training.{md,json}``;
a rerun replaces the rows of the same model, allocator, format and budget and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx_ir as ir  # noqa: E402
import torch  # noqa: E402

import ttcompile  # noqa: E402
from ttcompile.analysis.calibrated import Settings, calibration_inputs, distil  # noqa: E402
from ttcompile.analysis.features import model_input, predict  # noqa: E402
from ttcompile.analysis.moments import accumulate  # noqa: E402
from ttcompile.analysis.recovery import compressed_model, initial_states, recover  # noqa: E402
from ttcompile.benchmark.plot import Pareto, Point, write_pareto  # noqa: E402
from ttcompile.graph import load_model, to_proto  # noqa: E402
from ttcompile.models.data import load_dataset  # noqa: E402
from ttcompile.runtime import make_session  # noqa: E402, F401  (ORT thread settings live there)

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"lenet5": ["models/lenet5_mnist.onnx"], "resnet20": ["models/resnet20_mnist.onnx"],
          "resnet56": ["models/resnet56_mnist.onnx"]}
BUDGETS = [0.5, 0.2, 0.1, 0.05]
CALIB, CALIB_N = "mnist:val", 1000
VARIANTS = ["weight", "data", "data+layer", "data+layer+model"]


def find_model(name: str) -> Path | None:
    for p in MODELS[name]:
        path = Path(p) if Path(p).is_absolute() else ROOT / p
        if path.exists():
            return path
    return None


def plan_for(model_path: Path, budget: float, args, calib_npz: Path):
    plan = ttcompile.plan(model_path, format=args.format, budget={"params": budget}, allocator=args.allocator,
                          calib=calib_npz, allow_more_macs=not args.mac_rule)
    return load_model(model_path), plan


def accuracy(proto, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(proto, x) == y))


def run_budget(model_path: Path, budget: float, args, calib_npz: Path, x: np.ndarray, test) -> list[dict]:
    t0 = time.perf_counter()
    model, plan = plan_for(model_path, budget, args, calib_npz)
    plan_s = time.perf_counter() - t0
    teacher = to_proto(model)
    inp = model_input(teacher)
    xt = test.x.reshape(len(test.x), *inp.dims[1:]).astype(inp.dtype)
    layers = [lp.layer for lp in plan.layers if lp.action == "compress"]
    totals = plan.totals()
    base = {"budget": budget, "format": args.format, "allocator": args.allocator, "mac_rule": args.mac_rule,
            "achieved_cr": totals["params_before"] / max(totals["params_after"], 1), "plan_s": plan_s}
    rows = []

    def add(variant: str, states, seconds: float, proto=None) -> None:
        proto = proto if proto is not None else to_proto(compressed_model(model, plan, states))
        acc = accuracy(proto, xt, test.y)
        rows.append({**base, "variant": variant, "accuracy": acc, "stage_s": seconds})
        print(f"  {model_path.stem} 1/{round(1 / budget)} {variant:18s} acc {acc:.4f}  stage {seconds:.1f} s "
              f"(cr {base['achieved_cr']:.1f}x)", flush=True)
        return proto

    t0 = time.perf_counter()
    moments = accumulate(model, layers, x, inp, progress=False)
    moments_s = time.perf_counter() - t0
    base["moments_s"] = moments_s
    t0 = time.perf_counter()
    weight = initial_states(model, plan, moments, data_init=False, progress=False)
    add("weight", weight, time.perf_counter() - t0)
    t0 = time.perf_counter()
    states = initial_states(model, plan, moments, data_init=True, progress=False)
    add("data", states, time.perf_counter() - t0)
    t0 = time.perf_counter()
    recover(model, plan, states, x, inp, moments=moments, progress=False)
    recovered = add("data+layer", states, time.perf_counter() - t0)
    if args.epochs > 0:
        s = Settings(epochs=args.epochs, progress=False)
        t0 = time.perf_counter()
        tuned, record = distil(recovered, teacher, x, s)
        add("data+layer+model", None, time.perf_counter() - t0, tuned)
        rows[-1]["distillation"] = record
    return rows


def markdown(rows: list[dict], skipped: list[str], commands: list[dict], notes: list[str] = ()) -> str:
    lines = ["# Calibration-only compression (1,000 unlabeled mnist:val images), MNIST 10k test accuracy", "",
             *[f"- {c['models']}: `{c['command']}`" for c in commands], "",
             "Stage s: each stage's own wall time, single thread (the one moments pass of the original, shared "
             "by the data-aware variants, is the `moments s` column). achieved: params of the compressible layers, "
             "before / after.", "",
             "| model | budget | achieved | allocator | format | variant | accuracy | stage s | moments s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.get("distillation")
        variant = r["variant"] + ("" if d is None else f" ({'kept' if d['kept'] else 'not kept'}, lr {d['lr']:g})")
        lines.append(f"| {r['model']} | 1/{round(1 / r['budget'])} | {r['achieved_cr']:.1f}x | {r['allocator']} | "
                     f"{r['format']} | {variant} | {100 * r['accuracy']:.2f} % | {r['stage_s']:.1f} | "
                     f"{r['moments_s']:.1f} |")
    if skipped:
        lines += ["", *[f"- skipped: {s}" for s in skipped]]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def pareto(doc: dict) -> Pareto:
    """Test accuracy vs params kept per format, allocator and stage (no fine-tuning); one front per model."""
    points = [Point(100 / r["achieved_cr"], 100 * r["accuracy"], f"{r['format']} {r['allocator']} {r['variant']}",
                    r["model"]) for r in doc["rows"] if r.get("accuracy") is not None and r.get("achieved_cr")]
    return Pareto(points, "compressible-layer params kept (% of the original)", "MNIST test accuracy (%)",
                  "Post-training compression: weight / data / layer / model stages",
                  [", ".join(dict.fromkeys(r["model"] for r in doc["rows"])) + "; one front per model"])


def write(out: Path, rows: list[dict], skipped: list[str], commands: list[dict], notes: list[str] = ()) -> None:
    """Both result files; ``notes`` (measured elsewhere, with their commands) are kept across runs."""
    doc = {"rows": rows, "skipped": skipped, "commands": commands, "notes": list(notes)}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, skipped, commands, notes))
    write_pareto(out.with_suffix(".png"), pareto(doc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet5,resnet20,resnet56")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    p.add_argument("--format", default="tt")
    p.add_argument("--allocator", default="uniform")
    p.add_argument("--mac-rule", action="store_true", help="keep the allocator's rule that no layer may need more "
                   "MACs than dense (off: params budgets are reached, as TT/TR layers often cost more MACs)")
    p.add_argument("--epochs", type=int, default=10, help="distillation epochs on the calibration images")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "post_training"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    test = load_dataset("mnist:test")
    out = Path(args.out)
    names = args.models.split(",")
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    budgets = [float(b) for b in args.budgets.split(",")]

    def same_run(r: dict) -> bool:
        return (r["model"] in names and r["allocator"] == args.allocator and r["format"] == args.format
                and any(abs(r["budget"] - b) < 1e-9 for b in budgets))

    rows = [r for r in old.get("rows", []) if not same_run(r)]  # other models' and settings' rows are kept
    skipped = [s for s in old.get("skipped", []) if s.split(":")[0] not in names]
    key = f"{args.models} ({args.allocator}, {args.format}, budgets {args.budgets})"
    commands = [c for c in old.get("commands", []) if c["models"] != key]
    command = "python benchmarks/post_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commands.append({"models": key, "command": command})
    with tempfile.TemporaryDirectory() as tmp:
        calib_npz = Path(tmp) / "calib_unlabeled.npz"
        np.savez(calib_npz, x=load_dataset(CALIB).x[:CALIB_N])  # labels dropped
        for name in names:
            path = find_model(name)
            if path is None:
                skipped.append(f"{name}: no model file at {' or '.join(MODELS[name])}")
                print(skipped[-1], flush=True)
                continue
            x = calibration_inputs(str(calib_npz), to_proto(ir.load(path)))
            for budget in budgets:
                for r in run_budget(path, budget, args, calib_npz, x, test):
                    rows.append({"model": name, **r})
                write(out, rows, skipped, commands, old.get("notes", []))
        write(out, rows, skipped, commands, old.get("notes", []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
