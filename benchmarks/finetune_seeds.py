"""Seed spread of the one-epoch fine-tune: re-run a committed ``allocators.py`` row's plan with other seeds.

    python benchmarks/finetune_seeds.py benchmarks/results/allocators_resnet20_tr_ft.json \
        --model resnet20 --format tr --fraction 10 --allocators lwiq,greedy --seeds 0,1

The row's per-layer ranks are rewritten into the model as ``allocators.py`` did (``apply_plan``; SVD-type
decomposition of the trained weights), each layer in the realization the row records (``options``: plain or
merged cores, which the budget solve may switch), then fine-tuned for one epoch of the same distillation on
the first 20,000 MNIST training images with each seed (shuffling and torch RNG), and scored on the MNIST test
set. Seed 0 reproduces a row that records its realizations. Rows written before ``options`` was recorded are
rebuilt in the planner's realized form, which can differ: the same ranks then compute the same function but
train differently (ResNet-56 TT 1/20 of ``allocators_readout_own_b.json``: 55.83 % in the row, 63.40 %
rebuilt). Prints one line per (allocator, seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx_ir as ir
from allocators import MODELS, ROOT, evaluate

from ttcompile.graph import load_model, to_proto
from ttcompile.layers import Layer, find_layers
from ttcompile.models.data import Dataset, load_dataset
from ttcompile.passes.base import get_format
from ttcompile.planning.plan import LayerPlan, Plan
from ttcompile.planning.planner import Planner
from ttcompile.rewrite.compress import apply_plan
from ttcompile.train.finetune import finetune


def layer_plan(planner: Planner, layer: Layer, ranks: list[int], options: dict | None) -> LayerPlan:
    """``layer`` at ``ranks`` in the realization ``options`` (None: the planner's realized one)."""
    lp = planner.layer(layer, ranks)
    if options is None or lp.options == options:
        return lp
    plain = planner.plain(layer, ranks)
    if plain is None or plain.options != options:
        raise SystemExit(f"{layer.name}: cannot rebuild the row's realization {options} at ranks {ranks}")
    return plain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="an allocators.py result JSON")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--format", required=True)
    p.add_argument("--fraction", type=float, required=True, help="budget denominator, e.g. 10")
    p.add_argument("--allocators", default="lwiq,greedy")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--train-samples", type=int, default=20000)
    args = p.parse_args(argv)
    model = load_model(ROOT / "models" / MODELS[args.model])
    teacher = to_proto(model)
    layers = {lay.name: lay for lay in find_layers(model) if lay.compressible}
    planner = Planner(list(layers.values()), get_format(args.format), None, allow_more_macs=True)
    test, full = load_dataset("mnist:test"), load_dataset("mnist:train")
    train = Dataset(full.x[:args.train_samples], full.y[:args.train_samples], f"mnist:train[:{args.train_samples}]")
    rows = [r for r in json.loads(Path(args.results).read_text())["rows"]
            if r["model"] == args.model and r["format"] == args.format
            and abs(r["fraction"] * args.fraction - 1) < 1e-9]
    for alloc in args.allocators.split(","):
        row = next((r for r in rows if r["allocator"] == alloc), None)
        if row is None:
            print(f"{alloc}: no row in {args.results}")
            continue
        options = row.get("options")
        if options is None:
            print(f"{alloc}: the row records no realizations; layers take the planner's realized form")
        plan = Plan(args.model, "", {}, [layer_plan(planner, layers[name], ranks, (options or {}).get(name))
                                         for name, ranks in row["layers"].items() if isinstance(ranks, list)])
        m = ir.from_proto(teacher)
        apply_plan(m, plan)
        student = to_proto(m)
        before = evaluate(student, test)
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            tuned, _ = finetune(student, teacher, train, epochs=1, threads=1, progress=False, seed=seed)
            after = evaluate(tuned, test)
            print(f"{args.model} {args.format} 1/{args.fraction:g} {alloc} seed {seed}: before {before:.4f} "
                  f"(row {row['before']:.4f}) after {after:.4f} (row, seed 0: {row.get('after')}) "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
