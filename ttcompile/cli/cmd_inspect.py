"""``ttcompile inspect MODEL``: every Gemm/MatMul/Conv, what it costs, and what a plan would do with it."""

from __future__ import annotations

import argparse

import ttcompile
from ttcompile.cli.cli_options import add_plan_arguments, plan_kwargs, plan_table, print_json
from ttcompile.rewrite.quant import precision_summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_arguments(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    plan = ttcompile.inspect(args.model, **plan_kwargs(args))
    if args.json:
        print_json(plan.to_json())
    else:
        s = plan.settings
        how = f"rank {s['rank']}" if s["rank"] else f"ratio {s['ratio']}"
        print(f"{args.model}: {len(plan.layers)} candidate layers; plan with format {s['format']} at {how}")
        print(f"weights: {precision_summary(lp.layer for lp in plan.layers)}")
        print(plan_table(plan))
    return 0
