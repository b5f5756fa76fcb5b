"""Options shared by ``inspect`` and ``compress``: format, rank selection, modes, input shapes."""

from __future__ import annotations

import argparse
import json
import sys

from ttcompile.benchmark.tables import align, count, ratio
from ttcompile.errors import UserError
from ttcompile.graph import load_model
from ttcompile.layers import find_layers
from ttcompile.planning.allocators import plan_from_args
from ttcompile.planning.auto_format import make_auto_plan
from ttcompile.planning.plan import Plan, make_plan
from ttcompile.rewrite.factorize import parse_modes
from ttcompile.shapes import parse_input_shapes


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input ONNX model (never modified)")
    p.add_argument("--format", default="tt",
                   help="decomposition format, or auto: per layer the lowest-error one (default: tt)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--rank", type=int, help="uniform rank for every bond (clipped to each layer's caps)")
    sel.add_argument("--ratio", type=float, help="keep about this fraction of each layer's parameters, in (0, 1]")
    p.add_argument("--force", action="store_true", help="rewrite even layers whose decomposed form does not pay")
    p.add_argument("--allow-more-macs", action="store_true", help="accept rewrites that need more MACs than dense")
    p.add_argument("--modes", action="append", metavar="LAYER=IN:OUT",
                   help="override a layer's factorisation, e.g. fc1=5x5x5x10:5x8x8x1 (repeatable)")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD..",
                   help="fix dynamic input dims for shape inference, e.g. input=1x3x32x32")


def parse_mode_overrides(specs: list[str] | None) -> dict[str, dict]:
    out = {}
    for spec in specs or []:
        name, sep, rest = spec.partition("=")
        ins, sep2, outs = rest.partition(":")
        try:
            if not (sep and sep2 and name):
                raise ValueError
            out[name] = {"in": parse_modes(ins), "out": parse_modes(outs)}
        except ValueError:
            raise UserError(f"--modes {spec!r}: expected LAYER=IN:OUT such as fc1=5x5x5x10:5x8x8x1") from None
    return out


def build_plan(args: argparse.Namespace):
    """Load the model, find its layers and plan them from the command-line options."""
    model = load_model(args.model)
    layers = find_layers(model, parse_input_shapes(args.input_shape))
    if not layers:
        raise UserError(f"{args.model}: no Gemm, MatMul or Conv node, nothing to compress")
    unknown = sorted(set(parse_mode_overrides(args.modes)) - {lay.name for lay in layers})
    if unknown:
        raise UserError(f"--modes names layers this model does not have: {', '.join(unknown)}")
    if args.format == "auto" and getattr(args, "allocator", None) != "datafree":
        return model, _auto_plan(args, model, layers)
    budgeted = plan_from_args(args, model, layers, parse_mode_overrides(args.modes))
    if budgeted is not None:
        return model, budgeted
    if args.rank is None and args.ratio is None:
        args.ratio = 0.1
    plan = make_plan(layers, args.format, model_path=args.model, rank=args.rank, ratio=args.ratio,
                     force=args.force, allow_more_macs=args.allow_more_macs,
                     modes=parse_mode_overrides(args.modes))
    return model, plan


def _auto_plan(args: argparse.Namespace, model, layers) -> Plan:
    """``--format auto``: per layer, the lowest-error format within ``--ratio`` of its params."""
    if args.rank is not None:
        raise UserError("--format auto picks each layer's format and ranks from --ratio; --rank does not apply")
    given = [f"--{k}" for k in ("modes", "budget") if getattr(args, k, None)]
    if given:
        raise UserError(f"{', '.join(given)} cannot be combined with --format auto (except --budget with "
                        "--allocator datafree)")
    return make_auto_plan(model, layers, ratio=0.1 if args.ratio is None else args.ratio, force=args.force,
                          allow_more_macs=args.allow_more_macs, model_path=args.model)


def plan_table(plan: Plan) -> str:
    """One row per layer: shape, dense params/MACs, action, ranks, decomposed params/MACs, reason."""
    headers = ["layer", "kind", "weight", "params", "MACs", "action", "ranks", "params'", "MACs'", "P x", "M x",
               "rel.err", "note"]
    rows = []
    for lp in plan.layers:
        lay, compress = lp.layer, lp.action == "compress"
        action = f"{lp.action} {lp.format}" if compress and plan.settings.get("format") == "auto" else lp.action
        rows.append([
            lay.name, lay.kind, "x".join(map(str, lay.weight_shape)), count(lay.params), count(lay.macs), action,
            "-".join(map(str, lp.ranks)) if lp.ranks else "-",
            count(lp.params) if lp.params is not None else "-", count(lp.macs) if lp.macs is not None else "-",
            ratio(lay.params, lp.params) if compress else "-", ratio(lay.macs, lp.macs) if compress else "-",
            f"{lp.error:.2e}" if lp.error is not None else "-", lp.reason or "",
        ])
    t = plan.totals()
    rows.append(["total", "", "", count(t["params_before"]), count(t["macs_before"]), f"{t['compressed_layers']}",
                 "", count(t["params_after"]), count(t["macs_after"]), ratio(t["params_before"], t["params_after"]),
                 ratio(t["macs_before"], t["macs_after"]), "", "params/MACs of compressible layers, per sample"])
    return "\n".join(align(headers, rows))


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")
